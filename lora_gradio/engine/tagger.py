"""Tagging and captioning a dataset: the WD tagger (onnxruntime) and BLIP (transformers).

WD tagger (SmilingWolf's models, as the guide's notebook uses them through kohya's script):
- a model is a repo id (`SmilingWolf/wd-swinv2-tagger-v3`, `SmilingWolf/wd-v1-4-moat-tagger-v2`, ...)
  fetched with huggingface_hub (cache first, then download) or a local folder holding
  `model.onnx` and `selected_tags.csv`;
- preprocessing is the reference one: alpha composited on white, padded to a centred white square,
  resized (bicubic) to the model's own input size, float32 0..255, BGR, NHWC;
- the batch size is read from the model (some v2 models are fixed at batch 1);
- tags per image: general tags over the threshold, then character tags (off by default, as in the
  notebook), in the CSV's order; underscores become spaces except in kaomoji; the blacklist is
  removed; with two models the second only appends tags the first did not give (the notebook runs
  both v3 taggers that way);
- caption files are `<image stem>.txt`, tags joined with ", ", written atomically.

Named tagger choices (`TAGGER_PRESETS`, used by the page's buttons and `tag --preset`): the guide's
SD 1.5 choice (wd-swinv2-tagger-v3, threshold 0.35) and the current XL Dataset Maker's "Both"
(wd-eva02-large-tagger-v3, then wd-vit-large-tagger-v3 adding only new tags, threshold 0.25, batch 8).

Existing caption files: "skip" (default) leaves an image that already has a non-empty caption file
alone, which also makes a cancelled run resumable; "append" keeps the existing tags first and adds
only new ones (kohya's `--append_tags`); "overwrite" replaces them.

Images are decoded and preprocessed in a thread pool that runs a few batches ahead of the model, so
the model does not wait on Pillow; caption files are written by a second small pool.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_write_text, is_image_file
from lora_gradio.engine.images import open_image
from lora_gradio.engine.parallel import WORKERS, prefetch
from lora_gradio.engine.tags import KAOMOJI, display_tag  # noqa: F401 - KAOMOJI re-exported for callers
from lora_gradio.engine.progress import Progress, first_few
from lora_gradio.engine.project import Project

DEFAULT_WD_MODEL = "SmilingWolf/wd-swinv2-tagger-v3"
# The notebook runs both v3 taggers: these two, the second appending only new tags.
NOTEBOOK_WD_MODELS = ("SmilingWolf/wd-swinv2-tagger-v3", "SmilingWolf/wd-vit-tagger-v3")
# The XL Dataset Maker's taggers ("Both" by default): eva02-large first, vit-large appending new tags.
XL_WD_MODELS = ("SmilingWolf/wd-eva02-large-tagger-v3", "SmilingWolf/wd-vit-large-tagger-v3")
XL_GENERAL_THRESHOLD = 0.25
XL_BATCH_SIZE = 8
DEFAULT_BLIP_MODEL = "Salesforce/blip-image-captioning-large"
DEFAULT_GENERAL_THRESHOLD = 0.35
CHARACTER_THRESHOLD_WHEN_ON = 0.85  # the common value when the person wants character names
EXISTING_MODES = ("skip", "append", "overwrite")
MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
CAPTION_EXTENSION = ".txt"
SEPARATOR = ", "

# The guide's notebook blacklist (tags that say nothing about the character or style).
DEFAULT_BLACKLIST: tuple[str, ...] = (
    "virtual youtuber",
    "parody",
    "style parody",
    "official alternate costume",
    "official alternate hairstyle",
    "official alternate hair length",
    "alternate costume",
    "alternate hairstyle",
    "alternate hair length",
    "alternate hair color",
)

# Tags whose underscores are part of the face (SmilingWolf's list, as kohya and the WD demo use).

CATEGORY_RATING = 9
CATEGORY_GENERAL = 0
CATEGORY_CHARACTER = 4

_WORKERS = WORKERS
_DEFAULT_BATCH = 32
_WHITE = (255, 255, 255)


# Named tagger choices ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TaggerPreset:
    """A named choice of WD tagger(s) and threshold, as one of the guide's notebooks makes it."""

    key: str  # the command line's name (`tag --preset KEY`)
    label: str  # what the page's button says
    models: tuple[str, ...]  # the second and later models append only tags the first did not give
    general_threshold: float
    batch_size: int | None = None  # None: the engine picks (the model's fixed batch, else 32)

    @property
    def second_model(self) -> str:
        return self.models[1] if len(self.models) > 1 else ""

    def job_kwargs(self) -> dict[str, Any]:
        """The `tag_images` arguments this choice sets."""
        kwargs: dict[str, Any] = {"models": list(self.models), "general_threshold": self.general_threshold}
        if self.batch_size is not None:
            kwargs["batch_size"] = self.batch_size
        return kwargs


