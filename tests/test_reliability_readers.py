"""Readers of files the tool or a person wrote tolerate what disks and people leave behind.

A power loss leaves NUL padding or a torn last line; editors save with a BOM or as UTF-16; a
path may be a folder. Every reader says what is wrong with which file and what to do, and the
page (the Train tab's refresh, the jobs panel) keeps working around it.
"""

from __future__ import annotations

import json

import pytest

from lora_gradio import cli
from lora_gradio.engine import jobs
from lora_gradio.engine.errors import UserError

GOOD_TOML = '[train]\nnetwork_dim = 16\nunet_lr = 0.0005\n'


def _settings_bytes_cases():
    return {
        "utf16": (GOOD_TOML.encode("utf-16"), "UTF-16"),
        "utf16-no-bom": (GOOD_TOML.encode("utf-16-le"), "UTF-16"),
        "binary": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "not a text file"),
        "nul-padded": (GOOD_TOML.encode() + b"\x00" * 512, "NUL"),
        "latin1": ("[train]\nnotes = 'caf\xe9'\n".encode("latin-1"), "UTF-8"),
    }


# Settings (lora_gradio.toml) -------------------------------------------------------------------


def test_settings_with_a_bom_are_read(project):
    project.settings_file.write_bytes(b"\xef\xbb\xbf" + GOOD_TOML.encode())
    assert project.read_section("train") == {"network_dim": 16, "unet_lr": 0.0005}


def test_settings_error_line_numbers_ignore_the_bom(project):
    project.settings_file.write_bytes(b"\xef\xbb\xbf" + b"[train]\nnetwork_dim = 16\nunet_lr = = 1\n")
    with pytest.raises(UserError, match=r"not valid TOML.*line 3") as caught:
        project.read_settings()
    assert str(project.settings_file) in str(caught.value)


@pytest.mark.parametrize("case", sorted(_settings_bytes_cases()))
def test_unreadable_settings_say_which_file_and_what_to_do(project, case):
    data, fragment = _settings_bytes_cases()[case]
    project.settings_file.write_bytes(data)
    with pytest.raises(UserError) as caught:
        project.read_settings()
    message = str(caught.value)
    assert str(project.settings_file) in message
    assert fragment in message
    assert "UTF-8" in message  # the fix: save it as UTF-8 text
    assert "\n" not in message


def test_settings_path_that_is_a_folder(project):
    project.settings_file.unlink()
    project.settings_file.mkdir()
    with pytest.raises(UserError, match="is a folder") as caught:
        project.read_settings()
    assert str(project.settings_file) in str(caught.value)


def test_train_settings_load_through_the_same_reader(project):
    from lora_gradio.engine.train.config import load_settings

    project.settings_file.write_bytes(GOOD_TOML.encode("utf-16"))
    with pytest.raises(UserError, match="UTF-16"):
        load_settings(project)


# train --config FILE.toml ----------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(_settings_bytes_cases()))
def test_train_config_file_problems_are_one_clear_error(project, tmp_path, case):
    from lora_gradio.engine.train.loop import prepare_settings

    data, fragment = _settings_bytes_cases()[case]
    path = tmp_path / "mine.toml"
    path.write_bytes(data)
    with pytest.raises(UserError) as caught:
        prepare_settings(project, config_file=str(path))
    assert str(path) in str(caught.value) and fragment in str(caught.value)


def test_train_config_with_a_bom_is_read(project, tmp_path):
    from lora_gradio.engine.train.loop import prepare_settings

    path = tmp_path / "mine.toml"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_TOML.encode())
    assert prepare_settings(project, config_file=str(path)).network_dim == 16


def test_train_config_that_is_a_folder(project, tmp_path):
    from lora_gradio.engine.train.loop import prepare_settings

    with pytest.raises(UserError, match="is a folder"):
        prepare_settings(project, config_file=str(tmp_path))


