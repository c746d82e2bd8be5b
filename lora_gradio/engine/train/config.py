"""Training settings: the ONE source of defaults, limits and help text (UI, CLI and TOML read them here).

Keys keep the names of holostrawberry's Lora Trainer notebook so its users recognise them; the help
texts carry the guide's advice. The settings live in the project's settings file, section ``[train]``;
saving writes every key, so the file documents the run it made, and a missing key takes its default.
Everything is validated here, before anything heavy (torch, the model) loads.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import textwrap
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Literal, Mapping, Optional, Union

from pydantic import Field, StrictBool

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train.steps import MAX_STEPS
from lora_gradio.engine.settings_model import (
    FieldSpec,
    SettingsBase,
    allowed,
    allowed_phrase,
    describe_allowed,
    field_check,
    field_infos,
    literal_choices,
    model_check,
    to_dict,
    validate,
)

if TYPE_CHECKING:
    from lora_gradio.engine.project import Project

SECTION = "train"
HELP_HINT = "see `lora-gradio train --help-settings`"
# min_snr_gamma = true means the paper's (and the notebook's) 5.0.
DEFAULT_MIN_SNR_GAMMA = 5.0
# The notebooks' base models (engine/train/models.py has their links): SD 1.5 guide, then the XL notebook.
MODEL_PRESETS = ("anime", "anylora", "sd15", "illustrious", "noobai_eps", "noobai_vpred", "pony", "animagine", "sdxl")
LORA_TYPES = ("LoRA", "LoCon", "LoHa", "LoKr", "IA3", "DoRA")
OPTIMIZERS = ("AdamW8bit", "AdamW", "Prodigy", "DAdaptation", "Lion", "AdaFactor", "CAME")
# These pick their own step size; their "learning rate" is a multiplier around 1.0.
ADAPTIVE_OPTIMIZERS = ("Prodigy", "DAdaptation")
# Literal[TUPLE] is Literal[a, b, ...]: the choices are written once, here.
PRECISIONS = ("auto", "fp16", "bf16", "no", "full_fp16", "full_bf16")
SCHEDULERS = ("constant", "cosine", "cosine_with_restarts", "constant_with_warmup", "linear", "polynomial", "rex")
_SAFE_NAME = re.compile(r"^[\w][\w.-]*$", re.UNICODE)


class FolderSettings(SettingsBase):
    """One entry of ``custom_dataset``: a folder under the project's dataset folder with its own settings."""

    folder: str = Field(..., **allowed("a folder name inside the project's dataset folder"), description="Folder name inside the project's dataset folder, e.g. 'good_images'.")
    num_repeats: Optional[int] = Field(None, ge=1, le=1000, description="Repeats for this folder (default: the main num_repeats).")
    is_reg: bool = Field(False, description="A regularization folder: its images are repeated to match the training images.")
    keep_tokens: Optional[int] = Field(None, ge=0, le=32, description="Leading tags kept in place (default: activation_tags).")
    flip_aug: Optional[bool] = Field(None, description="Mirror images at random (default: the main flip_aug).")

    @field_check("folder", before=True)
    def check_folder(cls, value: Any) -> Any:
        if not isinstance(value, str) or not value.strip():
            raise ValueError("give the folder's name inside the project's dataset folder, e.g. 'good_images'")
        posix, windows = PurePosixPath(value), PureWindowsPath(value)
        if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
            raise ValueError("give the folder's name relative to the project's dataset folder (no absolute path, no '..'), e.g. 'good_images'")
        return value.strip()


def _check_combination(values: Mapping[str, Any]) -> None:
    """Checks that involve several fields; each message says how to fix it."""
    resolution, low, high = values["resolution"], values["min_bucket_reso"], values["max_bucket_reso"]
    if not low <= resolution <= high:
        raise ValueError(
            f"min_bucket_reso ({low}) <= resolution ({resolution}) <= max_bucket_reso ({high}) must hold: change the bucket limits or the resolution"
        )
    if values["optimizer"] not in ADAPTIVE_OPTIMIZERS:
        for key in ("unet_lr", "text_encoder_lr"):
            if values[key] >= 1:
                raise ValueError(
                    f"{key} = {values[key]} is far too high for {values['optimizer']}: use a number below 1 such as "
                    f"{'5e-4' if key == 'unet_lr' else '1e-4'} (rates around 1.0 are for Prodigy/DAdaptation)"
                )


