"""Export: a project's settings as kohya's training_config.toml and dataset_config.toml (and
sample_prompts.txt), in the sections and key names of holostrawberry's Lora Trainer notebook, with absolute paths.

An SDXL base model gets what kohya's sdxl_train_network.py reads (no v2 and no clip_skip, which it refuses
or warns about; the XL notebook's no_half_vae), and the training file's first line names the script that
runs it (`kohya_script`, `kohya_command`). CAME is written as pytorch-optimizer's class and rex as the XL
notebook's REX scheduler class with the arguments of this tool's rex (kohya imports both by their dotted
names); comment lines under that first line name the packages they need."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_write_text
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.kohya.common import (
    CAME_CLASS,
    CAME_PACKAGE,
    DATASET_FILE,
    LYCORIS_ALGOS,
    NOTEBOOK_FILE_STEMS,
    OPTIMIZER_TO_KOHYA,
    PROMPTS_FILE,
    REX_CLASS,
    REX_INSTALL,
    REX_NOTEBOOK_LR_SCHEDULER,
    SD_SCRIPT,
    SDXL_SCRIPT,
    TRAINING_FILE,
    main_folders,
    model_facts,
    models_dir,
    notebook_stem_matches,
    total_steps,
    url_file_name,
    warmup_steps_for,
)
from lora_gradio.engine.train.models import MODEL_EXTENSIONS, PRESETS, check_model_file, detect_version, preset_for

if TYPE_CHECKING:
    from lora_gradio.engine.project import Project

# kohya's sdxl_train_network.py refuses other bucket steps.
SDXL_BUCKET_STEP = 32


def export_kohya(project: Project, settings: cfg.TrainSettings, folder: str | Path) -> tuple[Path, Path]:
    """Write `training_config.toml` and `dataset_config.toml` (and `sample_prompts.txt` when there are
    prompts) into `folder` for these settings; returns the two config paths. The training file's first
    line is a comment with the command that runs it (`kohya_command`).

    Everything is worked out before the first file is written, so a refusal leaves no files behind.
    """
    import tomli_w

    folder = Path(folder).expanduser().resolve()
    training_path, dataset_path, prompts_path = folder / TRAINING_FILE, folder / DATASET_FILE, folder / PROMPTS_FILE
    family = model_facts(settings.training_model, kohya_model_location(project, settings)).family
    if family == "sdxl" and settings.bucket_reso_steps % SDXL_BUCKET_STEP:
        raise UserError(
            f"kohya's {SDXL_SCRIPT} needs bucket_reso_steps divisible by {SDXL_BUCKET_STEP} for an SDXL model, "
            f"not {settings.bucket_reso_steps}: set bucket_reso_steps = 64 (or 32), then export again."
        )
    dataset_text = _dataset_toml(project, settings)
    training_text = _header(settings, family, training_path) + tomli_w.dumps(_training_config(project, settings, dataset_path, prompts_path))
    if settings.sample_prompts:
        atomic_write_text(prompts_path, "\n".join(settings.sample_prompts) + "\n")
    atomic_write_text(dataset_path, dataset_text)
    atomic_write_text(training_path, training_text)
    return training_path, dataset_path


def kohya_script(settings: cfg.TrainSettings, project: Project | None = None) -> str:
    """kohya's script that trains these settings' LoRA: sdxl_train_network.py for an SDXL base model,
    train_network.py otherwise (also while the family is unknown: a link or repo id not downloaded yet).
    With `project`, a link already downloaded into the project's models folder is read too."""
    location = kohya_model_location(project, settings) if project is not None else None
    return SDXL_SCRIPT if model_facts(settings.training_model, location).family == "sdxl" else SD_SCRIPT


def kohya_command(settings: cfg.TrainSettings, training_path: str | Path, project: Project | None = None) -> str:
    """The command that runs an exported training file with kohya's sd-scripts (the file names its dataset
    file), e.g. ``accelerate launch sdxl_train_network.py --config_file /x/training_config.toml``."""
    return f"accelerate launch {kohya_script(settings, project)} --config_file {training_path}"


def _header(settings: cfg.TrainSettings, family: str | None, training_path: Path) -> str:
    script = SDXL_SCRIPT if family == "sdxl" else SD_SCRIPT
    line = f"# Run with kohya's sd-scripts: accelerate launch {script} --config_file {training_path}"
    if family is None:
        line += f"\n# ({SDXL_SCRIPT} instead if {settings.training_model} is an SDXL model)"
    if settings.optimizer == "CAME":
        line += f"\n# optimizer_type {CAME_CLASS} needs the {CAME_PACKAGE} package in kohya's environment (its requirements.txt lists it; else: pip install {CAME_PACKAGE})"
    if settings.lr_scheduler == "rex":
        line += (
            f"\n# lr_scheduler rex is the XL notebook's {REX_CLASS.rsplit('.', 1)[-1]} (lr_scheduler_type; kohya ignores lr_scheduler then),"
            f"\n# from its trainer's LoraEasyCustomOptimizer package, not on PyPI: {REX_INSTALL}"
        )
    return line + "\n\n"