def _short(repo_id: str) -> str:
    return repo_id.rsplit("/", 1)[-1]


TAGGER_PRESETS: tuple[TaggerPreset, ...] = (
    TaggerPreset(
        key="sd15",
        label=f"SD 1.5 guide: {_short(DEFAULT_WD_MODEL)} ({DEFAULT_GENERAL_THRESHOLD:g})",
        models=(DEFAULT_WD_MODEL,),
        general_threshold=DEFAULT_GENERAL_THRESHOLD,
    ),
    TaggerPreset(
        key="sdxl",
        label=f"SDXL Dataset Maker: both large v3 ({XL_GENERAL_THRESHOLD:g})",
        models=XL_WD_MODELS,
        general_threshold=XL_GENERAL_THRESHOLD,
        batch_size=XL_BATCH_SIZE,
    ),
)
DEFAULT_TAGGER_PRESET = "sd15"  # what the page shows before a choice is made


def tagger_preset(name: str) -> TaggerPreset:
    """The preset with this key (`sd15`, `sdxl`) or label, in any case."""
    wanted = str(name or "").strip().lower()
    for preset in TAGGER_PRESETS:
        if wanted in (preset.key, preset.label.lower()):
            return preset
    raise UserError(f"Unknown tagger choice {name!r}: use one of {', '.join(p.key for p in TAGGER_PRESETS)}.")


# Reports -----------------------------------------------------------------------------------------


@dataclass
class TagReport:
    action: str = "Tagged"  # "Tagged" or "Captioned": the verb for `summary`
    tagged: list[str] = field(default_factory=list)  # image paths relative to the dataset folder
    skipped: list[str] = field(default_factory=list)  # already had a caption file ("skip")
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    models: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = f"{self.action} {len(self.tagged)} image(s)"
        if self.skipped:
            text += f"; skipped {len(self.skipped)} that already had a caption file"
        if self.failed:
            listed = first_few([f"{path}: {reason.rstrip('.')}" for path, reason in self.failed])
            text += f"; could not read {len(self.failed)}: {listed}"
        return text + "."


# Tag names ---------------------------------------------------------------------------------------


def tag_display_name(name: str) -> str:
    """`long_hair` -> `long hair`; kaomoji such as `^_^` keep their underscores (tags.display_tag)."""
    return display_tag(name)