class TrainSettings(SettingsBase):
    """Every training setting, with the guide's defaults. Field order is the order the UI and help show."""

    # Model
    training_model: str = Field(
        "anime",
        **allowed("a preset (" + ", ".join(MODEL_PRESETS) + "), a model file, a diffusers folder, a repo id or a link"),
        description="Base model: SD 1.5 'anime', 'anylora' or 'sd15' (the guide's presets); SDXL 'illustrious' (the XL notebook's default), "
        "'noobai_eps', 'noobai_vpred', 'pony', 'animagine' or 'sdxl'; or a .safetensors/.ckpt path, a diffusers folder, "
        "a Hugging Face repo id, or a download link (Hugging Face or civitai). Choosing an SDXL model offers the XL notebook's defaults.",
    )
    v_pred: bool = Field(
        False,
        description="The base model predicts v (\"is v-pred\", e.g. NoobAI V-Pred): trains with v-prediction. "
        "Read from the model when it says so (a v_pred key, a v-pred scheduler, the noobai_vpred preset); set it for other v-pred models, "
        "or their LoRAs give black images.",
    )
    zero_terminal_snr: bool = Field(False, description="With v-prediction: rescale the noise schedule so its last step is pure noise, as NoobAI V-Pred was trained (on for SDXL).")
    scale_v_pred_loss: bool = Field(False, description="With v-prediction: scale the loss like noise prediction's, as the XL notebook does (on for SDXL).")
    # Processing
    resolution: int = Field(512, ge=256, le=2048, multiple_of=64, description="Training resolution: 512 for SD 1.5 models, 1024 for SDXL.")
    flip_aug: bool = Field(False, description="Mirror images at random: doubles a small dataset (under ~20 images), but not for asymmetric characters.")
    shuffle_tags: bool = Field(True, description="Shuffle the tags of each caption every time: improves learning and prompting with anime tags.")
    activation_tags: int = Field(1, ge=0, le=32, description="How many leading tags stay in place when shuffling (keep_tokens): 1 keeps your activation tag first.")
    caption_extension: str = Field(".txt", **allowed("an extension with its dot, e.g. .txt"), description="Extension of the caption files next to the images.")
    # Steps
    num_repeats: int = Field(10, ge=1, le=1000, description="Times each image is seen per epoch; the guide: images x repeats between 200 and 400 (e.g. 20 images x 10).")
    preferred_unit: Literal["Epochs", "Steps"] = Field("Epochs", description="Whether how_many counts epochs or steps.")
    how_many: int = Field(10, ge=1, le=100_000, description="How long to train: a good start is about 10 epochs or about 2000 steps.")
    save_every_n_epochs: int = Field(1, ge=0, le=10_000, description="Save a LoRA every N epochs, to compare them later (0: only the last).")
    keep_only_last_n_epochs: int = Field(10, ge=0, le=10_000, description="Keep only the newest N saved epochs (0: keep all).")
    train_batch_size: int = Field(2, ge=1, le=64, description="Images per step: higher is faster but uses more memory; 2 fits a free Colab T4.")
    # Learning
    unet_lr: float = Field(5e-4, ge=0, le=10, **allowed("a number >= 0 and < 1 (up to 10 with Prodigy/DAdaptation)"), description="UNet learning rate, the most important setting: 5e-4 (lower to 2e-4 for many images or high dim). Prodigy/DAdaptation: about 1.0.")
    text_encoder_lr: float = Field(1e-4, ge=0, le=10, **allowed("a number >= 0 and < 1 (up to 10 with Prodigy/DAdaptation)"), description="Text encoder learning rate: a half to a fifth of the UNet's (1e-4); 0 trains the UNet only (fine for styles).")
    lr_scheduler: Literal[SCHEDULERS] = Field(
        "cosine_with_restarts", description="How the learning rate changes: the guide recommends cosine_with_restarts with 3 restarts; constant if unsure; "
        "rex falls slowly at first, then to zero (the XL notebook offers it)."
    )
    lr_scheduler_number: int = Field(3, ge=1, le=100, description="Restarts for cosine_with_restarts (guide: 3), or the power for polynomial.")
    lr_warmup_ratio: float = Field(0.05, ge=0, le=0.5, description="Fraction of steps spent warming up the learning rate: the guide leaves it at 5%.")
    min_snr_gamma: Union[StrictBool, float] = Field(
        True,
        **allowed("true (= 5.0), false, or a number 0..100 (0 = off)"),
        description="Min-SNR loss weighting, learns faster (about half the epochs): true = 5.0 (the paper's value), a number for another gamma, false or 0 = off."
    )
    # Structure
    lora_type: Literal[LORA_TYPES] = Field(
        "LoRA", description="LoRA: the classic, good for most things; LoCon also trains conv layers, good for art styles. LoHa/LoKr/IA3/DoRA via LyCORIS."
    )
    network_dim: int = Field(16, ge=1, le=1024, description="LoRA size (rank): the guide uses dim 16 with alpha 8; more holds more but isn't always better.")
    network_alpha: int = Field(8, ge=1, le=1024, description="Scales the LoRA's strength: half the dim (16/8) is the guide's choice.")
    conv_dim: int = Field(8, ge=1, le=1024, description="LoCon only: size of the conv layers (guide: 8).")
    conv_alpha: int = Field(4, ge=1, le=1024, description="LoCon only: alpha of the conv layers (guide: 4).")
    # Training
    optimizer: Literal[OPTIMIZERS] = Field(
        "AdamW8bit", description="AdamW8bit is the guide's default (AdamW on a CPU); Prodigy/DAdaptation set their own rate (use lr ~1.0 and alpha = dim); "
        "CAME (the XL notebook's, with weight_decay=0.04) needs `pip install pytorch-optimizer`."
    )
    optimizer_args: List[str] = Field(
        default_factory=list,
        **allowed("a list of key=value"),
        description="Extra optimizer arguments as key=value, e.g. weight_decay=0.1 betas=[0.9,0.99] (AdamW8bit) or decouple=True d_coef=2 (Prodigy)."
    )
    custom_dataset: List[FolderSettings] = Field(
        default_factory=list,
        **allowed("a list of {folder, num_repeats, is_reg, keep_tokens, flip_aug} (JSON on the command line)"),
        description="Several folders with their own repeats: [{folder, num_repeats, is_reg, keep_tokens, flip_aug}]; replaces the main folder and num_repeats when set.",
    )
    continue_from_lora: str = Field("", **allowed("a .safetensors file, or ''"), description="A LoRA file to continue training from ('' = start fresh); epochs start from scratch.")
    weighted_captions: bool = Field(False, description="Allow (tag:1.2) weights in captions like WebUI prompts; escape literal parentheses as \\( \\).")
    clip_skip: int = Field(2, ge=1, le=12, description="Use the text encoder's N-th last layer: 2 for anime models (NovelAI lineage), 1 for SD1.5 photo models; SDXL ignores it (kohya: always the penultimate layer).")
    max_token_length: Literal[75, 150, 225] = Field(225, description="Longest caption in tokens: 225 fits long tag lists.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Random seed, for repeatable runs.")
    mixed_precision: Literal[PRECISIONS] = Field(
        "auto",
        description="auto: mixed bf16 where the GPU has it, else mixed fp16; fp16/bf16: mixed (the LoRA in fp32); "
        "full_fp16/full_bf16: the LoRA and its gradients in 16 bits too, the least memory (the XL notebook's full fp16 fits a T4); "
        "no: float32. On a CPU only bf16/full_bf16 are kept (torch's CPU autocast); the others train in float32 there.",
    )
    save_precision: Literal["fp16", "bf16", "float"] = Field("fp16", description="Precision of the saved LoRA file: fp16 loads everywhere.")
    noise_offset: float = Field(0.0, ge=0, le=1, description="Helps very dark or bright images (0.03-0.1); 0 = off.")
    multires_noise_iterations: int = Field(0, ge=0, le=16, description="Multires (pyramid) noise: adds noise at coarser scales, for more contrast; the XL notebook uses 6 (0 = off).")
    multires_noise_discount: float = Field(0.3, ge=0, le=1, description="How fast the multires noise fades at coarser scales (the XL notebook: 0.3).")
    ip_noise_gamma: float = Field(0.0, ge=0, le=1, description="Input perturbation noise: a little extra noise on the inputs only, regularizes (0.05-0.1 if on); 0 = off.")
    cache_text_encoder_outputs: bool = Field(False, description="Encode every caption once and keep the result: saves memory and time, but turns off tag shuffling and text-encoder training.")
    sample_prompts: List[str] = Field(default_factory=list, **allowed("a list of prompts (separated by | on the command line)"), description="Prompts for sample images while training (one per entry).")
    sample_every_n_epochs: int = Field(0, ge=0, le=10_000, description="Make sample images every N epochs (0 = off).")
    # What the notebook set for you
    output_name: str = Field("", **allowed("letters, digits, _ - . or ''"), description="Name of the LoRA files, NAME-01.safetensors ...; '' = the project's name.")
    min_bucket_reso: int = Field(256, ge=64, le=4096, multiple_of=8, description="Smallest side of an aspect-ratio bucket.")
    max_bucket_reso: int = Field(1024, ge=64, le=4096, multiple_of=8, description="Largest side of an aspect-ratio bucket.")
    bucket_reso_steps: int = Field(64, ge=8, le=512, multiple_of=8, description="Bucket sides are multiples of this.")
    cache_latents: bool = Field(True, description="Encode each image once instead of every step. This trainer always does (it has no random crops, so caching changes nothing but speed); the key is kept for kohya's files and metadata.")
    cache_latents_to_disk: bool = Field(True, description="Keep the cached latents next to the images (~250KB each) so later runs skip encoding.")
    gradient_checkpointing: bool = Field(False, description="Save memory at about 30% more time per step: for small GPUs or big batches.")
    prior_loss_weight: float = Field(1.0, ge=0, le=10, description="Loss weight of regularization images (is_reg folders).")
    force_steps: bool = Field(False, description=f"Train even past {MAX_STEPS:,} steps (otherwise refused as a probable mistake).")

    @field_check("custom_dataset", before=True)
    def accept_folder_aliases(cls, value: Any) -> Any:
        # The main settings call it activation_tags, the notebook's folder template keep_tokens: accept both.
        if isinstance(value, list):
            value = [_rename(entry, "activation_tags", "keep_tokens") if isinstance(entry, dict) else entry for entry in value]
        return value

    @field_check("training_model", "continue_from_lora", "output_name", "caption_extension", before=True)
    def strip_text(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @field_check("training_model")
    def check_model(cls, value: str) -> str:
        if not value:
            raise ValueError(f"choose a base model: {', '.join(MODEL_PRESETS)}, a model file, a diffusers folder, a repo id or a link")
        return value

    @field_check("caption_extension")
    def check_caption_extension(cls, value: str) -> str:
        if not re.fullmatch(r"\.[\w.-]+", value):
            raise ValueError("write the caption files' extension with its dot, e.g. '.txt' or '.caption'")
        return value

    @field_check("output_name")
    def check_output_name(cls, value: str) -> str:
        if value and not _SAFE_NAME.match(value):
            raise ValueError("use letters, digits, '_', '-' or '.' only (it becomes the file name), or '' for the project's name")
        return value

    @field_check("min_snr_gamma")
    def check_min_snr_gamma(cls, value: Union[bool, float]) -> Union[bool, float]:
        if not isinstance(value, bool) and not 0 <= value <= 100:  # NaN fails the comparison too
            raise ValueError("use true (= 5.0), false, or a number from 0 to 100 (0 = off)")
        return value

    @field_check("optimizer_args")
    def check_optimizer_args(cls, value: List[str]) -> List[str]:
        for arg in value:
            if "=" not in arg or not arg.split("=", 1)[0].strip():
                raise ValueError(f"each optimizer argument must be key=value, e.g. weight_decay=0.1 (got {arg!r})")
        return [arg.strip() for arg in value]

    @field_check("sample_prompts")
    def check_prompts(cls, value: List[str]) -> List[str]:
        return [prompt.strip() for prompt in value if prompt.strip()]

    @field_check("unet_lr", "text_encoder_lr")
    def check_finite(cls, value: float) -> float:
        if math.isnan(value) or math.isinf(value):
            raise ValueError("use a number such as 5e-4")
        return value

    check_combination = model_check(_check_combination)


def _rename(entry: Dict[str, Any], old: str, new: str) -> Dict[str, Any]:
    if old in entry and new not in entry:
        entry = {(new if key == old else key): value for key, value in entry.items()}
    return entry


# Reading and writing -----------------------------------------------------------------------------


def settings_fields() -> Dict[str, FieldSpec]:
    """Default, type, help and limits of each setting, in display order (for the UI and the CLI)."""
    return field_infos(TrainSettings)


def defaults() -> TrainSettings:
    return TrainSettings()


def validate_settings(data: Mapping[str, Any], where: str = "") -> TrainSettings:
    """`TrainSettings` from plain data; unknown keys and bad values raise one-line `UserError`s."""
    _refuse_unknown_keys(data, where)
    return validate(TrainSettings, data, where)


def load_settings(project: "Project") -> TrainSettings:
    """The guide's defaults overlaid with the project's ``[train]`` section."""
    stored = project.read_section(SECTION)
    return validate_settings(stored, where=f"In {project.settings_file} [{SECTION}]: ")


def save_settings(project: "Project", settings: TrainSettings) -> None:
    """Write every setting to the project's ``[train]`` section (atomically, keeping other sections)."""
    project.write_section(SECTION, settings_to_toml(settings))


def update_settings(project: "Project", changes: Mapping[str, Any], notes: "Optional[List[str]]" = None) -> TrainSettings:
    """Change some settings and keep the others as stored, as one step: two saves of different
    settings at the same time both land. A new base model of another family brings its defaults
    (`offer_family_defaults`); what that changed is appended to `notes`."""
    from lora_gradio.engine.project import settings_lock

    with settings_lock(project):  # a file lock: other threads, pages and command lines wait their turn
        old = settings_to_toml(load_settings(project))
        data = {**old, **changes}
        changed = offer_family_defaults(old, data, explicit=set(changes))
        settings = validate_settings(data)
        save_settings(project, settings)
    if notes is not None and changed:
        notes.append(changed)
    return settings


# Model families' defaults -------------------------------------------------------------------------


def family_defaults(family_key: str) -> Dict[str, Any]:
    """The defaults of every setting some family sets its own way, for `family_key`."""
    from lora_gradio.engine.train.family import FAMILIES, family_named

    keys = {key for family in FAMILIES.values() for key in family.defaults}
    base = to_dict(TrainSettings())
    chosen = family_named(family_key).defaults
    return {key: chosen.get(key, base[key]) for key in sorted(keys)}


def model_family(spec: str) -> Optional[str]:
    """"sd"/"sdxl" of a training_model from cheap reads, None when it cannot be told yet (or is broken:
    loading says why)."""
    return _model_facts(spec)[0]


def _model_facts(spec: str) -> tuple:
    """(family or None, predicts v) of a training_model, from cheap reads only."""
    from lora_gradio.engine.train.models import describe_model

    try:
        info = describe_model(spec)
    except (UserError, OSError, ValueError, MemoryError):
        return None, False
    return info.family, info.v_pred


def offer_family_defaults(old: Dict[str, Any], new: Dict[str, Any], explicit: Iterable[str] = ()) -> str:
    """When `new` moves training_model to another family (SD 1.5 -> SDXL or back), each setting that
    still has the old family's default takes the new family's; values the person chose, and keys in
    `explicit` (set in the same change), are kept. v_pred follows what the new model says of itself
    (the noobai_vpred preset, a file's v_pred key) unless set in the same change. Changes `new` in
    place; returns a sentence saying what changed ('' when nothing did)."""
    if old.get("training_model") == new.get("training_model"):
        return ""
    (before, before_v), (after, after_v) = _model_facts(str(old.get("training_model", ""))), _model_facts(str(new.get("training_model", "")))
    explicit = set(explicit)
    taken, kept = [], []
    if "v_pred" not in explicit and after is not None and new.get("v_pred") != after_v and (after_v or before_v):
        new["v_pred"] = after_v
        taken.append(f"v_pred {_show_default(after_v)}")
    if before is not None and after is not None and before != after:
        old_defaults, new_defaults = family_defaults(before), family_defaults(after)
        for key, value in new_defaults.items():
            if key in explicit:
                continue
            if _same(new.get(key), old_defaults[key]):
                if not _same(new.get(key), value):
                    new[key] = value
                    taken.append(f"{key} {_show_default(value)}")
            elif not _same(new.get(key), value):
                kept.append(key)
    if not taken:
        return ""
    from lora_gradio.engine.train.family import family_named

    label = family_named(after).label if after else "The new"
    text = f"{label} base: took its defaults for {', '.join(taken)}."
    if kept:
        text += f" Kept your values for {', '.join(kept)}."
    return text


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    return a == b


def settings_to_toml(settings: TrainSettings) -> Dict[str, Any]:
    """Plain TOML-ready data: None (unset per-folder values) left out, as TOML has no null."""
    data = to_dict(settings)
    data["custom_dataset"] = [{k: v for k, v in entry.items() if v is not None} for entry in data["custom_dataset"]]
    return data


def resolved_min_snr_gamma(settings: TrainSettings) -> Optional[float]:
    """The gamma to use, or None when min-SNR weighting is off."""
    value = settings.min_snr_gamma
    if value is True:
        return DEFAULT_MIN_SNR_GAMMA
    if value is False or not value:
        return None
    return float(value)


def resolved_output_name(settings: TrainSettings, project: "Project") -> str:
    return settings.output_name or project.base


# --set key=value ---------------------------------------------------------------------------------


def apply_overrides(settings: TrainSettings, overrides: Iterable[str], notes: "Optional[List[str]]" = None) -> TrainSettings:
    """Apply the CLI's ``--set key=value`` strings and return new, validated settings.

    Values are read by the setting's type: numbers, true/false (yes/no/on/off/1/0), lists as JSON or
    comma-separated (``sample_prompts`` split on ``|``, as prompts hold commas), ``custom_dataset`` as JSON.
    A training_model of another family brings that family's defaults (see `offer_family_defaults`);
    the sentence saying so goes to `notes`.
    """
    data = to_dict(settings)
    old = dict(data)
    specs = settings_fields()
    explicit = set()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r} needs the form key=value, e.g. --set num_repeats=5 ({HELP_HINT}).")
        if key not in specs:
            raise UserError(_unknown_key_message(key, "--set"))
        data[key] = _parse_value(key, specs[key], raw.strip())
        explicit.add(key)
    if notes is None:
        notes = []
    changed = offer_family_defaults(old, data, explicit)
    if changed:
        notes.append(changed)
    return validate_settings(data, where="--set: ")


