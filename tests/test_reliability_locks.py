"""One writer at a time across processes: settings saves, the trash, and one training per project."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


SAVER = """
import sys, time
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train.config import update_settings
root, key, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
project = Projects(root).open("proj")
while time.time() < start:
    time.sleep(0.001)
for i in range(1, n + 1):
    update_settings(project, {key: i})
print("ok")
"""


def test_two_processes_saving_different_settings_lose_none(tmp_path):
    from lora_gradio.engine.train.config import load_settings

    project = Projects(tmp_path / "Loras").create("proj")
    n = 30
    start = str(time.time() + 2.0)  # both start together, after their imports
    procs = [_python(SAVER, str(project.root), key, str(n), start) for key in ("network_dim", "how_many")]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    settings = load_settings(project)
    assert (settings.network_dim, settings.how_many) == (n, n)  # each process's last save landed


SECTION_WRITER = """
import sys, time
from lora_gradio.engine.project import Projects
root, prefix, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
project = Projects(root).open("proj")
while time.time() < start:
    time.sleep(0.001)
for i in range(n):
    project.write_section(f"{prefix}{i}", {"value": i})
"""


def test_two_processes_writing_sections_lose_none(tmp_path):
    """Every section written is there at the end: no read-change-write of one process overwrote the other's."""
    project = Projects(tmp_path / "Loras").create("proj")
    n = 40
    start = str(time.time() + 2.0)
    procs = [_python(SECTION_WRITER, str(project.root), prefix, str(n), start) for prefix in ("a", "b")]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    settings = project.read_settings()
    missing = [f"{prefix}{i}" for prefix in "ab" for i in range(n) if f"{prefix}{i}" not in settings]
    assert missing == [] and "project" in settings


def test_update_settings_waits_for_another_process(tmp_path):
    """Another process holding the settings lock: a save waits for it (and then keeps the holder's change)."""
    project = Projects(tmp_path / "Loras").create("proj")
    holder = _python("""
        import sys, time
        from lora_gradio.engine.project import Projects
        from lora_gradio.engine.train.config import update_settings
        import lora_gradio.engine.train.config as cfg
        project = Projects(sys.argv[1]).open("proj")
        real = cfg.save_settings
        def slow_save(p, s):
            print("holding", flush=True)
            time.sleep(2.0)  # between reading and writing: the other save must wait
            real(p, s)
        cfg.save_settings = slow_save
        update_settings(project, {"network_dim": 7})
    """, str(project.root))
    assert holder.stdout.readline().strip() == "holding"
    from lora_gradio.engine.train.config import load_settings, update_settings

    update_settings(project, {"how_many": 3})
    holder.communicate(timeout=60)
    settings = load_settings(project)
    assert (settings.network_dim, settings.how_many) == (7, 3)


def test_trash_moves_wait_for_the_trash_lock(tmp_path):
    from lora_gradio.engine import locks, trash

    project = Projects(tmp_path / "Loras").create("proj")
    image = project.dataset_dir / "a.png"
    image.write_bytes(b"x")
    holder = _python("""
        import sys, time
        from pathlib import Path
        from lora_gradio.engine.project import Projects
        from lora_gradio.engine import trash
        project = Projects(sys.argv[1]).open("proj")
        with trash.trash_lock(project):
            print("holding", flush=True)
            time.sleep(30)
    """, str(project.root))
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(UserError, match="trash"):
            with locks.exclusive(trash.trash_lock_file(project), "the trash", wait_s=0.5):
                pass
        started = time.monotonic()
        holder.send_signal(signal.SIGKILL)  # a killed holder's lock goes with it
        holder.wait(timeout=30)
        batch = trash.move_to_trash(project, [image], "test")
        assert time.monotonic() - started < 15
        assert not image.exists() and trash.restore(project, batch.id) == [project.relative(image)]
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


# Training: one run per project ---------------------------------------------------------------------

from tests.test_train_run import make_project, tiny_model  # noqa: E402,F401  (tiny_model is a fixture)

SLOW_TRAINER = """
import sys, time
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train.loop import train_project

class Slow(Progress):
    said = False
    def update(self, done, total=None, message="", **data):
        if done > 0 and not self.said:
            print("training", flush=True)
            self.said = True
        time.sleep(0.2)
    def check_cancel(self):
        time.sleep(0.05)

project = Projects(sys.argv[1]).open("tiny_char")
train_project(project, overrides=["how_many=200"], progress=Slow())
"""


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


def test_second_training_of_a_project_is_refused_and_a_killed_one_does_not_block(tmp_path, tiny_model, capsys):
    from lora_gradio.cli import main as cli_main
    from lora_gradio.engine.train import loop

    project = make_project(tmp_path / "Loras", tiny_model)
    first = _python(SLOW_TRAINER, str(project.root))
    try:
        line = first.stdout.readline().strip()
        assert line == "training", first.stderr.read() if first.poll() is not None else line
        settings_before = project.settings_file.read_bytes()
        trash_before = _tree(project.trash_dir)
        # A second run from the command line, with a changed setting: refused before it changes anything.
        code = cli_main(["--root", str(project.root), "train", "tiny_char", "--set", "how_many=1"])
        err = capsys.readouterr().err
        assert code == 2
        assert "already training" in err and f"process {first.pid}" in err
        assert "lora-gradio jobs cancel tiny_char" in err
        assert project.settings_file.read_bytes() == settings_before
        assert _tree(project.trash_dir) == trash_before
        assert first.poll() is None  # the first run goes on
        # The engine function itself (what a background job runs) is refused the same way.
        with pytest.raises(UserError, match="already training"):
            loop.train_project(project, overrides=["how_many=1"])
        # A dry run only reads: it does not wait for the lock.
        assert loop.train_project(project, dry_run=True, overrides=["how_many=1"]).dry_run
        # kill -9: the OS drops the lock with the process, and a new run starts.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        result = loop.train_project(project, overrides=["how_many=1"])
        assert result.epochs_done == 1
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
