import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.trash import list_trash, move_to_trash, restore


def test_trash_moves_image_with_caption_and_restores(project):
    img = project.dataset_dir / "a.png"
    img.write_bytes(b"png")
    (project.dataset_dir / "a.txt").write_text("1girl")
    batch = move_to_trash(project, [img], "duplicate")
    assert not img.exists() and not (project.dataset_dir / "a.txt").exists()
    assert [b.id for b in list_trash(project)] == [batch.id]
    assert sorted(restore(project, batch.id)) == ["testproj/dataset/a.png", "testproj/dataset/a.txt"]
    assert img.read_bytes() == b"png" and (project.dataset_dir / "a.txt").read_text() == "1girl"
    assert list_trash(project) == []


def test_shared_caption_stays_with_the_image_that_stays(project):
    (project.dataset_dir / "a.png").write_bytes(b"png")
    (project.dataset_dir / "a.jpg").write_bytes(b"jpg")
    (project.dataset_dir / "a.txt").write_text("tags")
    move_to_trash(project, [project.dataset_dir / "a.png"], "stem clash")
    assert (project.dataset_dir / "a.txt").exists() and (project.dataset_dir / "a.jpg").exists()


def test_restore_never_overwrites_a_new_file(project):
    img = project.dataset_dir / "a.png"
    img.write_bytes(b"old")
    batch = move_to_trash(project, [img], "test")
    img.write_bytes(b"new")
    restored = restore(project, batch.id)
    assert img.read_bytes() == b"new"
    assert restored == ["testproj/dataset/a (2).png"]


def test_refuses_files_outside_the_root(project, tmp_path):
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    with pytest.raises(UserError, match="outside the projects root"):
        move_to_trash(project, [outside], "x")
    assert outside.exists()


def test_unknown_batch(project):
    with pytest.raises(UserError, match="No trash batch"):
        restore(project, "nope")
    with pytest.raises(UserError, match="not a trash batch"):
        restore(project, "../x")


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os

    from lora_gradio.engine.fsutil import atomic_write_text

    target = tmp_path / "caption.txt"
    atomic_write_text(target, "1girl")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["caption.txt"]
