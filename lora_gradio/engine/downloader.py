"""Parallel, safe image downloads: the part of a scrape that touches the network and the disk.

`download_all` fetches many URLs into one folder with a thread pool (downloads wait on the
network, so threads scale), retrying what a retry can fix (429, 5xx, dropped connections,
timeouts, a server too slow) with exponential back-off and jitter. Each file streams into a hidden
temporary file in a partial folder outside the target folder, is capped in size, checked to be a
real image (not an HTML error page, not truncated, not corrupt), and only then linked into place,
never over a different file. So whatever happens (a cancel, a dead network, a full disk, kill -9)
the folder holds only whole images.

Every transfer is bounded in time, not just per read: a `TransferGuard` gives it an overall deadline,
a minimum rate and a cancel check, and aborts it (even a read that is blocked) within a fraction of a
second. `stream_to_file` is the same machinery for one file, resumable, for other downloads (base models).

A JSON-lines record of finished downloads (md5 -> file name, plus the item's metadata) lets the
same scrape run again and download only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import errno
import json
import os
import random
import re
import secrets
import shutil
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter

from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.fsutil import unique_path
from lora_gradio.engine.images import UnreadableImage, open_image
from lora_gradio.engine.progress import Progress, first_few

MiB = 1024 * 1024
DEFAULT_MAX_BYTES = 50 * MiB
USER_AGENT = "lora_gradio (LoRA dataset downloader; +https://github.com/)"
_CHUNK = 64 * 1024
_MAX_REDIRECTS = 5
_BACKOFF_CAP_S = 30.0
_RETRY_AFTER_CAP_S = 120.0  # a server asking for an hour's pause gets a failure, not a frozen run
# After this many files in a row fail with connection errors (after all their retries), the
# network is taken as down and the remaining files fail at once instead of each retrying.
_NETWORK_DOWN_AFTER = 8
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_HTML_STARTS = (b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<!--")
DISK_FULL_MESSAGE = "the disk is full: free space and run again; finished files are kept"
# Deadlines, not just timeouts: one image (all its tries together) must arrive within
# DEFAULT_DEADLINE_S, and a body must keep coming at DEFAULT_MIN_RATE bytes/s or more, averaged over
# DEFAULT_RATE_WINDOW_S seconds (a stall or a trickle ends there, and is retried while time is left).
DEFAULT_DEADLINE_S = 600.0
DEFAULT_MIN_RATE = 1024.0
DEFAULT_RATE_WINDOW_S = 30.0
PARTIAL_FOLDER = "partial"  # beside the download record: files still arriving


@dataclass
class DownloadItem:
    """One file to fetch: `filename` is its final name in the target folder (e.g. `<md5>.jpg`).

    `md5` is the booru's md5 of the original file: it identifies the post for the "already have
    it" check, it does not verify the bytes (a resized sample has other bytes).
    """

    url: str
    filename: str
    md5: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DownloadReport:
    downloaded: list[str] = field(default_factory=list)  # final file names, in the target folder
    skipped_existing: list[str] = field(default_factory=list)  # names already there
    failed: list[tuple[str, str]] = field(default_factory=list)  # (url, reason)
    # url -> file name in the target folder, for downloaded and already-present items: the name
    # may differ from the item's (" (2)" after a clash, or the recorded name), so captions and
    # metadata should be written next to this one.
    saved_as: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        text = f"Downloaded {len(self.downloaded)} new image(s)"
        if self.skipped_existing:
            text += f", {len(self.skipped_existing)} already present"
        if self.failed:
            reasons = first_few([f"{url}: {reason}" for url, reason in self.failed])
            text += f"; {len(self.failed)} failed ({reasons}). Run again to retry the failed ones"
        return text + "."


class DiskFull(UserError):
    """The target disk ran out of space; the run stopped, finished files are kept."""


class _Failure(Exception):
    """One file failed for `reason`; `retry` says whether trying again may help."""

    def __init__(self, reason: str, retry: bool = False, wait_s: float | None = None, network: bool = False, deadline: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.wait_s = wait_s  # the server's Retry-After, if it sent one
        self.network = network  # a connection-level failure (counts towards "network down")
        self.deadline = deadline  # the file's overall deadline passed: no more tries


class _Stopped(Exception):
    """The run is stopping (cancel or full disk): abandon this file quietly."""


# Deadlines: every transfer is watched --------------------------------------------------------------
#
# A read timeout only bounds the wait for the *next* byte: a server that sends one byte every few
# seconds keeps a download (and the pool's shutdown, and so Ctrl-C) waiting for ever. A
# `TransferGuard` watches one transfer from a small thread of its own and, when the transfer is
# cancelled, passes its deadline or runs under the minimum rate, shuts its socket down: whatever the
# reading thread was blocked in returns at once, and the guard says why it was stopped.


class StreamAborted(Exception):
    """A guarded transfer was stopped: `why` is "cancel", "deadline" or "slow"; `reason` says it in words."""

    def __init__(self, why: str, reason: str):
        super().__init__(reason)
        self.why = why
        self.reason = reason


_ACTIVE = threading.local()  # the guard of the transfer this thread is making, if any


class TransferGuard:
    """Bounds one transfer (a request and the reading of its answer) in time, rate and cancellation.

    Use it as a context manager around the request and the reading, in the thread that makes them.
    Connections of a session from `guarded_session()` (or any session with a `GuardedAdapter`) that
    are used inside it are watched from the start, the wait for the headers included; for another
    session, `attach(response)` watches the body. The reader calls `add(n)` for each chunk (the rate
    is measured from those) and `raise_if_tripped()` when a read ends or fails, so that an abort reads
    as `StreamAborted`, not as a network error.

    deadline_s / deadline_at: the whole transfer must end by then (`deadline_at` is a time.monotonic()
    value, for a deadline shared by several tries). min_rate: bytes per second, averaged over the last
    `rate_window_s` seconds of the body (0 = no minimum). cancel: a callable, true when the user wants
    the transfer stopped.
    """

    def __init__(self, *, deadline_s: float | None = None, deadline_at: float | None = None, min_rate: float = 0.0,
                 rate_window_s: float = 30.0, cancel: Callable[[], bool] | None = None, tick_s: float = 0.2):
        now = time.monotonic()
        self.deadline_s = deadline_s
        self.deadline_at = deadline_at if deadline_at is not None else (now + deadline_s if deadline_s else None)
        self.min_rate = max(0.0, float(min_rate or 0.0))
        self.rate_window_s = max(0.1, float(rate_window_s))
        self.cancel = cancel
        self.tick_s = tick_s
        self.received = 0
        self.error: StreamAborted | None = None
        self._body_start: float | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self._targets: list[Any] = []  # connections and sockets to shut down when tripped
        self._done = threading.Event()
        self._closed = False
        self._watcher: threading.Thread | None = None
        self._outer: TransferGuard | None = None

    # Life cycle
    def __enter__(self) -> "TransferGuard":
        self._outer = getattr(_ACTIVE, "guard", None)
        _ACTIVE.guard = self
        self._watcher = threading.Thread(target=self._watch, name="transfer-guard", daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._closed = True
            self._targets.clear()
        self._done.set()
        _ACTIVE.guard = self._outer
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join()

    # What the reading thread calls
    def start_body(self) -> None:
        """The headers are in: the minimum rate counts from now."""
        if self._body_start is None:
            start = time.monotonic()
            self._samples.append((start, self.received))
            self._body_start = start  # last: the watcher samples only once this is set

    def add(self, nbytes: int) -> None:
        self.received += nbytes

    def raise_if_tripped(self) -> None:
        """Raise the guard's StreamAborted if it stopped the transfer (the watcher decides, each tick)."""
        if self.error is not None:
            raise self.error

    def attach(self, thing: Any) -> None:
        """Watch a requests/urllib3 response, a urllib3 connection or a socket."""
        with self._lock:
            if self._closed:
                return
            self._targets.append(thing)
            tripped = self.error is not None
        if tripped:
            self._shutdown([thing])

    def detach_all(self) -> None:
        """The transfer is over (its connection may go back to the pool): a late trip must not touch it."""
        with self._lock:
            self._targets.clear()

    # The watcher
    def _watch(self) -> None:
        while not self._done.wait(self.tick_s):
            error = self._why_stop()
            if error is not None:
                self._trip(error)
                return

    def _why_stop(self) -> StreamAborted | None:
        if self.error is not None:
            return self.error
        if self.cancel is not None and _asks_to_stop(self.cancel):
            return StreamAborted("cancel", "cancelled by the user")
        now = time.monotonic()
        if self.deadline_at is not None and now >= self.deadline_at:
            limit = f" {_seconds(self.deadline_s)} s" if self.deadline_s else ""
            return StreamAborted("deadline", f"took longer than its{limit} deadline")
        if self.min_rate and self._body_start is not None:
            received = self.received
            self._samples.append((now, received))
            window = self.rate_window_s
            while len(self._samples) > 1 and self._samples[1][0] <= now - window:
                self._samples.popleft()
            since, then = self._samples[0]
            if now - since >= window and received - then < self.min_rate * (now - since):
                rate = (received - then) / (now - since)
                return StreamAborted("slow", f"too slow: {_rate(rate)} over the last {_seconds(now - since)} s, under the {_rate(self.min_rate)} minimum")
        return None

    def _trip(self, error: StreamAborted) -> None:
        with self._lock:
            if self.error is None:
                self.error = error
            targets = [] if self._closed else list(self._targets)
        self._shutdown(targets)

    @staticmethod
    def _shutdown(targets: list[Any]) -> None:
        for target in targets:
            for sock in _sockets_of(target):
                try:
                    # The plain socket's shutdown, even for TLS: the SSL object stays intact for the
                    # reading thread, which sees the end of the stream and returns.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except (OSError, ValueError, TypeError):
                    pass


