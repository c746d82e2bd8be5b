"""Unzip an uploaded dataset zip into a project, safely.

A zip from the internet can hold paths that escape the folder (`../x`, `/etc/x`, `C:\\x`),
symlinks, or a decompression bomb. We check every member before writing anything, extract
only images and captions into a temporary folder beside the dataset (same file system), and
only then move the files into place, never over an existing file. Any error removes the
temporary folder and whatever was already placed, so the dataset is left as it was.
Nothing is written through a link in the dataset (see `fsutil.folder_entries`): a zip folder that
lands on a linked dataset folder is skipped with a message, and a NAME/SUB project whose SUB is a
link takes no files.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.fsutil import CAPTION_EXTENSIONS, IMAGE_EXTENSIONS, SIDECAR_EXTENSIONS, is_link, link_on_path
from lora_gradio.engine.progress import Progress, first_few
from lora_gradio.engine.project import Project

MAX_MEMBERS = 100_000
MAX_TOTAL_BYTES = 8 * 1024**3
# Images barely compress; a member that shrinks 200:1 is almost surely a bomb.
MAX_RATIO = 200
RATIO_MIN_SIZE = 1024**2  # tiny files (captions) can compress very well legitimately
CHUNK = 1024**2
_KEPT_EXTENSIONS = IMAGE_EXTENSIONS + CAPTION_EXTENSIONS
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass
class AddReport:
    """What adding files (a zip, uploads) did: used by extract_zip and uploads.import_uploads."""

    added: list[str] = field(default_factory=list)  # paths relative to the dataset folder
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (name in the zip, path it got)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name in the zip, reason)

    def summary(self) -> str:
        text = f"Added {len(self.added)} file(s) to the dataset"
        if self.renamed:
            shown = first_few([f"{src} -> {dst}" for src, dst in self.renamed], sep=", ")
            text += f"; renamed {len(self.renamed)} to avoid overwriting existing files ({shown})"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} ({first_few([f'{name}: {reason}' for name, reason in self.skipped])})"
        return text + "."


@dataclass
class _Member:
    info: zipfile.ZipInfo
    parts: tuple[str, ...]  # path inside the zip, wrapper folder stripped
    folder: str = ""  # dataset subfolder it goes to ("" for the dataset folder itself)
    extracted: Path | None = None

    @property
    def name(self) -> str:
        return self.parts[-1]

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def is_image(self) -> bool:
        return self.suffix.lower() in IMAGE_EXTENSIONS


def extract_zip(
    project: Project, zip_path: Path, progress: Progress | None = None, max_total_bytes: int = MAX_TOTAL_BYTES
) -> AddReport:
    """Extract the images and captions of `zip_path` into the project's dataset folder."""
    progress = progress or Progress()
    report = AddReport()
    zip_path = Path(zip_path)
    refuse_linked_dataset(project)
    with _open_zip(zip_path) as archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise UserError(f"{zip_path.name} holds {len(infos):,} entries (limit {MAX_MEMBERS:,}): split it into smaller zips.")
        for info in infos:
            _check_member_safety(info, zip_path.name)
        members = _select_members(infos, report, flatten=project.subfolder is not None)
        members = _skip_linked_folders(members, project.dataset_dir, report)
        staging_parent = project.dataset_root.parent
        _check_sizes(members, zip_path.name, max_total_bytes, _existing_ancestor(staging_parent))
        target = project.dataset_dir
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=staging_parent))
        try:
            _extract_all(archive, members, staging, max_total_bytes, zip_path.name, progress)
            _place_all(members, target, report, progress)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    report.added.sort()
    return report


# Opening and checking ------------------------------------------------------------------------


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    if not zip_path.is_file():
        raise UserError(f"{zip_path} does not exist: upload the zip again or check the path.")
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise UserError(f"{zip_path.name} is not a zip file or is damaged: re-download it or zip the images again.") from None
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"Cannot read {zip_path.name} as a zip ({exc}): re-download it or zip the images again.") from None


def _check_member_safety(info: zipfile.ZipInfo, zip_name: str) -> None:
    """Refuse the whole zip for any member that could write outside the dataset or is encrypted."""
    name = info.filename
    refuse = f"Refusing {zip_name}: entry {name!r}"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise UserError(f"{refuse} has an absolute path. Zip the folder's contents with relative paths.")
    if "\\" in name:
        raise UserError(f"{refuse} contains a backslash, which can hide a path outside the dataset. Re-create the zip with a standard tool.")
    if ".." in name.split("/"):
        raise UserError(f"{refuse} points outside the zip's folder ('..'). Re-create the zip from the image folder.")
    if any(ord(ch) < 32 for ch in name):
        raise UserError(f"{refuse} has control characters in its name. Rename the file and zip again.")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UserError(f"{refuse} is a symbolic link. Zip the real files instead of links.")
    if info.flag_bits & 0x1:
        raise UserError(f"{refuse} is encrypted. Zip the images again without a password.")


