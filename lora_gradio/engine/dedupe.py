"""Duplicates in a dataset: exact copies by md5, near-copies by CLIP image embeddings.

The guide's notebook embeds every image with CLIP ViT-B/32, takes the raw cosine similarity
of every pair, walks the images in order, keeps the first of each group and marks the others
for deletion (threshold 0.985; 0.97 to 0.99 recommended). This module groups the same way, plus:

- the kept image of a group is its best copy, not the first name (`rank_copies`): the one with a
  caption, then more pixels, then the lossless or the less compressed file, then a name that does
  not look like a copy ("x (1).png", "x copy.png", "x_1.png" beside "x.png"), then name order;

- md5 first: byte-identical copies are always grouped, whatever the threshold, and embedded once;
- embeddings are cached in the project (keyed by md5 and model), so a re-run only embeds new
  or changed images; the md5 of a file is itself cached by path, size and mtime;
- the result (groups, marks) is saved in the project, so the page and the command line share it,
  and the person can change the marks before `apply_marks` moves the marked images (with their
  captions) into the project's trash, one restorable batch;
- an optional FiftyOne session shows the same groups and marks in the FiftyOne App.

Paths in a `DedupeResult` are relative to the project's dataset folder (`project.dataset_dir`),
with '/' separators.
"""

from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image  # already loaded by images.py

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import CAPTION_EXTENSIONS, IMAGE_EXTENSIONS, atomic_path, atomic_write_text
from lora_gradio.engine.images import UnreadableImage, open_image
from lora_gradio.engine.parallel import WORKERS, prefetch
from lora_gradio.engine.progress import Progress, first_few
from lora_gradio.engine.project import Project

DEFAULT_MODEL = "openai/clip-vit-base-patch32"
DEFAULT_THRESHOLD = 0.985
DEDUPE_FOLDER = "_dedupe"
THUMBS_FOLDER = "_cache/thumbs"
TRASH_REASON = "duplicates (dedupe)"
DELETE_TAG = "delete"  # the notebook's FiftyOne tag for images to remove
KEPT_TAG = "has_duplicates"  # the notebook's tag for the kept image of a group
FIFTYONE_MISSING = (
    'FiftyOne is not installed: it is optional (about 1.2 GB); add it with pip install "lora_gradio[fiftyone]" '
    "and restart, or mark the duplicates on this page instead."
)

# Decoding and hashing are in C and release the GIL, so threads scale with the cores.
_WORKERS = WORKERS
_HASH_CHUNK = 1 << 20
# Rows of the similarity matrix computed at once: 1,024 x 5,000 float32 is 20 MB.
_GROUP_BLOCK = 1024


# The result ---------------------------------------------------------------------------------


@dataclass
class DedupeResult:
    threshold: float
    model: str
    images: list[str] = field(default_factory=list)  # every image found, in walk order
    groups: list[list[str]] = field(default_factory=list)  # first = kept (the best copy), the rest marked by default
    scores: list[list[float]] = field(default_factory=list)  # per group: each member's cosine to the kept one (1.0 = exact copy)
    marked: set[str] = field(default_factory=set)  # to move to the trash on `apply_marks`
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): listed, never grouped
    captions: dict[str, str] = field(default_factory=dict)  # image in a group -> its caption file, when it has one

    def summary(self) -> str:
        in_groups = sum(len(group) for group in self.groups)
        text = f"{in_groups} images in {len(self.groups)} duplicate groups; {len(self.marked)} marked for removal"
        if self.unreadable:
            text += f"; {len(self.unreadable)} unreadable: {first_few([path for path, _ in self.unreadable])}"
        text = f"{text} (of {len(self.images)} images, threshold {self.threshold:g})."
        staying = self.kept_of()
        described = []
        for rel in (rel for group in self.groups for rel in group if rel in self.marked):
            kept = staying.get(rel)
            keeping = f"keeping {kept} {self._with(kept)}" if kept else "the whole group is marked"
            described.append(f"{rel} ({self._with(rel, 'no caption')}; {keeping})")
        if described:
            text += f" Marked: {first_few(described)}."
        return text

    def _with(self, rel: str, none: str = "without a caption") -> str:
        caption = self.captions.get(rel)
        return f"with {caption}" if caption else none

    def kept_of(self) -> dict[str, str]:
        """Path -> the image that stays in its group (the first one not marked), for the images in a
        group that keeps one."""
        staying: dict[str, str] = {}
        for group in self.groups:
            kept = next((path for path in group if path not in self.marked), None)
            if kept is not None:
                staying.update({path: kept for path in group if path != kept})
        return staying

    def group_of(self) -> dict[str, int]:
        """Path -> index of its group, for the images that are in one."""
        return {path: index for index, group in enumerate(self.groups) for path in group}

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "model": self.model,
            "images": self.images,
            "groups": self.groups,
            "scores": self.scores,
            "marked": sorted(self.marked),
            "unreadable": [list(item) for item in self.unreadable],
            "captions": self.captions,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DedupeResult":
        return cls(
            threshold=float(data["threshold"]),
            model=str(data["model"]),
            images=list(data.get("images", [])),
            groups=[list(g) for g in data.get("groups", [])],
            scores=[[float(s) for s in g] for g in data.get("scores", [])],
            marked=set(data.get("marked", [])),
            unreadable=[(str(p), str(r)) for p, r in data.get("unreadable", [])],
            captions={str(k): str(v) for k, v in (data.get("captions") or {}).items()},
        )


