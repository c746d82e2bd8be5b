"""Safe image loading and the notebook's dataset "extras": count, check, convert, shrink, clean.

Every function works on a project's dataset folder (`project.dataset_dir`) and its direct
subfolders (the notebook's per-folder datasets), skipping folders whose names start with
'_' or '.'. Links inside the dataset (to files or folders) are skipped and named once in the
run's message, never read or written through (see `fsutil.folder_entries`). Nothing is deleted:
replaced originals and junk files go to one trash batch per run, so the whole run can be undone
with `trash.restore`.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from PIL import Image, ImageOps, UnidentifiedImageError

from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.fsutil import (
    CAPTION_EXTENSIONS,
    SIDECAR_EXTENSIONS,
    _new_temp_file,
    atomic_path,
    folder_entries,
    is_image_file,
    link_on_path,
    links_notice,
)
from lora_gradio.engine.parallel import WORKERS
from lora_gradio.engine.progress import Progress, first_few
from lora_gradio.engine.project import Project
from lora_gradio.engine.trash import add_to_batch, move_to_trash, new_batch

# The largest image we decode: 150 megapixels (e.g. 12,000 x 12,500) needs ~450 MB as RGB.
# Anything bigger in a LoRA dataset is almost surely a decompression bomb or a scan gone wrong.
MAX_PIXELS = 150_000_000
# Shrinking stops before the short side drops below this: the trainer needs ~512 px buckets.
MIN_SHORT_SIDE = 512
JPEG_QUALITY = 95
WHITE = (255, 255, 255)
# Decoding is in C and releases the GIL, so threads scale with the cores.
_WORKERS = WORKERS
_MODES_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")

T = TypeVar("T")
R = TypeVar("R")


class UnreadableImage(UserError):
    """An image file that cannot be decoded (corrupt, truncated, not an image, too large)."""


# Loading -----------------------------------------------------------------------------------------


def open_image(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Decode `path` fully into an RGB image, upright, with transparency composited on white.

    Raises `UnreadableImage` with a one-line reason for anything that is not a whole, sane image.
    """
    path = Path(path)
    limit = max_pixels or MAX_PIXELS
    try:
        with Image.open(path) as img:
            if img.width * img.height > limit:
                raise UnreadableImage(_too_large(path, img.width, img.height, limit))
            img.load()  # decode now, so a truncated file fails here and not later in training
            upright = _apply_exif_orientation(img)
            return _to_rgb(upright)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError:
        raise UnreadableImage(f"{path.name}: image is too large to decode safely (possible decompression bomb).") from None
    except FileNotFoundError:
        raise UnreadableImage(f"{path.name}: file not found.") from None
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path.name}: not an image file (or a format Pillow cannot read).") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        # Pillow reports truncation and bad data as OSError/SyntaxError/ValueError.
        raise UnreadableImage(f"{path.name}: corrupt or truncated image ({_one_line(exc)}).") from None
    except Exception as exc:  # a plugin bug must not take down a batch of thousands of files
        raise UnreadableImage(f"{path.name}: cannot decode ({type(exc).__name__}: {_one_line(exc)}).") from None


