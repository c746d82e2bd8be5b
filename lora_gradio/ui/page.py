"""Assemble the page: the project bar, the job panel and one tab per half of the guide."""

from __future__ import annotations

from lora_gradio.engine.project import Projects
from lora_gradio.ui import compat
from lora_gradio.ui.compat import gr
from lora_gradio.ui.dataset_tab import build_dataset_tab
from lora_gradio.ui.jobs_panel import build_jobs_panel
from lora_gradio.ui.project_bar import build_project_bar


def build_page(root=None, layout="project", title="LoRA Gradio") -> "gr.Blocks":
    projects = Projects(root, layout)
    with compat.new_blocks(title) as blocks:
        gr.Markdown(
            f"## {title}\nMake a LoRA the way holostrawberry's guide teaches: build a dataset, train, then compare epochs and weights. "
            f"Projects live in `{projects.root}` ({projects.layout.value} layout).",
            elem_id="lg-header",
        )
        bar = build_project_bar(blocks, projects)
        build_jobs_panel(blocks, projects, bar.dropdown)
        with gr.Tabs():
            with gr.Tab("1. Dataset", elem_id="lg-tab-dataset"):
                build_dataset_tab(blocks, projects, bar.dropdown)
            with gr.Tab("2. Train", elem_id="lg-tab-train"):
                gr.Markdown(
                    "Training settings, the step calculator and the live view of a run will appear here once the training engine lands. "
                    "Until then, the Dataset tab prepares the images and captions it will use."
                )
            with gr.Tab("3. Test", elem_id="lg-tab-test"):
                gr.Markdown(
                    "Epoch x weight comparison grids and the WebUI X/Y/Z helpers will appear here once there are trained epochs to compare."
                )
    return blocks