@dataclass
class ApplyReport:
    moved: list[str] = field(default_factory=list)  # images moved (relative to the dataset folder)
    sidecars: int = 0  # captions and latent caches moved with them
    missing: list[str] = field(default_factory=list)  # marked but already gone
    trash_batch: "str | None" = None
    captions: dict[str, "str | None"] = field(default_factory=dict)  # moved image -> the caption moved with it (None: none)
    kept: dict[str, str] = field(default_factory=dict)  # moved image -> the image of its group that stays
    kept_captions: dict[str, "str | None"] = field(default_factory=dict)  # that kept image -> its caption

    def describe(self, rel: str) -> str:
        """`x (1).png without a caption (kept x.png with x.txt)`: what went, with which caption, and what stays."""
        caption = self.captions.get(rel)
        text = f"{rel} with {caption}" if caption else f"{rel} without a caption"
        kept = self.kept.get(rel)
        if kept:
            kept_caption = self.kept_captions.get(kept)
            text += f" (kept {kept} {'with ' + kept_caption if kept_caption else 'without a caption'})"
        return text

    def summary(self) -> str:
        if not self.moved:
            text = "No marked images to move"
        else:
            text = f"Moved {len(self.moved)} image(s) and {self.sidecars} caption/cache file(s) to trash batch {self.trash_batch} (restore it from the trash)"
            text += f": {first_few([self.describe(rel) for rel in self.moved])}"
        if self.missing:
            text += f"; {len(self.missing)} marked image(s) were already gone: {first_few(self.missing)}"
        return text + "."


def dedupe_dir(project: Project) -> Path:
    return project.config_dir / DEDUPE_FOLDER


def result_file(project: Project) -> Path:
    # `NAME` and `NAME/SUB` share the config folder: each dataset folder keeps its own result.
    sub = project.subfolder
    return dedupe_dir(project) / ("result.json" if sub is None else f"result--{sub}.json")


def save_result(project: Project, result: DedupeResult) -> None:
    atomic_write_text(result_file(project), json.dumps(result.to_json(), indent=1))


def load_result(project: Project) -> "DedupeResult | None":
    """The last saved result (with the person's marks), or None if duplicates were never searched."""
    from lora_gradio.engine.fsutil import read_user_json

    try:
        data = read_user_json(result_file(project), "The saved duplicate search", "search for duplicates again")
    except FileNotFoundError:
        return None
    try:
        return DedupeResult.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"The saved duplicate search {result_file(project)} is damaged: search for duplicates again.") from None


def _require_result(project: Project) -> DedupeResult:
    result = load_result(project)
    if result is None:
        raise UserError(f"No duplicate search for project {project.name!r} yet: run `dedupe {project.name}` (or Find duplicates on the page) first.")
    return result


# Finding duplicates -------------------------------------------------------------------------


