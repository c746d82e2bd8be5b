"""Helpers shared by the page's blocks: messages and turning engine errors into them."""

from __future__ import annotations

import functools
import html
import logging
from typing import Any, Callable

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Project, Projects
from lora_gradio.ui import compat

log = logging.getLogger("lora_gradio.ui")


def ok(text: str) -> str:
    return f"✓ {text}"


def warn(text: str) -> str:
    return f"⚠️ {text}"


def shown_errors(n_outputs: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a handler whose first output is a message: a `UserError` becomes that message.

    The other outputs are left as they are, so a refused action changes nothing on the page.
    Unexpected errors are logged with their traceback and shown as one line too.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            try:
                return fn(*args)
            except UserError as exc:
                message = warn(str(exc))
            except Exception as exc:  # a bug: keep the page alive, say so, log the traceback
                log.exception("handler %s failed", fn.__name__)
                message = warn(f"Unexpected error: {type(exc).__name__}: {exc}. The terminal running the app has the details.")
            if n_outputs == 1:
                return message
            return (message, *[compat.gr.update() for _ in range(n_outputs - 1)])

        return wrapper

    return decorate


def open_project(projects: Projects, name: "str | None") -> Project:
    if not name:
        raise UserError("No project selected: pick one at the top of the page, or create one.")
    return projects.open(name)


def escape(text: str) -> str:
    return html.escape(str(text))


def duration_text(seconds: float) -> str:
    """'40 s', '12 min', '1.5 h': a time left, as a person reads it."""
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
