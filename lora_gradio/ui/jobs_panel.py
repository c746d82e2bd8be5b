"""The job panel: progress of the project's current job, its log, and a Cancel button.

It reads everything from the job's files on every tick, so a reloaded page or a second
browser shows the same job: re-attaching needs no state in the page.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from lora_gradio.engine import jobs
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.ui import compat
from lora_gradio.ui.common import duration_text, escape, ok, open_project, shown_errors, warn
from lora_gradio.ui.compat import gr

POLL_SECONDS = 1.0
STATE_COLOURS = {jobs.DONE: "#16a34a", jobs.FAILED: "#dc2626", jobs.DIED: "#dc2626", jobs.CANCELLED: "#6b7280"}


@dataclass
class JobsPanel:
    status: "gr.HTML"
    log: "gr.Textbox"
    message: "gr.Markdown"


def current_job(projects: Projects, project_name: "str | None") -> "jobs.Job | None":
    """The running job, else the newest one: what a person coming back wants to see."""
    if not project_name:
        return None
    try:
        project = projects.open(project_name)
    except UserError:
        return None
    return jobs.active_job(project) or next(iter(jobs.list_jobs(project)), None)


_last_error = [""]


def _log_once(exc: Exception, project_name: "str | None") -> None:
    """The traceback of a failed refresh, once for as long as the same error repeats (it polls each second)."""
    error = f"{type(exc).__name__}: {exc}"
    if _last_error[0] != error:
        _last_error[0] = error
        logging.getLogger("lora_gradio.ui").exception("reading the jobs of %s", project_name)


def render_status(status: "jobs.JobStatus | None") -> str:
    if status is None:
        return "<div class='lg-job-line' id='lg-job-idle'>No job has run in this project yet.</div>"
    percent = round(status.fraction * 100)
    colour = STATE_COLOURS.get(status.state, "#f97316")
    eta = ""
    if status.active and status.started and status.done and status.total:
        elapsed = time.time() - status.started
        remaining = elapsed / status.done * (status.total - status.done)
        eta = f" · about {duration_text(remaining)} left"
    return (
        f"<div id='lg-job' data-state='{status.state}' data-job='{escape(status.job.id)}'>"
        f"<div class='lg-bar'><div style='width:{percent}%;background:{colour}'></div></div>"
        f"<div class='lg-job-line'>{escape(status.headline())}{eta}</div></div>"
    )


def build_jobs_panel(blocks: "gr.Blocks", projects: Projects, project_dropdown: "gr.Dropdown") -> JobsPanel:
    with gr.Group():
        with gr.Row():
            with gr.Column(scale=8):
                status_html = gr.HTML(render_status(None), elem_id="lg-job-panel")
            with gr.Column(scale=1, min_width=110):
                cancel = gr.Button("Cancel job", variant="stop", visible=False, elem_id="lg-cancel-job")
        message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-job-message")
        with gr.Accordion("Job log", open=False):
            log_box = gr.Textbox(show_label=False, lines=8, max_lines=20, interactive=False, elem_id="lg-job-log")

    def refresh(project_name: "str | None"):
        try:
            job = current_job(projects, project_name)
            if job is None:
                return render_status(None), "", gr.update(visible=False)
            status = jobs.job_status(job)
            return render_status(status), jobs.read_log(job), gr.update(visible=status.active)
        except Exception as exc:  # a job's files changed under us (removed, damaged) or a bug: keep the panel
            _log_once(exc, project_name)
            return gr.update(), gr.update(), gr.update()

    @shown_errors(1)
    def cancel_current(project_name: "str | None"):
        project = open_project(projects, project_name)
        job = jobs.active_job(project)
        if job is None:
            return warn("No job is running in this project.")
        jobs.cancel_job(job)
        return ok(f"Asked **{escape(job.title)}** to stop; it finishes the file it is on and keeps what is done.")

    cancel.click(cancel_current, inputs=[project_dropdown], outputs=[message])
    outputs = [status_html, log_box, cancel]
    project_dropdown.change(refresh, inputs=[project_dropdown], outputs=outputs, **compat.quiet())
    compat.poll(blocks, refresh, project_dropdown, outputs, seconds=POLL_SECONDS)
    return JobsPanel(status=status_html, log=log_box, message=message)
