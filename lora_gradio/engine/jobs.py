"""Long work as jobs: each runs in its own process and reports through files in the project.

A job is a folder ``<config>/_jobs/<id>/`` with

- ``job.json``: what to run (an engine function ``module:function``, its keyword arguments,
  the project) and the process id;
- ``events.jsonl``: one JSON object per line: ``start``, ``progress`` updates, and exactly one
  final ``done``, ``failed`` or ``cancelled`` event (none if the process was killed);
- ``log.txt``: what the job printed (skipped files, warnings, tracebacks);
- ``cancel``: present once the user asked it to stop.

Because everything is in files, the page can close and reopen, a second browser or the
command line can watch the same job, and a crash in the job cannot take the page down.
The job process is detached from the one that started it (a new session, re-parented to
init on POSIX), so it also survives the page's process ending.
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.fsutil import (
    atomic_write_text,
    disk_full_note,
    disk_problem,
    disk_problem_message,
    parse_json_lines,
    read_user_json,
    sortable_id,
)
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.project import Layout, Project

RUNNING, DONE, FAILED, CANCELLED, DIED = "running", "done", "failed", "cancelled", "died"
FINAL_EVENTS = (DONE, FAILED, CANCELLED)
_PROGRESS_INTERVAL_S = 0.25  # enough for a smooth bar; keeps events.jsonl small on long runs


@dataclass
class Job:
    id: str
    kind: str
    title: str
    func: str
    kwargs: dict[str, Any]
    project: dict[str, str]
    created: str
    folder: Path
    pid: "int | None" = None

    @property
    def events_file(self) -> Path:
        return self.folder / "events.jsonl"

    @property
    def log_file(self) -> Path:
        return self.folder / "log.txt"

    @property
    def cancel_file(self) -> Path:
        return self.folder / "cancel"

    def save(self) -> None:
        data = {k: v for k, v in self.__dict__.items() if k != "folder"}
        atomic_write_text(self.folder / "job.json", json.dumps(data, indent=1))

    @classmethod
    def load(cls, folder: Path) -> "Job":
        """The job of `folder`; a job.json cut short by a crash (or not a job's) is one `UserError`."""
        import dataclasses

        path = folder / "job.json"
        fix = f"delete the folder {folder} to drop that job (its log.txt says what it did)"
        data = read_user_json(path, "The job file", fix)
        known = {f.name for f in dataclasses.fields(cls)} - {"folder"}
        try:
            if not isinstance(data, dict):
                raise TypeError(type(data).__name__)
            return cls(folder=folder, **{k: v for k, v in data.items() if k in known})
        except TypeError:
            raise UserError(f"The job file {path} is damaged (it does not hold a job's id, kind and function): {fix}.") from None


@dataclass
class JobStatus:
    """What a watcher needs to draw a job: state, progress and the end of its log."""

    job: Job
    state: str
    done: int = 0
    total: "int | None" = None
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    started: "float | None" = None
    updated: "float | None" = None
    cancel_requested: bool = False

    @property
    def fraction(self) -> float:
        if self.state == DONE:
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def active(self) -> bool:
        return self.state == RUNNING

    def headline(self) -> str:
        """One line for a status bar: 'Convert PNG to JPEG: 40/120 converting a.png'."""
        count = f"{self.done}/{self.total}" if self.total else (str(self.done) if self.done else "")
        state = {RUNNING: "cancelling" if self.cancel_requested else "running"}.get(self.state, self.state)
        parts = [f"{self.job.title} [{state}]", count, self.message]
        return " ".join(p for p in parts if p)


# Starting ---------------------------------------------------------------------------------------


def start_job(project: Project, kind: str, func: str, kwargs: "dict[str, Any] | None" = None, title: str = "", secret_env: "dict[str, str] | None" = None) -> Job:
    """Run the engine function `func` ("module:function") as a job on `project`.

    The function is called as ``func(project, **kwargs, progress=...)`` in a new process.
    Only one job of a kind runs per project at a time. `kwargs` are stored in the job's folder;
    secrets (API keys) go in `secret_env` instead, which only the job's process sees.
    """
    resolve_function(func)  # fail now, in the caller, if the function does not exist
    running = active_job(project, kind)
    if running is not None:
        raise UserError(f"A {kind} job is already running in {project.base!r} (started {running.created}): wait for it or cancel it first.")
    job_id = sortable_id(kind)
    folder = project.jobs_dir / job_id
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        problem = disk_problem(exc)
        if problem is None:
            raise
        raise UserError(disk_problem_message(problem, project.jobs_dir, f"the {title or kind} job was not started")) from None
    job = Job(
        id=job_id,
        kind=kind,
        title=title or kind,
        func=func,
        kwargs=kwargs or {},
        project={"root": str(project.root), "name": project.name, "layout": project.layout.value},
        created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        folder=folder,
    )
    try:
        job.save()  # a full disk: one sentence from atomic_write_text, and no job folder without its job.json
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    job.pid = _spawn_detached(folder, secret_env or {})
    job.save()
    return job


# Jobs may run under another Python than the page's: inside the WebUI, a separate environment
# with the training packages keeps them from disturbing the WebUI's own pinned packages.
JOB_PYTHON_ENV = "LORA_GRADIO_JOB_PYTHON"


def job_python() -> str:
    return os.environ.get(JOB_PYTHON_ENV) or sys.executable


def _job_pythonpath() -> str:
    """PYTHONPATH for a job: the folder that holds this lora_gradio first, so the job runs this very
    code under any Python (inside a WebUI the extension's folder is on nobody's path), unless that
    folder is one of this Python's site-packages (an installed copy: another Python must not see
    this one's packages before its own)."""
    import sysconfig

    root = Path(__file__).resolve().parents[2]
    sites = {Path(p).resolve() for key in ("purelib", "platlib") if (p := sysconfig.get_paths().get(key))}
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(current if root in sites else [str(root), *current]))


