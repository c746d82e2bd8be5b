"""The Dataset tab's tagging, curation and caption-editor helpers (the page itself: test_browser.py)."""

from lora_gradio.engine.tagger import DEFAULT_BLACKLIST, DEFAULT_BLIP_MODEL, DEFAULT_WD_MODEL
from lora_gradio.ui.caption_editor import neighbour
from lora_gradio.ui.curate_block import tag_chart_html, tag_overview
from lora_gradio.ui.tag_block import BLIP, WD, tag_job_kwargs

BLACKLIST = ", ".join(DEFAULT_BLACKLIST)


def test_wd_job_arguments():
    func, title, kwargs = tag_job_kwargs(WD, " /models/wd ", "", 0.3, False, 0.85, BLACKLIST, True, "", 10, 75, 3, "append")
    assert func == "lora_gradio.engine.tagger:tag_images" and "WD" in title
    assert kwargs == {"models": ["/models/wd"], "general_threshold": 0.3, "character_threshold": None, "blacklist": BLACKLIST, "include_rating": True, "existing": "append"}
    _, _, kwargs = tag_job_kwargs(WD, "", "second", 0.35, True, 0.9, "", False, "", 10, 75, 3, "skip")
    assert kwargs["models"] == ["second"] and kwargs["character_threshold"] == 0.9 and kwargs["blacklist"] == ""
    _, _, kwargs = tag_job_kwargs(WD, "", " ", 0.35, False, 0.9, "", False, "", 10, 75, 3, "skip")
    assert kwargs["models"] == [DEFAULT_WD_MODEL]


def test_blip_job_arguments():
    func, title, kwargs = tag_job_kwargs(BLIP, "wd", "", 0.35, False, 0.85, "", False, "", 12.0, 60.0, 4.0, "overwrite")
    assert func == "lora_gradio.engine.tagger:caption_images" and "BLIP" in title
    assert kwargs == {"model": DEFAULT_BLIP_MODEL, "min_length": 12, "max_length": 60, "num_beams": 4, "existing": "overwrite"}


def test_neighbour_wraps_and_recovers():
    files = ["a.png", "b.png", "c.png"]
    assert neighbour(files, "a.png", 1) == "b.png"
    assert neighbour(files, "c.png", 1) == "a.png"
    assert neighbour(files, "a.png", -1) == "c.png"
    assert neighbour(files, "gone.png", 1) == "a.png"
    assert neighbour([], "a.png", 1) is None


def test_chart_bars_scale_to_files_and_escape():
    html = tag_chart_html([("<b>", 4), ("smile", 2)], files=8)
    assert "data-tags='2'" in html and "&lt;b&gt;" in html and "<b>" not in html
    assert "width:50.0%" in html and "width:25.0%" in html
    assert tag_chart_html([], 0) == "<div id='lg-tag-chart'></div>"


def test_overview_of_a_project(projects):
    project = projects.create("p")
    notes, rows, html = tag_overview(projects, "p", 10)
    assert "No caption files" in notes and rows == [["", 0, ""]]
    for name, caption in (("a", "my_char, smile"), ("b", "my_char, solo")):
        (project.dataset_dir / f"{name}.png").write_bytes(b"png")
        (project.dataset_dir / f"{name}.txt").write_text(caption)
    (project.dataset_dir / "c.png").write_bytes(b"png")
    notes, rows, html = tag_overview(projects, "p", 2)
    assert "2 caption files, 3 different tags; the 2 most common" in notes
    assert "c.png" in notes  # the image without a caption is pointed out
    assert rows == [["my_char", 2, "100%"], ["smile", 1, "50%"]] and "data-tags='2'" in html


def test_tagger_choice_buttons_fill_the_fields():
    from lora_gradio.engine.tagger import DEFAULT_TAGGER_PRESET, TAGGER_PRESETS
    from lora_gradio.ui.tag_block import preset_fields

    assert [p.key for p in TAGGER_PRESETS] == ["sd15", "sdxl"]
    # The page starts on the SD 1.5 guide's choice: the fields it had before the buttons existed.
    assert preset_fields(DEFAULT_TAGGER_PRESET) == (DEFAULT_WD_MODEL, "", 0.35, 0)
    assert preset_fields("sdxl") == ("SmilingWolf/wd-eva02-large-tagger-v3", "SmilingWolf/wd-vit-large-tagger-v3", 0.25, 8)
    assert preset_fields("SDXL Dataset Maker: both large v3 (0.25)") == preset_fields("sdxl")  # by label too
    # What the fields then hold becomes the job: both taggers in order, 0.25, batch 8.
    model, second, threshold, batch = preset_fields("sdxl")
    _, _, kwargs = tag_job_kwargs(WD, model, second, threshold, False, 0.85, BLACKLIST, False, "", 10, 75, 3, "skip", batch)
    assert kwargs["models"] == [model, second] and kwargs["general_threshold"] == 0.25 and kwargs["batch_size"] == 8
    model, second, threshold, batch = preset_fields("sd15")
    _, _, kwargs = tag_job_kwargs(WD, model, second, threshold, False, 0.85, BLACKLIST, False, "", 10, 75, 3, "skip", batch)
    assert kwargs["models"] == [DEFAULT_WD_MODEL] and kwargs["general_threshold"] == 0.35 and "batch_size" not in kwargs  # 0: automatic


def test_wd_batch_size_field():
    args = (WD, "wd", "", 0.35, False, 0.85, "", False, "", 10, 75, 3, "skip")
    assert tag_job_kwargs(*args, 4.0)[2]["batch_size"] == 4
    for empty in (None, "", 0):
        assert "batch_size" not in tag_job_kwargs(*args, empty)[2]
    assert "batch_size" not in tag_job_kwargs(BLIP, *args[1:], 8)[2]  # BLIP keeps its own batch
