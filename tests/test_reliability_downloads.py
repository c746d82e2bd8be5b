"""Downloads have deadlines, not just timeouts: a server that trickles bytes is cut off, cancel and
Ctrl-C take effect within a second or two, and partial files never sit in the dataset folder.

Every slow server here is local (127.0.0.1) and bounded: it sends at most a few bytes a second for a
few seconds, then closes, so a test of today's behaviour fails on time instead of hanging.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from lora_gradio.engine.downloader import DownloadItem, download_all
from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.progress import Progress
from tests.http_fixture import LocalServer, send_bytes, trickle

REPO = Path(__file__).resolve().parents[1]


def jpeg(i: int = 1, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, 40)).save(buf, format="JPEG")
    return buf.getvalue()


class QuietServer(LocalServer):
    def __init__(self, routes):
        super().__init__(routes)
        self.server.handle_error = lambda request, address: None


class CancelLater(Progress):
    """Asks to stop `after_s` seconds after the first progress update."""

    def __init__(self, after_s: float):
        self.after_s = after_s
        self.start: "float | None" = None

    def update(self, done, total=None, message="", **data):
        if self.start is None:
            self.start = time.monotonic()

    def cancelled(self) -> bool:
        return self.start is not None and time.monotonic() - self.start >= self.after_s


def wait_for(condition, timeout: float = 20.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step)
    return False


def partial_names(folder: Path) -> list[str]:
    """Files in `folder` that are not whole images: hidden temporaries and `.part` files."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and (p.name.startswith(".") or p.name.endswith((".part", ".tmp"))))


# The image downloader ----------------------------------------------------------------------------


def test_cancel_stops_a_trickling_download_within_two_seconds(tmp_path):
    started: list[float] = []
    routes = {f"/{i}.jpg": trickle(jpeg(i) * 4, interval=0.2, max_s=10, started=started) for i in range(3)}
    out = tmp_path / "out"
    with QuietServer(routes) as server:
        items = [DownloadItem(f"{server.url}/{i}.jpg", f"{i}.jpg") for i in range(3)]
        progress = CancelLater(0.8)
        begun = time.monotonic()
        with pytest.raises(Cancelled):
            download_all(items, out, workers=3, progress=progress, backoff_s=0.01, timeout=(2, 2))
        took = time.monotonic() - begun
    assert len(started) == 3  # all three were trickling when the cancel came
    assert took < 0.8 + 2.0, f"cancel took {took - 0.8:.1f} s to take effect"
    assert list(out.iterdir()) == []


def test_partial_download_stays_outside_the_dataset_folder(tmp_path):
    started: list[float] = []
    routes = {"/a.jpg": trickle(jpeg(1) * 4, interval=0.1, max_s=10, started=started)}
    out, config = tmp_path / "dataset", tmp_path / "config"
    progress = CancelLater(10_000)
    errors: list[BaseException] = []
    with QuietServer(routes) as server:

        def run():
            try:
                download_all([DownloadItem(server.url + "/a.jpg", "a.jpg", md5="a" * 32)], out, progress=progress,
                             record_path=config / "downloaded.jsonl", backoff_s=0.01, timeout=(2, 2))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        try:
            assert wait_for(lambda: started and time.monotonic() - started[0] > 0.6)
            # Bytes have arrived; they are kept beside the record (the project's config), not in the dataset.
            assert partial_names(out) == [] and list(out.iterdir()) == []
            assert len(partial_names(config / "partial")) == 1
        finally:
            progress.after_s = 0  # stop it
            thread.join(timeout=15)
    assert not thread.is_alive() and isinstance(errors[0], Cancelled)
    assert list(out.iterdir()) == [] and partial_names(config) == []


