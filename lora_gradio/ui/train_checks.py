"""Before a run: the live step calculator, the dataset check and the memory check."""

from __future__ import annotations

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Project
from lora_gradio.engine.train import config as cfg
from lora_gradio.ui.common import escape, ok, warn

_MARK = {"error": "⛔ **Stops the run:**", "warning": "⚠️", "advice": "**Advice:**"}


def calculator_text(project: Project, settings: cfg.TrainSettings) -> str:
    """The guide's arithmetic per folder, from image counts (instant; the run's buckets may add a few steps)."""
    from lora_gradio.engine.train.check import quick_plan

    try:
        plan = quick_plan(project, settings)
    except UserError as exc:
        return warn(escape(str(exc)))
    lines = plan.explain().splitlines()
    body = "\n".join(f"- {escape(line)}" for line in lines[:-1])
    return f"{body}\n\n**{escape(lines[-1])}**" if body else f"**{escape(lines[-1])}**"


def data_check_text(project: Project, settings: cfg.TrainSettings) -> str:
    from lora_gradio.engine.train.check import check_training_data

    check = check_training_data(project, settings)
    lines = [f"{_MARK.get(f.level, '•')} {escape(f.text)}" for f in check.findings]
    if check.plan is not None:
        lines.append(f"Steps with the real aspect-ratio buckets: {escape(check.plan.explain().splitlines()[-1])}")
    head = ok("Ready to train: nothing stops this run.") if check.ready else warn("This run cannot start yet: fix what stops it, below.")
    return "\n\n".join([head, *lines])


def memory_check_text(project: Project, settings: cfg.TrainSettings) -> str:
    """The estimate against the GPU's free memory, with what to change when it does not fit."""
    from lora_gradio.engine.train.memory import check_training_memory

    report = check_training_memory(settings)
    parts = [(ok if report.fits else warn)(escape(report.message))]
    if report.suggestions:
        parts.append("What to change, cheapest for the result first:\n" + "\n".join(f"- {escape(s.describe())}" for s in report.suggestions))
    parts.append("```\n" + report.estimate.summary() + "\n```")
    return "\n\n".join(parts)
