"""Parallel, safe image downloads: the part of a scrape that touches the network and the disk.

`download_all` fetches many URLs into one folder with a thread pool (downloads wait on the
network, so threads scale), retrying what a retry can fix (429, 5xx, dropped connections,
timeouts) with exponential back-off and jitter. Each file streams into a hidden temporary file
in the target folder, is capped in size, checked to be a real image (not an HTML error page,
not truncated, not corrupt), and only then renamed into place, never over a different file.
So whatever happens (a cancel, a dead network, a full disk) the folder holds only whole images.

A JSON-lines record of finished downloads (md5 -> file name, plus the item's metadata) lets the
same scrape run again and download only what is missing.
"""

from __future__ import annotations

import dataclasses
import email.utils
import errno
import json
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
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

    def __init__(self, reason: str, retry: bool = False, wait_s: float | None = None, network: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.retry = retry
        self.wait_s = wait_s  # the server's Retry-After, if it sent one
        self.network = network  # a connection-level failure (counts towards "network down")


class _Stopped(Exception):
    """The run is stopping (cancel or full disk): abandon this file quietly."""


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
) -> DownloadReport:
    """Download `items` into `target_dir`; return what landed, what was already there, what failed.

    Raises `Cancelled` (after running downloads are aborted and their temporary files removed)
    when the user stops the run, `DiskFull` (a `UserError`) when the disk fills up, and a
    `UserError` when the folder cannot be written. Either way every finished file is kept and
    recorded (the exception's `report` attribute says what finished), so running again continues.
    `backoff_s` is the first retry's wait; each further retry doubles it (with jitter).
    """
    progress = progress or Progress()
    target_dir = Path(target_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    items = list(items)
    report = DownloadReport()
    record = _Record(Path(record_path)) if record_path else None
    todo = _plan(items, target_dir, record, report, progress)
    run = _Run(target_dir, timeout, retries, max_bytes, backoff_s, session, workers, record)
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
    return report


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
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    known[str(entry["md5"]).lower()] = str(entry["filename"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash: that file is simply fetched again
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
                 session: requests.Session | None, workers: int, record: _Record | None):
        self.target_dir = target_dir
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

    # Sessions: one per thread unless the caller gave one (its pool is the caller's business).
    def session(self) -> requests.Session:
        if self._shared_session is not None:
            return self._shared_session
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(4, self._workers), max_retries=0)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.headers["User-Agent"] = USER_AGENT
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
        while True:
            try:
                return self._fetch_once(item)
            except _Failure as exc:
                if not exc.retry or attempt >= self.retries:
                    if exc.retry and attempt:
                        exc.reason += f" (after {attempt + 1} tries)"
                    raise
                delay = self._backoff(attempt, exc.wait_s)
                if delay is None:
                    exc.reason += f" (the server asked to wait {exc.wait_s:.0f} s)"
                    raise
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

    def _fetch_once(self, item: DownloadItem) -> str:
        fd, tmp = _new_temp(self.target_dir, item.filename)
        try:
            with os.fdopen(fd, "wb") as out:
                content_type = self._stream(item.url, out)
            with self._decode_slots:  # decoding is CPU work: more at once only costs memory
                _check_image(tmp, content_type)
            final = self._place(tmp, self.target_dir / item.filename)
        finally:
            tmp.unlink(missing_ok=True)  # gone already when placed; otherwise never left behind
        if self.record:
            self.record.add(item, final.name)
        return final.name

    def _stream(self, url: str, out) -> str:
        """Write the body of `url` (following safe redirects) to `out`; return its Content-Type."""
        response = self._get(url)
        with response:
            _check_status(response)
            length = _content_length(response)
            if length is not None and length > self.max_bytes:
                raise _Failure(f"file is {_size(length)}, over the {_size(self.max_bytes)} limit")
            received = 0
            try:
                for chunk in response.iter_content(_CHUNK):
                    if self.stopping.is_set():
                        raise _Stopped()
                    received += len(chunk)
                    if received > self.max_bytes:
                        raise _Failure(f"file is over the {_size(self.max_bytes)} limit")
                    _write_chunk(out, chunk)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.Timeout) as exc:
                raise _Failure(_network_reason(exc), retry=True, network=True) from None
            if length is not None and received < length and not response.headers.get("Content-Encoding"):
                raise _Failure(f"connection closed after {received} of {length} bytes", retry=True, network=True)
            return response.headers.get("Content-Type", "")

    def _get(self, url: str) -> requests.Response:
        """GET with redirects followed by hand, so a redirect to ftp:, file: or the like is refused."""
        for _ in range(_MAX_REDIRECTS + 1):
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                raise _Failure(f"refused a non-http(s) URL: {url}")
            try:
                response = self.session().get(url, stream=True, timeout=self.timeout, allow_redirects=False)
            except requests.Timeout as exc:
                raise _Failure(_network_reason(exc), retry=True, network=True) from None
            except requests.ConnectionError as exc:
                raise _Failure(_network_reason(exc), retry=True, network=True) from None
            except requests.RequestException as exc:
                raise _Failure(f"bad request: {_one_line(exc)}") from None
            if not response.is_redirect:
                return response
            location = response.headers.get("Location", "")
            response.close()
            url = urljoin(url, location)
        raise _Failure(f"more than {_MAX_REDIRECTS} redirects")

    def _place(self, tmp: Path, wanted: Path) -> Path:
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
                    if exc.errno in _DISK_FULL_ERRNOS:
                        raise
                    os.replace(tmp, final)  # a file system without hard links (FAT, some mounts)
                    return final
                tmp.unlink()
                return final


def _new_temp(folder: Path, filename: str) -> tuple[int, Path]:
    """A new hidden `.NAME.XXXX.part` beside the final file (same file system, so the rename is
    atomic), created with the usual permissions (mkstemp's 0600 would stick to the image)."""
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
