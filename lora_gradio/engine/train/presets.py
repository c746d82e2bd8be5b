"""Named training presets shared by every project under a root (`ROOT/_presets/NAME.toml`).

A preset holds every training setting, in the same `[train]` format as a project's settings file,
so a preset file can also be passed to `train --config`.
"""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (the WebUI's)
    import tomli as tomllib

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_write_text, read_user_toml
from lora_gradio.engine.train import config as cfg

PRESETS_FOLDER = "_presets"
_NAME = re.compile(r"^[\w][\w .-]{0,63}$", re.UNICODE)


def presets_dir(root: Path) -> Path:
    return Path(root) / PRESETS_FOLDER


def _path(root: Path, name: str) -> Path:
    name = (name or "").strip()
    if not _NAME.match(name) or name.endswith((".", " ")):
        raise UserError(f"Preset name {name!r} is not usable: use letters, digits, spaces, '_', '-' or '.', up to 64 characters, e.g. 'character 16-8'.")
    return presets_dir(root) / f"{name}.toml"


def list_presets(root: Path) -> list[str]:
    folder = presets_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.toml") if p.is_file())


def save_preset(root: Path, name: str, settings: cfg.TrainSettings) -> Path:
    """Write (or replace) the preset atomically and return its file."""
    import tomli_w

    path = _path(root, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, tomli_w.dumps({cfg.SECTION: cfg.settings_to_toml(settings)}))
    return path


def load_preset(root: Path, name: str) -> cfg.TrainSettings:
    path = _path(root, name)
    try:
        data = read_user_toml(path, "The preset file", "delete it")  # BOM, UTF-16, binary, a folder: one clear line
    except FileNotFoundError:
        known = list_presets(root)
        raise UserError(f"No preset named {name!r}{': pick one of ' + ', '.join(known) if known else ' yet: save one first'}.") from None
    return cfg.validate_settings(data.get(cfg.SECTION, {}), where=f"In preset {path}: ")