def parse_setting(key: str, raw: str) -> Any:
    """One setting typed as text (a page field, a `--set`), read by the setting's type; not yet validated."""
    specs = settings_fields()
    if key not in specs:
        raise UserError(_unknown_key_message(key, "setting"))
    return _parse_value(key, specs[key], str(raw).strip(), where="")


def _parse_value(key: str, spec: FieldSpec, raw: str, where: str = "--set: ") -> Any:
    annotation = spec.annotation
    text = _unquote(raw)
    try:
        if key == "custom_dataset":
            value = json.loads(raw) if raw else []
            return [value] if isinstance(value, dict) else value
        if key == "min_snr_gamma":
            boolean = _parse_bool(text)
            return boolean if boolean is not None else float(text)
        choices = literal_choices(annotation)
        if choices:  # text choices are matched case-insensitively by validate()
            return int(text) if all(isinstance(choice, int) for choice in choices) else text
        if annotation is bool:
            boolean = _parse_bool(text)
            if boolean is None:
                raise ValueError(text)
            return boolean
        if annotation is int:
            number = float(text) if re.fullmatch(r"[-+]?\d+(\.0*)?[eE][+]?\d+", text) else int(text)  # allow 1e4
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(text)
            return int(number)
        if annotation is float:
            return float(text)
        if annotation is str:
            return text
        if raw.startswith("["):
            value = json.loads(raw)
            if not isinstance(value, list):
                raise ValueError(raw)
            return value
        return _split_list(key, text)
    except (ValueError, json.JSONDecodeError):
        wanted = 'JSON, e.g. --set custom_dataset=\'[{"folder": "good_images", "num_repeats": 3}]\'' if key == "custom_dataset" else allowed_phrase(spec)
        raise UserError(f"{where}{key} = {raw!r} is not allowed: use {wanted}.") from None


