"""Training data the way kohya's sd-scripts sees it: folders, captions, buckets, batches, latents, prompts.

- `collect_items` walks the dataset folders (each with its own repeats / reg flag / keep_tokens / flip),
  reads every image's size from its header (EXIF rotation counted) in threads, reads captions, assigns
  aspect-ratio buckets and repeats regularization images round-robin up to the training count. Corrupt
  images are skipped and listed in `problems`; missing captions train with an empty caption and are
  reported as a warning.
- `process_caption` keeps the first `keep_tokens` tags and shuffles (and optionally drops) the rest.
- `epoch_batches` / `steps_per_epoch`: batches within a bucket, deterministic from (seed, epoch).
- `load_image_tensor`: scale to cover the bucket, centre crop, [-1, 1].
Latents are cached by latents.py and captions are encoded by prompts.py.

The metadata helpers (`bucket_info`, `tag_frequency`, `dataset_dirs`) return kohya's `ss_*` shapes.
torch and numpy are imported inside the functions that need them.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import IMAGE_EXTENSIONS
from lora_gradio.engine.parallel import WORKERS
from lora_gradio.engine.progress import Progress, first_few
from lora_gradio.engine.train.steps import regularization_repeats

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Same thread count rule as images.py: header reads and decodes release the GIL.
_WORKERS = WORKERS


# Folders and items -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DatasetFolder:
    """One image folder with its own settings (kohya's "subset").

    `name` is the key used in the metadata (`ss_dataset_dirs`, `ss_tag_frequency`); it defaults to the
    folder's basename, as kohya uses. `keep_tokens` / `flip_aug` are per folder like kohya's subsets.
    Compared and hashed by identity, so the same path may be listed twice (kohya allows it).
    """

    path: Path
    name: str = ""
    num_repeats: int = 1
    is_reg: bool = False
    keep_tokens: int = 0
    flip_aug: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not self.name:
            object.__setattr__(self, "name", self.path.name)


@dataclass(eq=False)
class ImageItem:
    """One image as training sees it. Compared and hashed by identity.

    `num_repeats` is the effective number of times the image appears per epoch: the folder's repeats for
    training images; for regularization images the round-robin count (may be 0: not used at all).
    `flip` says whether the image may be flipped (its folder's flip_aug); `size` is the upright (w, h).
    """

    path: Path
    folder: DatasetFolder
    caption_text: str
    bucket: tuple[int, int]
    is_reg: bool
    keep_tokens: int
    flip: bool
    num_repeats: int
    size: tuple[int, int] = (0, 0)
    ar_error: float = 0.0  # bucket aspect ratio minus image aspect ratio (kohya's sign)


# Buckets -----------------------------------------------------------------------------------------


def _resolution_pair(resolution: "int | Sequence[int]") -> tuple[int, int]:
    if isinstance(resolution, (int, float)):
        return int(resolution), int(resolution)
    values = [int(v) for v in resolution]
    if len(values) == 1:
        return values[0], values[0]
    if len(values) != 2:
        raise UserError(f"Resolution {resolution!r} is not a size: use one number such as 512, or width,height.")
    return values[0], values[1]


def make_bucket_resolutions(
    resolution: "int | Sequence[int]", min_size: int = 256, max_size: int = 1024, divisible: int = 64
) -> list[tuple[int, int]]:
    """kohya's bucket list: area = w*h of the resolution; for each width from `min_size` to `max_size`
    by `divisible`, h = min(max, (area // w) // divisible * divisible), both orientations when h >= min,
    plus the square of side floor(sqrt(area) / divisible) * divisible. Sorted by (w, h)."""
    width, height = _resolution_pair(resolution)
    if divisible <= 0:
        raise UserError(f"The bucket step must be positive (got {divisible}); the usual value is 64.")
    if min_size > max_size:
        raise UserError(f"min_bucket_reso ({min_size}) is larger than max_bucket_reso ({max_size}); swap them or use 256 and 1024.")
    if width < divisible or height < divisible:
        raise UserError(f"Resolution {width}x{height} is too small; use at least {divisible} (the guide uses 512).")
    max_area = width * height
    resos: set[tuple[int, int]] = set()
    side = int(math.sqrt(max_area) // divisible) * divisible
    resos.add((side, side))
    w = min_size
    while w <= max_size:
        h = min(max_size, int((max_area // w) // divisible) * divisible)
        if h >= min_size:
            resos.add((w, h))
            resos.add((h, w))
        w += divisible
    return sorted(resos)


def select_bucket(size: tuple[int, int], resos: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], float]:
    """The bucket whose aspect ratio is nearest the image's (first in sorted order on a tie), and the
    signed error bucket_ar - image_ar. An image that exactly matches a bucket size takes it."""
    w, h = size
    if (w, h) in resos:
        return (w, h), 0.0
    aspect = w / h
    best = min(range(len(resos)), key=lambda i: abs(resos[i][0] / resos[i][1] - aspect))
    reso = tuple(resos[best])
    return reso, reso[0] / reso[1] - aspect  # type: ignore[return-value]


def resized_size(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int]:
    """Size the image is scaled to so it covers `bucket` (kohya's rounding), before the centre crop."""
    w, h = size
    bw, bh = bucket
    if w / h > bw / bh:  # wider than the bucket: match heights
        scale = bh / h
    else:
        scale = bw / w
    rw, rh = int(w * scale + 0.5), int(h * scale + 0.5)
    # Rounding can leave a pixel short of the bucket; never crop below it.
    return max(rw, bw), max(rh, bh)


# Collecting --------------------------------------------------------------------------------------


@dataclass
class CollectedDataset:
    """Everything found in the folders, ready for batching and for the metadata."""

    items: list[ImageItem]  # every usable image, including reg images with num_repeats 0
    folders: list[DatasetFolder]
    image_counts: dict[DatasetFolder, int]  # usable images per folder
    captions: dict[DatasetFolder, list[str]]  # raw caption of each usable image, per folder
    bucket_resos: list[tuple[int, int]]
    resolution: tuple[int, int]
    problems: list[tuple[Path, str]] = field(default_factory=list)  # skipped images and why
    warnings: list[str] = field(default_factory=list)  # non-fatal notes (missing captions, ...)
    missing_captions: list[Path] = field(default_factory=list)

    # Counting -----------------------------------------------------------------------------------

    @property
    def train_items(self) -> list[ImageItem]:
        return [item for item in self.items if not item.is_reg]

    @property
    def reg_items(self) -> list[ImageItem]:
        return [item for item in self.items if item.is_reg]

    @property
    def num_train_images(self) -> int:
        """kohya's `ss_num_train_images`: training images times their folder's repeats."""
        return sum(f.num_repeats * n for f, n in self.image_counts.items() if not f.is_reg)

    @property
    def num_reg_images(self) -> int:
        """kohya's `ss_num_reg_images`: regularization images times their folder's repeats (as configured)."""
        return sum(f.num_repeats * n for f, n in self.image_counts.items() if f.is_reg)

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Samples per bucket per epoch (repeats included), sorted by resolution; empty buckets left out."""
        counts: dict[tuple[int, int], int] = defaultdict(int)
        for item in self.items:
            if item.num_repeats > 0:
                counts[item.bucket] += item.num_repeats
        return dict(sorted(counts.items()))

    # Metadata shapes ----------------------------------------------------------------------------

    def bucket_info(self) -> dict[str, Any]:
        """`ss_bucket_info`: used buckets numbered in resolution order, counts with repeats, and the mean
        absolute aspect-ratio error over the images in use."""
        buckets = {
            str(i): {"resolution": [w, h], "count": count}
            for i, ((w, h), count) in enumerate(self.bucket_counts().items())
        }
        used = [abs(item.ar_error) for item in self.items if item.num_repeats > 0]
        mean = float(sum(used) / len(used)) if used else 0.0
        return {"buckets": buckets, "mean_img_ar_error": mean}

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """`ss_tag_frequency`: per folder name, each comma-separated tag (stripped, lower-cased) counted
        once per caption file it appears in (repeats do not multiply it). Reg folders included, as kohya."""
        out: dict[str, dict[str, int]] = {}
        for folder in self.folders:
            freq = out.setdefault(folder.name, {})
            for caption in self.captions.get(folder, []):
                tags = dict.fromkeys(t.strip().lower() for t in caption.split(","))  # a tag twice counts once
                for tag in tags:
                    if tag:
                        freq[tag] = freq.get(tag, 0) + 1
        return out

    def dataset_dirs(self, reg: bool = False) -> dict[str, dict[str, int]]:
        """`ss_dataset_dirs` (training folders; `reg=True` gives `ss_reg_dataset_dirs`):
        {name: {"n_repeats": r, "img_count": n}}; a repeated name gets " (2)", " (3)" like kohya."""
        out: dict[str, dict[str, int]] = {}
        for folder in self.folders:
            if folder.is_reg != reg:
                continue
            key, i = folder.name, 2
            while key in out:
                key, i = f"{folder.name} ({i})", i + 1
            out[key] = {"n_repeats": folder.num_repeats, "img_count": self.image_counts.get(folder, 0)}
        return out

    # Changing -----------------------------------------------------------------------------------

    def drop(self, path: Path, reason: str, progress: Progress | None = None) -> None:
        """Remove an image found unreadable late (e.g. while caching latents), record why, and
        recompute the regularization repeats. Raises `UserError` if no training image is left."""
        path = Path(path)
        kept = [item for item in self.items if item.path != path]
        if len(kept) == len(self.items):
            return
        for item in self.items:
            if item.path == path:
                self.image_counts[item.folder] = self.image_counts.get(item.folder, 1) - 1
                caps = self.captions.get(item.folder)
                if caps is not None and item.caption_text in caps:
                    caps.remove(item.caption_text)
        self.items = kept
        self.problems.append((path, reason))
        if progress is not None:
            progress.log(f"skipped {path.name}: {reason}")
        if not self.train_items:
            raise UserError("No readable training images are left; replace the unreadable images listed in the log.")
        _assign_repeats(self.items)


def _list_images(folder: Path) -> list[Path]:
    """The folder's images, sorted. Links are skipped, as every stage skips them (fsutil.folder_entries):
    kohya's `cache_latents_to_disk` writes `.npz` files beside the images, which must stay inside the root."""
    from lora_gradio.engine.fsutil import folder_entries

    return [p for p in folder_entries(folder).files if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS]


_ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def read_image_size(path: Path) -> tuple[int, int]:
    """The upright (width, height) of an image from its header only (EXIF orientation counted).
    Raises `UnreadableImage` for files Pillow cannot identify."""
    from PIL import Image, UnidentifiedImageError

    from lora_gradio.engine.images import MAX_PIXELS, UnreadableImage

    try:
        with Image.open(path) as img:
            width, height = img.size
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # a broken EXIF block is ignored, as open_image does
                orientation = 1
    except UnidentifiedImageError:
        raise UnreadableImage(f"{path.name}: not an image file (or a format Pillow cannot read).") from None
    except Image.DecompressionBombError:
        raise UnreadableImage(f"{path.name}: image is too large to decode safely (possible decompression bomb).") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImage(f"{path.name}: corrupt or truncated image ({str(exc).strip() or type(exc).__name__}).") from None
    if width <= 0 or height <= 0:
        raise UnreadableImage(f"{path.name}: the image has no pixels ({width}x{height}).")
    if width * height > MAX_PIXELS:
        raise UnreadableImage(
            f"{path.name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
            f"{MAX_PIXELS / 1e6:.0f} MP limit (possible decompression bomb); resize it or remove it."
        )
    if orientation in _ROTATED_ORIENTATIONS:
        width, height = height, width
    return width, height


def _decoded_size(path: Path) -> tuple[int, int]:
    from lora_gradio.engine.images import open_image

    img = open_image(path)
    try:
        return img.size
    finally:
        img.close()


def _read_caption(image: Path, extension: str) -> tuple[str | None, str | None]:
    """(caption, warning). None caption = no caption file. kohya uses the first line only."""
    candidates = [image.with_suffix(extension), image.with_suffix(extension.upper())]
    for candidate in candidates:
        if candidate.is_file():
            break
    else:
        return None, None
    raw = candidate.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
        warning = None
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        warning = f"{candidate.name} is not valid UTF-8; unreadable characters were replaced"
    lines = [line.strip() for line in text.splitlines()]
    caption = lines[0] if lines else ""
    if any(lines[1:]):
        extra = f"{candidate.name} has more than one line; only the first is used (as kohya does)"
        warning = f"{warning}; {extra}" if warning else extra
    return caption, warning


def _reason(error: BaseException) -> str:
    return str(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"


def collect_items(
    folders: Iterable[DatasetFolder],
    caption_extension: str = ".txt",
    resolution: "int | Sequence[int]" = 512,
    min_bucket_reso: int = 256,
    max_bucket_reso: int = 1024,
    bucket_reso_steps: int = 64,
    progress: Progress | None = None,
    decode_check: bool = False,
) -> CollectedDataset:
    """Find every image and caption in `folders` and assign buckets and repeats.

    Sizes come from image headers (fast); with `decode_check=True` every image is fully decoded instead
    (slower, but a truncated file is caught here rather than when its latents are made). Unreadable
    images are skipped and listed in `problems`. Raises `UserError` for a missing or empty folder, an
    image pair sharing a stem (png + jpg), or when no training image is left.
    """
    progress = progress or Progress()
    folders = list(folders)
    if not folders:
        raise UserError("No dataset folder was given; add a folder of images to the dataset.")
    ext = caption_extension.strip() or ".txt"
    if not ext.startswith("."):
        ext = "." + ext
    resolution_pair = _resolution_pair(resolution)
    resos = make_bucket_resolutions(resolution_pair, min_bucket_reso, max_bucket_reso, bucket_reso_steps)

    per_folder: list[tuple[DatasetFolder, list[Path]]] = []
    for folder in folders:
        if folder.num_repeats < 1:
            raise UserError(f"Folder {folder.name!r} has {folder.num_repeats} repeats; use 1 or more.")
        if folder.keep_tokens < 0:
            raise UserError(f"Folder {folder.name!r} has keep_tokens {folder.keep_tokens}; use 0 or more.")
        if not folder.path.is_dir():
            raise UserError(f"Dataset folder {folder.path} does not exist; create it and add images, or check the folder name.")
        images = _list_images(folder.path)
        if not images:
            raise UserError(
                f"Dataset folder {folder.path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); add images or check the folder name."
            )
        by_stem: dict[str, list[Path]] = defaultdict(list)
        for path in images:
            by_stem[path.stem].append(path)
        clashes = [group for group in by_stem.values() if len(group) > 1]
        if clashes:
            names = first_few([" and ".join(p.name for p in group) for group in clashes])
            raise UserError(
                f"In {folder.path}, images share a name and would share one caption file ({names}); rename or remove one of each pair."
            )
        per_folder.append((folder, images))

    all_paths = [path for _, images in per_folder for path in images]
    measure = _decoded_size if decode_check else read_image_size
    total = len(all_paths)
    message = "Checking images" if decode_check else "Reading image sizes"
    progress.update(0, total, message)
    sizes: dict[Path, tuple[int, int]] = {}
    problems: list[tuple[Path, str]] = []

    def work(path: Path) -> tuple[Path, tuple[int, int] | None, str | None]:
        try:
            return path, measure(path), None
        except Exception as exc:  # never crash on one file
            return path, None, _reason(exc)

    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for done, (path, size, reason) in enumerate(pool.map(work, all_paths), start=1):
            if size is None:
                problems.append((path, reason or "unreadable"))
                progress.log(f"skipped {path.name}: {reason}")
            else:
                sizes[path] = size
            if done % 64 == 0 or done == total:
                progress.update(done, total, message)
                progress.check_cancel()

    items: list[ImageItem] = []
    image_counts: dict[DatasetFolder, int] = {}
    captions: dict[DatasetFolder, list[str]] = {}
    missing: list[Path] = []
    warnings: list[str] = []
    for folder, images in per_folder:
        usable = [p for p in images if p in sizes]
        if not usable:
            raise UserError(
                f"None of the {len(images)} images in {folder.path} could be read; replace them (see the log for why each failed)."
            )
        image_counts[folder] = len(usable)
        captions[folder] = []
        for path in usable:
            caption, warning = _read_caption(path, ext)
            if warning:
                warnings.append(warning)
                progress.log(f"warning: {warning}")
            if caption is None:
                missing.append(path)
                caption = ""
            captions[folder].append(caption)
            bucket, ar_error = select_bucket(sizes[path], resos)
            items.append(
                ImageItem(
                    path=path,
                    folder=folder,
                    caption_text=caption,
                    bucket=bucket,
                    is_reg=folder.is_reg,
                    keep_tokens=folder.keep_tokens,
                    flip=folder.flip_aug,
                    num_repeats=folder.num_repeats,
                    size=sizes[path],
                    ar_error=ar_error,
                )
            )

    if missing:
        text = (
            f"{len(missing)} image(s) have no {ext} caption and will train with an empty caption "
            f"({first_few([p.name for p in missing])}); tag them or check the caption extension."
        )
        warnings.insert(0, text)
        progress.log(f"warning: {text}")
    if problems:
        progress.log(f"skipped {len(problems)} unreadable image(s): {first_few([p.name for p, _ in problems])}")

    dataset = CollectedDataset(
        items=items,
        folders=[f for f, _ in per_folder],
        image_counts=image_counts,
        captions=captions,
        bucket_resos=resos,
        resolution=resolution_pair,
        problems=problems,
        warnings=warnings,
        missing_captions=missing,
    )
    if not dataset.train_items:
        raise UserError("Every dataset folder is marked as regularization (is_reg); add at least one folder of training images.")
    _assign_repeats(dataset.items)
    return dataset


def _assign_repeats(items: list[ImageItem]) -> None:
    """Set each regularization image's repeats (kohya's round-robin up to the training count)."""
    num_train = sum(item.folder.num_repeats for item in items if not item.is_reg)
    reg = [item for item in items if item.is_reg]
    for item, repeats in zip(reg, regularization_repeats(num_train, [item.folder.num_repeats for item in reg])):
        item.num_repeats = repeats


# Captions ----------------------------------------------------------------------------------------


def process_caption(
    text: str,
    keep_tokens: int,
    shuffle: bool,
    rng: random.Random,
    caption_dropout_rate: float = 0.0,
    tag_dropout_rate: float = 0.0,
) -> str:
    """kohya's caption processing: the whole caption is dropped with `caption_dropout_rate`; otherwise
    the first `keep_tokens` comma-separated tags stay in place and the rest are shuffled (if `shuffle`)
    then each dropped with `tag_dropout_rate`. Tags are joined with ", ". Without shuffle or tag
    dropout the caption is returned as written (stripped)."""
    if caption_dropout_rate > 0 and rng.random() < caption_dropout_rate:
        return ""
    text = text.strip()
    if not shuffle and tag_dropout_rate <= 0:
        return text
    tags = [tag.strip() for tag in text.split(",")]
    tags = [tag for tag in tags if tag]
    keep = max(0, int(keep_tokens))
    fixed, flex = tags[:keep], tags[keep:]
    if shuffle:
        rng.shuffle(flex)
    if tag_dropout_rate > 0:
        flex = [tag for tag in flex if rng.random() >= tag_dropout_rate]
    return ", ".join(fixed + flex)


# Batches -----------------------------------------------------------------------------------------


def _epoch_rng(seed: int, epoch: int) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: stable across runs and Python versions.
    return random.Random(f"lora_gradio:{seed}:{epoch}")


def epoch_batches(dataset: CollectedDataset, batch_size: int, epoch: int, seed: int) -> list[list[tuple[ImageItem, bool]]]:
    """The batches of one epoch as (item, flip) pairs, like kohya's bucket batching.

    Each item appears `num_repeats` times; samples are grouped by bucket, shuffled within it, cut into
    batches of `batch_size` (the last batch of a bucket may be smaller), and the batch order shuffled.
    `flip` is drawn with probability 0.5 for items whose folder has flip_aug. Same (seed, epoch), same
    result; `len(...) == steps_per_epoch(dataset, batch_size)`.
    """
    if batch_size < 1:
        raise UserError(f"The batch size must be 1 or more (got {batch_size}).")
    rng = _epoch_rng(seed, epoch)
    by_bucket: dict[tuple[int, int], list[ImageItem]] = defaultdict(list)
    for item in dataset.items:
        by_bucket[item.bucket].extend([item] * item.num_repeats)
    batches: list[list[tuple[ImageItem, bool]]] = []
    for bucket in sorted(by_bucket):
        samples = by_bucket[bucket]
        rng.shuffle(samples)
        for start in range(0, len(samples), batch_size):
            batches.append([(item, item.flip and rng.random() < 0.5) for item in samples[start : start + batch_size]])
    rng.shuffle(batches)
    return batches


def steps_per_epoch(dataset: CollectedDataset, batch_size: int) -> int:
    """Batches per epoch: the sum over buckets of ceil(samples in bucket / batch_size), samples counting
    repeats and the regularization images' round-robin repeats (kohya's number)."""
    if batch_size < 1:
        raise UserError(f"The batch size must be 1 or more (got {batch_size}).")
    return sum(math.ceil(n / batch_size) for n in dataset.bucket_counts().values())


# Image tensors -----------------------------------------------------------------------------------


def prepare_image(path: Path, bucket: tuple[int, int]):
    """Decode `path` (upright, RGB) and scale it to cover `bucket`, then centre-crop to it. Returns PIL.
    Downscaling uses the area (box) filter like kohya's cv2.INTER_AREA; upscaling uses Lanczos."""
    from PIL import Image

    from lora_gradio.engine.images import open_image

    img = open_image(path)
    target = resized_size(img.size, bucket)
    if target != img.size:
        upscale = target[0] > img.size[0] or target[1] > img.size[1]
        method = Image.Resampling.LANCZOS if upscale else Image.Resampling.BOX
        img = img.resize(target, method)
    bw, bh = bucket
    left = (img.width - bw) // 2
    top = (img.height - bh) // 2
    if (left, top) != (0, 0) or img.size != (bw, bh):
        img = img.crop((left, top, left + bw, top + bh))
    return img


def load_image_tensor(item: ImageItem, flip: bool = False) -> "torch.Tensor":
    """The item's image as a float32 tensor [3, h, w] in [-1, 1] at its bucket size (w, h), flipped
    left-right if `flip`. Raises `UnreadableImage` for a file that cannot be decoded."""
    import numpy as np
    import torch

    img = prepare_image(item.path, item.bucket)
    array = np.asarray(img, dtype=np.float32)
    img.close()
    if flip:
        array = array[:, ::-1, :]
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    return tensor / 127.5 - 1.0
