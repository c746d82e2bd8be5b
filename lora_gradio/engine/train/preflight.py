"""What the base model and the settings say together, checked before a run changes anything.

`check_model_settings(settings)` reads the base model's family cheaply (a preset, a file's header, a
folder's model_index.json) and refuses what cannot work with one sentence each: a resolution under the
family's minimum, weighted captions on SDXL, a `continue_from_lora` that is missing, not a LoRA, or made
for the other family. It returns notes for the run's log (which setting wins when two disagree). The run,
the dry run and the page's dataset check all call it, so they find the same problems. A model that is
only known after its download is checked again by `check_loaded_model`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train import config as cfg


def check_model_settings(settings: cfg.TrainSettings) -> List[str]:
    """Refuse impossible combinations (UserError); return notes about the ones that need a word."""
    from lora_gradio.engine.train.models import classify_spec

    classify_spec(settings.training_model)  # a typo in a preset name or path is refused here, not after a download
    from lora_gradio.engine.train.sampling import check_sample_prompts

    check_sample_prompts(settings.sample_prompts)
    family_key = cfg.model_family(settings.training_model)
    notes: List[str] = []
    if family_key is not None:
        notes += check_family_settings(settings, family_key)
    lora_family_key = check_continue_from(settings)
    if lora_family_key and family_key and lora_family_key != family_key:
        raise UserError(_family_mismatch(settings.continue_from_lora, lora_family_key, family_key))
    if settings.cache_text_encoder_outputs:
        lost = [name for name, on in (("tag shuffling", settings.shuffle_tags), ("text-encoder training", settings.text_encoder_lr > 0)) if on]
        if lost:
            notes.append(f"cache_text_encoder_outputs is on, so it wins over {' and '.join(lost)}: each caption is encoded once, "
                         "as written, and only the UNet trains (turn the cache off to keep them).")
    return notes


def check_family_settings(settings: cfg.TrainSettings, family_key: str) -> List[str]:
    from lora_gradio.engine.train.family import family_named

    family = family_named(family_key)
    if settings.resolution < family.min_resolution:
        raise UserError(
            f"resolution {settings.resolution} is too low for an {family.label} model: use at least {family.min_resolution} "
            f"({family.native_resolution} is what it was trained at)."
        )
    if family_key == "sdxl" and settings.weighted_captions:
        raise UserError("weighted_captions works with SD 1.x models only for now: turn it off for an SDXL base.")
    notes = []
    if family_key == "sdxl" and settings.clip_skip != 2:
        notes.append(f"clip_skip {settings.clip_skip} is ignored: SDXL always uses the penultimate layer of both text encoders.")
    return notes


def check_continue_from(settings: cfg.TrainSettings) -> Optional[str]:
    """The family of `continue_from_lora` ("sd"/"sdxl", None when it cannot tell), after checking that it
    exists and is a readable LoRA; '' when no file is set."""
    if not settings.continue_from_lora:
        return ""
    from lora_gradio.engine.train.network import lora_family
    from lora_gradio.engine.train.saving import read_safetensors_header

    path = Path(settings.continue_from_lora).expanduser()
    if not path.is_file():
        raise UserError(f"continue_from_lora: {path} does not exist: fix the path or clear the setting to start a new LoRA.")
    try:
        header = read_safetensors_header(path)
    except (UserError, OSError, ValueError):
        raise UserError(f"continue_from_lora: {path.name} is not a readable .safetensors file (cut off or corrupt): pick another file.") from None
    metadata = header.pop("__metadata__", None) or {}
    shapes = {key: _Shape(value.get("shape", [])) for key, value in header.items() if isinstance(value, dict)}
    if not any(key.endswith(("lora_down.weight", "hada_w1_a", "lokr_w1", "lokr_w1_a", ".on_input", ".weight")) and key.startswith("lora_") for key in shapes):
        raise UserError(f"continue_from_lora: {path.name} is not a LoRA (no lora_ tensors): is it a checkpoint? Pick a LoRA file.")
    return lora_family(shapes, metadata)


class _Shape:
    """Just enough of a tensor for `lora_family` (the header gives shapes, not tensors)."""

    def __init__(self, shape: Any):
        self.shape = list(shape)


def check_loaded_model(settings: cfg.TrainSettings, model: Any) -> None:
    """The same checks once the model is loaded (a link or repo id is only known then)."""
    check_family_settings(settings, model.family.key)
    lora_family_key = check_continue_from(settings)
    if lora_family_key and lora_family_key != model.family.key:
        raise UserError(_family_mismatch(settings.continue_from_lora, lora_family_key, model.family.key))


def _family_mismatch(lora: str, lora_family_key: str, model_family_key: str) -> str:
    from lora_gradio.engine.train.family import family_named

    return (f"continue_from_lora: {Path(lora).name} is an {family_named(lora_family_key).label} LoRA, but the base model is "
            f"{family_named(model_family_key).label}: a LoRA only continues on the family it was trained for. "
            "Pick a base model of that family, or clear continue_from_lora.")
