"""Safe zip extraction into a project's dataset."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from lora_gradio.engine import archive
from lora_gradio.engine.archive import extract_zip
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Project, Projects


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Projects(tmp_path / "root").create("char")


def png_bytes(color=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_zip(path: Path, entries: dict[str, bytes | str], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its content: to prove a refusal wrote nothing."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def patch_headers(data: bytes, offset_local: int, offset_central: int, fmt: str, value: int) -> bytes:
    """Overwrite a field in every local and central directory header of a zip."""
    out = bytearray(data)
    for signature, offset in ((b"PK\x03\x04", offset_local), (b"PK\x01\x02", offset_central)):
        start = 0
        while (start := out.find(signature, start)) != -1:
            struct.pack_into(fmt, out, start + offset, value)
            start += 4
    return bytes(out)


# happy paths -----------------------------------------------------------------------------------


def test_wrapper_folder_is_stripped_and_junk_skipped(project, tmp_path):
    zip_path = make_zip(tmp_path / "up.zip", {
        "char/1.png": png_bytes(),
        "char/1.txt": "1girl, solo",
        "char/readme.md": "hi",
        "char/.DS_Store": b"x",
        "__MACOSX/char/._1.png": b"x",
    })
    report = extract_zip(project, zip_path)
    d = project.dataset_dir
    assert report.added == ["1.png", "1.txt"]
    assert (d / "1.txt").read_text() == "1girl, solo"
    assert Image.open(d / "1.png").size == (4, 4)
    assert {name for name, _ in report.skipped} == {"char/readme.md", "char/.DS_Store", "__MACOSX/char/._1.png"}
    assert "Added 2 file(s)" in report.summary() and "skipped 3" in report.summary()
    assert not list(project.dataset_root.parent.glob(".extract-*"))


def test_nested_folders_keep_one_level(project, tmp_path):
    zip_path = make_zip(tmp_path / "up.zip", {
        "pack/outfit1/a.png": png_bytes(),
        "pack/outfit1/a.txt": "tag",
        "pack/outfit2/deep/b.jpg": png_bytes(),
        "pack/top.png": png_bytes(),
        "pack/_private/c.png": png_bytes(),
    })
    report = extract_zip(project, zip_path)
    assert report.added == ["outfit1/a.png", "outfit1/a.txt", "outfit2/b.jpg", "top.png"]
    assert report.skipped == [("pack/_private/c.png", "folders starting with '_' are ignored by the dataset tools")]


def test_subfolder_project_flattens(tmp_path):
    project = Projects(tmp_path / "root").create("char/outfit")
    zip_path = make_zip(tmp_path / "up.zip", {"a/1.png": png_bytes(), "b/2.png": png_bytes()})
    extract_zip(project, zip_path)
    assert sorted(p.name for p in project.dataset_dir.iterdir()) == ["1.png", "2.png"]


def test_collisions_are_renamed_with_their_captions(project, tmp_path):
    d = project.dataset_dir
    (d / "1.png").write_bytes(b"old image")
    (d / "1.txt").write_text("old caption")
    (d / "2.jpg").write_bytes(b"old jpg")
    zip_path = make_zip(tmp_path / "up.zip", {
        "1.png": png_bytes(), "1.txt": "new caption",
        "2.png": png_bytes(),  # would share 2.jpg's caption stem
        "3.png": png_bytes(), "3.jpg": png_bytes(),  # a stem clash inside the zip
    })
    report = extract_zip(project, zip_path)
    assert (d / "1.png").read_bytes() == b"old image" and (d / "1.txt").read_text() == "old caption"
    assert (d / "1 (2).txt").read_text() == "new caption" and (d / "1 (2).png").is_file()
    assert (d / "2 (2).png").is_file() and not (d / "2.png").exists()
    assert (d / "3.png").is_file() and (d / "3 (2).jpg").is_file()
    assert dict(report.renamed) == {"1.png": "1 (2).png", "1.txt": "1 (2).txt", "2.png": "2 (2).png", "3.jpg": "3 (2).jpg"}
    assert "renamed 4" in report.summary()


# refusals: nothing is written ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.png", "/abs.png", "C:/win.png", "a\\..\\..\\x.png"])
def test_path_tricks_are_refused(project, tmp_path, name):
    zip_path = make_zip(tmp_path / "up.zip", {"good.png": png_bytes(), name: "x"})
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="Refusing up.zip"):
        extract_zip(project, zip_path)
    assert snapshot(tmp_path) == before


def test_symlink_member_is_refused(project, tmp_path):
    zip_path = tmp_path / "up.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("good.png", png_bytes())
        link = zipfile.ZipInfo("link.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="symbolic link"):
        extract_zip(project, zip_path)
    assert snapshot(tmp_path) == before


def test_bomb_with_true_header_is_refused_by_ratio(project, tmp_path):
    zip_path = make_zip(tmp_path / "up.zip", {"bomb.png": bytes(20 * 1024**2)})
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match="zip bomb"):
        extract_zip(project, zip_path)
    assert snapshot(tmp_path) == before


def test_bomb_with_lying_header_is_refused(project, tmp_path):
    data = make_zip(tmp_path / "honest.zip", {"bomb.png": bytes(5 * 1024**2)}).read_bytes()
    # Claim 1000 bytes uncompressed: passes the ratio and size checks, but the data is 5 MiB.
    lying = patch_headers(data, offset_local=22, offset_central=24, fmt="<I", value=1000)
    zip_path = tmp_path / "up.zip"
    zip_path.write_bytes(lying)
    before = snapshot(project.root)
    with pytest.raises(UserError):
        extract_zip(project, zip_path)
    assert snapshot(project.root) == before
    assert not list(project.dataset_root.parent.glob(".extract-*"))


def test_real_bytes_are_counted_while_streaming(project, tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "_check_sizes", lambda *args: None)  # as if the header had lied
    zip_path = make_zip(tmp_path / "up.zip", {"a.png": png_bytes(), "b.png": bytes(5000)})
    before = snapshot(project.root)
    with pytest.raises(UserError, match="zip bomb"):
        extract_zip(project, zip_path, max_total_bytes=2000)
    assert snapshot(project.root) == before


def test_total_size_cap_and_member_count(project, tmp_path, monkeypatch):
    zip_path = make_zip(tmp_path / "up.zip", {"a.png": png_bytes(), "b.png": png_bytes()}, zipfile.ZIP_STORED)
    with pytest.raises(UserError, match="over the .* limit"):
        extract_zip(project, zip_path, max_total_bytes=100)
    monkeypatch.setattr(archive, "MAX_MEMBERS", 1)
    with pytest.raises(UserError, match="entries"):
        extract_zip(project, zip_path)
    assert list(project.dataset_dir.iterdir()) == []


def test_not_a_zip_corrupt_and_encrypted(project, tmp_path):
    text = tmp_path / "notes.zip"
    text.write_text("not a zip")
    with pytest.raises(UserError, match="not a zip file"):
        extract_zip(project, text)
    whole = make_zip(tmp_path / "whole.zip", {"a.png": png_bytes()}).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="not a zip file or is damaged"):
        extract_zip(project, cut)
    encrypted = tmp_path / "enc.zip"
    encrypted.write_bytes(patch_headers(whole, offset_local=6, offset_central=8, fmt="<H", value=1))
    with pytest.raises(UserError, match="encrypted"):
        extract_zip(project, encrypted)
    with pytest.raises(UserError, match="does not exist"):
        extract_zip(project, tmp_path / "missing.zip")
    assert list(project.dataset_dir.iterdir()) == []


def test_failure_while_placing_takes_everything_back(project, tmp_path, monkeypatch):
    d = project.dataset_dir
    (d / "keep.png").write_bytes(b"mine")
    real_move = archive._move_no_overwrite
    calls = []

    def failing_move(source, destination):
        calls.append(destination)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_move(source, destination)

    monkeypatch.setattr(archive, "_move_no_overwrite", failing_move)
    zip_path = make_zip(tmp_path / "up.zip", {"x/1.png": png_bytes(), "x/2.png": png_bytes(), "y/3.png": png_bytes()})
    with pytest.raises(UserError, match="nothing was added"):
        extract_zip(project, zip_path)
    assert snapshot(d) == {"keep.png": b"mine"}
    assert sorted(p.name for p in d.iterdir()) == ["keep.png"]
    assert not list(project.dataset_root.parent.glob(".extract-*"))
