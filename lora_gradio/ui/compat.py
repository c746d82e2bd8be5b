"""Every Gradio version difference the UI meets, in one place.

The same UI runs under Gradio 3.41.2 (the AUTOMATIC1111 WebUI), 4.40 (Forge) and the newest
release (standalone). UI modules call these helpers instead of testing versions themselves.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home, faster start

import gradio as gr  # noqa: E402

GRADIO_MAJOR = int(gr.__version__.split(".")[0])

CSS = """
.lg-bar {height: 10px; border-radius: 5px; background: rgba(128,128,128,.25); overflow: hidden;}
.lg-bar > div {height: 100%; background: #f97316; transition: width .4s;}
.lg-job-line {margin-top: 4px; font-size: 0.95em;}
.lg-message p {margin: 0;}
"""


def new_blocks(title: str) -> gr.Blocks:
    """A `gr.Blocks`; css goes here before Gradio 6 and to `launch()` from 6 on."""
    kwargs: dict[str, Any] = {"title": title, "analytics_enabled": False}
    if GRADIO_MAJOR < 6:
        kwargs["css"] = CSS
    return gr.Blocks(**kwargs)


def launch_kwargs() -> dict[str, Any]:
    """Arguments `launch()` needs on this version on top of the common ones."""
    return {"css": CSS} if GRADIO_MAJOR >= 6 else {}


def poll(blocks: gr.Blocks, fn: Callable, inputs: Sequence[Any], outputs: Sequence[Any], seconds: float) -> None:
    """Call `fn` every `seconds` while the page is open (a Timer from 4.40, `every=` before)."""
    if hasattr(gr, "Timer"):
        gr.Timer(seconds).tick(fn, inputs=list(inputs), outputs=list(outputs), **quiet())
    else:
        blocks.load(fn, inputs=list(inputs), outputs=list(outputs), every=seconds, **quiet())


def quiet() -> dict[str, Any]:
    """Event options for background refreshes: no spinner over the outputs, hidden from the API."""
    options: dict[str, Any] = {"show_progress": "hidden"}
    if GRADIO_MAJOR >= 6:
        options["api_visibility"] = "private"
    elif GRADIO_MAJOR >= 4:
        options["show_api"] = False
    else:
        options["api_name"] = False
    return options


def uploaded_paths(value: Any) -> list[str]:
    """Paths of what a `gr.File` received: temp-file objects in 3.x, strings from 4 on."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    paths = []
    for item in items:
        if isinstance(item, (str, Path)):
            paths.append(str(item))
        elif isinstance(item, dict):
            paths.append(item.get("path") or item.get("name"))
        else:
            paths.append(item.name)
    return [p for p in paths if p]


def file_access(root: Path) -> dict[str, Any]:
    """`launch()` arguments that serve files only from the projects root (and Gradio's own temp files).

    Gradio 4+ serves only allowed and self-created files. Gradio 3.x also serves everything
    under the working directory, so block that unless the root lies inside it.
    """
    options: dict[str, Any] = {"allowed_paths": [str(root)]}
    if GRADIO_MAJOR < 4:
        cwd = Path.cwd().resolve()
        if cwd != root and cwd not in root.parents:
            options["blocked_paths"] = [str(cwd)]
    return options
