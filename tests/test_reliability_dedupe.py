"""Duplicates keep the better copy: the captioned one, then the bigger/original one, never just the
first by name; and the result says what was moved with which caption."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from lora_gradio.engine import dedupe
from tests.test_dedupe import _picture
from tests.tiny_clip import build_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


# The same distinct pictures as the dedupe tests use.
picture = _picture


def test_an_exact_copy_keeps_the_captioned_file_not_the_first_name(project, tiny_clip):
    folder = project.dataset_dir
    picture(1).save(folder / "img01.png")
    (folder / "img01.txt").write_text("1girl, red hair")
    shutil.copyfile(folder / "img01.png", folder / "img01 (1).png")  # sorts first, has no caption
    picture(2).save(folder / "img02.png")
    (folder / "img02.txt").write_text("1boy")
    shutil.copyfile(folder / "img02.png", folder / "img02 copy.png")  # sorts first, captioned too
    (folder / "img02 copy.txt").write_text("1boy")
    picture(3).save(folder / "other.png")

    result = dedupe.find_duplicates(project, threshold=0.99999, model=tiny_clip)
    assert result.groups == [["img01.png", "img01 (1).png"], ["img02.png", "img02 copy.png"]]
    assert result.marked == {"img01 (1).png", "img02 copy.png"}
    assert result.scores == [[1.0, 1.0], [1.0, 1.0]]
    assert result.captions["img01.png"] == "img01.txt" and "img01 (1).png" not in result.captions
    summary = result.summary()
    assert "img01 (1).png (no caption; keeping img01.png with img01.txt)" in summary
    assert "img02 copy.png (with img02 copy.txt; keeping img02.png with img02.txt)" in summary
    assert dedupe.load_result(project) == result

    report = dedupe.apply_marks(project)
    assert sorted(report.moved) == ["img01 (1).png", "img02 copy.png"]
    assert report.captions == {"img01 (1).png": None, "img02 copy.png": "img02 copy.txt"}
    assert report.kept == {"img01 (1).png": "img01.png", "img02 copy.png": "img02.png"}
    assert "img01 (1).png without a caption (kept img01.png with img01.txt)" in report.summary()
    assert "img02 copy.png with img02 copy.txt (kept img02.png with img02.txt)" in report.summary()
    assert (folder / "img01.png").exists() and (folder / "img01.txt").read_text() == "1girl, red hair"
    assert not (folder / "img01 (1).png").exists() and not (folder / "img02 copy.txt").exists()


def test_a_near_duplicate_keeps_the_bigger_picture_and_scores_follow_the_kept_one(project, tiny_clip):
    folder = project.dataset_dir
    picture(5).resize((48, 40), Image.Resampling.LANCZOS).save(folder / "a small.png")  # walks first
    picture(5).save(folder / "b.png")
    picture(6).save(folder / "c.png")
    names = ["a small.png", "b.png", "c.png"]
    vectors = {names[i]: v for i, v, err in dedupe.embed_images([folder / n for n in names], tiny_clip, batch_size=4)}
    near = float(vectors["a small.png"] @ vectors["b.png"])
    others = max(float(vectors["c.png"] @ vectors[n]) for n in names[:2])
    assert near > others
    result = dedupe.find_duplicates(project, threshold=(near + others) / 2, model=tiny_clip)
    assert result.groups == [["b.png", "a small.png"]] and result.marked == {"a small.png"}
    assert result.scores[0][0] == 1.0 and result.scores[0][1] == pytest.approx(near, abs=1e-3)
    assert "a small.png (no caption; keeping b.png without a caption)" in result.summary()


def jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def test_which_copy_is_better(project):
    folder = project.dataset_dir
    big, small = picture(7), picture(7).resize((48, 40))
    big.save(folder / "p.png")
    big.save(folder / "p (2).png")
    (folder / "q.jpg").write_bytes(jpeg(big, 60))
    (folder / "q_1.jpg").write_bytes(jpeg(big, 95))  # the better JPEG, named like a copy
    small.save(folder / "r.png")
    (folder / "s.png").write_bytes(b"not an image")
    (folder / "t copy.png").write_bytes((folder / "p.png").read_bytes())
    (folder / "t copy.txt").write_text("a caption")
    (folder / "u.txt").write_text("   \n")  # an empty caption is no caption
    big.save(folder / "u.png")

    rank = dedupe.rank_copies
    # A caption first, whatever the name or size.
    assert rank(project, ["p.png", "t copy.png", "r.png"]) == ["t copy.png", "p.png", "r.png"]
    # Then more pixels.
    assert rank(project, ["r.png", "p.png"]) == ["p.png", "r.png"]
    # Then lossless over a lossy re-encode, and among JPEGs the larger (less compressed) file.
    assert rank(project, ["q.jpg", "q_1.jpg", "p.png"]) == ["p.png", "q_1.jpg", "q.jpg"]
    # Then a name that does not look like a copy: "(2)", " copy", "_1" beside the original's name.
    assert rank(project, ["p (2).png", "p.png"]) == ["p.png", "p (2).png"]
    assert rank(project, ["u.png", "p.png"]) == ["p.png", "u.png"]  # then name order
    # An unreadable file comes last.
    assert rank(project, ["s.png", "r.png"]) == ["r.png", "s.png"]


def test_the_cli_says_what_it_moved_with_which_caption(project, tiny_clip, capsys):
    from lora_gradio.cli import main as cli_main

    folder = project.dataset_dir
    picture(1).save(folder / "img01.png")
    (folder / "img01.txt").write_text("1girl")
    shutil.copyfile(folder / "img01.png", folder / "img01 (1).png")
    assert cli_main(["--root", str(project.root), "dedupe", project.name, "--model", tiny_clip, "--threshold", "0.9999", "--apply"]) == 0
    out = capsys.readouterr().out
    assert "keep    img01.png" in out and "remove  img01 (1).png" in out
    assert "img01 (1).png without a caption (kept img01.png with img01.txt)" in out
    assert (folder / "img01.txt").exists() and not (folder / "img01 (1).png").exists()