def _spawn_detached(folder: Path, extra_env: "dict[str, str]") -> int:
    """Start the runner for `folder` so it outlives this process; return its pid."""
    cmd = [job_python(), "-m", "lora_gradio.engine.jobs", "run", str(folder)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra_env}
    if pythonpath := _job_pythonpath():
        env["PYTHONPATH"] = pythonpath
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        with open(folder / "log.txt", "ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, creationflags=flags)
        return proc.pid
    # POSIX: a short-lived launcher starts the runner in a new session and exits, so the runner
    # is re-parented to init (no zombie in our process, no SIGHUP when the page's terminal closes).
    launcher = [job_python(), "-m", "lora_gradio.engine.jobs", "launch", str(folder)]
    out = subprocess.run(launcher, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=True)
    return int(out.stdout.strip())


def _launch(folder: Path) -> None:
    cmd = [sys.executable, "-m", "lora_gradio.engine.jobs", "run", str(folder)]
    with open(folder / "log.txt", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    print(proc.pid)


# Running (inside the job process) ---------------------------------------------------------------


class JobProgress(Progress):
    """Writes progress to ``events.jsonl`` and learns of cancellation from the ``cancel`` file."""

    def __init__(self, job: Job):
        self.job = job
        self._last_write = 0.0
        self._events = open(job.events_file, "ab", buffering=0)  # each event is one write, nothing waits in a buffer
        self._torn = False  # the last write stopped part way (a full disk): end that line first

    def event(self, kind: str, **fields: Any) -> None:
        """Append one event. A full disk loses the event, not the job: the work goes on, the next
        event that fits starts on a line of its own, and readers skip the torn one."""
        record = {"type": kind, "t": round(time.time(), 3), **fields}
        line = (b"\n" if self._torn else b"") + (json.dumps(record, default=str) + "\n").encode("utf-8")
        written = 0
        try:
            while written < len(line):
                written += self._events.write(line[written:]) or 0
            self._torn = False
        except OSError:
            self._torn = self._torn or written > 0

    def update(self, done: int, total: "int | None" = None, message: str = "", **data: Any) -> None:
        now = time.monotonic()
        if now - self._last_write < _PROGRESS_INTERVAL_S and (total is None or done < total):
            return
        self._last_write = now
        self.event("progress", done=done, total=total, message=message, **data)

    def log(self, message: str) -> None:
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        try:
            print(f"{stamp} {message}", flush=True)
        except OSError:  # the log is on a full disk: the job goes on without this line
            pass

    def cancelled(self) -> bool:
        return self.job.cancel_file.exists()

    def close(self) -> None:
        self._events.close()


def run_job(folder: Path) -> int:
    """Body of the job process: call the function and record exactly one final event."""
    job = Job.load(folder)
    progress = JobProgress(job)
    progress.event("start", pid=os.getpid(), title=job.title)
    progress.log(f"started {job.title} (pid {os.getpid()})")
    # A polite stop from outside (cancel --force, a shutdown) becomes a normal cancellation.
    signal.signal(signal.SIGTERM, _raise_cancelled)
    try:
        fn = resolve_function(job.func)
        project = Project(Path(job.project["root"]), job.project["name"], Layout(job.project["layout"]))
        result = fn(project, **job.kwargs, progress=progress)
        summary = result.summary() if hasattr(result, "summary") else ("" if result is None else str(result))
        progress.log(summary or "finished")
        progress.event(DONE, message=summary, result=to_jsonable(result))
        return 0
    except Cancelled:
        progress.log("cancelled: work done so far is kept")
        progress.event(CANCELLED, message="Cancelled: what was finished is kept.")
        return 0
    except UserError as exc:
        progress.log(f"error: {exc}")
        progress.event(FAILED, message=str(exc))
        return 1
    except BaseException as exc:  # a bug or a crash: keep the traceback for the report
        traceback.print_exc()
        progress.event(FAILED, message=f"Unexpected error: {type(exc).__name__}: {exc} (the job's log has the details)")
        return 1
    finally:
        progress.close()


def _raise_cancelled(signum, frame):
    raise Cancelled("terminated")


def resolve_function(func: str):
    module_name, _, attr = func.partition(":")
    if not module_name or not attr:
        raise ValueError(f"job function must be 'package.module:function', got {func!r}")
    return getattr(importlib.import_module(module_name), attr)


def to_jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    def plain(obj: Any) -> Any:  # sets (e.g. marked files) become sorted lists, the rest text
        return sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else str(obj)

    try:
        return json.loads(json.dumps(value, default=plain))
    except (TypeError, ValueError):
        return str(value)


# Watching ---------------------------------------------------------------------------------------


# An open page asks about every job of its project each second, and ended jobs never change:
# what was read is kept per folder, with the size and time of the file it came from.
_loaded_jobs: dict[Path, tuple[tuple[int, int, int], Job]] = {}
_ended_statuses: dict[Path, tuple[tuple[int, int, int, bool], JobStatus]] = {}


def _file_key(path: Path) -> tuple[int, int, int]:
    """Changes when the file is replaced (atomic writes make a new inode) or grows."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _load_job(folder: Path) -> Job:
    key = _file_key(folder / "job.json")
    cached = _loaded_jobs.get(folder)
    if cached is None or cached[0] != key:
        cached = (key, Job.load(folder))
        _loaded_jobs[folder] = cached
    return copy.copy(cached[1])


def list_jobs(project: Project) -> list[Job]:
    """The project's jobs, newest first."""
    if not project.jobs_dir.is_dir():
        return []
    jobs = []
    for folder in sorted(project.jobs_dir.iterdir(), reverse=True):
        try:
            jobs.append(_load_job(folder))
        except (OSError, ValueError, TypeError, UserError):
            continue  # a folder being created right now, foreign, or its job.json damaged (`get_job` says so)
    return jobs


def latest_job(project: Project, kind: str) -> "Job | None":
    """The newest job of this kind (running or ended), or None."""
    return next((job for job in list_jobs(project) if job.kind == kind), None)


def get_job(project: Project, job_id: str) -> Job:
    folder = project.jobs_dir / job_id
    if "/" in job_id or "\\" in job_id or not (folder / "job.json").is_file():
        raise UserError(f"No job {job_id!r} in project {project.base!r}: list them with `lora-gradio jobs list {project.base}`.")
    return Job.load(folder)


def active_job(project: Project, kind: "str | None" = None) -> "Job | None":
    """The newest running job (of `kind`, if given), or None."""
    for job in list_jobs(project):
        if (kind is None or job.kind == kind) and job_status(job).active:
            return job
    return None


def job_status(job: Job) -> JobStatus:
    """Read the job's state from its files; O(1) in the length of the run."""
    try:
        key = (*_file_key(job.events_file), job.cancel_file.exists())
    except FileNotFoundError:
        key = None
    cached = _ended_statuses.get(job.folder)
    if key is not None and cached is not None and cached[0] == key:
        return copy.copy(cached[1])
    status = _read_status(job)
    if key is not None and status.state != RUNNING:  # an ended job's files change no more
        _ended_statuses[job.folder] = (key, copy.copy(status))
    return status


def _read_status(job: Job) -> JobStatus:
    status = JobStatus(job=job, state=RUNNING, cancel_requested=job.cancel_file.exists())
    events = _tail_events(job.events_file)
    for event in events:
        if event.get("type") == "start":
            status.started = _number(event.get("t"), None)
    progress_events = [e for e in events if e.get("type") == "progress"]
    if progress_events:
        last = progress_events[-1]
        status.done, status.total, status.message = int(_number(last.get("done"), 0)), _number(last.get("total"), None), str(last.get("message") or "")
        status.total = None if status.total is None else int(status.total)
        status.data = {k: v for k, v in last.items() if k not in ("type", "t", "done", "total", "message")}
        status.updated = _number(last.get("t"), None)
    final = events[-1] if events and events[-1].get("type") in FINAL_EVENTS else None
    if final is not None:
        status.state = final["type"]
        status.message = str(final.get("message") or "")
        status.result = final.get("result")
    elif not _pid_alive(job.pid, job.folder):
        starting = job.pid is None and time.time() - job.folder.stat().st_mtime < 10
        if not starting:
            status.state = DIED
            status.message = "The job stopped without finishing (killed, out of memory, or the machine restarted). Its log may say why." + disk_full_note(job.folder)
    return status


def _number(value: Any, default: Any) -> Any:
    """A number from an event, or `default` for what a damaged or foreign line holds instead."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return value


def _tail_events(path: Path, max_bytes: int = 64_000) -> list[dict[str, Any]]:
    """The start event plus the events in the last `max_bytes` of the file."""
    try:
        with open(path, "rb") as f:
            first = f.readline(max_bytes)
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            tail = f.read()
            if size > max_bytes:
                tail = first + b"\n" + tail.split(b"\n", 1)[-1]  # the first tail line is probably cut
    except (FileNotFoundError, IsADirectoryError):
        return []
    return parse_json_lines(tail)  # a line being written, a torn line or NUL padding is skipped


def read_events(job: Job, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Events after byte `offset`, and the offset to pass next time (for plots that grow)."""
    try:
        with open(job.events_file, "rb") as f:
            f.seek(offset)
            data = f.read()
    except (FileNotFoundError, IsADirectoryError):
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    return parse_json_lines(complete), offset + len(complete)  # torn lines and NUL padding are skipped


def read_log(job: Job, max_lines: int = 200) -> str:
    try:
        with open(job.log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 32_000))
            lines = f.read().replace(b"\0", b"").decode("utf-8", "replace").splitlines()  # NUL padding from a crash
    except FileNotFoundError:
        return ""
    except OSError as exc:  # a folder in its place, or unreadable: say so where the log would be
        return f"(the job's log {job.log_file} cannot be read: {exc.strerror or exc})"
    return "\n".join(lines[-max_lines:])


def cancel_job(job: Job, force_after_s: "float | None" = None) -> JobStatus:
    """Ask the job to stop at its next safe point; with `force_after_s`, terminate it if it has not."""
    job.cancel_file.touch()
    if force_after_s is not None:
        deadline = time.monotonic() + force_after_s
        while time.monotonic() < deadline and job_status(job).active:
            time.sleep(0.2)
        if job_status(job).active and job.pid:
            _terminate(job.pid)
    return job_status(job)


def wait_job(job: Job, timeout_s: "float | None" = None, poll_s: float = 0.2) -> JobStatus:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = job_status(job)
        if not status.active or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(poll_s)


# Processes --------------------------------------------------------------------------------------


def _pid_alive(pid: "int | None", folder: Path) -> bool:
    """True if `pid` is our job runner for `folder` (pids get reused; zombies count as dead)."""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if proc.is_dir():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().decode("utf-8", "replace")
        except (OSError, IndexError):
            return False
        return state != "Z" and str(folder) in cmdline
    if Path("/proc/self").is_dir():
        return False  # Linux, and no such process
    try:
        import psutil  # the WebUI ships it; Windows and macOS use it when present

        return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except ImportError:
        pass
    if os.name == "nt":  # pragma: no cover - Windows without psutil
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def _main(argv: list[str]) -> int:
    action, folder = argv[0], Path(argv[1])
    if action == "launch":
        _launch(folder)
        return 0
    if action == "run":
        return run_job(folder)
    raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
