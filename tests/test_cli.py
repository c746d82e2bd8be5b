import subprocess
import sys
from pathlib import Path

import pytest

from lora_gradio.cli import main
from lora_gradio.engine.project import Projects
from tests.images_factory import make_image


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "lora_gradio", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("ui", "project", "dataset", "jobs"):
        assert command in out


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "lora-gradio"
    assert script.exists(), "pip install -e . should create the lora-gradio command"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("lora_gradio ")


def test_project_create_list_show(capsys, tmp_path):
    root = str(tmp_path / "Loras")
    code, out, _ = run(capsys, "--root", root, "project", "create", "mychar")
    assert code == 0 and "Created project 'mychar'" in out and str(tmp_path / "Loras" / "mychar" / "dataset") in out
    code, out, _ = run(capsys, "project", "list", "--root", root)  # --root also after the command
    assert out.split() == ["mychar"]
    code, out, _ = run(capsys, "--root", root, "project", "show", "mychar")
    assert code == 0 and "settings" in out


def test_env_root_and_category_layout(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GRADIO_ROOT", str(tmp_path / "lora_training"))
    code, _, _ = run(capsys, "--layout", "category", "project", "create", "x")
    assert code == 0 and (tmp_path / "lora_training" / "datasets" / "x").is_dir()


@pytest.mark.parametrize("name", ["../up", "my char", "/abs", 'q"uote'])
def test_bad_name_exits_nonzero_with_one_line(capsys, tmp_path, name):
    code, out, err = run(capsys, "--root", str(tmp_path), "project", "create", name)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_project_again(capsys, tmp_path):
    run(capsys, "--root", str(tmp_path), "project", "create", "a")
    code, _, err = run(capsys, "--root", str(tmp_path), "project", "create", "a")
    assert code == 2 and "already exists" in err


def test_unknown_project(capsys, tmp_path):
    code, _, err = run(capsys, "--root", str(tmp_path), "dataset", "count", "nope")
    assert code == 2 and "No project 'nope'" in err


def test_dataset_count_convert_trash_restore(capsys, tmp_path):
    root = tmp_path / "Loras"
    project = Projects(root).create("p")
    make_image(project.dataset_dir / "a.png")
    make_image(project.dataset_dir / "a.jpg")
    make_image(project.dataset_dir / "b.png")
    (project.dataset_dir / "b.txt").write_text("tag")
    code, out, err = run(capsys, "--root", str(root), "dataset", "count", "p")
    assert code == 0 and "a.jpg and a.png share a name" in err
    assert out.splitlines()[1].split()[:3] == ["p", "3", "1"]
    code, out, _ = run(capsys, "--root", str(root), "dataset", "to-jpeg", "p")
    assert code == 0 and "Converted PNG to JPEG: 1 file(s)" in out and "skipped 1" in out
    assert (project.dataset_dir / "b.jpg").exists() and not (project.dataset_dir / "b.png").exists()
    code, out, _ = run(capsys, "--root", str(root), "dataset", "trash", "p")
    batch = out.split()[0]
    code, out, _ = run(capsys, "--root", str(root), "dataset", "restore", "p", batch)
    assert code == 0 and "Restored 1 file(s)" in out and (project.dataset_dir / "b.png").exists()


def test_background_job_and_jobs_commands(capsys, tmp_path):
    root = tmp_path / "Loras"
    project = Projects(root).create("p")
    make_image(project.dataset_dir / "ok.png")
    (project.dataset_dir / "bad.jpg").write_text("no")
    code, out, _ = run(capsys, "--root", str(root), "dataset", "check", "p", "--background")
    job_id = out.strip()
    assert code == 0 and job_id
    code, out, _ = run(capsys, "--root", str(root), "jobs", "show", "p", job_id, "--follow")
    assert code == 0 and "[done]" in out
    code, out, _ = run(capsys, "--root", str(root), "jobs", "show", "p")
    assert "bad.jpg" in out  # the log names the unreadable file
    code, out, _ = run(capsys, "--root", str(root), "jobs", "list", "p")
    assert job_id in out


def test_dataset_add_missing_file(capsys, tmp_path):
    Projects(tmp_path).create("p")
    code, _, err = run(capsys, "--root", str(tmp_path), "dataset", "add", "p", str(tmp_path / "nothing.zip"))
    assert code == 2 and "is not a file" in err


def test_bad_auth_and_busy_port_are_refused_before_starting(capsys, tmp_path):
    import socket

    code, _, err = run(capsys, "--root", str(tmp_path), "--auth", "nopassword")
    assert code == 2 and "USER:PASS" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(capsys, "--root", str(tmp_path), "--port", str(port))
    assert code == 2 and f"Port {port} is already in use" in err


def test_unwritable_root_for_the_page(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run(capsys, "ui", "--root", str(blocker / "sub"), "--port", "0")
    assert code == 2 and "not writable" in err
