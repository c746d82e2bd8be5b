"""Projects: where a LoRA's dataset, outputs, settings, trash and jobs live.

Two folder layouts, the same as holostrawberry's notebooks, so existing Google Drive
folders open unchanged:

- ``project`` (the default): ``ROOT/NAME/dataset``, ``ROOT/NAME/output``, settings in
  ``ROOT/NAME/``, logs in ``ROOT/_logs``;
- ``category``: ``ROOT/datasets/NAME``, ``ROOT/output/NAME``, ``ROOT/config/NAME``, ``ROOT/log``.

A name may hold one ``/``: ``NAME/SUB`` is the dataset subfolder ``SUB`` of project
``NAME`` (the notebook's way of keeping several image folders with their own repeats);
it shares the project's settings, outputs and trash.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
import tempfile
import threading
import unicodedata
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from lora_gradio import __version__
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_write_text, read_user_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT_ENV = "LORA_GRADIO_ROOT"
DEFAULT_ROOT = Path("~/Loras")
SETTINGS_FILE = "lora_gradio.toml"
MAX_NAME_LENGTH = 80
# Folders of the tool's own inside a project's config folder.
TRASH_FOLDER = "_trash"
JOBS_FOLDER = "_jobs"

# Letters (any script), digits, underscore, dash and dot: the characters that are safe in a
# folder name on Linux, Windows, macOS and Google Drive, and in a LoRA file name.
_SEGMENT = re.compile(r"^[^\W][\w.-]*$", re.UNICODE)
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


class Layout(str, Enum):
    PROJECT = "project"
    CATEGORY = "category"

    @classmethod
    def parse(cls, value: "str | Layout") -> "Layout":
        try:
            return cls(str(value.value if isinstance(value, Layout) else value).lower())
        except ValueError:
            raise UserError(f"Unknown layout {value!r}: use 'project' (ROOT/NAME/dataset) or 'category' (ROOT/datasets/NAME).") from None


# Top-level folders each layout uses for itself: a project may not take these names.
_RESERVED_NAMES = {
    Layout.PROJECT: {"_logs"},
    Layout.CATEGORY: {"datasets", "output", "config", "log"},
}


def resolve_root(root: "str | os.PathLike[str] | None" = None) -> Path:
    """The projects root: the argument, else ``$LORA_GRADIO_ROOT``, else ``~/Loras``."""
    chosen = root if root not in (None, "") else os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


def validate_name(name: str, layout: Layout = Layout.PROJECT) -> str:
    """Return `name` if it is a safe project name, else raise `UserError` saying why."""
    if not isinstance(name, str) or name == "":
        raise UserError("The project name is empty: type a name such as 'my_character'.")
    hint = "Use letters, digits, '_', '-' or '.', with at most one '/' for a dataset subfolder (e.g. 'my_character' or 'my_character/outfit2')."
    if name != name.strip() or any(ch.isspace() for ch in name):
        suggestion = "_".join(name.split())
        raise UserError(f"Project name {name!r} contains spaces: use '_' instead (e.g. {suggestion!r}).")
    if len(name) > MAX_NAME_LENGTH:
        raise UserError(f"Project name is {len(name)} characters long: keep it to {MAX_NAME_LENGTH} or fewer.")
    if name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name):
        raise UserError(f"Project name {name!r} looks like a path: give just a name; the folder is made under the projects root. {hint}")
    if "\\" in name:
        raise UserError(f"Project name {name!r} contains a backslash. {hint}")
    if unicodedata.normalize("NFC", name) != name or any(unicodedata.category(ch).startswith("C") for ch in name):
        raise UserError(f"Project name {name!r} contains invisible or control characters. {hint}")
    parts = name.split("/")
    if len(parts) > 2:
        raise UserError(f"Project name {name!r} has more than one '/'. {hint}")
    for part in parts:
        if part in ("", ".", ".."):
            raise UserError(f"Project name {name!r} has an empty, '.' or '..' part. {hint}")
        if not _SEGMENT.match(part) or part.endswith("."):
            bad = sorted({ch for ch in part if not (ch.isalnum() or ch in "_.-")})
            shown = ", ".join(repr(ch) for ch in bad) if bad else "its first or last character"
            raise UserError(f"Project name {name!r} has characters that are not allowed ({shown}). {hint}")
        if part.lower() in _WINDOWS_RESERVED:
            raise UserError(f"Project name {name!r} uses {part!r}, a reserved device name on Windows: choose another name.")
    if parts[0] in _RESERVED_NAMES[layout] or parts[0].startswith("_"):
        raise UserError(f"Project name {parts[0]!r} is reserved for the tool's own folders in the {layout.value} layout: choose another name.")
    return name


@dataclass(frozen=True)
class Project:
    """One project's folders. Paths are derived from root, name and layout; nothing is stored twice."""

    root: Path
    name: str
    layout: Layout = Layout.PROJECT

    @property
    def base(self) -> str:
        """The project part of ``NAME/SUB``."""
        return self.name.split("/")[0]

    @property
    def subfolder(self) -> "str | None":
        parts = self.name.split("/")
        return parts[1] if len(parts) == 2 else None

    @property
    def dataset_root(self) -> Path:
        """The project's dataset folder, holding the images or the per-folder subfolders."""
        if self.layout is Layout.PROJECT:
            return self.root / self.base / "dataset"
        return self.root / "datasets" / self.base

    @property
    def dataset_dir(self) -> Path:
        """Where this name's images go: the dataset folder, or its subfolder for ``NAME/SUB``."""
        return self.dataset_root / self.subfolder if self.subfolder else self.dataset_root

    @property
    def output_dir(self) -> Path:
        if self.layout is Layout.PROJECT:
            return self.root / self.base / "output"
        return self.root / "output" / self.base

    @property
    def config_dir(self) -> Path:
        if self.layout is Layout.PROJECT:
            return self.root / self.base
        return self.root / "config" / self.base

    @property
    def log_dir(self) -> Path:
        return self.root / ("_logs" if self.layout is Layout.PROJECT else "log")

    @property
    def settings_file(self) -> Path:
        return self.config_dir / SETTINGS_FILE

    @property
    def trash_dir(self) -> Path:
        return self.config_dir / TRASH_FOLDER

    @property
    def jobs_dir(self) -> Path:
        return self.config_dir / JOBS_FOLDER

    def exists(self) -> bool:
        return self.dataset_dir.is_dir() or (self.subfolder is None and self.settings_file.is_file())

    def relative(self, path: Path) -> str:
        """`path` relative to the projects root, for messages and records that survive a moved root."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    # Settings ---------------------------------------------------------------------------------

    def read_settings(self) -> dict[str, Any]:
        """All sections of the project's settings file; an empty dict when there is none yet.

        A BOM is dropped; a folder, binary or UTF-16 file, or broken TOML is one `UserError` naming the file."""
        try:
            return read_user_toml(self.settings_file, "The settings file", "delete it to start again from the defaults")
        except FileNotFoundError:
            return {}

    def read_section(self, section: str) -> dict[str, Any]:
        value = self.read_settings().get(section, {})
        return value if isinstance(value, dict) else {}

    def write_section(self, section: str, values: dict[str, Any]) -> None:
        """Replace one section (e.g. ``train``) of the settings file, atomically, keeping the others."""
        import tomli_w

        with settings_lock(self):
            settings = self.read_settings()
            settings[section] = _drop_none(values)
            atomic_write_text(self.settings_file, tomli_w.dumps(settings))


# Pages (several threads, several processes on one root) and command lines save settings at once, and
# every save reads the file, changes a part and writes it all back: saves (and read-change-write steps
# built on them, such as `config.update_settings`) take turns through a file lock per project. The OS
# drops it with a killed process, so a stale lock never blocks.
LOCKS_FOLDER = ".locks"


def settings_lock(project: "Project"):
    """Hold the project's settings lock (re-entrant in one thread): ``with settings_lock(project): ...``."""
    from lora_gradio.engine.locks import exclusive

    return exclusive(project.config_dir / LOCKS_FOLDER / "settings.lock", f"The settings of project {project.base!r}")


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: leave unset values out (their defaults apply on load)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = _drop_none(value) if isinstance(value, dict) else value
    return out


