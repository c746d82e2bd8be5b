"""The comparison's settings: the project's [compare] section, and how epochs and weights are written."""

from __future__ import annotations

import math
import re
from typing import Any, List

from pydantic import Field

from lora_gradio.engine.project import Project
from lora_gradio.engine.settings_model import SettingsBase, allowed, field_check, to_dict, validate

SECTION = "compare"
COMPARE_FOLDER = "compare"
DEFAULT_WEIGHTS = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
DEFAULT_NEGATIVE = "lowres, worst quality, low quality, bad anatomy, bad hands, jpeg artifacts, signature, watermark, text"
WEIGHT_MIN, WEIGHT_MAX = -2.0, 3.0
_EVERY = re.compile(r"^every\s*-?\s*(\d+)$")
_LAST = re.compile(r"^last\s*-?\s*(\d+)$")
_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


def epochs_text(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v).strip() for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def parse_epochs(which: str) -> "tuple[str, int] | list[int]":
    """'all' -> ('all', 0); 'every 2' -> ('every', 2); 'last 3' -> ('last', 3); '1, 3-5' -> [1, 3, 4, 5]."""
    text = str(which).strip().lower()
    if text in ("", "all"):
        return ("all", 0)
    for kind, pattern in (("every", _EVERY), ("last", _LAST)):
        match = pattern.match(text)
        if match:
            n = int(match.group(1))
            if n < 1:
                raise ValueError(f"'{kind} N' needs N of at least 1, e.g. '{kind} 2'")
            return (kind, n)
    epochs: list[int] = []
    for part in re.split(r"[,\s]+", text.replace(", ", ",")):
        if not part:
            continue
        match = _RANGE.match(part)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if low > high:
                raise ValueError(f"the range {part} runs backwards: write it as {high}-{low}")
            epochs.extend(range(low, high + 1))
        elif part.isdigit():
            epochs.append(int(part))
        else:
            raise ValueError(f"{part!r} is not an epoch: use 'all', 'every 2', 'last 3', or epoch numbers like '1, 2, 5' or '2-6'")
    if not epochs:
        raise ValueError("no epochs given: use 'all', 'every 2', 'last 3', or epoch numbers like '1, 2, 5'")
    return list(dict.fromkeys(epochs))


def parse_weights(value: Any) -> list[float]:
    """'0.5, 0.7, 1' (or a list) -> [0.5, 0.7, 1.0]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            bad = next(p for p in parts if not _is_number(p))
            raise ValueError(f"{bad!r} is not a number: write the weights as numbers separated by commas, e.g. 0.5, 0.7, 1") from None
    return list(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class CompareSettings(SettingsBase):
    """How to compare the saved epochs; saved in the project's [compare] section."""

    prompt: str = Field("", description="What to draw. Empty: your activation tag plus the dataset's most common tags, as the guide suggests.")
    negative_prompt: str = Field(DEFAULT_NEGATIVE, description="What to avoid in every image.")
    epochs: str = Field(
        "all", **allowed("'all', 'every N', 'last N', or epoch numbers like '1, 2, 5' or '2-6'"),
        description="Which saved epochs to compare (the grid's columns): all, every 2, last 3, or a list like 1, 3, 5.",
    )
    weights: List[float] = Field(
        default_factory=lambda: list(DEFAULT_WEIGHTS), **allowed(f"numbers from {WEIGHT_MIN:g} to {WEIGHT_MAX:g}, e.g. 0.5, 0.7, 1"),
        description="LoRA weights to try (the grid's rows): a good LoRA works from about 0.6 to 1.",
    )
    include_base: bool = Field(True, description="Add a 'no LoRA' column: the base model with the same seed, to see what the LoRA changes.")
    seed: int = Field(42, ge=-1, le=2**32 - 1, description="Seed of the first image (-1: a random one); every cell uses the same seeds.")
    batch: int = Field(1, ge=1, le=8, description="Images per cell, side by side (seed, seed+1, ...).")
    steps: int = Field(20, ge=1, le=150, description="Sampling steps (Euler a, like the training samples).")
    cfg_scale: float = Field(7.0, ge=1.0, le=30.0, description="How closely to follow the prompt (CFG scale); 7 is usual.")
    width: int = Field(0, ge=0, le=2048, multiple_of=8, description="Image width; 0 = the training resolution.")
    height: int = Field(0, ge=0, le=2048, multiple_of=8, description="Image height; 0 = the training resolution.")
    save_cells: bool = Field(False, description="Also save every single image, in a folder beside the grid.")

    @field_check("epochs", before=True)
    def check_epochs(cls, value: Any) -> Any:
        value = epochs_text(value)
        if isinstance(value, str):
            parse_epochs(value)  # raises ValueError with the fix
            return value.strip() or "all"
        return value

    @field_check("weights", before=True)
    def read_weights(cls, value: Any) -> Any:
        return parse_weights(value)

    @field_check("weights")
    def check_weights(cls, value: List[float]) -> List[float]:
        if not value:
            raise ValueError("give at least one weight, e.g. 0.5, 0.7, 1")
        for weight in value:
            if math.isnan(weight) or not WEIGHT_MIN <= weight <= WEIGHT_MAX:
                raise ValueError(f"the weight {weight:g} is out of range: use weights from {WEIGHT_MIN:g} to {WEIGHT_MAX:g} (a LoRA is usually tested from 0.5 to 1)")
        return list(dict.fromkeys(float(w) for w in value))

    @field_check("width", "height")
    def check_size(cls, value: int) -> int:
        if value and value < 64:
            raise ValueError("use 0 (the training resolution) or at least 64")
        return value


def load_compare_settings(project: Project) -> CompareSettings:
    return validate(CompareSettings, project.read_section(SECTION), where=f"In {project.settings_file} [{SECTION}]: ")


def save_compare_settings(project: Project, settings: CompareSettings) -> None:
    project.write_section(SECTION, to_dict(settings))


def resolve_settings(project: Project, overrides: "dict[str, Any] | None" = None) -> CompareSettings:
    """The project's [compare] settings with `overrides` (None values ignored), validated."""
    stored = project.read_section(SECTION)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return validate(CompareSettings, {**stored, **given}, where="compare: ")
