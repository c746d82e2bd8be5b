"""Read and edit one image's tags next to the image (the guide: check what the tagger wrote)."""

from __future__ import annotations

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.ui.common import escape, ok, open_project, shown_errors, warn
from lora_gradio.ui.compat import gr


def neighbour(choices: list[str], current: "str | None", step: int) -> "str | None":
    """The image `step` places from `current` in the list, wrapping around; the first if unknown."""
    if not choices:
        return None
    if current not in choices:
        return choices[0]
    return choices[(choices.index(current) + step) % len(choices)]


def build_caption_editor(projects: Projects, project_dropdown: "gr.Dropdown") -> None:
    with gr.Accordion("Read and edit one image's tags", open=False, elem_id="lg-editor"):
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", interactive=False, height=460, show_label=False, elem_id="lg-editor-image")
            with gr.Column(scale=1):
                with gr.Row():
                    having = gr.Textbox(label="Only images with these tags", placeholder="smile, outdoors", elem_id="lg-editor-filter")
                    refresh = gr.Button("List images", elem_id="lg-editor-list")
                picked = gr.Dropdown(label="Image", choices=[], elem_id="lg-editor-pick")
                with gr.Row():
                    previous = gr.Button("◀ Previous", elem_id="lg-editor-prev")
                    following = gr.Button("Next ▶", elem_id="lg-editor-next")
                caption = gr.Textbox(label="Tags (comma separated; the first ones are the activation tags)", lines=7, elem_id="lg-editor-caption")
                with gr.Row():
                    save = gr.Button("Save", variant="primary", elem_id="lg-editor-save")
                    save_next = gr.Button("Save and next", elem_id="lg-editor-save-next")
                message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-editor-message")
    choices = gr.State([])
    # The project the list was made from. Showing and saving use it, not the Project list: Gradio 3
    # can drop a project change, and tags read from one project must not be saved into another.
    listed_project = gr.State(None)

    def show(project_name, rel):
        from lora_gradio.engine.tags import image_caption

        if not rel:
            return None, "", gr.update()
        try:
            project = open_project(projects, project_name)
            return str(project.dataset_dir / rel), image_caption(project, rel), gr.update()
        except UserError as exc:
            return None, "", warn(str(exc))

    @shown_errors(6)
    def list_images(project_name, having_value):
        from lora_gradio.engine.tags import image_list

        found = image_list(open_project(projects, project_name), having_value or "")
        text = f"{len(found)} image(s)" + (f" with {escape(having_value)}." if (having_value or "").strip() else ".")
        first = found[0] if found else None
        # Show the first image here too: when it was already picked, no change event reloads its tags.
        shown_image, shown_caption, _ = show(project_name, first)
        return text if found else warn(text), gr.update(choices=found, value=first), found, shown_image, shown_caption, project_name

    def save_caption(project_name, rel, text) -> str:
        from lora_gradio.engine.tags import set_image_caption

        if not rel:
            raise UserError("Pick an image first (press **List images**).")
        report = set_image_caption(open_project(projects, project_name), rel, text or "")
        return ok(f"Saved the tags of {escape(rel)}.") if report.changed else ok(f"No change to the tags of {escape(rel)}.")

    def move(step):
        return lambda found, rel: gr.update(value=neighbour(found, rel, step))

    @shown_errors(2)
    def store_and_move(project_name, rel, text, found):
        return save_caption(project_name, rel, text), gr.update(value=neighbour(found, rel, 1))

    listed = [message, picked, choices, image, caption, listed_project]
    refresh.click(list_images, inputs=[project_dropdown, having], outputs=listed)
    having.submit(list_images, inputs=[project_dropdown, having], outputs=listed)
    project_dropdown.change(list_images, inputs=[project_dropdown, having], outputs=listed)
    picked.change(show, inputs=[listed_project, picked], outputs=[image, caption, message])
    previous.click(move(-1), inputs=[choices, picked], outputs=[picked])
    following.click(move(1), inputs=[choices, picked], outputs=[picked])
    save.click(shown_errors(1)(save_caption), inputs=[listed_project, picked, caption], outputs=[message])
    save_next.click(store_and_move, inputs=[listed_project, picked, caption, choices], outputs=[message, picked])
