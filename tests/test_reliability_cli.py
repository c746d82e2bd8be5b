"""Messages and exit codes that tell the truth, and runs that look before they change anything.

- Every `command` a message or help text tells the user to run parses with the real command line parser.
- Out-of-range values get their range (ports, counts), not a traceback.
- A command whose every item failed exits non-zero.
- A bad continue_from_lora leaves the previous run's files where they were.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest

from lora_gradio.cli import build_parser, main
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects

PACKAGE = Path(__file__).resolve().parents[1] / "lora_gradio"
PREFIXES = ("lora-gradio ", "python -m lora_gradio ")
# Hints in files whose fix is pending with their owners: strict, so a fix shows up as XPASS (then drop the entry).
KNOWN_BROKEN: dict[str, str] = {}


def _commands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return set(action.choices)


def _literal_texts(tree: ast.AST):
    """(line, text) of every string literal that is not a docstring; an f-string's fields become 'X'."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.add(id(first.value))
    inside_fstring = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inside_fstring.update(id(v) for v in node.values)
            text = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in node.values)
            yield node.lineno, text
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings and id(node) not in inside_fstring:
            yield node.lineno, node.value


def command_hints() -> list[tuple[str, str]]:
    """(where, command) of each backticked command line in the package's messages and help texts."""
    commands = _commands()
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for line, text in _literal_texts(tree):
            parts = text.split("`")
            for quoted in parts[1:-1:2]:
                command = quoted.strip()
                for prefix in PREFIXES:
                    if command.startswith(prefix):
                        command = command[len(prefix):]
                words = command.split()
                if words and words[0] in commands:
                    where = f"{path.relative_to(PACKAGE).as_posix()}:{command}"
                    found.setdefault(where, f"{path.relative_to(PACKAGE).as_posix()}:{line}: `{quoted}`")
    return sorted(found.items())


HINTS = command_hints()


def test_the_hints_are_found():
    wheres = [where for where, _ in HINTS]
    assert any(w.startswith("engine/trash.py:dataset") for w in wheres)
    assert any(w.startswith("engine/train/loop.py:jobs cancel") for w in wheres)
    assert len(HINTS) >= 8


@pytest.mark.parametrize("where,shown", [
    pytest.param(where, shown, marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BROKEN[where])] if where in KNOWN_BROKEN else [], id=where)
    for where, shown in HINTS
])
def test_every_command_hint_parses(where, shown, capsys):
    command = where.split(":", 1)[1]
    try:
        build_parser().parse_args(shlex.split(command))
    except SystemExit as exc:
        assert exc.code == 0, f"{shown} does not parse: {capsys.readouterr().err.strip().splitlines()[-1]}"


def test_hints_printed_by_the_commands_are_whole_command_lines(tmp_path, capsys):
    from lora_gradio.engine import trash

    project = Projects(tmp_path / "Loras").create("p")
    with pytest.raises(UserError) as caught:
        trash.load_batch(project, "nope")
    hint = str(caught.value).split("`")[1]
    assert hint == "lora-gradio dataset trash p"
    assert main(shlex.split(hint)[1:] + ["--root", str(project.root)]) == 0
    assert "The trash is empty" in capsys.readouterr().out


