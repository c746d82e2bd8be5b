"""What a watcher of a training run needs, read from files only (the job's events, the output folder).

The page polls `run_view`; a reloaded page or a second browser gets the same picture, and so
does a notebook cell.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from lora_gradio.engine import jobs
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Project

JOB_KIND = "train"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class RunView:
    status: "jobs.JobStatus | None"  # the newest training job, running or ended
    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # moving average the loop reports
    learning_rates: dict[str, list[float]] = field(default_factory=dict)  # "unet", "text_encoder" -> one value per step point
    epoch: "int | None" = None
    it_per_s: "float | None" = None
    epoch_files: list[Path] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    resumable: "dict | None" = None  # the saved state of an interrupted run: epoch, global_step, saved_at
    first_point: tuple[float, int] = (0.0, 0)  # (time, step) of the first reported step, for the speed
    problems: list[str] = field(default_factory=list)  # files that could not be used, each with what to do

    @property
    def running(self) -> bool:
        return self.status is not None and self.status.active

    def eta_seconds(self) -> "float | None":
        """From the run's average speed since its first step (the first steps include loading)."""
        status = self.status
        if status is None or not status.active or not status.total or len(self.steps) < 2:
            return None
        first_t, first_step = self.first_point
        elapsed = (status.updated or time.time()) - first_t
        done = self.steps[-1] - first_step
        if done <= 0 or elapsed <= 0:
            return None
        return (status.total - self.steps[-1]) * elapsed / done


def run_view(project: Project, output_name: str) -> RunView:
    from lora_gradio.engine.train.loop import read_state_info
    from lora_gradio.engine.train.saving import epoch_files

    run = _run_jobs(project)
    job = run[-1] if run else None
    view = RunView(status=jobs.job_status(job) if job else None)
    if job is not None:
        first = None
        for event in _progress_events(run):
            step, loss, t = event["done"], event["loss"], event["t"]
            if first is None and event["job"] is job:  # the speed counts from this job's first step
                first = (t, step)
            if view.steps and step <= view.steps[-1]:
                continue  # a resumed run starts again from its saved step
            view.steps.append(step)
            view.loss.append(loss)
            for key, value in event.items():
                if key.startswith("lr_"):
                    view.learning_rates.setdefault(key[3:], []).append(value)
            view.epoch = event.get("epoch", view.epoch)
            view.it_per_s = event.get("it_per_s", view.it_per_s)
        view.first_point = first or (0.0, 0)
    view.epoch_files = [path for _, path in epoch_files(project.output_dir, output_name)]
    sample_dir = project.output_dir / "sample"
    if sample_dir.is_dir():
        since = (view.status.started or 0.0) if view.status else 0.0  # this run's samples, not an older run's
        found = [(_mtime(p), p.name, p) for p in sample_dir.iterdir() if p.suffix.lower() in SAMPLE_SUFFIXES]
        view.samples = [p for mtime, _, p in sorted(found) if mtime is not None and mtime >= since]
    if not view.running:  # a running job is rewriting its state now
        try:
            state = read_state_info(project)
        except UserError as exc:  # damaged: say so, and offer a new run instead of a Resume
            view.problems.append(str(exc))
            state = None
        if state is not None:
            view.resumable = {k: state.get(k) for k in ("epoch", "global_step", "saved_at")}
    return view


def _mtime(path: Path) -> "float | None":
    try:
        return path.stat().st_mtime
    except OSError:  # removed since the folder was listed
        return None


def _run_jobs(project: Project) -> list:
    """The jobs of the newest run, oldest first: a resumed run continues the jobs before it."""
    chain = []
    for job in (j for j in jobs.list_jobs(project) if j.kind == JOB_KIND):  # newest first
        chain.append(job)
        if not job.kwargs.get("resume"):
            break
    return chain[::-1]


def _progress_events(run: list) -> list[dict]:
    out = []
    for job in run:
        out.extend({**event, "job": job} for event in _step_events(job))
    return out


# The page redraws a run every 2 s and a long run writes tens of thousands of events: each job's
# file is read once, then only what was appended since. A few recent runs are kept.
_STEP_EVENTS_KEPT = 8
_step_events_read: dict[Path, tuple[int, list[dict]]] = {}


def _step_events(job) -> list[dict]:
    """The job's progress events that carry a loss (one per reported step), in order, with `done`,
    `loss`, `t` and any `lr_*` as numbers; events a crash or a bug left unusable are skipped."""
    offset, events = _step_events_read.pop(job.folder, (0, []))
    try:
        if job.events_file.stat().st_size < offset:
            offset, events = 0, []  # the file was replaced
    except OSError:  # not there (yet)
        return []
    new, offset = jobs.read_events(job, offset)
    steps = [step for step in map(_step_event, new) if step is not None]
    if steps:
        events = events + steps  # a new list: a caller may still hold the old one
    _step_events_read[job.folder] = (offset, events)
    while len(_step_events_read) > _STEP_EVENTS_KEPT:
        del _step_events_read[next(iter(_step_events_read))]
    return events


def _step_event(event: dict) -> "dict | None":
    if event.get("type") != "progress" or "loss" not in event:
        return None
    try:
        numbers = {"done": int(event.get("done") or 0), "loss": float(event["loss"]), "t": float(event.get("t") or 0.0)}
        numbers.update({key: float(value) for key, value in event.items() if key.startswith("lr_")})
    except (TypeError, ValueError):
        return None
    return {**event, **numbers}
