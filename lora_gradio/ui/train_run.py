"""The run on the Train tab: start, resume and cancel, and a live view read from files only
(progress, loss and learning-rate charts, samples, saved epochs), so closing the page never
stops training and reopening it re-attaches."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lora_gradio.engine import jobs
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train.monitor import JOB_KIND, RunView
from lora_gradio.ui import compat
from lora_gradio.ui.charts import line_chart
from lora_gradio.ui.common import duration_text, escape, ok, open_project, shown_errors, warn
from lora_gradio.ui.compat import gr
from lora_gradio.ui.jobs_panel import STATE_COLOURS

POLL_SECONDS = 2.0
TRAIN_FUNC = "lora_gradio.engine.train.loop:train_project"


def status_html(view: RunView) -> str:
    status = view.status
    if status is None:
        return "<div id='lg-train-status' data-state='none'>No training has run in this project yet.</div>"
    parts = [f"step {status.done}/{status.total}" if status.total else "", f"epoch {view.epoch}" if view.epoch else ""]
    if view.running and view.it_per_s:
        parts.append(f"{view.it_per_s:.2f} it/s")
    if view.loss:
        parts.append(f"loss {view.loss[-1]:.4f}")
    eta = view.eta_seconds()
    if eta is not None:
        parts.append(f"about {duration_text(eta)} left")
    state = {jobs.RUNNING: "running"}.get(status.state, status.state)
    detail = " · ".join(p for p in parts if p)
    message = "" if view.running else f"<div class='lg-job-line'>{escape(status.message)}</div>"
    colour = STATE_COLOURS.get(status.state, "#f97316")
    return (
        f"<div id='lg-train-status' data-state='{status.state}' data-step='{status.done}'>"
        f"<div class='lg-bar' style='height:10px;border-radius:5px;background:rgba(128,128,128,.25);overflow:hidden'>"
        f"<div style='height:100%;width:{round(status.fraction * 100)}%;background:{colour}'></div></div>"
        f"<div class='lg-job-line'><b>{escape(status.job.title)}</b> [{escape(state)}] {escape(detail)}</div>{message}</div>"
    )


def resume_note(view: RunView) -> str:
    """How to continue an interrupted run, and what was wrong with any file the view could not use."""
    notes = [warn(problem) for problem in view.problems]
    if view.resumable:
        saved = view.resumable.get("saved_at")
        try:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(saved))) if saved else "earlier"
        except (TypeError, ValueError, OverflowError, OSError):
            when = "earlier"
        notes.append(f"An interrupted run can continue from epoch {view.resumable.get('epoch')}, step {view.resumable.get('global_step')} "
                     f"(saved {when}): press **Resume**. Starting a new run moves its files to the trash.")
    return "\n\n".join(notes)


@dataclass
class RunControls:
    start: Any
    resume: Any
    cancel: Any
    message: Any
    unload: Any  # a checkbox inside the WebUI, else None


def build_run_controls(webui=None) -> RunControls:
    """The buttons, built where the tab wants them (beside the checks, where nothing above them moves)."""
    start = gr.Button("Start training", variant="primary", elem_id="lg-train-start")
    resume = gr.Button("Resume", visible=False, elem_id="lg-train-resume")
    cancel = gr.Button("Cancel training", variant="stop", visible=False, elem_id="lg-train-cancel")
    unload = None
    if webui is not None:
        unload = gr.Checkbox(value=True, label="Unload the WebUI's checkpoint first (frees its GPU memory for training; it loads again when you generate)", elem_id="lg-train-unload")
    message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-train-message")
    return RunControls(start, resume, cancel, message, unload)


def build_run_view(blocks, projects: Projects, project_dropdown, controls: RunControls, settings_of: Callable, form_widgets: list, webui=None) -> None:
    """The live view of the run, and the controls' events.

    `settings_of(project, *form values)` validates and saves the form and returns the settings."""
    start, resume, cancel, message, unload = controls.start, controls.resume, controls.cancel, controls.message, controls.unload
    with gr.Accordion("Run", open=True, elem_id="lg-train-run"):
        resume_text = gr.Markdown(elem_id="lg-train-resume-note")
        status = gr.HTML(status_html(RunView(None)), elem_id="lg-train-status-box")
        with gr.Row():
            loss_chart = gr.HTML(line_chart("loss", [], {}, "lg-train-loss"))
            lr_chart = gr.HTML(line_chart("learning rate", [], {}, "lg-train-lr"))
        samples = gr.Gallery(label="Samples (sample_prompts, every sample_every_n_epochs)", columns=4, height=300, object_fit="contain", visible=False, elem_id="lg-train-samples")
        files = gr.File(label="Saved epochs (download, or test them on the Test tab)", file_count="multiple", interactive=False, elem_id="lg-train-files")

    def view_for(project_name):
        from lora_gradio.engine.train.config import load_settings, resolved_output_name
        from lora_gradio.engine.train.monitor import run_view

        project = open_project(projects, project_name)
        try:
            name = resolved_output_name(load_settings(project), project)
        except UserError:  # a broken settings file is reported by the form; show the files of the default name
            name = project.base
        return run_view(project, name)

    def refresh(project_name, memo):
        unchanged = [gr.update()] * 8
        try:
            view = view_for(project_name)
        except UserError as exc:  # e.g. the project was removed: say why, keep polling
            return [*unchanged[:-1], warn(str(exc)) if project_name else ""]
        except Exception as exc:  # a file nobody foresaw, or a bug: keep the page alive, log it once
            error = f"{type(exc).__name__}: {exc}"
            if memo.get("error") != error:
                memo["error"] = error
                logging.getLogger("lora_gradio.ui").exception("reading the training run of %s", project_name)
            return [*unchanged[:-1], warn(f"Could not read this run's files ({error}); the page keeps trying. The app's log has the details.")]
        memo.pop("error", None)
        if webui is not None and view.status is not None and view.status.state == jobs.DONE and memo.get("finished") != view.status.job.id:
            memo["finished"] = view.status.job.id
            _after_training(webui, projects, project_name)
        sample_list = [str(p) for p in view.samples]
        file_list = [str(p) for p in view.epoch_files]
        seen = memo.get(project_name, {})
        memo[project_name] = {"samples": sample_list, "files": file_list}
        return [
            status_html(view),
            line_chart("loss", view.steps, {"loss": view.loss}, "lg-train-loss"),
            line_chart("learning rate", view.steps, view.learning_rates, "lg-train-lr"),
            gr.update() if seen.get("samples") == sample_list else _gallery(sample_list),
            gr.update() if seen.get("files") == file_list else gr.update(value=file_list or None),
            gr.update(visible=bool(view.resumable)),
            gr.update(visible=view.running),
            resume_note(view),
        ]

    def begin(project_name, resume_run: bool, unload_first, values) -> str:
        project = open_project(projects, project_name)
        if not resume_run:
            _refuse_unready(project, settings_of(project, *values))
        if unload_first and webui is not None:
            webui.unload_checkpoint()
        title = "Resume training" if resume_run else "Train LoRA"
        job = jobs.start_job(project, JOB_KIND, TRAIN_FUNC, {"resume": resume_run}, title=title)
        return ok(f"Started **{title}** (job `{job.id}`). It runs on its own: close the page and come back, it keeps going.")

    @shown_errors(1)
    def start_new(project_name, *rest):
        unload_first, values = (rest[0], rest[1:]) if unload is not None else (False, rest)
        return begin(project_name, False, unload_first, values)

    @shown_errors(1)
    def start_resume(project_name, *rest):
        return begin(project_name, True, rest[0] if unload is not None else False, ())

    @shown_errors(1)
    def stop(project_name):
        job = jobs.active_job(open_project(projects, project_name), JOB_KIND)
        if job is None:
            return warn("No training is running in this project.")
        jobs.cancel_job(job)
        return ok("Asked the run to stop: it saves its state at the next step, and **Resume** continues from there.")

    extra = [unload] if unload is not None else []
    start.click(start_new, inputs=[project_dropdown, *extra, *form_widgets], outputs=[message])
    resume.click(start_resume, inputs=[project_dropdown, *extra], outputs=[message])
    cancel.click(stop, inputs=[project_dropdown], outputs=[message])
    compat.poll(blocks, refresh, project_dropdown, [status, loss_chart, lr_chart, samples, files, resume, cancel, resume_text], seconds=POLL_SECONDS, memory=True)


def _refuse_unready(project, settings) -> None:
    """The dataset check's errors stop a start here, with the check's own words."""
    from lora_gradio.engine.train.check import check_training_data

    check = check_training_data(project, settings)
    if check.errors:
        raise UserError(" ".join(f.text for f in check.errors))


def _gallery(paths: list[str]):
    """The samples, newest last; hidden while there are none (most runs make no samples)."""
    update = compat.gallery_update([(p, Path(p).stem) for p in paths])
    update["visible"] = bool(paths)
    return update


def _after_training(webui, projects: Projects, project_name: str) -> None:
    """Inside the WebUI: copy the finished epochs into its Lora folder when its setting asks for it."""
    import logging

    try:
        webui.after_training(projects.open(project_name))
    except UserError as exc:  # the copy is a convenience: say why in the log, keep the page going
        logging.getLogger("lora_gradio.ui").warning("copy to the WebUI's Lora folder: %s", exc)