def kohya_model_location(project: Project, settings: cfg.TrainSettings) -> str:
    """What export writes as pretrained_model_name_or_path: a preset as the file this tool downloads it to,
    a downloaded link as that file, a local file or folder as its absolute path, a repo id or link as is."""
    spec = settings.training_model
    preset = preset_for(spec)
    if preset is not None:
        key = next(key for key, value in PRESETS.items() if value is preset)
        return str(_preset_file(models_dir(project), key, preset.url))
    if re.match(r"^https?://", spec):
        downloaded = models_dir(project) / url_file_name(spec)
        return str(downloaded) if downloaded.is_file() else spec
    local = Path(spec).expanduser()
    return str(local.resolve()) if local.exists() or local.suffix.lower() in MODEL_EXTENSIONS else spec


def _preset_file(models: Path, key: str, url: str) -> Path:
    """The file a preset is downloaded to. A civitai link names no file: the file civitai named (found by
    the XL notebook's name for it) if it was downloaded, else the notebook's name (ponyDiffusionV6XL.safetensors)."""
    if key not in NOTEBOOK_FILE_STEMS:
        return models / url_file_name(url)
    found = sorted(p for p in models.glob("*") if p.suffix.lower() in MODEL_EXTENSIONS and notebook_stem_matches(key, p.stem)) if models.is_dir() else []
    return found[0] if found else models / f"{NOTEBOOK_FILE_STEMS[key]}.safetensors"


