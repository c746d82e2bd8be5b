"""kohya's training_config.toml + dataset_config.toml: export a project's settings, import them back.

These are the two files holostrawberry's Lora Trainer notebook wrote for kohya's sd-scripts
(``train_network.py --config_file training_config.toml --dataset_config dataset_config.toml``), so a
run can move between this tool and kohya's scripts. Export uses the notebook's sections and key names,
with absolute paths. Import reads the files the way kohya does (sections are merged into one set of
arguments; in the dataset file a subset's value beats its dataset's, which beats ``[general]``, which
beats the training file's; a missing key means kohya's default) and explains, in notes, every key it
could not map and every value it had to translate. Settings that kohya's files do not describe keep
the values of ``base``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_write_text, is_image_file
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.models import MODEL_EXTENSIONS, PRESETS, check_model_file, detect_version, preset_for

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from lora_gradio.engine.project import Project
    from lora_gradio.engine.train.data import DatasetFolder

TRAINING_FILE = "training_config.toml"
DATASET_FILE = "dataset_config.toml"
PROMPTS_FILE = "sample_prompts.txt"
# Where the training loop downloads base models (project.root / "_models"): presets are exported as that path.
MODELS_FOLDER = "_models"

# Sections of the notebook's training file; any section name is fine for kohya, these mark the format.
TRAINING_SECTIONS = (
    "model_arguments", "additional_network_arguments", "optimizer_arguments", "training_arguments",
    "saving_arguments", "dreambooth_arguments", "dataset_arguments", "sample_prompt_arguments", "logging_arguments",
)
# kohya's DAdaptation is DAdaptAdamPreprint; this tool's DAdaptation runs DAdaptAdam.
_OPTIMIZER_TO_KOHYA = {"DAdaptation": "DAdaptAdam"}
_OPTIMIZER_FROM_KOHYA = {name.lower(): name for name in cfg.OPTIMIZERS if name != "DAdaptation"}
_OPTIMIZER_FROM_KOHYA["dadaptadam"] = "DAdaptation"
_LYCORIS_ALGOS = {"LoHa": "loha", "LoKr": "lokr", "IA3": "ia3", "DoRA": "locon"}
_LYCORIS_TYPES = {"lora": "LoCon", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "ia3": "IA3"}
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
# One value for the whole run here, though kohya allows one per subset: (name here, kohya key, type, kohya's default).
_RUN_WIDE_DATASET_KEYS = (
    ("resolution", "resolution", int, None),
    ("caption_extension", "caption_extension", str, ".caption"),
    ("shuffle_tags", "shuffle_caption", bool, False),
    ("min_bucket_reso", "min_bucket_reso", int, 256),
    ("max_bucket_reso", "max_bucket_reso", int, 1024),
    ("bucket_reso_steps", "bucket_reso_steps", int, 64),
    ("train_batch_size", "batch_size", int, None),
)
_UNUSED_REASONS = {
    "class_tokens": "images without a caption file train with an empty caption here",
    "color_aug": "no color augmentation here",
    "random_crop": "latents are cached from the whole image here",
    "network_dropout": "no dropout here",
    "gradient_accumulation_steps": "train_batch_size is the whole batch here",
    "save_every_n_steps": "this tool saves every N epochs",
    "sample_every_n_steps": "this tool makes samples every N epochs",
}


# Export ------------------------------------------------------------------------------------------


def export_kohya(project: Project, settings: cfg.TrainSettings, folder: str | Path) -> tuple[Path, Path]:
    """Write `training_config.toml` and `dataset_config.toml` (and `sample_prompts.txt` when there are
    prompts) into `folder` for these settings; returns the two config paths.

    Everything is worked out before the first file is written, so a refusal leaves no files behind.
    """
    import tomli_w

    folder = Path(folder).expanduser().resolve()
    training_path, dataset_path, prompts_path = folder / TRAINING_FILE, folder / DATASET_FILE, folder / PROMPTS_FILE
    dataset_text = _dataset_toml(project, settings)
    training_text = tomli_w.dumps(_training_config(project, settings, dataset_path, prompts_path))
    if settings.sample_prompts:
        atomic_write_text(prompts_path, "\n".join(settings.sample_prompts) + "\n")
    atomic_write_text(dataset_path, dataset_text)
    atomic_write_text(training_path, training_text)
    return training_path, dataset_path


def kohya_model_location(project: Project, settings: cfg.TrainSettings) -> str:
    """What export writes as pretrained_model_name_or_path: a preset as the file this tool downloads it to,
    a downloaded link as that file, a local file or folder as its absolute path, a repo id or link as is."""
    spec = settings.training_model
    preset = preset_for(spec)
    if preset is not None:
        return str(_models_dir(project) / _url_file_name(preset.url))
    if re.match(r"^https?://", spec):
        downloaded = _models_dir(project) / _url_file_name(spec)
        return str(downloaded) if downloaded.is_file() else spec
    local = Path(spec).expanduser()
    return str(local.resolve()) if local.exists() or local.suffix.lower() in MODEL_EXTENSIONS else spec


def _training_config(project: Project, settings: cfg.TrainSettings, dataset_path: Path, prompts_path: Path) -> dict[str, Any]:
    s = settings
    network_module, network_args = _network_for(s)
    number_key = "lr_scheduler_power" if s.lr_scheduler == "polynomial" else "lr_scheduler_num_cycles"
    epochs = s.preferred_unit == "Epochs"
    output_name = cfg.resolved_output_name(s, project)
    model = kohya_model_location(project, s)
    version = _model_version(model)
    sections: dict[str, dict[str, Any]] = {
        "additional_network_arguments": {
            "unet_lr": s.unet_lr,
            "text_encoder_lr": s.text_encoder_lr,
            "network_dim": s.network_dim,
            "network_alpha": s.network_alpha,
            "network_module": network_module,
            "network_args": network_args or None,
            "network_train_unet_only": True if s.text_encoder_lr == 0 else None,
            "network_weights": str(Path(s.continue_from_lora).expanduser().resolve()) if s.continue_from_lora else None,
        },
        "optimizer_arguments": {
            "learning_rate": s.unet_lr,
            "lr_scheduler": s.lr_scheduler,
            number_key: s.lr_scheduler_number,
            # kohya's constant schedule has no warmup, and neither has this tool's.
            "lr_warmup_steps": _warmup_steps(project, s) if s.lr_scheduler != "constant" else None,
            "optimizer_type": _OPTIMIZER_TO_KOHYA.get(s.optimizer, s.optimizer),
            "optimizer_args": list(s.optimizer_args) or None,
        },
        "training_arguments": {
            "max_train_steps": None if epochs else s.how_many,
            "max_train_epochs": s.how_many if epochs else None,
            "save_every_n_epochs": s.save_every_n_epochs or None,
            "save_last_n_epochs": s.keep_only_last_n_epochs or None,
            "train_batch_size": s.train_batch_size,
            "noise_offset": s.noise_offset or None,
            "clip_skip": s.clip_skip,
            "min_snr_gamma": cfg.resolved_min_snr_gamma(s),
            "weighted_captions": s.weighted_captions,
            "seed": s.seed,
            "max_token_length": s.max_token_length if s.max_token_length != 75 else None,  # kohya: unset = 75
            "gradient_checkpointing": s.gradient_checkpointing,
            "sdpa": True,
            "max_data_loader_n_workers": 8,
            "persistent_data_loader_workers": True,
            "save_precision": s.save_precision,
            # kohya has no "auto": fp16 runs on every GPU (the notebook's choice); bf16 must be asked for.
            "mixed_precision": "fp16" if s.mixed_precision == "auto" else s.mixed_precision,
            "output_dir": str(project.output_dir.resolve()),
            "logging_dir": str(project.log_dir.resolve()),
            "output_name": output_name,
            "log_prefix": output_name,
            "sample_prompts": str(prompts_path) if s.sample_prompts else None,
            "sample_every_n_epochs": s.sample_every_n_epochs or None,
        },
        "model_arguments": {
            "pretrained_model_name_or_path": model,
            "v2": version.startswith("sd_v2"),
            "v_parameterization": True if version == "sd_v2_v" else None,
        },
        "saving_arguments": {"save_model_as": "safetensors"},
        "dreambooth_arguments": {"prior_loss_weight": s.prior_loss_weight},
        "dataset_arguments": {
            "cache_latents": s.cache_latents,
            "cache_latents_to_disk": s.cache_latents_to_disk,
            "dataset_config": str(dataset_path),
        },
    }
    return {name: {k: v for k, v in values.items() if v is not None} for name, values in sections.items()}


def _network_for(settings: cfg.TrainSettings) -> tuple[str, list[str]]:
    """kohya's network_module and network_args: LoCon as the notebook trains it (kohya's own conv layers),
    the other LyCORIS types through lycoris.kohya."""
    conv = [f"conv_dim={settings.conv_dim}", f"conv_alpha={settings.conv_alpha}"]
    if settings.lora_type == "LoRA":
        return "networks.lora", []
    if settings.lora_type == "LoCon":
        return "networks.lora", conv
    args = conv + [f"algo={_LYCORIS_ALGOS[settings.lora_type]}"]
    if settings.lora_type == "DoRA":
        args.append("dora_wd=True")
    return "lycoris.kohya", args


def _dataset_toml(project: Project, settings: cfg.TrainSettings) -> str:
    """The dataset file with one [[datasets.subsets]] table per folder, as the notebook's template shows it
    (tomli_w alone would write short subsets as inline tables)."""
    import tomli_w

    s = settings
    general: dict[str, Any] = {
        "resolution": s.resolution,
        "shuffle_caption": s.shuffle_tags,
        "keep_tokens": s.activation_tags,
        "flip_aug": s.flip_aug,
        "caption_extension": s.caption_extension,
        "enable_bucket": True,
        "bucket_reso_steps": s.bucket_reso_steps,
        "bucket_no_upscale": False,
        "min_bucket_reso": s.min_bucket_reso,
        "max_bucket_reso": s.max_bucket_reso,
    }
    if s.custom_dataset:
        general["num_repeats"] = s.num_repeats  # the repeats of folders that set none
        subsets = [_custom_subset(project, entry) for entry in s.custom_dataset]
    else:
        subsets = [{"num_repeats": s.num_repeats, "image_dir": str(path.resolve())} for path in main_folders(project)]
    parts = [tomli_w.dumps({"general": general}), "[[datasets]]\n"]
    parts += [f"[[datasets.subsets]]\n{tomli_w.dumps(subset)}" for subset in subsets]
    return "\n".join(parts)


def _custom_subset(project: Project, entry: cfg.FolderSettings) -> dict[str, Any]:
    subset: dict[str, Any] = {"image_dir": str((project.dataset_root / entry.folder).resolve())}
    if entry.num_repeats is not None:
        subset["num_repeats"] = entry.num_repeats
    if entry.is_reg:
        subset["is_reg"] = True
    if entry.keep_tokens is not None:
        subset["keep_tokens"] = entry.keep_tokens
    if entry.flip_aug is not None:
        subset["flip_aug"] = entry.flip_aug
    return subset


def main_folders(project: Project) -> list[Path]:
    """The folders trained without custom_dataset: the dataset folder and its subfolders that hold images
    (just the dataset folder while it is empty)."""
    from lora_gradio.engine.images import dataset_folders

    found = [p for p in dataset_folders(project) if any(f.is_file() and is_image_file(f) for f in p.iterdir())]
    return found or [project.dataset_dir]


def _warmup_steps(project: Project, settings: cfg.TrainSettings) -> int:
    if settings.lr_warmup_ratio == 0:
        return 0
    if settings.preferred_unit == "Steps":
        total = settings.how_many
    else:
        from lora_gradio.engine.train.loop import dataset_folders

        try:
            total = total_steps(dataset_folders(project, settings), settings)
        except UserError as exc:
            raise UserError(f"kohya's file needs lr_warmup_steps, counted from the dataset's images: {exc}") from None
    return warmup_steps_for(total, settings.lr_warmup_ratio)


def total_steps(folders: list[DatasetFolder], settings: cfg.TrainSettings) -> int:
    """The run's steps as the training loop counts them (kohya's buckets included)."""
    from lora_gradio.engine.train.data import collect_items
    from lora_gradio.engine.train.loop import step_plan

    dataset = collect_items(folders, settings.caption_extension, settings.resolution, settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps)
    return step_plan(dataset, settings).total_steps


def warmup_steps_for(total: int, ratio: float) -> int:
    """Warmup steps as `optim.build_scheduler` counts them."""
    return int(round(total * ratio))


def _models_dir(project: Project) -> Path:
    return (project.root / MODELS_FOLDER).resolve()


def _url_file_name(url: str) -> str:
    return PurePosixPath(urlparse(url).path).name


def _model_version(location: str) -> str:
    """sd_v1/sd_v2/sd_v2_v of a local .safetensors model (kohya needs v2 = true for SD2); sd_v1 otherwise."""
    path = Path(location)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return "sd_v1"
    try:
        check_model_file(path)  # before reading its header: a broken file must not make us read gigabytes
        return detect_version(path)
    except (UserError, OSError, ValueError):
        return "sd_v1"


# Import ------------------------------------------------------------------------------------------


def looks_like_kohya(data: Mapping[str, Any]) -> bool:
    """Whether parsed TOML is one of kohya's files rather than this tool's ``[train]`` settings."""
    if cfg.SECTION in data:
        return False
    if any(name in data for name in TRAINING_SECTIONS) or "datasets" in data or "general" in data:
        return True
    flat = _flatten(data)
    return "pretrained_model_name_or_path" in flat or "network_module" in flat


def is_kohya_file(path: str | Path) -> bool:
    """Whether `path` is a readable TOML file in kohya's format (False for anything else)."""
    try:
        return looks_like_kohya(tomllib.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def split_uploaded(paths: list[str]) -> tuple[Path, Path | None]:
    """(training config, dataset config or None) among uploaded files, told apart by their content
    (uploads lose their names' meaning: a browser may rename them)."""
    training: list[Path] = []
    dataset: list[Path] = []
    for path in map(Path, paths):
        data = _read_toml(path)
        (dataset if "datasets" in data or "general" in data else training).append(path)
    if len(training) != 1 or len(dataset) > 1:
        raise UserError(
            f"Give one training_config.toml (and at most one dataset_config.toml); got {len(training)} training and {len(dataset)} dataset file(s)."
        )
    return training[0], (dataset[0] if dataset else None)


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
    raw = _read_toml(training_path)
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
    importer = _Importer(_Keys(training_path, _flatten_with_labels(raw)), project, base or cfg.TrainSettings())
    return importer.run(Path(dataset_path).expanduser() if dataset_path else None)


@dataclass
class _Origin:
    """Where a value came from, for error messages."""

    path: Path
    label: str
    value: Any = None

    def describe(self) -> str:
        return f"In {self.path}, {self.label}" + ("" if self.value is None else f" = {_show(self.value)}")


class _Keys:
    """One level of kohya keys (a training file, [general], a dataset, a subset), remembering which were read."""

    def __init__(self, path: Path, values: dict[str, tuple[Any, str]]):
        self.path = path
        self.values = values  # key -> (value, label such as "[training_arguments] seed")
        self.used: set = set()

    @classmethod
    def table(cls, path: Path, table: Mapping[str, Any], where: str) -> _Keys:
        return cls(path, {key: (value, f"{where} {key}") for key, value in table.items()})

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def raw(self, key: str, default: Any = None) -> Any:
        if key not in self.values:
            return default
        self.used.add(key)
        return self.values[key][0]

    def get(self, key: str, kind: type, default: Any = None) -> Any:
        """The value as `kind` (int, float, bool, str), or `default` when the key is absent."""
        if key not in self.values:
            return default
        return _convert(self, key, self.raw(key), kind)

    def origin(self, key: str) -> _Origin:
        value, label = self.values[key]
        return _Origin(self.path, label, value)

    def bad(self, key: str, advice: str) -> UserError:
        return UserError(f"{self.origin(key).describe()} is not allowed: {advice}.")

    def unused(self) -> list[str]:
        return [key for key in self.values if key not in self.used]


def _convert(keys: _Keys, key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise keys.bad(key, "use true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise keys.bad(key, "use text in quotes")
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise keys.bad(key, "use a number")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise keys.bad(key, "use a whole number")
        return int(value)
    return float(value)


@dataclass
class _Subset:
    """One [[datasets.subsets]] table with the values set on it or on its [[datasets]] (None: inherited)."""

    keys: _Keys
    directory: Path
    num_repeats: int | None
    is_reg: bool
    keep_tokens: int | None
    flip_aug: bool | None

    @property
    def plain(self) -> bool:
        """Nothing of its own but its repeats: the way the notebook lists the main dataset folder."""
        return self.num_repeats is not None and not self.is_reg and self.keep_tokens is None and self.flip_aug is None


class _Importer:
    """Builds this tool's settings from kohya's keys, remembering where each value came from."""

    def __init__(self, args: _Keys, project: Project | None, base: cfg.TrainSettings):
        self.args = args
        self.project = project
        self.base = base
        self.data = cfg.settings_to_toml(base)
        self.notes: list[str] = []
        self.origins: dict[str, _Origin] = {}
        self.dataset_levels: list[_Keys] = []
        self.folders: list[DatasetFolder] | None = None  # the dataset file's folders, to count steps

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

    def put(self, name: str, value: Any, keys: _Keys, key: str) -> None:
        self.data[name] = value
        self.origins[name] = keys.origin(key)

    def copy(self, pairs: tuple[tuple[str, str, type, Any], ...], keys: _Keys) -> None:
        """(name here, kohya key, type, kohya's default): a missing key means kohya's default."""
        for name, key, kind, default in pairs:
            if key in keys:
                self.put(name, keys.get(key, kind), keys, key)
            else:
                self.data[name] = default

    # Training file ----------------------------------------------------------------------------

    def _model(self) -> None:
        a = self.args
        spec = a.get("pretrained_model_name_or_path", str)
        if spec:
            self.put("training_model", self._preset_or_path(spec), a, "pretrained_model_name_or_path")
        else:
            self.notes.append(f"{a.path} names no base model (pretrained_model_name_or_path): training_model stays {self.base.training_model!r}.")
        for key in ("v2", "v_parameterization"):
            if a.get(key, bool):
                self.notes.append(f"{key} = true is not needed here: the model's version is read from the model file.")

    def _preset_or_path(self, spec: str) -> str:
        """The notebook's downloaded presets (e.g. /content/animefull-final-pruned-fp16.safetensors) become
        the preset again; a copy of one that exists elsewhere on this machine stays a path."""
        path = Path(spec).expanduser()
        stem = PurePosixPath(spec.replace("\\", "/")).stem
        for key, preset in PRESETS.items():
            if PurePosixPath(_url_file_name(preset.url)).stem != stem:
                continue
            ours = self.project is not None and path.resolve().parent == _models_dir(self.project)
            if path.exists() and not ours:
                return spec
            if not ours:
                self.notes.append(f"pretrained_model_name_or_path = {spec} is the notebook's {preset.label.split(' (')[0]} model: imported as the preset {key!r}.")
            return key
        return spec

    def _network(self) -> None:
        a = self.args
        self.copy((("network_dim", "network_dim", int, 4),), a)  # kohya's lora.py defaults: dim 4, alpha 1
        if "network_alpha" in a:
            self.put("network_alpha", _whole(a, "network_alpha"), a, "network_alpha")
        else:
            self.data["network_alpha"] = 1
        module = a.get("network_module", str)
        args = self._network_args()
        if module is None:
            self.notes.append(f"{a.path} names no network_module: lora_type stays {self.base.lora_type}.")
            return
        if module == "networks.lora":
            lora_type = "LoCon" if "conv_dim" in args else "LoRA"
            conv_defaults = (self.data["network_dim"], 1)
        elif module == "lycoris.kohya":
            algo = args.pop("algo", "lora").lower()
            if algo not in _LYCORIS_TYPES:
                raise a.bad("network_args", f"algo={algo} is not supported here: use algo=locon, loha, lokr or ia3 (DoRA: algo=locon with dora_wd=True)")
            lora_type = _LYCORIS_TYPES[algo]
            if algo == "lora":
                self.notes.append("network_args algo=lora of LyCORIS trains the conv layers too: imported as lora_type LoCon.")
            if _true(args.pop("dora_wd", "False")):
                if lora_type != "LoCon":
                    raise a.bad("network_args", "dora_wd=True works with algo=locon only (that is DoRA)")
                lora_type = "DoRA"
            conv_defaults = (self.data["network_dim"], self.data["network_alpha"])  # lycoris' own defaults
        else:
            raise a.bad("network_module", "use networks.lora (LoRA, LoCon) or lycoris.kohya (LoHa, LoKr, IA3, DoRA); other network types are not supported here")
        self.put("lora_type", lora_type, a, "network_module")
        for name, default in zip(("conv_dim", "conv_alpha"), conv_defaults):
            text = args.pop(name, None)
            if lora_type != "LoRA":
                self.data[name] = _network_int(a, name, text) if text is not None else default
                if text is not None:
                    self.origins[name] = a.origin("network_args")
        factor = args.pop("factor", "-1")
        if lora_type == "LoKr" and factor.strip() != "-1":
            self.notes.append(f"network_args factor={factor} is not used here: LoKr uses factor -1 (the default).")
        for name, value in args.items():
            self.notes.append(f"network_args {name}={value} has no equivalent here, ignored.")

    def _network_args(self) -> dict[str, str]:
        a = self.args
        value = a.raw("network_args", [])
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(item, str) and "=" in item for item in value):
            raise a.bad("network_args", 'use a list of "key=value" texts, e.g. ["conv_dim=8", "conv_alpha=4"]')
        return {key.strip(): text.strip() for key, _, text in (item.partition("=") for item in value)}

    def _learning_rates(self) -> None:
        """kohya's learning_rate is the default of both unet_lr and text_encoder_lr."""
        a = self.args
        a.raw("learning_rate")  # read here: with both rates set it is unused, as in kohya
        unet_key = next((key for key in ("unet_lr", "learning_rate") if key in a), None)
        if unet_key:
            self.put("unet_lr", a.get(unet_key, float), a, unet_key)
        else:
            self.notes.append(f"{a.path} sets no learning_rate or unet_lr: unet_lr stays {self.base.unet_lr}.")
        if a.get("network_train_text_encoder_only", bool):
            raise a.bad("network_train_text_encoder_only", "this tool always trains the UNet; remove the key")
        if a.get("network_train_unet_only", bool):
            a.raw("text_encoder_lr")
            self.put("text_encoder_lr", 0.0, a, "network_train_unet_only")
        else:
            te_key = next((key for key in ("text_encoder_lr", "learning_rate") if key in a), None)
            if te_key:
                self.put("text_encoder_lr", a.get(te_key, float), a, te_key)
        self.copy((("continue_from_lora", "network_weights", str, ""),), a)

    def _scheduler(self) -> None:
        a = self.args
        self.copy((("lr_scheduler", "lr_scheduler", str, "constant"),), a)
        scheduler = str(self.data["lr_scheduler"]).lower()
        # One number here: the power of polynomial, the restarts of cosine_with_restarts (kohya's defaults: 1).
        used, unused = ("lr_scheduler_power", "lr_scheduler_num_cycles") if scheduler == "polynomial" else ("lr_scheduler_num_cycles", "lr_scheduler_power")
        a.raw(unused)  # kohya ignores it with this scheduler too
        if used in a:
            self.put("lr_scheduler_number", a.get(used, int), a, used)
        elif scheduler in ("polynomial", "cosine_with_restarts"):
            self.data["lr_scheduler_number"] = 1

    def _optimizer(self) -> None:
        a = self.args
        if "optimizer_type" in a:
            name = a.get("optimizer_type", str)
            found = _OPTIMIZER_FROM_KOHYA.get(name.lower())
            if name.lower() in ("dadaptation", "dadaptadampreprint"):
                found = "DAdaptation"
                self.notes.append(f"optimizer_type = {name} is kohya's DAdaptAdamPreprint: imported as DAdaptation, which runs DAdaptAdam here.")
            if found is None:
                raise a.bad("optimizer_type", f"use one of {', '.join(_OPTIMIZER_TO_KOHYA.get(o, o) for o in cfg.OPTIMIZERS)}")
            self.put("optimizer", found, a, "optimizer_type")
        elif a.get("use_8bit_adam", bool):
            self.put("optimizer", "AdamW8bit", a, "use_8bit_adam")
        elif a.get("use_lion_optimizer", bool):
            self.put("optimizer", "Lion", a, "use_lion_optimizer")
        else:
            self.data["optimizer"] = "AdamW"  # kohya's default
        value = a.raw("optimizer_args", [])
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise a.bad("optimizer_args", 'use a list of "key=value" texts, e.g. ["weight_decay=0.1"]')
        self.data["optimizer_args"] = value
        if "optimizer_args" in a:
            self.origins["optimizer_args"] = a.origin("optimizer_args")

    def _length(self) -> None:
        a = self.args
        epochs, steps = a.get("max_train_epochs", int), a.get("max_train_steps", int)
        if epochs:
            self.put("preferred_unit", "Epochs", a, "max_train_epochs")
            self.put("how_many", epochs, a, "max_train_epochs")
            if steps:
                self.notes.append(f"max_train_steps = {steps} is ignored, as kohya does, because max_train_epochs is set.")
        elif steps:
            self.put("preferred_unit", "Steps", a, "max_train_steps")
            self.put("how_many", steps, a, "max_train_steps")
        else:
            self.data.update(preferred_unit="Steps", how_many=1600)
            self.notes.append(f"{a.path} sets neither max_train_epochs nor max_train_steps: kohya's default of 1600 steps is used.")

    def _training(self) -> None:
        a = self.args
        self.copy((
            ("save_every_n_epochs", "save_every_n_epochs", int, 0),
            ("keep_only_last_n_epochs", "save_last_n_epochs", int, 0),
            ("train_batch_size", "train_batch_size", int, 1),
            ("noise_offset", "noise_offset", float, 0.0),
            ("clip_skip", "clip_skip", int, 1),
            ("weighted_captions", "weighted_captions", bool, False),
            ("max_token_length", "max_token_length", int, 75),
            ("gradient_checkpointing", "gradient_checkpointing", bool, False),
            ("prior_loss_weight", "prior_loss_weight", float, 1.0),
            ("cache_latents", "cache_latents", bool, False),
            ("cache_latents_to_disk", "cache_latents_to_disk", bool, False),
            ("mixed_precision", "mixed_precision", str, "no"),
            ("save_precision", "save_precision", str, "float"),  # unset: kohya saves the float32 weights
            ("sample_every_n_epochs", "sample_every_n_epochs", int, 0),
        ), a)
        if self.data["mixed_precision"] == "fp16" and self.base.mixed_precision == "auto":
            # Export writes "auto" as fp16 (kohya has no auto), and fp16 was the notebook's only choice (for the T4).
            self.data["mixed_precision"] = "auto"
            self.notes.append("mixed_precision = fp16 is imported as auto (fp16, or bf16 where the GPU has it); --set mixed_precision=fp16 forces fp16.")
        gamma = a.get("min_snr_gamma", float)
        if gamma is None:
            self.data["min_snr_gamma"] = False
        else:
            self.put("min_snr_gamma", True if gamma == cfg.DEFAULT_MIN_SNR_GAMMA else gamma, a, "min_snr_gamma")
        if "seed" in a:
            self.put("seed", a.get("seed", int), a, "seed")
        else:
            self.notes.append(f"{a.path} sets no seed (kohya picks a random one each run): seed stays {self.base.seed}.")
        self._sample_prompts()

    def _sample_prompts(self) -> None:
        a = self.args
        location = a.get("sample_prompts", str)
        if location is None:
            self.data["sample_prompts"] = []
            return
        path = Path(location).expanduser()
        path = path if path.is_absolute() else a.path.parent / path
        if path.suffix.lower() != ".txt" or not path.is_file():
            why = "does not exist" if not path.is_file() else "is not a .txt file"
            self.notes.append(f"sample_prompts = {location} {why}: sample_prompts stay as they were.")
            return
        prompts, with_options = [], False
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                prompt, options, _ = line.partition(" --")  # kohya's per-prompt options: --n negative, --w width ...
                with_options = with_options or bool(options)
                prompts.append(prompt.strip())
        if with_options:
            self.notes.append(f"the prompt options (--n, --w, --s ...) in {path.name} are not used here: only the prompts were imported.")
        self.put("sample_prompts", prompts, a, "sample_prompts")

    def _outputs(self) -> None:
        a = self.args
        name = a.get("output_name", str)
        if name is not None:
            self.put("output_name", "" if self.project is not None and name == self.project.base else name, a, "output_name")
        a.raw("log_prefix")  # names the logs only
        model_format = a.get("save_model_as", str)
        if model_format not in (None, "safetensors"):
            self.notes.append(f"save_model_as = {model_format} is ignored: this tool saves .safetensors files.")
        # kohya's output and log folders are the project's here: only another folder is worth a note.
        folders = {"output_dir": self.project.output_dir, "logging_dir": self.project.log_dir} if self.project else {}
        for key in ("output_dir", "logging_dir"):
            value = a.get(key, str)
            if value is not None and (key not in folders or Path(value).expanduser().resolve() != folders[key].resolve()):
                self.notes.append(f"{key} = {value} is ignored: this tool writes to the project's {'output' if key == 'output_dir' else 'log'} folder.")

    # Dataset file -----------------------------------------------------------------------------

    def _find_dataset_config(self, given: Path | None) -> Path | None:
        a = self.args
        named = a.get("dataset_config", str)
        if given is not None:
            if not given.is_file():
                raise UserError(f"The dataset config {given} does not exist: give the {DATASET_FILE} written with {a.path.name}.")
            return given
        beside = a.path.parent / DATASET_FILE
        if named:
            path = Path(named).expanduser()
            path = path if path.is_absolute() else a.path.parent / path
            if path.is_file():
                return path
            if beside.is_file():
                self.notes.append(f"dataset_config = {named} does not exist: read {beside} instead.")
                return beside
        elif beside.is_file():
            return beside
        if "train_data_dir" in a:
            self.notes.append(f"train_data_dir = {a.raw('train_data_dir')} is not read here (kohya's REPEATS_NAME folders): set custom_dataset for folders with their own repeats.")
        self.notes.append(f"No {DATASET_FILE} found beside {a.path}: the dataset settings stay as they were, except those set in the training file.")
        return None

    def _dataset_keys_in_training_file(self) -> None:
        self._run_wide([[self.args]], kohya_defaults=False)
        for name, key, kind in (("activation_tags", "keep_tokens", int), ("flip_aug", "flip_aug", bool)):
            if key in self.args:
                self.put(name, self.args.get(key, kind), self.args, key)

    def _dataset(self, path: Path) -> None:
        data = _read_toml(path)
        for key, value in data.items():
            if key not in ("general", "datasets"):
                self.notes.append(f"kohya key {key} = {_show(value)} in {path.name} has no equivalent here, ignored.")
        general = _Keys.table(path, _table(data, "general", path), "[general]")
        self.dataset_levels.append(general)
        datasets = data.get("datasets")
        if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) for d in datasets):
            raise UserError(f"{path} has no [[datasets]] table: it needs one, with a [[datasets.subsets]] table naming each image_dir.")
        chains: list[list[_Keys]] = []
        for d_number, dataset in enumerate(datasets, start=1):
            level = _Keys.table(path, {k: v for k, v in dataset.items() if k != "subsets"}, f"[[datasets]] #{d_number}")
            subsets = dataset.get("subsets")
            if not isinstance(subsets, list) or not subsets or not all(isinstance(s, dict) for s in subsets):
                raise UserError(f"In {path}, [[datasets]] #{d_number} has no [[datasets.subsets]]: add one per image folder, with its image_dir.")
            self.dataset_levels.append(level)
            for s_number, subset in enumerate(subsets, start=1):
                keys = _Keys.table(path, subset, f"[[datasets.subsets]] #{s_number} of dataset #{d_number}:")
                self.dataset_levels.append(keys)
                chains.append([keys, level, general, self.args])
        self._run_wide(chains, kohya_defaults=True)
        self._folders(path, chains)

    def _run_wide(self, chains: list[list[_Keys]], kohya_defaults: bool) -> None:
        """Keys that are one value for the whole run here (kohya allows one per subset): the subsets must agree."""
        for name, key, kind, default in _RUN_WIDE_DATASET_KEYS:
            hit = _agreed(chains, key)
            if hit is not None:
                self.put(name, self._run_wide_value(name, kind, *hit), *hit)
            elif kohya_defaults and default is not None:
                self.data[name] = default
        for key, ignored in (("enable_bucket", False), ("bucket_no_upscale", True)):
            hit = _agreed(chains, key)
            if hit is not None and hit[0].get(key, bool) is ignored:
                self.notes.append(f"{key} = {str(ignored).lower()} is ignored: this tool always sorts images into aspect-ratio buckets, upscaling small ones.")

    def _run_wide_value(self, name: str, kind: Any, keys: _Keys, key: str) -> Any:
        value = keys.raw(key)
        if name == "resolution":  # 512, [512, 512] or kohya's command-line "512,512"
            parts = [part.strip() for part in value.split(",")] if isinstance(value, str) else value if isinstance(value, list) else [value]
            if len(parts) not in (1, 2) or len({str(part) for part in parts}) != 1:
                raise keys.bad(key, "this tool trains square images: use one number, e.g. resolution = 512")
            value = int(parts[0]) if isinstance(parts[0], str) and parts[0].isdigit() else parts[0]
            return _convert(keys, key, value, int)
        value = _convert(keys, key, value, kind)
        if name == "caption_extension" and value == "":
            self.notes.append(
                f"caption_extension = \"\" means the images have no caption files (kohya then uses class_tokens): "
                f"kept {self.base.caption_extension!r}; images without one train with an empty caption."
            )
            return self.base.caption_extension
        return value

    def _folders(self, path: Path, chains: list[list[_Keys]]) -> None:
        from lora_gradio.engine.train.data import DatasetFolder

        # [general] (or the training file) holds the main settings; [[datasets]] and subsets hold a folder's own.
        main: dict[str, Any] = {}
        for name, key, kind, default in (("activation_tags", "keep_tokens", int, 0), ("flip_aug", "flip_aug", bool, False)):
            hit = _lookup(chains[0][2:], key)
            main[key] = _convert(hit[0], key, hit[0].raw(key), kind) if hit else default
            self.data[name] = main[key]
            if hit:
                self.origins[name] = hit[0].origin(key)
        general_repeats = _value(chains[0][2:3], "num_repeats", int)
        subsets = [self._subset(chain) for chain in chains]
        self.folders = [
            DatasetFolder(
                path=s.directory,
                num_repeats=s.num_repeats if s.num_repeats is not None else (general_repeats or 1),
                is_reg=s.is_reg,
                keep_tokens=main["keep_tokens"] if s.keep_tokens is None else s.keep_tokens,
                flip_aug=main["flip_aug"] if s.flip_aug is None else s.flip_aug,
            )
            for s in subsets
        ]
        repeats = {s.num_repeats for s in subsets}
        plain = general_repeats is None and len(repeats) == 1 and all(s.plain for s in subsets)
        if self.project is None:
            if not (plain and len(subsets) == 1):
                raise UserError(f"{path} lists image folders of their own: import it into a project (train NAME --config FILE), where they become custom_dataset folders.")
            self.data.update(num_repeats=subsets[0].num_repeats, custom_dataset=[])
            self.notes.append(f"image_dir = {subsets[0].directory}: the project's dataset folder is what gets trained here.")
            return
        if plain and sorted(s.directory for s in subsets) == sorted(p.resolve() for p in main_folders(self.project)):
            self.data.update(num_repeats=repeats.pop(), custom_dataset=[])
            return
        if general_repeats is not None:
            self.data["num_repeats"] = general_repeats
        self.data["custom_dataset"] = [self._custom_entry(s, general_repeats) for s in subsets]
        self.origins["custom_dataset"] = _Origin(path, "[[datasets.subsets]]")

    def _subset(self, chain: list[_Keys]) -> _Subset:
        keys, own = chain[0], chain[:2]
        if "metadata_file" in keys:
            raise keys.bad("metadata_file", "fine-tuning subsets (metadata_file) are not supported here; use image_dir with caption files beside the images")
        if "image_dir" not in keys:
            raise UserError(f"In {keys.path}, a [[datasets.subsets]] table has no image_dir: add the folder of its images.")
        directory = Path(keys.get("image_dir", str)).expanduser()
        if not directory.is_absolute():
            if self.project is None:
                raise keys.bad("image_dir", "a relative folder needs a project: import it into a project, or write the full path")
            directory = self.project.dataset_root / directory
        return _Subset(
            keys=keys,
            directory=self._on_this_machine(directory.resolve()),
            num_repeats=_value(own, "num_repeats", int),
            is_reg=bool(_value(own, "is_reg", bool)),
            keep_tokens=_value(own, "keep_tokens", int),
            flip_aug=_value(own, "flip_aug", bool),
        )

    def _on_this_machine(self, directory: Path) -> Path:
        """A folder of the notebook's Google Drive (.../Loras/NAME/dataset/SUB or .../datasets/NAME/SUB) that is
        not on this machine is read as the same folder of the project."""
        if directory.exists() or self.project is None:
            return directory
        base, parts = self.project.base, directory.parts
        for start in range(len(parts) - 1):
            if parts[start : start + 2] in ((base, "dataset"), ("datasets", base)):
                mapped = self.project.dataset_root.joinpath(*parts[start + 2 :]).resolve()
                self.notes.append(f"image_dir = {directory} is not on this machine: read as the project's {mapped}.")
                return mapped
        return directory

    def _custom_entry(self, subset: _Subset, general_repeats: int | None) -> dict[str, Any]:
        root = self.project.dataset_root.resolve()
        try:
            folder = subset.directory.relative_to(root).as_posix() or "."
        except ValueError:
            raise subset.keys.bad("image_dir", f"the folder is outside the project's dataset folder {root}: move or copy it into {root}, then import again") from None
        # A folder's unset repeats mean the main num_repeats here, but kohya's default (1) without [general] num_repeats.
        repeats = subset.num_repeats if subset.num_repeats is not None or general_repeats is not None else 1
        entry = {"folder": folder, "num_repeats": repeats, "is_reg": subset.is_reg, "keep_tokens": subset.keep_tokens, "flip_aug": subset.flip_aug}
        return {key: value for key, value in entry.items() if value is not None}

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
                self.notes.append(f"lr_warmup_steps = {_show(raw)} is ignored with lr_scheduler = constant, as kohya does (use constant_with_warmup).")
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
                    self.notes.append(f"kohya key {label} = {_show(value)} has no equivalent here, ignored{f' ({reason})' if reason else ''}.")
        if runtime:
            self.notes.append(f"kohya's speed and memory options ({', '.join(runtime)}) are chosen by this tool itself, ignored.")


