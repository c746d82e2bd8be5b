"""Drive the real page in headless Chromium, under the newest Gradio and under Gradio 3.41.2; the whole
guide also under Forge's pins (Gradio 4.40.0), with its jobs in Forge's own packages."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lora_gradio.engine import jobs
from lora_gradio.engine.project import Projects
from tests.appserver import CHROMIUM, CHROMIUM_ARGS, FORGE_PYTHON, GRADIO3_PYTHON, REPO, AppServer
from tests.images_factory import make_image

pytestmark = pytest.mark.browser
ARTIFACTS = REPO / "test-artifacts"


def _pythons(forge=False):
    """The Pythons (so Gradio versions) a test runs under; Forge's only for the tests that ask (the walk),
    to keep CI short: the other tests meet no Gradio difference that the walk does not."""
    yield pytest.param(sys.executable, id="gradio-newest")
    webuis = [(GRADIO3_PYTHON, "gradio-3.41.2", pytest.mark.gradio3)] + ([(FORGE_PYTHON, "forge-gradio-4.40.0", pytest.mark.forge)] if forge else [])
    for python, label, mark in webuis:
        if python.exists():
            yield pytest.param(str(python), id=label, marks=mark)
        elif os.environ.get("CI"):
            # In CI the WebUIs' environments are part of the set-up: their absence is a failure.
            yield pytest.param(str(python), id=f"{label}-missing", marks=mark)


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
    # The WebUI's Gradio 3 environment here has no torch: its jobs run in the main environment, the way
    # the extension runs them in an environment of its own under A1111's pins. Forge's pins run the jobs
    # themselves (install.py finds nothing they lack), so there the jobs use Forge's packages.
    job_python = "" if Path(request.param) == FORGE_PYTHON else sys.executable
    server = AppServer(request.param, tmp_path / "Loras", env={"LORA_GRADIO_JOB_PYTHON": job_python})
    server.label = request.node.callspec.id
    yield server
    log = server.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(log)


def textbox(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def fill_safebooru_search(page, booru, limit):
    """The scrape block set to the local booru's Safebooru API, searching `fake_tag`."""
    page.locator("#lg-scrape-site input").first.click()
    page.locator("ul[role=listbox] li:has-text('safebooru'), .options li:has-text('safebooru')").first.click()
    page.get_by_text("Options", exact=True).first.click()
    fill_after_render(page, "lg-scrape-mirror", booru.safebooru_url)
    fill_after_render(page, "lg-scrape-tags", "fake_tag")  # the choice of site may still be redrawing the block
    fill_after_render(page, "lg-scrape-limit", str(limit))


def fill_after_render(page, elem_id, value):
    """Fill a field in an accordion just opened: Gradio 6 renders its contents then, and a value typed
    while the field is still mounting can be replaced by the initial one. Type until it stays."""
    field = textbox(page, elem_id)
    for _ in range(10):
        field.fill(value)
        page.wait_for_timeout(300)
        if field.input_value() == value:
            page.wait_for_timeout(500)  # and still there a moment later (a slow machine mounts late)
            if field.input_value() == value:
                return
    raise AssertionError(f"#{elem_id} does not keep {value!r}")


def create_project_on_page(page, app, name):
    textbox(page, "lg-new-project").fill(name)
    page.click("#lg-create-project")
    page.wait_for_selector("#lg-project-message:has-text('Created project')", timeout=15_000)
    return Projects(app.root).open(name)


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
    project = create_project_on_page(page, app, "first_char")
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
        fill_safebooru_search(page, booru, limit=12)
        page.click("#lg-scrape-search")
        try:
            page.wait_for_selector("#lg-scrape-found:has-text('posts')", timeout=30_000)
        except Exception:
            print("found:", page.locator("#lg-scrape-found").first.inner_text(), "| mirror:", textbox(page, "lg-scrape-mirror").input_value())
            page.screenshot(path=str(ARTIFACTS / f"scrape-failed-{app.label}.png"), full_page=True)
            raise
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
    # Both captioned: the automatic choice keeps the original name (a captioned copy would win otherwise).
    (project.dataset_dir / "0.txt").write_text("original caption")
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