def find_duplicates(
    project: Project,
    threshold: float = DEFAULT_THRESHOLD,
    model: str = DEFAULT_MODEL,
    batch_size: int = 32,
    progress: "Progress | None" = None,
    device: "str | None" = None,
) -> DedupeResult:
    """Group exact (md5) and near (CLIP cosine >= `threshold`) duplicates; mark all but the first of each.

    A job function. Unreadable files are listed in the result and skipped. The result is saved
    in the project (replacing earlier marks) and returned.
    """
    progress = progress or Progress()
    if not -1.0 <= float(threshold) <= 1.0:
        raise UserError(f"Threshold {threshold} is not a cosine similarity: use a value from 0 to 1 (the guide recommends 0.97 to 0.99).")
    if int(batch_size) < 1:
        raise UserError(f"Batch size {batch_size} must be at least 1.")
    paths = list_images(project)
    from lora_gradio.engine.images import list_dataset

    notice = list_dataset(project).notice()
    if notice:
        progress.log(notice)
    rels = [_rel(project, p) for p in paths]
    digests = _file_hashes(project, paths, progress)

    # One embedding per distinct file content: copies are grouped by md5 and embedded once.
    first_of_digest: dict[str, int] = {}
    for index, digest in enumerate(digests):
        first_of_digest.setdefault(digest, index)
    unique = sorted(first_of_digest.values())
    cache = _EmbeddingCache(project, model)
    embeddings, errors = cache.embed([paths[i] for i in unique], [digests[i] for i in unique], batch_size, progress, device)

    unreadable_digests = {digests[unique[k]]: reason for k, reason in errors.items()}
    unreadable = [(rels[i], unreadable_digests[d]) for i, d in enumerate(digests) if d in unreadable_digests]
    for rel, reason in unreadable:
        progress.log(f"unreadable: {rel}: {reason}")
    readable = [k for k in range(len(unique)) if k not in errors]
    kept_reps = [unique[k] for k in readable]

    progress.update(0, len(rels), "Grouping near-duplicates")
    vectors = embeddings[readable] if len(readable) else np.zeros((0, 1), np.float32)
    rep_groups = group_embeddings(vectors, float(threshold))
    copies: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        copies.setdefault(digest, []).append(index)

    row_of = {digests[rep]: row for row, rep in enumerate(kept_reps)}  # digest -> its row of `vectors`
    captions: dict[str, str] = {}

    def best_first(indices: list[int]) -> list[int]:
        """The group's best copy (see `rank_copies`) first, then the others in walk order."""
        members = [rels[i] for i in indices]
        for rel in members:
            caption = caption_of(project, rel)
            if caption:
                captions[rel] = caption
        kept = indices[members.index(rank_copies(project, members, captions)[0])]
        return [kept, *sorted(i for i in indices if i != kept)]

    groups: list[list[str]] = []
    scores: list[list[float]] = []
    in_group: set[int] = set()
    for members, member_scores in rep_groups:
        group, group_scores = [], []
        for member, score in zip(members, member_scores):
            for index in copies[digests[kept_reps[member]]]:
                group.append(index)
                group_scores.append(score)  # a copy is as similar to the kept image as its original
        score_of = dict(zip(group, group_scores))
        order = best_first(group)
        kept_digest = digests[order[0]]
        if kept_digest != digests[kept_reps[members[0]]]:
            # Another copy than the walk's first stays: each member's similarity is to that one.
            kept_vector = vectors[row_of[kept_digest]]
            score_of = {i: 1.0 if digests[i] == kept_digest else float(vectors[row_of[digests[i]]] @ kept_vector) for i in group}
        groups.append([rels[i] for i in order])
        scores.append([round(float(score_of[i]), 5) for i in order])
        in_group.update(group)
    for rep in kept_reps:  # exact copies that have no near-duplicate: a group of their own
        same = copies[digests[rep]]
        if len(same) > 1 and rep not in in_group:
            groups.append([rels[i] for i in best_first(same)])
            scores.append([1.0] * len(same))
    position = _index_of(rels)
    order = sorted(range(len(groups)), key=lambda g: min(position[p] for p in groups[g]))
    groups = [groups[g] for g in order]
    scores = [scores[g] for g in order]

    result = DedupeResult(
        threshold=float(threshold),
        model=str(model),
        images=rels,
        groups=groups,
        scores=scores,
        marked={path for group in groups for path in group[1:]},
        unreadable=unreadable,
        captions=captions,
    )
    save_result(project, result)
    progress.update(len(rels), len(rels), "Grouping near-duplicates")
    return result


def _index_of(items: list[str]) -> dict[str, int]:
    return {item: index for index, item in enumerate(items)}


# Which copy stays -----------------------------------------------------------------------------

# Formats whose file size says something about quality (more bytes, less compression loss).
_LOSSY_EXTENSIONS = {".jpg", ".jpeg", ".webp"}
# Names that file managers and browsers give copies: "x (1)", "x(2)", "x copy", "x copy 2", "x - Copy (2)".
_COPY_SUFFIX = re.compile(r"(?:\s*\(\d+\)|\s*-\s*copy(?:\s*\(\d+\))?|[\s_]+copy(?:[\s_]*\d+)?)$", re.IGNORECASE)
# "x_1", "x-2": a copy only beside "x" itself (img_001 ... img_100 are not copies of each other).
_NUMBERED = re.compile(r"^(.+?)[_-]\d+$")


