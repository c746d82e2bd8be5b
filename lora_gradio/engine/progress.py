"""How long engine work reports progress and learns it should stop.

Engine functions take a `Progress` (default: `NullProgress`). The command line prints it,
a job writes it as JSON lines (see jobs.py), tests record it. The same function therefore
runs in a notebook cell, in a background job or in a test without change.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lora_gradio.engine.errors import Cancelled


class Progress:
    """Base reporter: ignores updates and is never cancelled. Subclasses override what they need."""

    def update(self, done: int, total: "int | None" = None, message: str = "", **data: Any) -> None:
        """Report that `done` of `total` units are finished (extra fields such as loss go in `data`)."""

    def log(self, message: str) -> None:
        """A line for the job's log (a skipped file, a warning)."""

    def cancelled(self) -> bool:
        return False

    def check_cancel(self) -> None:
        """Raise `Cancelled` if the user asked to stop; call it between units of work."""
        if self.cancelled():
            raise Cancelled("cancelled by the user")


NullProgress = Progress


def first_few(items: list, n: int = 3, sep: str = "; ") -> str:
    """`a; b; c; and 4 more`: a short list for one-line summaries."""
    shown = sep.join(str(item) for item in items[:n])
    return shown + (f"{sep}and {len(items) - n} more" if len(items) > n else "")


class PrintProgress(Progress):
    """Progress for the command line: a line per log message, a throttled line per update."""

    def __init__(self, stream=None, every_s: float = 1.0):
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._last = 0.0

    def update(self, done: int, total: "int | None" = None, message: str = "", **data: Any) -> None:
        now = time.monotonic()
        if total is not None and done < total and now - self._last < self.every_s:
            return
        self._last = now
        count = f"{done}/{total}" if total else f"{done}"
        extra = " ".join(f"{k}={v}" for k, v in data.items())
        print(f"[{count}] {message} {extra}".rstrip(), file=self.stream, flush=True)

    def log(self, message: str) -> None:
        print(message, file=self.stream, flush=True)


def quiet_ml_libraries() -> None:
    """Keep a job's log to what the person needs: no per-file progress bars or advice meant for
    library developers from diffusers and transformers (call after importing torch)."""
    import warnings

    try:
        import diffusers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
