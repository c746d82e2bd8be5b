"""Checks before a run: the guide's step arithmetic per folder and what is wrong with the data.

`quick_plan` is the live calculator (image counts only, no image opened). `check_training_data`
looks at every image header and caption the way the run will (buckets included) and lists what
would stop it or spoil it, each finding saying how to fix it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.progress import Progress, first_few
from lora_gradio.engine.project import Project
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.steps import FolderPlan, StepPlan, check_step_limit, plan_steps

ERROR, WARNING, ADVICE = "error", "warning", "advice"
# The guide: images x repeats between 200 and 400 per epoch.
GUIDE_SAMPLES = (200, 400)


@dataclass
class Finding:
    level: str  # ERROR stops the run; WARNING and ADVICE do not
    text: str


@dataclass
class DataCheck:
    plan: "StepPlan | None"
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    @property
    def ready(self) -> bool:
        return self.plan is not None and not self.errors


def _count_images(folder: Path) -> int:
    from lora_gradio.engine.train.data import _list_images

    return len(_list_images(folder))  # links skipped, as the run skips them


def quick_plan(project: Project, settings: cfg.TrainSettings) -> StepPlan:
    """The guide's formula per folder from image counts alone (the run's buckets may add a few steps)."""
    from lora_gradio.engine.train.loop import dataset_folders

    folders = [FolderPlan(f.name, _count_images(f.path), f.num_repeats, f.is_reg) for f in dataset_folders(project, settings)]
    return plan_steps(folders, settings.train_batch_size, settings.preferred_unit, settings.how_many)


def check_training_data(project: Project, settings: cfg.TrainSettings, progress: "Progress | None" = None) -> DataCheck:
    """Everything the run would find in the dataset and the model settings, without loading a model."""
    from lora_gradio.engine.train.data import collect_items
    from lora_gradio.engine.train.loop import dataset_folders, step_plan
    from lora_gradio.engine.train.preflight import check_model_settings

    try:
        model_notes = check_model_settings(settings)  # the run refuses the same things, in the same words
    except UserError as exc:
        return DataCheck(None, [Finding(ERROR, str(exc))])
    try:
        dataset = collect_items(
            dataset_folders(project, settings), settings.caption_extension, settings.resolution,
            settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps, progress=progress,
        )
    except UserError as exc:  # no images, an empty or missing folder, a png/jpg pair sharing a caption
        return DataCheck(None, [Finding(ERROR, str(exc))])
    plan = step_plan(dataset, settings)
    check = DataCheck(plan)
    try:
        check_step_limit(plan, force=settings.force_steps)
    except UserError as exc:
        check.findings.append(Finding(ERROR, str(exc)))
    if dataset.problems:
        shown = first_few([f"{p.name} ({reason})" for p, reason in dataset.problems])
        check.findings.append(Finding(WARNING, f"{len(dataset.problems)} image(s) cannot be read and will be skipped: {shown}. Replace or remove them on the Dataset tab."))
    check.findings.extend(Finding(WARNING, w) for w in dataset.warnings)  # captions missing or unreadable
    check.findings.extend(advice_for(project, settings, dataset, plan))
    check.findings.extend(Finding(ADVICE, note) for note in model_notes)
    return check


def advice_for(project: Project, settings: cfg.TrainSettings, dataset: Any, plan: StepPlan) -> list[Finding]:
    """Beyond what reading the dataset reports: the activation tag and the guide's range of samples.
    The page's check shows these, and a run (or a dry run) logs them."""
    findings = list(_activation_findings(project, settings, dataset))
    if plan.samples_per_epoch and settings.train_batch_size > plan.samples_per_epoch:
        findings.append(Finding(WARNING, (
            f"train_batch_size {settings.train_batch_size} is larger than the {plan.samples_per_epoch} samples an epoch has "
            f"(images x repeats): each step trains on at most {plan.samples_per_epoch}, so the batch is smaller in effect. "
            "Raise num_repeats or lower train_batch_size."
        )))
    low, high = GUIDE_SAMPLES
    if not low <= plan.train_samples <= high:
        findings.append(Finding(ADVICE, (
            f"{plan.train_images} images x repeats = {plan.train_samples} samples per epoch; the guide aims for {low} to {high} "
            f"(e.g. 20 images x 10 repeats): {'raise' if plan.train_samples < low else 'lower'} num_repeats."
        )))
    return findings


def _activation_findings(project: Project, settings: cfg.TrainSettings, dataset) -> list[Finding]:
    """With activation_tags > 0 the first tags stay in place while shuffling: they should be the
    activation tag in every training caption, or each image keeps a random tag of its own first."""
    from lora_gradio.engine.tags import saved_activation, split_tags, tag_key

    keep = settings.activation_tags
    items = [item for item in dataset.train_items if item.caption_text.strip()]  # missing captions are warned about already
    if keep == 0 or not items:
        return []
    leading = {item.path: [tag_key(t) for t in split_tags(item.caption_text)[:keep]] for item in items}
    wanted = [tag_key(t) for t in split_tags(saved_activation(project))]
    if not wanted:
        first = Counter(tags[0] for tags in leading.values() if tags)
        if not first:
            return []
        tag, count = first.most_common(1)[0]
        if count < len(items) / 2:
            return [Finding(WARNING, (
                f"activation_tags = {keep}, but the captions start with different tags (most often {tag!r}, in {count} of {len(items)}): "
                "set an activation tag on the Dataset tab (Curate the tags) so every caption starts with it, or set activation_tags to 0."
            ))]
        wanted = [tag]
    missing = [path for path, tags in leading.items() if not all(w in tags for w in wanted[:keep])]
    if not missing:
        return []
    shown = first_few([p.name for p in missing])
    return [Finding(WARNING, (
        f"{len(missing)} of {len(items)} training captions do not start with the activation tag {', '.join(wanted[:keep])!r} ({shown}): "
        "put it first on the Dataset tab (Curate the tags: Activation tag)."
    ))]
