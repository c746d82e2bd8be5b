"""The guide's testing half: compare saved epochs and weights on an X/Y grid.

- `compare_project(project, progress=..., **overrides)` (render.py): load the base model once, then render
  the same prompt with the same seeds for each chosen epoch file (X) and LoRA weight (Y), plus a "no LoRA"
  reference column; save one labelled grid PNG and a JSON record under `output/compare/`. This is what the
  `compare` command and the Test tab run (as a job).
- The WebUI way: `xyz_strings` (xyz.py) gives the prompt and the X/Y/Z plot's "Prompt S/R" values
  (`-01, -02, ...` for epochs, `:0.5, :0.6, ...` for weights); `send_to_webui` (webui_api.py) renders the
  same grid in a running WebUI through its API (`webui_xyz_payload` builds the request).

settings.py   the [compare] settings, parsing epochs and weights
epochs.py     which epoch files and which prompt a comparison uses
xyz.py        the X/Y/Z plot strings (pure)
render.py     rendering the grid with diffusers
grid.py       drawing the labelled grid image
webui_api.py  the same grid in a running WebUI, through its API

Jobs name `lora_gradio.engine.compare:compare_project` and `...:send_to_webui_job`, so those stay here.
No torch at import.
"""

from lora_gradio.engine.compare.epochs import caption_first_tags, choose_epochs, default_prompt, newest_grid, output_name, saved_epochs
from lora_gradio.engine.compare.grid import build_grid, grid_layout
from lora_gradio.engine.compare.render import MAX_IMAGES, CompareResult, compare_project
from lora_gradio.engine.compare.settings import (
    COMPARE_FOLDER, DEFAULT_NEGATIVE, DEFAULT_WEIGHTS, SECTION, WEIGHT_MAX, WEIGHT_MIN, CompareSettings,
    load_compare_settings, parse_epochs, parse_weights, resolve_settings, save_compare_settings,
)
from lora_gradio.engine.compare.webui_api import WEBUI_SCRIPT, WebuiResult, send_to_webui, send_to_webui_job, webui_xyz_payload, xyz_script_args
from lora_gradio.engine.compare.xyz import XYZStrings, epoch_label, epoch_sr_values, example_prompt, format_weight, weight_sr_values, xyz_plan, xyz_strings

__all__ = [
    "COMPARE_FOLDER", "DEFAULT_NEGATIVE", "DEFAULT_WEIGHTS", "MAX_IMAGES", "SECTION", "WEBUI_SCRIPT", "WEIGHT_MAX", "WEIGHT_MIN",
    "CompareResult", "CompareSettings", "WebuiResult", "XYZStrings",
    "build_grid", "caption_first_tags", "choose_epochs", "compare_project", "default_prompt", "epoch_label", "epoch_sr_values",
    "example_prompt", "format_weight", "grid_layout", "load_compare_settings", "newest_grid", "output_name", "parse_epochs",
    "parse_weights", "resolve_settings", "save_compare_settings", "saved_epochs", "send_to_webui", "send_to_webui_job",
    "webui_xyz_payload", "weight_sr_values", "xyz_plan", "xyz_script_args", "xyz_strings",
]