def test_cli_train_config_utf16_is_one_line(projects, project, tmp_path, capsys):
    path = tmp_path / "mine.toml"
    path.write_bytes(GOOD_TOML.encode("utf-16"))
    code = cli.main(["--root", str(projects.root), "train", project.name, "--config", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and str(path) in err and "UTF-16" in err
    assert "Traceback" not in err


# job.json and events.jsonl ------------------------------------------------------------------------


def _ended_job(project, kind="train", kwargs=None, suffix="a1b2"):
    folder = project.jobs_dir / f"20250101-000000-000-{kind}-{suffix}"
    folder.mkdir(parents=True)
    job = jobs.Job(id=folder.name, kind=kind, title="Train LoRA", func="tests.job_samples:count_slowly", kwargs=kwargs or {},
                   project={"root": str(project.root), "name": project.name, "layout": project.layout.value},
                   created="2025-01-01 00:00:00", folder=folder, pid=0)  # pid 0: no process, the job ended
    job.save()
    return job


def _event(kind, **fields):
    return (json.dumps({"type": kind, "t": 1.0, **fields}) + "\n").encode()


def test_truncated_job_json_is_a_clear_error_and_is_skipped_in_lists(project, projects, capsys):
    good = _ended_job(project, kind="count", suffix="0001")
    bad = _ended_job(project, kind="count", suffix="0002")
    text = (bad.folder / "job.json").read_bytes()
    (bad.folder / "job.json").write_bytes(text[: len(text) // 2])
    with pytest.raises(UserError) as caught:
        jobs.get_job(project, bad.id)
    assert str(bad.folder / "job.json") in str(caught.value)
    assert [j.id for j in jobs.list_jobs(project)] == [good.id]

    for action in ("show", "cancel"):
        code = cli.main(["--root", str(projects.root), "jobs", action, project.name, bad.id])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("error: ") and "job.json" in err and "Traceback" not in err


def test_nul_padded_job_json_is_a_clear_error(project):
    job = _ended_job(project, kind="count")
    (job.folder / "job.json").write_bytes(b"\x00" * 300)
    with pytest.raises(UserError, match="job.json"):
        jobs.get_job(project, job.id)


def test_job_json_of_the_wrong_shape_is_a_clear_error(project):
    job = _ended_job(project, kind="count")
    (job.folder / "job.json").write_text('{"id": "x"}')
    with pytest.raises(UserError, match="job.json"):
        jobs.get_job(project, job.id)
    (job.folder / "job.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="job.json"):
        jobs.get_job(project, job.id)


POWER_LOSS_EVENTS = (
    _event("start", pid=1, title="Train LoRA")
    + _event("progress", done=1, total=10, loss=0.5, epoch=1, lr_unet=1e-4)
    + _event("progress", done=2, total=10, loss=0.4, epoch=1, lr_unet=1e-4)
    + b'{"type": "progress", "done": 3, "tot'  # torn where the power went
    + b"\x00" * 4096  # the file system's padding
    + b"\x00\x00" + _event("progress", done=4, total=10, loss=0.3, epoch=1, lr_unet=1e-4)
    + b"\xff\xfe not json at all\n"
    + _event("progress", done=5, total=10, loss="oops", epoch=1)
    + _event("progress", done=6, total=10, loss=0.2, epoch=2, lr_unet=1e-4)
    + b"\x00" * 1000
)


def test_events_with_nul_padding_and_torn_lines_are_read_around(project):
    job = _ended_job(project)
    job.events_file.write_bytes(POWER_LOSS_EVENTS)
    events, offset = jobs.read_events(job)
    assert [e.get("done") for e in events if e["type"] == "progress"] == [1, 2, 4, 5, 6]
    assert jobs.read_events(job, offset) == ([], offset)
    status = jobs.job_status(job)
    assert status.state == jobs.DIED and status.done == 6


def test_train_view_survives_a_power_loss_and_offers_resume(project):
    from lora_gradio.engine.train import loop
    from lora_gradio.engine.train.monitor import run_view

    job = _ended_job(project)
    job.events_file.write_bytes(POWER_LOSS_EVENTS)
    state = loop.state_dir(project)
    state.mkdir(parents=True)
    (state / "state.pt").write_bytes(b"weights")
    (state / "state.json").write_text(json.dumps({"settings": {}, "epoch": 1, "batch_index": 2, "global_step": 6, "started_at": 1.0, "saved_at": 2.0}))
    for _ in range(2):  # the page polls: the second read continues from the first
        view = run_view(project, project.base)
        assert view.steps == [1, 2, 4, 6]
        assert view.loss == [0.5, 0.4, 0.3, 0.2]
        assert view.resumable == {"epoch": 1, "global_step": 6, "saved_at": 2.0}
        assert view.problems == []


def test_train_view_events_appended_after_a_torn_line(project):
    """A torn line in the middle, then more lines: each poll reads what was appended."""
    from lora_gradio.engine.train.monitor import run_view

    job = _ended_job(project)
    job.events_file.write_bytes(_event("start", pid=1) + _event("progress", done=1, total=3, loss=0.5) + b'{"type": "prog')
    assert run_view(project, project.base).steps == [1]
    with open(job.events_file, "ab") as f:
        f.write(b"\x00" * 10 + b"\n" + _event("progress", done=2, total=3, loss=0.4))
    assert run_view(project, project.base).steps == [1, 2]


# The resumable state (state.json) ---------------------------------------------------------------


@pytest.mark.parametrize("content", [b'{"settings": {}, "epoch": 1, "glo', b"\x00" * 64, b"[1, 2]", b'{"epoch": 1}', "folder"])
def test_damaged_resume_state_is_reported_not_fatal(project, content):
    from lora_gradio.engine.train import loop
    from lora_gradio.engine.train.monitor import run_view

    _ended_job(project).events_file.write_bytes(_event("start", pid=1) + _event("progress", done=1, total=3, loss=0.5))
    state = loop.state_dir(project)
    state.mkdir(parents=True)
    (state / "state.pt").write_bytes(b"weights")
    if content == "folder":
        (state / "state.json").mkdir()
    else:
        (state / "state.json").write_bytes(content)

    view = run_view(project, project.base)  # the page keeps working
    assert view.steps == [1] and view.resumable is None
    assert len(view.problems) == 1 and "state.json" in view.problems[0] and "new run" in view.problems[0]

    with pytest.raises(UserError, match="state.json") as caught:  # `train --resume` says why it cannot
        loop.prepare_settings(project, resume=True)
    assert "new run" in str(caught.value)


def test_resume_state_without_its_weights_is_reported(project):
    from lora_gradio.engine.train import loop

    state = loop.state_dir(project)
    state.mkdir(parents=True)
    (state / "state.json").write_text(json.dumps({"settings": {}, "epoch": 1, "batch_index": 0, "global_step": 3}))
    with pytest.raises(UserError, match="state.pt"):
        loop.read_state_info(project)


def test_no_resume_state_is_none(project):
    from lora_gradio.engine.train import loop

    assert loop.read_state_info(project) is None


# The shared helpers ------------------------------------------------------------------------------


def test_read_text_helper(tmp_path):
    from lora_gradio.engine import fsutil

    path = tmp_path / "a.toml"
    path.write_bytes(b"\xef\xbb\xbfname = 1\r\n")
    assert fsutil.read_user_text(path, "The test file") == "name = 1\r\n"
    with pytest.raises(FileNotFoundError):
        fsutil.read_user_text(tmp_path / "missing.toml", "The test file")
    path.write_bytes("x = 1".encode("utf-32"))
    with pytest.raises(UserError, match="UTF-32"):
        fsutil.read_user_text(path, "The test file")


def test_json_lines_helper():
    from lora_gradio.engine import fsutil

    data = b'{"a": 1}\n\x00\x00{"a": 2}\r\n[3]\n{"a": \n\xff\n{"a": 4}'
    assert fsutil.parse_json_lines(data) == [{"a": 1}, {"a": 2}, {"a": 4}]


# The page keeps working around damaged files -------------------------------------------------------


def _page_handler(blocks, qualname):
    """A handler of the page by its name; a polled one is found inside compat.poll's wrapper."""
    functions = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
    found = {}
    for f in functions:
        fn = getattr(f, "fn", None)
        inner = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__ or ()))).get("fn") if fn else None
        for candidate in (fn, inner):
            if getattr(candidate, "__qualname__", "") == qualname:
                found[id(candidate)] = candidate
    assert len(found) == 1, qualname
    return next(iter(found.values()))


def test_train_tab_and_jobs_panel_refresh_around_a_power_loss(projects, project):
    from lora_gradio.engine.train import loop
    from lora_gradio.ui.page import build_page

    job = _ended_job(project)
    job.events_file.write_bytes(POWER_LOSS_EVENTS)
    other = _ended_job(project, kind="count", suffix="ffff")  # the newest job: its job.json is cut short
    (other.folder / "job.json").write_bytes(b'{"id": "2025')
    state = loop.state_dir(project)
    state.mkdir(parents=True)
    (state / "state.json").write_bytes(b"\x00" * 100)

    blocks = build_page(projects.root)
    refresh = _page_handler(blocks, "build_run_view.<locals>.refresh")
    outputs = refresh(project.name, {})
    status, loss_chart, resume_text = outputs[0], outputs[1], outputs[-1]
    assert "data-state='died'" in status and "data-points='4'" in loss_chart
    assert "state.json" in resume_text and "new run" in resume_text

    panel = _page_handler(blocks, "build_jobs_panel.<locals>.refresh")
    html, log, _ = panel(project.name)
    assert job.id in html


# Readers in the other stages: presets, kohya's files, credentials, trash, dedupe, scrape records ----------------

OTHER_GOOD_TOML = '[train]\nnetwork_dim = 16\nunet_lr = 0.0005\n'


def test_preset_with_a_bom_or_in_utf16(projects):
    from lora_gradio.engine.train import presets

    path = projects.root / "_presets" / "mine.toml"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xef\xbb\xbf" + OTHER_GOOD_TOML.encode())
    assert presets.load_preset(projects.root, "mine").network_dim == 16
    path.write_bytes(OTHER_GOOD_TOML.encode("utf-16"))
    with pytest.raises(UserError, match="UTF-16") as caught:
        presets.load_preset(projects.root, "mine")
    assert str(path) in str(caught.value)


def test_kohya_config_with_a_bom_is_imported(project, tmp_path):
    from lora_gradio.engine.train.loop import prepare_settings

    path = tmp_path / "training_config.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[network_arguments]\nnetwork_dim = 24\nnetwork_module = "networks.lora"\n')
    assert prepare_settings(project, config_file=str(path)).network_dim == 24


def test_damaged_trash_record_is_skipped_in_the_list_and_named_by_id(project):
    from lora_gradio.engine import trash

    folder = project.trash_dir / "20250101-000000-000-x-abcd"
    folder.mkdir(parents=True)
    (folder / trash.MANIFEST).write_bytes(b'{"id": "2025' + b"\x00" * 50)
    assert trash.list_trash(project) == []
    with pytest.raises(UserError, match="manifest.json"):
        trash.load_batch(project, folder.name)


def test_credentials_with_a_bom(tmp_path, monkeypatch):
    from lora_gradio.engine import scrape

    path = tmp_path / "credentials.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[gelbooru]\napi_key = "k"\n')
    monkeypatch.setattr(scrape, "credentials_path", lambda: path)
    assert scrape.load_credentials("gelbooru") == {"api_key": "k"}