def _skip_reason(parts: tuple[str, ...]) -> str | None:
    if parts[0] == "__MACOSX":
        return "macOS metadata"
    if any(part.startswith(".") for part in parts):
        return "hidden file"
    if PurePosixPath(parts[-1]).suffix.lower() not in _KEPT_EXTENSIONS:
        return "not an image or caption file"
    return None


def _select_members(infos: list[zipfile.ZipInfo], report: AddReport, flatten: bool) -> list[_Member]:
    """The members to extract, with a wrapping top folder stripped and their target subfolder."""
    kept: list[_Member] = []
    for info in infos:
        if info.is_dir():
            continue
        parts = tuple(part for part in info.filename.split("/") if part not in ("", "."))
        if not parts:
            continue
        reason = _skip_reason(parts)
        if reason:
            report.skipped.append((info.filename, reason))
        else:
            kept.append(_Member(info, parts))
    # `mychar.zip` often holds `mychar/…`: that folder is the dataset itself, not a subfolder.
    tops = {member.parts[0] for member in kept}
    if len(tops) == 1 and all(len(member.parts) > 1 for member in kept):
        for member in kept:
            member.parts = member.parts[1:]
    selected: list[_Member] = []
    for member in kept:
        # One level of subfolders (per-folder datasets); deeper folders are merged into it.
        member.folder = "" if flatten or len(member.parts) == 1 else member.parts[0]
        if member.folder.startswith("_"):
            report.skipped.append((member.info.filename, "folders starting with '_' are ignored by the dataset tools"))
            continue
        selected.append(member)
    return selected


LINK_REASON = "the tools do not write through links in the dataset; copy the real files into the dataset folder instead"


def refuse_linked_dataset(project: Project) -> None:
    """Refuse to add files to a NAME/SUB project whose SUB (or a folder on the way) is a link."""
    link = link_on_path(project.dataset_dir, project.dataset_root) if project.subfolder else None
    if link is not None:
        raise UserError(f"The dataset folder {project.dataset_dir} is a link: {LINK_REASON}. Nothing was added.")


def _skip_linked_folders(members: list[_Member], target: Path, report: AddReport) -> list[_Member]:
    """Members bound for a dataset subfolder that is a link are skipped (they would land outside)."""
    kept = []
    for member in members:
        if member.folder and is_link(target / member.folder):
            report.skipped.append((member.info.filename, f"the dataset folder {member.folder!r} is a link: {LINK_REASON}"))
        else:
            kept.append(member)
    return kept


def _check_sizes(members: list[_Member], zip_name: str, max_total_bytes: int, target: Path) -> None:
    total = 0
    for member in members:
        info = member.info
        if info.file_size > RATIO_MIN_SIZE and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise UserError(
                f"Refusing {zip_name}: {info.filename!r} expands {info.file_size // max(info.compress_size, 1)}:1, "
                "which looks like a zip bomb. Zip the images again."
            )
        total += info.file_size
    if total > max_total_bytes:
        raise UserError(f"Refusing {zip_name}: it would extract to {_gb(total)}, over the {_gb(max_total_bytes)} limit. Split it into smaller zips.")
    free = shutil.disk_usage(target).free
    if total > free:
        raise UserError(f"{zip_name} needs {_gb(total)} but only {_gb(free)} is free at {target}: free some space first.")


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _gb(size: int) -> str:
    return f"{size / 1024**3:.2f} GiB"


# Extracting --------------------------------------------------------------------------------------


def _extract_all(archive: zipfile.ZipFile, members: list[_Member], staging: Path, cap: int, zip_name: str, progress: Progress) -> None:
    """Stream each member into the staging folder, counting real bytes so a lying header cannot pass the cap."""
    written_total = 0
    for index, member in enumerate(members):
        progress.check_cancel()
        member.extracted = staging / f"{index}{member.suffix.lower()}"
        try:
            written_total = _copy_member(archive, member, written_total, cap, zip_name)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise UserError(f"{zip_name} is damaged or uses an unsupported format at {member.info.filename!r} ({exc}): re-create the zip.") from None
        except RuntimeError as exc:  # zipfile's way of saying "password required"
            raise UserError(f"Cannot extract {member.info.filename!r} from {zip_name} ({exc}): zip the images again without a password.") from None
        except OSError as exc:
            raise UserError(f"Could not write {member.info.filename!r} while extracting {zip_name} ({exc.strerror or exc}): check free space and permissions.") from None
        progress.update(index + 1, len(members), "Extracting")


