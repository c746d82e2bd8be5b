"""Image loading and dataset hygiene, on images the tests make with Pillow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from lora_gradio.engine import images
from lora_gradio.engine.errors import Cancelled
from lora_gradio.engine.images import (
    FolderCount,
    UnreadableImage,
    check_images,
    clean_dataset,
    convert_png_to_jpeg,
    count_dataset,
    find_stem_clashes,
    open_image,
    shrink_large_images,
)
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.project import Project, Projects
from lora_gradio.engine.trash import list_trash, restore


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Projects(tmp_path / "root").create("char")


def save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def noise(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def write(path: Path, data: bytes | str = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def truncated_jpeg(path: Path) -> Path:
    save(noise(64, 64), path, format="JPEG")
    data = path.read_bytes()
    return write(path, data[: len(data) // 2])


class RecordingProgress(Progress):
    def __init__(self, cancel_after: int | None = None):
        self.logs: list[str] = []
        self.updates: list[tuple[int, int | None]] = []
        self.cancel_after = cancel_after

    def update(self, done, total=None, message="", **data):
        self.updates.append((done, total))

    def log(self, message):
        self.logs.append(message)

    def cancelled(self):
        return self.cancel_after is not None and any(done >= self.cancel_after for done, _ in self.updates)


# open_image ------------------------------------------------------------------------------------


def test_rgba_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 255, 255))
    loaded = open_image(save(image, tmp_path / "a.png"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)  # transparent red -> white
    assert loaded.getpixel((1, 0)) == (0, 0, 255)  # opaque stays


def test_la_and_palette_transparency_become_white(tmp_path):
    la = open_image(save(Image.new("LA", (2, 2), (0, 0)), tmp_path / "la.png"))
    assert la.getpixel((0, 0)) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 10, 20, 30])
    palette.putpixel((1, 1), 1)
    loaded = open_image(save(palette, tmp_path / "p.png", transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 1)) == (10, 20, 30)


def test_sixteen_bit_and_greyscale_are_scaled_not_clipped(tmp_path):
    wide = Image.new("I;16", (2, 1), 65535)
    wide.putpixel((1, 0), 32768)
    loaded = open_image(save(wide, tmp_path / "16.png"))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (128, 128, 128)
    grey = open_image(save(Image.new("L", (2, 2), 10), tmp_path / "grey.png"))
    assert grey.getpixel((0, 0)) == (10, 10, 10)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(Image.new("RGB", (40, 20), (200, 0, 0)), tmp_path / "r.jpg", exif=exif.tobytes())
    assert Image.open(path).size == (40, 20)
    assert open_image(path).size == (20, 40)


def test_truncated_and_fake_images_raise_one_line_reasons(tmp_path):
    with pytest.raises(UnreadableImage, match="corrupt or truncated"):
        open_image(truncated_jpeg(tmp_path / "cut.jpg"))
    with pytest.raises(UnreadableImage, match="not an image") as info:
        open_image(write(tmp_path / "fake.png", "hello, I am text"))
    assert "\n" not in str(info.value)
    with pytest.raises(UnreadableImage, match="not found"):
        open_image(tmp_path / "missing.png")


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (20, 20)), tmp_path / "big.png")
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        open_image(path, max_pixels=100)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow's own guard fires inside Image.open
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        open_image(path)


# counting and clashes --------------------------------------------------------------------------


def test_count_dataset_per_folder(project):
    d = project.dataset_dir
    save(Image.new("RGB", (4, 4)), d / "a.png")
    write(d / "a.txt", "tag")
    save(Image.new("RGB", (4, 4)), d / "b.jpg")
    write(d / "orphan.txt", "tag")
    write(d / "a.npz")
    write(d / "notes.md")
    write(d / ".DS_Store")
    save(Image.new("RGB", (4, 4)), d / "outfit" / "x.webp")
    write(d / "outfit" / "x.txt", "tag")
    save(Image.new("RGB", (4, 4)), d / "_ignored" / "y.png")
    counts = {c.folder: c for c in count_dataset(project)}
    assert set(counts) == {".", "outfit"}
    top = counts["."]
    assert (top.images, top.captions, top.images_without_caption, top.captions_without_image, top.other_files) == (2, 2, 1, 1, 2)
    total = FolderCount.total(counts.values())
    assert (total.images, total.captions, total.other_files) == (3, 3, 2)


def test_find_stem_clashes(project):
    d = project.dataset_dir
    for name in ("a.png", "a.jpg", "b.png", "sub/c.webp", "sub/c.png", "sub/d.png"):
        save(Image.new("RGB", (4, 4)), d / name)
    assert find_stem_clashes(project) == [[d / "a.jpg", d / "a.png"], [d / "sub/c.png", d / "sub/c.webp"]]


def test_check_images_reports_bad_files_without_stopping(project):
    d = project.dataset_dir
    for i in range(5):
        save(Image.new("RGB", (8, 8)), d / f"ok{i}.png")
    truncated_jpeg(d / "cut.jpg")
    write(d / "sub" / "fake.png", "not a png")
    progress = RecordingProgress()
    bad = check_images(project, progress)
    assert [path for path, _ in bad] == [d / "cut.jpg", d / "sub" / "fake.png"]
    assert "truncated" in bad[0][1] and "not an image" in bad[1][1]
    assert len(progress.logs) == 2 and progress.updates[-1] == (7, 7)


# converting ------------------------------------------------------------------------------------


def test_convert_png_to_jpeg(project):
    d = project.dataset_dir
    save(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), d / "clear.png")
    write(d / "clear.txt", "1girl")
    save(Image.new("RGB", (8, 8)), d / "clash.png")
    save(Image.new("RGB", (8, 8)), d / "clash.jpg")
    write(d / "broken.png", "text")
    save(Image.new("L", (8, 8), 50), d / "sub" / "grey.PNG")
    report = convert_png_to_jpeg(project)

    assert report.changed == ["clear.jpg", "sub/grey.jpg"]
    assert sorted(path for path, _ in report.skipped) == ["broken.png", "clash.png"]
    assert not (d / "clear.png").exists() and (d / "clear.txt").read_text() == "1girl"
    with Image.open(d / "clear.jpg") as jpeg:
        assert jpeg.format == "JPEG"
        assert all(v >= 250 for v in jpeg.getpixel((4, 4)))  # alpha composited on white
    assert (d / "clash.png").exists() and (d / "broken.png").exists()
    assert "trash batch" in report.summary() and "skipped 2" in report.summary()
    assert [b.id for b in list_trash(project)] == [report.trash_batch]

    restored = restore(project, report.trash_batch)
    assert sorted(restored) == ["char/dataset/clear.png", "char/dataset/sub/grey.PNG"]
    assert (d / "clear.png").exists() and (d / "clear.jpg").exists()


def test_convert_cancelled_leaves_every_image_whole(project):
    d = project.dataset_dir
    for i in range(12):
        save(Image.new("RGB", (16, 16), (i, 0, 0)), d / f"{i}.png")
    with pytest.raises(Cancelled):
        convert_png_to_jpeg(project, progress=RecordingProgress(cancel_after=1))
    for i in range(12):
        png, jpg = (d / f"{i}.png").exists(), (d / f"{i}.jpg").exists()
        assert png != jpg, f"image {i}: png={png} jpg={jpg}"
    converted = sum((d / f"{i}.jpg").exists() for i in range(12))
    assert converted >= 1
    assert sum(len(b.items) for b in list_trash(project)) == converted
    assert not list(d.glob(".*.tmp"))


# shrinking -------------------------------------------------------------------------------------


def test_shrink_large_images_halves_and_trashes_originals(project):
    d = project.dataset_dir
    save(noise(1100, 1040), d / "big.jpg", quality=95)
    write(d / "big.txt", "tag")
    save(noise(600, 600), d / "small_side.png")  # over the limit, but halving would go below 512
    save(Image.new("RGB", (1100, 1100)), d / "tiny_file.jpg")  # under the limit
    original_size = (d / "big.jpg").stat().st_size
    progress = RecordingProgress()

    report = shrink_large_images(project, max_megabytes=0.1, progress=progress)

    assert report.changed == ["big.jpg"]
    assert report.skipped == [("small_side.png", "cannot halve without the short side dropping below 512 px")]
    with Image.open(d / "big.jpg") as shrunk:
        assert shrunk.format == "JPEG" and shrunk.size == (550, 520)
    assert (d / "big.jpg").stat().st_size < original_size
    assert (d / "big.txt").exists()
    assert any("still over" in line for line in progress.logs)
    assert not list(d.glob(".*.tmp"))
    restored = restore(project, report.trash_batch)
    assert restored == ["char/dataset/big (2).jpg"]  # the shrunk file keeps its name
    with Image.open(d / "big (2).jpg") as original:
        assert original.size == (1100, 1040)


def test_shrink_repeats_halving_until_under_limit(project):
    d = project.dataset_dir
    save(Image.new("RGB", (4096, 2048), (10, 200, 30)), d / "flat.png")
    size = (d / "flat.png").stat().st_size
    report = shrink_large_images(project, max_megabytes=size / 1024**2 / 20)
    with Image.open(d / "flat.png") as shrunk:
        assert shrunk.format == "PNG"
        assert shrunk.size[1] >= 512 and shrunk.size[0] < 4096
    assert report.changed == ["flat.png"]


# cleaning --------------------------------------------------------------------------------------


def test_clean_dataset_trashes_non_images_only(project):
    d = project.dataset_dir
    save(Image.new("RGB", (4, 4)), d / "a.png")
    write(d / "a.txt", "tag")
    write(d / "a.npz")
    write(d / "notes.md", "x")
    write(d / ".DS_Store")
    write(d / ".a.png.abc123.tmp")
    write(d / "sub" / "readme.pdf")
    write(d / "_keep" / "x.md")
    report = clean_dataset(project)
    assert report.changed == [".DS_Store", ".a.png.abc123.tmp", "notes.md", "sub/readme.pdf"]
    assert sorted(p.name for p in d.iterdir() if p.is_file()) == ["a.npz", "a.png", "a.txt"]
    assert (d / "_keep" / "x.md").exists()
    restore(project, report.trash_batch)
    assert (d / "notes.md").read_text() == "x" and (d / "sub" / "readme.pdf").exists()


def test_empty_dataset_is_fine(project):
    assert clean_dataset(project).trash_batch is None
    assert convert_png_to_jpeg(project).changed == []
    assert shrink_large_images(project).summary().startswith("Shrunk large images: 0 file(s)")
    assert check_images(project) == []
    assert images.find_stem_clashes(project) == []
