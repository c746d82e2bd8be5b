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
    A full disk (ENOSPC, also when a library reports it in its own words), a used-up quota or a
    read-only disk becomes one `UserError` that names the disk and says the old file is unchanged.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _new_temp_file(target)
    except OSError as exc:
        _raise_disk_problem(exc, target, None)
        raise
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except Exception as exc:
        _raise_disk_problem(exc, target, tmp_path)  # measured before the temporary file goes
        raise
    finally:
        try:
            tmp_path.unlink(missing_ok=True)
        except OSError:
            pass  # e.g. the disk went read-only: the hidden .tmp file is harmless


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
    """`path` if free, else `stem (2).ext`, `stem (3).ext`, ... so nothing is overwritten (a broken link
    holds its name too)."""
    if not os.path.lexists(path):
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem} ({n}){path.suffix}")
        if not os.path.lexists(candidate):
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
    # lexists: a broken link holds its name too
    return any(os.path.lexists(path.with_suffix(ext)) or os.path.lexists(path.with_suffix(ext.upper())) for ext in IMAGE_EXTENSIONS + SIDECAR_EXTENSIONS)


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


# Links inside a dataset ------------------------------------------------------------------------
# One rule for every stage that lists or writes dataset files (count, check, convert, shrink, clean,
# captions and their undo, tagging, near-duplicates, training, adding files): a symbolic link (or a
# Windows junction) inside a dataset folder, to a file or to a folder, is skipped: neither read nor
# written through, and named once in the stage's message, which says to copy the real files in.
# Reading through links would be tempting, but the writing stages would then write beside the real
# files, outside the projects root (a JPEG, a temporary file, a caption, a latent cache, a trashed
# original). The dataset folder itself (ROOT/NAME/dataset, e.g. a mounted drive) is the user's choice
# and is used as it is; a NAME/SUB subfolder is an entry inside the dataset, so the rule applies to it.


def is_link(path: Path) -> bool:
    """True for a symbolic link (even a broken one) or a Windows junction."""
    path = Path(path)
    try:
        if path.is_symlink():
            return True
        is_junction = getattr(os.path, "isjunction", None)  # Python 3.12+
        return bool(is_junction and is_junction(path))
    except OSError:
        return False


class FolderEntries:
    """One folder's entries, sorted by name: plain files, real subfolders, and links set apart.

    Anything else (a socket, a pipe, a device) is in none of the lists: reading a pipe would hang.
    """

    def __init__(self, files: list[Path], folders: list[Path], links: list[Path]):
        self.files, self.folders, self.links = files, folders, links


def folder_entries(folder: Path) -> FolderEntries:
    """The entries of one dataset folder with links set apart (the listing every stage uses).

    A missing folder (or a file given as the folder) has no entries.
    """
    folder = Path(folder)
    files: list[Path] = []
    folders: list[Path] = []
    links: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return FolderEntries([], [], [])
    for entry in entries:
        path = folder / entry.name
        try:
            junction = bool(getattr(entry, "is_junction", lambda: False)())
            if entry.is_symlink() or junction:
                links.append(path)
            elif entry.is_dir(follow_symlinks=False):
                folders.append(path)
            elif entry.is_file(follow_symlinks=False):
                files.append(path)
        except OSError:
            continue  # vanished while listing
    return FolderEntries(sorted(files), sorted(folders), sorted(links))


def link_on_path(path: Path, base: Path) -> "Path | None":
    """The first link on the way down from `base` (itself not checked) to `path` (checked), or None.

    `path` must lie under `base` by name (no `..`); a path that does not is reported as itself.
    """
    path, base = Path(path), Path(base)
    try:
        parts = path.relative_to(base).parts
    except ValueError:
        return path
    current = base
    for part in parts:
        if part in ("", ".", ".."):
            return path
        current = current / part
        if is_link(current):
            return current
    return None


def links_notice(links: "list[Path]", base: Path) -> str:
    """The one message a stage gives for the links it skipped ('' when there are none)."""
    if not links:
        return ""
    from lora_gradio.engine.progress import first_few

    names = []
    for link in links:
        try:
            names.append(Path(link).relative_to(base).as_posix())
        except ValueError:
            names.append(str(link))
    return (
        f"Skipped {len(names)} linked file(s) or folder(s) in the dataset ({first_few(names, n=10, sep=', ')}): the dataset tools do "
        "not follow links, so nothing is read or written through them; copy the real files into the dataset folder instead."
    )


# Disks that cannot take a write -------------------------------------------------------------------
# ENOSPC, EDQUOT and EROFS during an atomic write become one sentence that names the disk and says
# what was kept. Libraries report them in their own words (safetensors: "No space left on device
# (os error 28)"; torch.save: "unexpected pos 576 vs 534"), so their messages and the disk's free
# space are looked at too.

import errno as _errno  # noqa: E402

