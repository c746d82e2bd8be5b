"""Links inside a dataset: every stage skips them with one message and never writes through them.

The rule (fsutil.folder_entries, the one listing every stage uses): a symbolic link inside a dataset
folder, to a file or to a folder, is neither read nor written; the stage names the links once and
says to copy the real files in. Writing stages would otherwise write beside the real files, outside
the projects root (a JPEG, a temporary file, a caption, a trashed original).
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from lora_gradio.cli import main as cli_main
from lora_gradio.engine import images, tags
from lora_gradio.engine.archive import extract_zip
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.engine.uploads import import_uploads

pytestmark = pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")


def noise(width: int, height: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))


def save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder` (links not followed): its bytes, or where a link points."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_file():
                out[rel] = path.read_bytes()
    return out


@pytest.fixture
def world(tmp_path: Path):
    """A project `char` whose dataset holds real images, a linked folder and linked files.

    The links point outside the projects root (`outside/`) and into another project's dataset
    inside the root (`other`), whose files must not be converted, shrunk or trashed either.
    """
    root = tmp_path / "root"
    projects = Projects(root)
    project = projects.create("char")
    other = projects.create("other")
    outside = tmp_path / "outside"
    save(noise(64, 64), outside / "a.png")
    save(noise(1100, 1100), outside / "big.png")
    (outside / "a.txt").write_text("1girl, smile")
    (outside / "notes.md").write_text("notes")
    save(noise(64, 64), outside / "linked.png")
    save(noise(64, 64), other.dataset_dir / "theirs.png")
    (other.dataset_dir / "theirs.txt").write_text("theirs, smile")

    d = project.dataset_dir
    save(noise(64, 64), d / "own.png")
    (d / "own.txt").write_text("1girl, smile")
    save(noise(1100, 1100), d / "huge.png")
    save(noise(64, 64), d / "real" / "r.png")
    (d / "sub").symlink_to(outside, target_is_directory=True)
    (d / "file.png").symlink_to(outside / "linked.png")
    (d / "junk.md").symlink_to(outside / "notes.md")
    (d / "stolen.png").symlink_to(other.dataset_dir / "theirs.png")
    (d / "stolen.txt").symlink_to(other.dataset_dir / "theirs.txt")
    (d / "real" / "deep").symlink_to(outside, target_is_directory=True)
    return root, project, other, outside


def guarded(world) -> dict[str, dict]:
    root, project, other, outside = world
    return {"outside": tree(outside), "other": tree(other.dataset_dir), "links": {k: v for k, v in tree(project.dataset_dir).items() if isinstance(v, str)}}


LINKS = ["file.png", "junk.md", "real/deep", "stolen.png", "stolen.txt", "sub"]


def says_links(text: str) -> bool:
    return "link" in text and "copy the real files" in text and all(name in text for name in ("file.png", "sub"))


def test_hygiene_commands_skip_links_and_finish(world, capsys):
    root, project, _, _ = world
    before = guarded(world)
    for action in (["to-jpeg"], ["shrink", "--max-mb", "1"], ["clean"], ["check"]):
        code = cli_main(["--root", str(root), "dataset", *action, "char"])
        captured = capsys.readouterr()
        assert code == 0, (action, captured.err)
        assert says_links(captured.out + captured.err), (action, captured.out, captured.err)
        assert guarded(world) == before, action  # nothing outside the dataset changed, links still there
    d = project.dataset_dir
    # The real files were all handled: converted, shrunk, and nothing stopped half way.
    assert (d / "own.jpg").is_file() and not (d / "own.png").exists()
    assert (d / "real" / "r.jpg").is_file()
    assert (d / "huge.jpg").stat().st_size <= 1024 * 1024
    assert not [p for p in d.rglob(".*.tmp")]


def test_engine_listings_skip_links(world):
    _, project, _, _ = world
    assert project.dataset_dir / "sub" not in images.dataset_folders(project)
    assert images.dataset_links(project) == [project.dataset_dir / rel for rel in LINKS]
    total = images.FolderCount.total(images.count_dataset(project))
    assert (total.images, total.captions, total.other_files) == (3, 1, 0)
    assert images.find_stem_clashes(project) == []
    report = images.clean_dataset(project)
    assert report.changed == [] and says_links(report.summary())


def test_convert_does_not_replace_a_linked_jpeg(world):
    _, project, _, outside = world
    d = project.dataset_dir
    save(noise(32, 32), outside / "pair.jpg")
    save(noise(32, 32), d / "pair.png")
    (d / "pair.jpg").symlink_to(outside / "pair.jpg")
    report = images.convert_png_to_jpeg(project)
    assert (d / "pair.jpg").is_symlink() and (d / "pair.png").is_file()
    assert "pair.png" in [path for path, _ in report.skipped]


def test_tag_edits_and_listings_skip_links(world):
    _, project, other, outside = world
    before = guarded(world)
    report = tags.curate(project, activation="char_act", remove="smile")
    assert report.changed == ["own.txt"] and says_links(report.summary())
    assert guarded(world) == before
    assert tags.caption_files(project) == [project.dataset_dir / "own.txt"]
    assert tags.image_list(project) == ["huge.png", "own.png", "real/r.png"]
    assert tags.tag_counts(project) == [("1girl", 1), ("char_act", 1)]
    assert any(says_links(p) for p in tags.caption_problems(project))
    tags.undo(project)
    assert guarded(world) == before


def test_caption_editor_refuses_paths_through_links(world):
    _, project, _, outside = world
    before = guarded(world)
    for rel in ("sub/a.png", "file.png", "real/deep/a.png"):
        with pytest.raises(UserError, match="link"):
            tags.set_image_caption(project, rel, "written outside")
        with pytest.raises(UserError, match="link"):
            tags.image_caption(project, rel)
    assert guarded(world) == before


def test_undo_never_writes_through_a_folder_that_became_a_link(tmp_path):
    project = Projects(tmp_path / "root").create("char")
    d = project.dataset_dir
    save(noise(16, 16), d / "sub" / "x.png")
    (d / "sub" / "x.txt").write_text("a, b")
    tags.remove_tags(project, "b")
    moved = tmp_path / "moved"
    (d / "sub").rename(moved)  # the user moved the folder away and linked it back
    (d / "sub").symlink_to(moved, target_is_directory=True)
    before = tree(moved)
    with pytest.raises(UserError, match="link"):
        tags.undo(project, force=True)
    assert tree(moved) == before


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    noise(8, 8).save(buffer, format="PNG")
    return buffer.getvalue()


def test_zip_never_extracts_into_a_linked_folder(world, tmp_path):
    _, project, _, _ = world
    before = guarded(world)
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("top.png", png_bytes())
        z.writestr("sub/new.png", png_bytes())
        z.writestr("sub/new.txt", "from the zip")
    report = extract_zip(project, archive)
    assert guarded(world) == before
    assert report.added == ["top.png"]
    assert [name for name, _ in report.skipped] == ["sub/new.png", "sub/new.txt"]
    assert all("link" in reason for _, reason in report.skipped)


def test_uploads_never_write_into_a_linked_dataset_subfolder(world, tmp_path):
    root, project, _, outside = world
    before = guarded(world)
    upload = save(noise(16, 16), tmp_path / "up" / "fresh.png")
    sub = Projects(root).open("char/sub")
    with pytest.raises(UserError, match="link"):
        import_uploads(sub, [str(upload)])
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("fresh.png", png_bytes())
    with pytest.raises(UserError, match="link"):
        extract_zip(sub, archive)
    assert guarded(world) == before


def test_training_listing_skips_links(world):
    from lora_gradio.engine.train.data import _list_images

    _, project, _, _ = world
    d = project.dataset_dir
    assert _list_images(d) == [d / "huge.png", d / "own.png"]
    assert _list_images(d / "real") == [d / "real" / "r.png"]
