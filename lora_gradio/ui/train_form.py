"""The training settings as a form, in the guide's sections, generated from the settings model.

Defaults, limits, choices and help texts all come from `engine.train.config.TrainSettings`; this
module only decides which widget shows which setting and converts between widget values and settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.settings_model import literal_choices, to_dict
from lora_gradio.engine.train import config as cfg
from lora_gradio.ui import compat
from lora_gradio.ui.compat import gr

# (title, the guide's advice for the section, keys, open at start)
SECTIONS: list[tuple[str, str, list[str], bool]] = [
    ("Setup", "The base model: the SD 1.5 guide uses an anime model for anime characters and styles; the XL notebook trains on Illustrious "
     "(or NoobAI, Pony, Animagine). Choosing an SDXL model fills in the XL notebook's defaults where you kept the SD 1.5 ones.",
     ["training_model", "v_pred", "output_name"], True),
    ("Processing", "How images and captions are read. 512 for SD 1.5 models, 1024 for SDXL; shuffle tags and keep your activation tag first.",
     ["resolution", "flip_aug", "shuffle_tags", "activation_tags", "caption_extension"], True),
    ("Steps", "images x repeats x epochs / batch = steps. The guide aims for 200-400 images x repeats per epoch, about 10 epochs, 1000-3000 steps.",
     ["num_repeats", "preferred_unit", "how_many", "save_every_n_epochs", "keep_only_last_n_epochs", "train_batch_size"], True),
    ("Learning", "The unet learning rate matters most (5e-4); the text encoder's is a half to a fifth of it. Cosine with 3 restarts, 5% warmup and min-SNR are the guide's choices.",
     ["unet_lr", "text_encoder_lr", "lr_scheduler", "lr_scheduler_number", "lr_warmup_ratio", "min_snr_gamma"], True),
    ("Structure", "LoRA for characters and most things, LoCon for art styles. Dim 16 / alpha 8 is the guide's size.",
     ["lora_type", "network_dim", "network_alpha", "conv_dim", "conv_alpha"], True),
    ("Extras", "The guide's extras: another optimizer, several folders with their own repeats, regularization images, continuing from a LoRA, weighted captions, samples while training.",
     ["optimizer", "optimizer_args", "custom_dataset", "continue_from_lora", "weighted_captions", "sample_prompts", "sample_every_n_epochs"], False),
    ("Advanced", "What the notebook set for you. Gradient checkpointing trades speed for memory on small GPUs.",
     ["clip_skip", "max_token_length", "seed", "mixed_precision", "save_precision", "noise_offset", "multires_noise_iterations",
      "multires_noise_discount", "ip_noise_gamma", "zero_terminal_snr", "scale_v_pred_loss", "min_bucket_reso", "max_bucket_reso",
      "bucket_reso_steps", "cache_latents", "cache_latents_to_disk", "cache_text_encoder_outputs", "gradient_checkpointing",
      "prior_loss_weight", "force_steps"], False),
]
FOLDER_HEADERS = ["folder", "num_repeats", "is_reg", "keep_tokens", "flip_aug"]
EMPTY_FOLDER_ROW = ["", "", "false", "", ""]


def _kind(key: str, spec) -> str:
    if key == "custom_dataset":
        return "folders"
    if key == "sample_prompts":
        return "lines"
    if literal_choices(spec.annotation):
        return "choice"
    if spec.annotation is bool:
        return "bool"
    if spec.annotation is int:
        return "int"
    return "text"  # floats, text, lists, true/false-or-number: typed as text and read by the model's rules


def format_number(value: float) -> str:
    """5e-4 rather than 0.0005: learning rates read as the guide writes them."""
    if value != 0 and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"


def to_widget(key: str, value: Any) -> Any:
    """A setting's value as its widget shows it."""
    kind = _kind(key, cfg.settings_fields()[key])
    if kind == "folders":
        value = [e if isinstance(e, dict) else to_dict(e) for e in value]  # FolderSettings from a settings object
        rows = [[e["folder"], _blank(e.get("num_repeats")), str(bool(e.get("is_reg"))).lower(), _blank(e.get("keep_tokens")), _blank(e.get("flip_aug"))] for e in value]
        return rows or [list(EMPTY_FOLDER_ROW)]
    if kind == "lines":
        return "\n".join(value)
    if kind == "choice":
        return str(value)
    if kind in ("bool", "int"):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, list):
        return " ".join(value)
    return value