_DISK_ERRNOS = {_errno.ENOSPC: "full", _errno.EROFS: "read-only"}
if hasattr(_errno, "EDQUOT"):
    _DISK_ERRNOS[_errno.EDQUOT] = "quota"
_DISK_WORDS = (
    ("no space left on device", "full"), ("(os error 28)", "full"), ("not enough space on the disk", "full"), ("disk full", "full"),
    ("disk quota exceeded", "quota"), ("(os error 122)", "quota"),
    ("read-only file system", "read-only"), ("(os error 30)", "read-only"),
)
_NEARLY_FULL_BYTES = 1 << 20  # a write that failed with less than this free failed for the space


def disk_problem(exc: BaseException, folder: "Path | None" = None) -> "str | None":
    """'full', 'quota' or 'read-only' when `exc` (or an error it came from) says the disk took no
    more; with `folder`, an error of a library that does not say why also counts as 'full' when
    that disk has (almost) no space left."""
    from lora_gradio.engine.errors import Cancelled, UserError

    if isinstance(exc, (UserError, Cancelled)):
        return None  # already a sentence for the user, or a stop they asked for
    seen: "BaseException | None" = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _DISK_ERRNOS:
            return _DISK_ERRNOS[seen.errno]
        text = str(seen).lower()
        for words, kind in _DISK_WORDS:
            if words in text:
                return kind
        seen = seen.__cause__ or seen.__context__
    if folder is not None and not isinstance(exc, OSError):
        free = _free_bytes(folder)
        if free is not None and free < _NEARLY_FULL_BYTES:
            return "full"
    return None


def disk_problem_message(kind: str, folder: Path, what: str) -> str:
    """'The disk at /content is full (0 B free): WHAT; free some space there and try again.'"""
    mount = _mount_point(folder)
    if kind == "quota":
        return f"Your disk quota on {mount} is used up: {what}; free some space there (or ask for a larger quota) and try again."
    if kind == "read-only":
        return f"The disk at {mount} is read-only: {what}; make it writable or choose a folder on another disk, then try again."
    free = _free_bytes(folder)
    shown = f" ({_human_bytes(free)} free)" if free is not None else ""
    return f"The disk at {mount} is full{shown}: {what}; free some space there (or choose a folder on another disk) and try again."


def disk_full_note(folder: Path) -> str:
    """' The disk at /x is full (0 B free), which may be why: free some space there.' when it is; else ''."""
    free = _free_bytes(folder)
    if free is None or free >= _NEARLY_FULL_BYTES:
        return ""
    return f" The disk at {_mount_point(folder)} is full ({_human_bytes(free)} free), which may be why: free some space there."


def _raise_disk_problem(exc: BaseException, target: Path, tmp_path: "Path | None") -> None:
    """Raise the one-sentence `UserError` for a write of `target` the disk refused; else return."""
    from lora_gradio.engine.errors import UserError

    kind = disk_problem(exc, target.parent if tmp_path is not None else None)
    if kind is None:
        return
    kept = "the old file is unchanged" if target.exists() else "nothing was left behind"
    what = f"{target.name} was not written in {target.parent} and {kept}"
    raise UserError(disk_problem_message(kind, target.parent, what)) from None


def _existing(folder: Path) -> Path:
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _mount_point(folder: Path) -> Path:
    path = _existing(folder)
    while not os.path.ismount(path) and path.parent != path:
        path = path.parent
    return path


def _free_bytes(folder: Path) -> "int | None":
    try:
        return shutil.disk_usage(_existing(folder)).free
    except OSError:
        return None


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


# Reading files that people and crashes leave ------------------------------------------------------
# Editors save with a BOM or as UTF-16, a path may be a folder, a power loss leaves NUL padding or a
# torn last line. The readers below turn each into one `UserError` naming the file and the fix (a
# missing file stays FileNotFoundError: callers have their own words for that).

import codecs as _codecs  # noqa: E402
import json as _json  # noqa: E402

_WIDE_BOMS = ((_codecs.BOM_UTF32_LE, "UTF-32"), (_codecs.BOM_UTF32_BE, "UTF-32"), (_codecs.BOM_UTF16_LE, "UTF-16"), (_codecs.BOM_UTF16_BE, "UTF-16"))
_SAVE_AS_UTF8 = "save it again as UTF-8 text (in Notepad: Save as, Encoding: UTF-8)"