def test_a_trickle_is_cut_off_by_the_minimum_rate_and_the_deadline(tmp_path):
    routes = {"/slow.jpg": trickle(jpeg(1) * 4, interval=0.2, max_s=10), "/ok.jpg": send_bytes(jpeg(2), "image/jpeg")}
    with QuietServer(routes) as server:
        items = [DownloadItem(server.url + "/slow.jpg", "slow.jpg"), DownloadItem(server.url + "/ok.jpg", "ok.jpg")]
        begun = time.monotonic()
        # 5 bytes/s is under the 100 bytes/s minimum: each try ends after the 1 s window, retries until the 3 s deadline.
        report = download_all(items, tmp_path / "a", retries=10, backoff_s=0.01, timeout=(2, 2), min_rate=100, rate_window_s=1.0, deadline_s=3.0)
        took = time.monotonic() - begun
        assert took < 4.5 and report.downloaded == ["ok.jpg"]
        (url, reason), = report.failed
        assert url.endswith("/slow.jpg") and "too slow" in reason and "deadline" in reason

        # Without a minimum rate, the deadline alone ends it.
        begun = time.monotonic()
        report = download_all(items[:1], tmp_path / "b", retries=0, timeout=(2, 2), min_rate=0, deadline_s=1.5)
        took = time.monotonic() - begun
        assert 1.3 < took < 3.0
        (url, reason), = report.failed
        assert "deadline" in reason and "1.5 s" in reason
    assert list((tmp_path / "b").iterdir()) == []


def test_a_killed_runs_partial_files_are_cleared_when_stale(tmp_path):
    partial = tmp_path / "config" / "partial"
    partial.mkdir(parents=True)
    stale, fresh = partial / ".x.jpg.0000.part", partial / ".y.jpg.1111.part"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    download_all([], tmp_path / "out", record_path=tmp_path / "config" / "downloaded.jsonl", deadline_s=600)
    assert not stale.exists() and fresh.exists()  # a live run's file (another process) is left alone


def test_a_partial_folder_on_another_file_system_still_moves_only_whole_files(tmp_path, monkeypatch):
    import errno

    from lora_gradio.engine import downloader

    real_link = os.link
    links: list[tuple[str, str]] = []

    def link(src, dst):
        links.append((Path(src).parent.name, Path(dst).parent.name))
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst)

    monkeypatch.setattr(downloader.os, "link", link)
    routes = {f"/{i}.jpg": send_bytes(jpeg(i), "image/jpeg") for i in range(3)}
    out = tmp_path / "dataset"
    with QuietServer(routes) as server:
        items = [DownloadItem(f"{server.url}/{i}.jpg", f"{i}.jpg") for i in range(3)]
        report = download_all(items, out, partial_dir=tmp_path / "elsewhere", backoff_s=0.01, timeout=(2, 2))
    assert sorted(report.downloaded) == ["0.jpg", "1.jpg", "2.jpg"] and report.failed == []
    assert all((out / f"{i}.jpg").read_bytes() == jpeg(i) for i in range(3))
    assert ("elsewhere", "dataset") in links and ("dataset", "dataset") in links  # refused, then copied whole beside it
    assert partial_names(out) == [] and not (tmp_path / "elsewhere").exists()


# The reusable streaming function (base models use it too) ---------------------------------------


def test_stream_to_file_resumes_and_is_bounded(tmp_path):
    from lora_gradio.engine.downloader import StreamFailed, stream_to_file

    data = os.urandom(200_000)
    routes = {"/m.bin": send_bytes(data, cut_at=70_000)}
    part = tmp_path / "m.bin.part"
    seen: list[tuple[int, "int | None"]] = []
    with QuietServer(routes) as server:
        with pytest.raises(StreamFailed, match="closed") as failed:
            stream_to_file(server.url + "/m.bin", part, resume=True, timeout=(2, 2))
        kept = part.stat().st_size
        assert 0 < kept <= 70_000 and failed.value.received == kept and failed.value.retry
        routes["/m.bin"] = send_bytes(data)
        result = stream_to_file(server.url + "/m.bin", part, resume=True, timeout=(2, 2), on_progress=lambda done, total: seen.append((done, total)))
        assert part.read_bytes() == data and result.resumed_from == kept and result.received == len(data)
        assert any(h.get("Range") == f"bytes={kept}-" for _, h in server.requests)
        assert seen[-1] == (len(data), len(data))

        # A trickle: the minimum rate, the deadline and a cancel each end it in time.
        routes["/t.bin"] = trickle(data[:500], interval=0.2, max_s=10)
        for options, match in (({"min_rate": 100, "rate_window_s": 1.0}, "too slow"), ({"deadline_s": 1.0, "min_rate": 0}, "deadline")):
            begun = time.monotonic()
            with pytest.raises(StreamFailed, match=match):
                stream_to_file(server.url + "/t.bin", tmp_path / "t.part", timeout=(2, 2), **options)
            assert time.monotonic() - begun < 2.5
        begun = time.monotonic()
        with pytest.raises(Cancelled):
            stream_to_file(server.url + "/t.bin", tmp_path / "t.part", timeout=(2, 2), cancel=lambda: time.monotonic() - begun > 0.5)
        assert time.monotonic() - begun < 1.5

        # The caller's check sees the answer before any byte is written (models.py: HTTP errors, HTML pages).
        def refuse(response):
            raise UserError(f"refused HTTP {response.status_code}")

        with pytest.raises(UserError, match="refused HTTP 200"):
            stream_to_file(server.url + "/m.bin", tmp_path / "c.part", check=refuse)
        assert not (tmp_path / "c.part").exists() or (tmp_path / "c.part").stat().st_size == 0


