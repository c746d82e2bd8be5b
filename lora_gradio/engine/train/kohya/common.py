"""What export and import share: kohya's file names and the notebook's sections, the names that differ
between kohya and this tool, where base models are downloaded, and how the run's steps are counted."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from lora_gradio.engine.fsutil import is_image_file
from lora_gradio.engine.train import config as cfg

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
OPTIMIZER_TO_KOHYA = {"DAdaptation": "DAdaptAdam"}
OPTIMIZER_FROM_KOHYA = {name.lower(): name for name in cfg.OPTIMIZERS if name != "DAdaptation"}
OPTIMIZER_FROM_KOHYA["dadaptadam"] = "DAdaptation"
LYCORIS_ALGOS = {"LoHa": "loha", "LoKr": "lokr", "IA3": "ia3", "DoRA": "locon"}
LYCORIS_TYPES = {"lora": "LoCon", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "ia3": "IA3"}


def main_folders(project: Project) -> list[Path]:
    """The folders trained without custom_dataset: the dataset folder and its subfolders that hold images
    (just the dataset folder while it is empty)."""
    from lora_gradio.engine.images import dataset_folders

    found = [p for p in dataset_folders(project) if any(f.is_file() and is_image_file(f) for f in p.iterdir())]
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