def _sockets_of(thing: Any) -> list[socket.socket]:
    """The sockets under a socket, a urllib3 connection, or a requests/urllib3 response."""
    if isinstance(thing, socket.socket):
        return [thing]
    found: list[socket.socket] = []
    raw = getattr(thing, "raw", thing)  # a requests.Response's urllib3 response
    for conn in (getattr(raw, "_connection", None), thing if hasattr(thing, "sock") else None):
        sock = getattr(conn, "sock", None)
        if isinstance(sock, socket.socket):
            found.append(sock)
    fp = getattr(getattr(raw, "_fp", None), "fp", None)  # http.client's buffered reader of the socket
    sock = getattr(getattr(fp, "raw", None), "_sock", None)
    if isinstance(sock, socket.socket) and sock not in found:
        found.append(sock)
    return found


def _asks_to_stop(cancel: Callable[[], bool]) -> bool:
    try:
        return bool(cancel())
    except Exception:  # noqa: BLE001 - a broken cancel check must not end the watching
        return False


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:.2g}" if value < 10 else f"{value:.0f}"


def _rate(bytes_per_s: float) -> str:
    return f"{bytes_per_s / 1024:.1f} KiB/s" if bytes_per_s >= 1024 else f"{bytes_per_s:.0f} bytes/s"