# Ranges instead of tracebacks ---------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["ui", "--port", "70000"], "from 1 to 65535"),
    (["ui", "--port", "65536"], "from 1 to 65535"),
    (["ui", "--port", "http"], "from 1 to 65535"),
    (["--port", "-3"], "from 1 to 65535"),
    (["dataset", "to-jpeg", "p", "--quality", "500"], "from 1 to 100"),
    (["dataset", "shrink", "p", "--max-mb", "-1"], "above 0"),
    (["tags", "p", "--top", "-3"], "at least 1"),
])
def test_out_of_range_arguments_say_the_range(args, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GRADIO_ROOT", str(tmp_path / "Loras"))
    Projects(tmp_path / "Loras").create("p")
    monkeypatch.setattr("lora_gradio.ui.app.launch", lambda *a, **k: pytest.fail("the page must not start"))
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_port_zero_means_the_first_free_port(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("lora_gradio.ui.app.launch", lambda *a, **k: seen.update(k))
    assert main(["--root", str(tmp_path / "Loras"), "ui", "--port", "0"]) == 0
    assert seen["port"] is None


def test_dedupe_apply_in_the_background_is_refused_not_ignored(tmp_path, capsys):
    project = Projects(tmp_path / "Loras").create("p")
    assert main(["--root", str(project.root), "dedupe", "p", "--apply", "--background"]) == 2
    err = capsys.readouterr().err
    assert "--apply-saved" in err and not project.jobs_dir.exists()


# Every item failed: not exit 0 ---------------------------------------------------------------------


def _broken_images(project, n=3):
    for i in range(n):
        (project.dataset_dir / f"{i}.png").write_bytes(b"not a png at all")


def test_dataset_check_with_every_image_unreadable_exits_nonzero(tmp_path, capsys):
    project = Projects(tmp_path / "Loras").create("p")
    _broken_images(project)
    assert main(["--root", str(project.root), "dataset", "check", "p"]) == 1
    assert "every item failed" in capsys.readouterr().err


def test_dataset_check_with_some_readable_images_exits_zero(tmp_path, capsys):
    from tests.images_factory import make_image

    project = Projects(tmp_path / "Loras").create("p")
    _broken_images(project, 1)
    make_image(project.dataset_dir / "ok.png")
    assert main(["--root", str(project.root), "dataset", "check", "p"]) == 0


def test_tagging_where_every_image_failed_exits_nonzero(tmp_path, capsys, monkeypatch):
    from lora_gradio.engine import tagger

    project = Projects(tmp_path / "Loras").create("p")
    _broken_images(project)

    def all_fail(project, progress=None, **kwargs):
        return tagger.TagReport(failed=[(f"{i}.png", "cannot be read") for i in range(3)])

    monkeypatch.setattr(tagger, "tag_images", all_fail)
    assert main(["--root", str(project.root), "tag", "p"]) == 1
    assert "every item failed" in capsys.readouterr().err


def test_scrape_where_every_download_failed_exits_nonzero(tmp_path, capsys, monkeypatch):
    from lora_gradio.engine import scrape_run

    project = Projects(tmp_path / "Loras").create("p")
    monkeypatch.setattr(scrape_run, "preview_search", lambda settings, credentials: {"count": 2, "browser_url": "http://x"})
    report = scrape_run.ScrapeReport(site="gelbooru", tags="x", found=2, kept=2, failed=[("http://x/1.png", "HTTP 500"), ("http://x/2.png", "HTTP 500")])
    monkeypatch.setattr(scrape_run, "scrape_project", lambda project, settings, credentials=None, progress=None: report)
    assert main(["--root", str(project.root), "scrape", "p", "--tags", "x", "--yes"]) == 1
    assert "every item failed" in capsys.readouterr().err


# Look before you change: continue_from_lora ---------------------------------------------------------

from tests.test_train_run import make_project, tiny_model  # noqa: E402,F401  (tiny_model is a fixture)


def _previous_run(project):
    from lora_gradio.engine.train import loop

    files = [project.output_dir / "tiny_char-01.safetensors", project.output_dir / "tiny_char-02.safetensors"]
    for f in files:
        f.write_bytes(b"previous epoch")
    state = loop.state_dir(project)
    state.mkdir(parents=True, exist_ok=True)
    (state / "state.json").write_text("{}")
    (state / "state.pt").write_bytes(b"state")
    return files + [state / "state.json", state / "state.pt"]


@pytest.mark.parametrize("kind", ["missing", "corrupt", "checkpoint"])
def test_bad_continue_from_lora_leaves_the_previous_run_in_place(tmp_path, tiny_model, kind, capsys):
    import json
    import struct

    from lora_gradio.engine.train import loop

    project = make_project(tmp_path / "Loras", tiny_model)
    before = {p: p.read_bytes() for p in _previous_run(project)}
    settings_before = project.settings_file.read_bytes()
    lora = tmp_path / "other.safetensors"
    if kind == "corrupt":
        lora.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    elif kind == "checkpoint":
        header = json.dumps({"model.diffusion_model.out.2.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        lora.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * 4)
    for dry_run in (True, False):  # the dry run finds what the run finds
        with pytest.raises(UserError, match="continue_from_lora"):
            loop.train_project(project, dry_run=dry_run, overrides=[f"continue_from_lora={lora}"])
    assert main(["--root", str(project.root), "train", "tiny_char", "--set", f"continue_from_lora={lora}"]) == 2
    assert "continue_from_lora" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before
    assert not project.trash_dir.exists() or not any(project.trash_dir.iterdir())
    assert project.settings_file.read_bytes() == settings_before
