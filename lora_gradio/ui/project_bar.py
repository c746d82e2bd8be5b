"""The top of the page: pick, create and describe the current project."""

from __future__ import annotations

from dataclasses import dataclass

from lora_gradio.engine.project import Projects
from lora_gradio.ui.common import escape, ok, shown_errors
from lora_gradio.ui.compat import gr


@dataclass
class ProjectBar:
    dropdown: "gr.Dropdown"
    message: "gr.Markdown"


def describe(projects: Projects, name: "str | None") -> str:
    if not name:
        return f"No project yet under `{projects.root}`: type a name and press **Create project**."
    project = projects.open(name)
    return (
        f"Dataset `{escape(project.dataset_dir)}` · output `{escape(project.output_dir)}` · "
        f"settings `{escape(project.settings_file)}`"
    )


def build_project_bar(blocks: "gr.Blocks", projects: Projects) -> ProjectBar:
    names = projects.list()
    with gr.Row():
        with gr.Column(scale=3):
            dropdown = gr.Dropdown(label="Project", choices=names, value=projects.most_recent(), elem_id="lg-project")
        with gr.Column(scale=3):
            new_name = gr.Textbox(label="New project", placeholder="my_character, or my_character/outfit2 for a second folder", elem_id="lg-new-project")
        with gr.Column(scale=1, min_width=120):
            create = gr.Button("Create project", variant="primary", elem_id="lg-create-project")
            refresh = gr.Button("Refresh list", elem_id="lg-refresh-projects")
    info = gr.Markdown(value=_safe_describe(projects, dropdown.value), elem_id="lg-project-info", elem_classes=["lg-message"])
    message = gr.Markdown(elem_id="lg-project-message", elem_classes=["lg-message"])

    @shown_errors(3)
    def create_project(name: str):
        project = projects.create((name or "").strip("\n"))
        return (
            ok(f"Created project **{escape(project.name)}**. Put images in `{escape(project.dataset_dir)}` or upload them on the Dataset tab."),
            gr.update(choices=projects.list(), value=project.name),
            "",
        )

    @shown_errors(2)
    def refresh_list(current: "str | None"):
        names = projects.list()
        value = current if current in names else projects.most_recent()
        return "", gr.update(choices=names, value=value)

    @shown_errors(1)
    def selected(name: "str | None"):
        return describe(projects, name)

    create.click(create_project, inputs=[new_name], outputs=[message, dropdown, new_name])
    new_name.submit(create_project, inputs=[new_name], outputs=[message, dropdown, new_name])
    refresh.click(refresh_list, inputs=[dropdown], outputs=[message, dropdown])
    dropdown.change(selected, inputs=[dropdown], outputs=[info])
    # Another browser (or the command line) may have made projects since the page was built.
    blocks.load(refresh_list, inputs=[dropdown], outputs=[message, dropdown])
    return ProjectBar(dropdown=dropdown, message=message)


def _safe_describe(projects: Projects, name: "str | None") -> str:
    try:
        return describe(projects, name)
    except Exception:
        return ""
