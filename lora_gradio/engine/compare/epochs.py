"""Which epoch files and which prompt a comparison uses (shared by the grid renderer and the WebUI way)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

from lora_gradio.engine.compare.settings import COMPARE_FOLDER, CompareSettings, epochs_text, parse_epochs, resolve_settings
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Project


def as_files(files: Iterable[Any]) -> list[tuple[int, Path]]:
    out = []
    for item in files:
        if isinstance(item, (tuple, list)):
            out.append((int(item[0]), Path(item[1])))
        else:
            path = Path(item)
            match = re.search(r"-(\d+)$", path.stem)
            out.append((int(match.group(1)) if match else 0, path))
    return out


def choose_epochs(files: Sequence[Any], which: "str | Sequence[int]" = "all") -> list[tuple[int, Path]]:
    """The `[(epoch, path)]` of `files` (as `saving.epoch_files` gives them) that `which` names.

    'all'; 'every N' = the multiples of N plus the last epoch (the finished LoRA is always shown);
    'last N'; or explicit numbers ('1, 3-5' or a list), kept in the given order.
    """
    files = sorted(as_files(files), key=lambda item: item[0])
    if not files:
        raise UserError("No saved epochs to compare: train first (Train tab, or `lora-gradio train NAME`).")
    try:
        choice = parse_epochs(epochs_text(which) if not isinstance(which, str) else which)
    except ValueError as exc:
        raise UserError(f"epochs = {which!r} is not allowed: {exc}.") from None
    by_epoch = dict(files)
    if isinstance(choice, list):
        missing = [e for e in choice if e not in by_epoch]
        if missing:
            saved = ", ".join(str(e) for e, _ in files)
            raise UserError(f"Epoch {', '.join(str(e) for e in missing)} {'is' if len(missing) == 1 else 'are'} not saved: the saved epochs are {saved} (use 'all' or some of those).")
        return [(e, by_epoch[e]) for e in choice]
    kind, n = choice
    if kind == "every":
        return [(e, p) for e, p in files if e % n == 0 or e == files[-1][0]]
    if kind == "last":
        return files[-n:]
    return files


def caption_first_tags(project: Project) -> Counter:
    from lora_gradio.engine.tags import caption_files, read_tags

    firsts: Counter = Counter()
    for path in caption_files(project):
        try:
            tags = read_tags(path)
        except (OSError, UserError):
            continue
        if tags:
            firsts[tags[0]] += 1
    return firsts


def default_prompt(project: Project, n: int = 8) -> str:
    """The guide's test prompt: the activation tag(s), then the `n` most common other tags of the dataset.

    The activation tag is the one saved by the tag editor, else the most common first tag of the captions.
    '' when the dataset has no captions.
    """
    from lora_gradio.engine.tags import split_tags, tag_key, top_tags

    activation = split_tags(_saved_activation(project))
    if not activation:
        firsts = caption_first_tags(project)
        activation = [firsts.most_common(1)[0][0]] if firsts else []
    keys = {tag_key(t) for t in activation}
    common = [tag for tag, _ in top_tags(project, n + len(keys) + 5) if tag_key(tag) not in keys][: max(0, int(n))]
    return ", ".join(activation + common)


def _saved_activation(project: Project) -> str:
    from lora_gradio.engine.tags import saved_activation

    return saved_activation(project)


def output_name(project: Project) -> str:
    """The LoRA files' name: the training settings' output_name, else the project's name."""
    from lora_gradio.engine.train.config import load_settings, resolved_output_name

    return resolved_output_name(load_settings(project), project)


def saved_epochs(project: Project) -> list[tuple[int, Path]]:
    """The project's `NAME-01.safetensors ...` files; a UserError that says to train first if none."""
    from lora_gradio.engine.train.saving import epoch_files

    name = output_name(project)
    files = epoch_files(project.output_dir, name)
    if not files:
        raise UserError(
            f"No saved epochs of {name} in {project.output_dir}: train first (Train tab, or `lora-gradio train {project.base}`); "
            "keep save_every_n_epochs at 1 or 2 to have several epochs to compare."
        )
    return files


def newest_grid(project: Project) -> "Path | None":
    """The grid rendered last in this project (here or by a WebUI), or None."""
    folder = project.output_dir / COMPARE_FOLDER
    if not folder.is_dir():
        return None
    grids = [p for p in folder.glob("*.png") if p.is_file()]
    return max(grids, key=lambda p: (p.stat().st_mtime, p.name)) if grids else None


def prompt_of(project: Project, settings: CompareSettings) -> str:
    prompt = settings.prompt.strip() or default_prompt(project)
    if not prompt:
        raise UserError("No prompt: the dataset has no captions to build one from; give a prompt (--prompt \"...\").")
    return prompt


def plan(project: Project, overrides: "dict[str, Any] | None"):
    """(compare settings, training settings, LoRA name, chosen epoch files): what both ways of comparing start from."""
    from lora_gradio.engine.train.config import load_settings, resolved_output_name

    settings = resolve_settings(project, overrides)
    train = load_settings(project)
    return settings, train, resolved_output_name(train, project), choose_epochs(saved_epochs(project), settings.epochs)
