"""Caption-file edits and tag statistics: the Dataset Maker notebook's "Curate your tags" cell.

Every caption is a `.txt` file beside its image holding comma separated tags ("a, b, c").
The edits reproduce the notebook's semantics, in the notebook's order when combined
(`curate`): remove duplicates, sort, remove tags, search and replace, activation tags first.

Tags are compared after normalising: `_` becomes a space (except in kaomoji such as `^_^`
or `o_o`), `\\(` becomes `(`, runs of spaces collapse and case is ignored. A kept tag keeps
the spelling it had in the file; an added tag is written as the user typed it.

Every edit writes atomically and, before changing anything, saves an undo snapshot of the
files it will change in `config_dir/_tags_undo/<id>/` (the original bytes plus a
`manifest.json` that also records a SHA-256 of what the edit wrote to each file). `undo`
restores the newest snapshot exactly and removes it; undo again to go further back.

Undo never destroys work: a caption changed since the edit it undoes (edited by hand, tagged
again, removed) is neither as the edit left it nor as it was before, so `undo` refuses, names
those files and changes nothing. `undo(force=True)` (`tags NAME --undo --force`) first saves the
current versions of every file it restores as a new snapshot, so the forced undo can itself be
undone. Undo never writes through a link (see `fsutil.folder_entries`).

Caption edits and undo of one project take turns, across processes too: each holds the lock
`config_dir/.locks/captions.lock` (locks.exclusive) from reading the captions to writing them.
Links inside the dataset are skipped, as every stage skips them, and named in the report.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterable, Sequence

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import (
    IMAGE_EXTENSIONS,
    atomic_write_bytes,
    atomic_write_text,
    is_link,
    link_on_path,
    links_notice,
    sortable_id,
)
from lora_gradio.engine.images import DatasetListing, list_dataset
from lora_gradio.engine.locks import exclusive
from lora_gradio.engine.progress import first_few
from lora_gradio.engine.project import Project

CAPTION_SUFFIX = ".txt"
UNDO_FOLDER = "_tags_undo"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: each file also records the SHA-256 before and after the edit
LOCK_FILE = "captions.lock"  # in config_dir/.locks: one caption writer at a time, across processes
SEPARATOR = ", "
MODES = ("OR", "AND")
SECTION = "tags"  # settings file section: the activation tag, for the Train and Test tabs

# The WD tagger's kaomoji: their underscores are part of the face, not word separators.
KAOMOJI = frozenset(
    {
        "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
        ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||", "-_-", ";_;", "t_t", "o_0", "0_o",
    }
)
_WORDISH = re.compile(r"[^\W\d_]{2,}")


# Tags ------------------------------------------------------------------------------------------


def is_kaomoji(tag: str) -> bool:
    """True for faces such as `^_^`, `o_o`, `>_<`: the known list, or short tags with `_`, symbols and no word."""
    t = tag.strip().lower()
    if t in KAOMOJI:
        return True
    symbols = set(t) - set("_ ") - {c for c in t if c.isalnum()}
    return "_" in t and len(t) <= 7 and bool(symbols) and not _WORDISH.search(t)


def display_tag(tag: str) -> str:
    """A booru/tagger tag as captions write it: `long_hair` -> `long hair`; kaomoji keep their `_`."""
    tag = tag.strip()
    return tag if is_kaomoji(tag) else tag.replace("_", " ")


def tag_key(tag: str) -> str:
    """The form tags are compared in: `Long_Hair` and `long hair` are the same tag; `^_^` stays."""
    t = tag.strip()
    if not is_kaomoji(t):
        t = t.replace("_", " ")
    t = t.replace("\\(", "(").replace("\\)", ")")
    return " ".join(t.split()).lower()


def split_tags(text: str) -> list[str]:
    """Comma (or line) separated text into tags, stripped, empty ones dropped (the notebook's split)."""
    return [s.strip() for s in text.replace("\r", "\n").replace("\n", ",").split(",") if s.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return SEPARATOR.join(tags)


def _decode(data: bytes) -> tuple[str, bool]:
    """(text, clean): utf-8 with a BOM tolerated; undecodable bytes become U+FFFD and clean is False."""
    try:
        text, clean = data.decode("utf-8"), True
    except UnicodeDecodeError:
        text, clean = data.decode("utf-8", errors="replace"), False
    return text.removeprefix("\ufeff"), clean


def read_tags(path: Path) -> list[str]:
    """The tags of one caption file ([] if it is missing); bad bytes are replaced, never fatal."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return split_tags(_decode(data)[0])


def write_tags(path: Path, tags: Sequence[str]) -> None:
    """Write `tags` as `a, b, c`, atomically."""
    atomic_write_text(Path(path), join_tags(tags))


def _index(tags: Sequence[str], key: str) -> int:
    for i, tag in enumerate(tags):
        if tag_key(tag) == key:
            return i
    return -1


def _has(tags: Sequence[str], key: str) -> bool:
    return _index(tags, key) >= 0


def _without(tags: Sequence[str], keys: Iterable[str]) -> list[str]:
    drop = set(keys)
    return [t for t in tags if tag_key(t) not in drop]


def _unique_by_key(tags: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for tag in tags:
        key = tag_key(tag)
        if key not in seen:
            seen.add(key)
            out.append(tag)
    return out


# The edits on one list of tags (pure functions: what the tests pin down) ----------------------


def put_first(tags: Sequence[str], activation: Sequence[str]) -> list[str]:
    """Activation tags removed wherever they are and put at the start, in the given order."""
    activation = _unique_by_key(activation)
    return [*activation, *_without(tags, (tag_key(a) for a in activation))]


def remove_from(tags: Sequence[str], remove: Sequence[str]) -> list[str]:
    return _without(tags, (tag_key(r) for r in remove))


def replace_in(
    tags: Sequence[str], search: Sequence[str], replace: Sequence[str], mode: str = "OR", new_as_activation: bool = False
) -> tuple[list[str], bool]:
    """The notebook's search and replace on one file: (new tags, whether the file matched).

    A file matches when it holds any (OR) or all (AND) of the searched tags. In a match the
    searched tags are removed; replacement tags that were also searched are added back at the
    end; the new ones are added at the end if missing, or with `new_as_activation` moved to the
    start in the given order (they become the file's activation tags).
    """
    search_keys = _unique_by_key(search)
    keys = [tag_key(s) for s in search_keys]
    present = [_has(tags, k) for k in keys]
    matched = bool(keys) and (all(present) if mode == "AND" else any(present))
    if not matched:
        return list(tags), False
    out = _without(tags, keys)
    replace = _unique_by_key(replace)
    again = [r for r in replace if tag_key(r) in keys]
    new = [r for r in replace if tag_key(r) not in keys]
    for tag in again:
        if not _has(out, tag_key(tag)):
            out.append(tag)
    if new_as_activation:
        out = put_first(out, new)
    else:
        for tag in new:
            if not _has(out, tag_key(tag)):
                out.append(tag)
    return out, True


def sorted_tags(tags: Sequence[str], keep_first: int = 0) -> list[str]:
    """Alphabetical (by the compared form), the first `keep_first` tags left in place."""
    keep_first = max(0, int(keep_first))
    head, rest = list(tags[:keep_first]), list(tags[keep_first:])
    return head + sorted(rest, key=lambda t: (tag_key(t), t))


def deduped(tags: Sequence[str]) -> list[str]:
    """Duplicate tags (in the compared form) removed, keeping each first occurrence."""
    return _unique_by_key(tags)


# Reports ---------------------------------------------------------------------------------------


@dataclass
class TagReport:
    """What an edit did. `summary()` is the one line the page and the command line show."""

    project: str
    action: str
    total: int = 0  # caption files looked at
    changed: list[str] = field(default_factory=list)  # relative to the dataset folder
    matched: int = 0  # search and replace: files that matched
    undo_id: str | None = None
    skipped: list[str] = field(default_factory=list)  # "file: reason"
    restored: bool = False  # an undo
    links_notice: str = ""  # the links in the dataset that were skipped, named once

    def summary(self) -> str:
        if self.restored:
            text = f"Undid {self.action!r}: restored {len(self.changed)} caption file(s)."
            if self.undo_id:
                text += " The versions it replaced were saved first: undo again to get them back."
        else:
            text = f"Changed {len(self.changed)} of {self.total} caption files"
            if self.undo_id:
                text += f" (undo: tags {self.project} --undo)"
            text += "."
        if self.skipped:
            text += f" Skipped {len(self.skipped)} unreadable file(s) ({first_few(self.skipped)}): save them as UTF-8 text and run again."
        if self.links_notice:
            text += " " + self.links_notice
        return text


@dataclass
class UndoSnapshot:
    id: str
    operation: str
    project: str
    created: str
    files: list[str]
    folder: Path

    def summary(self) -> str:
        return f"{self.created}  {self.operation}  ({len(self.files)} file(s))"


# Files -----------------------------------------------------------------------------------------


def _captions_in(listing: DatasetListing) -> list[Path]:
    return [p for p in listing.all_files() if p.suffix.lower() == CAPTION_SUFFIX and not p.name.startswith(".")]


def caption_files(project: Project) -> list[Path]:
    """Every `.txt` caption in the project's dataset folder and its subfolders, sorted (links skipped)."""
    return _captions_in(list_dataset(project))


def _image_files(project: Project) -> list[Path]:
    return [p for p in list_dataset(project).all_files() if p.suffix.lower() in IMAGE_EXTENSIONS]


def _rel(project: Project, path: Path) -> str:
    return path.relative_to(project.dataset_dir).as_posix()


def orphan_captions(project: Project) -> list[Path]:
    """Caption files with no image of the same name beside them."""
    images = {(p.parent, p.stem) for p in _image_files(project)}
    return [p for p in caption_files(project) if (p.parent, p.stem) not in images]


def empty_captions(project: Project) -> list[Path]:
    """Caption files that hold no tags."""
    return [p for p in caption_files(project) if not read_tags(p)]


def untagged_images(project: Project) -> list[Path]:
    """Images with no caption file."""
    captions = {(p.parent, p.stem) for p in caption_files(project)}
    return [p for p in _image_files(project) if (p.parent, p.stem) not in captions]


def undecodable_captions(project: Project) -> list[Path]:
    """Caption files that are not valid UTF-8 (or cannot be read at all)."""
    bad = []
    for path in caption_files(project):
        try:
            if not _decode(path.read_bytes())[1]:
                bad.append(path)
        except OSError:
            bad.append(path)
    return bad


def caption_problems(project: Project) -> list[str]:
    """One sentence per kind of caption trouble, each saying how to fix it; [] when all is well."""
    found = []
    checks = (
        (untagged_images, "image(s) have no caption file", "tag them (existing captions are skipped) or write one in the editor"),
        (empty_captions, "caption file(s) are empty", "tag those images again with 'overwrite', or write tags in the editor"),
        (orphan_captions, "caption file(s) have no image", "they are not used for training; move them to the trash with the clean-up above"),
        (undecodable_captions, "caption file(s) are not UTF-8 text", "open and save them as UTF-8"),
    )
    for check, what, fix in checks:
        paths = check(project)
        if paths:
            found.append(f"{len(paths)} {what} ({first_few([_rel(project, p) for p in paths])}): {fix}.")
    notice = list_dataset(project).notice()
    if notice:
        found.append(notice)
    return found


def image_list(project: Project, having: str = "") -> list[str]:
    """The dataset's images relative to the dataset folder, sorted; with `having`, only those whose
    caption holds every one of those tags (spelling with spaces or underscores alike)."""
    wanted = [tag_key(t) for t in split_tags(having)]
    out = []
    for path in _image_files(project):
        if wanted:
            try:
                keys = {tag_key(t) for t in read_tags(path.with_suffix(CAPTION_SUFFIX))}
            except OSError:
                keys = set()
            if not all(w in keys for w in wanted):
                continue
        out.append(_rel(project, path))
    return out


# Statistics ------------------------------------------------------------------------------------


def tag_counts(project: Project) -> list[tuple[str, int]]:
    """(tag, files holding it), most common first then by name; a tag counts once per file.

    Spellings of one tag (`long_hair`, `long hair`) count together under the most common one.
    """
    counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = {}
    for path in caption_files(project):
        try:
            tags = read_tags(path)
        except OSError:
            continue
        for tag in deduped(tags):
            key = tag_key(tag)
            counts[key] += 1
            spellings.setdefault(key, Counter())[tag] += 1
    named = [(spellings[k].most_common(1)[0][0], n) for k, n in counts.items()]
    return sorted(named, key=lambda item: (-item[1], tag_key(item[0]), item[0]))


def top_tags(project: Project, n: int = 50) -> list[tuple[str, int]]:
    """The `n` most common tags with their counts (the guide's look after tagging)."""
    return tag_counts(project)[: max(0, int(n))]


# Undo ------------------------------------------------------------------------------------------


def _undo_root(project: Project) -> Path:
    return project.config_dir / UNDO_FOLDER


def _root_rel(project: Project, path: Path) -> str:
    """A path relative to the whole dataset (shared by NAME and NAME/SUB), for manifests."""
    return path.relative_to(project.dataset_root).as_posix()


def _safe_rel(rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts


def _read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a snapshot interrupted before its manifest was written: not usable
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def _snapshots(project: Project) -> list[tuple[dict, Path]]:
    root = _undo_root(project)
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        if folder.is_dir() and not folder.name.startswith("."):
            manifest = _read_manifest(folder)
            if manifest is not None:
                found.append((manifest, folder))
    return sorted(found, key=lambda item: (int(item[0].get("seq", 0)), item[1].name), reverse=True)


def list_undo(project: Project) -> list[UndoSnapshot]:
    """The saved undo snapshots, newest first."""
    return [
        UndoSnapshot(
            id=folder.name,
            operation=str(m.get("operation", "")),
            project=str(m.get("project", "")),
            created=str(m.get("created", "")),
            files=[str(f.get("path")) for f in m["files"] if isinstance(f, dict)],
            folder=folder,
        )
        for m, folder in _snapshots(project)
    ]


def _captions_lock(project: Project):
    """One writer of the project's captions and their undo at a time (NAME and NAME/SUB share it)."""
    return exclusive(project.config_dir / ".locks" / LOCK_FILE, f"The captions of project {project.base!r}")


def _digest(data: "bytes | None") -> "str | None":
    return None if data is None else hashlib.sha256(data).hexdigest()


def _current(path: Path) -> "bytes | None":
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _save_snapshot(project: Project, operation: str, writes: "Sequence[tuple[Path, bytes | None]]") -> str:
    """Save the current bytes of each path (missing ones recorded as such) and the SHA-256 of what
    `operation` will leave there (None: it removes the file) into a new snapshot; return its id."""
    existing = _snapshots(project)
    seq = max((int(m.get("seq", 0)) for m, _ in existing), default=0) + 1
    label = re.sub(r"[^a-z0-9]+", "-", operation.lower()).strip("-")[:24]
    snap_id = sortable_id(label)
    folder = _undo_root(project) / snap_id
    files = []
    try:
        for path, after in writes:
            rel = _root_rel(project, path)
            before = _current(path)
            if before is not None:
                atomic_write_bytes(folder / "files" / rel, before)
            files.append({"path": rel, "existed": before is not None, "before": _digest(before), "after": _digest(after)})
        manifest = {
            "version": MANIFEST_VERSION,
            "operation": operation,
            "project": project.name,
            "created": _dt.datetime.now().isoformat(timespec="seconds"),
            "seq": seq,
            "files": files,
        }
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return snap_id


def _unchanged_since(entry: dict, now: "str | None", restore: "bytes | None") -> bool:
    """Whether the file is still as the edit left it, or as it was before (an interrupted edit)."""
    if "after" in entry:
        return now in (entry.get("after"), entry.get("before"))
    # An older snapshot did not record what the edit wrote: only "as before the edit" is certain.
    return now == _digest(restore)


def undo(project: Project, force: bool = False) -> TagReport:
    """Restore the newest tag-edit snapshot byte for byte, then remove it.

    Refuses, changing nothing, when a file changed since that edit (the message lists them), unless
    `force`: then the current versions are saved as a new snapshot first, so this undo can be undone.
    Never writes through a link.
    """
    with _captions_lock(project):
        snapshots = _snapshots(project)
        if not snapshots:
            raise UserError(f"There is no tag edit to undo in project {project.name!r}: every saved edit has already been undone.")
        manifest, folder = snapshots[0]
        operation = str(manifest.get("operation", "tag edit"))
        root = project.dataset_root
        plan: list[tuple[str, Path, bytes | None]] = []  # (rel, file, bytes to restore; None: remove it)
        changed: list[str] = []
        linked: list[str] = []
        for entry in manifest["files"]:
            rel = str(entry.get("path", "")) if isinstance(entry, dict) else ""
            if not _safe_rel(rel):
                continue
            target = root / rel
            link = link_on_path(target, root)
            if link is not None:
                linked.append(f"{rel} (through {link.relative_to(root).as_posix()})")
                continue
            restore: bytes | None = None
            if entry.get("existed", True):
                try:
                    restore = (folder / "files" / rel).read_bytes()
                except OSError:
                    raise UserError(
                        f"The undo snapshot of {operation!r} is damaged ({rel} is missing from {folder}): nothing was restored. "
                        f"Copy the caption back by hand, or remove that snapshot folder to undo older edits."
                    ) from None
            if not _unchanged_since(entry, _digest(_current(target)), restore):
                changed.append(rel)
            plan.append((rel, target, restore))
        if linked:
            raise UserError(
                f"Cannot undo {operation!r}: {len(linked)} caption file(s) are now reached through a link ({first_few(linked)}), "
                "and undo never writes through links. Put the real folder back into the dataset and undo again; nothing was restored."
            )
        if changed and not force:
            legacy = any(isinstance(e, dict) and "after" not in e for e in manifest["files"])
            why = "" if not legacy else " (an older version saved this snapshot without recording what the edit wrote, so any file the edit changed counts)"
            raise UserError(
                f"{len(changed)} caption file(s) changed after {operation!r}{why} ({first_few(changed)}): undoing it now would overwrite "
                f"those changes, so nothing was restored. Keep them, or undo anyway (the page's Undo anyway, or `lora-gradio tags {project.name} --undo --force`), "
                "which saves the current versions first so that undo can itself be undone."
            )
        report = TagReport(project=project.name, action=operation, restored=True)
        if changed:
            report.undo_id = _save_snapshot(project, f"before undo of {operation!r}", [(target, data) for _, target, data in plan])
        for rel, target, data in plan:
            if data is None:
                target.unlink(missing_ok=True)  # the edit created this caption: undoing it removes it
            else:
                atomic_write_bytes(target, data)
            report.changed.append(rel)
        report.total = len(report.changed)
        shutil.rmtree(folder)
        return report


# Applying edits --------------------------------------------------------------------------------


def _apply(project: Project, operation: str, edit, files: Sequence[Path] | None = None) -> TagReport:
    """Run `edit(tags) -> tags` on every caption; snapshot the files that change, then write them
    (holding the captions lock from the first read to the last write)."""
    with _captions_lock(project):
        return _apply_locked(project, operation, edit, files)


def _apply_locked(project: Project, operation: str, edit, files: Sequence[Path] | None) -> TagReport:
    notice = ""
    if files is None:
        listing = list_dataset(project)
        files, notice = _captions_in(listing), listing.notice()
    files = list(files)
    if not files:
        raise UserError(f"Project {project.name!r} has no caption files in {project.dataset_dir}: tag the images first (tag {project.name}). {notice}".rstrip())
    report = TagReport(project=project.name, action=operation, total=len(files), links_notice=notice)
    writes: list[tuple[Path, bytes]] = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            report.skipped.append(f"{_rel(project, path)}: {exc.strerror or exc}")
            continue
        text, clean = _decode(data)
        if not clean:
            report.skipped.append(f"{_rel(project, path)}: not UTF-8 text")
            continue
        tags = split_tags(text)
        new = edit(tags)
        if new != tags:
            ending = "\n" if text.endswith("\n") else ""
            writes.append((path, (join_tags(new) + ending).encode("utf-8")))
    _write_with_snapshot(project, operation, writes, report)
    return report


def _write_with_snapshot(project: Project, operation: str, writes: "Sequence[tuple[Path, bytes]]", report: TagReport) -> None:
    """Snapshot the files `writes` changes (with what it will write), then write them; the lock is held."""
    if writes:
        report.undo_id = _save_snapshot(project, operation, writes)
        for path, data in writes:
            atomic_write_bytes(path, data)
            report.changed.append(_rel(project, path))


def write_captions(project: Project, operation: str, captions: "Sequence[tuple[Path, str]]") -> TagReport:
    """Write whole caption files (e.g. a tagger's results) as one undoable edit, under the captions lock.

    Files already holding that text are left alone; a caption that is a link, or inside a linked
    folder, is skipped and reported, never written through.
    """
    report = TagReport(project=project.name, action=operation, total=len(captions))
    with _captions_lock(project):
        writes: list[tuple[Path, bytes]] = []
        linked: list[Path] = []
        for path, text in captions:
            path = Path(path)
            link = link_on_path(path, project.dataset_root)
            if link is not None:
                linked.append(link)
                continue
            data = str(text).encode("utf-8")
            if _current(path) != data:
                writes.append((path, data))
        report.links_notice = links_notice(sorted(set(linked)), project.dataset_root)
        _write_with_snapshot(project, operation, writes, report)
    return report


def _require(tags: list[str], what: str, example: str) -> list[str]:
    if not tags:
        raise UserError(f"No {what} given: type them comma separated, e.g. {example!r}.")
    return tags


def _check_mode(mode: str) -> str:
    value = str(mode).strip().upper()
    if value not in MODES:
        raise UserError(f"Unknown search mode {mode!r}: use OR (files with any of the tags) or AND (files with all of them).")
    return value


def set_activation_tags(project: Project, tags: str) -> TagReport:
    """Put the activation tag(s) first in every caption file, in the given order."""
    activation = _require(split_tags(tags), "activation tag", "my_character")
    report = _apply(project, f"activation tags {join_tags(activation)}", lambda t: put_first(t, activation))
    _remember_activation(project, activation)
    return report


def _remember_activation(project: Project, activation: Sequence[str]) -> None:
    project.write_section(SECTION, {**project.read_section(SECTION), "activation": join_tags(activation)})


def saved_activation(project: Project) -> str:
    """The activation tag(s) last put first with `curate`/`set_activation_tags`; '' if none."""
    value = project.read_section(SECTION).get("activation", "")
    return value if isinstance(value, str) else ""


def remove_tags(project: Project, tags: str) -> TagReport:
    """Remove each listed tag from every caption file."""
    remove = _require(split_tags(tags), "tags to remove", "long hair, blue eyes")
    return _apply(project, f"remove {join_tags(remove)}", lambda t: remove_from(t, remove))


def search_replace(project: Project, search: str, replace: str = "", mode: str = "OR", new_as_activation: bool = False) -> TagReport:
    """In files holding any (OR) or all (AND) of `search`: remove those tags and add `replace`."""
    found = _require(split_tags(search), "tags to search for", "school uniform, serafuku")
    wanted = split_tags(replace)
    mode = _check_mode(mode)
    matched = 0

    def edit(tags: list[str]) -> list[str]:
        nonlocal matched
        out, hit = replace_in(tags, found, wanted, mode, new_as_activation)
        matched += hit
        return out

    action = f"replace {join_tags(found)} ({mode}) with {join_tags(wanted) or 'nothing'}"
    report = _apply(project, action, edit)
    report.matched = matched
    if new_as_activation and wanted and matched:
        _remember_activation(project, wanted)
    return report


def sort_tags(project: Project, keep_first: int = 0) -> TagReport:
    """Sort every file's tags alphabetically, leaving the first `keep_first` (activation) tags in place."""
    if int(keep_first) < 0:
        raise UserError(f"keep_first is {keep_first}: use 0, or the number of activation tags to keep at the start.")
    return _apply(project, "sort tags", lambda t: sorted_tags(t, keep_first))


def dedupe_tags(project: Project) -> TagReport:
    """Remove duplicate tags within each file, keeping the first occurrence."""
    return _apply(project, "remove duplicate tags", deduped)


def curate(
    project: Project,
    activation: str = "",
    remove: str = "",
    search: str = "",
    replace: str = "",
    mode: str = "OR",
    new_as_activation: bool = False,
    sort: bool = False,
    dedupe: bool = False,
    keep_first: int | None = None,
) -> TagReport:
    """All of the notebook cell's edits in one pass and one undo step, in the notebook's order:
    remove duplicates, sort, remove tags, search and replace, then activation tags first.

    `keep_first` (for sorting) defaults to 0; activation tags given here end up first anyway.
    """
    act, rem, found, wanted = split_tags(activation), split_tags(remove), split_tags(search), split_tags(replace)
    if wanted and not found:
        raise UserError("Replacement tags were given without tags to search for: fill in the search tags too.")
    mode = _check_mode(mode)
    keep = 0 if keep_first is None else int(keep_first)
    if not (act or rem or found or sort or dedupe):
        raise UserError("Nothing to do: give an activation tag, tags to remove, a search, or choose sort or remove duplicates.")
    matched = 0

    def edit(tags: list[str]) -> list[str]:
        nonlocal matched
        if dedupe:
            tags = deduped(tags)
        if sort:
            tags = sorted_tags(tags, keep)
        if rem:
            tags = remove_from(tags, rem)
        if found:
            tags, hit = replace_in(tags, found, wanted, mode, new_as_activation)
            matched += hit
        if act:
            tags = put_first(tags, act)
        return tags

    parts = [
        f"activation {join_tags(act)}" if act else "",
        f"remove {join_tags(rem)}" if rem else "",
        f"replace {join_tags(found)} ({mode}) with {join_tags(wanted) or 'nothing'}" if found else "",
        "sort" if sort else "",
        "dedupe" if dedupe else "",
    ]
    report = _apply(project, "; ".join(p for p in parts if p), edit)
    report.matched = matched
    if act or (new_as_activation and wanted and report.matched):
        _remember_activation(project, act or wanted)
    return report


# One image's caption ---------------------------------------------------------------------------


def _image_path(project: Project, image_rel: str) -> Path:
    rel = Path(str(image_rel))
    if not str(image_rel) or rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"{image_rel!r} is not an image of the dataset: give its path inside {project.dataset_dir}.")
    path = project.dataset_dir / rel
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise UserError(f"{image_rel!r} is not an image file: pick a {', '.join(IMAGE_EXTENSIONS)} file.")
    _refuse_links(project, path, image_rel)
    if not path.is_file():
        raise UserError(f"No image {image_rel!r} in {project.dataset_dir}: refresh the image list.")
    return path


def _refuse_links(project: Project, path: Path, what: str) -> None:
    link = link_on_path(path, project.dataset_root)
    if link is not None:
        raise UserError(
            f"{what!r} is reached through a link ({_root_rel(project, link)}): the dataset tools do not follow links, "
            "so nothing is read or written through them; copy the real files into the dataset folder instead."
        )


def _caption_of(project: Project, image_rel: str) -> Path:
    caption = _image_path(project, image_rel).with_suffix(CAPTION_SUFFIX)
    if is_link(caption):
        _refuse_links(project, caption, _rel(project, caption))
    return caption


def image_caption(project: Project, image_rel: str) -> str:
    """The caption text of one image (relative to the dataset folder); '' if it has none."""
    caption = _caption_of(project, image_rel)
    try:
        return _decode(caption.read_bytes())[0]
    except FileNotFoundError:
        return ""


def set_image_caption(project: Project, image_rel: str, text: str) -> TagReport:
    """Replace one image's caption with `text` (atomically, with an undo snapshot, under the captions lock)."""
    caption = _caption_of(project, image_rel)
    new = str(text).strip()
    report = TagReport(project=project.name, action=f"edit caption of {image_rel}", total=1)
    with _captions_lock(project):
        old = _current(caption)
        if old is not None and _decode(old)[0].strip() == new:
            return report
        _write_with_snapshot(project, report.action, [(caption, new.encode("utf-8"))], report)
    return report
