import zipfile

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.uploads import import_uploads
from tests.images_factory import make_image


def test_images_captions_and_zips_are_added_without_overwriting(project, tmp_path):
    up = tmp_path / "uploads"
    make_image(up / "a.png")
    (up / "a.txt").write_text("1girl, smile")
    make_image(up / "b.jpg")
    (up / "notes.docx").write_bytes(b"word")
    (up / "fake.png").write_text("not an image")
    with zipfile.ZipFile(up / "set.zip", "w") as z:
        z.write(make_image(tmp_path / "z" / "c.png"), "c.png")
        z.writestr("c.txt", "from zip")
    # Already in the dataset: an image named a.png with its caption, and a stray caption b.txt.
    make_image(project.dataset_dir / "a.png", colour=(0, 0, 255))
    (project.dataset_dir / "a.txt").write_text("old caption")
    (project.dataset_dir / "b.txt").write_text("stray caption")

    files = [up / n for n in ("a.png", "a.txt", "b.jpg", "notes.docx", "fake.png", "set.zip")]
    report = import_uploads(project, [str(f) for f in files])

    d = project.dataset_dir
    assert (d / "a.txt").read_text() == "old caption"  # untouched
    assert (d / "a (2).png").exists() and (d / "a (2).txt").read_text() == "1girl, smile"
    assert (d / "b (2).jpg").exists() and (d / "b.txt").read_text() == "stray caption"  # no caption inherited
    assert (d / "c.png").exists() and (d / "c.txt").read_text() == "from zip"
    assert not (d / "fake.png").exists() and not (d / "notes.docx").exists()
    skipped = dict(report.skipped)
    assert "not an image" in skipped["fake.png"] and "notes.docx" in skipped
    assert ("a.png", "a (2).png") in report.renamed
    assert "Added" in report.summary() and "skipped 2" in report.summary()


def test_missing_upload_is_a_clear_error(project, tmp_path):
    with pytest.raises(UserError, match="Upload them again"):
        import_uploads(project, [str(tmp_path / "gone.png")])


def test_empty_upload_is_skipped_with_a_reason(project, tmp_path):
    empty = tmp_path / "half.png"
    empty.write_bytes(b"")
    report = import_uploads(project, [str(empty)])
    assert report.added == [] and "upload it again" in dict(report.skipped)["half.png"]
