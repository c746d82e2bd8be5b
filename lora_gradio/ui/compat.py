"""Every Gradio version difference the UI meets, in one place.

The same UI runs under Gradio 3.41.2 (the AUTOMATIC1111 WebUI), 4.40 (Forge) and the newest
release (standalone). UI modules call these helpers instead of testing versions themselves.
"""

from __future__ import annotations

import os
import tempfile
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


def enable_queue(blocks: gr.Blocks, workers: int = 8) -> None:
    """Turn on the queue (polling and progress need it).

    Gradio 3 serves every event from `concurrency_count` shared workers (default 1), and each
    open page's `every=` loop keeps one busy, so give it several.
    """
    if GRADIO_MAJOR < 4:
        blocks.queue(concurrency_count=workers)
    else:
        blocks.queue()


def launch_kwargs() -> dict[str, Any]:
    """Arguments `launch()` needs on this version on top of the common ones."""
    return {"css": CSS} if GRADIO_MAJOR >= 6 else {}


def poll(blocks: gr.Blocks, fn: Callable[..., Any], source: Any, outputs: Sequence[Any], seconds: float, memory: bool = False) -> None:
    """Call `fn(current value of source)` every `seconds` while the page is open.

    With `memory=True` it is `fn(value, memo)`, where `memo` is a dict kept for this page between
    ticks (fn updates it in place), e.g. to act only when something changed since the last tick.
    Each tick is a short event that sends the source's value as the page shows it then.
    """
    inputs, outputs = [source], list(outputs)
    target = fn
    if memory:
        memo = gr.State({})
        inputs.append(memo)
        outputs.append(memo)

        def target(value: Any, box: dict[str, Any]) -> Any:
            result = fn(value, box)
            result = list(result) if isinstance(result, (list, tuple)) else [result]
            return (*result, box)  # State keeps what an event returns (in-place changes are not kept)

    _ticker(blocks, seconds)(target, inputs=inputs, outputs=outputs, **quiet())


_TICKERS = [0]


def _ticker(blocks: gr.Blocks, seconds: float) -> Callable[..., Any]:
    """The event method that fires every `seconds`.

    Gradio 4.40+ has `gr.Timer`. Gradio 3's `every=` runs one server-side loop per page that keeps
    its first arguments and a queue worker for as long as the page is open, and its page drops a
    change event that comes while the same handler is still pending, so a loop fed by `.change`
    can keep polling a stale project. There the page itself presses a hidden button instead: each
    press sends the current values, and a press while the last one is pending is dropped, so ticks
    never pile up. A part of the page that is not shown (another tab) is not refreshed until it is.
    """
    if hasattr(gr, "Timer"):
        return gr.Timer(seconds).tick
    _TICKERS[0] += 1
    elem_id = f"lg-tick-{_TICKERS[0]}"
    button = gr.Button(visible=False, elem_id=elem_id)
    # Only while the part of the page holding the button is shown (not on another tab of the WebUI).
    press = (
        "() => { setInterval(() => { const app = document.querySelector('gradio-app');"
        f" const button = ((app && app.shadowRoot) || document).querySelector('#{elem_id}');"
        " if (button && button.parentElement && button.parentElement.getClientRects().length) button.click();"
        f" }}, {int(seconds * 1000)}); }}"
    )
    blocks.load(None, None, None, _js=press)
    return button.click


# Events that a version's page sends for a component whose Python class does not list them: Gradio 4.x's
# Number field reports leaving it ("blur"), as its Textbox does, but `gr.Number` only gains `.blur` in 5.
_SENT_BUT_UNLISTED = {("Number", "blur")}


def listener(widget: Any, event: str) -> Callable[..., Any]:
    """The method that attaches a handler to `widget`'s `event` (`listener(box, "blur")(fn, ...)` is
    `box.blur(fn, ...)`), on every Gradio version.

    Where the class lacks the method but this version's page still sends the event (see
    `_SENT_BUT_UNLISTED`), the handler is attached to the event by name, which is all the page needs.
    Anything else is an error that names the version, at build time rather than as a missing tab.
    """
    method = getattr(widget, event, None)
    if method is not None:
        return method
    if (type(widget).__name__, event) in _SENT_BUT_UNLISTED and GRADIO_MAJOR == 4:
        import functools

        from gradio.events import EventListener

        return functools.partial(EventListener(event).listener, widget)
    raise AttributeError(f"Gradio {gr.__version__}: {type(widget).__name__} has no '{event}' event")


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


def upload_event_options() -> dict[str, Any]:
    """Options for an event that reads a `gr.File`: receive the raw value (see `uploaded_paths`).

    Gradio 3.41's page can send a file list before it has replaced the local files with the
    uploaded ones (`{"data": "", "blob": {...}}`); its preprocessing then hands over empty
    files. The raw value still names the uploaded file, so we read that instead.
    """
    return {"preprocess": False}


def gradio_upload_dir() -> Path:
    """Where Gradio stores uploads (the same rule in 3.41 and later)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def editable_table(columns: int) -> dict[str, Any]:
    """`gr.Dataframe` keywords for a table with fixed columns and as many rows as the person adds
    (6 renamed `col_count` to `column_count` and moved row limits to `row_limits`)."""
    import inspect

    parameters = inspect.signature(gr.Dataframe.__init__).parameters
    if "row_limits" in parameters:
        return {"row_count": 1, "column_count": (columns, "fixed")}
    return {"row_count": (1, "dynamic"), "col_count": (columns, "fixed")}


def copy_button() -> dict[str, Any]:
    """`gr.Textbox` keyword for a copy button (3.41 and 4/5 have `show_copy_button`; 6 shows one through `buttons`)."""
    import inspect

    parameters = inspect.signature(gr.Textbox.__init__).parameters
    if "show_copy_button" in parameters:
        return {"show_copy_button": True}
    return {"buttons": ["copy"]} if "buttons" in parameters else {}


def gallery_update(items: list) -> Any:
    """New gallery contents with no image selected, so clicking the same image again fires
    `.select` again (Gradio 3.41 has no `selected_index` and keeps the old selection)."""
    return gr.update(value=items, selected_index=None) if GRADIO_MAJOR >= 4 else gr.update(value=items)


def uploaded_paths(value: Any) -> list[str]:
    """Server paths of the files in a raw `gr.File` value, each checked to be a Gradio upload.

    Raw values: 4+ `{"path": ...}`; 3.41 `{"name": path, "is_file": true}` or, half-way,
    `{"data": "", "blob": {"name": path, "is_file": true}}`. Only files inside Gradio's upload
    folder are accepted, so a crafted request cannot make us read other files.
    """
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    upload_dir = gradio_upload_dir()
    paths = []
    for item in items:
        if isinstance(item, dict):
            inner = item.get("blob") if isinstance(item.get("blob"), dict) else item
            path = inner.get("path") or (inner.get("name") if inner.get("is_file") else None)
        else:  # preprocessed values: a path (4+) or a temp-file object (3.x)
            path = str(item) if isinstance(item, (str, Path)) else getattr(item, "name", None)
        if not path:
            raise ValueError("the page sent a file that had not finished uploading: wait for the upload to finish and press the button again")
        resolved = Path(path).resolve()
        if upload_dir not in resolved.parents:
            raise PermissionError(f"refusing {path}: not a file uploaded through the page")
        paths.append(str(resolved))
    return paths


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