class Projects:
    """The projects under one root, in one layout."""

    def __init__(self, root: "str | os.PathLike[str] | None" = None, layout: "str | Layout" = Layout.PROJECT):
        self.root = resolve_root(root)
        self.layout = Layout.parse(layout)

    def project(self, name: str) -> Project:
        """A `Project` for a valid name, whether or not it exists yet."""
        return Project(self.root, validate_name(name, self.layout), self.layout)

    def open(self, name: str) -> Project:
        project = self.project(name)
        if not project.exists():
            raise UserError(f"No project {name!r} under {self.root}{self._missing_hint(name)}")
        return project

    def create(self, name: str) -> Project:
        project = self.project(name)
        if project.exists():
            raise UserError(f"Project {name!r} already exists at {project.dataset_dir}: open it instead, or choose another name.")
        self.check_root_writable()
        made: list[Path] = []
        try:
            folders = [project.dataset_dir, project.output_dir, project.config_dir, project.log_dir]
            for folder in folders:
                for parent in reversed([folder, *folder.parents]):
                    if not parent.exists() and self.root in (parent, *parent.parents):
                        parent.mkdir()
                        made.append(parent)
            if project.subfolder is None or not project.settings_file.exists():
                project.write_section("project", {"name": project.base, "layout": self.layout.value, "created": _now(), "created_by": f"lora_gradio {__version__}"})
        except (OSError, UserError) as exc:  # UserError: a full or read-only disk refused the settings file
            if project.config_dir in made:  # the settings lock made its folder inside the new one
                for lock_file in sorted((project.config_dir / LOCKS_FOLDER).glob("*")):
                    lock_file.unlink(missing_ok=True)
                made.insert(made.index(project.config_dir) + 1, project.config_dir / LOCKS_FOLDER)
            for folder in reversed(made):  # leave nothing half-made behind
                try:
                    folder.rmdir()
                except OSError:
                    pass
            if isinstance(exc, UserError):
                raise
            raise UserError(f"Could not create project {name!r} under {self.root}: {exc.strerror or exc}. Choose a writable projects root with --root or {ROOT_ENV}.") from None
        return project

    def list(self) -> list[str]:
        """Names of the projects under the root, with ``NAME/SUB`` for each dataset subfolder."""
        names: list[str] = []
        if self.layout is Layout.PROJECT:
            candidates = _subdirs(self.root)
        else:
            candidates = sorted(set(_subdirs(self.root / "datasets")) | {p for p in _subdirs(self.root / "config") if (self.root / "config" / p / SETTINGS_FILE).is_file()})
        for base in candidates:
            if base.startswith(("_", ".")) or base in _RESERVED_NAMES[self.layout]:
                continue
            project = Project(self.root, base, self.layout)
            if not project.exists():
                continue
            names.append(base)
            names.extend(f"{base}/{sub}" for sub in _subdirs(project.dataset_root) if not sub.startswith(("_", ".")))
        return names

    def most_recent(self) -> "str | None":
        """The project touched last (settings saved, a job started, images added), to open first."""

        def touched(name: str) -> float:
            project = Project(self.root, name, self.layout)
            paths = (project.settings_file, project.jobs_dir, project.dataset_dir)
            return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)

        names = [n for n in self.list() if "/" not in n]
        return max(names, key=touched) if names else None

    def check_root_writable(self) -> None:
        """Raise `UserError` unless the root exists (or can be made) and takes a file."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise UserError(f"The projects root {self.root} is not writable ({exc.strerror or exc}): choose another folder with --root or {ROOT_ENV}.") from None

    def _missing_hint(self, name: str) -> str:
        other = Layout.CATEGORY if self.layout is Layout.PROJECT else Layout.PROJECT
        if Project(self.root, name, other).exists():
            return f": it exists in the {other.value} layout, so add --layout {other.value}."
        known = self.list()
        if known:
            return f": create it first, or pick one of: {', '.join(known[:10])}{' ...' if len(known) > 10 else ''}."
        return f": create it first with `lora-gradio project create {name}`."


def _subdirs(folder: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir(follow_symlinks=False))  # a linked SUB is no project
    except (FileNotFoundError, NotADirectoryError):
        return []


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