def caption_of(project: Project, rel_path: str) -> "str | None":
    """The caption file (relative to the dataset folder) of an image, or None: none, or only an empty one."""
    image = _resolve(project, rel_path)
    for ext in CAPTION_EXTENSIONS:
        caption = image.with_suffix(ext)
        try:
            if caption.is_file() and caption.read_text(encoding="utf-8", errors="replace").strip():
                return _rel(project, caption)
        except OSError:
            continue
    return None


def _looks_like_copy(stem: str, stems: set[str]) -> bool:
    if _COPY_SUFFIX.search(stem):
        return True
    numbered = _NUMBERED.match(stem)
    return bool(numbered and numbered.group(1) in stems)


def rank_copies(project: Project, rel_paths: list[str], captions: "dict[str, str] | None" = None) -> list[str]:
    """Copies of one picture, the one to keep first: a readable image; with a caption; more pixels;
    lossless (PNG) before a lossy re-encode, and among lossy ones the larger (less compressed) file;
    a name that does not look like a copy; then name order.

    `captions` (path -> caption file) saves reading them again; without it they are looked up.
    """
    if captions is None:
        captions = {rel: c for rel in rel_paths if (c := caption_of(project, rel))}
    stems = {PurePosixPath(rel).stem for rel in rel_paths}

    def key(rel: str) -> tuple:
        path = _resolve(project, rel)
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        try:
            with Image.open(path) as image:
                pixels = image.width * image.height
        except Exception:  # noqa: BLE001 - unreadable, whatever the reason: never the one to keep
            pixels = 0
        lossy = path.suffix.lower() in _LOSSY_EXTENSIONS
        looks_copied = _looks_like_copy(PurePosixPath(rel).stem, stems)
        # Ascending: the best copy sorts first.
        return (pixels == 0, not captions.get(rel), -pixels, lossy, -size if lossy else 0, looks_copied, rel)

    return sorted(rel_paths, key=key)


def list_images(project: Project) -> list[Path]:
    """Every image file of the dataset (its folder and direct subfolders), in walk order; links are
    skipped, as every stage skips them (images.list_dataset)."""
    from lora_gradio.engine.images import list_dataset

    return [p for p in list_dataset(project).all_files() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]


def _rel(project: Project, path: Path) -> str:
    return path.relative_to(project.dataset_dir).as_posix()


def _resolve(project: Project, rel_path: str) -> Path:
    """The file a result path names, refusing anything that could point outside the dataset folder.

    Checked on the name, not with resolve(): a dataset folder may itself be a symlink (a Drive mount).
    """
    rel = PurePosixPath(str(rel_path))
    if not rel.parts or rel.is_absolute() or ".." in rel.parts or "\\" in str(rel_path) or ":" in rel.parts[0]:
        raise UserError(f"{rel_path!r} is not a path inside the dataset folder {project.dataset_dir}.")
    from lora_gradio.engine.fsutil import link_on_path

    path = project.dataset_dir / rel
    if link_on_path(path, project.dataset_root) is not None:
        raise UserError(f"{rel_path!r} is reached through a link: the dataset tools do not follow links; nothing was moved.")
    return path


def group_embeddings(embeddings: np.ndarray, threshold: float, block: int = _GROUP_BLOCK) -> list[tuple[list[int], list[float]]]:
    """The notebook's grouping: walk the rows in order; a row not yet taken keeps itself and takes
    every later untaken row whose cosine similarity to it is >= `threshold`.

    `embeddings` must be L2-normalised (cosine = dot product). Returns (member indices, each
    member's similarity to the first) for the groups of two or more, in walk order. The similarity
    matrix is computed a block of rows at a time, so memory stays O(block x N).
    """
    count = len(embeddings)
    taken = np.zeros(count, dtype=bool)
    groups: list[tuple[list[int], list[float]]] = []
    if count < 2:
        return groups
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    columns = np.arange(count)
    for start in range(0, count, block):
        stop = min(start + block, count)
        similar = vectors[start:stop] @ vectors.T
        # Only later rows count (the earlier ones were walked already, and matmul rounding
        # could otherwise make S[i, j] and S[j, i] disagree at the threshold).
        candidates = (similar >= threshold) & (columns[None, :] > np.arange(start, stop)[:, None])
        for offset in np.flatnonzero(candidates.any(axis=1)):
            row = start + offset
            if taken[row]:
                continue
            members = np.flatnonzero(candidates[offset] & ~taken)
            if members.size == 0:
                continue
            taken[members] = True
            taken[row] = True
            groups.append(([row, *members.tolist()], [1.0, *similar[offset, members].astype(float).tolist()]))
    return groups


