"""Glue for the AUTOMATIC1111 WebUI and Forge: the tab and its settings.

`scripts/lora_gradio_tab.py` (loaded by the WebUI) calls `register()`. The X/Y/Z plot axes
for epochs and weights join here with the Test tab.
"""

from __future__ import annotations

import os

SETTINGS_SECTION = ("lora_gradio", "LoRA Gradio")
ROOT_OPTION = "lora_gradio_root"
LAYOUT_OPTION = "lora_gradio_layout"


def projects_root(opts) -> str:
    """The root chosen in Settings, else $LORA_GRADIO_ROOT, else ~/Loras."""
    from lora_gradio.engine.project import resolve_root

    chosen = getattr(opts, ROOT_OPTION, "") or os.environ.get("LORA_GRADIO_ROOT") or None
    return str(resolve_root(chosen))


class WebUIHooks:
    """What the page may ask of the WebUI it runs in."""

    def unload_checkpoint(self) -> None:
        """Free the GPU memory of the WebUI's loaded model before training (it reloads on the next
        generation). Training itself runs in a process of its own, never inside the WebUI's."""
        from modules import sd_models

        sd_models.unload_model_weights()


def register() -> None:
    """Register the tab and its settings with the WebUI's callbacks (call at script import)."""
    from modules import script_callbacks, shared

    def add_settings() -> None:
        section = SETTINGS_SECTION
        shared.opts.add_option(ROOT_OPTION, shared.OptionInfo("", "Projects folder (empty: $LORA_GRADIO_ROOT or ~/Loras); reload the UI after changing", section=section))
        shared.opts.add_option(LAYOUT_OPTION, shared.OptionInfo("project", "Folder layout: 'project' (Loras/NAME/dataset) or 'category' (datasets/NAME)", section=section))

    def add_tab():
        from lora_gradio.ui import build_ui

        layout = getattr(shared.opts, LAYOUT_OPTION, "project") or "project"
        blocks = build_ui(projects_root(shared.opts), layout, webui=WebUIHooks())
        return [(blocks, "LoRA Gradio", "lora_gradio")]

    script_callbacks.on_ui_settings(add_settings)
    script_callbacks.on_ui_tabs(add_tab)
