"""Import: this tool's settings from kohya's training_config.toml (and dataset_config.toml), with notes
that explain every key that could not be mapped and every value that had to be translated."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.kohya.common import DATASET_FILE, total_steps, warmup_steps_for
from lora_gradio.engine.train.kohya.files import flatten_with_labels, looks_like_kohya, read_toml
from lora_gradio.engine.train.kohya.import_dataset import DatasetFileReader
from lora_gradio.engine.train.kohya.import_training import TrainingFileReader
from lora_gradio.engine.train.kohya.keys import Keys, show

if TYPE_CHECKING:
    from lora_gradio.engine.project import Project


# kohya's speed and memory switches: this tool picks its own, so import only mentions them.
_RUNTIME_KEYS = (
    "xformers", "sdpa", "mem_eff_attn", "lowram", "highvram", "max_data_loader_n_workers",
    "persistent_data_loader_workers", "vae_batch_size", "full_fp16", "full_bf16", "fp8_base", "cache_text_encoder_outputs",
)
# Keys of a dataset file that import reads (at any level); the others are reported.
_DATASET_KEYS = (
    "image_dir", "num_repeats", "is_reg", "keep_tokens", "flip_aug", "resolution", "caption_extension", "shuffle_caption",
    "enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "batch_size",
)
# Why some of kohya's keys have no equivalent here, for the notes about them.
_UNUSED_REASONS = {
    "class_tokens": "images without a caption file train with an empty caption here",
    "color_aug": "no color augmentation here",
    "random_crop": "latents are cached from the whole image here",
    "network_dropout": "no dropout here",
    "gradient_accumulation_steps": "train_batch_size is the whole batch here",
    "save_every_n_steps": "this tool saves every N epochs",
    "sample_every_n_steps": "this tool makes samples every N epochs",
}


def import_kohya(
    training_path: str | Path,
    dataset_path: str | Path | None = None,
    *,
    project: Project | None = None,
    base: cfg.TrainSettings | None = None,
) -> tuple[cfg.TrainSettings, list[str]]:
    """Settings from kohya's training_config.toml (and dataset_config.toml), with notes for the person.

    The dataset file is `dataset_path`, else the training file's ``dataset_config`` key if that file
    exists, else ``dataset_config.toml`` beside the training file; without one, the dataset settings
    stay as in `base`. `project` lets image folders become custom_dataset names relative to its dataset
    folder, turns its own output name back into '' and counts its images for lr_warmup_steps.
    `base` (default: this tool's defaults) supplies what kohya's files do not describe.
    """
    training_path = Path(training_path).expanduser()
    raw = read_toml(training_path)
    if "datasets" in raw or "general" in raw:
        raise UserError(
            f"{training_path} is kohya's dataset config: import the training_config.toml instead "
            f"(the {DATASET_FILE} beside it is read too)."
        )
    if not looks_like_kohya(raw):
        raise UserError(
            f"{training_path} is not a kohya training config (no [model_arguments], [training_arguments] ... sections): "
            "give the training_config.toml that kohya's scripts or the Lora Trainer notebook wrote."
        )
    importer = _Importer(Keys(training_path, flatten_with_labels(raw)), project, base or cfg.TrainSettings())
    return importer.run(Path(dataset_path).expanduser() if dataset_path else None)


class _Importer(TrainingFileReader, DatasetFileReader):
    """Builds this tool's settings from kohya's keys, remembering where each value came from."""

    def run(self, dataset_path: Path | None) -> tuple[cfg.TrainSettings, list[str]]:
        self._model()
        self._network()
        self._learning_rates()
        self._scheduler()
        self._optimizer()
        self._length()
        self._training()
        self._outputs()
        dataset_file = self._find_dataset_config(dataset_path)
        if dataset_file is not None:
            self._dataset(dataset_file)
        else:
            self._dataset_keys_in_training_file()
        settings = self._warmup(self._validated())
        self._note_unused()
        return settings, self.notes

    # Warmup, checks and notes -----------------------------------------------------------------

    def _warmup(self, settings: cfg.TrainSettings) -> cfg.TrainSettings:
        """kohya counts warmup in steps, this tool as a share of the run: convert with the run's step count."""
        a = self.args
        if "lr_warmup_steps" not in a:
            if settings.lr_scheduler == "constant":
                return settings
            self.data["lr_warmup_ratio"] = 0.0  # kohya's default: no warmup
            return self._validated()
        value = a.get("lr_warmup_steps", float)
        raw = a.raw("lr_warmup_steps")
        if value < 0 or (isinstance(raw, float) and value >= 1 and not value.is_integer()):
            raise a.bad("lr_warmup_steps", "use a whole number of steps, or a ratio below 1")
        if settings.lr_scheduler == "constant":
            if value:
                self.notes.append(f"lr_warmup_steps = {show(raw)} is ignored with lr_scheduler = constant, as kohya does (use constant_with_warmup).")
            return settings
        if isinstance(raw, float) and value < 1:  # newer kohya scripts also take a ratio here
            ratio = value
        elif value == 0:
            ratio = 0.0
        else:
            steps = int(value)
            total, why = self._total_steps(settings)
            if total is None:
                self.notes.append(f"lr_warmup_steps = {steps} could not become lr_warmup_ratio ({why}): lr_warmup_ratio stays {settings.lr_warmup_ratio}.")
                return settings
            ratio = warmup_ratio_for(steps, total, settings.lr_warmup_ratio)
            if ratio > 0.5:
                self.notes.append(f"lr_warmup_steps = {steps} is more than half of the {total} steps: lr_warmup_ratio is capped at 0.5.")
                ratio = 0.5
            else:
                self.notes.append(f"lr_warmup_steps = {steps} of {total} steps: lr_warmup_ratio = {ratio:g}.")
        self.put("lr_warmup_ratio", ratio, a, "lr_warmup_steps")
        return self._validated()

    def _total_steps(self, settings: cfg.TrainSettings) -> tuple[int | None, str]:
        if settings.preferred_unit == "Steps":
            return settings.how_many, ""
        folders = self.folders
        try:
            if folders is None:
                if self.project is None:
                    return None, "that needs the dataset's images: import into a project"
                from lora_gradio.engine.train.loop import dataset_folders

                folders = dataset_folders(self.project, settings)
            return total_steps(folders, settings), ""
        except UserError as exc:
            return None, str(exc).rstrip(".")

    def _validated(self) -> cfg.TrainSettings:
        try:
            return cfg.validate_settings(self.data)
        except UserError as exc:
            message = str(exc)
            name = re.match(r"\w+", message)
            origin = self.origins.get(name.group(0)) if name else None
            if origin is None:
                raise UserError(f"After importing {self.args.path}: {message}") from None
            raise UserError(f"{origin.describe()}: {message}") from None

    def _note_unused(self) -> None:
        runtime = []
        for keys in [self.args, *self.dataset_levels]:
            for key in keys.unused():
                if keys is self.args and key in _RUNTIME_KEYS:
                    runtime.append(key)
                elif keys is self.args or key not in _DATASET_KEYS:  # dataset keys left unread are overridden, as in kohya
                    value, label = keys.values[key]
                    reason = _UNUSED_REASONS.get(key, "")
                    self.notes.append(f"kohya key {label} = {show(value)} has no equivalent here, ignored{f' ({reason})' if reason else ''}.")
        if runtime:
            self.notes.append(f"kohya's speed and memory options ({', '.join(runtime)}) are chosen by this tool itself, ignored.")


def warmup_ratio_for(steps: int, total: int, current: float) -> float:
    """The ratio that gives `steps` warmup steps of `total`: `current` if it does, else the one with the fewest decimals."""
    if total <= 0:
        return current
    if warmup_steps_for(total, current) == steps:
        return current
    for digits in range(7):
        ratio = round(steps / total, digits)
        if warmup_steps_for(total, ratio) == steps:
            return ratio
    return steps / total