# Hashing ------------------------------------------------------------------------------------


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:  # vanished since listing: never matches a cached entry
        return -1, -1
    return stat.st_size, stat.st_mtime_ns


def _file_hashes(project: Project, paths: list[Path], progress: Progress) -> list[str]:
    """md5 of each file, reusing the cached one when path, size and mtime are unchanged."""
    index_file = dedupe_dir(project) / "hashes.json"
    try:
        cached: dict[str, list] = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    # Keyed relative to the project's whole dataset, so NAME and NAME/SUB share the entries.
    keys = [p.relative_to(project.dataset_root).as_posix() for p in paths]
    stats = [_stat_key(p) for p in paths]
    # A file that cannot be read gets a digest of its own: never grouped, reported when decoded.
    def digest_of(i: int) -> str:
        try:
            return _md5(paths[i])
        except OSError:
            return f"unreadable:{keys[i]}"

    digests: list["str | None"] = []
    for key, (size, mtime) in zip(keys, stats):
        entry = cached.get(key)
        digests.append(entry[2] if entry and entry[0] == size and entry[1] == mtime else None)
    todo = [i for i, d in enumerate(digests) if d is None]
    progress.update(0, len(todo), "Hashing images")
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for done, (i, digest) in enumerate(zip(todo, pool.map(digest_of, todo)), start=1):
            digests[i] = digest
            if done % 64 == 0 or done == len(todo):
                progress.update(done, len(todo), "Hashing images")
                progress.check_cancel()
    if todo or len(cached) != len(keys):
        others = {k: v for k, v in cached.items() if not _under(k, project)}  # other subfolders' entries stay
        others.update({key: [size, mtime, digest] for key, (size, mtime), digest in zip(keys, stats, digests) if size >= 0 and not str(digest).startswith("unreadable:")})
        atomic_write_text(index_file, json.dumps(others))
    return [d for d in digests if d is not None]


def _under(key: str, project: Project) -> bool:
    """Is a dataset_root-relative key inside this name's dataset folder (where we just listed)?"""
    if project.subfolder is None:
        return True
    return key.startswith(project.subfolder + "/")


# Embeddings ---------------------------------------------------------------------------------


