"""What export and import share: kohya's file names and the notebooks' sections, the names that differ
between kohya and this tool, kohya's script for each model family, where base models are downloaded,
what cheap reads say about a base model, and how the run's steps are counted."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.models import Preset, check_model_file, describe_model, inspect_checkpoint, preset_for

if TYPE_CHECKING:
    from lora_gradio.engine.project import Project
    from lora_gradio.engine.train.data import DatasetFolder


TRAINING_FILE = "training_config.toml"
DATASET_FILE = "dataset_config.toml"
PROMPTS_FILE = "sample_prompts.txt"
# Where the training loop downloads base models (project.root / "_models"): presets are exported as that path.
MODELS_FOLDER = "_models"

# kohya's sd-scripts script that trains a LoRA, per model family ("sd": SD 1.x/2.x, "sdxl").
SD_SCRIPT = "train_network.py"
SDXL_SCRIPT = "sdxl_train_network.py"

# Sections of the notebooks' training files (the XL notebook's network section is [network_arguments]);
# any section name is fine for kohya, these mark the format.
TRAINING_SECTIONS = (
    "model_arguments", "additional_network_arguments", "network_arguments", "optimizer_arguments", "training_arguments",
    "saving_arguments", "dreambooth_arguments", "dataset_arguments", "sample_prompt_arguments", "logging_arguments",
)
# kohya imports a dotted optimizer_type or lr_scheduler_type itself ("module.path.Class", called with the
# optimizer's parameters or the optimizer and the key=value args); a name without a dot is its own or torch's.
# This tool's CAME is pytorch-optimizer's (in kohya's requirements.txt since 2025); the XL notebook's
# LoraEasyCustomOptimizer.came.CAME is a copy of it (with stochastic rounding), came_pytorch.CAME the paper's code.
CAME_CLASS = "pytorch_optimizer.CAME"
CAME_PACKAGE = "pytorch-optimizer"
# kohya's DAdaptation is DAdaptAdamPreprint; this tool's DAdaptation runs DAdaptAdam.
OPTIMIZER_TO_KOHYA = {"DAdaptation": "DAdaptAdam", "CAME": CAME_CLASS}
OPTIMIZER_FROM_KOHYA = {name.lower(): name for name in cfg.OPTIMIZERS if name != "DAdaptation"}
OPTIMIZER_FROM_KOHYA["dadaptadam"] = "DAdaptation"
for _came in (CAME_CLASS, "pytorch_optimizer.optimizer.CAME", "pytorch_optimizer.optimizer.came.CAME", "LoraEasyCustomOptimizer.came.CAME", "came_pytorch.CAME"):
    OPTIMIZER_FROM_KOHYA[_came.lower()] = "CAME"
# The XL notebook's rex: lr_scheduler = "cosine" (kohya ignores it beside lr_scheduler_type) with this class
# of the LoRA Easy Training backend's LoraEasyCustomOptimizer package, which is not on PyPI. With
# d=0.5, min_lr=0 and one cycle of the whole run (first_cycle_max_steps) after warmup_steps it is this tool's rex.
REX_CLASS = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
REX_INSTALL = "pip install 'git+https://github.com/derrian-distro/LoRA_Easy_Training_scripts_Backend#subdirectory=custom_scheduler'"
REX_NOTEBOOK_LR_SCHEDULER = "cosine"
# The REX classes import reads as lr_scheduler = rex (by class name, from whatever module): the notebook's, and
# pytorch-optimizer's REXScheduler (one rate for all groups, no warmup).
REX_CLASS_NAMES = ("RexAnnealingWarmRestarts", "REXScheduler")
LYCORIS_ALGOS = {"LoHa": "loha", "LoKr": "lokr", "IA3": "ia3", "DoRA": "locon"}
LYCORIS_TYPES = {"lora": "LoCon", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "ia3": "IA3"}
# The XL notebook's file names for its civitai presets (their links name no file; civitai's own names for
# them start the same, e.g. ponyDiffusionV6XL_v6StartWithThisOne.safetensors).
NOTEBOOK_FILE_STEMS = {"pony": "ponyDiffusionV6XL", "animagine": "animagineXLV3"}


@dataclass(frozen=True)
class ModelFacts:
    """What cheap reads say about a base model (nothing is downloaded or loaded)."""

    family: str | None  # "sd" | "sdxl" | None: unknown (a link or repo id not downloaded yet, a missing file)
    v_pred: bool  # the model itself predicts v (a preset, a `v_pred` key, SD2-768, a v-pred scheduler)
    how: str  # for notes


def model_facts(spec: str, location: str | None = None) -> ModelFacts:
    """The family and prediction type of the base model `spec` (a training_model), read from `location`
    (where export writes it; default `spec`) when that is a local file or folder, else from the preset.
    A local file is checked before its header is read (a broken file must not make us read gigabytes)."""
    preset = preset_for(spec)
    path = Path(location or spec).expanduser()
    try:
        if path.is_file() and path.suffix.lower() == ".safetensors":
            check_model_file(path)
            info = inspect_checkpoint(path)
            return ModelFacts(info.family, info.v_pred or bool(preset and preset.v_pred), info.how)
        if preset is None and path.is_dir():
            described = describe_model(str(path))
            return ModelFacts(described.family, described.v_pred, described.how)
    except (UserError, OSError, ValueError, struct.error):
        pass  # loading the model says what is wrong with it
    if preset is not None:
        return ModelFacts(preset.family, preset.v_pred, f"the {preset_label(preset)} preset")
    return ModelFacts(None, False, "")


def preset_label(preset: Preset) -> str:
    """The notebook's name of a preset, without the file name some labels carry."""
    return preset.label.split(" (")[0]


def notebook_stem_matches(key: str, stem: str) -> bool:
    """Whether a file name's stem is the XL notebook's (or civitai's) name of the civitai preset `key`."""
    notebook = NOTEBOOK_FILE_STEMS.get(key, "").lower()
    return bool(notebook) and (stem.lower() == notebook or stem.lower().startswith(notebook + "_"))


def main_folders(project: Project) -> list[Path]:
    """The folders trained without custom_dataset: the dataset folder and its subfolders that hold images
    (just the dataset folder while it is empty)."""
    from lora_gradio.engine.images import dataset_folders
    from lora_gradio.engine.train.data import _list_images

    found = [p for p in dataset_folders(project) if _list_images(p)]  # links skipped, as every stage skips them
    return found or [project.dataset_dir]


def total_steps(folders: list[DatasetFolder], settings: cfg.TrainSettings) -> int:
    """The run's steps as the training loop counts them (kohya's buckets included)."""
    from lora_gradio.engine.train.data import collect_items
    from lora_gradio.engine.train.loop import step_plan

    dataset = collect_items(folders, settings.caption_extension, settings.resolution, settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps)
    return step_plan(dataset, settings).total_steps


def warmup_steps_for(total: int, ratio: float) -> int:
    """Warmup steps as `optim.build_scheduler` counts them."""
    return int(round(total * ratio))


def models_dir(project: Project) -> Path:
    """The folder the training loop downloads base models to."""
    return (project.root / MODELS_FOLDER).resolve()


def url_file_name(url: str) -> str:
    """The file name at the end of a link, as a download saves it."""
    return PurePosixPath(urlparse(url).path).name