def test_tag_curate_undo_and_edit_one_caption(app, browser, tmp_path):
    from tests.tiny_wd import build_tiny_wd

    wd = build_tiny_wd(tmp_path / "wd")
    project = Projects(app.root).create("tagme")
    make_image(project.dataset_dir / "a_red.png", colour=(230, 20, 20))
    make_image(project.dataset_dir / "b_blue.png", colour=(20, 20, 230))
    make_image(project.dataset_dir / "c_red.jpg", colour=(220, 30, 30))
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(app.url)
    for accordion in ("lg-tag", "lg-curate"):
        page.locator(f"#{accordion} .label-wrap").first.click()
    page.wait_for_selector("#lg-tag-run", timeout=30_000)
    # BLIP's options replace the WD ones and back.
    assert not page.locator("#lg-blip-model").first.is_visible()
    page.locator("#lg-tag-method label:has-text('BLIP')").first.click()
    page.wait_for_selector("#lg-blip-model", state="visible", timeout=10_000)
    page.wait_for_selector("#lg-tag-run:has-text('Caption images')", timeout=10_000)
    assert not page.locator("#lg-tag-threshold").first.is_visible()
    page.locator("#lg-tag-method label:has-text('WD tagger')").first.click()
    page.wait_for_selector("#lg-tag-threshold", state="visible", timeout=10_000)
    textbox(page, "lg-tag-model").fill(str(wd))
    page.click("#lg-tag-run")
    page.wait_for_selector("#lg-job[data-state='done']:has-text('Tag images')", timeout=60_000)
    assert (project.dataset_dir / "a_red.txt").read_text() == "red theme, ^_^, solo"
    # The top tags show by themselves once the job is done (the guide's look after tagging).
    try:
        page.wait_for_selector("#lg-tag-chart[data-tags='4']", timeout=20_000)
    except Exception:
        print("chart:", page.locator("#lg-top-chart").first.inner_html()[:500], "| notes:", page.locator("#lg-top-notes").first.inner_text())
        page.screenshot(path=str(ARTIFACTS / f"tags-failed-{app.label}.png"), full_page=True)
        raise
    assert "3 caption files" in page.locator("#lg-top-notes").first.inner_text()
    table = page.locator("#lg-top-table").first.inner_text()
    assert "solo" in table and "red theme" in table

    # Activation tag first and a tag removed, in one step; then undo it.
    textbox(page, "lg-curate-activation").fill("my_char")
    textbox(page, "lg-curate-remove").fill("solo")
    page.click("#lg-curate-apply")
    page.wait_for_selector("#lg-curate-message:has-text('Changed 3 of 3')", timeout=20_000)
    assert (project.dataset_dir / "b_blue.txt").read_text() == "my_char, blue theme"
    page.wait_for_selector("#lg-curate-undo-list:has-text('activation my_char')", timeout=20_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"tags-{app.label}.png"), full_page=True)
    page.click("#lg-curate-undo")
    page.wait_for_selector("#lg-curate-message:has-text('Undid')", timeout=20_000)
    assert (project.dataset_dir / "b_blue.txt").read_text() == "blue theme, solo"

    # One image's tags beside the image: list the red ones, edit the first, save and move on.
    page.locator("#lg-editor .label-wrap").first.click()
    textbox(page, "lg-editor-filter").fill("red theme")
    page.click("#lg-editor-list")
    page.wait_for_selector("#lg-editor-message:has-text('2 image(s)')", timeout=20_000)
    caption = textbox(page, "lg-editor-caption")
    page.wait_for_function("document.querySelector('#lg-editor-caption textarea').value.includes('red theme')", timeout=20_000)
    page.wait_for_selector("#lg-editor-image img", timeout=20_000)
    caption.fill("red theme, smile")
    page.click("#lg-editor-save-next")
    page.wait_for_selector("#lg-editor-message:has-text('Saved the tags of a_red.png')", timeout=20_000)
    assert (project.dataset_dir / "a_red.txt").read_text() == "red theme, smile"
    page.wait_for_function("document.querySelector('#lg-editor-caption textarea').value === 'red theme, ^_^, solo'", timeout=20_000)
    page.screenshot(path=str(ARTIFACTS / f"caption-editor-{app.label}.png"), full_page=True)
    page.close()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("model") / "tiny")