class _EmbeddingCache:
    """L2-normalised image embeddings by file md5, one `.npz` per model in `_dedupe/`."""

    def __init__(self, project: Project, model: str):
        self.project = project
        self.model = model
        self.key = _model_key(model)
        name = hashlib.sha1(self.key.encode("utf-8")).hexdigest()[:12]
        self.file = dedupe_dir(project) / f"embeddings-{name}.npz"

    def _load(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """({digest: embedding}, {digest: why it cannot be decoded}); empty if missing or stale."""
        try:
            with np.load(self.file, allow_pickle=False) as data:
                if str(data["model"]) != self.key:
                    return {}, {}
                vectors = dict(zip(data["digests"].tolist(), data["vectors"]))
                failed = dict(zip(data["failed"].tolist(), data["reasons"].tolist()))
                return vectors, failed
        except (OSError, KeyError, ValueError):
            return {}, {}

    def _save(self, vectors: dict[str, np.ndarray], failed: dict[str, str]) -> None:
        digests = sorted(vectors)
        stacked = np.stack([vectors[d] for d in digests]).astype(np.float32) if digests else np.zeros((0, 0), np.float32)
        bad = sorted(failed)
        with atomic_path(self.file) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    model=np.array(self.key),
                    digests=np.array(digests, dtype=str),
                    vectors=stacked,
                    failed=np.array(bad, dtype=str),
                    reasons=np.array([failed[d] for d in bad], dtype=str),
                )

    def embed(
        self, paths: list[Path], digests: list[str], batch_size: int, progress: Progress, device: "str | None"
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Embeddings for `paths` (rows in order; zeros for unreadable ones) and {row: reason}."""
        cached, failed = self._load()
        # Same bytes, same failure: a file that could not be decoded is not tried again until it changes.
        errors: dict[int, str] = {i: failed[d] for i, d in enumerate(digests) if d in failed}
        todo = [i for i, d in enumerate(digests) if d not in cached and i not in errors]
        fresh: dict[str, np.ndarray] = {}
        fresh_failed: dict[str, str] = {}
        wanted = set(digests)
        try:
            if todo:
                for i, vector, error in embed_images([paths[i] for i in todo], self.model, batch_size, progress, device, index=todo):
                    if error is not None:
                        errors[i] = error
                        if not digests[i].startswith("unreadable:"):  # an I/O error may be passing
                            fresh_failed[digests[i]] = error
                    else:
                        fresh[digests[i]] = vector
        finally:
            # Keep what was computed even if cancelled; drop entries of images no longer here.
            if fresh or fresh_failed or (set(cached) | set(failed)) - wanted:
                keep_vectors = {d: v for d, v in {**cached, **fresh}.items() if d in wanted}
                keep_failed = {d: r for d, r in {**failed, **fresh_failed}.items() if d in wanted}
                self._save(keep_vectors, keep_failed)
        vectors = {**cached, **fresh}
        width = next((len(v) for v in vectors.values()), 1)
        out = np.zeros((len(paths), width), np.float32)
        for i, digest in enumerate(digests):
            if i not in errors:
                out[i] = vectors[digest]
        return out, errors


def _model_key(model: str) -> str:
    """What identifies the weights: the repo id, or a folder's path and its weight files' mtimes."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        stamps = sorted(f"{p.name}:{p.stat().st_mtime_ns}" for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        return f"{folder.resolve()}|{','.join(stamps)}"
    return model


def _looks_like_path(model: str) -> bool:
    """A repo id is `name` or `owner/name`; anything else the person typed is meant as a folder."""
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1 or (len(model) > 1 and model[1] == ":")


def load_clip(model: str = DEFAULT_MODEL, device: "str | None" = None):
    """(CLIPModel in eval mode on the device, its image processor, device, dtype).

    `model` is a local folder or a Hugging Face repo id: the hub cache is tried first (no
    network), then a download; a model that is neither there nor reachable is a UserError.
    """
    import torch
    from transformers import CLIPImageProcessor, CLIPModel

    from lora_gradio.engine.progress import quiet_ml_libraries

    quiet_ml_libraries()
    folder = Path(model).expanduser()
    if folder.is_dir():
        try:
            clip = CLIPModel.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(f"{folder} does not hold a CLIP model ({_one_line(exc)}): pass a folder saved with CLIPModel.save_pretrained, or a repo id such as {DEFAULT_MODEL}.") from None
        source, local_only = str(folder), True
    elif _looks_like_path(model):
        raise UserError(f"Model folder {model} does not exist: give the folder of a saved CLIP model, or a repo id such as {DEFAULT_MODEL}.")
    else:
        clip, source, local_only = None, model, True
        try:
            clip = CLIPModel.from_pretrained(model, local_files_only=True)
        except (OSError, ValueError):
            try:
                clip = CLIPModel.from_pretrained(model)
                local_only = False
            except Exception as exc:  # offline, unknown repo, gated: all need the same advice
                raise UserError(
                    f"The CLIP model {model!r} is not in the Hugging Face cache and cannot be downloaded ({_one_line(exc)}): "
                    "connect to the internet once so it is cached, or pass --model /path/to/folder with a saved CLIP model."
                ) from None
    try:
        processor = CLIPImageProcessor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError):
        # A folder with only the model saved: CLIP's standard preprocessing at the model's size.
        size = clip.config.vision_config.image_size
        processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    clip = clip.to(device=device, dtype=dtype).eval()
    return clip, processor, device, dtype


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def embed_images(
    paths: list[Path],
    model: "str | tuple" = DEFAULT_MODEL,
    batch_size: int = 32,
    progress: "Progress | None" = None,
    device: "str | None" = None,
    index: "list[int] | None" = None,
) -> Iterator[tuple[int, "np.ndarray | None", "str | None"]]:
    """Yield (index, L2-normalised embedding or None, reason if unreadable) for each path, in order.

    Images are decoded and preprocessed in a thread pool that runs ahead of the model (up to a
    few batches), so the GPU is not left waiting on Pillow. `model` is a repo id / folder, or the
    tuple `load_clip` returns (to embed several sets with one loaded model).
    """
    import torch

    progress = progress or Progress()
    index = list(range(len(paths))) if index is None else index
    clip, processor, device, dtype = load_clip(model, device) if isinstance(model, str) else model
    total = len(paths)
    progress.update(0, total, "Computing image embeddings")

    def prepare(path: Path) -> "torch.Tensor | str":
        try:
            image = open_image(path)
        except UnreadableImage as exc:
            reason = str(exc)  # "name.png: why"; the result names the file already
            return reason[len(path.name) + 2 :] if reason.startswith(f"{path.name}: ") else reason
        try:
            # "pt": both the Pillow and the torchvision (fast) processors return it.
            return processor(images=image, return_tensors="pt")["pixel_values"][0]
        except Exception as exc:  # e.g. a 1x1 image the processor cannot crop
            return f"cannot preprocess ({type(exc).__name__}: {_one_line(exc)})."

    done = 0
    batch: list[tuple[int, "torch.Tensor"]] = []

    def run_batch() -> Iterator[tuple[int, np.ndarray, None]]:
        pixels = torch.stack([b[1] for b in batch]).to(device=device, dtype=dtype)
        with torch.inference_mode():
            pooled = clip.vision_model(pixel_values=pixels).pooler_output
            features = clip.visual_projection(pooled).float()
            features = torch.nn.functional.normalize(features, dim=-1)
        vectors = features.cpu().numpy()
        for (i, _), vector in zip(batch, vectors):
            yield i, vector, None

    for i, prepared in prefetch(paths, prepare, ahead=max(4 * batch_size, 2 * _WORKERS), name="embed-decode"):
        if isinstance(prepared, BaseException):
            raise prepared
        if isinstance(prepared, str):
            done += 1
            yield index[i], None, prepared
            continue
        batch.append((index[i], prepared))
        if len(batch) == batch_size:
            yield from run_batch()
            done += len(batch)
            batch = []
            progress.update(done, total, "Computing image embeddings")
            progress.check_cancel()
    if batch:
        yield from run_batch()
        done += len(batch)
    progress.update(total, total, "Computing image embeddings")


