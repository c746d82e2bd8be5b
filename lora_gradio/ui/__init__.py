"""The Gradio page: one block per stage of the guide, each calling one engine function.

`build_ui(root)` returns the `gr.Blocks`; the standalone launcher (app.py) and the WebUI tab
(lora_gradio.webui) both use it.
"""

from __future__ import annotations


def build_ui(root=None, layout="project", title="LoRA Gradio", webui=None):
    """Build the whole page for the projects under `root` (see engine.project.resolve_root).

    `webui` carries the WebUI's hooks when the page is its tab (see lora_gradio.webui)."""
    from lora_gradio.ui.page import build_page

    return build_page(root, layout, title, webui=webui)


__all__ = ["build_ui"]