def open_tab(page, name):
    # Gradio 4+ marks tab buttons with role=tab; 3.41 puts plain buttons in .tab-nav.
    page.locator(f"button[role=tab]:has-text('{name}'), .tab-nav button:has-text('{name}')").first.click()


def open_train_tab(page):
    open_tab(page, "2. Train")
    page.wait_for_selector("#lg-train-start", timeout=30_000)


def train_step(page) -> int:
    return int(page.locator("#lg-train-status").first.get_attribute("data-step") or 0)


def test_train_from_the_page_reattach_cancel_and_resume(app, browser, tiny_model):
    from lora_gradio.engine.train.config import load_settings
    from tests.test_train_run import make_project

    project = make_project(app.root, tiny_model, extra=["how_many=20", "save_every_n_epochs=5"])
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app.url)
    open_train_tab(page)
    page.wait_for_selector("#lg-train-calc:has-text('Total: 40 steps')", timeout=20_000)

    # A change on the page is saved to the project's settings file and the calculator follows it.
    how_many = textbox(page, "lg-set-how_many")
    how_many.fill("15")
    how_many.press("Tab")
    page.wait_for_selector("#lg-train-settings-message:has-text('Saved')", timeout=20_000)
    page.wait_for_selector("#lg-train-calc:has-text('Total: 30 steps')", timeout=20_000)
    assert load_settings(project).how_many == 15
    page.click("#lg-train-check-data")
    page.wait_for_selector("#lg-train-check-result:has-text('Ready to train')", timeout=30_000)

    page.click("#lg-train-start")
    page.wait_for_selector("#lg-train-status[data-state='running']", timeout=60_000)
    page.wait_for_function("Number(document.querySelector('#lg-train-status').dataset.step) >= 3", timeout=120_000)

    # Closing the page does not stop the run; a new page re-attaches to it.
    page.close()
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app.url)
    open_train_tab(page)
    page.wait_for_selector("#lg-train-status[data-state='running']", timeout=30_000)
    page.wait_for_function("Number(document.querySelector('#lg-train-loss > div, #lg-train-loss').dataset.points) >= 2", timeout=30_000)
    page.click("#lg-train-cancel")
    page.wait_for_selector("#lg-train-status[data-state='cancelled']", timeout=60_000)
    stopped_at = train_step(page)
    assert 0 < stopped_at < 30
    page.wait_for_selector("#lg-train-resume", state="visible", timeout=20_000)
    page.wait_for_selector("#lg-train-resume-note:has-text('continue from epoch')", timeout=20_000)

    page.click("#lg-train-resume")
    page.wait_for_selector("#lg-train-status[data-state='done']", timeout=180_000)
    assert "step 30/30" in page.locator("#lg-train-status").first.inner_text()
    try:
        page.wait_for_selector("#lg-train-files:has-text('tiny_char-15')", timeout=20_000)
    except Exception:
        print("files:", page.locator("#lg-train-files").first.inner_text(), "|", sorted(p.name for p in project.output_dir.iterdir()))
        page.screenshot(path=str(ARTIFACTS / f"train-failed-{app.label}.png"), full_page=True)
        raise
    assert sorted(p.name for p in project.output_dir.glob("*.safetensors")) == ["tiny_char-05.safetensors", "tiny_char-10.safetensors", "tiny_char-15.safetensors"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"train-{app.label}.png"), full_page=True)
    page.close()


