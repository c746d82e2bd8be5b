"""Import: this tool's settings from kohya's training_config.toml (and dataset_config.toml), with notes
that explain every key that could not be mapped and every value that had to be translated."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.kohya.common import DATASET_FILE, model_facts, total_steps, warmup_steps_for
from lora_gradio.engine.train.kohya.files import flatten_with_labels, looks_like_kohya, read_toml
from lora_gradio.engine.train.kohya.import_dataset import DatasetFileReader
from lora_gradio.engine.train.kohya.import_training import TrainingFileReader
from lora_gradio.engine.train.kohya.keys import Keys, show

if TYPE_CHECKING:
    from lora_gradio.engine.project import Project


# kohya's speed and memory switches: this tool picks its own, so import only mentions them
# (no_half_vae: this tool's VAE always runs in float32).
_RUNTIME_KEYS = (
    "xformers", "sdpa", "mem_eff_attn", "lowram", "highvram", "max_data_loader_n_workers",
    "persistent_data_loader_workers", "vae_batch_size", "fp8_base", "no_half_vae", "disable_mmap_load_safetensors",
)
# kohya's keys that only need a note when they differ from what this tool always does (the XL notebook writes them).
_SAME_HERE = {"gradient_accumulation_steps": 1, "max_grad_norm": 1.0, "loss_type": "l2", "min_timestep": 0, "max_timestep": 1000}
# Never shown in notes.
_SECRET_KEYS = ("wandb_api_key", "huggingface_token")
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
    "max_grad_norm": "this tool clips gradients at a norm of 1.0",
    "loss_type": "this tool trains with the l2 loss",
    "min_timestep": "this tool trains on all 1000 timesteps",
    "max_timestep": "this tool trains on all 1000 timesteps",
    "lr_scheduler_type": "a scheduler class of its own; of those only REX (the XL notebook's rex) is read: lr_scheduler is used here",
    "lr_scheduler_args": "they belong to lr_scheduler_type",
    "noise_offset_random_strength": "the full noise_offset is used here",
    "ip_noise_gamma_random_strength": "the full ip_noise_gamma is used here",
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
        self._family_defaults()
        settings = self._warmup(self._validated())
        self._note_unused()
        return settings, self.notes

    # Model family, warmup, checks and notes ---------------------------------------------------

    def _family_defaults(self) -> None:
        """The settings the files leave open for this model (`kept`) keep base's values, except where the import
        moves to another model family (an SD 1.5 project importing the XL notebook's files): there a value that
        is still the old family's default takes the new family's, as choosing the model here does."""
        if not self.kept or self.family is None:
            return
        before = model_facts(self.base.training_model).family
        if before is None or before == self.family:
            return
        changed = cfg.offer_family_defaults(cfg.settings_to_toml(self.base), self.data, explicit=set(self.data) - self.kept)
        if changed:
            self.notes.append(f"kohya's files leave some settings open for this model: {changed}")

    def _warmup(self, settings: cfg.TrainSettings) -> cfg.TrainSettings:
        """kohya counts warmup in steps, this tool as a share of the run: convert with the run's step count."""
        a = self.args
        if self.rex_args is not None:
            return self._rex_warmup(settings)
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
            total, why = self._total_steps(settings)
            ratio = self._warmup_ratio(f"lr_warmup_steps = {int(value)}", int(value), total, why, settings)
            if ratio is None:
                return settings
        self.put("lr_warmup_ratio", ratio, a, "lr_warmup_steps")
        return self._validated()

    def _warmup_ratio(self, label: str, steps: int, total: "int | None", why: str, settings: cfg.TrainSettings) -> "float | None":
        """kohya's warmup in steps as this tool's lr_warmup_ratio of `total` steps (capped at 0.5), with a note
        saying what became of it; None when the run's steps are unknown (the ratio then stays)."""
        if total is None:
            self.notes.append(f"{label} could not become lr_warmup_ratio ({why}): lr_warmup_ratio stays {settings.lr_warmup_ratio}.")
            return None
        ratio = warmup_ratio_for(steps, total, settings.lr_warmup_ratio)
        if ratio > 0.5:
            self.notes.append(f"{label} is more than half of the {total} steps: lr_warmup_ratio is capped at 0.5.")
            return 0.5
        self.notes.append(f"{label} of {total} steps: lr_warmup_ratio = {ratio:g}.")
        return ratio

    def _rex_warmup(self, settings: cfg.TrainSettings) -> cfg.TrainSettings:
        """The REX class's warmup_steps (kohya refuses lr_warmup_steps beside lr_scheduler_type) as lr_warmup_ratio:
        the share of its first cycle (the XL notebook gives each of its lr_scheduler_number cycles the same share of
        warmup). Notes for what this tool's rex does not do: restarts, another curve (d), a floor (min_lr)."""
        a, args = self.args, dict(self.rex_args or {})
        name = self.rex_class.rsplit(".", 1)[-1]
        if a.get("lr_warmup_steps", float):
            self.notes.append(
                f"lr_warmup_steps = {show(a.raw('lr_warmup_steps'))} is ignored: kohya refuses it beside lr_scheduler_type "
                "(the warmup is warmup_steps in lr_scheduler_args)."
            )
        a.raw("lr_warmup_steps")
        total, why = self._total_steps(settings)
        cycle_key = next((key for key in ("first_cycle_max_steps", "total_steps") if key in args), None)
        cycle = _whole_arg(a, args.pop(cycle_key), least=1) if cycle_key else None
        gamma, multiplier = args.pop("gamma", None), args.pop("cycle_multiplier", None)
        warmup = _whole_arg(a, args.pop("warmup_steps")) if "warmup_steps" in args else 0
        span = cycle or total
        if not warmup:
            self.data["lr_warmup_ratio"] = 0.0
        else:
            ratio = self._warmup_ratio(f"lr_scheduler_args warmup_steps={warmup}", warmup, span, why, settings)
            if ratio is not None:
                self.put("lr_warmup_ratio", ratio, a, "lr_scheduler_args")
        one_cycle = "this tool's rex is one cycle of the whole run, whatever lr_scheduler_number says"
        if cycle is not None and total is None:
            self.notes.append(f"{cycle_key}={cycle} of {name} could not be compared with the run's steps ({why}): {one_cycle}.")
        elif cycle is not None and cycle < total:
            decay = f", each peak {gamma[0]:g} times the last" if gamma is not None and gamma[0] != 1 else ""
            longer = f", each cycle {multiplier[0]:g} times as long" if multiplier is not None and multiplier[0] != 1 else ""
            each = ", with the warmup in each" if warmup else ""
            self.notes.append(f"{name} restarts every {cycle} of the {total} steps (the XL notebook's lr_scheduler_number cycles{decay}{longer}{each}): {one_cycle}.")
        elif cycle is not None and cycle > total:
            self.notes.append(f"{cycle_key}={cycle} of {name} is more than the {total} steps, so kohya's rate stops short of its end: this tool's rex reaches 0 at the end.")
        dropped = [text for key, (value, text) in args.items() if not (key == "d" and value == 0.5) and not (key == "min_lr" and value == 0)]
        if dropped:
            self.notes.append(
                f"lr_scheduler_args {', '.join(dropped)} of {name} are not used here: this tool's rex follows the REX paper's curve "
                "(d=0.5) from unet_lr and text_encoder_lr down to 0."
            )
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
                    if _same_here(key, value):
                        continue
                    reason = _UNUSED_REASONS.get(key, "")
                    shown = "***" if key in _SECRET_KEYS else show(value)
                    self.notes.append(f"kohya key {label} = {shown} has no equivalent here, ignored{f' ({reason})' if reason else ''}.")
        if runtime:
            self.notes.append(f"kohya's speed and memory options ({', '.join(runtime)}) are chosen by this tool itself, ignored.")


def _whole_arg(keys: Keys, arg: tuple[float, str], least: int = 0) -> int:
    """A step count of lr_scheduler_args."""
    value, text = arg
    if value < least or not float(value).is_integer():
        raise keys.bad("lr_scheduler_args", f"{text} must be a whole number of steps, at least {least}")
    return int(value)


def _same_here(key: str, value: object) -> bool:
    """Whether `value` of `key` is what this tool always does (no note needed)."""
    if key not in _SAME_HERE or isinstance(value, bool):
        return False
    return value == _SAME_HERE[key]


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