def _copy_member(archive: zipfile.ZipFile, member: _Member, written_total: int, cap: int, zip_name: str) -> int:
    declared = member.info.file_size
    written = 0
    assert member.extracted is not None
    with archive.open(member.info) as source, open(member.extracted, "wb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            written_total += len(chunk)
            if written > declared or written_total > cap:
                raise UserError(f"Refusing {zip_name}: {member.info.filename!r} holds more data than its header says (a zip bomb). Nothing was added.")
            out.write(chunk)
    return written_total


# Placing -----------------------------------------------------------------------------------------


def _groups(members: list[_Member]) -> list[list[_Member]]:
    """Files that must keep one stem together: an image and its captions from one zip folder.

    Two images with one stem in the zip each get their own group, so they cannot end up
    sharing a caption file.
    """
    by_key: dict[tuple[str, tuple[str, ...], str], list[_Member]] = defaultdict(list)
    for member in members:
        by_key[(member.folder, member.parts[:-1], member.stem)].append(member)
    groups: list[list[_Member]] = []
    for group in by_key.values():
        images = [m for m in group if m.is_image]
        others = [m for m in group if not m.is_image]
        groups.append(images[:1] + others)
        groups.extend([image] for image in images[1:])
    return groups


class _StemRegistry:
    """Stems already used by images and sidecars in each target folder, on disk or just planned."""

    def __init__(self) -> None:
        self._used: dict[Path, set[str]] = {}

    def _stems(self, folder: Path) -> set[str]:
        if folder not in self._used:
            names = os.listdir(folder) if folder.is_dir() else []
            known = IMAGE_EXTENSIONS + SIDECAR_EXTENSIONS
            self._used[folder] = {Path(n).stem for n in names if Path(n).suffix.lower() in known}
        return self._used[folder]

    def claim(self, folder: Path, stem: str) -> str:
        used = self._stems(folder)
        candidate, n = stem, 2
        while candidate in used:
            candidate = f"{stem} ({n})"
            n += 1
        used.add(candidate)
        return candidate


def _place_all(members: list[_Member], target: Path, report: AddReport, progress: Progress) -> None:
    """Move the extracted files into the dataset; on any failure take back what was placed."""
    placed: list[Path] = []
    made_folders: list[Path] = []
    registry = _StemRegistry()
    try:
        groups = _groups(members)
        for done, group in enumerate(groups, start=1):
            progress.check_cancel()
            folder = target / group[0].folder if group[0].folder else target
            if not folder.exists():
                folder.mkdir()
                made_folders.append(folder)
            stem = registry.claim(folder, group[0].stem)
            for member in group:
                destination = folder / f"{stem}{member.suffix}"
                assert member.extracted is not None
                _move_no_overwrite(member.extracted, destination)
                placed.append(destination)
                rel = destination.relative_to(target).as_posix()
                report.added.append(rel)
                if stem != member.stem:
                    report.renamed.append((member.info.filename, rel))
            progress.update(done, len(groups), "Adding files to the dataset")
    except BaseException as exc:
        for path in placed:
            path.unlink(missing_ok=True)
        for folder in reversed(made_folders):
            try:
                folder.rmdir()
            except OSError:
                pass
        if isinstance(exc, (UserError, Cancelled)) or not isinstance(exc, OSError):
            raise
        raise UserError(f"Could not move the extracted files into {target} ({exc.strerror or exc}); nothing was added.") from None


def _move_no_overwrite(source: Path, destination: Path) -> None:
    """Rename `source` to `destination`, failing instead of replacing a file that appeared there."""
    try:
        os.link(source, destination)  # fails with FileExistsError: atomic "create only if absent"
    except FileExistsError:
        raise UserError(f"{destination.name} appeared in the dataset while extracting: run the extraction again.") from None
    except OSError:
        # No hard links here (FAT, some network mounts): check, then rename.
        if destination.exists():
            raise UserError(f"{destination.name} appeared in the dataset while extracting: run the extraction again.") from None
        os.replace(source, destination)
        return
    source.unlink()