def test_presets_and_kohya_files_from_the_train_tab(app, browser, tiny_model, tmp_path):
    from lora_gradio.engine.train.config import load_settings
    from tests.test_train_run import make_project

    project = make_project(app.root, tiny_model, extra=["network_dim=16", "network_alpha=8"])
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app.url)
    open_train_tab(page)
    page.wait_for_selector("#lg-train-calc:has-text('Total:')", timeout=20_000)
    page.locator("#lg-train-presets .label-wrap").first.click()

    # Save the settings as a preset, change one, then load the preset back.
    fill_after_render(page, "lg-preset-name", "char 16-8")
    page.click("#lg-preset-save")
    page.wait_for_selector("#lg-train-settings-message:has-text('Saved preset')", timeout=20_000)
    dim = textbox(page, "lg-set-network_dim")
    dim.fill("32")
    dim.press("Tab")
    page.wait_for_selector("#lg-train-settings-message:has-text('Saved to')", timeout=20_000)
    assert load_settings(project).network_dim == 32
    page.click("#lg-preset-load")  # the saved preset is the one chosen
    page.wait_for_selector("#lg-train-settings-message:has-text('Loaded preset')", timeout=20_000)
    page.wait_for_function("document.querySelector('#lg-set-network_dim input').value === '16'", timeout=20_000)
    assert load_settings(project).network_dim == 16

    # Export kohya's files, change the settings file behind the page's back, import the files again.
    page.click("#lg-kohya-export")
    page.wait_for_selector("#lg-kohya-message:has-text('accelerate launch train_network.py')", timeout=20_000)
    exported = project.config_dir / "kohya" / "training_config.toml"
    assert exported.is_file() and "network_dim = 16" in exported.read_text()
    upload = tmp_path / "upload"
    upload.mkdir()
    (upload / "training_config.toml").write_text(exported.read_text().replace("network_dim = 16", "network_dim = 24"))
    (upload / "dataset_config.toml").write_text((exported.parent / "dataset_config.toml").read_text())
    with page.expect_response(lambda r: "/upload" in r.url and r.status == 200, timeout=15_000):
        page.locator("#lg-kohya-upload input[type=file]").set_input_files([str(upload / "training_config.toml"), str(upload / "dataset_config.toml")])
    page.wait_for_timeout(1000)  # the page takes in the uploaded paths
    page.click("#lg-kohya-import")
    page.wait_for_selector("#lg-kohya-message:has-text('Imported')", timeout=20_000)
    page.wait_for_function("document.querySelector('#lg-set-network_dim input').value === '24'", timeout=20_000)
    assert load_settings(project).network_dim == 24
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"train-presets-{app.label}.png"), full_page=True)
    page.close()


def test_compare_grid_and_xyz_values_from_the_test_tab(app, browser, tiny_model):
    from lora_gradio.engine.train import loop
    from tests.test_train_run import make_project

    project = make_project(app.root, tiny_model)
    loop.train_project(project)  # two epochs: tiny_char-01, tiny_char-02
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app.url)
    open_tab(page, "3. Test")
    page.wait_for_selector("#lg-compare-found:has-text('tiny_char-02')", timeout=30_000)
    for key, value in (("weights", "0.5, 1"), ("steps", "2"), ("width", "64"), ("height", "64")):
        textbox(page, f"lg-compare-{key}").fill(value)
    page.click("#lg-compare-run")
    page.wait_for_selector("#lg-compare-message:has-text('Rendering the grid')", timeout=20_000)
    page.wait_for_selector("#lg-job[data-state='done']:has-text('Compare epochs')", timeout=120_000)
    page.wait_for_selector("#lg-compare-grid img", timeout=20_000)
    grids = list((project.output_dir / "compare").glob("tiny_char-grid-*.png"))
    assert len(grids) == 1
    from PIL import Image

    width, height = Image.open(grids[0]).size
    assert width > 3 * 64 and height > 2 * 64  # a base column, two epochs, two weights, with labels

    page.locator("#lg-xyz .label-wrap").first.click()
    page.click("#lg-xyz-show")
    page.wait_for_function("document.querySelector('#lg-xyz-x textarea, #lg-xyz-x input').value.includes('-01')", timeout=20_000)
    assert "<lora:tiny_char-01:0.5>" in page.locator("#lg-xyz-prompt textarea").first.input_value()
    assert page.locator("#lg-xyz-y textarea, #lg-xyz-y input").first.input_value() == ":0.5, :1"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"test-tab-{app.label}.png"), full_page=True)
    page.close()


