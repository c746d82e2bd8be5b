"""The optional FiftyOne App for looking at duplicates (`pip install "lora_gradio[fiftyone]"`).

The dataset's images are shown with their duplicate groups and the notebook's `delete` tag on the
marked ones; tags changed in the App come back as marks. Nothing here runs unless asked for.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from lora_gradio.engine.dedupe import (
    DELETE_TAG,
    FIFTYONE_MISSING,
    KEPT_TAG,
    DedupeResult,
    _markable,
    _one_line,
    _require_result,
    _resolve,
    set_marks,
)
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Project

_session: Any = None  # the running FiftyOne App session of this process


def fiftyone_available() -> bool:
    """True if FiftyOne is installed (checked without importing it: the import is slow)."""
    return importlib.util.find_spec("fiftyone") is not None


def _fiftyone():
    os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"  # no analytics from the user's machine
    if not fiftyone_available():
        raise UserError(FIFTYONE_MISSING)
    try:
        import fiftyone as fo
    except ImportError as exc:
        raise UserError(f"FiftyOne is installed but cannot be imported ({_one_line(exc)}): reinstall it with pip install \"lora_gradio[fiftyone]\".") from None
    return fo


def fiftyone_dataset_name(project: Project) -> str:
    return "lora_gradio-" + project.name.replace("/", "--")


def open_in_fiftyone(project: Project, port: int = 5151, address: str = "127.0.0.1") -> str:
    """Show the last duplicate search in the FiftyOne App (headless, on `address:port`); return its URL.

    Each image is a sample with its group in `dup_group` (kept image first, groups side by side),
    `dedupe_path` (its path in the result), the notebook's `delete` tag on marked images and
    `has_duplicates` on kept ones. Tag or untag `delete` in the App, then `apply_fiftyone_marks`.
    The FiftyOne dataset is a persistent copy of the marks; the images are never touched by it.
    """
    fo = _fiftyone()
    result = _require_result(project)
    close_fiftyone()
    name = fiftyone_dataset_name(project)
    try:
        dataset = fo.Dataset(name, overwrite=True)
        # Persistent, so the marks survive the App closing and another process can read them back.
        dataset.persistent = True
        group_of = result.group_of()
        score_of = {p: s for group, scores in zip(result.groups, result.scores) for p, s in zip(group, scores)}
        unreadable = {p for p, _ in result.unreadable}
        grouped = [p for group in result.groups for p in group]
        ordered = grouped + [p for p in result.images if p not in group_of]
        samples = []
        for rel in ordered:
            if rel in unreadable:
                continue  # the App cannot show them; their marks stay as they are
            tags = []
            if rel in result.marked:
                tags.append(DELETE_TAG)
            if rel in group_of and result.groups[group_of[rel]][0] == rel:
                tags.append(KEPT_TAG)
            samples.append(
                fo.Sample(
                    filepath=str(_resolve(project, rel)),
                    tags=tags,
                    dedupe_path=rel,
                    dup_group=group_of.get(rel),
                    similarity=score_of.get(rel),
                )
            )
        dataset.add_samples(samples)
        global _session
        _session = fo.launch_app(dataset, port=int(port), address=address, remote=True)
    except UserError:
        raise
    except Exception as exc:  # the database or the App server did not start
        raise UserError(
            f"FiftyOne could not start ({type(exc).__name__}: {_one_line(exc)}): check its database "
            "(set FIFTYONE_DATABASE_URI to a running MongoDB if the bundled one fails) or mark the duplicates on this page."
        ) from None
    return getattr(_session, "url", None) or f"http://{address}:{port}/"


def apply_fiftyone_marks(project: Project) -> DedupeResult:
    """Take the marks from the FiftyOne dataset: images tagged `delete` there are marked, others not."""
    fo = _fiftyone()
    result = _require_result(project)
    name = fiftyone_dataset_name(project)
    try:
        if not fo.dataset_exists(name):
            raise UserError(f"No FiftyOne dataset for project {project.name!r}: use Open in FiftyOne first.")
        dataset = fo.load_dataset(name)
        dataset.reload()
        paths = dataset.values("dedupe_path")
        tags = dataset.values("tags")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"Cannot read the marks from FiftyOne ({type(exc).__name__}: {_one_line(exc)}): open it again with Open in FiftyOne.") from None
    known = _markable(result)
    shown = {p for p in paths if p in known}
    marked = {p for p, t in zip(paths, tags) if p in known and DELETE_TAG in (t or [])}
    # Images the App did not show (unreadable, or gone since) keep their marks from the page.
    return set_marks(project, marked | (result.marked - shown))


def close_fiftyone() -> None:
    """Stop this process's FiftyOne App session, if one is running (a no-op otherwise)."""
    global _session
    session, _session = _session, None
    if session is not None:
        try:
            session.close()
        except Exception:  # already gone: nothing left to stop
            pass
