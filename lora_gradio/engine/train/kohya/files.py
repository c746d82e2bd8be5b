"""Reading kohya's TOML files, and telling them apart from this tool's settings files and from each other."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import read_user_toml
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.kohya.common import TRAINING_SECTIONS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
        return looks_like_kohya(read_user_toml(Path(path)))
    except (OSError, UserError):
        return False


def split_uploaded(paths: list[str]) -> tuple[Path, Path | None]:
    """(training config, dataset config or None) among uploaded files, told apart by their content
    (uploads lose their names' meaning: a browser may rename them)."""
    training: list[Path] = []
    dataset: list[Path] = []
    for path in map(Path, paths):
        data = read_toml(path)
        (dataset if "datasets" in data or "general" in data else training).append(path)
    if len(training) != 1 or len(dataset) > 1:
        raise UserError(
            f"Give one training_config.toml (and at most one dataset_config.toml); got {len(training)} training and {len(dataset)} dataset file(s)."
        )
    return training[0], (dataset[0] if dataset else None)


def read_toml(path: Path) -> dict[str, Any]:
    """A kohya config file, parsed; a missing or broken file is a UserError."""
    try:
        return read_user_toml(path, "The kohya config file")  # a BOM is fine (Windows editors); UTF-16, binary, a folder: one clear line
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: check the path of the kohya config file.") from None


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, (value, _) in flatten_with_labels(data).items()}


def flatten_with_labels(data: Mapping[str, Any]) -> dict[str, tuple[Any, str]]:
    """kohya merges every section into one set of arguments (a later section wins); top-level keys count too."""
    flat: dict[str, tuple[Any, str]] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            for key, inner in value.items():
                flat[key] = (inner, f"[{name}] {key}")
        else:
            flat[name] = (value, name)
    return flat
