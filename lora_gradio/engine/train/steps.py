"""The guide's step math: images x repeats x epochs / batch = steps.

Without bucket counts this is the guide's formula, with each epoch rounded up to whole steps. With
bucket counts it is what kohya's trainer does: batches are formed inside each aspect-ratio bucket, so
an epoch takes the sum over buckets of ceil(images x repeats / batch) steps.

Regularization folders (``is_reg``): kohya repeats the regularization images, round-robin, until they
match the number of training samples per epoch (and drops the ones it does not need). So an epoch with
regularization images holds about twice as many samples, and takes about twice as many steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, Union

from lora_gradio.engine.errors import UserError

# More total steps than this is refused unless forced (the notebook's "you probably made a mistake").
MAX_STEPS = 10_000

BucketCounts = Union[Mapping[Hashable, int], Sequence[int]]


@dataclass(frozen=True)
class FolderPlan:
    """One image folder: its name (for messages), image count, repeats, and whether it is regularization."""

    name: str
    images: int
    repeats: int
    is_reg: bool = False


@dataclass(frozen=True)
class StepPlan:
    folders: Tuple[FolderPlan, ...]
    batch_size: int
    preferred_unit: str
    how_many: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    train_samples: int  # training images x repeats, per epoch
    reg_samples: int  # regularization samples per epoch, after kohya's balancing (0 without reg folders)
    bucketed: bool = False
    num_processes: int = 1
    guide_steps_per_epoch: int = 0  # the guide's formula, to show what bucketing added
    reg_repeats: Dict[str, float] = field(default_factory=dict)  # effective repeats of each reg folder

    @property
    def train_images(self) -> int:
        return sum(f.images for f in self.folders if not f.is_reg)

    @property
    def samples_per_epoch(self) -> int:
        return self.train_samples + self.reg_samples

    def explain(self) -> str:
        """The math in the guide's words, one line per folder and a total."""
        lines: List[str] = []
        epochs = self.epochs
        per = f" / {self.num_processes} GPUs" if self.num_processes > 1 else ""
        for folder in self.folders:
            if folder.is_reg:
                continue
            steps = folder.images * folder.repeats * epochs / self.batch_size / self.num_processes
            lines.append(
                f"{folder.name}: {folder.images} images x {_repeats(folder.repeats)} x {epochs} epochs / {self.batch_size} batch{per} = {_number(steps)} steps"
            )
        for folder in self.folders:
            if not folder.is_reg:
                continue
            repeats = self.reg_repeats.get(folder.name, 0.0)
            steps = folder.images * repeats * epochs / self.batch_size / self.num_processes
            lines.append(
                f"{folder.name} (regularization): {folder.images} images x {_repeats(repeats)} x {epochs} epochs / {self.batch_size} batch{per} "
                f"= {_number(steps)} steps (repeated to match the {self.train_samples} training samples per epoch)"
            )
        if self.reg_samples:
            lines.append(
                f"Regularization images are repeated to match the training images, so each epoch has {self.samples_per_epoch} samples "
                f"({self.train_samples} training + {self.reg_samples} regularization), about twice the steps."
            )
        if self.bucketed and self.steps_per_epoch != self.guide_steps_per_epoch:
            lines.append(
                f"Batches are formed within each aspect-ratio bucket, so an epoch takes {self.steps_per_epoch} steps "
                f"instead of {self.guide_steps_per_epoch}."
            )
        if self.preferred_unit == "Steps":
            last = self.total_steps - (epochs - 1) * self.steps_per_epoch
            cut = f", the last one {last} steps" if 0 < last < self.steps_per_epoch else ""
            lines.append(f"Total: {self.total_steps} steps as asked, at {self.steps_per_epoch} steps per epoch = {epochs} epochs{cut}.")
        else:
            lines.append(f"Total: {self.total_steps} steps ({epochs} epochs x {self.steps_per_epoch} steps per epoch).")
        return "\n".join(lines)


def plan_steps(
    folders: Sequence[FolderPlan],
    batch_size: int,
    preferred_unit: str,
    how_many: int,
    bucket_counts: Optional[Sequence[BucketCounts]] = None,
    num_processes: int = 1,
) -> StepPlan:
    """Epochs, steps per epoch and total steps for these folders.

    `bucket_counts`, when given, has one entry per folder (same order): the number of that folder's
    images in each aspect-ratio bucket, either as a mapping ``{bucket: count}`` (buckets with the same
    key in different folders are batched together, as kohya does) or as a plain list (the folder's own
    buckets). Regularization folders' samples are spread over their buckets in proportion, since which
    reg images kohya repeats depends on file order; training folders are exact.
    `num_processes` (GPUs under ``accelerate launch``) share each epoch's batches.
    """
    if batch_size < 1 or how_many < 1 or num_processes < 1:
        raise ValueError("batch_size, how_many and num_processes must be at least 1")
    if preferred_unit not in ("Epochs", "Steps"):
        raise ValueError(f"preferred_unit must be 'Epochs' or 'Steps', not {preferred_unit!r}")
    folders = tuple(folders)
    if bucket_counts is not None and len(bucket_counts) != len(folders):
        raise ValueError("bucket_counts needs one entry per folder")

    train_samples = sum(f.images * f.repeats for f in folders if not f.is_reg)
    reg_per_folder = _balance_regularization(folders, train_samples)
    reg_samples = sum(reg_per_folder.values())

    # The guide's formula, each epoch rounded up to whole steps (a last, smaller batch is still a step).
    guide_per_epoch = math.ceil((train_samples + reg_samples) / batch_size)
    if bucket_counts is None:
        batches = guide_per_epoch
    else:
        batches = _bucketed_batches(folders, bucket_counts, reg_per_folder, batch_size)
    # Under accelerate each process takes its share of the batches (kohya: ceil(len(loader) / processes)).
    steps_per_epoch = math.ceil(batches / num_processes)
    guide_per_epoch = math.ceil(guide_per_epoch / num_processes)

    if steps_per_epoch == 0:
        epochs, total = 0, 0
    elif preferred_unit == "Steps":
        total = how_many
        epochs = math.ceil(how_many / steps_per_epoch)
    else:
        epochs = how_many
        total = how_many * steps_per_epoch

    reg_repeats = {f.name: (reg_per_folder.get(index, 0) / f.images if f.images else 0.0) for index, f in enumerate(folders) if f.is_reg}
    return StepPlan(
        folders=folders,
        batch_size=batch_size,
        preferred_unit=preferred_unit,
        how_many=how_many,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        train_samples=train_samples,
        reg_samples=reg_samples,
        bucketed=bucket_counts is not None,
        num_processes=num_processes,
        guide_steps_per_epoch=guide_per_epoch,
        reg_repeats=reg_repeats,
    )


