"""Dataset step 2: find duplicates, look at them side by side, mark, and move the marked to the trash."""

from __future__ import annotations

from lora_gradio.engine import jobs
from lora_gradio.engine.project import Projects
from lora_gradio.ui.common import escape, ok, open_project, shown_errors
from lora_gradio.ui import compat
from lora_gradio.ui.compat import gr

FILTERS = ["duplicates", "marked", "all"]
DEFAULT_MODEL = "openai/clip-vit-base-patch32"


def grid_items(project, result, which: str) -> tuple[list, list[str]]:
    """(gallery items, the relative path of each) in the order shown: groups side by side."""
    from lora_gradio.engine.dedupe import thumbnails

    grouped = [(index, rel) for index, group in enumerate(result.groups, start=1) for rel in group]
    in_group = {rel for _, rel in grouped}
    singles = [(0, rel) for rel in result.images if rel not in in_group]
    if which == "duplicates":
        chosen = grouped
    elif which == "marked":
        chosen = [(g, rel) for g, rel in grouped + singles if rel in result.marked]
    else:
        chosen = grouped + singles
    paths = [rel for _, rel in chosen]
    thumbs = thumbnails(project, paths, marked=set(result.marked))
    items = []
    for (group, rel), thumb in zip(chosen, thumbs):
        state = "REMOVE" if rel in result.marked else "keep"
        label = f"group {group} · {state}" if group else state
        items.append((str(thumb), f"{label} · {rel}"))
    return items, paths


def build_dedupe_block(projects: Projects, project_dropdown: "gr.Dropdown") -> None:
    with gr.Accordion("Find duplicates", open=False, elem_id="lg-dedupe"):
        gr.Markdown(
            "Exact copies (same file) and near-duplicates (CLIP image similarity, like the guide's notebook) are grouped; "
            "the first of each group is kept and the others are marked. Click an image to mark or unmark it, then move the "
            "marked ones to the trash (restorable below). The guide recommends a threshold between 0.97 and 0.99."
        )
        with gr.Row():
            threshold = gr.Slider(0.90, 1.0, value=0.985, step=0.001, label="Similarity threshold", elem_id="lg-dedupe-threshold")
            model = gr.Textbox(value=DEFAULT_MODEL, label="CLIP model (repo id or folder)", elem_id="lg-dedupe-model")
            run = gr.Button("Find duplicates", variant="primary", elem_id="lg-dedupe-run")
        with gr.Row():
            which = gr.Radio(FILTERS, value="duplicates", label="Show", elem_id="lg-dedupe-filter")
            refresh = gr.Button("Show results", elem_id="lg-dedupe-refresh")
            apply = gr.Button("Move marked to trash", variant="stop", elem_id="lg-dedupe-apply")
        summary = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-dedupe-summary")
        gallery = gr.Gallery(label="Images (red: to be removed)", columns=8, height=520, object_fit="contain", allow_preview=False, elem_id="lg-dedupe-grid")
        shown = gr.State([])
        with gr.Row():
            open_fo = gr.Button("Open in FiftyOne", elem_id="lg-dedupe-fiftyone")
            apply_fo = gr.Button("Apply FiftyOne marks")
        fo_message = gr.Markdown(elem_classes=["lg-message"])

    def render(project_name, which_value):
        from lora_gradio.engine.dedupe import load_result

        project = open_project(projects, project_name)
        result = load_result(project)
        if result is None:
            return "No duplicate search yet in this project: press **Find duplicates**.", compat.gallery_update([]), []
        items, paths = grid_items(project, result, which_value)
        text = result.summary()
        if not items:
            text += f" Nothing to show under '{which_value}'."
        return text, compat.gallery_update(items), paths

    @shown_errors(3)
    def show(project_name, which_value):
        return render(project_name, which_value)

    @shown_errors(1)
    def start(project_name, threshold_value, model_value):
        project = open_project(projects, project_name)
        job = jobs.start_job(project, "dedupe", "lora_gradio.engine.dedupe:find_duplicates", {"threshold": float(threshold_value), "model": (model_value or DEFAULT_MODEL).strip()}, title="Find duplicates")
        return ok(f"Looking for duplicates (job `{job.id}`); press **Show results** when it is done.")

    @shown_errors(3)
    def toggle(project_name, which_value, paths, evt: gr.SelectData):
        from lora_gradio.engine.dedupe import load_result, set_marked

        project = open_project(projects, project_name)
        if not paths or evt.index is None or evt.index >= len(paths):
            return render(project_name, which_value)
        rel = paths[evt.index]
        result = load_result(project)
        set_marked(project, rel, rel not in result.marked)
        return render(project_name, which_value)

    @shown_errors(3)
    def move_marked(project_name, which_value):
        from lora_gradio.engine.dedupe import apply_marks

        project = open_project(projects, project_name)
        report = apply_marks(project)
        text, items, paths = render(project_name, which_value)
        return ok(report.summary()) + "\n\n" + text, items, paths

    @shown_errors(1)
    def fiftyone_open(project_name):
        from lora_gradio.engine.fiftyone_app import open_in_fiftyone

        url = open_in_fiftyone(open_project(projects, project_name))
        return ok(f"FiftyOne is running at [{escape(url)}]({escape(url)}): tag images `delete` there, then press **Apply FiftyOne marks**.")

    @shown_errors(3)
    def fiftyone_apply(project_name, which_value):
        from lora_gradio.engine.fiftyone_app import apply_fiftyone_marks

        apply_fiftyone_marks(open_project(projects, project_name))
        return render(project_name, which_value)

    run.click(start, inputs=[project_dropdown, threshold, model], outputs=[summary])
    refresh.click(show, inputs=[project_dropdown, which], outputs=[summary, gallery, shown])
    which.change(show, inputs=[project_dropdown, which], outputs=[summary, gallery, shown])
    gallery.select(toggle, inputs=[project_dropdown, which, shown], outputs=[summary, gallery, shown])
    apply.click(move_marked, inputs=[project_dropdown, which], outputs=[summary, gallery, shown])
    open_fo.click(fiftyone_open, inputs=[project_dropdown], outputs=[fo_message])
    apply_fo.click(fiftyone_apply, inputs=[project_dropdown, which], outputs=[summary, gallery, shown])
