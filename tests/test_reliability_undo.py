"""Undo never destroys work, and caption edits are one writer at a time across processes.

Each tag edit records, per caption file, the bytes before it (the snapshot) and a hash of what it
wrote. `undo` restores only when every file is still as that edit left it (or as it was before it,
when the edit was interrupted); a file changed since (edited by hand, re-tagged, edited again) makes
it refuse with the list and change nothing. `undo(force=True)` first saves the current versions as
a new snapshot, so the forced undo can itself be undone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lora_gradio.engine import tags as T
from lora_gradio.engine.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def put(project, name, caption):
    path = project.dataset_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".png").write_bytes(b"png")
    path.with_suffix(".txt").write_text(caption)


def text(project, name):
    return (project.dataset_dir / name).read_text()


@pytest.fixture
def dataset(project):
    put(project, "a", "x, y")
    put(project, "b", "y, z")
    put(project, "sub/c", "y")
    return project


def test_undo_refuses_when_a_caption_changed_since_and_keeps_it(dataset):
    T.remove_tags(dataset, "y")
    (dataset.dataset_dir / "a.txt").write_text("x, by hand")
    with pytest.raises(UserError) as error:
        T.undo(dataset)
    message = str(error.value)
    assert "a.txt" in message and "b.txt" not in message and "--force" in message
    # Nothing was restored: the hand edit and the tool's other edits stay, the snapshot too.
    assert (text(dataset, "a.txt"), text(dataset, "b.txt"), text(dataset, "sub/c.txt")) == ("x, by hand", "z", "")
    assert [s.operation for s in T.list_undo(dataset)] == ["remove y"]


def test_forced_undo_saves_the_current_versions_first(dataset):
    T.remove_tags(dataset, "y")
    (dataset.dataset_dir / "a.txt").write_text("x, by hand")
    report = T.undo(dataset, force=True)
    assert report.restored and sorted(report.changed) == ["a.txt", "b.txt", "sub/c.txt"]
    assert (text(dataset, "a.txt"), text(dataset, "b.txt"), text(dataset, "sub/c.txt")) == ("x, y", "y, z", "y")
    assert [s.operation for s in T.list_undo(dataset)] == ["before undo of 'remove y'"]
    T.undo(dataset)  # the forced undo is itself undone: the hand edit and the tool's edit are back
    assert (text(dataset, "a.txt"), text(dataset, "b.txt"), text(dataset, "sub/c.txt")) == ("x, by hand", "z", "")
    assert T.list_undo(dataset) == []


def test_undo_notices_a_caption_written_after_the_editor(project):
    put(project, "a", "x")
    (project.dataset_dir / "a.txt").unlink()
    T.set_image_caption(project, "a.png", "new")  # made the caption: its undo removes it
    (project.dataset_dir / "a.txt").write_text("new, more by hand")
    with pytest.raises(UserError, match="a.txt"):
        T.undo(project)
    assert text(project, "a.txt") == "new, more by hand"
    T.set_image_caption(project, "a.png", "again")
    T.undo(project)  # undoes the editor's last save: back to the hand edit, which it had saved
    assert text(project, "a.txt") == "new, more by hand"


def test_undo_notices_a_removed_caption(dataset):
    T.curate(dataset, activation="act")
    (dataset.dataset_dir / "b.txt").unlink()
    with pytest.raises(UserError, match="b.txt"):
        T.undo(dataset)
    assert not (dataset.dataset_dir / "b.txt").exists()


def test_stacked_undos_still_go_back_one_by_one(dataset):
    T.remove_tags(dataset, "y")
    T.curate(dataset, activation="act", sort=True)
    T.set_image_caption(dataset, "a.png", "act, mine")
    for _ in range(3):
        T.undo(dataset)
    assert (text(dataset, "a.txt"), text(dataset, "b.txt"), text(dataset, "sub/c.txt")) == ("x, y", "y, z", "y")


def test_undo_of_an_interrupted_edit(dataset, monkeypatch):
    real = T.atomic_write_bytes
    calls = []

    def fail_on_second_caption(path, data):
        if Path(path).suffix == ".txt" and "_tags_undo" not in str(path):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(T, "atomic_write_bytes", fail_on_second_caption)
    with pytest.raises(OSError):
        T.remove_tags(dataset, "y")
    monkeypatch.setattr(T, "atomic_write_bytes", real)
    T.undo(dataset)  # files are either as before or as the edit left them: nothing to protect
    assert (text(dataset, "a.txt"), text(dataset, "b.txt"), text(dataset, "sub/c.txt")) == ("x, y", "y, z", "y")


def test_cli_undo_refuses_and_says_how(tmp_path, capsys):
    from lora_gradio.cli import main as cli_main
    from lora_gradio.engine.project import Projects

    project = Projects(tmp_path).create("p")
    put(project, "a", "1girl, smile")
    assert cli_main(["--root", str(tmp_path), "tags", "p", "--remove", "smile"]) == 0
    (project.dataset_dir / "a.txt").write_text("1girl, by hand")
    assert cli_main(["--root", str(tmp_path), "tags", "p", "--undo"]) == 2
    assert "a.txt" in capsys.readouterr().err
    assert text(project, "a.txt") == "1girl, by hand"
    assert cli_main(["--root", str(tmp_path), "tags", "p", "--undo", "--force"]) == 0
    assert "undo again" in capsys.readouterr().out and text(project, "a.txt") == "1girl, smile"
    assert cli_main(["--root", str(tmp_path), "tags", "p", "--undo"]) == 0
    assert text(project, "a.txt") == "1girl, by hand"


# One writer at a time, across processes ----------------------------------------------------------

_HOLDER = """
import sys, time
from pathlib import Path
from lora_gradio.engine.locks import exclusive
lock, ready, hold_s, released = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
with exclusive(lock, "captions"):
    ready.write_text("held")
    time.sleep(hold_s)
    released.write_text(repr(time.time()))