def _split_list(key: str, text: str) -> List[str]:
    if not text:
        return []
    if key == "sample_prompts":
        return [part.strip() for part in text.split("|") if part.strip()]
    # Split on commas or spaces outside brackets, so "weight_decay=0.1 betas=[0.9,0.99]" stays two items.
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[(" and 1 or (-1 if ch in "])" else 0)
        if depth == 0 and (ch == "," or ch.isspace()):
            if current.strip():
                items.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        items.append(current.strip())
    return items


def _parse_bool(text: str) -> Optional[bool]:
    lowered = text.lower()
    if lowered in ("true", "yes", "on", "1", "y", "t"):
        return True
    if lowered in ("false", "no", "off", "0", "n", "f"):
        return False
    return None


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _refuse_unknown_keys(data: Mapping[str, Any], where: str) -> None:
    specs = settings_fields()
    for key in data:
        if key not in specs:
            raise UserError(where + _unknown_key_message(str(key), "setting"))


def _unknown_key_message(key: str, what: str) -> str:
    close = difflib.get_close_matches(key, list(settings_fields()), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    label = f"--set {key}" if what == "--set" else f"setting {key!r}"
    return f"Unknown {label}.{hint} For the list of settings {HELP_HINT}."


# --help-settings ---------------------------------------------------------------------------------


def describe_settings() -> str:
    """A plain-text table of every setting: key, default and allowed values, with its help below."""
    rows = [(name, _show_default(spec.default), describe_allowed(spec), spec.description) for name, spec in settings_fields().items()]
    key_width = max(len(row[0]) for row in rows)
    default_width = max(len(row[1]) for row in rows)
    header = f"{'key'.ljust(key_width)}  {'default'.ljust(default_width)}  allowed"
    lines = [header, "-" * len(header)]
    for name, default, allowed_text, help_text in rows:
        lines.append(f"{name.ljust(key_width)}  {default.ljust(default_width)}  {allowed_text}")
        lines.extend(textwrap.wrap(help_text, width=100, initial_indent=" " * 4, subsequent_indent=" " * 4))
    lines.append("")
    lines.append("Set any of them with --set key=value; lists as JSON or comma-separated (sample_prompts: separated by |),")
    lines.append('custom_dataset as JSON, e.g. --set custom_dataset=\'[{"folder": "good_images", "num_repeats": 3}]\'.')
    return "\n".join(lines)


def _show_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if value == "" else value
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)