# Marks --------------------------------------------------------------------------------------


def _markable(result: DedupeResult) -> set[str]:
    return set(result.images) | {path for path, _ in result.unreadable}


def set_marked(project: Project, rel_path: str, marked: bool) -> DedupeResult:
    """Mark or unmark one image for removal; saved at once."""
    result = _require_result(project)
    if rel_path not in _markable(result):
        raise UserError(f"{rel_path!r} is not an image of the last duplicate search: search again to include new images.")
    if marked:
        result.marked.add(rel_path)
    else:
        result.marked.discard(rel_path)
    save_result(project, result)
    return result


def set_marks(project: Project, rel_paths: Iterable[str]) -> DedupeResult:
    """Replace the whole set of marked images; saved at once."""
    result = _require_result(project)
    wanted = set(rel_paths)
    unknown = sorted(wanted - _markable(result))
    if unknown:
        raise UserError(f"Not images of the last duplicate search: {first_few(unknown)}; search again to include new images.")
    result.marked = wanted
    save_result(project, result)
    return result


def apply_marks(project: Project, progress: "Progress | None" = None) -> ApplyReport:
    """Move the marked images and their captions into one trash batch, and drop them from the result.

    trash.py records each file in the batch's manifest before moving it, so an interruption
    leaves every image either in place or restorable from the trash.
    """
    from lora_gradio.engine.trash import move_to_trash

    progress = progress or Progress()
    result = _require_result(project)
    report = ApplyReport()
    present: list[Path] = []
    position = _index_of(result.images)
    kept_of = result.kept_of()
    for rel in sorted(result.marked, key=lambda p: (position.get(p, len(position)), p)):
        path = _resolve(project, rel)
        if path.is_file():
            present.append(path)
            report.moved.append(rel)
        else:
            report.missing.append(rel)
    progress.update(0, len(present), "Moving marked images to the trash")
    if present:
        progress.check_cancel()
        captions_before = {rel: [path.with_suffix(ext) for ext in CAPTION_EXTENSIONS if path.with_suffix(ext).is_file()] for rel, path in zip(report.moved, present)}
        batch = move_to_trash(project, present, reason=TRASH_REASON, with_sidecars=True)
        report.trash_batch = batch.id
        report.sidecars = len(batch.items) - len(present)
        for rel in report.moved:
            # The caption that went with it (one that another image shares stays, see trash.py).
            moved = [caption for caption in captions_before[rel] if not caption.exists()]
            report.captions[rel] = _rel(project, moved[0]) if moved else None
            kept = kept_of.get(rel)
            if kept:
                report.kept[rel] = kept
                report.kept_captions.setdefault(kept, caption_of(project, kept))
            progress.log(f"trashed {report.describe(rel)}")
    _forget(project, result, set(report.moved) | set(report.missing))
    progress.update(len(present), len(present), "Moving marked images to the trash")
    return report


