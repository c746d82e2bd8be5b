"""Assemble the page: the project bar, the job panel and one tab per half of the guide."""

from __future__ import annotations

from lora_gradio.engine.project import Projects
from lora_gradio.ui import compat
from lora_gradio.ui.compat import gr
from lora_gradio.ui.dataset_tab import build_dataset_tab
from lora_gradio.ui.jobs_panel import build_jobs_panel
from lora_gradio.ui.project_bar import build_project_bar
from lora_gradio.ui.test_tab import build_test_tab
from lora_gradio.ui.train_tab import build_train_tab


def jobs_note(webui=None) -> str:
    """A sentence for the header when the jobs run under another Python than the page's (empty otherwise)."""
    import sys

    from lora_gradio.engine.jobs import JOB_PYTHON_ENV, job_python

    note = webui.job_env_note() if webui is not None and hasattr(webui, "job_env_note") else None
    if note:
        return f"\n\n{note}"
    python = job_python()
    return f"\n\nJobs run under `{python}` (`{JOB_PYTHON_ENV}`)." if python != sys.executable else ""


def build_page(root=None, layout="project", title="LoRA Gradio", webui=None) -> "gr.Blocks":
    """`webui`: the WebUI's hooks (lora_gradio.webui.WebUIHooks) when the page is a WebUI tab."""
    projects = Projects(root, layout)
    with compat.new_blocks(title) as blocks:
        gr.Markdown(
            f"## {title}\nMake a LoRA the way holostrawberry's guide teaches: build a dataset, train, then compare epochs and weights. "
            f"Projects live in `{projects.root}` ({projects.layout.value} layout).{jobs_note(webui)}",
            elem_id="lg-header",
        )
        bar = build_project_bar(blocks, projects)
        build_jobs_panel(blocks, projects, bar.dropdown)
        with gr.Tabs():
            with gr.Tab("1. Dataset", elem_id="lg-tab-dataset"):
                build_dataset_tab(blocks, projects, bar.dropdown)
            with gr.Tab("2. Train", elem_id="lg-tab-train"):
                build_train_tab(blocks, projects, bar.dropdown, webui=webui)
            with gr.Tab("3. Test", elem_id="lg-tab-test"):
                build_test_tab(blocks, projects, bar.dropdown, webui=webui)
    return blocks
