"""Small real image files for tests."""

from pathlib import Path

from PIL import Image


def make_image(path: Path, size=(64, 48), colour=(200, 30, 30), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return path
