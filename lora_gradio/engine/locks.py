"""One writer at a time, across processes: named file locks that say who holds them.

`exclusive(lock_file, what)` holds an OS file lock (flock through the `filelock` package) while its block
runs, so two page processes, a page and a command line, or two command lines cannot interleave their writes
to one file (settings, captions and their undo, the trash, a training run). Threads of one process take
turns too. A process that dies loses its lock with it (the OS releases flock locks), so a stale lock file
never blocks; a note beside it names the holder (pid, command, since when) for the busy message.
No torch or gradio here.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lora_gradio.engine.errors import UserError

# Short waits: an edit takes milliseconds, so a lock held longer is another long-running writer.
DEFAULT_WAIT_S = 15.0
_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_HELD = threading.local()


def _thread_lock(key: str) -> threading.RLock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(key, threading.RLock())


def _holder_file(lock_file: Path) -> Path:
    return lock_file.with_name(lock_file.name + ".holder")


def describe_holder(lock_file: Path) -> str:
    """'process 1234 (lora-gradio train x), since 14:02:11', or 'another process' when nothing says."""
    try:
        info = json.loads(_holder_file(lock_file).read_text(encoding="utf-8"))
        since = time.strftime("%H:%M:%S", time.localtime(float(info["since"])))
        return f"process {int(info['pid'])} ({info.get('command', '?')}), since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def exclusive(lock_file: Path, what: str, wait_s: float = DEFAULT_WAIT_S) -> Iterator[None]:
    """Hold `lock_file` while the block runs (re-entrant in one thread). Busy for longer than `wait_s`:
    a UserError naming `what`, the holder and what to do; nothing has been changed then."""
    from filelock import FileLock, Timeout

    lock_file = Path(lock_file)
    key = str(lock_file.resolve())
    held = getattr(_HELD, "keys", None)
    if held is None:
        held = _HELD.keys = {}
    if held.get(key):  # this thread holds it already: nested writes of one operation
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    in_process = _thread_lock(key)
    if not in_process.acquire(timeout=wait_s):
        raise UserError(f"{what} is busy in this program: try again in a moment.")
    try:
        lock = FileLock(str(lock_file), is_singleton=False, thread_local=False)
        try:
            lock_file.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire(timeout=wait_s)
        except Timeout:
            raise UserError(
                f"{what} is in use by {describe_holder(lock_file)}: wait for it to finish (or stop it), then try again."
            ) from None
        except OSError as exc:  # a full or read-only disk cannot take the lock file
            from lora_gradio.engine.fsutil import disk_problem, disk_problem_message

            problem = disk_problem(exc)
            if problem is None:
                raise
            raise UserError(disk_problem_message(problem, lock_file.parent, f"{what} could not be locked, so nothing was changed")) from None
        try:
            note = {"pid": os.getpid(), "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200], "since": time.time()}
            try:
                _holder_file(lock_file).write_text(json.dumps(note), encoding="utf-8")
            except OSError:
                pass  # the note only improves the busy message
            held[key] = 1
            yield
        finally:
            held.pop(key, None)
            lock.release()
    finally:
        in_process.release()
