"""Small file helpers that keep the user's data safe: atomic writes and moves."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only on success.

    The temporary file lives in the same folder so the final rename is atomic on the
    same file system, and a crash leaves at most a hidden `.tmp` file, never a half file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _new_temp_file(target)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_temp_file(target: Path) -> Path:
    """An empty hidden file beside `target`, with the usual permissions (mkstemp's 0600 would
    stick to the final file and hide LoRAs and captions from other users of the machine)."""
    for _ in range(100):
        candidate = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return candidate
        except FileExistsError:
            continue
    raise OSError(f"cannot create a temporary file beside {target}")


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def move_file(src: Path, dst: Path) -> None:
    """Move a file, across file systems too, without leaving a partial copy at `dst`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
    except OSError:
        # Different device (e.g. a Drive mount): copy to a temp name, then rename, then remove.
        with atomic_path(dst) as tmp:
            shutil.copy2(src, tmp)
        os.unlink(src)


def unique_path(path: Path) -> Path:
    """`path` if free, else `stem (2).ext`, `stem (3).ext`, ... so nothing is overwritten."""
    if not path.exists():
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


# File kinds a dataset folder holds. Trainers read these image formats; a caption has the
# image's stem; `.npz` files are cached latents that belong to the image of the same stem.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_EXTENSIONS = (".txt", ".caption")
SIDECAR_EXTENSIONS = CAPTION_EXTENSIONS + (".npz",)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def stem_taken(path: Path) -> bool:
    """True if an image or sidecar with `path`'s stem exists beside it (any extension we use)."""
    return any(path.with_suffix(ext).exists() or path.with_suffix(ext.upper()).exists() for ext in IMAGE_EXTENSIONS + SIDECAR_EXTENSIONS)


def unique_stem_path(path: Path) -> Path:
    """Like `unique_path`, but also avoids stems that another image or caption already uses,
    so a new image never inherits someone else's caption file."""
    if not stem_taken(path):
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        if not stem_taken(candidate):
            return candidate
        n += 1


def sortable_id(label: str = "") -> str:
    """`20261125-021955-123-<label>-a1b2`: ids that sort in creation order (to the millisecond)
    and stay unique when two are made at once."""
    now = _dt.datetime.now()
    parts = [now.strftime("%Y%m%d-%H%M%S"), f"{now.microsecond // 1000:03d}", label, secrets.token_hex(2)]
    return "-".join(p for p in parts if p)