def _blank(value: Any) -> str:
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def from_widget(key: str, value: Any) -> Any:
    """A widget's value as plain settings data (validated later, with the others)."""
    kind = _kind(key, cfg.settings_fields()[key])
    if kind == "folders":
        return _folders_from_rows(value)
    if kind == "lines":
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]
    if kind == "bool":
        return bool(value)
    if kind == "int":
        if value is None or (isinstance(value, float) and (math.isnan(value) or not value.is_integer())):
            raise UserError(f"{key} needs a whole number (it is empty or has decimals).")
        return int(value)
    return cfg.parse_setting(key, "" if value is None else str(value))


def _rows(value: Any) -> list[list[Any]]:
    if value is None:
        return []
    if hasattr(value, "values") and hasattr(value, "columns"):  # a pandas DataFrame (Gradio's default type)
        return value.values.tolist()
    if isinstance(value, dict) and "data" in value:  # Gradio 3's raw {"headers", "data"}
        return value["data"]
    return list(value)


def _folders_from_rows(value: Any) -> list[dict[str, Any]]:
    entries = []
    for row in _rows(value):
        cells = [("" if cell is None else str(cell).strip()) for cell in list(row) + [""] * len(FOLDER_HEADERS)]
        folder, repeats, is_reg, keep, flip = cells[: len(FOLDER_HEADERS)]
        if not folder:
            continue  # an empty row: the table always shows one to type into
        entry: dict[str, Any] = {"folder": folder, "is_reg": _cell_bool(is_reg, folder, "is_reg") or False}
        for name, cell in (("num_repeats", repeats), ("keep_tokens", keep)):
            if cell:
                try:
                    entry[name] = int(float(cell))
                except ValueError:
                    raise UserError(f"custom_dataset: {name} of folder {folder!r} is {cell!r}: use a whole number, or leave it empty for the main setting.") from None
        if flip:
            entry["flip_aug"] = _cell_bool(flip, folder, "flip_aug")
        entries.append(entry)
    return entries


def _cell_bool(cell: str, folder: str, name: str) -> "bool | None":
    lowered = cell.lower()
    if lowered in ("", "false", "no", "0", "off"):
        return False if lowered else None
    if lowered in ("true", "yes", "1", "on", "x"):
        return True
    raise UserError(f"custom_dataset: {name} of folder {folder!r} is {cell!r}: write true or false.")


def settings_from_widgets(keys: list[str], values: list[Any]) -> cfg.TrainSettings:
    """Validated settings from the form's values (in `keys` order); one clear sentence if something is off."""
    data = {key: from_widget(key, value) for key, value in zip(keys, values)}
    return cfg.validate_settings(data)


@dataclass
class SettingsForm:
    keys: list[str]
    widgets: list[Any]  # one per key, same order

    def widget(self, key: str) -> Any:
        return self.widgets[self.keys.index(key)]


def build_settings_form() -> SettingsForm:
    specs = cfg.settings_fields()
    defaults = cfg.defaults()
    keys: list[str] = []
    widgets: list[Any] = []
    for title, advice, section_keys, opened in SECTIONS:
        with gr.Accordion(title, open=opened, elem_id=f"lg-train-{title.lower()}"):
            gr.Markdown(advice)
            with gr.Row():
                for key in section_keys:
                    widgets.append(_widget(key, specs[key], getattr(defaults, key)))
                    keys.append(key)
    return SettingsForm(keys, widgets)


def _widget(key: str, spec, default: Any) -> Any:
    kind = _kind(key, spec)
    common = {"label": key, "elem_id": f"lg-set-{key}"}  # the guide's own names for the settings
    value = to_widget(key, default)
    if kind == "folders":
        return gr.Dataframe(headers=FOLDER_HEADERS, value=value, datatype="str", **compat.editable_table(len(FOLDER_HEADERS)),
                            interactive=True, type="array", label="custom_dataset: folders inside the dataset folder, each with its own repeats (empty cells: the main setting)", elem_id=common["elem_id"])
    if kind == "bool":
        return gr.Checkbox(value=value, info=spec.description, min_width=220, **common)
    if kind == "choice":
        return gr.Dropdown([str(c) for c in literal_choices(spec.annotation)], value=value, info=spec.description, min_width=220, **common)
    if kind == "int":
        limits = {k: spec.constraints[c] for k, c in (("minimum", "ge"), ("maximum", "le")) if c in spec.constraints}
        return gr.Number(value=value, precision=0, info=spec.description, min_width=220, **limits, **common)
    lines = 3 if kind == "lines" else 1
    return gr.Textbox(value=value, lines=lines, info=spec.description, min_width=220, **common)
