"""Drive the real page in headless Chromium, under the newest Gradio and under Gradio 3.41.2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lora_gradio.engine import jobs
from lora_gradio.engine.project import Projects
from tests.appserver import CHROMIUM, CHROMIUM_ARGS, GRADIO3_PYTHON, REPO, AppServer
from tests.images_factory import make_image

pytestmark = pytest.mark.browser
ARTIFACTS = REPO / "test-artifacts"


def _pythons():
    yield pytest.param(sys.executable, id="gradio-newest")
    if GRADIO3_PYTHON.exists():
        yield pytest.param(str(GRADIO3_PYTHON), id="gradio-3.41.2", marks=pytest.mark.gradio3)
    elif os.environ.get("CI"):
        # In CI the Gradio 3.41.2 environment is part of the set-up: its absence is a failure.
        yield pytest.param(str(GRADIO3_PYTHON), id="gradio-3.41.2-missing", marks=pytest.mark.gradio3)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's chromium (the test set-up does).")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(params=list(_pythons()))
def app(request, tmp_path):
    assert Path(request.param).exists(), f"{request.param} is missing: run the test set-up from README.md"
    # The WebUI's Gradio 3 environment here has no torch: its jobs run in the main environment,
    # the way a WebUI install can keep training packages in an environment of their own.
    server = AppServer(request.param, tmp_path / "Loras", env={"LORA_GRADIO_JOB_PYTHON": sys.executable})
    server.label = request.node.callspec.id
    yield server
    log = server.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(log)


def textbox(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def job_state(page):
    return page.locator("#lg-job").get_attribute("data-state", timeout=20_000)


def wait_job_state(page, states, timeout=30_000):
    selector = ", ".join(f"#lg-job[data-state='{s}']" for s in states)
    page.wait_for_selector(selector, timeout=timeout)


def test_create_project_upload_count_and_reattach(app, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto(app.url)
    page.wait_for_selector("#lg-create-project", timeout=30_000)

    # A bad name is refused on the page and nothing is made.
    textbox(page, "lg-new-project").fill("../evil")
    page.click("#lg-create-project")
    page.wait_for_selector("#lg-project-message:has-text(\"'..'\")", timeout=15_000)
    assert not (tmp_path / "evil").exists() and not any((tmp_path / "Loras").glob("*evil*"))

    # Create a project through the page.
    textbox(page, "lg-new-project").fill("first_char")
    page.click("#lg-create-project")
    page.wait_for_selector("#lg-project-message:has-text('Created project')", timeout=15_000)
    project = Projects(app.root).open("first_char")
    assert project.dataset_dir.is_dir() and project.settings_file.is_file()
    assert page.locator("#lg-project input").first.input_value() == "first_char"

    # Upload an image and a caption; the import runs as a job and the panel shows it finish.
    upload_dir = tmp_path / "to_upload"
    files = [make_image(upload_dir / "pic.png"), upload_dir / "pic.txt"]
    files[1].write_text("first_char, 1girl")
    with page.expect_response(lambda r: "/upload" in r.url and r.status == 200, timeout=15_000):
        page.locator("#lg-upload input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_timeout(1000)  # the page takes in the uploaded paths
    page.click("#lg-add-uploads")
    wait_job_state(page, ["done"])
    landed = sorted(p.name for p in project.dataset_dir.iterdir())
    assert landed == ["pic.png", "pic.txt"], jobs.read_log(jobs.list_jobs(project)[0])
    assert (project.dataset_dir / "pic.txt").read_text() == "first_char, 1girl"
    page.click("#lg-count")
    page.wait_for_selector("#lg-count-notes:has-text('1 images')", timeout=15_000)

    # A long job started elsewhere (here: by the engine directly, as the CLI would) shows up,
    # survives a reload, is visible from a second browser, and can be cancelled from the page.
    job = jobs.start_job(project, "count", "tests.job_samples:count_slowly", {"n": 2000, "delay": 0.05}, title="Slow count")
    try:
        wait_job_state(page, ["running"])
        page.wait_for_selector("#lg-job:has-text('Slow count')", timeout=15_000)
        page.reload()
        wait_job_state(page, ["running"])
        other = browser.new_page()
        other.goto(app.url)
        wait_job_state(other, ["running"])
        other.close()
        page.bring_to_front()  # Chromium slows timers in background pages
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"page-{app.label}.png"), full_page=True)
        page.click("#lg-cancel-job")
        try:
            wait_job_state(page, ["cancelled"])
        except Exception:  # say what the engine and the page each believed
            print("engine:", jobs.job_status(job).headline(), "| page:", page.locator("#lg-job-panel").first.inner_text())
            page.screenshot(path=str(ARTIFACTS / f"cancel-failed-{app.label}.png"), full_page=True)
            raise
    finally:
        jobs.cancel_job(job, force_after_s=10)
    assert jobs.job_status(job).state == jobs.CANCELLED
    page.close()


def test_scrape_search_then_download_from_the_page(app, browser, tmp_path):
    from tests.booru_server import BooruServer

    Projects(app.root).create("booru_char")
    with BooruServer(n_posts=40) as booru:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(app.url)
        page.wait_for_selector("#lg-scrape-search", timeout=30_000)
        page.locator("#lg-scrape-site input").first.click()
        page.locator("ul[role=listbox] li:has-text('safebooru'), .options li:has-text('safebooru')").first.click()
        textbox(page, "lg-scrape-tags").fill("fake_tag")
        textbox(page, "lg-scrape-limit").fill("12")
        page.get_by_text("Options", exact=True).first.click()
        textbox(page, "lg-scrape-mirror").fill(booru.safebooru_url)
        page.click("#lg-scrape-search")
        page.wait_for_selector("#lg-scrape-found:has-text('posts')", timeout=30_000)
        found = page.locator("#lg-scrape-found").inner_text()
        assert "match" in found
        page.wait_for_function("document.querySelectorAll('#lg-scrape-found img').length > 0", timeout=15_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"scrape-{app.label}.png"), full_page=True)
        page.click("#lg-scrape-download")
        page.wait_for_selector("#lg-job[data-state='done']:has-text('Download images')", timeout=60_000)
        project = Projects(app.root).open("booru_char")
        images = [p for p in project.dataset_dir.iterdir() if p.suffix in (".png", ".jpg", ".jpeg")]
        assert len(images) == 12
        page.close()


def test_dedupe_grid_mark_and_apply(app, browser, tmp_path):
    import shutil

    from tests.tiny_clip import build_tiny_clip

    clip = build_tiny_clip(tmp_path / "clip")
    project = Projects(app.root).create("dupes")
    for i, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        make_image(project.dataset_dir / f"{i}.png", size=(96, 80), colour=colour)
    shutil.copy(project.dataset_dir / "0.png", project.dataset_dir / "0_copy.png")
    (project.dataset_dir / "0_copy.txt").write_text("copy caption")
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app.url)
    page.locator("#lg-dedupe .label-wrap").first.click()  # open the accordion
    page.wait_for_selector("#lg-dedupe-run", timeout=30_000)
    textbox(page, "lg-dedupe-model").fill(clip)
    page.click("#lg-dedupe-run")
    try:
        page.wait_for_selector("#lg-job[data-state='done']:has-text('Find duplicates')", timeout=60_000)
    except Exception:
        print("job panel:", page.locator("#lg-job-panel").first.inner_text(), "| message:", page.locator("#lg-dedupe-summary").first.inner_text())
        page.screenshot(path=str(ARTIFACTS / f"dedupe-failed-{app.label}.png"), full_page=True)
        raise
    page.click("#lg-dedupe-refresh")
    try:
        page.wait_for_selector("#lg-dedupe-summary:has-text('1 marked')", timeout=20_000)
    except Exception:
        print("summary:", page.locator("#lg-dedupe-summary").first.inner_text())
        page.screenshot(path=str(ARTIFACTS / f"dedupe-failed-{app.label}.png"), full_page=True)
        raise
    thumbs = page.locator("#lg-dedupe-grid img")
    page.wait_for_function("document.querySelectorAll('#lg-dedupe-grid img').length >= 2", timeout=20_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dedupe-{app.label}.png"), full_page=True)
    # Mark the kept original instead of its copy: click it (marked), then the copy (unmarked).
    thumbs.nth(0).click()
    page.wait_for_selector("#lg-dedupe-summary:has-text('2 marked')", timeout=20_000)
    page.locator("#lg-dedupe-grid img").nth(1).click()
    page.wait_for_selector("#lg-dedupe-summary:has-text('1 marked')", timeout=20_000)
    page.click("#lg-dedupe-apply")
    page.wait_for_selector("#lg-dedupe-summary:has-text('trash')", timeout=20_000)
    left = sorted(p.name for p in project.dataset_dir.iterdir())
    assert left == ["0_copy.png", "0_copy.txt", "1.png", "2.png"]  # the original went to the trash
    page.close()