def regularization_repeats(train_samples: int, image_repeats: Sequence[int]) -> List[int]:
    """How often each regularization image is used per epoch, the way kohya's DreamBooth dataset does it.

    `image_repeats` holds each reg image's folder repeats, in kohya's order. kohya walks the images
    counting each with its folder's repeats until the count reaches the training samples (later images
    get 0: unused); if the images run out first, it goes round again adding one per image until it does.
    """
    repeats = [0] * len(image_repeats)
    total = 0
    for index, folder_repeats in enumerate(image_repeats):  # the first pass
        if total >= train_samples:
            return repeats
        repeats[index] = folder_repeats
        total += folder_repeats
    if total < train_samples and repeats:  # later passes: +1 per image, round-robin
        full_rounds, rest = divmod(train_samples - total, len(repeats))
        repeats = [r + full_rounds + (1 if index < rest else 0) for index, r in enumerate(repeats)]
    return repeats


def _balance_regularization(folders: Sequence[FolderPlan], train_samples: int) -> Dict[int, int]:
    """Regularization samples per reg folder (by index), from `regularization_repeats` of its images."""
    reg = [(index, f) for index, f in enumerate(folders) if f.is_reg and f.images > 0]
    per_image = regularization_repeats(train_samples, [f.repeats for _, f in reg for _ in range(f.images)])
    counts: Dict[int, int] = {}
    start = 0
    for index, f in reg:
        counts[index] = sum(per_image[start:start + f.images])
        start += f.images
    return counts


def _bucketed_batches(
    folders: Sequence[FolderPlan], bucket_counts: Sequence[BucketCounts], reg_per_folder: Mapping[int, int], batch_size: int
) -> int:
    samples: Dict[Hashable, float] = {}
    for index, (folder, counts) in enumerate(zip(folders, bucket_counts)):
        buckets = dict(counts) if isinstance(counts, Mapping) else {(index, position): n for position, n in enumerate(counts)}
        images = sum(buckets.values())
        if folder.is_reg:
            # Spread the balanced reg samples over the folder's buckets in proportion.
            reg_total = reg_per_folder.get(index, 0)
            for key, n in buckets.items():
                samples[key] = samples.get(key, 0) + (reg_total * n / images if images else 0)
        else:
            for key, n in buckets.items():
                samples[key] = samples.get(key, 0) + n * folder.repeats
    return sum(math.ceil(round(n, 6) / batch_size) for n in samples.values())


def check_step_limit(plan: StepPlan, force: bool = False, limit: int = MAX_STEPS) -> None:
    """Refuse a plan with no training images, or (unless forced) one over `limit` steps."""
    if plan.train_images == 0:
        names = ", ".join(f.name for f in plan.folders if not f.is_reg) or "the dataset"
        raise UserError(
            f"No training images in {names}: add images (png, jpg or webp) to the dataset folder, or check the folder names in custom_dataset."
        )
    if plan.total_steps > limit and not force:
        raise UserError(
            f"{plan.total_steps:,} steps is probably a mistake ({_one_line(plan)}; the guide trains 1000-3000): "
            f"lower repeats or epochs, or set force_steps=true."
        )


def _one_line(plan: StepPlan) -> str:
    train = [f for f in plan.folders if not f.is_reg]
    if len(train) == 1 and not plan.reg_samples and plan.preferred_unit == "Epochs":
        f = train[0]
        return f"{f.images} images x {_repeats(f.repeats)} x {plan.epochs} epochs / {plan.batch_size} batch"
    return f"{plan.samples_per_epoch} samples per epoch / {plan.batch_size} batch = {plan.steps_per_epoch} steps per epoch, x {plan.epochs} epochs"


def _repeats(value: float) -> str:
    return f"{_number(value)} repeat{'' if value == 1 else 's'}"


def _number(value: float) -> str:
    """Whole numbers as such, others with one decimal (the guide's rows are mostly whole)."""
    return str(int(round(value))) if abs(value - round(value)) < 1e-9 else f"{value:.1f}"