def test_the_wait_for_the_headers_is_bounded_too(tmp_path):
    from lora_gradio.engine.downloader import StreamFailed, open_url

    def mute(handler):
        time.sleep(2.5)  # connected, but no answer: only the deadline is shorter than the read timeout

    with QuietServer({"/mute": mute}) as server:
        begun = time.monotonic()
        with pytest.raises(StreamFailed, match="deadline"):
            with open_url(server.url + "/mute", timeout=(2, 5), deadline_s=0.8):
                pass
        assert time.monotonic() - begun < 1.5
        begun = time.monotonic()
        report = download_all([DownloadItem(server.url + "/mute", "m.jpg")], tmp_path / "out", timeout=(2, 5), deadline_s=0.8)
        assert time.monotonic() - begun < 1.5 and "deadline" in report.failed[0][1]


# The booru API ------------------------------------------------------------------------------------


def test_a_trickling_booru_answer_is_cancellable_and_bounded():
    from lora_gradio.engine.scrape import SafebooruClient
    from tests.booru_server import BooruServer

    with BooruServer(n_posts=30) as server:
        server.trickle_interval, server.trickle_max_s = 0.2, 8
        client = SafebooruClient(server.safebooru_url, page_delay=0, backoff=0.01)
        server.trickle_next(times=5)
        progress = CancelLater(0.5)
        progress.update(0)
        begun = time.monotonic()
        with pytest.raises(Cancelled):
            list(client.posts("fake_tag", limit=5, progress=progress))
        assert time.monotonic() - begun < 2.0

        server._state.faults.clear()
        server.trickle_next(times=2)
        client = SafebooruClient(server.safebooru_url, page_delay=0, backoff=0.01, retries=1, deadline=1.0)
        begun = time.monotonic()
        with pytest.raises(UserError, match="took longer than"):
            list(client.posts("fake_tag", limit=5))
        assert time.monotonic() - begun < 3.5


# Ctrl-C in the command line -----------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_stops_a_cli_scrape_within_two_seconds(tmp_path):
    from lora_gradio.cli import main as cli_main
    from tests.booru_server import BooruServer

    root = tmp_path / "Loras"
    assert cli_main(["--root", str(root), "project", "create", "p"]) == 0
    dataset = root / "p" / "dataset"
    env = {**os.environ, "PYTHONPATH": str(REPO), "LORA_GRADIO_CONFIG_HOME": str(tmp_path / "config")}
    with BooruServer(n_posts=12) as server:
        server.trickle_ids = {post.id for post in server.posts}
        server.trickle_interval, server.trickle_max_s = 0.2, 15
        log = open(tmp_path / "log.txt", "wb")
        child = subprocess.Popen(
            [sys.executable, "-m", "lora_gradio", "--root", str(root), "scrape", "p", "--site", "safebooru",
             "--base-url", server.safebooru_url, "--tags", "fake_tag", "--limit", "4", "--yes"],
            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            assert wait_for(lambda: sum(server.file_requests.values()) >= 2 or child.poll() is not None, timeout=60)
            assert child.poll() is None, (tmp_path / "log.txt").read_text()
            time.sleep(1.0)  # bytes are arriving now
            assert partial_names(dataset) == []  # what is still arriving is kept outside the dataset
            sent = time.monotonic()
            child.send_signal(signal.SIGINT)
            try:
                code = child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                code = None
            took = time.monotonic() - sent
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            log.close()
    output = (tmp_path / "log.txt").read_text(errors="replace")
    assert code == 130 and "Interrupted" in output, output
    assert took < 2.5, f"Ctrl-C took {took:.1f} s"
    assert partial_names(dataset) == [] and list(dataset.iterdir()) == []
    assert partial_names(root / "p" / "_scrape") == []