def parse_tag_list(value: str | Iterable[str] | None) -> list[str]:
    """A comma-separated string or a list -> clean tag names (spaces, not underscores)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        tag = tag_display_name(str(item))
        if tag and tag not in out:
            out.append(tag)
    return out


def merge_tags(first: Sequence[str], more: Iterable[str]) -> list[str]:
    """`first` in its order, then the tags of `more` it does not have yet."""
    merged = list(first)
    seen = set(merged)
    for tag in more:
        if tag not in seen:
            merged.append(tag)
            seen.add(tag)
    return merged


def read_caption_tags(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


# WD tagger ---------------------------------------------------------------------------------------


@dataclass
class WDTagger:
    """A loaded WD tagger: the onnxruntime session and its tags, split by category."""

    name: str
    session: Any
    input_name: str
    output_name: str
    height: int
    width: int
    fixed_batch: int | None  # None: any batch size; an int: the model takes exactly that many
    tag_names: list[str]  # display names (spaces), in CSV order
    rating_idx: np.ndarray
    general_idx: np.ndarray
    character_idx: np.ndarray
    providers: list[str] = field(default_factory=list)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities [n, tags] for a float32 NHWC BGR batch of any size."""
        n = len(batch)
        step = self.fixed_batch or n
        outputs = []
        for start in range(0, n, step):
            chunk = batch[start : start + step]
            real = len(chunk)
            if self.fixed_batch and real < self.fixed_batch:
                pad = np.zeros((self.fixed_batch - real, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            probs = self.session.run([self.output_name], {self.input_name: chunk})[0]
            outputs.append(np.asarray(probs, dtype=np.float32)[:real])
        probs = np.concatenate(outputs) if len(outputs) > 1 else outputs[0]
        if probs.ndim != 2 or probs.shape[1] != len(self.tag_names):
            raise UserError(
                f"{self.name}: the model gives {probs.shape[-1]} outputs but {TAGS_FILE} lists {len(self.tag_names)} tags: "
                f"use the {TAGS_FILE} that came with this model."
            )
        return probs

    def tags_for(
        self,
        probs: np.ndarray,
        general_threshold: float,
        character_threshold: float | None,
        include_rating: bool = False,
        blacklist: set[str] | frozenset[str] = frozenset(),
    ) -> list[str]:
        """Tags of one image (one row of `predict`): [rating], general, then character, CSV order."""
        tags: list[str] = []
        if include_rating and len(self.rating_idx):
            tags.append(self.tag_names[int(self.rating_idx[np.argmax(probs[self.rating_idx])])])
        tags += [self.tag_names[i] for i in self.general_idx if probs[i] >= general_threshold]
        if character_threshold is not None and character_threshold <= 1:
            tags += [self.tag_names[i] for i in self.character_idx if probs[i] >= character_threshold]
        return merge_tags([], (t for t in tags if t not in blacklist))


def _looks_like_path(model: str) -> bool:
    """A repo id is `name` or `owner/name`; anything else the person typed is meant as a folder."""
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1 or (len(model) > 1 and model[1] == ":")


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _wd_files(model: str) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) for a folder or a repo id (hub cache first, then download)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        onnx_path, csv_path = folder / MODEL_FILE, folder / TAGS_FILE
        missing = [p.name for p in (onnx_path, csv_path) if not p.is_file()]
        if missing:
            raise UserError(f"{folder} has no {' or '.join(missing)}: a WD tagger folder needs {MODEL_FILE} and {TAGS_FILE}.")
        return onnx_path, csv_path
    if _looks_like_path(model) or not model.strip():
        raise UserError(f"WD tagger folder {model} does not exist: give a folder with {MODEL_FILE} and {TAGS_FILE}, or a repo id such as {DEFAULT_WD_MODEL}.")
    from huggingface_hub import hf_hub_download

    paths = []
    for filename in (MODEL_FILE, TAGS_FILE):
        try:
            paths.append(Path(hf_hub_download(model, filename, local_files_only=True)))
        except Exception:
            try:
                paths.append(Path(hf_hub_download(model, filename)))
            except Exception as exc:  # offline, unknown repo, gated: all need the same advice
                raise UserError(
                    f"The WD tagger {model!r} is not in the Hugging Face cache and cannot be downloaded ({_one_line(exc)}): "
                    f"connect to the internet once so it is cached, or pass a folder with {MODEL_FILE} and {TAGS_FILE}."
                ) from None
    return paths[0], paths[1]


def _read_tags_csv(path: Path) -> tuple[list[str], np.ndarray]:
    names: list[str] = []
    categories: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "name" not in reader.fieldnames or "category" not in reader.fieldnames:
                raise UserError(f"{path} is not a WD tagger {TAGS_FILE}: it needs the header tag_id,name,category,count.")
            for row in reader:
                names.append(tag_display_name(row["name"] or ""))
                categories.append(int(row["category"]))
    except UserError:
        raise
    except (OSError, ValueError, TypeError, csv.Error) as exc:
        raise UserError(f"{path} cannot be read as a WD tagger {TAGS_FILE} ({_one_line(exc)}): download it again with the model.") from None
    if not names:
        raise UserError(f"{path} lists no tags: download {TAGS_FILE} again with the model.")
    return names, np.asarray(categories, dtype=np.int64)


def onnx_providers() -> list[str]:
    """CUDA when this onnxruntime build has it (onnxruntime-gpu), then the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


def load_wd_tagger(model: str = DEFAULT_WD_MODEL, providers: list[str] | None = None) -> WDTagger:
    """Load a WD tagger from a local folder (`model.onnx` + `selected_tags.csv`) or a repo id."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu on a CUDA machine).") from None
    onnx_path, csv_path = _wd_files(str(model))
    names, categories = _read_tags_csv(csv_path)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no provider-fallback chatter in the job log
    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers or onnx_providers())
    except Exception as exc:
        raise UserError(f"{onnx_path} is not a usable ONNX model ({_one_line(exc)}): download the tagger again.") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = list(inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or not isinstance(shape[2], int):
        raise UserError(f"{onnx_path} does not look like a WD tagger: its input is {shape}, not [batch, height, width, 3].")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    out_shape = list(outputs[0].shape)
    if len(out_shape) == 2 and isinstance(out_shape[1], int) and out_shape[1] != len(names):
        raise UserError(
            f"{model}: the model gives {out_shape[1]} outputs but {TAGS_FILE} lists {len(names)} tags: "
            f"use the {TAGS_FILE} that came with this model."
        )
    return WDTagger(
        name=str(model),
        session=session,
        input_name=inputs[0].name,
        output_name=outputs[0].name,
        height=shape[1],
        width=shape[2],
        fixed_batch=batch,
        tag_names=names,
        rating_idx=np.flatnonzero(categories == CATEGORY_RATING),
        general_idx=np.flatnonzero(categories == CATEGORY_GENERAL),
        character_idx=np.flatnonzero(categories == CATEGORY_CHARACTER),
        providers=list(session.get_providers()),
    )


def pad_to_square(image: Image.Image) -> Image.Image:
    """`image` (RGB) centred on a white square whose side is its longer side."""
    side = max(image.size)
    if image.width == image.height:
        return image
    canvas = Image.new("RGB", (side, side), _WHITE)
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


def wd_array(square: Image.Image, height: int, width: int) -> np.ndarray:
    """A padded RGB square -> float32 [H, W, 3] BGR, values 0..255 (one image of the model's input)."""
    if square.size != (width, height):
        square = square.resize((width, height), Image.BICUBIC)
    rgb = np.asarray(square, dtype=np.float32)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def preprocess_wd(path: Path, sizes: Iterable[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    """Decode `path` (alpha on white, EXIF upright) and make the model input for each (H, W)."""
    square = pad_to_square(open_image(path))
    return {size: wd_array(square, *size) for size in sizes}


# Walking the dataset -----------------------------------------------------------------------------


def list_dataset_images(project: Project) -> list[Path]:
    """The dataset's images as every stage lists them (links skipped), minus those whose caption is a link."""
    from lora_gradio.engine.fsutil import is_link
    from lora_gradio.engine.images import list_dataset

    return [p for p in list_dataset(project).all_files() if is_image_file(p) and not is_link(caption_path(p))]


def caption_path(image: Path) -> Path:
    return image.with_suffix(CAPTION_EXTENSION)


def _has_caption(image: Path) -> bool:
    path = caption_path(image)
    try:
        return path.is_file() and bool(path.read_text(encoding="utf-8", errors="replace").strip())
    except OSError:
        return False


def _rel(project: Project, path: Path) -> str:
    try:
        return path.relative_to(project.dataset_dir).as_posix()
    except ValueError:
        return str(path)


def _check_existing(existing: str) -> str:
    mode = str(existing).lower()
    if mode not in EXISTING_MODES:
        raise UserError(f"Unknown mode for existing caption files {existing!r}: use one of {', '.join(EXISTING_MODES)}.")
    return mode


def _select(project: Project, mode: str, report: TagReport, progress: Progress) -> list[Path]:
    if not project.dataset_dir.is_dir():
        raise UserError(f"The dataset folder {project.dataset_dir} does not exist: add images to the project first.")
    from lora_gradio.engine.images import list_dataset

    notice = list_dataset(project).notice()
    if notice:
        progress.log(notice)
    todo: list[Path] = []
    for image in list_dataset_images(project):
        if mode == "skip" and _has_caption(image):
            report.skipped.append(_rel(project, image))
        else:
            todo.append(image)
    if report.skipped:
        progress.log(f"{len(report.skipped)} image(s) already have a caption file: left as they are.")
    return todo


def _reason(path: Path, error: BaseException) -> str:
    if isinstance(error, UserError):
        reason = str(error)
        return reason[len(path.name) + 2 :] if reason.startswith(f"{path.name}: ") else reason
    return f"cannot preprocess ({type(error).__name__}: {_one_line(error)})."


class _Writer:
    """Writes caption files in a small pool so the model never waits on fsync; errors are collected.

    New captions (skip mode) are written as they come. Overwriting or appending changes captions a
    person may have edited, so those are gathered and written at the end as one undoable edit
    (`tags.write_captions`: a snapshot, the captions lock), which `tags --undo` takes back."""

    def __init__(self, project: Project, mode: str, report: TagReport, progress: Progress):
        self.project, self.mode, self.report, self.progress = project, mode, report, progress
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tag-write")
        self.futures: list[tuple[Path, Future]] = []
        self.undoable: list[tuple[Path, str]] = []  # (image, caption text) to write as one edit

    def submit(self, image: Path, tags: list[str]) -> None:
        self.futures.append((image, self.pool.submit(self._write, image, tags)))

    def _write(self, image: Path, tags: list[str]) -> None:
        target = caption_path(image)
        if self.mode == "append":
            tags = merge_tags(read_caption_tags(target), tags)
        if self.mode != "skip" and os.path.lexists(target):
            self.undoable.append((image, SEPARATOR.join(tags)))
            return
        atomic_write_text(target, SEPARATOR.join(tags))

    def finish(self) -> None:
        self.pool.shutdown(wait=True)
        if self.undoable:
            from lora_gradio.engine.tags import write_captions

            pending, self.undoable = self.undoable, []
            try:
                write_captions(self.project, f"tag ({self.mode})", [(caption_path(image), text) for image, text in pending])
                self.progress.log(f"replaced {len(pending)} existing caption(s) as one edit: `lora-gradio tags {self.project.name} --undo` takes it back")
            except UserError as exc:
                failed = {image for image, _ in pending}
                self.futures = [(image, future) for image, future in self.futures if image not in failed]
                for image in sorted(failed):
                    self.report.failed.append((_rel(self.project, image), str(exc)))
        for image, future in self.futures:
            rel = _rel(self.project, image)
            error = future.exception()
            if error is None:
                self.report.tagged.append(rel)
            else:
                self.report.failed.append((rel, f"cannot write the caption file ({_one_line(error)})."))
                self.progress.log(f"skipped {rel}: cannot write the caption file ({_one_line(error)})")
        self.futures = []


def _run_batched(
    project: Project,
    images: list[Path],
    prepare: Callable[[Path], Any],
    run_batch: Callable[[list[Any]], list[list[str] | str]],
    batch_size: int,
    writer: _Writer,
    report: TagReport,
    progress: Progress,
    message: str,
) -> None:
    """Shared loop: prefetch-decode, batch, run the model, hand results to the writer, check cancel."""
    total = len(images)
    done = 0
    progress.update(0, total, message)
    batch: list[tuple[Path, Any]] = []

    def flush() -> None:
        nonlocal done
        results = run_batch([item for _, item in batch])
        for (image, _), result in zip(batch, results):
            if isinstance(result, str):
                report.failed.append((_rel(project, image), result))
                progress.log(f"skipped {_rel(project, image)}: {result}")
            else:
                writer.submit(image, result)
        done += len(batch)
        batch.clear()
        progress.update(done, total, message)

    try:
        for i, prepared in prefetch(images, prepare, name="tag-decode", ahead=max(4 * batch_size, 2 * _WORKERS)):
            image = images[i]
            if isinstance(prepared, BaseException):
                reason = _reason(image, prepared)
                report.failed.append((_rel(project, image), reason))
                progress.log(f"skipped {_rel(project, image)}: {reason}")
                done += 1
                continue
            batch.append((image, prepared))
            if len(batch) >= batch_size:
                flush()
                progress.check_cancel()
        if batch:
            flush()
    finally:
        writer.finish()  # files of finished batches are saved even on cancel: the next run skips them
    progress.update(total, total, message)


def tag_images(
    project: Project,
    models: Sequence[str | WDTagger] | str = (DEFAULT_WD_MODEL,),
    general_threshold: float = DEFAULT_GENERAL_THRESHOLD,
    character_threshold: float | None = None,
    blacklist: str | Iterable[str] | None = DEFAULT_BLACKLIST,
    include_rating: bool = False,
    existing: str = "skip",
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> TagReport:
    """Tag every image of the project's dataset with one or more WD taggers; write `<image>.txt`.

    `character_threshold` None (or above 1) leaves character names out, as the notebook does;
    0.85 is the usual value to have them. `models` are repo ids, folders or loaded `WDTagger`s;
    the tags of the second and later models are appended only where new.
    """
    progress = progress or Progress()
    mode = _check_existing(existing)
    if isinstance(models, (str, WDTagger)):
        models = [models]
    if not models:
        raise UserError("No WD tagger given: pass at least one model, e.g. " + DEFAULT_WD_MODEL + ".")
    if not 0 < float(general_threshold) <= 1:
        raise UserError(f"General tag threshold {general_threshold} is out of range: use a value between 0 and 1, e.g. 0.35.")
    if character_threshold is not None and float(character_threshold) <= 0:
        raise UserError(f"Character tag threshold {character_threshold} is out of range: use a value between 0 and 1 (above 1 turns character tags off).")
    if batch_size is not None and int(batch_size) < 1:
        raise UserError(f"Batch size {batch_size} is out of range: use 1 or more.")
    report = TagReport(action="Tagged")
    images = _select(project, mode, report, progress)
    if not images:
        return report
    progress.log("Loading the WD tagger(s)...")
    taggers = [m if isinstance(m, WDTagger) else load_wd_tagger(m) for m in models]
    report.models = [t.name for t in taggers]
    progress.log(f"WD tagger(s): {', '.join(report.models)} on {taggers[0].providers[0] if taggers[0].providers else 'CPU'}")
    banned = frozenset(parse_tag_list(blacklist))
    sizes = sorted({(t.height, t.width) for t in taggers})
    if batch_size is None:
        fixed = [t.fixed_batch for t in taggers if t.fixed_batch]
        batch_size = max(fixed) if fixed and len(fixed) == len(taggers) else _DEFAULT_BATCH
    batch_size = int(batch_size)

    def prepare(path: Path) -> dict[tuple[int, int], np.ndarray]:
        return preprocess_wd(path, sizes)

    def run_batch(items: list[dict[tuple[int, int], np.ndarray]]) -> list[list[str] | str]:
        results: list[list[str]] = [[] for _ in items]
        for tagger in taggers:
            probs = tagger.predict(np.stack([item[(tagger.height, tagger.width)] for item in items]))
            for row, result in zip(probs, results):
                result[:] = merge_tags(result, tagger.tags_for(row, general_threshold, character_threshold, include_rating and tagger is taggers[0], banned))
        return results  # type: ignore[return-value]

    writer = _Writer(project, mode, report, progress)
    _run_batched(project, images, prepare, run_batch, batch_size, writer, report, progress, "Tagging images")
    progress.log(report.summary())
    return report


# BLIP --------------------------------------------------------------------------------------------


def load_blip(model: str = DEFAULT_BLIP_MODEL, device: str | None = None):
    """(BlipForConditionalGeneration in eval mode, BlipProcessor, device, dtype); cache first, then download."""
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    from lora_gradio.engine.progress import quiet_ml_libraries

    quiet_ml_libraries()
    folder = Path(model).expanduser()
    if folder.is_dir():
        try:
            processor = BlipProcessor.from_pretrained(str(folder))
            blip = BlipForConditionalGeneration.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{folder} does not hold a BLIP captioning model ({_one_line(exc)}): pass a saved BlipForConditionalGeneration folder or a repo id such as {DEFAULT_BLIP_MODEL}.") from None
    elif _looks_like_path(model) or not model.strip():
        raise UserError(f"BLIP model folder {model} does not exist: give a saved BLIP folder or a repo id such as {DEFAULT_BLIP_MODEL}.")
    else:
        try:
            processor = BlipProcessor.from_pretrained(model, local_files_only=True)
            blip = BlipForConditionalGeneration.from_pretrained(model, local_files_only=True)
        except (OSError, ValueError):
            try:
                processor = BlipProcessor.from_pretrained(model)
                blip = BlipForConditionalGeneration.from_pretrained(model)
            except Exception as exc:
                raise UserError(
                    f"The BLIP model {model!r} is not in the Hugging Face cache and cannot be downloaded ({_one_line(exc)}): "
                    "connect to the internet once so it is cached, or pass a folder with a saved BLIP model."
                ) from None
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    blip = blip.to(device=device, dtype=dtype).eval()
    return blip, processor, device, dtype


def caption_images(
    project: Project,
    model: str | tuple = DEFAULT_BLIP_MODEL,
    min_length: int = 10,
    max_length: int = 75,
    num_beams: int = 3,
    existing: str = "skip",
    batch_size: int = 4,
    progress: Progress | None = None,
) -> TagReport:
    """Caption every image of the dataset with BLIP (beam search, 10 to 75 tokens as in the guide)."""
    import torch

    progress = progress or Progress()
    mode = _check_existing(existing)
    if int(min_length) < 0 or int(max_length) < 1 or int(min_length) > int(max_length):
        raise UserError(f"Caption length {min_length} to {max_length} is not a range: use a minimum below the maximum, e.g. 10 to 75.")
    if int(num_beams) < 1 or int(batch_size) < 1:
        raise UserError("Beams and batch size must be 1 or more.")
    report = TagReport(action="Captioned")
    images = _select(project, mode, report, progress)
    if not images:
        return report
    progress.log("Loading the BLIP model...")
    blip, processor, device, dtype = load_blip(model) if isinstance(model, str) else model
    report.models = [model if isinstance(model, str) else type(blip).__name__]

    def prepare(path: Path) -> torch.Tensor:
        image = open_image(path)
        return processor(images=image, return_tensors="pt")["pixel_values"][0]

    def run_batch(items: list[torch.Tensor]) -> list[list[str] | str]:
        pixels = torch.stack(items).to(device=device, dtype=dtype)
        with torch.inference_mode():
            out = blip.generate(pixel_values=pixels, num_beams=int(num_beams), min_length=int(min_length), max_length=int(max_length))
        texts = processor.batch_decode(out, skip_special_tokens=True)
        results: list[list[str] | str] = []
        for text in texts:
            text = " ".join(text.split())
            results.append([text] if text else "the model gave an empty caption.")
        return results

    writer = _Writer(project, mode, report, progress)
    _run_batched(project, images, prepare, run_batch, int(batch_size), writer, report, progress, "Captioning images")
    progress.log(report.summary())
    return report
