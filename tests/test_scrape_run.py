"""The whole scrape step against the local booru: search, list, download, records, captions, re-run, CLI."""

from __future__ import annotations

import json

import pytest

from lora_gradio.cli import main as cli_main
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.scrape_run import caption_from_tags, scrape_project
from tests.booru_server import GELBOORU_API_KEY, GELBOORU_USER_ID, BooruServer


@pytest.fixture
def booru():
    with BooruServer(n_posts=60) as server:
        yield server


@pytest.fixture(autouse=True)
def private_config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GRADIO_CONFIG_HOME", str(tmp_path / "config"))


def gelbooru_settings(server, **extra):
    return {"site": "gelbooru", "tags": "fake_tag", "limit": 20, "base_url": server.gelbooru_url, **extra}


CREDS = {"api_key": GELBOORU_API_KEY, "user_id": GELBOORU_USER_ID}


def test_scrape_downloads_records_and_captions(project, booru):
    report = scrape_project(project, gelbooru_settings(booru, write_tags=True), CREDS)
    images = sorted(p for p in project.dataset_dir.iterdir() if p.suffix in (".png", ".jpg", ".jpeg"))
    assert report.downloaded == len(images) == report.kept == 20
    records = [json.loads(line) for line in (project.config_dir / "_scrape" / "posts.jsonl").read_text().splitlines()]
    assert {r["file"] for r in records} == {p.name for p in images}
    assert all(r["id"] and r["tags"] and r["post_url"] for r in records)
    assert (project.config_dir / "_scrape" / "urls-gelbooru.txt").read_text().count("\n") == 20
    caption = images[0].with_suffix(".txt").read_text()
    assert "fake tag" in caption and "_" not in caption.replace("^_^", "")
    assert report.captions_written == 20
    # Run again: nothing new is fetched, captions are not rewritten.
    before = sum(booru.file_requests.values())
    images[0].with_suffix(".txt").write_text("my own caption")
    again = scrape_project(project, gelbooru_settings(booru, write_tags=True), CREDS)
    assert again.downloaded == 0 and again.already_had == 20
    assert sum(booru.file_requests.values()) == before
    assert images[0].with_suffix(".txt").read_text() == "my own caption"


def test_401_explains_the_gelbooru_keys(project, booru):
    with pytest.raises(UserError, match="API key and user id"):
        scrape_project(project, gelbooru_settings(booru))
    assert not any(project.dataset_dir.iterdir())


def test_no_results(project, booru):
    with pytest.raises(UserError, match="No images found"):
        scrape_project(project, {"site": "safebooru", "tags": "nothing_here", "base_url": booru.safebooru_url})


def test_caption_from_tags_keeps_kaomoji():
    assert caption_from_tags(["long_hair", "^_^", "blue_eyes"]) == "long hair, ^_^, blue eyes"


def test_cli_scrape_with_yes_and_remembered_keys(tmp_path, booru, capsys):
    root = str(tmp_path / "Loras")
    cli_main(["--root", root, "project", "create", "p"])
    code = cli_main(["--root", root, "scrape", "p", "--tags", "fake_tag", "--limit", "5", "--base-url", booru.gelbooru_url,
                     "--api-key", GELBOORU_API_KEY, "--user-id", GELBOORU_USER_ID, "--remember", "--yes"])
    out, err = capsys.readouterr()
    assert code == 0 and "5 downloaded" in out and "posts for 'fake_tag'" in err
    assert GELBOORU_API_KEY not in out + err and GELBOORU_USER_ID not in out + err  # secrets are never printed
    creds = tmp_path / "config" / "lora_gradio" / "credentials.toml"
    assert creds.stat().st_mode & 0o777 == 0o600
    # The remembered key works for a background job, whose files never hold it.
    code = cli_main(["--root", root, "scrape", "p", "--limit", "8", "--yes", "--background"])
    job_id = capsys.readouterr().out.strip()
    from lora_gradio.engine import jobs
    from lora_gradio.engine.project import Projects

    project = Projects(root).open("p")
    status = jobs.wait_job(jobs.get_job(project, job_id), timeout_s=60)
    assert status.state == jobs.DONE, jobs.read_log(jobs.get_job(project, job_id))
    job_files = "".join(p.read_text(errors="replace") for p in (project.jobs_dir / job_id).iterdir())
    assert GELBOORU_API_KEY not in job_files


def test_cli_refuses_to_ask_without_a_terminal(tmp_path, booru, capsys, monkeypatch):
    import io

    root = str(tmp_path / "Loras")
    cli_main(["--root", root, "project", "create", "p"])
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code = cli_main(["--root", root, "scrape", "p", "--site", "safebooru", "--tags", "fake_tag", "--base-url", booru.safebooru_url])
    assert code == 2 and "--yes" in capsys.readouterr().err
