"""download_all against a local image server with the failure modes real hosts have."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from lora_gradio.engine import downloader
from lora_gradio.engine.downloader import (
    DownloadItem,
    DownloadReport,
    UserError,
    download_all,
)
from lora_gradio.engine.errors import Cancelled
from lora_gradio.engine.progress import Progress
from tests.http_fixture import LocalServer, send_bytes

FAST = {"backoff_s": 0.01, "timeout": (2, 2)}  # tests must not sit in real back-off waits


def image_bytes(i: int, fmt: str = "JPEG", size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)).save(buf, format=fmt)
    return buf.getvalue()


def noise_jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix in (".part", ".tmp")]


def all_decode(folder: Path) -> bool:
    for path in folder.iterdir():
        with Image.open(path) as img:
            img.load()
    return True


class QuietServer(LocalServer):
    """LocalServer without tracebacks for connections the client drops on purpose (cancel, caps)."""

    def __init__(self, routes):
        super().__init__(routes)
        self.server.handle_error = lambda request, address: None


def hits(server: LocalServer) -> Counter:
    return Counter(path.split("?")[0] for path, _ in server.requests)


# Routes with state -------------------------------------------------------------------------------


def fail_then_ok(data: bytes, failures: list[tuple[int, dict]], times: list[float] | None = None):
    """Answer with each (status, headers) of `failures` in turn, then serve `data`."""
    state = {"n": 0}
    ok = send_bytes(data, "image/jpeg")

    def route(handler):
        if times is not None:
            times.append(time.monotonic())
        n = state["n"]
        state["n"] += 1
        if n < len(failures):
            status, headers = failures[n]
            handler.send_response(status)
            for k, v in headers.items():
                handler.send_header(k, v)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        else:
            ok(handler)

    return route


def redirect(location: str):
    def route(handler):
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return route


def slow(seconds: float, data: bytes):
    def route(handler):
        time.sleep(seconds)
        send_bytes(data, "image/jpeg")(handler)

    return route


def no_length(data: bytes):
    """A body without Content-Length (ends when the connection closes)."""

    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.end_headers()
        handler.wfile.write(data)
        handler.close_connection = True

    return route


def in_two_halves(data: bytes, pause: float):
    def route(handler):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.wfile.flush()
        time.sleep(pause)
        handler.wfile.write(data[len(data) // 2 :])

    return route


# Tests -------------------------------------------------------------------------------------------


def test_good_files_land_and_every_failure_has_a_reason(tmp_path):
    jpeg, png = image_bytes(1), image_bytes(2, "PNG")
    big = noise_jpeg(200, 200)  # noise does not compress: well over the 10 kB cap
    retry_times: list[float] = []
    routes = {
        "/a.jpg": send_bytes(jpeg, "image/jpeg"),
        "/b.png": send_bytes(png, "image/png"),
        "/429.jpg": fail_then_ok(image_bytes(4), [(429, {"Retry-After": "1"})], retry_times),
        "/500.jpg": fail_then_ok(image_bytes(5), [(500, {}), (503, {})]),
        "/html.jpg": send_bytes(b"<!DOCTYPE html><html><body>Login</body></html>", "text/html"),
        "/html-as-jpeg.jpg": send_bytes(b"  <html><body>rate limited</body></html>", "image/jpeg"),
        "/truncated.jpg": send_bytes(jpeg, "image/jpeg", cut_at=len(jpeg) // 2),
        "/oversize.jpg": send_bytes(big, "image/jpeg"),
        "/oversize-nolength.jpg": no_length(big),
        "/ftp.jpg": redirect("ftp://example.com/x.jpg"),
        "/moved.jpg": redirect("/a.jpg"),
        "/slow.jpg": slow(1.5, jpeg),
        "/corrupt.jpg": send_bytes(jpeg[: len(jpeg) // 2], "image/jpeg"),
        "/garbage.png": send_bytes(b"\x00\x01garbage" * 50, "image/png"),
    }
    names = {route: route.strip("/") for route in routes}
    names["/moved.jpg"] = "moved.jpg"
    with QuietServer(routes) as server:
        items = [DownloadItem(server.url + route, name) for route, name in names.items()]
        items.append(DownloadItem(server.url + "/missing.jpg", "missing.jpg"))
        report = download_all(items, tmp_path / "out", retries=2, max_bytes=10_000, backoff_s=0.01, timeout=(2, 0.5))
        counts = hits(server)

    out = tmp_path / "out"
    assert sorted(report.downloaded) == ["429.jpg", "500.jpg", "a.jpg", "b.png", "moved.jpg"]
    assert sorted(p.name for p in out.iterdir()) == sorted(report.downloaded)
    assert (out / "a.jpg").read_bytes() == jpeg and (out / "b.png").read_bytes() == png
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "a.jpg").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert report.saved_as[server.url + "/moved.jpg"] == "moved.jpg"
    assert no_temp_files(out) and all_decode(out)

    failed = {url.rsplit("/", 1)[1]: reason for url, reason in report.failed}
    assert set(failed) == {"html.jpg", "html-as-jpeg.jpg", "truncated.jpg", "oversize.jpg", "oversize-nolength.jpg",
                           "ftp.jpg", "slow.jpg", "corrupt.jpg", "garbage.png", "missing.jpg"}
    assert "HTML" in failed["html.jpg"] and "HTML" in failed["html-as-jpeg.jpg"]
    assert "whole file" in failed["truncated.jpg"] or "bytes" in failed["truncated.jpg"]
    assert "limit" in failed["oversize.jpg"] and "limit" in failed["oversize-nolength.jpg"]
    assert "ftp://" in failed["ftp.jpg"]
    assert "timed out" in failed["slow.jpg"]
    assert "corrupt" in failed["corrupt.jpg"] and "not an image" in failed["garbage.png"]
    assert "404" in failed["missing.jpg"]

    # Retries only where they can help; Retry-After is honoured.
    assert counts["/429.jpg"] == 2 and retry_times[1] - retry_times[0] >= 0.9
    assert counts["/500.jpg"] == 3 and counts["/truncated.jpg"] == 3 and counts["/slow.jpg"] == 3
    assert counts["/missing.jpg"] == 1 and counts["/html.jpg"] == 1 and counts["/ftp.jpg"] == 1
    assert "5 new image(s)" in report.summary() and "10 failed" in report.summary()


@dataclass
class FakePost:
    id: int
    tags: list[str]


def test_second_run_downloads_only_what_is_missing(tmp_path):
    images = {f"/{i}.jpg": send_bytes(image_bytes(i), "image/jpeg") for i in range(12)}
    record = tmp_path / "config" / "downloads.jsonl"
    out = tmp_path / "out"
    with QuietServer(images) as server:
        # The md5 is the booru's (of the original), not of these bytes: the record maps it.
        items = [DownloadItem(f"{server.url}/{i}.jpg", f"post{i}.jpg", md5=f"{i:032x}", meta={"id": i, "post": FakePost(i, ["1girl", "smile"])}) for i in range(12)]
        first = download_all(items, out, record_path=record, **FAST)
        assert len(first.downloaded) == 12 and len(server.requests) == 12

        second = download_all(items, out, record_path=record, **FAST)
        assert second.downloaded == [] and len(second.skipped_existing) == 12
        assert len(server.requests) == 12  # nothing fetched again

        # Recorded under another name (e.g. the file got "(2)"): still found by md5.
        (out / "post3.jpg").rename(out / "kept-by-user.jpg")
        lines = record.read_text().splitlines()
        record.write_text("\n".join(lines) + "\n" + json.dumps({"md5": f"{3:032x}", "filename": "kept-by-user.jpg"}) + "\n{cut li")
        (out / "post5.jpg").unlink()  # deleted by the user: fetched again
        third = download_all(items, out, record_path=record, **FAST)
        assert third.downloaded == ["post5.jpg"] and len(server.requests) == 13
        assert third.saved_as[items[3].url] == "kept-by-user.jpg" and len(third.saved_as) == 12
    entry = json.loads(lines[0])
    assert set(entry) == {"md5", "filename", "url", "meta"} and entry["meta"]["id"] == int(entry["filename"][4:-4])
    assert entry["meta"]["post"] == {"id": entry["meta"]["id"], "tags": ["1girl", "smile"]}


def test_an_existing_different_file_is_never_overwritten(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    theirs = image_bytes(100)
    (out / "taken.jpg").write_bytes(theirs)

    def appears_meanwhile(handler):
        # Another program writes the same name while we download.
        (out / "race.jpg").write_bytes(theirs)
        send_bytes(image_bytes(7), "image/jpeg")(handler)

    routes = {"/taken.jpg": send_bytes(image_bytes(6), "image/jpeg"), "/race.jpg": appears_meanwhile,
              "/x1.jpg": send_bytes(image_bytes(8), "image/jpeg"), "/x2.jpg": send_bytes(image_bytes(9), "image/jpeg")}
    with QuietServer(routes) as server:
        items = [DownloadItem(server.url + "/taken.jpg", "taken.jpg"), DownloadItem(server.url + "/race.jpg", "race.jpg"),
                 DownloadItem(server.url + "/x1.jpg", "same.jpg"), DownloadItem(server.url + "/x2.jpg", "same.jpg")]
        report = download_all(items, out, **FAST)
    assert report.skipped_existing == ["taken.jpg"] and (out / "taken.jpg").read_bytes() == theirs
    assert (out / "race.jpg").read_bytes() == theirs and (out / "race (2).jpg").read_bytes() == image_bytes(7)
    assert {(out / "same.jpg").read_bytes(), (out / "same (2).jpg").read_bytes()} == {image_bytes(8), image_bytes(9)}
    assert sorted(report.downloaded) == ["race (2).jpg", "same (2).jpg", "same.jpg"]
    assert no_temp_files(out)


def test_unsafe_file_names_are_refused(tmp_path):
    items = [DownloadItem("http://127.0.0.1:9/x.jpg", name) for name in ("../escape.jpg", "a/b.jpg", ".hidden.jpg", "")]
    report = download_all(items, tmp_path / "out", **FAST)
    assert len(report.failed) == 4 and all("unsafe file name" in reason for _, reason in report.failed)
    assert not (tmp_path / "escape.jpg").exists()


class CancelAfter(Progress):
    def __init__(self, n: int):
        self.n = n
        self.updates: list[dict] = []

    def update(self, done, total=None, message="", **data):
        self.updates.append(dict(done=done, total=total, message=message, **data))
        self.last_done = done

    def cancelled(self) -> bool:
        return bool(self.updates) and self.updates[-1]["downloaded"] >= self.n


def test_cancel_leaves_only_complete_files(tmp_path):
    routes = {f"/{i}.jpg": in_two_halves(image_bytes(i, size=(300, 300)), 0.3) for i in range(40)}
    out = tmp_path / "out"
    progress = CancelAfter(3)
    with QuietServer(routes) as server:
        items = [DownloadItem(f"{server.url}/{i}.jpg", f"{i}.jpg", md5=f"{i:032x}") for i in range(40)]
        started = time.monotonic()
        with pytest.raises(Cancelled):
            download_all(items, out, workers=4, progress=progress, record_path=tmp_path / "rec.jsonl", **FAST)
        assert time.monotonic() - started < 5
        landed = sorted(p.name for p in out.iterdir())
        assert 3 <= len(landed) < 40 and no_temp_files(out) and all_decode(out)
        # Resuming continues where it stopped.
        report = download_all(items, out, workers=8, record_path=tmp_path / "rec.jsonl", **FAST)
    assert len(report.skipped_existing) == len(landed) and len(report.downloaded) == 40 - len(landed)
    assert progress.updates[0]["done"] == 0 and {"downloaded", "skipped", "failed"} <= set(progress.updates[-1])


def test_full_disk_stops_the_run_and_keeps_finished_files(tmp_path, monkeypatch):
    routes = {f"/{i}.jpg": send_bytes(image_bytes(i), "image/jpeg") for i in range(30)}
    real_write = downloader._write_chunk
    lock = threading.Lock()
    writes = {"n": 0}

    def write_until_full(out, chunk):
        with lock:
            writes["n"] += 1
            full = writes["n"] > 3
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(out, chunk)

    monkeypatch.setattr(downloader, "_write_chunk", write_until_full)
    out = tmp_path / "out"
    with QuietServer(routes) as server:
        items = [DownloadItem(f"{server.url}/{i}.jpg", f"{i}.jpg") for i in range(30)]
        with pytest.raises(UserError, match="the disk is full: free space and run again; finished files are kept") as raised:
            download_all(items, out, workers=2, **FAST)
    landed = sorted(p.name for p in out.iterdir())
    assert len(landed) <= 3 and no_temp_files(out) and all_decode(out)
    assert sorted(raised.value.report.downloaded) == landed  # what finished before the stop


def test_an_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    def denied(out, chunk):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(downloader, "_write_chunk", denied)
    out = tmp_path / "out"
    routes = {"/a.jpg": send_bytes(image_bytes(1), "image/jpeg")}
    with QuietServer(routes) as server, pytest.raises(UserError, match="cannot write into .*Permission denied"):
        download_all([DownloadItem(server.url + "/a.jpg", "a.jpg")], out, **FAST)
    assert list(out.iterdir()) == []


def test_network_down_fails_the_rest_quickly_and_a_rerun_continues(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: "connection refused", like a dead network
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    routes = {f"/{i}.jpg": send_bytes(image_bytes(i), "image/jpeg") for i in range(30)}
    out = tmp_path / "out"
    with QuietServer(routes) as server:
        live = [DownloadItem(f"{server.url}/{i}.jpg", f"{i}.jpg", md5=f"{i:032x}") for i in range(5)]
        gone = [DownloadItem(f"{dead}/{i}.jpg", f"{i}.jpg", md5=f"{i:032x}") for i in range(5, 30)]
        started = time.monotonic()
        report = download_all(live + gone, out, workers=4, retries=2, record_path=tmp_path / "rec.jsonl", **FAST)
        assert time.monotonic() - started < 10
        assert len(report.downloaded) == 5 and len(report.failed) == 25
        reasons = [reason for _, reason in report.failed]
        assert all("refused" in r or "seems down" in r for r in reasons)
        assert any("seems down" in r for r in reasons)
        assert "25 failed" in report.summary() and "Run again" in report.summary()

        back = [DownloadItem(f"{server.url}/{i}.jpg", f"{i}.jpg", md5=f"{i:032x}") for i in range(30)]
        again = download_all(back, out, record_path=tmp_path / "rec.jsonl", **FAST)
    assert len(again.skipped_existing) == 5 and len(again.downloaded) == 25 and again.failed == []


def test_empty_list_and_summary():
    report = DownloadReport()
    assert report.summary() == "Downloaded 0 new image(s)."