def read_user_text(path: Path, what: str = "The file", fix: str = "", by_tool: bool = False) -> str:
    """The text of a file a person or the tool wrote: UTF-8, a leading BOM dropped.

    A folder, an unreadable file, UTF-16/UTF-32, NUL bytes (binary, or cut short by a crash) and
    bytes that are not UTF-8 each raise one `UserError`: "WHAT PATH is ...: how to fix[, or FIX]."
    For a file the tool wrote (`by_tool`), FIX alone is the way out: nobody edits it by hand.
    """
    from lora_gradio.engine.errors import UserError

    def say(problem: str, remedy: str) -> str:
        return _unreadable(path, what, problem, "" if by_tool and fix else remedy, fix)

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise UserError(say("is a folder, not a file", "move or rename that folder")) from None
    except PermissionError:
        if path.is_dir():  # Windows says this for a folder
            raise UserError(say("is a folder, not a file", "move or rename that folder")) from None
        raise UserError(say("cannot be read (permission denied)", "make it readable for this user")) from None
    except OSError as exc:
        raise UserError(say(f"cannot be read ({exc.strerror or exc})", "check the file and its disk")) from None
    return decode_user_text(data, path, what, fix, by_tool)


def decode_user_text(data: bytes, path: Path, what: str = "The file", fix: str = "", by_tool: bool = False) -> str:
    """`read_user_text` for bytes already read."""
    from lora_gradio.engine.errors import UserError

    def say(problem: str, remedy: str) -> str:
        return _unreadable(path, what, problem, "" if by_tool and fix else remedy, fix)

    if data.startswith(_codecs.BOM_UTF8):
        data = data[len(_codecs.BOM_UTF8):]
    for bom, name in _WIDE_BOMS:
        if data.startswith(bom):
            raise UserError(say(f"is saved as {name}, not UTF-8", _SAVE_AS_UTF8))
    if b"\0" in data:
        body = data.rstrip(b"\0")
        remedy = _SAVE_AS_UTF8
        if not body:
            problem, remedy = "holds only NUL bytes (a crash or power loss lost what it held)", "write it again as UTF-8 text"
        elif b"\0" not in body:
            problem, remedy = "ends in NUL bytes (a crash or power loss cut it short)", "remove them, check what is missing at its end and save it as UTF-8 text"
        elif _looks_utf16(data):
            problem = "is saved as UTF-16 (NUL bytes between its letters), not UTF-8"
        else:
            problem = "is not a text file (it holds NUL bytes)"
        raise UserError(say(problem, remedy))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        controls = sum(1 for b in data[:4096] if b < 32 and b not in (9, 10, 13))
        if controls > len(data[:4096]) // 20:
            problem = "is not a text file"
        else:
            line = data[: exc.start].count(b"\n") + 1
            problem = f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})"
        raise UserError(say(problem, _SAVE_AS_UTF8)) from None


def read_user_toml(path: Path, what: str = "The file", fix: str = "") -> dict:
    """A TOML file through `read_user_text`; a syntax error is a `UserError` with the right line
    ("...: fix it[, or FIX]."). `fix` is the other way out, e.g. "delete it to start from the defaults"."""
    from lora_gradio.engine.errors import UserError

    if _tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise ImportError("reading TOML needs Python 3.11+ or the tomli package")
    text = read_user_text(path, what, fix)
    try:
        return _tomllib.loads(text)
    except _tomllib.TOMLDecodeError as exc:
        raise UserError(_unreadable(path, what, f"is not valid TOML ({exc})", "fix it", fix)) from None


def read_user_json(path: Path, what: str = "The file", fix: str = "") -> object:
    """A JSON file the tool wrote, through `read_user_text`; a file cut short or not JSON is one
    `UserError` that ends with `fix` (what to do instead)."""
    from lora_gradio.engine.errors import UserError

    text = read_user_text(path, what, fix, by_tool=True)
    try:
        return _json.loads(text)
    except ValueError as exc:
        problem = "is empty" if not text.strip() else f"is not valid JSON ({exc}), probably cut short by a crash"
        raise UserError(_unreadable(path, what, problem, "", fix)) from None


def parse_json_lines(data: bytes) -> list[dict]:
    """The JSON objects of a JSON-lines file, one per line, skipping what a crash leaves: NUL
    padding, a torn line, bytes that are not UTF-8, lines that are not objects."""
    out = []
    for line in data.split(b"\n"):
        line = line.strip(b"\0 \t\r")
        if not line:
            continue
        if b"\0" in line:  # a torn line run into the padding, or the padding into a new line
            line = line.rsplit(b"\0", 1)[1].strip()
        try:
            value = _json.loads(line)
        except ValueError:  # UnicodeDecodeError too
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _looks_utf16(data: bytes) -> bool:
    sample = data[:400]
    if len(sample) < 4:
        return False
    odd, even = sample[1::2], sample[0::2]
    return max(odd.count(0) / len(odd), even.count(0) / len(even)) > 0.7


def _named(path: Path, what: str) -> str:
    return f"{what} {path}" if what else str(path)


def _unreadable(path: Path, what: str, problem: str, remedy: str, fix: str) -> str:
    steps = ", or ".join(part for part in (remedy, fix) if part)
    return f"{_named(path, what)} {problem}" + (f": {steps}." if steps else ".")


try:  # noqa: E402
    import tomllib as _tomllib
except ImportError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _tomllib  # type: ignore[no-redef]
    except ImportError:
        _tomllib = None  # type: ignore[assignment]