"""

_EDITOR = """
import sys
from lora_gradio.engine import tags as T
from lora_gradio.engine.project import Projects
project = Projects(sys.argv[1]).open(sys.argv[2])
for i in range(int(sys.argv[4])):
    T.search_replace(project, "base", f"base, {sys.argv[3]}{i}")
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, cwd=REPO)


def _wait_for(path: Path, child: subprocess.Popen, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert child.poll() is None, "the helper process died"
        assert time.time() < end, "the helper process did not start"
        time.sleep(0.02)


@pytest.mark.parametrize("action", ["edit", "caption", "undo"])
def test_caption_writes_wait_for_another_process(dataset, tmp_path, action):
    T.remove_tags(dataset, "z")  # something to undo
    lock = dataset.config_dir / ".locks" / "captions.lock"
    ready, released = tmp_path / "ready", tmp_path / "released"
    holder = _python(_HOLDER, lock, ready, 1.5, released)
    try:
        _wait_for(ready, holder)
        if action == "edit":
            T.curate(dataset, remove="x")
        elif action == "caption":
            T.set_image_caption(dataset, "a.png", "mine")
        else:
            T.undo(dataset)
        finished = time.time()
    finally:
        assert holder.wait(timeout=60) == 0
    assert released.exists() and finished >= float(released.read_text())


def test_two_processes_editing_captions_lose_nothing(project):
    put(project, "a", "base")
    put(project, "b", "base, other")
    n = 12
    editors = [_python(_EDITOR, project.root, project.name, who, n) for who in ("p", "q")]
    assert [e.wait(timeout=120) for e in editors] == [0, 0]
    for name in ("a.txt", "b.txt"):
        got = set(T.split_tags(text(project, name)))
        assert {f"{who}{i}" for who in "pq" for i in range(n)} <= got, name
    assert len(T.list_undo(project)) == 2 * n
    for _ in range(2 * n):
        T.undo(project)
    assert (text(project, "a.txt"), text(project, "b.txt")) == ("base", "base, other")


def test_write_captions_is_one_undoable_edit(dataset, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (dataset.dataset_dir / "linked").symlink_to(outside, target_is_directory=True)
    d = dataset.dataset_dir
    report = T.write_captions(dataset, "tagged", [(d / "a.txt", "x, y"), (d / "b.txt", "tagged"), (d / "new.txt", "n"), (d / "linked" / "l.txt", "no")])
    assert sorted(report.changed) == ["b.txt", "new.txt"] and "linked" in report.summary()
    assert list(outside.iterdir()) == []
    T.undo(dataset)
    assert text(dataset, "b.txt") == "y, z" and not (d / "new.txt").exists()


def test_snapshot_from_an_older_version_is_undone_only_with_force(dataset):
    import json

    T.remove_tags(dataset, "y")
    manifest_file = T.list_undo(dataset)[0].folder / T.MANIFEST
    manifest = json.loads(manifest_file.read_text())
    manifest["version"] = 1
    manifest["files"] = [{"path": f["path"], "existed": f["existed"]} for f in manifest["files"]]
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="older version"):
        T.undo(dataset)
    assert text(dataset, "a.txt") == "x"
    T.undo(dataset, force=True)
    assert (text(dataset, "a.txt"), text(dataset, "b.txt")) == ("x, y", "y, z")
    T.undo(dataset)  # the forced undo saved what it replaced
    assert (text(dataset, "a.txt"), text(dataset, "b.txt")) == ("x", "z")
