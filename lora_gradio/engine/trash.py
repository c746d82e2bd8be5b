"""The project's trash: nothing the user made is deleted, only moved here, and can be restored.

Each call to `move_to_trash` makes one batch folder ``<config>/_trash/<batch id>/`` holding
the files under their root-relative paths and a ``manifest.json`` that records where each
came from. The manifest is written before anything moves and after each step, so a crash
in the middle leaves every file either in place or recorded in the trash.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import (
    IMAGE_EXTENSIONS, SIDECAR_EXTENSIONS, atomic_write_text, is_link, link_on_path, move_file, read_user_json, sortable_id, unique_path,
)
from lora_gradio.engine.project import Project

MANIFEST = "manifest.json"


def trash_lock_file(project: Project) -> Path:
    from lora_gradio.engine.project import LOCKS_FOLDER

    return project.config_dir / LOCKS_FOLDER / "trash.lock"


def trash_lock(project: Project):
    """Moves into and out of the trash take turns across threads and processes (a page, a command line,
    a job): two restores of one batch, or a restore racing a move, would otherwise both move one file."""
    from lora_gradio.engine.locks import exclusive

    return exclusive(trash_lock_file(project), f"The trash of project {project.base!r}")


@dataclass
class TrashItem:
    original: str  # path relative to the projects root
    stored: str  # path relative to the batch folder
    restored: bool = False


@dataclass
class TrashBatch:
    id: str
    reason: str
    created: str
    items: list[TrashItem] = field(default_factory=list)
    folder: Path = Path()

    @property
    def pending(self) -> list[TrashItem]:
        return [item for item in self.items if not item.restored]


def _sidecars(image: Path, leaving: set[Path]) -> list[Path]:
    """Caption and cache files of `image`, unless another image that stays shares its stem."""
    siblings = [image.with_suffix(ext) for ext in IMAGE_EXTENSIONS if ext != image.suffix.lower()]
    if any(s.exists() and s not in leaving for s in siblings):
        return []  # a png and a jpg with one stem share the caption: keep it for the one that stays
    return [image.with_suffix(ext) for ext in SIDECAR_EXTENSIONS if image.with_suffix(ext).is_file() and not is_link(image.with_suffix(ext))]


def _save(batch: TrashBatch) -> None:
    data = {"id": batch.id, "reason": batch.reason, "created": batch.created, "items": [item.__dict__ for item in batch.items]}
    atomic_write_text(batch.folder / MANIFEST, json.dumps(data, indent=1))


def new_batch(project: Project, reason: str) -> TrashBatch:
    """An empty batch; its folder appears with the first file added (see `add_to_batch`)."""
    now = _dt.datetime.now()
    batch = TrashBatch(id=sortable_id(), reason=reason, created=now.isoformat(timespec="seconds"))
    batch.folder = project.trash_dir / batch.id
    return batch


def add_to_batch(project: Project, batch: TrashBatch, paths: Iterable[Path], with_sidecars: bool = True) -> None:
    """Move files (and, for images, their captions) into `batch`.

    Work that replaces files one by one (convert, shrink) adds each original as soon as its
    replacement is written, so an interruption leaves every earlier file properly trashed.
    """
    # Not resolve(): a link's target may lie in another project or outside the root, and the trash
    # moves the names it is given, never what they point at.
    files = [Path(os.path.abspath(p)) for p in paths]
    for path in files:
        if project.root not in path.parents:
            raise UserError(f"Refusing to trash {path}: it is outside the projects root {project.root}.")
        link = link_on_path(path, project.root)
        if link is not None:
            raise UserError(f"Refusing to trash {path}: {link} is a link, and the trash never moves files through links.")
    with trash_lock(project):
        _add_to_batch(project, batch, files, with_sidecars)


def _add_to_batch(project: Project, batch: TrashBatch, files: list[Path], with_sidecars: bool) -> None:
    for path in files:
        if project.root not in path.parents:
            raise UserError(f"Refusing to trash {path}: it is outside the projects root {project.root}.")
        if not path.is_file():
            raise UserError(f"Cannot trash {path}: it is not a file (already moved?).")
    leaving = set(files)
    if with_sidecars:
        for path in list(files):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                for extra in _sidecars(path, leaving):
                    if extra not in leaving:
                        leaving.add(extra)
                        files.append(extra)
    if not files:
        return
    items = [TrashItem(original=project.relative(p), stored="files/" + project.relative(p)) for p in files]
    batch.folder.mkdir(parents=True, exist_ok=True)
    batch.items.extend(items)
    _save(batch)  # recorded before moving: a crash leaves each file in place or in the trash
    for item in items:
        move_file(project.root / item.original, batch.folder / item.stored)


def move_to_trash(project: Project, paths: Iterable[Path], reason: str, with_sidecars: bool = True) -> TrashBatch:
    """Move files (and, for images, their captions) into a new trash batch; return it."""
    batch = new_batch(project, reason)
    add_to_batch(project, batch, paths, with_sidecars)
    return batch


def load_batch(project: Project, batch_id: str) -> TrashBatch:
    folder = project.trash_dir / batch_id
    if "/" in batch_id or "\\" in batch_id or batch_id.startswith("."):
        raise UserError(f"{batch_id!r} is not a trash batch id.")
    fix = f"its files are still in {folder}: move them back by hand"
    try:
        data = read_user_json(folder / MANIFEST, "The trash batch record", fix)
    except FileNotFoundError:
        raise UserError(f"No trash batch {batch_id!r} in project {project.name!r}: list them with `lora-gradio dataset trash {project.base}`.") from None
    try:
        batch = TrashBatch(id=data["id"], reason=data["reason"], created=data["created"], folder=folder)
        batch.items = [TrashItem(**item) for item in data["items"]]
    except (KeyError, TypeError):
        raise UserError(f"The trash batch record {folder / MANIFEST} is damaged: {fix}.") from None
    return batch


def list_trash(project: Project) -> list[TrashBatch]:
    """Batches that still hold something, newest first."""
    if not project.trash_dir.is_dir():
        return []
    batches = []
    for p in sorted(project.trash_dir.iterdir(), reverse=True):
        if (p / MANIFEST).is_file():
            try:
                batches.append(load_batch(project, p.name))
            except UserError:
                continue  # a record cut short by a crash: `load_batch` says so when it is asked for by id
    return [b for b in batches if b.pending]


def restore(project: Project, batch_id: str) -> list[str]:
    """Put a batch's files back where they were; return the root-relative paths written.

    If a file of the same name has appeared there since, the restored one gets a
    ``name (2).ext`` name instead of overwriting it.
    """
    with trash_lock(project):
        return _restore(project, load_batch(project, batch_id))


def _restore(project: Project, batch: TrashBatch) -> list[str]:
    restored: list[str] = []
    for item in batch.pending:
        stored = batch.folder / item.stored
        if not stored.is_file():
            continue
        link = link_on_path(project.root / item.original, project.root)
        if link is not None:
            raise UserError(f"Cannot restore {item.original}: {link} is now a link, and nothing is restored through links. "
                            "Replace the link with a real folder, then restore again.")
        target = unique_path(project.root / item.original)
        move_file(stored, target)
        item.restored = True
        restored.append(project.relative(target))
        _save(batch)
    return restored
