"""Duplicates: md5 + CLIP embeddings with a tiny CLIP built here (no download), marks, trash, thumbnails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lora_gradio.engine import dedupe, fiftyone_app
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.trash import list_trash, restore
from tests.tiny_clip import build_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def _picture(seed: int, size=(96, 80)) -> Image.Image:
    """A distinct picture: a random background colour with random shapes in random colours."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        box = (x0, y0, x0 + int(rng.integers(10, 40)), y0 + int(rng.integers(10, 40)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return image


@pytest.fixture
def dataset(project):
    """Known images: 00..04 distinct; 05 a byte copy of 00; 06 a re-encoded, resized copy of 01;
    sub/07 a byte copy of 02 in a subfolder; 08 garbage bytes; 09 a truncated JPEG."""
    folder = project.dataset_dir
    for i in range(5):
        _picture(i).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"caption {i}")
    shutil.copyfile(folder / "00.png", folder / "05.png")
    (folder / "05.txt").write_text("caption of the copy")
    _picture(1).resize((90, 75), Image.Resampling.BICUBIC).save(folder / "06.jpg", quality=80)
    (folder / "sub").mkdir()
    shutil.copyfile(folder / "02.png", folder / "sub" / "07.png")
    (folder / "08.png").write_bytes(os.urandom(300))
    _picture(9).save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "09.jpg").write_bytes(data[: len(data) // 2])
    (folder / "full.jpg").unlink()
    return project


def test_exact_copies_grouped_first_kept_and_unreadable_listed(dataset, tiny_clip):
    result = dedupe.find_duplicates(dataset, threshold=0.99999, model=tiny_clip)
    assert result.images == ["00.png", "01.png", "02.png", "03.png", "04.png", "05.png", "06.jpg", "08.png", "09.jpg", "sub/07.png"]
    assert ["00.png", "05.png"] in result.groups
    assert ["02.png", "sub/07.png"] in result.groups  # across dataset folders too
    assert {"05.png", "sub/07.png"} <= result.marked
    assert "00.png" not in result.marked and "02.png" not in result.marked
    assert sorted(p for p, _ in result.unreadable) == ["08.png", "09.jpg"]
    reasons = dict(result.unreadable)
    assert reasons["08.png"].startswith("not an image") and reasons["09.jpg"].startswith("corrupt or truncated")
    assert all(p not in g for g in result.groups for p in ("08.png", "09.jpg"))
    assert "unreadable" in result.summary() and "marked for removal" in result.summary()
    saved = dedupe.load_result(dataset)
    assert saved == result
    on_disk = json.loads(dedupe.result_file(dataset).read_text())
    assert on_disk["marked"] == sorted(result.marked) and on_disk["threshold"] == 0.99999


def test_exact_copies_grouped_whatever_the_threshold(dataset, tiny_clip):
    result = dedupe.find_duplicates(dataset, threshold=1.0, model=tiny_clip)
    assert ["00.png", "05.png"] in result.groups and ["02.png", "sub/07.png"] in result.groups
    assert result.scores[result.groups.index(["00.png", "05.png"])] == [1.0, 1.0]


def test_reencoded_copy_is_more_similar_than_distinct_images(dataset, tiny_clip):
    folder = dataset.dataset_dir
    names = ["00.png", "01.png", "02.png", "03.png", "04.png", "06.jpg"]
    vectors = {names[i]: v for i, v, err in dedupe.embed_images([folder / n for n in names], tiny_clip, batch_size=4) if err is None}
    assert np.allclose([np.linalg.norm(v) for v in vectors.values()], 1.0, atol=1e-5)
    near = float(vectors["01.png"] @ vectors["06.jpg"])
    distinct = [float(vectors[a] @ vectors[b]) for i, a in enumerate(names[:5]) for b in names[i + 1 : 5]]
    distinct += [float(vectors["06.jpg"] @ vectors[n]) for n in ("00.png", "02.png", "03.png", "04.png")]
    assert near > max(distinct), (near, sorted(distinct))

    # A threshold between the two groups the re-encoded copy with its original, and nothing else new.
    between = (near + max(distinct)) / 2
    result = dedupe.find_duplicates(dataset, threshold=between, model=tiny_clip)
    assert ["01.png", "06.jpg"] in result.groups
    assert sorted(map(sorted, result.groups)) == [["00.png", "05.png"], ["01.png", "06.jpg"], ["02.png", "sub/07.png"]]
    assert result.scores[result.groups.index(["01.png", "06.jpg"])][1] == pytest.approx(near, abs=1e-3)

    # The lowest threshold groups every readable image behind the first one.
    everything = dedupe.find_duplicates(dataset, threshold=-1.0, model=tiny_clip)
    assert len(everything.groups) == 1 and everything.groups[0][0] == "00.png"
    assert len(everything.groups[0]) == 8 and len(everything.marked) == 7


def test_embeddings_cached_and_recomputed_only_for_changed_images(dataset, tiny_clip, monkeypatch):
    calls: list[list[str]] = []
    real = dedupe.embed_images

    def spy(paths, *args, **kwargs):
        calls.append(sorted(Path(p).name for p in paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(dedupe, "embed_images", spy)
    first = dedupe.find_duplicates(dataset, model=tiny_clip)
    # Byte copies are embedded once; unreadable files are remembered too (same bytes, same failure).
    assert calls == [["00.png", "01.png", "02.png", "03.png", "04.png", "06.jpg", "08.png", "09.jpg"]]
    calls.clear()
    again = dedupe.find_duplicates(dataset, model=tiny_clip)
    assert calls == []
    assert again.groups == first.groups and again.unreadable == first.unreadable

    # Changing an image (new content, new mtime) recomputes only that image; so does fixing a broken one.
    _picture(42).save(dataset.dataset_dir / "03.png")
    _picture(43).save(dataset.dataset_dir / "08.png")
    calls.clear()
    fixed = dedupe.find_duplicates(dataset, model=tiny_clip)
    assert calls == [["03.png", "08.png"]]
    assert [p for p, _ in fixed.unreadable] == ["09.jpg"]

    # Another model gets its own cache.
    other = Path(tiny_clip).parent / "other_clip"
    if not other.exists():
        shutil.copytree(tiny_clip, other)
    calls.clear()
    dedupe.find_duplicates(dataset, model=str(other))
    assert len(calls[0]) == 8


def test_cache_skips_model_load_when_nothing_changed(project, tiny_clip, monkeypatch):
    for i in range(3):
        _picture(i).save(project.dataset_dir / f"{i}.png")
    dedupe.find_duplicates(project, model=tiny_clip)

    def no_model(*args, **kwargs):
        raise AssertionError("the model should not load when every embedding is cached")

    monkeypatch.setattr(dedupe, "load_clip", no_model)
    assert dedupe.find_duplicates(project, model=tiny_clip).groups == []


def test_marks_toggle_persist_and_validate(dataset, tiny_clip):
    dedupe.find_duplicates(dataset, threshold=1.0, model=tiny_clip)
    result = dedupe.set_marked(dataset, "05.png", False)
    assert "05.png" not in result.marked
    result = dedupe.set_marked(dataset, "03.png", True)
    assert dedupe.load_result(dataset).marked == {"03.png", "sub/07.png"}
    assert dedupe.set_marks(dataset, ["01.png", "08.png"]).marked == {"01.png", "08.png"}
    assert dedupe.load_result(dataset).marked == {"01.png", "08.png"}
    with pytest.raises(UserError, match="not an image of the last duplicate search"):
        dedupe.set_marked(dataset, "nope.png", True)
    with pytest.raises(UserError):
        dedupe.set_marks(dataset, ["../../escape.png"])


def test_marks_need_a_search_first(project):
    with pytest.raises(UserError, match="dedupe"):
        dedupe.set_marked(project, "a.png", True)
    assert dedupe.load_result(project) is None


def test_apply_moves_marked_images_with_captions_to_one_trash_batch(dataset, tiny_clip):
    dedupe.find_duplicates(dataset, threshold=1.0, model=tiny_clip)
    dedupe.set_marked(dataset, "03.png", True)
    report = dedupe.apply_marks(dataset)
    folder = dataset.dataset_dir
    assert sorted(report.moved) == ["03.png", "05.png", "sub/07.png"]
    assert report.sidecars == 2  # 03.txt and 05.txt
    for name in ("03.png", "03.txt", "05.png", "05.txt", "sub/07.png"):
        assert not (folder / name).exists()
    assert (folder / "00.png").exists() and (folder / "00.txt").exists()
    batches = list_trash(dataset)
    assert [b.id for b in batches] == [report.trash_batch]
    assert batches[0].reason == dedupe.TRASH_REASON and len(batches[0].items) == 5
    assert "trash batch" in report.summary()

    after = dedupe.load_result(dataset)
    assert after.marked == set() and after.groups == []
    assert "05.png" not in after.images and "00.png" in after.images
    assert dedupe.apply_marks(dataset).moved == []

    restore(dataset, report.trash_batch)
    for name in ("03.png", "03.txt", "05.png", "05.txt", "sub/07.png"):
        assert (folder / name).exists()
    assert (folder / "05.txt").read_text() == "caption of the copy"


def test_apply_reports_marked_images_already_gone(dataset, tiny_clip):
    dedupe.find_duplicates(dataset, threshold=1.0, model=tiny_clip)
    (dataset.dataset_dir / "05.png").unlink()
    report = dedupe.apply_marks(dataset)
    assert report.missing == ["05.png"] and report.moved == ["sub/07.png"]
    assert "already gone" in report.summary()


def test_thumbnails_cached_and_regenerated_after_a_change(dataset):
    path = dedupe.thumbnail(dataset, "00.png", size=32)
    assert path.parent == dedupe.thumbs_dir(dataset)
    with Image.open(path) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == 32
    made = path.stat().st_mtime_ns
    assert dedupe.thumbnail(dataset, "00.png", size=32) == path
    assert path.stat().st_mtime_ns == made  # reused, not rewritten
    assert dedupe.thumbnail(dataset, "00.png", size=64) != path

    source = dataset.dataset_dir / "00.png"
    _picture(77).save(source)
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert dedupe.thumbnail(dataset, "00.png", size=32) != path

    paths = dedupe.thumbnails(dataset, ["01.png", "08.png", "sub/07.png"], size=32)
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    assert paths[1].name.startswith("unreadable-")  # a placeholder, not a crash
    with pytest.raises(UserError):
        dedupe.thumbnail(dataset, "../../../etc/passwd")


def test_group_embeddings_matches_the_notebook_walk():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 24)).astype(np.float32)
    vectors = np.concatenate([base, base[[3, 3, 17]] + 0.01 * rng.normal(size=(3, 24)).astype(np.float32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    threshold = 0.98

    # The notebook's loop, literally (pairs), as the reference.
    similarity = vectors @ vectors.T
    removed: set[int] = set()
    expected = []
    for i in range(len(vectors)):
        if i in removed:
            continue
        dups = [j for j in range(i + 1, len(vectors)) if similarity[i, j] >= threshold and j not in removed]
        removed.update(dups)
        if dups:
            expected.append([i, *dups])
    got = [members for members, _ in dedupe.group_embeddings(vectors, threshold, block=7)]
    assert got == expected == [[3, 40, 41], [17, 42]]


def test_grouping_5000_random_embeddings_finds_no_false_groups():
    # Speed is measured by benchmarks/dedupe_speed.py; this checks the blocked walk at that size.
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(5000, 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[4999] = vectors[10]  # one planted copy across block boundaries
    groups = [members for members, _ in dedupe.group_embeddings(vectors, 0.985)]
    assert groups == [[10, 4999]]


def test_missing_model_folder_is_a_user_error(dataset):
    with pytest.raises(UserError, match="does not exist"):
        dedupe.find_duplicates(dataset, model=str(dataset.root / "no" / "such_model"))


def test_uncached_repo_offline_says_how_to_get_it(dataset, monkeypatch):
    from transformers import CLIPModel

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(CLIPModel, "from_pretrained", offline)
    with pytest.raises(UserError, match="connect to the internet once.*--model /path/to/folder"):
        dedupe.find_duplicates(dataset, model="someone/not-cached-clip")


def test_folder_without_a_clip_model_is_a_user_error(dataset, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="does not hold a CLIP model"):
        dedupe.find_duplicates(dataset, model=str(tmp_path / "empty"))


def test_bad_threshold_is_a_user_error(dataset, tiny_clip):
    with pytest.raises(UserError, match="0 to 1"):
        dedupe.find_duplicates(dataset, threshold=98.5, model=tiny_clip)


def test_fiftyone_not_installed_explains_how_to_add_it(project, monkeypatch):
    monkeypatch.setattr(fiftyone_app, "fiftyone_available", lambda: False)
    for call in (lambda: fiftyone_app.open_in_fiftyone(project), lambda: fiftyone_app.apply_fiftyone_marks(project)):
        with pytest.raises(UserError, match=r'pip install "lora_gradio\[fiftyone\]"'):
            call()
    fiftyone_app.close_fiftyone()  # nothing open: a no-op


def test_module_import_is_light():
    code = "import sys, lora_gradio.engine.dedupe; print(sorted(m for m in ('torch', 'transformers', 'fiftyone') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.skipif(not fiftyone_app.fiftyone_available(), reason="FiftyOne is optional and not installed")
def test_fiftyone_round_trip(project):
    """With a real FiftyOne (and its MongoDB): marks go out as `delete` tags and come back."""
    import urllib.request

    for i in range(3):
        _picture(i).save(project.dataset_dir / f"{i}.png")
    shutil.copyfile(project.dataset_dir / "0.png", project.dataset_dir / "3.png")
    result = dedupe.DedupeResult(threshold=0.985, model="test", images=["0.png", "1.png", "2.png", "3.png"], groups=[["0.png", "3.png"]], scores=[[1.0, 1.0]], marked={"3.png"})
    dedupe.save_result(project, result)
    try:
        url = fiftyone_app.open_in_fiftyone(project, port=5161)
        import fiftyone as fo

        dataset = fo.load_dataset(fiftyone_app.fiftyone_dataset_name(project))
        tags = dict(zip(dataset.values("dedupe_path"), dataset.values("tags")))
        assert tags == {"0.png": ["has_duplicates"], "3.png": ["delete"], "1.png": [], "2.png": []}
        assert dataset.values("dup_group") == [0, 0, None, None]  # groups first, side by side
        for _ in range(60):
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"the FiftyOne App did not answer at {url}")

        # The person retags in the App: as another client of the database would.
        for sample in dataset.iter_samples(autosave=True):
            sample.tags = ["delete"] if sample["dedupe_path"] in ("1.png", "2.png") else []
        assert fiftyone_app.apply_fiftyone_marks(project).marked == {"1.png", "2.png"}
        assert dedupe.load_result(project).marked == {"1.png", "2.png"}
    finally:
        fiftyone_app.close_fiftyone()
        import fiftyone as fo

        if fo.dataset_exists(fiftyone_app.fiftyone_dataset_name(project)):
            fo.delete_dataset(fiftyone_app.fiftyone_dataset_name(project))


def test_cancel_keeps_the_embeddings_already_computed(dataset, tiny_clip, monkeypatch):
    from lora_gradio.engine.errors import Cancelled
    from lora_gradio.engine.progress import Progress

    class CancelAfterFirstBatch(Progress):
        def __init__(self):
            self.embedded = 0

        def update(self, done, total=None, message="", **data):
            if message.startswith("Computing"):
                self.embedded = done

        def cancelled(self):
            return self.embedded > 0

    with pytest.raises(Cancelled):
        dedupe.find_duplicates(dataset, model=tiny_clip, batch_size=2, progress=CancelAfterFirstBatch())
    assert dedupe.load_result(dataset) is None  # no half result saved

    calls: list[int] = []
    real = dedupe.embed_images
    monkeypatch.setattr(dedupe, "embed_images", lambda paths, *a, **k: (calls.append(len(paths)), real(paths, *a, **k))[1])
    dedupe.find_duplicates(dataset, model=tiny_clip)
    assert calls and calls[0] < 8  # the first batch was kept


def test_cli_prints_groups_and_applies(dataset, tiny_clip, capsys):
    from lora_gradio.cli import main as cli_main

    root, name = str(dataset.root), dataset.name
    assert cli_main(["--root", root, "dedupe", name, "--model", tiny_clip, "--threshold", "0.9999"]) == 0
    out = capsys.readouterr().out
    assert "group 1:" in out and "remove" in out and "--apply" in out
    assert cli_main(["--root", root, "dedupe", name, "--apply-saved"]) == 0
    assert "trash" in capsys.readouterr().out
    assert cli_main(["--root", root, "dedupe", name, "--threshold", "1.5"]) == 2


FIFTYONE_PYTHON = Path(__file__).resolve().parents[1] / ".venv-fiftyone" / "bin" / "python"


@pytest.mark.fiftyone
def test_fiftyone_round_trip_in_its_own_environment():
    """The round trip above, run where a real FiftyOne and its MongoDB are installed (tests/fiftyone-setup.sh)."""
    if not FIFTYONE_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{FIFTYONE_PYTHON} is missing: tests/run.sh makes it")
        pytest.skip("no FiftyOne environment: run tests/fiftyone-setup.sh")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "FIFTYONE_DO_NOT_TRACK": "true"}
    out = subprocess.run(
        [str(FIFTYONE_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_dedupe.py", "-k", "test_fiftyone_round_trip and not own_environment"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]
