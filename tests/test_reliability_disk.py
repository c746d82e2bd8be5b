"""A full (or read-only) disk anywhere: one sentence naming the disk and what was kept, never a
traceback, never a half-written file.

Most tests fill a real, tiny tmpfs (needs root, as in the dev container and on Colab); the same
cases are also simulated by making the write fail with ENOSPC, so they run everywhere.
"""

from __future__ import annotations

import errno
import os
import subprocess
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from lora_gradio.engine import fsutil, jobs
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects


def _mount_tmpfs(folder: Path, size: str, *options: str) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    opts = ",".join([f"size={size}", *options])
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB file system of its own; `fill()` takes all its free space."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if not _mount_tmpfs(folder, "512k"):
        pytest.skip("mounting a small tmpfs needs root")
    filler = folder / "filler.bin"

    def fill():
        with open(filler, "ab", buffering=0) as f:
            while True:
                try:
                    f.write(b"\0" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break

    def free():
        filler.unlink()

    try:
        yield SimpleNamespace(path=folder, fill=fill, free=free)
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _one_sentence(message: str) -> None:
    assert "\n" not in message and "Traceback" not in message and "Errno" not in message


# The shared mechanism: fsutil.atomic_path -----------------------------------------------------------


def _fail_with(monkeypatch, code):
    def fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize(("code", "words"), [(errno.ENOSPC, "is full"), (errno.EDQUOT, "quota"), (errno.EROFS, "read-only")])
def test_atomic_write_failing_for_the_disk_keeps_the_old_file(tmp_path, monkeypatch, code, words):
    target = tmp_path / "settings.toml"
    target.write_text("old = 1\n")
    _fail_with(monkeypatch, code)
    with pytest.raises(UserError) as caught:
        fsutil.atomic_write_text(target, "new = 2\n")
    message = str(caught.value)
    _one_sentence(message)
    assert words in message and str(tmp_path) in message and "unchanged" in message
    assert target.read_text() == "old = 1\n"
    assert _temp_files(tmp_path) == []


def test_atomic_write_of_a_new_file_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    _fail_with(monkeypatch, errno.ENOSPC)
    with pytest.raises(UserError, match="is full") as caught:
        fsutil.atomic_write_text(tmp_path / "new.txt", "x")
    assert "not written" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_library_errors_that_mean_a_full_disk_are_recognised(tmp_path):
    class SafetensorError(Exception):  # what safetensors' Rust code raises
        pass

    target = tmp_path / "a.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(UserError, match="is full"):
        with fsutil.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert target.read_bytes() == b"old" and _temp_files(tmp_path) == []


def test_other_errors_are_left_alone(tmp_path, monkeypatch):
    _fail_with(monkeypatch, errno.EIO)
    with pytest.raises(OSError) as caught:
        fsutil.atomic_write_text(tmp_path / "a.txt", "x")
    assert not isinstance(caught.value, UserError) and caught.value.errno == errno.EIO
    with pytest.raises(ZeroDivisionError):
        with fsutil.atomic_path(tmp_path / "b.txt"):
            1 / 0
    assert list(tmp_path.iterdir()) == []


def test_real_full_disk_atomic_write(small_disk):
    target = small_disk.path / "a.txt"
    target.write_text("old")
    small_disk.fill()
    with pytest.raises(UserError) as caught:
        fsutil.atomic_write_bytes(target, b"x" * 200_000)
    message = str(caught.value)
    _one_sentence(message)
    assert "is full" in message and str(small_disk.path) in message and "unchanged" in message
    assert target.read_text() == "old" and _temp_files(small_disk.path) == []


def test_torch_save_on_a_full_disk(small_disk):
    """torch.save says 'unexpected pos 576 vs 534' when the disk is full: that is a full disk too."""
    import torch

    target = small_disk.path / "state.pt"
    small_disk.fill()
    with pytest.raises(UserError, match="is full"):
        with fsutil.atomic_path(target) as tmp:
            torch.save({"w": torch.zeros(100_000)}, tmp)
    assert not target.exists() and _temp_files(small_disk.path) == []


# Callers: settings, captions, LoRA files, the latent cache, job events --------------------------------


def test_settings_save_on_a_full_disk(small_disk):
    project = Projects(small_disk.path / "Loras").create("demo")
    project.write_section("train", {"network_dim": 8})
    before = project.settings_file.read_bytes()
    small_disk.fill()
    with pytest.raises(UserError) as caught:
        project.write_section("train", {"network_dim": 16, "notes": "x" * 100_000})
    _one_sentence(str(caught.value))
    assert "is full" in str(caught.value) and "lora_gradio.toml" in str(caught.value)
    assert project.settings_file.read_bytes() == before
    assert _temp_files(small_disk.path) == []


def test_caption_write_on_a_full_disk(small_disk):
    from lora_gradio.engine.tags import read_tags, write_tags

    caption = small_disk.path / "img.txt"
    write_tags(caption, ["a", "b"])
    small_disk.fill()
    with pytest.raises(UserError, match="is full"):
        write_tags(caption, ["long tag " * 20_000])
    assert read_tags(caption) == ["a", "b"] and _temp_files(small_disk.path) == []


def test_caption_write_on_a_full_disk_simulated(tmp_path, monkeypatch):
    from lora_gradio.engine.tags import read_tags, write_tags

    caption = tmp_path / "img.txt"
    write_tags(caption, ["a", "b"])
    _fail_with(monkeypatch, errno.ENOSPC)
    with pytest.raises(UserError, match="is full"):
        write_tags(caption, ["c"])
    assert read_tags(caption) == ["a", "b"] and _temp_files(tmp_path) == []


def test_lora_save_on_a_full_disk(small_disk):
    import torch

    from lora_gradio.engine.train import saving

    path = small_disk.path / "char-000001.safetensors"
    saving.save_lora(path, {"lora_unet_x.lora_down.weight": torch.zeros(4, 4)})
    before = path.read_bytes()
    small_disk.fill()
    with pytest.raises(UserError) as caught:
        saving.save_lora(path, {"lora_unet_x.lora_down.weight": torch.zeros(256, 1024)})
    _one_sentence(str(caught.value))
    assert "is full" in str(caught.value) and path.name in str(caught.value)
    assert path.read_bytes() == before and _temp_files(small_disk.path) == []


class _TinyVAE:
    """Just enough of a VAE for LatentCache: an 8x downscale to 4 channels."""

    def __init__(self):
        import torch

        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)
        self.config = None

    def parameters(self):
        return self.conv.parameters()

    def encode(self, x):
        mean = self.conv(x)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=mean, std=mean.new_ones(mean.shape) * 0.1))