def _lookup(chain: list[_Keys], key: str) -> tuple[_Keys, str] | None:
    """The first level of `chain` (subset, dataset, [general], training file) that sets `key`."""
    for keys in chain:
        if key in keys:
            return keys, key
    return None


def _value(chain: list[_Keys], key: str, kind: type) -> Any:
    hit = _lookup(chain, key)
    return hit[0].get(key, kind) if hit else None


def _agreed(chains: list[list[_Keys]], key: str) -> tuple[_Keys, str] | None:
    """Where `key` is set for every subset, refusing subsets that disagree."""
    hits = [hit for hit in (_lookup(chain, key) for chain in chains) if hit]
    values = sorted({json.dumps(keys.raw(k)) for keys, k in hits})
    if len(values) > 1:
        raise hits[-1][0].bad(key, f"the subsets disagree on {key} ({', '.join(values)}), but this tool uses one for the whole run; make them equal")
    return hits[0] if hits else None


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


# Small helpers -----------------------------------------------------------------------------------


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: check the path of the kohya config file.") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid TOML ({exc}): fix it.") from None


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, (value, _) in _flatten_with_labels(data).items()}


def _flatten_with_labels(data: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """kohya merges every section into one set of arguments (a later section wins); top-level keys count too."""
    flat: dict[str, tuple[Any, str]] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            for key, inner in value.items():
                flat[key] = (inner, f"[{name}] {key}")
        else:
            flat[name] = (value, name)
    return flat


def _table(data: Mapping[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise UserError(f"In {path}, {name} must be a table ([{name}]): fix the file.")
    return value


def _whole(keys: _Keys, key: str) -> int:
    value = _convert(keys, key, keys.raw(key), float)
    if not value.is_integer():
        raise keys.bad(key, "this tool keeps alpha a whole number: round it, e.g. 8")
    return int(value)


def _network_int(keys: _Keys, name: str, text: str) -> int:
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise keys.bad("network_args", f"{name}={text} must be a whole number, e.g. {name}=8")
    return int(number)


def _true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, dict)):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:77] + "..."
    return str(value)
