"""Export: a project's settings as kohya's training_config.toml and dataset_config.toml (and
sample_prompts.txt), in the sections and key names of holostrawberry's Lora Trainer notebook, with absolute paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_write_text
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.kohya.common import (
    DATASET_FILE,
    LYCORIS_ALGOS,
    OPTIMIZER_TO_KOHYA,
    PROMPTS_FILE,
    TRAINING_FILE,
    main_folders,
    models_dir,
    total_steps,
    url_file_name,
    warmup_steps_for,
)
from lora_gradio.engine.train.models import MODEL_EXTENSIONS, check_model_file, detect_version, preset_for

if TYPE_CHECKING:
    from lora_gradio.engine.project import Project


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
        return str(models_dir(project) / url_file_name(preset.url))
    if re.match(r"^https?://", spec):
        downloaded = models_dir(project) / url_file_name(spec)
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