def _too_large(path: Path, width: int, height: int, limit: int) -> str:
    return (
        f"{path.name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
        f"{limit / 1e6:.0f} MP limit (possible decompression bomb); resize it or remove it."
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip pixels per the EXIF Orientation tag; a broken EXIF block is ignored, not fatal."""
    try:
        return ImageOps.exif_transpose(img) or img
    except Exception:
        return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        img = _sixteen_bit_to_l(img)
    if "transparency" in img.info and img.mode in ("P", "L", "RGB"):
        img = img.convert("RGBA")  # palette or colour-key transparency becomes a real alpha
    if img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in _MODES_WITH_ALPHA:
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale to 8 bits; Pillow's own convert('L') clips instead of scaling."""
    wide = img.convert("I")
    _, high = wide.getextrema()
    if high is not None and high > 255:
        wide = wide.point(lambda value: value * (1 / 256))
    return wide.convert("L")


# Walking the dataset -----------------------------------------------------------------------------


@dataclass
class DatasetListing:
    """What the dataset holds, links set apart: the one listing every stage walks.

    `folders`: the dataset folder and its direct real subfolders, minus the tool's own ('_x') and
    hidden ones; `files`: each folder's plain files, sorted; `links`: the links found in them (to files
    or folders, broken ones too), which no stage reads or writes through.
    """

    root: Path  # the whole dataset (shared by NAME and NAME/SUB): what link names are relative to
    folders: list[Path] = field(default_factory=list)
    files: dict[Path, list[Path]] = field(default_factory=dict)
    links: list[Path] = field(default_factory=list)

    def all_files(self) -> list[Path]:
        return [path for folder in self.folders for path in self.files.get(folder, [])]

    def notice(self) -> str:
        """The one message naming the skipped links ('' when there are none)."""
        return links_notice(self.links, self.root)


def list_dataset(project: Project) -> DatasetListing:
    """The dataset's folders and files with links set apart (see `fsutil.folder_entries` for the rule).

    A NAME/SUB project whose SUB is a link has no folders: SUB is a link inside NAME's dataset.
    """
    top = project.dataset_dir
    listing = DatasetListing(root=project.dataset_root)
    linked = link_on_path(top, project.dataset_root) if project.subfolder else None
    if linked is not None:
        listing.links.append(linked)
        return listing
    if not top.is_dir():
        return listing
    entries = folder_entries(top)
    listing.folders = [top, *(p for p in entries.folders if not p.name.startswith(("_", ".")))]
    listing.files[top] = entries.files
    links = list(entries.links)
    for folder in listing.folders[1:]:
        inner = folder_entries(folder)
        listing.files[folder] = inner.files
        links.extend(inner.links)
    listing.links = sorted(links)
    return listing


def dataset_folders(project: Project) -> list[Path]:
    """The dataset folder and its direct subfolders, minus the tool's own ('_x'), hidden and linked ones."""
    return list_dataset(project).folders


def dataset_links(project: Project) -> list[Path]:
    """The links inside the dataset, which every stage skips."""
    return list_dataset(project).links


def dataset_links_notice(project: Project) -> str:
    """The message naming the dataset's links and saying to copy the real files in ('' if none)."""
    return list_dataset(project).notice()


def _files(folder: Path) -> list[Path]:
    return folder_entries(folder).files


def _dataset_files(project: Project) -> Iterator[Path]:
    yield from list_dataset(project).all_files()


def _is_caption(path: Path) -> bool:
    return path.suffix.lower() in CAPTION_EXTENSIONS


def _is_sidecar(path: Path) -> bool:
    return path.suffix.lower() in SIDECAR_EXTENSIONS


# Counting ----------------------------------------------------------------------------------------


@dataclass
class FolderCount:
    folder: str  # relative to the dataset folder; "." for the dataset folder itself
    images: int = 0
    captions: int = 0
    images_without_caption: int = 0
    captions_without_image: int = 0
    other_files: int = 0  # neither image nor sidecar: what `clean_dataset` would trash
    links: int = 0  # links to files or folders: skipped by every stage (see `dataset_links_notice`)

    def label(self, project: Project) -> str:
        """The folder as the picker names it: the project's name, or NAME/SUB for a subfolder."""
        return project.name if self.folder == "." else f"{project.name}/{self.folder}"

    @staticmethod
    def total(counts: Iterable["FolderCount"]) -> "FolderCount":
        out = FolderCount(folder="total")
        for count in counts:
            out.images += count.images
            out.captions += count.captions
            out.images_without_caption += count.images_without_caption
            out.captions_without_image += count.captions_without_image
            out.other_files += count.other_files
            out.links += count.links
        return out


def count_dataset(project: Project) -> list[FolderCount]:
    """Images and captions per folder, from file names only (no decoding: instant on 10k files)."""
    counts: list[FolderCount] = []
    listing = list_dataset(project)
    for folder in listing.folders:
        files = listing.files[folder]
        image_stems = {p.stem for p in files if is_image_file(p)}
        caption_stems = {p.stem for p in files if _is_caption(p)}
        count = FolderCount(folder=folder.relative_to(project.dataset_dir).as_posix())
        for path in files:
            if is_image_file(path):
                count.images += 1
                count.images_without_caption += path.stem not in caption_stems
            elif _is_caption(path):
                count.captions += 1
                count.captions_without_image += path.stem not in image_stems
            elif not _is_sidecar(path):
                count.other_files += 1
        count.links = sum(1 for link in listing.links if link.parent == folder)
        counts.append(count)
    return counts


def find_stem_clashes(project: Project) -> list[list[Path]]:
    """Groups of images in one folder sharing a stem: they would share one caption file."""
    clashes: list[list[Path]] = []
    listing = list_dataset(project)
    for folder in listing.folders:
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for path in listing.files[folder]:
            if is_image_file(path):
                by_stem[path.stem].append(path)
        clashes.extend(sorted(group) for group in by_stem.values() if len(group) > 1)
    return clashes


# Running per-file work in parallel ---------------------------------------------------------------


def _parallel(
    items: list[T], work: Callable[[T], R], progress: Progress, message: str
) -> Iterator[tuple[T, R | None, Exception | None]]:
    """Run `work` on each item in threads; yield (item, result, error) as each finishes.

    Errors are returned, not raised, so one bad file never stops the batch. On cancel, work not
    yet started is dropped, work already running finishes and is still yielded (so the caller
    can finish its bookkeeping for it), then `Cancelled` is raised.
    """
    total = len(items)
    progress.update(0, total, message)
    if not items:
        return
    stop: Cancelled | None = None
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        futures: dict[Future[R], T] = {pool.submit(work, item): item for item in items}
        done = 0
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                done += 1
                error = future.exception()
                yield futures[future], (None if error else future.result()), error  # type: ignore[misc]
                progress.update(done, total, message)
                if stop is None:
                    try:
                        progress.check_cancel()
                    except Cancelled as exc:
                        stop = exc
                        _cancel_all(futures)
        finally:
            _cancel_all(futures)  # the caller stopped early (an error): do not start the rest
    if stop is not None:
        raise stop


def _cancel_all(futures: Iterable[Future]) -> None:
    for future in futures:
        future.cancel()


# Reports -----------------------------------------------------------------------------------------


@dataclass
class HygieneReport:
    action: str  # e.g. "Converted to JPEG": the verb phrase for `summary`
    changed: list[str] = field(default_factory=list)  # paths relative to the dataset folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    trash_batch: str | None = None
    trashed: str = "originals in trash batch"  # how `summary` names the trash batch
    links_notice: str = ""  # the links the run skipped, named once (see `DatasetListing.notice`)

    def summary(self) -> str:
        text = f"{self.action}: {len(self.changed)} file(s)"
        if self.trash_batch:
            text += f" ({self.trashed} {self.trash_batch})"
        if self.skipped:
            text += f"; skipped {len(self.skipped)}: {first_few([f'{path}: {reason}' for path, reason in self.skipped])}"
        text += "."
        return f"{text} {self.links_notice}" if self.links_notice else text


def _note_links(listing: DatasetListing, progress: Progress, report: "HygieneReport | None" = None) -> str:
    """Say once which links the run skips: in the log now, and in the report's summary."""
    notice = listing.notice()
    if notice:
        progress.log(notice)
        if report is not None:
            report.links_notice = notice
    return notice


def _skip(report: HygieneReport, progress: Progress, rel: str, reason: str) -> None:
    report.skipped.append((rel, reason))
    progress.log(f"skipped {rel}: {reason}")


def _reason(error: Exception) -> str:
    return str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {_one_line(error)}"


# Checking ----------------------------------------------------------------------------------------


class Unreadable(list):
    """(path, reason) of the images that do not decode, with a one-line summary for the job panel."""

    checked: int = 0
    links_notice: str = ""

    def summary(self) -> str:
        if not self:
            text = f"All {self.checked} images decode."
        else:
            text = f"{len(self)} of {self.checked} images cannot be read: {first_few([f'{p.name} ({why})' for p, why in self])}. Move them out with the trash or replace them."
        return f"{text} {self.links_notice}" if self.links_notice else text


def check_images(project: Project, progress: Progress | None = None) -> Unreadable:
    """Decode every image; return the unreadable ones with a reason, sorted by path."""
    progress = progress or Progress()
    listing = list_dataset(project)
    notice = _note_links(listing, progress)
    images = [p for p in listing.all_files() if is_image_file(p)]
    bad: list[tuple[Path, str]] = []
    for path, _, error in _parallel(images, _decode_only, progress, "Checking images"):
        if error is not None:
            bad.append((path, _reason(error)))
            progress.log(f"unreadable {path.name}: {_reason(error)}")
    result = Unreadable(sorted(bad))
    result.checked = len(images)
    result.links_notice = notice
    return result


def _decode_only(path: Path) -> None:
    open_image(path).close()


# Converting PNG to JPEG --------------------------------------------------------------------------


def convert_png_to_jpeg(project: Project, quality: int = JPEG_QUALITY, progress: Progress | None = None) -> HygieneReport:
    """Re-encode each PNG as a JPEG of the same stem; the PNGs go to one trash batch.

    Each JPEG is written atomically, then its PNG joins the run's trash batch at once, so an
    interruption leaves every image either as it was or converted (at worst the one PNG being
    moved stays beside its JPEG, which a re-run reports as a clash instead of converting again).
    """
    progress = progress or Progress()
    report = HygieneReport(action="Converted PNG to JPEG")
    listing = list_dataset(project)
    _note_links(listing, progress, report)
    linked = set(listing.links)
    pngs: list[Path] = []
    for folder in listing.folders:
        files = listing.files[folder]
        # A linked JPEG holds its name too: converting must not replace the link.
        names = files + [link for link in linked if link.parent == folder]
        jpeg_stems = {p.stem for p in names if p.suffix.lower() in (".jpg", ".jpeg")}
        for path in files:
            if path.suffix.lower() != ".png":
                continue
            if path.stem in jpeg_stems:
                _skip(report, progress, _rel(project, path), "a JPEG with the same name already exists; remove one of the two")
            else:
                pngs.append(path)

    def convert(path: Path) -> Path:
        target = path.with_suffix(".jpg")
        image = open_image(path)
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG", quality=quality)
        return target

    batch = new_batch(project, "converted PNG to JPEG")
    for path, target, error in _parallel(pngs, convert, progress, "Converting PNG to JPEG"):
        if error is None:
            try:  # one file the trash refuses must not stop the run half way
                add_to_batch(project, batch, [path], with_sidecars=False)
            except Exception as exc:
                error = exc
        if error is not None:
            _skip(report, progress, _rel(project, path), _reason(error))
        else:
            report.trash_batch = batch.id
            report.changed.append(_rel(project, target))
    report.changed.sort()
    return report


# Shrinking large images --------------------------------------------------------------------------


def shrink_large_images(project: Project, max_megabytes: float = 2.0, progress: Progress | None = None) -> HygieneReport:
    """Halve the size of each image file over `max_megabytes` (MiB) until it fits, keeping its format.

    Halving stops before the short side drops below 512 px. The smaller version is written to a
    hidden temporary file first; then the original moves to the run's trash batch and the new
    file takes its name (two renames on one file system, so the window for a crash is tiny and
    the original is never lost).
    """
    progress = progress or Progress()
    report = HygieneReport(action="Shrunk large images")
    limit = int(max_megabytes * 1024 * 1024)
    listing = list_dataset(project)
    _note_links(listing, progress, report)
    large = [p for p in listing.all_files() if is_image_file(p) and _size(p) > limit]

    batch = new_batch(project, f"shrunk: over {max_megabytes} MB")
    for path, result, error in _parallel(large, lambda p: _shrunk_copy(p, limit), progress, "Shrinking images"):
        if error is not None:
            _skip(report, progress, _rel(project, path), _reason(error))
        elif result is None:
            _skip(report, progress, _rel(project, path), f"cannot halve without the short side dropping below {MIN_SHORT_SIDE} px")
        else:
            tmp, still_large = result
            try:  # one file the trash refuses must not stop the run half way (its copy is removed)
                _replace_original(project, batch, path, tmp)
            except Exception as exc:
                _skip(report, progress, _rel(project, path), _reason(exc))
                continue
            report.trash_batch = batch.id
            report.changed.append(_rel(project, path))
            if still_large:
                progress.log(f"{_rel(project, path)}: still over {max_megabytes} MB at the smallest allowed size")
    report.changed.sort()
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # vanished since the listing: nothing to shrink


def _shrunk_copy(path: Path, limit: int) -> tuple[Path, bool] | None:
    """Write a halved (or quartered, ...) copy to a hidden temp file; None if it cannot shrink."""
    image = open_image(path)
    save_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    options = {"quality": JPEG_QUALITY} if save_format in ("JPEG", "WEBP") else {}
    factor = 1
    data_file: Path | None = None
    try:
        while min(image.size) // (factor * 2) >= MIN_SHORT_SIDE:
            factor *= 2
            size = (image.width // factor, image.height // factor)
            smaller = image.resize(size, Image.Resampling.LANCZOS)  # always from the original: sharper
            if data_file is None:
                data_file = _new_temp_file(path)  # the usual permissions (mkstemp's 0600 would stick)
            smaller.save(data_file, format=save_format, **options)
            if data_file.stat().st_size <= limit:
                return data_file, False
    except BaseException:
        if data_file is not None:
            data_file.unlink(missing_ok=True)
        raise
    return (data_file, True) if data_file is not None else None


def _replace_original(project: Project, batch, original: Path, replacement: Path) -> None:
    """Trash `original`, then rename `replacement` into its place."""
    try:
        add_to_batch(project, batch, [original], with_sidecars=False)
    except Exception:
        replacement.unlink(missing_ok=True)
        raise
    os.replace(replacement, original)


# Cleaning ----------------------------------------------------------------------------------------


def clean_dataset(project: Project, progress: Progress | None = None) -> HygieneReport:
    """Move every file that is neither an image nor a caption/cache sidecar into one trash batch.

    That includes hidden files (.DS_Store) and `.<name>.tmp` leftovers of interrupted writes.
    """
    progress = progress or Progress()
    report = HygieneReport(action="Moved non-image files to the trash", trashed="restorable from trash batch")
    listing = list_dataset(project)
    _note_links(listing, progress, report)
    junk = [p for p in listing.all_files() if not is_image_file(p) and not _is_sidecar(p)]
    progress.update(0, len(junk), "Cleaning dataset")
    if junk:
        progress.check_cancel()
        batch = move_to_trash(project, junk, reason="not an image or caption", with_sidecars=False)
        report.trash_batch = batch.id
        report.changed = sorted(_rel(project, p) for p in junk)
        for path in report.changed:
            progress.log(f"trashed {path}")
    progress.update(len(junk), len(junk), "Cleaning dataset")
    return report


def _rel(project: Project, path: Path) -> str:
    return path.relative_to(project.dataset_dir).as_posix()
