"""Add files a person uploaded (or named on the command line) to a project's dataset.

Zips go through archive.extract_zip; loose images are decoded first so a broken or
mislabelled file never lands in the dataset; nothing already there is overwritten, and
nothing is written through or over a link (a linked NAME/SUB dataset folder is refused; an image
never takes a name a link holds, even a broken one; a caption named like a link is skipped).
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lora_gradio.engine.archive import LINK_REASON, AddReport, extract_zip, refuse_linked_dataset
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import (
    CAPTION_EXTENSIONS,
    IMAGE_EXTENSIONS,
    SIDECAR_EXTENSIONS,
    atomic_path,
    is_image_file,
    is_link,
    unique_path,
    unique_stem_path,
)
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.project import Project


def _readable(path: Path) -> "str | None":
    """None if `path` decodes as an image, else the reason it does not."""
    from lora_gradio.engine.images import open_image

    try:
        open_image(path)
        return None
    except UserError as exc:
        return str(exc)


def _rel(project: Project, path: Path) -> str:
    return path.relative_to(project.dataset_dir).as_posix()


def _stem_has_link(path: Path) -> bool:
    """A link (even a broken one, which `exists()` misses) holds this name or a sidecar of its stem."""
    return any(is_link(path.with_suffix(ext)) for ext in (path.suffix, *IMAGE_EXTENSIONS, *SIDECAR_EXTENSIONS))


def _free_stem_path(path: Path) -> Path:
    """`unique_stem_path`, also stepping over names that links hold, so a link is never replaced."""
    candidate, n = unique_stem_path(path), 2
    while _stem_has_link(candidate):
        candidate = unique_stem_path(path.with_name(f"{path.stem} ({n}){path.suffix}"))
        n += 1
    return candidate


def _copy_new(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def import_uploads(project: Project, paths: list[str], progress: "Progress | None" = None) -> AddReport:
    """Copy images and captions into `project.dataset_dir` and unpack zips there."""
    progress = progress or Progress()
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise UserError(f"These uploads are gone (the page was reloaded?): {', '.join(missing[:3])}. Upload them again.")
    refuse_linked_dataset(project)
    report = AddReport()
    empty = [p for p in files if p.stat().st_size == 0]
    for p in empty:
        report.skipped.append((p.name, "empty file (was the upload still running?): upload it again"))
    files = [p for p in files if p not in empty]
    target = project.dataset_dir
    target.mkdir(parents=True, exist_ok=True)
    zips = [p for p in files if p.suffix.lower() == ".zip"]
    images = [p for p in files if is_image_file(p)]
    captions = {p.stem: p for p in files if p.suffix.lower() in CAPTION_EXTENSIONS}
    for other in files:
        if other not in zips and other not in images and other.suffix.lower() not in CAPTION_EXTENSIONS:
            report.skipped.append((other.name, "not an image, caption or .zip"))
    total = len(files)
    done = 0

    for archive in zips:
        progress.check_cancel()
        result = extract_zip(project, archive, progress=progress)
        report.added.extend(result.added)
        report.renamed.extend(result.renamed)
        report.skipped.extend(result.skipped)
        done += 1
        progress.update(done, total, f"unpacked {archive.name}")

    with ThreadPoolExecutor() as pool:
        problems = dict(zip(images, pool.map(_readable, images)))
    for image in images:
        progress.check_cancel()
        done += 1
        if problems[image]:
            report.skipped.append((image.name, problems[image]))
            progress.log(f"skipped {image.name}: {problems[image]}")
            continue
        placed = _free_stem_path(target / image.name)
        _copy_new(image, placed)
        report.added.append(_rel(project, placed))
        if placed.name != image.name:
            report.renamed.append((image.name, placed.name))
        caption = captions.pop(image.stem, None)
        if caption is not None:  # the caption follows its image's (possibly new) name
            caption_target = placed.with_suffix(caption.suffix)  # free: the stem was checked above
            _copy_new(caption, caption_target)
            report.added.append(_rel(project, caption_target))
            done += 1
        progress.update(done, total, f"added {image.name}")

    for caption in captions.values():  # captions for images already in the dataset
        existing = target / caption.name
        if is_link(existing):
            report.skipped.append((caption.name, f"a link of that name is in the dataset: {LINK_REASON}"))
            continue
        if existing.exists() and existing.read_bytes() == caption.read_bytes():
            report.skipped.append((caption.name, "identical caption already there"))
            continue
        placed = unique_path(existing)
        _copy_new(caption, placed)
        report.added.append(_rel(project, placed))
        if placed != existing:
            report.renamed.append((caption.name, placed.name))
        done += 1
    progress.update(total, total, "done")
    return report
