"""WD tagger and BLIP captioning on tiny models built here (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_gradio.engine import tagger
from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.tagger import (
    DEFAULT_BLACKLIST,
    KAOMOJI,
    TagReport,
    caption_images,
    load_wd_tagger,
    preprocess_wd,
    tag_images,
)
from tests.tiny_wd import SECOND_TAGS, build_tiny_wd

RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.fixture(scope="module")
def wd(tmp_path_factory) -> str:
    return str(build_tiny_wd(tmp_path_factory.mktemp("wd") / "tiny-wd"))


@pytest.fixture(scope="module")
def wd_second(tmp_path_factory) -> str:
    return str(build_tiny_wd(tmp_path_factory.mktemp("wd2") / "tiny-wd-2", tags=SECOND_TAGS))


@pytest.fixture(scope="module")
def wd_v2(tmp_path_factory) -> str:
    return str(build_tiny_wd(tmp_path_factory.mktemp("wdv2") / "tiny-wd-v2", fixed_batch=1, input_name="input_1:0"))


def solid(path: Path, color, size=(40, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def tags_of(image: Path) -> list[str]:
    return image.with_suffix(".txt").read_text(encoding="utf-8").split(", ")


class Recorder(Progress):
    def __init__(self, cancel_after_updates: int | None = None):
        self.updates: list[tuple[int, int | None]] = []
        self.logs: list[str] = []
        self.cancel_after = cancel_after_updates

    def update(self, done, total=None, message="", **data):
        self.updates.append((done, total))

    def log(self, message):
        self.logs.append(message)

    def cancelled(self):
        return self.cancel_after is not None and len(self.updates) > self.cancel_after


# Channel order, alpha, padding ---------------------------------------------------------------------


def test_red_image_gets_red_tags_and_blue_gets_blue(project, wd):
    red = solid(project.dataset_dir / "red.png", RED)
    blue = solid(project.dataset_dir / "blue.jpg", BLUE)
    report = tag_images(project, [wd])
    assert sorted(report.tagged) == ["blue.jpg", "red.png"]
    # General in CSV order; kaomoji keeps its underscore; blacklist and characters gone by default.
    assert tags_of(red) == ["red theme", "^_^", "solo"]
    assert tags_of(blue) == ["blue theme", "solo"]


def test_transparent_background_is_composited_on_white(project, wd):
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # transparent black: black if alpha were dropped
    img.paste((255, 0, 0, 255), (15, 15, 25, 25))
    path = project.dataset_dir / "sticker.png"
    img.save(path)
    tag_images(project, [wd])
    tags = tags_of(path)
    assert "white background" in tags  # green channel bright: the transparent part became white
    assert "red theme" in tags and "blue theme" in tags


def test_padding_is_white_and_centred(project, wd, tmp_path):
    wide = solid(project.dataset_dir / "wide.png", RED, size=(64, 16))
    tag_images(project, [wd])
    assert "white background" in tags_of(wide)  # 3/4 of the square is padding: white, not black
    array = preprocess_wd(wide, [(32, 32)])[(32, 32)]
    assert array.shape == (32, 32, 3) and array.dtype == np.float32
    assert array[0, 0].tolist() == [255.0, 255.0, 255.0]  # top padding white
    assert array[16, 16].tolist() == [0.0, 0.0, 255.0]  # centre red, in BGR order
    assert array[31, 16].tolist() == [255.0, 255.0, 255.0]  # bottom padding white


# Thresholds, characters, blacklist, rating -------------------------------------------------------


def test_general_threshold(project, wd):
    red = solid(project.dataset_dir / "red.png", RED)
    tag_images(project, [wd], general_threshold=0.25, existing="overwrite")
    assert "long hair" in tags_of(red)
    tag_images(project, [wd], general_threshold=0.35, existing="overwrite")
    assert "long hair" not in tags_of(red)


def test_character_tags_off_by_default_and_on_with_a_threshold(project, wd):
    red = solid(project.dataset_dir / "red.png", RED)
    tag_images(project, [wd])
    assert "hatsune miku" not in tags_of(red)
    tag_images(project, [wd], character_threshold=0.85, existing="overwrite")
    assert tags_of(red) == ["red theme", "^_^", "solo", "hatsune miku"]  # characters after general
    tag_images(project, [wd], character_threshold=1.5, existing="overwrite")  # > 1: off, as in the notebook
    assert "hatsune miku" not in tags_of(red)


def test_blacklist(project, wd):
    red = solid(project.dataset_dir / "red.png", RED)
    assert "virtual youtuber" in DEFAULT_BLACKLIST and "alternate costume" in DEFAULT_BLACKLIST
    tag_images(project, [wd], blacklist=[])
    assert tags_of(red) == ["red theme", "^_^", "solo", "virtual youtuber", "alternate costume"]
    tag_images(project, [wd], blacklist="solo, virtual_youtuber", existing="overwrite")  # underscores accepted
    assert tags_of(red) == ["red theme", "^_^", "alternate costume"]


def test_rating_tag_first_when_asked(project, wd):
    red = solid(project.dataset_dir / "red.png", RED)
    tag_images(project, [wd], include_rating=True)
    assert tags_of(red)[0] == "general"


def test_underscores_become_spaces_except_kaomoji():
    assert tagger.tag_display_name("long_hair") == "long hair"
    for face in ("^_^", ">_<", "o_o", "x_x"):
        assert face in KAOMOJI and tagger.tag_display_name(face) == face


# Existing caption files ------------------------------------------------------------------------


def test_existing_skip_append_overwrite(project, wd):
    red = solid(project.dataset_dir / "red.png", RED)
    caption = red.with_suffix(".txt")
    caption.write_text("my tag, solo", encoding="utf-8")
    report = tag_images(project, [wd])
    assert report.skipped == ["red.png"] and report.tagged == []
    assert caption.read_text(encoding="utf-8") == "my tag, solo"
    tag_images(project, [wd], existing="append")
    assert caption.read_text(encoding="utf-8") == "my tag, solo, red theme, ^_^"
    tag_images(project, [wd], existing="overwrite")
    assert caption.read_text(encoding="utf-8") == "red theme, ^_^, solo"
    caption.write_text("  \n", encoding="utf-8")  # an empty caption counts as untagged
    assert tag_images(project, [wd]).tagged == ["red.png"]
    with pytest.raises(UserError):
        tag_images(project, [wd], existing="replace")


def test_two_models_second_appends_only_new_tags(project, wd, wd_second):
    red = solid(project.dataset_dir / "red.png", RED)
    report = tag_images(project, [wd, wd_second])
    assert tags_of(red) == ["red theme", "^_^", "solo", "smile", "red eyes"]
    assert report.models == [wd, wd_second]


def test_fixed_batch_v2_model(project, wd_v2):
    model = load_wd_tagger(wd_v2)
    assert model.fixed_batch == 1 and model.input_name == "input_1:0" and (model.height, model.width) == (32, 32)
    images = [solid(project.dataset_dir / f"{i}.png", RED if i % 2 else BLUE) for i in range(5)]
    report = tag_images(project, [model], batch_size=4)  # asks for 4: the model still gets 1 at a time
    assert len(report.tagged) == 5
    assert tags_of(images[1]) == ["red theme", "^_^", "solo"] and tags_of(images[0]) == ["blue theme", "solo"]


def test_subfolders_are_tagged(project, wd):
    inner = solid(project.dataset_dir / "extra" / "red.png", RED)
    solid(project.dataset_dir / "_cache" / "ignored.png", RED)
    report = tag_images(project, [wd])
    assert report.tagged == ["extra/red.png"] and inner.with_suffix(".txt").exists()


# Bad input ---------------------------------------------------------------------------------------


def test_csv_that_does_not_match_the_model(tmp_path, project):
    bad = build_tiny_wd(tmp_path / "bad", csv_rows=10)
    with pytest.raises(UserError, match="selected_tags.csv"):
        load_wd_tagger(str(bad))
    solid(project.dataset_dir / "red.png", RED)
    with pytest.raises(UserError):
        tag_images(project, [str(bad)])
    assert not (project.dataset_dir / "red.txt").exists()


def test_missing_or_broken_model(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_wd_tagger(str(tmp_path / "nope" / "model"))
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="selected_tags.csv"):
        load_wd_tagger(str(folder))
    build_tiny_wd(tmp_path / "broken")
    (tmp_path / "broken" / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="ONNX"):
        load_wd_tagger(str(tmp_path / "broken"))


def test_unreadable_image_is_skipped_and_listed(project, wd):
    solid(project.dataset_dir / "red.png", RED)
    (project.dataset_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    progress = Recorder()
    report = tag_images(project, [wd], progress=progress)
    assert report.tagged == ["red.png"]
    assert [p for p, _ in report.failed] == ["broken.jpg"]
    assert not (project.dataset_dir / "broken.txt").exists()
    assert "broken.jpg" in report.summary()
    assert any("broken.jpg" in line for line in progress.logs)
    assert progress.updates[-1] == (2, 2)


def test_cancelled_run_resumes_skipping_tagged_images(project, wd):
    for i in range(6):
        solid(project.dataset_dir / f"{i}.png", RED)
    with pytest.raises(Cancelled):
        tag_images(project, [wd], batch_size=2, progress=Recorder(cancel_after_updates=1))
    done = sorted(p.name for p in project.dataset_dir.glob("*.txt"))
    assert done == ["0.txt", "1.txt"]  # the finished batch is saved
    report = tag_images(project, [wd], batch_size=2)
    assert sorted(report.skipped) == ["0.png", "1.png"] and len(report.tagged) == 4
    assert len(list(project.dataset_dir.glob("*.txt"))) == 6


def test_empty_dataset(project, wd):
    report = tag_images(project, [wd])
    assert isinstance(report, TagReport) and report.tagged == [] and "Tagged 0" in report.summary()


# BLIP --------------------------------------------------------------------------------------------

BLIP_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "red", "cat", "dog", "sits", "on", "the", "mat"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> str:
    """A 16-dim, 1-layer, 32 px BLIP with a 14-token BERT vocabulary, saved like a real one."""
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("blip") / "tiny-blip"
    folder.mkdir()
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(BLIP_VOCAB) + "\n", encoding="utf-8")
    vocab = {word: i for i, word in enumerate(vocab_file.read_text(encoding="utf-8").split())}
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(BLIP_VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=128, encoder_hidden_size=16,
            bos_token_id=5, sep_token_id=3, eos_token_id=3, pad_token_id=0,
        ),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():  # random weights: keep special tokens out so the caption has words
        model.text_decoder.cls.predictions.bias[[0, 1, 2, 4, 5]] = -1e4
    model.save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def test_blip_captions(project, tiny_blip):
    images = [solid(project.dataset_dir / f"{i}.png", RED if i % 2 else BLUE, size=(48 + i, 40)) for i in range(3)]
    (project.dataset_dir / "junk.png").write_bytes(b"nope")
    report = caption_images(project, model=tiny_blip, min_length=3, max_length=8, num_beams=2, batch_size=2)
    assert sorted(report.tagged) == ["0.png", "1.png", "2.png"] and [p for p, _ in report.failed] == ["junk.png"]
    for image in images:
        text = image.with_suffix(".txt").read_text(encoding="utf-8")
        words = text.split()
        assert text.strip() and 1 <= len(words) <= 8 and all(w in BLIP_VOCAB for w in words)
    again = caption_images(project, model=tiny_blip, min_length=3, max_length=8, num_beams=2)
    assert sorted(again.skipped) == ["0.png", "1.png", "2.png"] and again.tagged == []
    assert "Captioned 0" in again.summary()


def test_blip_bad_arguments(project, tmp_path):
    solid(project.dataset_dir / "red.png", RED)
    with pytest.raises(UserError):
        caption_images(project, model=str(tmp_path / "missing" / "blip"))
    with pytest.raises(UserError):
        caption_images(project, min_length=80, max_length=75)


def test_cli_tag_writes_captions_and_prints_top_tags(tmp_path, capsys):
    from PIL import Image

    from lora_gradio.cli import main as cli_main
    from lora_gradio.engine.project import Projects
    from tests.tiny_wd import build_tiny_wd

    model = build_tiny_wd(tmp_path / "wd")
    project = Projects(tmp_path / "Loras").create("p")
    Image.new("RGB", (40, 30), (255, 0, 0)).save(project.dataset_dir / "red.png")
    assert cli_main(["--root", str(tmp_path / "Loras"), "tag", "p", "--model", str(model)]) == 0
    out = capsys.readouterr().out
    assert (project.dataset_dir / "red.txt").read_text() and "Most common tags:" in out


# Named tagger choices ----------------------------------------------------------------------------


def test_tagger_presets_are_the_sd15_guide_and_the_xl_dataset_maker():
    sd15, sdxl = tagger.TAGGER_PRESETS  # the guide's SD 1.5 choice first, the XL Dataset Maker's second
    assert (sd15.key, sdxl.key) == ("sd15", "sdxl") and tagger.DEFAULT_TAGGER_PRESET == "sd15"
    # SD 1.5: what the page and `tag` used before presets existed.
    assert sd15.models == (tagger.DEFAULT_WD_MODEL,) == ("SmilingWolf/wd-swinv2-tagger-v3",)
    assert sd15.general_threshold == tagger.DEFAULT_GENERAL_THRESHOLD == 0.35 and sd15.batch_size is None
    assert sd15.label == "SD 1.5 guide: wd-swinv2-tagger-v3 (0.35)" and sd15.second_model == ""
    # SDXL Dataset Maker "Both": eva02-large first, vit-large appending new tags; 0.25; batch 8.
    assert sdxl.models == ("SmilingWolf/wd-eva02-large-tagger-v3", "SmilingWolf/wd-vit-large-tagger-v3")
    assert sdxl.general_threshold == 0.25 and sdxl.batch_size == 8
    assert sdxl.label == "SDXL Dataset Maker: both large v3 (0.25)" and sdxl.second_model == "SmilingWolf/wd-vit-large-tagger-v3"
    assert sdxl.job_kwargs() == {"models": list(sdxl.models), "general_threshold": 0.25, "batch_size": 8}
    assert sd15.job_kwargs() == {"models": ["SmilingWolf/wd-swinv2-tagger-v3"], "general_threshold": 0.35}


def test_tagger_preset_by_key_or_label():
    assert tagger.tagger_preset("SDXL").key == "sdxl"
    assert tagger.tagger_preset(" SD 1.5 guide: wd-swinv2-tagger-v3 (0.35) ").key == "sd15"
    with pytest.raises(UserError, match="sd15, sdxl"):
        tagger.tagger_preset("xl")


def test_preset_job_arguments_run_the_tagger(project, wd, wd_second):
    red = solid(project.dataset_dir / "red.png", RED)
    kwargs = {**tagger.tagger_preset("sdxl").job_kwargs(), "models": [wd, wd_second]}  # tiny models in place of the large ones
    report = tag_images(project, **kwargs)
    assert report.tagged == ["red.png"] and "long hair" in tags_of(red)  # 0.25 keeps the 0.3 tag that 0.35 drops


def _tag_args(*flags: str):
    from lora_gradio.cli import build_parser, tag_job_arguments

    return tag_job_arguments(build_parser().parse_args(["tag", "p", *flags]))


def test_cli_tag_preset_parses_into_the_job_arguments():
    func, title, kwargs = _tag_args()
    assert func == "lora_gradio.engine.tagger:tag_images" and "WD" in title
    assert kwargs == {"models": ["SmilingWolf/wd-swinv2-tagger-v3"], "general_threshold": 0.35, "character_threshold": None, "include_rating": False, "existing": "skip"}
    _, _, kwargs = _tag_args("--preset", "sdxl")
    assert kwargs["models"] == ["SmilingWolf/wd-eva02-large-tagger-v3", "SmilingWolf/wd-vit-large-tagger-v3"]
    assert kwargs["general_threshold"] == 0.25 and kwargs["batch_size"] == 8
    # --model, --threshold and --batch-size override the preset; the rest of it stays.
    _, _, kwargs = _tag_args("--preset", "sdxl", "--model", "/models/wd", "--threshold", "0.3", "--character-threshold", "0.9", "--blacklist", "")
    assert kwargs["models"] == ["/models/wd"] and kwargs["general_threshold"] == 0.3 and kwargs["batch_size"] == 8
    assert kwargs["character_threshold"] == 0.9 and kwargs["blacklist"] == ""
    _, _, kwargs = _tag_args("--preset", "sdxl", "--batch-size", "2")
    assert kwargs["batch_size"] == 2 and kwargs["general_threshold"] == 0.25
    _, _, kwargs = _tag_args("--preset", "sd15", "--threshold", "0.5")
    assert kwargs["general_threshold"] == 0.5 and "batch_size" not in kwargs
    func, _, kwargs = _tag_args("--method", "blip", "--model", "blip-folder")
    assert func == "lora_gradio.engine.tagger:caption_images" and kwargs == {"existing": "skip", "model": "blip-folder"}
    with pytest.raises(UserError, match="--method blip"):
        _tag_args("--method", "blip", "--preset", "sdxl")


def test_cli_tag_preset_choices_are_the_engine_presets(capsys):
    from lora_gradio.cli import build_parser, main as cli_main

    tag_parser = next(a for a in build_parser()._actions if a.dest == "command").choices["tag"]
    preset_flag = next(a for a in tag_parser._actions if a.dest == "preset")
    assert list(preset_flag.choices) == [p.key for p in tagger.TAGGER_PRESETS]
    with pytest.raises(SystemExit):
        cli_main(["tag", "p", "--preset", "xl"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_tag_with_a_preset_passes_it_to_the_engine(tmp_path, monkeypatch, capsys):
    from lora_gradio import cli
    from lora_gradio.engine.project import Projects

    calls = []
    monkeypatch.setattr(cli, "run_engine_function", lambda project, kind, func, title, kwargs, background: calls.append((func, kwargs, background)) or 0)
    Projects(tmp_path / "Loras").create("p")
    assert cli.main(["--root", str(tmp_path / "Loras"), "tag", "p", "--preset", "sdxl", "--background"]) == 0
    [(func, kwargs, background)] = calls
    assert func.endswith(":tag_images") and background and kwargs["models"][0] == "SmilingWolf/wd-eva02-large-tagger-v3"


def test_overwriting_captions_is_one_undoable_edit(project, wd):
    """Re-tagging with overwrite replaces captions a person may have edited: `tags --undo` brings them back."""
    from lora_gradio.engine.tags import undo

    red = solid(project.dataset_dir / "red.png", RED)
    red.with_suffix(".txt").write_text("my_char, hand-written tags", encoding="utf-8")
    fresh = solid(project.dataset_dir / "blue.png", BLUE)  # no caption yet: written directly
    report = tag_images(project, [wd], existing="overwrite")
    assert sorted(report.tagged) == ["blue.png", "red.png"] and tags_of(red)[0] == "red theme"
    undo(project)
    assert red.with_suffix(".txt").read_text(encoding="utf-8") == "my_char, hand-written tags"
    assert fresh.with_suffix(".txt").exists()
