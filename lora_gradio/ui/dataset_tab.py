"""The Dataset tab, in the guide's order: gather images from a booru (scrape_block.py) or upload them,
remove duplicates (dedupe_block.py), tag (tag_block.py), curate (curate_block.py), check single
captions (caption_editor.py), and the guide's "extras" (count, check, convert, shrink, clean, trash)."""

from __future__ import annotations

from lora_gradio.engine import jobs
from lora_gradio.engine.project import Projects
from lora_gradio.ui import compat
from lora_gradio.ui.common import escape, ok, open_project, shown_errors, warn
from lora_gradio.ui.compat import gr
from lora_gradio.ui.caption_editor import build_caption_editor
from lora_gradio.ui.curate_block import build_curate_block
from lora_gradio.ui.dedupe_block import build_dedupe_block
from lora_gradio.ui.scrape_block import build_scrape_block
from lora_gradio.ui.tag_block import build_tag_block

COUNT_HEADERS = ["folder", "images", "captions", "images without caption", "captions without image", "other files"]
TRASH_HEADERS = ["batch", "why", "when", "files"]

# Buttons that start a job: label -> (job kind, engine function, title).
HYGIENE_ACTIONS = {
    "check": ("check", "lora_gradio.engine.images:check_images", "Check images"),
    "to_jpeg": ("convert", "lora_gradio.engine.images:convert_png_to_jpeg", "Convert PNG to JPEG"),
    "shrink": ("shrink", "lora_gradio.engine.images:shrink_large_images", "Shrink large images"),
    "clean": ("clean", "lora_gradio.engine.images:clean_dataset", "Clean the dataset folder"),
    "import": ("import", "lora_gradio.engine.uploads:import_uploads", "Add uploaded files"),
}


def count_table(projects: Projects, project_name: "str | None"):
    """Rows for the count table and a line of warnings (stem clashes, stray captions)."""
    from lora_gradio.engine import images

    project = open_project(projects, project_name)
    counts = images.count_dataset(project)
    rows = [[c.label(project), c.images, c.captions, c.images_without_caption, c.captions_without_image, c.other_files] for c in counts]
    notes = []
    clashes = images.find_stem_clashes(project)
    if clashes:
        shown = "; ".join(" + ".join(p.name for p in group) for group in clashes[:5])
        notes.append(warn(f"{len(clashes)} image name(s) used twice with different extensions ({escape(shown)}{' ...' if len(clashes) > 5 else ''}): they would share one caption file. Rename or remove one of each pair."))
    total = sum(c.images for c in counts)
    if total == 0:
        notes.append(warn(f"No images yet in `{escape(project.dataset_dir)}`: upload some above, or copy them into that folder."))
    else:
        notes.append(ok(f"{total} images in {len(counts)} folder(s)."))
    return rows or [["", 0, 0, 0, 0, 0]], "\n\n".join(notes)


def trash_table(projects: Projects, project_name: "str | None"):
    from lora_gradio.engine import trash

    batches = trash.list_trash(open_project(projects, project_name))
    rows = [[b.id, b.reason, b.created.replace("T", " "), len(b.pending)] for b in batches]
    return rows or [["", "the trash is empty", "", 0]], gr.update(choices=[b.id for b in batches], value=batches[0].id if batches else None)