def _training_config(project: Project, settings: cfg.TrainSettings, dataset_path: Path, prompts_path: Path) -> dict[str, Any]:
    s = settings
    network_module, network_args = _network_for(s)
    number_key = "lr_scheduler_power" if s.lr_scheduler == "polynomial" else "lr_scheduler_num_cycles"
    rex = s.lr_scheduler == "rex"
    epochs = s.preferred_unit == "Epochs"
    output_name = cfg.resolved_output_name(s, project)
    model = kohya_model_location(project, s)
    version = _model_version(model)
    facts = model_facts(s.training_model, model)
    sdxl = facts.family == "sdxl"
    # The model may say so itself (a preset, a v_pred key, SD2-768): this tool trains it as v-prediction then.
    v_pred = s.v_pred or facts.v_pred or version == "sd_v2_v"
    multires = s.multires_noise_iterations > 0
    # kohya: full_fp16 / full_bf16 come on top of mixed_precision fp16 / bf16; it has no "auto": fp16 runs on
    # every GPU (the notebook's choice), bf16 must be asked for.
    precision = {"auto": "fp16", "full_fp16": "fp16", "full_bf16": "bf16"}.get(s.mixed_precision, s.mixed_precision)
    sections: dict[str, dict[str, Any]] = {
        "additional_network_arguments": {
            "unet_lr": s.unet_lr,
            "text_encoder_lr": s.text_encoder_lr,
            "network_dim": s.network_dim,
            "network_alpha": s.network_alpha,
            "network_module": network_module,
            "network_args": network_args or None,
            # kohya refuses to train the text encoders on cached text encoder outputs; this tool then trains the UNet only too.
            "network_train_unet_only": True if s.text_encoder_lr == 0 or s.cache_text_encoder_outputs else None,
            "network_weights": str(Path(s.continue_from_lora).expanduser().resolve()) if s.continue_from_lora else None,
        },
        "optimizer_arguments": {
            "learning_rate": s.unet_lr,
            # rex: the XL notebook's lines; kohya then ignores lr_scheduler and the number, and refuses lr_warmup_steps.
            "lr_scheduler": REX_NOTEBOOK_LR_SCHEDULER if rex else s.lr_scheduler,
            "lr_scheduler_type": REX_CLASS if rex else None,
            "lr_scheduler_args": _rex_args(project, s) if rex else None,
            number_key: None if rex else s.lr_scheduler_number,
            # kohya's constant schedule has no warmup, and neither has this tool's.
            "lr_warmup_steps": _warmup_steps(project, s) if s.lr_scheduler not in ("constant", "rex") else None,
            "optimizer_type": OPTIMIZER_TO_KOHYA.get(s.optimizer, s.optimizer),
            "optimizer_args": list(s.optimizer_args) or None,
        },
        "training_arguments": {
            "max_train_steps": None if epochs else s.how_many,
            "max_train_epochs": s.how_many if epochs else None,
            "save_every_n_epochs": s.save_every_n_epochs or None,
            "save_last_n_epochs": s.keep_only_last_n_epochs or None,
            "train_batch_size": s.train_batch_size,
            "noise_offset": s.noise_offset or None,
            "multires_noise_iterations": s.multires_noise_iterations if multires else None,
            "multires_noise_discount": s.multires_noise_discount if multires else None,
            "ip_noise_gamma": s.ip_noise_gamma or None,
            # sdxl_train_network.py always takes the penultimate layers (it warns about clip_skip), as this tool does.
            "clip_skip": None if sdxl else s.clip_skip,
            "min_snr_gamma": cfg.resolved_min_snr_gamma(s),
            # kohya's v-prediction options; it refuses scale_v_pred_loss_like_noise_pred without v_parameterization,
            # and this tool uses zero terminal SNR with v-prediction only.
            "zero_terminal_snr": True if v_pred and s.zero_terminal_snr else None,
            "scale_v_pred_loss_like_noise_pred": True if v_pred and s.scale_v_pred_loss else None,
            "weighted_captions": s.weighted_captions,
            "seed": s.seed,
            "max_token_length": s.max_token_length if s.max_token_length != 75 else None,  # kohya: unset = 75
            "gradient_checkpointing": s.gradient_checkpointing,
            "sdpa": True,
            # This tool encodes images with a float32 VAE; SDXL's VAE overflows in fp16 (the XL notebook sets it too).
            "no_half_vae": True if sdxl else None,
            "max_data_loader_n_workers": 8,
            "persistent_data_loader_workers": True,
            "save_precision": s.save_precision,
            "mixed_precision": precision,
            "full_fp16": True if s.mixed_precision == "full_fp16" else None,
            "full_bf16": True if s.mixed_precision == "full_bf16" else None,
            "cache_text_encoder_outputs": True if s.cache_text_encoder_outputs else None,
            "output_dir": str(project.output_dir.resolve()),
            "logging_dir": str(project.log_dir.resolve()),
            "output_name": output_name,
            "log_prefix": output_name,
            "sample_prompts": str(prompts_path) if s.sample_prompts else None,
            "sample_every_n_epochs": s.sample_every_n_epochs or None,
        },
        "model_arguments": {
            "pretrained_model_name_or_path": model,
            # kohya needs v2 = true for SD 2.x; sdxl_train_network.py refuses v2.
            "v2": None if sdxl else version.startswith("sd_v2"),
            "v_parameterization": True if v_pred else None,
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
    args = conv + [f"algo={LYCORIS_ALGOS[settings.lora_type]}"]
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
        # kohya refuses shuffling with cached text encoder outputs; this tool turns it off then too.
        "shuffle_caption": s.shuffle_tags and not s.cache_text_encoder_outputs,
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


def _warmup_steps(project: Project, settings: cfg.TrainSettings) -> int:
    if settings.lr_warmup_ratio == 0:
        return 0
    return warmup_steps_for(_run_steps(project, settings, "lr_warmup_steps"), settings.lr_warmup_ratio)


def _rex_args(project: Project, settings: cfg.TrainSettings) -> list[str]:
    """The XL notebook's REX class as this tool's rex: one cycle of the whole run (no restart, so gamma does
    not matter) with the REX paper's curve (d=0.5) down to 0, after a linear warmup of warmup_steps."""
    total = _run_steps(project, settings, "the rex schedule's first_cycle_max_steps")
    warmup = warmup_steps_for(total, settings.lr_warmup_ratio)
    args = ["min_lr=0", "gamma=1.0", "d=0.5", f"first_cycle_max_steps={total}"]
    return args + [f"warmup_steps={warmup}"] if warmup else args


def _run_steps(project: Project, settings: cfg.TrainSettings, needed: str) -> int:
    if settings.preferred_unit == "Steps":
        return settings.how_many
    from lora_gradio.engine.train.loop import dataset_folders

    try:
        return total_steps(dataset_folders(project, settings), settings)
    except UserError as exc:
        raise UserError(f"kohya's file needs {needed}, counted from the dataset's images: {exc}") from None


def _model_version(location: str) -> str:
    """sd_v1/sd_v2/sd_v2_v (or sdxl) of a local .safetensors model (kohya needs v2 = true for SD2); sd_v1 otherwise."""
    path = Path(location)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return "sd_v1"
    try:
        check_model_file(path)  # before reading its header: a broken file must not make us read gigabytes
        return detect_version(path)
    except (UserError, OSError, ValueError):
        return "sd_v1"