def _attach_to_active_guard(conn: Any) -> None:
    guard = getattr(_ACTIVE, "guard", None)
    if guard is not None:
        guard.attach(conn)


class _GuardedConnectionMixin:
    """A urllib3 connection that puts itself under the calling thread's TransferGuard."""

    def connect(self) -> None:
        _attach_to_active_guard(self)
        super().connect()  # type: ignore[misc]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach_to_active_guard(self)
        super().request(*args, **kwargs)  # type: ignore[misc]
        # The socket itself too: once an answer says "Connection: close" the connection forgets
        # it (sock = None) while the answer is still being read from it.
        sock = getattr(self, "sock", None)
        if sock is not None:
            _attach_to_active_guard(sock)

    def getresponse(self, *args: Any, **kwargs: Any) -> Any:
        response = super().getresponse(*args, **kwargs)  # type: ignore[misc]
        _attach_to_active_guard(response)
        return response


class _GuardedHTTPConnection(_GuardedConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _GuardedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """requests' adapter whose connections a TransferGuard can abort at any point of a request."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def guarded_session(pool_maxsize: int = 10, user_agent: str = USER_AGENT) -> requests.Session:
    """A requests session whose requests a TransferGuard watches from the first byte (no retries of its own)."""
    s = requests.Session()
    adapter = GuardedAdapter(pool_connections=4, pool_maxsize=max(4, pool_maxsize), max_retries=0)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = user_agent
    return s


class _NetworkError(Exception):
    """Reading the body failed at the network level (a reset, a cut, a read timeout)."""


def _read_body(response: requests.Response, guard: TransferGuard, chunk: int = _CHUNK) -> Iterator[bytes]:
    """The body of `response` (decoded as requests would), in pieces as they arrive, counted by `guard`.

    Raises `StreamAborted` when the guard stopped the transfer, `_NetworkError` when the network did.
    """
    raw = response.raw
    read1 = getattr(raw, "read1", None)  # urllib3 2: returns what arrived, so the rate is measured finely
    guard.start_body()
    while True:
        guard.raise_if_tripped()
        try:
            data = read1(chunk, decode_content=True) if read1 is not None else raw.read(min(chunk, 8192), decode_content=True)
        except Exception as exc:  # urllib3, http.client and ssl errors all end the transfer
            guard.raise_if_tripped()
            raise _NetworkError(_network_reason(exc)) from None
        if not data:
            guard.raise_if_tripped()  # the end of the stream may be our own shutdown
            guard.detach_all()
            return
        guard.add(len(data))
        yield data


def guarded_get(url: str, guard: TransferGuard, *, session: requests.Session | None = None, timeout: float | tuple[float, float] = (10, 60),
                headers: dict[str, str] | None = None, max_redirects: int = _MAX_REDIRECTS) -> requests.Response:
    """GET `url` (stream=True) inside `guard`, following up to `max_redirects` redirects by hand and
    refusing any that leaves http(s). Raises StreamAborted, or requests' exceptions for the rest
    (`StreamFailed` with retry=False for a refused redirect)."""
    session = session or _default_session()
    for _ in range(max_redirects + 1):
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise StreamFailed(f"refused a non-http(s) URL: {url}")
        try:
            response = session.get(url, stream=True, timeout=timeout, allow_redirects=False, headers=headers)
        except requests.RequestException:
            guard.raise_if_tripped()
            raise
        guard.attach(response)
        if not response.is_redirect:
            return response
        location = response.headers.get("Location", "")
        response.close()
        url = urljoin(url, location)
    raise StreamFailed(f"more than {max_redirects} redirects")


_SESSIONS = threading.local()


def _default_session() -> requests.Session:
    s = getattr(_SESSIONS, "session", None)
    if s is None:
        s = _SESSIONS.session = guarded_session()
    return s


# One file, reusable: base models use it too ------------------------------------------------------


class StreamFailed(Exception):
    """`stream_to_file` gave up: `reason` in words; `retry` if running again may help (a network
    problem, too slow, past the deadline); `received` bytes are in the file (kept for a resume)."""

    def __init__(self, reason: str, retry: bool = False, received: int = 0, why: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.received = received
        self.why = why  # "deadline", "slow", "network", or "" for an answer that retrying will not change


@dataclass
class StreamResult:
    received: int  # bytes in the file now
    total: int | None  # the whole size when the server said it
    resumed_from: int  # bytes that were there before (0 when it started over)
    content_type: str
    response_headers: dict[str, str]
    url: str  # after redirects


def stream_to_file(
    url: str,
    path: Path,
    *,
    resume: bool = False,
    session: requests.Session | None = None,
    timeout: float | tuple[float, float] = (10, 60),
    deadline_s: float | None = None,
    min_rate: float = DEFAULT_MIN_RATE,
    rate_window_s: float = DEFAULT_RATE_WINDOW_S,
    cancel: Callable[[], bool] | None = None,
    max_bytes: int | None = None,
    headers: dict[str, str] | None = None,
    check: Callable[[requests.Response], None] | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    chunk: int = _CHUNK,
) -> StreamResult:
    """Download `url` into `path` under an overall deadline, a minimum rate and a cancel check.

    With `resume`, bytes already in `path` are kept and the rest asked for with a Range request (a
    server that ignores it sends everything, and the file starts over). `check(response)` sees the
    answer before any byte is written and may raise (e.g. a UserError for HTTP 404 or an HTML page);
    without it, any status but 200/206 is a `StreamFailed`. `on_progress(done, total)` follows the bytes.

    Raises `Cancelled` when `cancel()` turns true (within a fraction of a second, even while the
    server sends nothing), `StreamFailed` for the deadline, a rate under `min_rate` bytes/s over
    `rate_window_s` seconds, a network error, a body cut short or over `max_bytes`. `path` keeps what
    arrived either way; the caller moves it into place once whole and checked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = path.stat().st_size if resume and path.is_file() else 0
    done = start
    guard = TransferGuard(deadline_s=deadline_s, min_rate=min_rate, rate_window_s=rate_window_s, cancel=cancel)
    try:
        with guard:
            ask = dict(headers or {})
            if start:
                ask["Range"] = f"bytes={start}-"
            try:
                response = guarded_get(url, guard, session=session, timeout=timeout, headers=ask)
            except requests.RequestException as exc:
                raise StreamFailed(_network_reason(exc), retry=True, received=start, why="network") from None
            with response:
                if check is not None:
                    check(response)
                elif response.status_code not in (200, 206):
                    raise StreamFailed(f"HTTP {response.status_code}: {response.reason or 'unexpected answer'}", retry=response.status_code == 429 or response.status_code >= 500, received=start)
                if start and response.status_code != 206:
                    start = done = 0  # the server ignored the range: start over
                length = _content_length(response)
                if response.headers.get("Content-Encoding"):
                    length = None  # the length of the compressed bytes, not of what is written
                total = start + length if length is not None else None
                if max_bytes is not None and total is not None and total > max_bytes:
                    raise StreamFailed(f"file is {_size(total)}, over the {_size(max_bytes)} limit", received=start)
                with open(path, "ab" if start else "wb") as out:
                    try:
                        for data in _read_body(response, guard, chunk):
                            if max_bytes is not None and done + len(data) > max_bytes:
                                raise StreamFailed(f"file is over the {_size(max_bytes)} limit", received=done)
                            _write_chunk(out, data)
                            done += len(data)
                            if on_progress is not None:
                                on_progress(done, total)
                    except _NetworkError as exc:
                        out.flush()
                        raise StreamFailed(str(exc), retry=True, received=done, why="network") from None
                if total is not None and done < total:
                    raise StreamFailed(f"connection closed after {done:,} of {total:,} bytes", retry=True, received=done, why="network")
                return StreamResult(done, total, start, response.headers.get("Content-Type", ""), dict(response.headers), response.url)
    except StreamAborted as exc:
        if exc.why == "cancel":
            raise Cancelled("cancelled by the user") from None
        raise StreamFailed(exc.reason, retry=True, received=_size_of(path), why=exc.why) from None


@contextlib.contextmanager
def open_url(
    url: str,
    *,
    session: requests.Session | None = None,
    timeout: float | tuple[float, float] = (10, 60),
    deadline_s: float | None = 60.0,
    cancel: Callable[[], bool] | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[requests.Response]:
    """GET `url` (safe redirects, stream=True) and yield the answer once its headers are in, all under
    a deadline and a cancel check: for a look at the headers (a file name, a size) before a download.

    Raises `Cancelled` when `cancel()` turns true, `StreamFailed` when the server cannot be reached
    or the deadline passes; anything the body of the `with` raises passes through unchanged.
    """
    guard = TransferGuard(deadline_s=deadline_s, cancel=cancel)
    try:
        with guard:
            try:
                response = guarded_get(url, guard, session=session, timeout=timeout, headers=headers)
            except requests.RequestException as exc:
                raise StreamFailed(_network_reason(exc), retry=True, why="network") from None
            with response:
                yield response
    except StreamAborted as exc:
        if exc.why == "cancel":
            raise Cancelled("cancelled by the user") from None
        raise StreamFailed(exc.reason, retry=True, why=exc.why) from None


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# Public entry point ------------------------------------------------------------------------------


def download_all(
    items: Iterable[DownloadItem],
    target_dir: Path,
    workers: int = 16,
    timeout: float | tuple[float, float] = (10, 60),
    retries: int = 4,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
    session: requests.Session | None = None,
    record_path: Path | None = None,
    backoff_s: float = 1.0,
    deadline_s: float | None = DEFAULT_DEADLINE_S,
    min_rate: float = DEFAULT_MIN_RATE,
    rate_window_s: float = DEFAULT_RATE_WINDOW_S,
    partial_dir: Path | None = None,
) -> DownloadReport:
    """Download `items` into `target_dir`; return what landed, what was already there, what failed.

    Raises `Cancelled` (after running downloads are aborted and their temporary files removed)
    when the user stops the run, `DiskFull` (a `UserError`) when the disk fills up, and a
    `UserError` when the folder cannot be written. Either way every finished file is kept and
    recorded (the exception's `report` attribute says what finished), so running again continues.
    `backoff_s` is the first retry's wait; each further retry doubles it (with jitter).

    Each file, all its tries together, must arrive within `deadline_s` seconds (None: no deadline),
    and its body at `min_rate` bytes/s or more over any `rate_window_s` seconds (0: no minimum).
    Bytes still arriving live in `partial_dir` (default: `partial/` beside the record, else a hidden
    folder beside the target), never in the target folder; a whole, checked file is linked in.
    """
    progress = progress or Progress()
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    partial_dir = Path(partial_dir) if partial_dir else _default_partial_dir(target_dir, record_path)
    _clear_stale_partials(partial_dir, deadline_s)
    items = list(items)
    report = DownloadReport()
    record = _Record(Path(record_path)) if record_path else None
    todo = _plan(items, target_dir, record, report, progress)
    run = _Run(target_dir, timeout, retries, max_bytes, backoff_s, session, workers, record,
               partial_dir=partial_dir, deadline_s=deadline_s, min_rate=min_rate, rate_window_s=rate_window_s)
    total = len(items)
    counter = _Counter(report, progress, total)
    counter.tick()
    try:
        _run_pool(run, todo, workers, report, progress, counter)
    except (Cancelled, UserError) as exc:
        exc.report = report  # type: ignore[attr-defined]  # what finished before the stop
        raise
    finally:
        run.close()
        try:
            partial_dir.rmdir()  # only when empty: another run's files stay
        except OSError:
            pass
    return report


def _default_partial_dir(target_dir: Path, record_path: Path | None) -> Path:
    """Where files wait until whole: beside the record (a project's config folder), or a hidden
    folder beside the target; outside the target either way, and most likely on its file system."""
    if record_path:
        return Path(record_path).parent / PARTIAL_FOLDER
    return target_dir.parent / f".{target_dir.name}.partial"


def _clear_stale_partials(partial_dir: Path, deadline_s: float | None) -> None:
    """Remove what a killed run left: a file no download has written to for longer than any download
    may take (a live one writes at least every rate window and ends by its deadline)."""
    older_than = max(3600.0, 2 * deadline_s) if deadline_s else 24 * 3600.0
    try:
        entries = list(partial_dir.iterdir())
    except OSError:
        return
    now = time.time()
    for path in entries:
        if not (path.name.startswith(".") and path.name.endswith(".part")):
            continue
        try:
            if now - path.stat().st_mtime > older_than:
                path.unlink()
        except OSError:
            pass


# Planning: what is already here ------------------------------------------------------------------


def _plan(items: list[DownloadItem], target_dir: Path, record: _Record | None, report: DownloadReport, progress: Progress) -> list[DownloadItem]:
    """Drop items already downloaded (by md5 in the record, or by file name) and repeats."""
    known = record.load() if record else {}
    seen: set[str] = set()  # md5 (or URL when there is none) of the items planned so far
    todo: list[DownloadItem] = []
    for item in items:
        reason = _unsafe_name(item.filename)
        if reason:
            report.failed.append((item.url, reason))
            progress.log(f"failed {item.url}: {reason}")
            continue
        md5 = (item.md5 or "").lower()
        recorded = known.get(md5) if md5 else None
        if recorded and (target_dir / recorded).is_file():
            _skip(report, item, recorded)
        elif (target_dir / item.filename).exists():
            _skip(report, item, item.filename)
        elif (md5 or item.url) in seen:
            _skip(report, item, item.filename)  # the same post twice in one list
        else:
            todo.append(item)
        seen.add(md5 or item.url)
    return todo


def _skip(report: DownloadReport, item: DownloadItem, name: str) -> None:
    report.skipped_existing.append(name)
    report.saved_as[item.url] = name


def _unsafe_name(name: str) -> str | None:
    """Why `name` may not be written into the target folder, or None if it is a plain file name."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        return f"unsafe file name {name!r}"
    return None


def _jsonable(value: Any) -> Any:
    """How the record stores metadata JSON cannot: dataclasses (a booru post) as dicts, the rest as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


class _Record:
    """JSON lines of finished downloads: {"md5", "filename", "url", "meta"}; the last line for an md5 wins."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[str, str]:
        known: dict[str, str] = {}
        if not self.path.is_file():
            return known
        from lora_gradio.engine.fsutil import parse_json_lines

        try:
            entries = parse_json_lines(self.path.read_bytes())  # a line cut short by a crash, or NUL padding, is skipped
        except OSError:
            return known
        for entry in entries:
            if "md5" in entry and "filename" in entry:
                known[str(entry["md5"]).lower()] = str(entry["filename"])
        return known

    def add(self, item: DownloadItem, filename: str) -> None:
        if not item.md5:
            return
        entry = {"md5": item.md5.lower(), "filename": filename, "url": item.url, "meta": item.meta}
        line = (json.dumps(entry, ensure_ascii=False, default=_jsonable) + "\n").encode("utf-8")
        # One O_APPEND write per line: a crash leaves at most one cut line, which `load` skips.
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


# Running the pool --------------------------------------------------------------------------------


class _Counter:
    """Counts finished files and reports progress as they finish."""

    def __init__(self, report: DownloadReport, progress: Progress, total: int):
        self.report, self.progress, self.total = report, progress, total

    def tick(self) -> None:
        r = self.report
        done = len(r.downloaded) + len(r.skipped_existing) + len(r.failed)
        self.progress.update(done, self.total, "downloading", downloaded=len(r.downloaded), skipped=len(r.skipped_existing), failed=len(r.failed))


def _run_pool(run: _Run, todo: list[DownloadItem], workers: int, report: DownloadReport, progress: Progress, counter: _Counter) -> None:
    if not todo:
        return
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(todo))), thread_name_prefix="download")
    futures: dict[Future, DownloadItem] = {pool.submit(run.fetch, item): item for item in todo}
    pending = set(futures)
    stop: BaseException | None = None
    try:
        while pending:
            # Wake up now and then even when nothing finishes, so a cancel is noticed promptly.
            finished, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            for future in finished:
                stop = _collect(future, futures[future], report, progress, run.target_dir) or stop
            if finished:
                counter.tick()
            if stop is None:
                try:
                    progress.check_cancel()
                except Cancelled as exc:
                    stop = exc
            if stop is not None and not run.stopping.is_set():
                run.stopping.set()  # running downloads abort at their next chunk and clean up
                for future in pending:
                    future.cancel()
    except BaseException:
        run.stopping.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # every worker has removed its temp file
    if stop is not None:
        raise stop


def _collect(future: Future, item: DownloadItem, report: DownloadReport, progress: Progress, target_dir: Path) -> BaseException | None:
    """File a finished future into the report; return an exception that must stop the run."""
    if future.cancelled():
        return None
    error = future.exception()
    if error is None:
        report.downloaded.append(future.result())
        report.saved_as[item.url] = future.result()
        return None
    if isinstance(error, _Failure):
        report.failed.append((item.url, error.reason))
        progress.log(f"failed {item.url}: {error.reason}")
        return None
    if isinstance(error, _Stopped):
        return None
    if isinstance(error, OSError) and not isinstance(error, requests.RequestException):
        stop = _disk_error(error, target_dir)
        progress.log(f"stopped: {stop}")
        return stop
    return error  # a bug: stop and show it


def _disk_error(error: OSError, target_dir: Path) -> UserError:
    """A one-sentence UserError for a failed write into the target folder."""
    if error.errno in _DISK_FULL_ERRNOS:
        return DiskFull(DISK_FULL_MESSAGE)
    why = error.strerror or str(error)
    return UserError(f"cannot write into {target_dir} ({why}): check the folder and run again; finished files are kept")


# One download ------------------------------------------------------------------------------------


class _Run:
    """Settings and shared state of one `download_all` call; `fetch` runs in the worker threads."""

    def __init__(self, target_dir: Path, timeout: float | tuple[float, float], retries: int, max_bytes: int, backoff_s: float,
                 session: requests.Session | None, workers: int, record: _Record | None, *, partial_dir: Path | None = None,
                 deadline_s: float | None = DEFAULT_DEADLINE_S, min_rate: float = DEFAULT_MIN_RATE, rate_window_s: float = DEFAULT_RATE_WINDOW_S):
        self.target_dir = target_dir
        self.partial_dir = partial_dir or _default_partial_dir(target_dir, None)
        self.deadline_s = deadline_s
        self.min_rate = min_rate
        self.rate_window_s = rate_window_s
        self.timeout = timeout
        self.retries = max(0, retries)
        self.max_bytes = max_bytes
        self.backoff_s = backoff_s
        self.record = record
        self.stopping = threading.Event()
        self._shared_session = session
        self._workers = workers
        self._local = threading.local()
        self._own_sessions: list[requests.Session] = []
        self._lock = threading.Lock()  # guards the session list, the name choice and the counters
        self._network_failures_in_a_row = 0
        self._decode_slots = threading.BoundedSemaphore(os.cpu_count() or 2)

    # Sessions: one per thread unless the caller gave one (its pool is the caller's business; a
    # guard then watches its answers from the headers on, and the wait for them by the read timeout).
    def session(self) -> requests.Session:
        if self._shared_session is not None:
            return self._shared_session
        s = getattr(self._local, "session", None)
        if s is None:
            s = guarded_session(pool_maxsize=self._workers)
            self._local.session = s
            with self._lock:
                self._own_sessions.append(s)
        return s

    def close(self) -> None:
        for s in self._own_sessions:
            s.close()

    def fetch(self, item: DownloadItem) -> str:
        """Download one item to its final name; return that name. Raises _Failure or _Stopped."""
        if self.stopping.is_set():
            raise _Stopped()
        if self._network_failures_in_a_row >= _NETWORK_DOWN_AFTER:
            raise _Failure(f"not tried: the network or the image server seems down ({_NETWORK_DOWN_AFTER} downloads in a row could not connect); run again later")
        try:
            name = self._fetch_with_retries(item)
        except _Failure as exc:
            with self._lock:
                self._network_failures_in_a_row = self._network_failures_in_a_row + 1 if exc.network else 0
            raise
        with self._lock:
            self._network_failures_in_a_row = 0
        return name

    def _fetch_with_retries(self, item: DownloadItem) -> str:
        attempt = 0
        deadline_at = time.monotonic() + self.deadline_s if self.deadline_s else None  # all tries together
        before = ""  # why the previous try failed
        while True:
            try:
                return self._fetch_once(item, deadline_at)
            except _Failure as exc:
                if exc.deadline:
                    if attempt:
                        exc.reason += f" (after {attempt + 1} tries; the one before: {before})"
                    raise
                if not exc.retry or attempt >= self.retries:
                    if exc.retry and attempt:
                        exc.reason += f" (after {attempt + 1} tries)"
                    raise
                delay = self._backoff(attempt, exc.wait_s)
                if delay is None:
                    exc.reason += f" (the server asked to wait {exc.wait_s:.0f} s)"
                    raise
                if deadline_at is not None and time.monotonic() + delay >= deadline_at:
                    exc.reason += f" (after {attempt + 1} tries; no time left before the file's {_seconds(self.deadline_s)} s deadline)"
                    raise
                before = exc.reason
                attempt += 1
                if self.stopping.wait(delay):  # a cancel interrupts the wait
                    raise _Stopped() from None

    def _backoff(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds before the next try: doubling with jitter, at least the server's Retry-After."""
        delay = min(_BACKOFF_CAP_S, self.backoff_s * (2**attempt)) * random.uniform(0.5, 1.5)
        if retry_after is not None:
            if retry_after > _RETRY_AFTER_CAP_S:
                return None
            delay = max(delay, retry_after)
        return delay

    def _fetch_once(self, item: DownloadItem, deadline_at: float | None = None) -> str:
        fd, tmp = _new_temp(self.partial_dir, item.filename)  # outside the target folder until whole
        try:
            with os.fdopen(fd, "wb") as out:
                content_type = self._stream(item.url, out, deadline_at)
            with self._decode_slots:  # decoding is CPU work: more at once only costs memory
                _check_image(tmp, content_type)
            final = self._place(tmp, self.target_dir / item.filename)
        finally:
            tmp.unlink(missing_ok=True)  # gone already when placed; otherwise never left behind
        if self.record:
            self.record.add(item, final.name)
        return final.name

    def _stream(self, url: str, out, deadline_at: float | None = None) -> str:
        """Write the body of `url` (following safe redirects) to `out`; return its Content-Type.

        The whole try runs under a TransferGuard: a cancel, the file's deadline or a rate under the
        minimum aborts it at once, even in the middle of a blocked read.
        """
        guard = TransferGuard(deadline_s=self.deadline_s, deadline_at=deadline_at, min_rate=self.min_rate,
                              rate_window_s=self.rate_window_s, cancel=self.stopping.is_set)
        try:
            with guard:
                response = self._get(url, guard)
                with response:
                    _check_status(response)
                    length = _content_length(response)
                    if length is not None and length > self.max_bytes:
                        raise _Failure(f"file is {_size(length)}, over the {_size(self.max_bytes)} limit")
                    received = 0
                    try:
                        for chunk in _read_body(response, guard):
                            if self.stopping.is_set():
                                raise _Stopped()
                            received += len(chunk)
                            if received > self.max_bytes:
                                raise _Failure(f"file is over the {_size(self.max_bytes)} limit")
                            _write_chunk(out, chunk)
                    except _NetworkError as exc:
                        raise _Failure(str(exc), retry=True, network=True) from None
                    if length is not None and received < length and not response.headers.get("Content-Encoding"):
                        raise _Failure(f"connection closed after {received} of {length} bytes", retry=True, network=True)
                    return response.headers.get("Content-Type", "")
        except StreamAborted as exc:
            if exc.why == "cancel":
                raise _Stopped() from None
            # Too slow: another try may find a faster path; past the deadline: no more tries.
            raise _Failure(exc.reason, retry=exc.why == "slow", network=True, deadline=exc.why == "deadline") from None

    def _get(self, url: str, guard: TransferGuard) -> requests.Response:
        """GET with redirects followed by hand, so a redirect to ftp:, file: or the like is refused."""
        try:
            return guarded_get(url, guard, session=self.session(), timeout=self.timeout)
        except StreamFailed as exc:
            raise _Failure(exc.reason) from None
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise _Failure(_network_reason(exc), retry=True, network=True) from None
        except requests.RequestException as exc:
            raise _Failure(f"bad request: {_one_line(exc)}") from None

    def _place(self, tmp: Path, wanted: Path) -> Path:
        """Move the whole file `tmp` in as `wanted`, or `wanted (2)`... if a different file took that name."""
        try:
            return self._link_into_place(tmp, wanted)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        # The partial folder is on another file system: copy the whole file beside the target, then link that.
        fd, near = _new_temp(wanted.parent, wanted.name)
        try:
            with os.fdopen(fd, "wb") as out, open(tmp, "rb") as source:
                shutil.copyfileobj(source, out, MiB)
            return self._link_into_place(near, wanted)
        finally:
            near.unlink(missing_ok=True)

    def _link_into_place(self, tmp: Path, wanted: Path) -> Path:
        """Rename `tmp` to `wanted`, or to `wanted (2)`... if a different file took that name."""
        with self._lock:  # no two threads of this run pick the same free name
            while True:
                if wanted.exists() and _same_bytes(wanted, tmp):
                    return wanted  # someone else already put these very bytes there
                final = unique_path(wanted)
                try:
                    # A hard link fails if the name exists, so even another process's file is safe.
                    os.link(tmp, final)
                except FileExistsError:
                    continue
                except OSError as exc:
                    if exc.errno in _DISK_FULL_ERRNOS or exc.errno == errno.EXDEV:
                        raise
                    os.replace(tmp, final)  # a file system without hard links (FAT, some mounts)
                    return final
                tmp.unlink()
                return final


def _new_temp(folder: Path, filename: str) -> tuple[int, Path]:
    """A new hidden `.NAME.XXXX.part` in `folder` (the partial folder, normally on the target's file
    system, so moving it in is atomic), created with the usual permissions (mkstemp's 0600 would
    stick to the image)."""
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        path = folder / f".{filename}.{secrets.token_hex(4)}.part"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path
        except FileExistsError:
            continue


def _write_chunk(out, chunk: bytes) -> None:
    """One write of a downloaded chunk (its own function so tests can make the disk "full")."""
    out.write(chunk)


def _check_status(response: requests.Response) -> None:
    code = response.status_code
    if code == 200:
        return
    if code == 429:
        raise _Failure("HTTP 429: the server is rate-limiting", retry=True, wait_s=_retry_after(response))
    if code >= 500:
        raise _Failure(f"HTTP {code}: server error", retry=True, wait_s=_retry_after(response))
    if code in (401, 403):
        raise _Failure(f"HTTP {code}: access denied (the file may need a login or be removed)")
    if code == 404:
        raise _Failure("HTTP 404: not found (the file was removed or the URL is wrong)")
    raise _Failure(f"HTTP {code}: {response.reason or 'unexpected answer'}")


def _retry_after(response: requests.Response) -> float | None:
    """The Retry-After header in seconds (it may be a number or an HTTP date), or None."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _content_length(response: requests.Response) -> int | None:
    try:
        return int(response.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _check_image(tmp: Path, content_type: str) -> None:
    """Refuse an HTML page (a login wall, an error page) or bytes that do not decode as an image."""
    with open(tmp, "rb") as f:
        head = f.read(512).lstrip().lower()
    if "text/html" in content_type.lower() or head.startswith(_HTML_STARTS):
        raise _Failure("the server sent a web page (HTML) instead of an image (an error page or login wall)")
    if not head:
        raise _Failure("the server sent an empty file")
    try:
        open_image(tmp).close()  # a full decode: truncated or corrupt data fails here
    except UnreadableImage as exc:
        raise _Failure(str(exc).replace(f"{tmp.name}: ", "")) from None  # the URL already names it


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n / 1024:.0f} KiB"


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(MiB), fb.read(MiB)
            if x != y:
                return False
            if not x:
                return True


def _network_reason(exc: BaseException) -> str:
    """A short reason for a network error; requests' own messages run to several hundred characters."""
    text = str(exc)
    if isinstance(exc, requests.ConnectTimeout):
        return "timed out connecting to the server"
    if isinstance(exc, requests.Timeout) or "timed out" in text:
        return "timed out waiting for the server"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError) or "IncompleteRead" in text:
        return "connection closed before the whole file arrived"
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)
    return f"network error: {errno_text.group(1).strip() if errno_text else _one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
