"""Training data the way kohya's sd-scripts sees it: folders, captions, buckets, batches, latents, prompts.

- `collect_items` walks the dataset folders (each with its own repeats / reg flag / keep_tokens / flip),
  reads every image's size from its header (EXIF rotation counted) in threads, reads captions, assigns
  aspect-ratio buckets and repeats regularization images round-robin up to the training count. Corrupt
  images are skipped and listed in `problems`; missing captions train with an empty caption and are
  reported as a warning.
- `process_caption` keeps the first `keep_tokens` tags and shuffles (and optionally drops) the rest.
- `epoch_batches` / `steps_per_epoch`: batches within a bucket, deterministic from (seed, epoch).
- `load_image_tensor`: scale to cover the bucket, centre crop, [-1, 1].
- `LatentCache`: VAE latents in memory and optionally on disk, keyed by the image file's identity.
- `encode_prompts`: 75/150/225-token prompts in 77-token chunks, with clip skip.

The metadata helpers (`bucket_info`, `tag_frequency`, `dataset_dirs`) return kohya's `ss_*` shapes.
torch and numpy are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import IMAGE_EXTENSIONS, atomic_path
from lora_gradio.engine.progress import Progress, first_few

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Same thread count rule as images.py: header reads and decodes release the GIL.
_WORKERS = max(2, min(16, os.cpu_count() or 2))
DEFAULT_SCALING_FACTOR = 0.18215  # SD1.x/SD2.x; SDXL's VAE config says 0.13025
CACHE_FORMAT_VERSION = 1  # bump when the meaning of a cached latent file changes


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
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


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
    """kohya's regularization repeats: reg images are taken round-robin (in order) until their count
    reaches the training count (training images x repeats). The first pass adds each image's folder
    repeats, later passes one at a time; images not reached get 0 repeats (unused)."""
    num_train = sum(item.folder.num_repeats for item in items if not item.is_reg)
    reg = [item for item in items if item.is_reg]
    for item in reg:
        item.num_repeats = 0
    if not reg:
        return
    n = 0
    first_loop = True
    while n < num_train:
        for item in reg:
            if first_loop:
                item.num_repeats = item.folder.num_repeats
                n += item.num_repeats
            else:
                item.num_repeats += 1
                n += 1
            if n >= num_train:
                break
        first_loop = False


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


# Latents -----------------------------------------------------------------------------------------


def vae_identity(vae: Any) -> str:
    """A short fingerprint of a VAE: its config plus the bytes of its first and last parameters.
    Two different VAEs (or a fine-tuned one) give different strings; computing it is cheap."""
    import torch

    digest = hashlib.sha256()
    config = getattr(vae, "config", None)
    try:
        digest.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    except Exception:
        digest.update(type(vae).__name__.encode())
    params = list(vae.parameters()) if hasattr(vae, "parameters") else []
    for param in params[:1] + params[-1:]:
        with torch.no_grad():
            digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentCache:
    """VAE latents for every (image, bucket, flip), in memory and optionally on disk.

    Latents are one draw of the VAE posterior, `latent_dist.sample()`, as kohya caches (its
    `cache_latents` encodes once and reuses that sample every epoch), times the VAE's scaling factor
    (`vae.config.scaling_factor`, default 0.18215). The draw is seeded per image from the cache key, so
    it does not depend on the batch it was encoded in. `use_mean=True` caches the posterior mean instead.
    With flip_aug the flipped image is encoded too (not the latent flipped), as kohya does.

    On disk (`cache_dir`, e.g. the project's `_cache/latents`) there is one safetensors file per entry,
    named by a hash of: the image's absolute path, file size and mtime, the bucket, the flip, the VAE
    identity, the VAE dtype, and sample/mean. A changed image gets a new key and is encoded again; old
    files are simply no longer read. Files store unscaled float32 latents [4, h/8, w/8].
    """

    def __init__(
        self,
        vae: Any,
        device: "str | torch.device | None" = None,
        dtype: "torch.dtype | None" = None,
        cache_dir: "Path | None" = None,
        vae_id: str | None = None,
        batch_size: int = 4,
        use_mean: bool = False,
        seed: int = 0,
        scaling_factor: float | None = None,
    ):
        import torch

        self.vae = vae
        first = next(iter(vae.parameters()), None) if hasattr(vae, "parameters") else None
        self.device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
        self.dtype = dtype or (first.dtype if first is not None else torch.float32)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.vae_id = vae_id if vae_id is not None else vae_identity(vae)
        self.batch_size = max(1, int(batch_size))
        self.use_mean = use_mean
        self.seed = seed
        config_factor = getattr(getattr(vae, "config", None), "scaling_factor", None)
        self.scaling_factor = float(scaling_factor or config_factor or DEFAULT_SCALING_FACTOR)
        self._memory: dict[str, "torch.Tensor"] = {}  # key -> scaled latents (CPU, float32)
        self._keys: dict[tuple[Path, tuple[int, int], bool], str] = {}
        self.encoded = 0  # entries encoded by the VAE in this session
        self.loaded = 0  # entries read back from disk

    # Keys ---------------------------------------------------------------------------------------

    def key(self, item: ImageItem, flip: bool) -> str:
        stat = item.path.stat()
        parts = [
            f"v{CACHE_FORMAT_VERSION}",
            str(item.path.resolve()),
            str(stat.st_size),
            str(stat.st_mtime_ns),
            f"{item.bucket[0]}x{item.bucket[1]}",
            "flip" if flip else "noflip",
            self.vae_id,
            str(self.dtype).replace("torch.", ""),
            "mean" if self.use_mean else "sample",
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]

    def _file(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    # Filling ------------------------------------------------------------------------------------

    def cache(self, items: "CollectedDataset | Iterable[ImageItem]", progress: Progress | None = None) -> list[tuple[Path, str]]:
        """Make sure every item in use (num_repeats > 0) has its latents (and flipped latents when the
        item may flip). Reads what the disk cache has, encodes the rest in batches of one bucket.

        Unreadable images are skipped and returned as (path, reason); given a `CollectedDataset` they
        are also dropped from it (so its step count stays right). Checks cancel between batches.
        """
        progress = progress or Progress()
        dataset = items if isinstance(items, CollectedDataset) else None
        wanted = [item for item in (dataset.items if dataset else items) if item.num_repeats > 0]
        entries: list[tuple[ImageItem, bool]] = []
        for item in wanted:
            entries.append((item, False))
            if item.flip:
                entries.append((item, True))

        total = len(entries)
        done = 0
        todo: dict[tuple[int, int], list[tuple[ImageItem, bool, str]]] = defaultdict(list)
        failed: dict[Path, str] = {}
        for item, flip in entries:
            try:
                key = self.key(item, flip)
            except OSError as exc:
                failed[item.path] = f"{item.path.name}: cannot read the file ({exc.strerror or exc})."
                continue
            self._keys[(item.path, item.bucket, flip)] = key
            if key in self._memory or self._load(key):
                done += 1
            else:
                todo[item.bucket].append((item, flip, key))
        progress.update(done, total, "caching latents")

        batches = []
        for bucket in sorted(todo):
            pending = todo[bucket]
            batches.extend(pending[i : i + self.batch_size] for i in range(0, len(pending), self.batch_size))

        # Images are decoded in threads, one task per image, a few batches ahead of the VAE.
        ahead = 2
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            window: deque[list[Future]] = deque()

            def submit(batch: list[tuple[ImageItem, bool, str]]) -> list[Future]:
                return [pool.submit(self._load_one, item, flip) for item, flip, _ in batch]

            try:
                window.extend(submit(batch) for batch in batches[:ahead])
                for index, batch in enumerate(batches):
                    progress.check_cancel()
                    futures = window.popleft()
                    if index + ahead < len(batches):
                        window.append(submit(batches[index + ahead]))
                    good_entries, good_pixels = [], []
                    for entry, future in zip(batch, futures):
                        tensor, reason = future.result()
                        if tensor is None:
                            failed.setdefault(entry[0].path, reason or "unreadable")
                        else:
                            good_entries.append(entry)
                            good_pixels.append(tensor)
                    if good_entries:
                        self._encode(good_entries, good_pixels)
                    done += len(batch)
                    progress.update(done, total, f"caching latents {done}/{total}")
            finally:
                for futures in window:  # cancelled or failed: do not decode the rest
                    for future in futures:
                        future.cancel()
        progress.check_cancel()

        problems = sorted(failed.items())
        for path, reason in problems:
            for key_tuple in [k for k in self._keys if k[0] == path]:
                self._memory.pop(self._keys.pop(key_tuple), None)
            if dataset is not None:
                dataset.drop(path, reason, progress)
            else:
                progress.log(f"skipped {path.name}: {reason}")
        if dataset is not None and problems:
            # Dropping can give reg images more repeats: cache any newly used reg images too.
            if any(item.num_repeats > 0 and self._keys.get((item.path, item.bucket, False)) is None for item in dataset.items):
                problems += self.cache(dataset, progress)
        return problems

    @staticmethod
    def _load_one(item: ImageItem, flip: bool) -> "tuple[torch.Tensor | None, str | None]":
        try:
            return load_image_tensor(item, flip), None
        except Exception as exc:  # one bad file must not stop caching
            return None, _reason(exc)

    def _encode(self, batch: list[tuple[ImageItem, bool, str]], pixels: list["torch.Tensor"]) -> None:
        import torch

        x = torch.stack(pixels).to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            if self.use_mean:
                latents = dist.mode() if hasattr(dist, "mode") else dist.mean
            elif hasattr(dist, "mean") and hasattr(dist, "std"):
                noise = torch.stack(
                    [
                        torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(self._entry_seed(key)), dtype=torch.float32)
                        for _, _, key in batch
                    ]
                ).to(device=dist.mean.device, dtype=dist.mean.dtype)
                latents = dist.mean + dist.std * noise
            else:
                latents = dist.sample()
        latents = latents.detach().to("cpu", torch.float32)
        if not torch.isfinite(latents).all():
            names = first_few([item.path.name for item, _, _ in batch])
            raise UserError(
                f"The VAE produced NaN/inf latents for {names} in {str(self.dtype).replace('torch.', '')}; "
                "run the VAE in float32 (or use a VAE fixed for half precision)."
            )
        for (item, flip, key), latent in zip(batch, latents):
            latent = latent.contiguous()
            self._memory[key] = latent * self.scaling_factor
            self.encoded += 1
            if self.cache_dir is not None:
                self._save(key, latent, item, flip)

    def _entry_seed(self, key: str) -> int:
        return int(hashlib.sha256(f"{self.seed}:{key}".encode()).hexdigest()[:15], 16)

    # Disk ---------------------------------------------------------------------------------------

    def _save(self, key: str, latent: "torch.Tensor", item: ImageItem, flip: bool) -> None:
        from safetensors.torch import save_file

        path = self._file(key)
        metadata = {
            "image": str(item.path),
            "bucket": f"{item.bucket[0]}x{item.bucket[1]}",
            "flip": str(bool(flip)),
            "vae": self.vae_id,
            "mode": "mean" if self.use_mean else "sample",
            "format": str(CACHE_FORMAT_VERSION),
        }
        try:
            with atomic_path(path) as tmp:
                save_file({"latents": latent}, str(tmp), metadata=metadata)
        except OSError as exc:  # a full disk must not stop training: memory still has it
            if not getattr(self, "_disk_warned", False):
                self._disk_warned = True
                import warnings

                warnings.warn(f"cannot write the latent cache to {self.cache_dir}: {exc}", stacklevel=2)

    def _load(self, key: str) -> bool:
        if self.cache_dir is None:
            return False
        path = self._file(key)
        if not path.is_file():
            return False
        try:
            import torch
            from safetensors.torch import load_file

            latent = load_file(str(path))["latents"].to(dtype=torch.float32)
        except Exception:  # a damaged cache file is re-encoded
            return False
        self._memory[key] = latent * self.scaling_factor
        self.loaded += 1
        return True

    # Reading ------------------------------------------------------------------------------------

    def get(self, item: ImageItem, flip: bool = False) -> "torch.Tensor":
        """Scaled latents [4, h/8, w/8] (CPU, float32) of a cached (item, flip)."""
        key = self._keys.get((item.path, item.bucket, bool(flip)))
        if key is None or key not in self._memory:
            raise KeyError(f"no cached latents for {item.path.name} (flip={flip}); call cache() first")
        return self._memory[key]

    def batch(self, pairs: Sequence[tuple[ImageItem, bool]]) -> "torch.Tensor":
        """Stacked scaled latents [B, 4, h/8, w/8] for one batch from `epoch_batches`."""
        import torch

        return torch.stack([self.get(item, flip) for item, flip in pairs])

    def __len__(self) -> int:
        return len(self._memory)


# Prompts -----------------------------------------------------------------------------------------


def _final_layer_norm(text_encoder: Any):
    """The text model's final LayerNorm: on `.text_model` (CLIPTextModelWithProjection, transformers
    < 5.6 CLIPTextModel) or on the model itself (transformers >= 5.6 CLIPTextModel)."""
    for owner in (getattr(text_encoder, "text_model", None), text_encoder):
        norm = getattr(owner, "final_layer_norm", None) if owner is not None else None
        if norm is not None:
            return norm
    for name, module in text_encoder.named_modules():
        if name.split(".")[-1] == "final_layer_norm":
            return module
    raise ValueError(f"{type(text_encoder).__name__} has no final_layer_norm; clip skip needs a CLIP text model")


def tokenize_prompts(tokenizer: Any, captions: Sequence[str], max_token_length: int = 225) -> "torch.Tensor":
    """Token ids [B, chunks, 77] as kohya's `get_input_ids`: tokenize to max_token_length + 2 (padded,
    truncated), then split the content into chunks of 75, each as BOS + 75 tokens + the last id.
    For pad != eos tokenizers (SD2, SDXL) a chunk ending in content gets EOS, and an empty chunk
    starts BOS EOS, like kohya."""
    model_max = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if model_max > 1000:  # tokenizers without a set length say "very large"
        model_max = 77
    content = model_max - 2
    if max_token_length not in (content, 2 * content, 3 * content):
        raise UserError(f"max_token_length must be {content}, {2 * content} or {3 * content} (got {max_token_length}).")
    ids = tokenizer(
        list(captions), padding="max_length", truncation=True, max_length=max_token_length + 2, return_tensors="pt"
    ).input_ids
    return chunk_token_ids(tokenizer, ids, max_token_length)


def chunk_token_ids(tokenizer: Any, ids: "torch.Tensor", max_token_length: int) -> "torch.Tensor":
    """Padded ids [B, max_token_length + 2] -> [B, chunks, 77], each chunk BOS + 75 + last id."""
    import torch

    content = max_token_length if max_token_length <= 75 else 75
    if max_token_length == content:
        return ids.unsqueeze(1)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for i in range(1, max_token_length - content + 2, content):
        chunk = torch.cat([ids[:, :1], ids[:, i : i + content], ids[:, -1:]], dim=1).clone()
        if pad != eos:
            ends_in_content = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
            chunk[ends_in_content, -1] = eos
            chunk[chunk[:, 1] == pad, 1] = eos
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def encode_prompts(
    tokenizer: Any,
    text_encoder: Any,
    captions: Sequence[str],
    max_token_length: int = 225,
    clip_skip: int = 2,
    device: "str | torch.device | None" = None,
) -> "torch.Tensor":
    """Text-encoder states [B, max_token_length + 2, dim] for the UNet, as kohya's `get_hidden_states`.

    Each 77-token chunk is encoded as one (B * chunks, 77) batch with `output_hidden_states=True`;
    clip_skip > 1 takes hidden_states[-clip_skip] through the final layer norm (clip_skip 1 is the
    plain last hidden state). Chunks are joined as BOS state of chunk 1 + states[1:76] of every chunk
    + the last state of the last chunk. No `no_grad` here: gradients flow when the encoder trains
    (wrap the call in `torch.no_grad()` yourself when it does not).
    """
    if clip_skip < 1:
        raise UserError(f"clip_skip must be 1 or more (got {clip_skip}); the guide uses 2.")
    return encode_token_ids(text_encoder, tokenize_prompts(tokenizer, captions, max_token_length), max_token_length, clip_skip, device)


def encode_token_ids(text_encoder: Any, ids: "torch.Tensor", max_token_length: int, clip_skip: int, device: Any = None) -> "torch.Tensor":
    """The encoding half of `encode_prompts`, for ids already split into 77-token chunks [B, chunks, 77]."""
    batch, n_chunks, length = ids.shape
    if device is None:
        device = next(text_encoder.parameters()).device
    flat = ids.reshape(batch * n_chunks, length).to(device)
    if clip_skip == 1:
        states = text_encoder(flat, return_dict=True).last_hidden_state
    else:
        out = text_encoder(flat, output_hidden_states=True, return_dict=True)
        states = _final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])
    states = states.reshape(batch, n_chunks * length, states.shape[-1])
    if n_chunks == 1:
        return states
    import torch

    parts = [states[:, :1]]
    for i in range(1, max_token_length, length):
        parts.append(states[:, i : i + length - 2])
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)