def build_dataset_tab(blocks: "gr.Blocks", projects: Projects, project_dropdown: "gr.Dropdown") -> None:
    build_scrape_block(projects, project_dropdown)
    with gr.Accordion("Add images", open=True):
        gr.Markdown("Upload images or a `.zip` of them (captions `.txt` with the same name come along). Nothing in the dataset is overwritten: a name that exists gets a number.")
        uploads = gr.File(label="Images or .zip", file_count="multiple", file_types=["image", ".zip", ".txt"], elem_id="lg-upload")
        add = gr.Button("Add to dataset", variant="primary", elem_id="lg-add-uploads")
        add_message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-add-message")
    build_dedupe_block(projects, project_dropdown)
    build_tag_block(projects, project_dropdown)
    build_curate_block(blocks, projects, project_dropdown)
    build_caption_editor(projects, project_dropdown)

    with gr.Accordion("Count and clean up (the guide's extras)", open=True):
        with gr.Row():
            count = gr.Button("Count images and captions", elem_id="lg-count")
            check = gr.Button("Find unreadable images", elem_id="lg-check")
        counts = gr.Dataframe(headers=COUNT_HEADERS, value=[["", 0, 0, 0, 0, 0]], interactive=False, elem_id="lg-counts")
        count_notes = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-count-notes")
        gr.Markdown("Originals of converted or shrunk images, and the files a clean-up removes, go to the project's trash: restore them below.")
        with gr.Row():
            to_jpeg = gr.Button("Convert PNG to JPEG", elem_id="lg-to-jpeg")
            max_mb = gr.Number(label="Shrink images over (MB)", value=2.0, minimum=0.1, elem_id="lg-max-mb")
            shrink = gr.Button("Shrink large images", elem_id="lg-shrink")
            clean = gr.Button("Move non-image files to trash", elem_id="lg-clean")
        action_message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-action-message")

    with gr.Accordion("Trash", open=False):
        trash_rows = gr.Dataframe(headers=TRASH_HEADERS, value=[["", "the trash is empty", "", 0]], interactive=False, elem_id="lg-trash")
        with gr.Row():
            batch = gr.Dropdown(label="Batch", choices=[], elem_id="lg-trash-batch")
            restore = gr.Button("Restore batch", elem_id="lg-restore")
            refresh_trash = gr.Button("Refresh", elem_id="lg-refresh-trash")
        trash_message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-trash-message")

    def start(action: str, project_name: "str | None", **kwargs) -> str:
        kind, func, title = HYGIENE_ACTIONS[action]
        project = open_project(projects, project_name)
        job = jobs.start_job(project, kind, func, kwargs, title=title)
        return ok(f"Started **{escape(title)}**; its progress shows below (job `{job.id}`).")

    @shown_errors(1)
    def add_uploads(project_name, files):
        try:
            paths = compat.uploaded_paths(files)
        except (ValueError, PermissionError) as exc:
            return warn(f"Cannot add these files: {exc}.")
        if not paths:
            return warn("Choose images or a .zip first (drop them on the upload box).")
        return start("import", project_name, paths=paths)

    @shown_errors(2)
    def do_count(project_name):
        rows, notes = count_table(projects, project_name)
        return notes, rows

    @shown_errors(3)
    def do_trash(project_name):
        rows, choices = trash_table(projects, project_name)
        return "", rows, choices

    @shown_errors(3)
    def do_restore(project_name, batch_id):
        from lora_gradio.engine import trash

        if not batch_id:
            return warn("Pick a batch to restore."), gr.update(), gr.update()
        restored = trash.restore(open_project(projects, project_name), batch_id)
        rows, choices = trash_table(projects, project_name)
        return ok(f"Restored {len(restored)} file(s) from {escape(batch_id)}."), rows, choices

    add.click(add_uploads, inputs=[project_dropdown, uploads], outputs=[add_message], **compat.upload_event_options())
    count.click(do_count, inputs=[project_dropdown], outputs=[count_notes, counts])
    check.click(shown_errors(1)(lambda name: start("check", name)), inputs=[project_dropdown], outputs=[action_message])
    to_jpeg.click(shown_errors(1)(lambda name: start("to_jpeg", name)), inputs=[project_dropdown], outputs=[action_message])
    shrink.click(shown_errors(1)(lambda name, mb: start("shrink", name, max_megabytes=float(mb or 2.0))), inputs=[project_dropdown, max_mb], outputs=[action_message])
    clean.click(shown_errors(1)(lambda name: start("clean", name)), inputs=[project_dropdown], outputs=[action_message])
    refresh_trash.click(do_trash, inputs=[project_dropdown], outputs=[trash_message, trash_rows, batch])
    restore.click(do_restore, inputs=[project_dropdown, batch], outputs=[trash_message, trash_rows, batch])
    project_dropdown.change(do_count, inputs=[project_dropdown], outputs=[count_notes, counts])
    blocks.load(do_count, inputs=[project_dropdown], outputs=[count_notes, counts])
    project_dropdown.change(do_trash, inputs=[project_dropdown], outputs=[trash_message, trash_rows, batch])