@pytest.mark.parametrize("app", list(_pythons(forge=True)), indirect=True)
def test_the_whole_guide_through_the_page(app, browser, tmp_path, tiny_model):
    """create -> scrape -> dedupe -> tag -> activation tag -> train -> compare, all by clicking."""
    from tests.booru_server import BooruServer
    from tests.tiny_clip import build_tiny_clip
    from tests.tiny_wd import build_tiny_wd

    wd, clip = build_tiny_wd(tmp_path / "wd"), build_tiny_clip(tmp_path / "clip")
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app.url)
    page.wait_for_selector("#lg-create-project", timeout=30_000)
    # The page says where the jobs run when that is not its own Python (Forge's runs them itself).
    assert ("Jobs run under" in page.locator("#lg-header").first.inner_text()) == ("forge" not in app.label and "newest" not in app.label)
    project = create_project_on_page(page, app, "walk")

    def images():
        return sorted(p for p in project.dataset_dir.iterdir() if p.suffix in (".png", ".jpg", ".jpeg"))

    def run_job(button, title, timeout=120_000):
        page.click(button)
        try:
            page.wait_for_selector(f"#lg-job[data-state='done']:has-text('{title}')", timeout=timeout)
        except Exception:
            print("job panel:", page.locator("#lg-job-panel").first.inner_text(), "| jobs:", [j.title for j in jobs.list_jobs(project)])
            page.screenshot(path=str(ARTIFACTS / f"walk-failed-{app.label}.png"), full_page=True)
            raise

    with BooruServer(n_posts=30) as booru:  # 1. gather
        fill_safebooru_search(page, booru, limit=6)
        run_job("#lg-scrape-download", "Download images")
    n = len(images())
    assert n >= 4

    page.locator("#lg-dedupe .label-wrap").first.click()  # 2. look for duplicates (marks only; nothing moves)
    fill_after_render(page, "lg-dedupe-model", clip)
    run_job("#lg-dedupe-run", "Find duplicates")
    assert len(images()) == n

    for accordion in ("lg-tag", "lg-curate"):  # 3. tag and curate
        page.locator(f"#{accordion} .label-wrap").first.click()
    fill_after_render(page, "lg-tag-model", str(wd))
    page.locator("#lg-tag-existing label:has-text('overwrite')").first.click()
    run_job("#lg-tag-run", "Tag images")
    textbox(page, "lg-curate-activation").fill("walk_char")
    page.click("#lg-curate-apply")
    page.wait_for_selector(f"#lg-curate-message:has-text('Changed {n} of {n}')", timeout=20_000)
    assert all(p.with_suffix(".txt").read_text().startswith("walk_char, ") for p in images())

    open_train_tab(page)  # 4. train two epochs on the tiny model
    for key, value in (("training_model", str(tiny_model)), ("resolution", "256"), ("num_repeats", "1"), ("how_many", "2"),
                       ("network_dim", "4"), ("network_alpha", "2")):
        field = textbox(page, f"lg-set-{key}")
        field.fill(value)
        field.press("Tab")
        page.wait_for_timeout(300)
    page.locator("#lg-train-extras .label-wrap, #lg-train-advanced .label-wrap").first.click()
    page.wait_for_selector(f"#lg-train-calc:has-text('{n} images x 1 repeat x 2 epochs')", timeout=20_000)
    page.click("#lg-train-start")
    page.wait_for_selector("#lg-train-status[data-state='done']", timeout=240_000)
    assert sorted(p.name for p in project.output_dir.glob("*.safetensors")) == ["walk-01.safetensors", "walk-02.safetensors"]

    open_tab(page, "3. Test")  # 5. compare
    page.wait_for_selector("#lg-compare-found:has-text('walk-02')", timeout=30_000)
    for key, value in (("weights", "0.5, 1"), ("steps", "2"), ("width", "64"), ("height", "64")):
        textbox(page, f"lg-compare-{key}").fill(value)
    run_job("#lg-compare-run", "Compare epochs")
    page.wait_for_selector("#lg-compare-grid img", timeout=20_000)
    assert len(list((project.output_dir / "compare").glob("walk-grid-*.png"))) == 1
    page.screenshot(path=str(ARTIFACTS / f"walk-compared-{app.label}.png"), full_page=True)
    page.close()