def _dataset(folder: Path):
    from lora_gradio.engine.train.data import DatasetFolder, collect_items
    from tests.images_factory import make_image

    for i in range(3):
        make_image(folder / f"img{i}.png", size=(64, 64), colour=(40 * i, 100, 200))
        (folder / f"img{i}.txt").write_text("tag")
    return collect_items([DatasetFolder(folder, num_repeats=1)], ".txt", 64, 64, 128, 64)


def _cache_on_failing_disk(cache_dir: Path, data_dir: Path):
    from lora_gradio.engine.train.latents import LatentCache

    dataset = _dataset(data_dir)
    cache = LatentCache(_TinyVAE(), device="cpu", cache_dir=cache_dir, batch_size=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.cache(dataset) == []  # every image kept, in memory
    assert len(cache) == 3 and cache.encoded == 3
    messages = [str(w.message) for w in caught if "latent cache" in str(w.message)]
    assert len(messages) == 1, messages  # warned once, training goes on
    return messages[0]


def test_latent_cache_on_a_full_disk_warns_once_and_keeps_going(small_disk, tmp_path):
    cache_dir = small_disk.path / "_cache" / "latents"
    cache_dir.mkdir(parents=True)
    small_disk.fill()
    message = _cache_on_failing_disk(cache_dir, tmp_path / "data")
    assert "is full" in message and "memory" in message
    assert _temp_files(small_disk.path) == []


def test_latent_cache_write_error_from_safetensors_keeps_going(tmp_path, monkeypatch):
    import safetensors.torch

    def save_file(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    message = _cache_on_failing_disk(tmp_path / "cache", tmp_path / "data")
    assert "is full" in message
    assert _temp_files(tmp_path / "cache") == []


def test_job_reports_survive_a_full_disk(small_disk):
    """Progress that cannot be written is dropped, not fatal; later lines are whole again."""
    folder = small_disk.path / "_jobs" / "20250101-000000-000-train-a1b2"
    folder.mkdir(parents=True)
    job = jobs.Job(id=folder.name, kind="train", title="T", func="x:y", kwargs={}, project={}, created="now", folder=folder, pid=0)
    progress = jobs.JobProgress(job)
    progress.event("start", pid=1)
    small_disk.fill()
    for i in range(50):
        progress.event("progress", done=i, total=100, message="x" * 200)  # must not raise
    small_disk.free()
    progress.event("progress", done=99, total=100, loss=0.1)
    progress.close()
    events, _ = jobs.read_events(job)
    assert events[0]["type"] == "start" and events[-1]["done"] == 99


def test_job_log_on_a_full_disk_does_not_raise(monkeypatch, tmp_path):
    class FullStdout:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    folder = tmp_path / "job"
    folder.mkdir()
    job = jobs.Job(id="j", kind="k", title="T", func="x:y", kwargs={}, project={}, created="now", folder=folder, pid=0)
    progress = jobs.JobProgress(job)
    monkeypatch.setattr("sys.stdout", FullStdout())
    progress.log("a line the full disk cannot take")
    progress.close()


def test_a_job_that_died_on_a_full_disk_says_so(small_disk):
    folder = small_disk.path / "_jobs" / "20250101-000000-000-train-a1b2"
    folder.mkdir(parents=True)
    job = jobs.Job(id=folder.name, kind="train", title="T", func="x:y", kwargs={}, project={}, created="now", folder=folder, pid=0)
    job.save()
    job.events_file.write_text('{"type": "start", "t": 1}\n')
    small_disk.fill()
    status = jobs.job_status(job)
    assert status.state == jobs.DIED
    assert "is full" in status.message and str(small_disk.path) in status.message


def test_starting_a_job_on_a_full_disk_leaves_no_job_behind(small_disk):
    project = Projects(small_disk.path / "Loras").create("demo")
    project.jobs_dir.mkdir(parents=True, exist_ok=True)
    small_disk.fill()
    with pytest.raises(UserError, match="is full"):
        jobs.start_job(project, "count", "tests.job_samples:count_slowly", {"n": 1})
    assert list(project.jobs_dir.iterdir()) == [] and jobs.list_jobs(project) == []