def _forget(project: Project, result: DedupeResult, gone: set[str]) -> None:
    """Drop images from the saved result; groups left with one image are no longer groups."""
    result.images = [p for p in result.images if p not in gone]
    result.unreadable = [(p, r) for p, r in result.unreadable if p not in gone]
    result.marked -= gone
    groups, scores = [], []
    for group, group_scores in zip(result.groups, result.scores):
        kept = [(p, s) for p, s in zip(group, group_scores) if p not in gone]
        if len(kept) > 1:
            groups.append([p for p, _ in kept])
            scores.append([s for _, s in kept])
    result.groups, result.scores = groups, scores
    save_result(project, result)


# Thumbnails ---------------------------------------------------------------------------------


def thumbs_dir(project: Project) -> Path:
    return project.config_dir / THUMBS_FOLDER


def thumbnail(project: Project, rel_path: str, size: int = 256) -> Path:
    """A cached JPEG thumbnail (longest side `size`) of a dataset image.

    The file name hashes the path, size and mtime, so an edited image gets a new thumbnail.
    Raises `UnreadableImage` for a file that cannot be decoded.
    """
    path = _resolve(project, rel_path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise UnreadableImage(f"{rel_path}: file not found.") from None
    key = f"{project.subfolder or ''}/{rel_path}|{stat.st_size}|{stat.st_mtime_ns}|{int(size)}"
    target = thumbs_dir(project) / f"{hashlib.sha1(key.encode('utf-8')).hexdigest()}.jpg"
    if target.is_file():
        return target
    image = open_image(path)
    image.thumbnail((int(size), int(size)), Image.Resampling.LANCZOS)
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=85)
    return target


def _placeholder(project: Project, size: int) -> Path:
    """A grey square shown in place of an image that cannot be decoded."""
    from PIL import ImageDraw

    target = thumbs_dir(project) / f"unreadable-{int(size)}.jpg"
    if not target.is_file():
        image = Image.new("RGB", (int(size), int(size)), (200, 200, 200))
        draw = ImageDraw.Draw(image)
        draw.line((0, 0, size, size), fill=(150, 0, 0), width=3)
        draw.line((0, size, size, 0), fill=(150, 0, 0), width=3)
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG", quality=85)
    return target


def marked_thumbnail(plain: Path) -> Path:
    """The thumbnail with a red frame and a "remove" band: marks show in any Gradio's grid."""
    from PIL import ImageDraw

    target = plain.with_name(plain.stem + "-marked.jpg")
    if target.is_file():
        return target
    image = Image.open(plain).convert("RGB")
    draw = ImageDraw.Draw(image)
    width, height = image.size
    border = max(3, min(width, height) // 25)
    draw.rectangle([0, 0, width - 1, height - 1], outline=(220, 38, 38), width=border)
    band = max(14, height // 8)
    draw.rectangle([0, height - band, width, height], fill=(220, 38, 38))
    draw.text((border + 2, height - band + 2), "REMOVE", fill=(255, 255, 255))
    with atomic_path(target) as tmp:
        image.save(tmp, format="JPEG", quality=85)
    return target


def thumbnails(project: Project, rel_paths: list[str], size: int = 256, progress: "Progress | None" = None, marked: "set[str] | None" = None) -> list[Path]:
    """Thumbnails of many images at once, made in parallel; an unreadable image gets a placeholder,
    a path in `marked` the framed version."""
    progress = progress or Progress()
    marked = marked or set()
    out: list["Path | None"] = [None] * len(rel_paths)

    def make(i: int) -> Path:
        try:
            plain = thumbnail(project, rel_paths[i], size)
            return marked_thumbnail(plain) if rel_paths[i] in marked else plain
        except UnreadableImage as exc:
            progress.log(f"no thumbnail: {exc}")
            return _placeholder(project, size)

    total = len(rel_paths)
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for done, (i, path) in enumerate(zip(range(total), pool.map(make, range(total))), start=1):
            out[i] = path
            if done % 50 == 0 or done == total:
                progress.update(done, total, "Making thumbnails")
    return [p for p in out if p is not None]