@pytest.fixture(scope="module")
def tiny_sdxl_vpred(tmp_path_factory):
    from tests.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("xl_v") / "model", prediction_type="v_prediction")


def test_an_sdxl_project_from_the_booru_to_a_compared_vpred_lora_on_the_page(app, browser, tmp_path, tiny_sdxl_vpred):
    """Scrape, tag with the XL Dataset Maker's choice, choose a v-prediction SDXL base (the form takes the XL
    notebook's defaults and ticks v_pred), train two epochs and compare them, all by clicking."""
    from tests.booru_server import BooruServer
    from tests.tiny_wd import build_tiny_wd

    wd = build_tiny_wd(tmp_path / "wd")
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(app.url)
    page.wait_for_selector("#lg-create-project", timeout=30_000)
    project = create_project_on_page(page, app, "xlwalk")
    with BooruServer(n_posts=30) as booru:
        fill_safebooru_search(page, booru, limit=4)
        page.click("#lg-scrape-download")
        page.wait_for_selector("#lg-job[data-state='done']:has-text('Download images')", timeout=120_000)
    n = len([p for p in project.dataset_dir.iterdir() if p.suffix in (".png", ".jpg", ".jpeg")])
    assert n >= 3

    page.locator("#lg-tag .label-wrap").first.click()  # tag with the XL Dataset Maker's choice
    page.click("#lg-tag-preset-sdxl")
    page.wait_for_function("() => { const f = document.querySelector('#lg-tag-model2 textarea, #lg-tag-model2 input'); return f && f.value.includes('wd-vit-large-tagger-v3'); }", timeout=15_000)
    fill_after_render(page, "lg-tag-model", str(wd))
    textbox(page, "lg-tag-model2").fill("")
    page.locator("#lg-tag-existing label:has-text('overwrite')").first.click()
    page.click("#lg-tag-run")
    page.wait_for_selector("#lg-job[data-state='done']:has-text('Tag images')", timeout=120_000)
    assert len(list(project.dataset_dir.glob("*.txt"))) == n

    open_train_tab(page)
    field = textbox(page, "lg-set-training_model")
    field.fill(str(tiny_sdxl_vpred))
    field.press("Tab")
    page.wait_for_selector("#lg-train-settings-message:has-text('SDXL base: took its defaults for v_pred true')", timeout=20_000)
    assert textbox(page, "lg-set-resolution").input_value() == "1024"  # the form shows the XL notebook's values
    assert page.locator("#lg-set-v_pred input[type=checkbox]").first.is_checked()
    page.screenshot(path=str(ARTIFACTS / f"train-sdxl-{app.label}.png"), full_page=True)
    for key, value in (("resolution", "512"), ("num_repeats", "1"), ("how_many", "2"), ("network_dim", "4"), ("network_alpha", "2"),
                       ("train_batch_size", "2")):
        field = textbox(page, f"lg-set-{key}")
        field.fill(value)
        field.press("Tab")
        page.wait_for_timeout(300)
    page.wait_for_selector(f"#lg-train-calc:has-text('{n} images x 1 repeat x 2 epochs')", timeout=20_000)
    page.click("#lg-train-start")
    page.wait_for_selector("#lg-train-status[data-state='done']", timeout=300_000)
    assert sorted(p.name for p in project.output_dir.glob("*.safetensors")) == ["xlwalk-01.safetensors", "xlwalk-02.safetensors"]
    from lora_gradio.engine.train.saving import read_lora_metadata

    meta = read_lora_metadata(project.output_dir / "xlwalk-02.safetensors")
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["modelspec.prediction_type"] == "v"

    open_tab(page, "3. Test")
    page.wait_for_selector("#lg-compare-found:has-text('xlwalk-02')", timeout=30_000)
    for key, value in (("weights", "1"), ("steps", "2"), ("width", "512"), ("height", "512")):
        textbox(page, f"lg-compare-{key}").fill(value)
    page.click("#lg-compare-run")
    page.wait_for_selector("#lg-job[data-state='done']:has-text('Compare epochs')", timeout=180_000)
    page.wait_for_selector("#lg-compare-grid img", timeout=20_000)
    page.close()
