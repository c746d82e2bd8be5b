"""kohya's training_config.toml + dataset_config.toml: export a project's settings, import them back.

These are the two files holostrawberry's Lora Trainer notebooks wrote for kohya's sd-scripts
(``train_network.py --config_file training_config.toml --dataset_config dataset_config.toml``; for an
SDXL base model the XL notebook runs ``sdxl_train_network.py``: `kohya_script` says which), so a
run can move between this tool and kohya's scripts. Export uses the notebook's sections and key names,
with absolute paths. Import reads the files the way kohya does (sections are merged into one set of
arguments; in the dataset file a subset's value beats its dataset's, which beats ``[general]``, which
beats the training file's; a missing key means kohya's default) and explains, in notes, every key it
could not map and every value it had to translate. Settings that kohya's files do not describe keep
the values of ``base``.

common.py           file names, sections, scripts and names shared by both directions, model facts, step counting
export.py           export_kohya: settings -> the two files (and sample_prompts.txt); kohya_script, kohya_command
files.py            reading the TOML files and telling them apart
keys.py             kohya's keys, level by level, remembering which were read and where each came from
import_state.py     the settings an import builds, with their origins and the notes
import_training.py  import of the training file (model, network, optimizer, schedule, length ...)
import_dataset.py   import of the dataset file ([general], [[datasets]], [[datasets.subsets]])
importer.py         import_kohya: both files -> settings, then warmup, validation and unused keys
"""

from lora_gradio.engine.train.kohya.common import (
    DATASET_FILE,
    MODELS_FOLDER,
    PROMPTS_FILE,
    SD_SCRIPT,
    SDXL_SCRIPT,
    TRAINING_FILE,
    TRAINING_SECTIONS,
    main_folders,
    total_steps,
    warmup_steps_for,
)
from lora_gradio.engine.train.kohya.export import export_kohya, kohya_command, kohya_model_location, kohya_script
from lora_gradio.engine.train.kohya.files import is_kohya_file, looks_like_kohya, split_uploaded
from lora_gradio.engine.train.kohya.importer import import_kohya, warmup_ratio_for

__all__ = [
    "DATASET_FILE",
    "MODELS_FOLDER",
    "PROMPTS_FILE",
    "SDXL_SCRIPT",
    "SD_SCRIPT",
    "TRAINING_FILE",
    "TRAINING_SECTIONS",
    "export_kohya",
    "import_kohya",
    "is_kohya_file",
    "kohya_command",
    "kohya_model_location",
    "kohya_script",
    "looks_like_kohya",
    "main_folders",
    "split_uploaded",
    "total_steps",
    "warmup_ratio_for",
    "warmup_steps_for",
]
