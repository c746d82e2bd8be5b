"""The WebUI's X/Y/Z plot axes "LoRA epoch" and "LoRA weight".

The prompt edits are plain string functions (`set_epoch`, `set_weight`), testable without the WebUI;
`add_axes` appends the two axes to the X/Y/Z plot script's `axis_options`, once.

Rules (also in the README):
- "LoRA epoch" offers the saved epoch files of the projects (`NAME-01`, `NAME-02`, ...). For each value it
  renames every `<lora:NAME...>` tag of that LoRA (`NAME` or `NAME-<digits>`) in the prompt to the value,
  keeping the tag's weights. A prompt without such a tag gets `<lora:NAME-NN:1>` appended, so a bare
  prompt (with the activation tag) is enough.
- "LoRA weight" is a float axis, so the X/Y/Z plot's own range syntax works (`0.5-1 (+0.1)`, `0-1 [5]`).
  It sets the weight of the tags of this tool's LoRAs (any project's output name, with or without an epoch);
  when the prompt holds none of those, of every `<lora:...>` tag. A prompt without any tag is an error,
  like Prompt S/R's: the X axis is applied before Y before Z, so put "LoRA epoch" on an earlier axis or
  write a tag in the prompt.
- Both change `p.prompt`, and the hires prompt when one is set. `p.all_prompts` is rebuilt by
  `process_images` from `p.prompt` (the X/Y/Z plot's own Prompt S/R changes only `p.prompt` too); a list
  already there is replaced by an edited copy, never edited in place (the cell's `p` is a shallow copy).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

EPOCH_LABEL = "LoRA epoch"
WEIGHT_LABEL = "LoRA weight"
XYZ_SCRIPT = "xyz_grid.py"

# The WebUI's extra-network syntax is `<kind:arg1:arg2...>`; names cannot hold ':' or '>'.
LORA_TAG = re.compile(r"<(lora|lyco):([^:>]+)((?::[^>]*)?)>")
EPOCH_NAME = re.compile(r"(.+)-(\d+)")
WEIGHT_KEYS = ("te", "unet")


# ----- pure string logic -----
def split_epoch(name: str) -> tuple[str, int | None]:
    """`("NAME", 3)` for `NAME-03`; `("NAME", None)` for a name without an epoch number."""
    match = EPOCH_NAME.fullmatch(name.strip())
    return (match.group(1), int(match.group(2))) if match else (name.strip(), None)


def lora_tags(prompt: str) -> list[str]:
    """The LoRA names in the prompt's `<lora:...>` / `<lyco:...>` tags, in order."""
    return [m.group(2).strip() for m in LORA_TAG.finditer(prompt or "")]


def _same_lora(tag_name: str, base: str) -> bool:
    tag_name = tag_name.strip()
    if tag_name == base:
        return True
    tag_base, epoch = split_epoch(tag_name)
    return epoch is not None and tag_base == base


def format_weight(weight: float) -> str:
    """`0.7` for 0.7000000000000001 (numpy ranges), `1` for 1.0."""
    value = round(float(weight), 4)
    return f"{value:g}" if value != 0 else "0"


def set_epoch(prompt: str, value: str, weight: float = 1.0) -> str:
    """Every tag of the LoRA `value` belongs to (its name without `-NN`) renamed to `value`; the weights
    stay. Without such a tag, `<lora:value:weight>` is appended."""
    value = value.strip()
    if not value or ":" in value or ">" in value or "<" in value:
        raise ValueError(f"{value!r} is not a LoRA name")
    base = split_epoch(value)[0]
    found = False

    def rename(match: re.Match) -> str:
        nonlocal found
        if not _same_lora(match.group(2), base):
            return match.group(0)
        found = True
        return f"<{match.group(1)}:{value}{match.group(3)}>"

    edited = LORA_TAG.sub(rename, prompt or "")
    if found:
        return edited
    tag = f"<lora:{value}:{format_weight(weight)}>"
    stripped = edited.rstrip()
    if not stripped:
        return tag
    return f"{stripped} {tag}" if stripped.endswith(",") else f"{stripped}, {tag}"


def _reweighted_args(args: str, weight: str) -> str:
    """`:0.8:unet=0.5:dyn=8` with every text-encoder/UNet multiplier set to `weight` (dyn kept)."""
    parts = args[1:].split(":") if args else []
    out, positional, has_weight = [], 0, False
    for part in parts:
        if "=" in part:
            key, _ = part.split("=", 1)
            if key.strip() in WEIGHT_KEYS:
                out.append(f"{key.strip()}={weight}")
                has_weight = True
            else:
                out.append(part)
            continue
        if positional < 2:  # te, then unet multipliers; the third positional is dyn
            out.append(weight)
            has_weight = True
        else:
            out.append(part)
        positional += 1
    if not has_weight:
        out.insert(0, weight)
    return ":" + ":".join(out)


def set_weight(prompt: str, weight: float, names: Iterable[str] | None = None) -> str:
    """The weight of the tags whose LoRA (name without `-NN`) is in `names`; when none is, of every
    LoRA tag. Raises ValueError when the prompt has no LoRA tag at all."""
    prompt = prompt or ""
    tags = lora_tags(prompt)
    if not tags:
        raise ValueError("the prompt has no <lora:...> tag")
    wanted = {n for n in (names or ()) if n}
    chosen = [t for t in tags if t in wanted or split_epoch(t)[0] in wanted]
    text = format_weight(weight)

    def reweight(match: re.Match) -> str:
        name = match.group(2).strip()
        if chosen and name not in chosen:
            return match.group(0)
        return f"<{match.group(1)}:{match.group(2)}{_reweighted_args(match.group(3), text)}>"

    return LORA_TAG.sub(reweight, prompt)


def edit_prompts(p: Any, edit: Callable[[str], str]) -> None:
    """Apply `edit` to `p.prompt` (a string or a list), the hires prompt when one is set, and a copy of
    `p.all_prompts` / `p.all_hr_prompts` when they are already lists."""
    prompt = getattr(p, "prompt", "")
    p.prompt = [edit(x) for x in prompt] if isinstance(prompt, list) else edit(prompt or "")
    hr_prompt = getattr(p, "hr_prompt", None)
    if isinstance(hr_prompt, str) and hr_prompt.strip():
        p.hr_prompt = edit(hr_prompt)
    for name in ("all_prompts", "all_hr_prompts"):
        values = getattr(p, name, None)
        if isinstance(values, list) and values:
            setattr(p, name, [edit(x) if isinstance(x, str) else x for x in values])


# ----- the projects' LoRA files -----
@dataclass
class Catalog:
    """The epoch files of every project: `epochs` (`NAME-01`, ... by project, then epoch), the project
    that made each, and the output names of all projects (the LoRAs the weight axis prefers)."""

    epochs: list[str] = field(default_factory=list)
    project_of: dict[str, str] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)


def catalog(root, layout="project") -> Catalog:
    """What `root` holds now; a project with unreadable settings counts under its own name."""
    from lora_gradio.engine.errors import UserError
    from lora_gradio.engine.project import Projects
    from lora_gradio.engine.train.config import load_settings, resolved_output_name
    from lora_gradio.engine.train.saving import epoch_files

    found = Catalog()
    try:
        projects = Projects(root, layout)
        listed = [n for n in projects.list() if "/" not in n]
    except (OSError, UserError):
        return found
    for name in listed:
        project = projects.project(name)
        try:
            output_name = resolved_output_name(load_settings(project), project)
        except UserError:
            output_name = project.base
        found.names.add(output_name)
        for _, path in epoch_files(project.output_dir, output_name):
            stem = path.name[: -len(".safetensors")]
            if stem not in found.project_of:
                found.epochs.append(stem)
                found.project_of[stem] = name
    return found


# ----- the X/Y/Z plot -----
def find_xyz_module(scripts_data=None):
    """The loaded X/Y/Z plot script module (it has `AxisOption` and `axis_options`), or None."""
    if scripts_data is None:
        try:
            from modules import scripts
        except ImportError:
            return None
        scripts_data = getattr(scripts, "scripts_data", [])
    for data in scripts_data:
        module = getattr(data, "module", None)
        script_class = getattr(data, "script_class", None)
        is_xyz = getattr(script_class, "__module__", None) == XYZ_SCRIPT or os.path.basename(str(getattr(data, "path", ""))) == XYZ_SCRIPT
        if is_xyz and module is not None and hasattr(module, "AxisOption") and hasattr(module, "axis_options"):
            return module
    return None


def make_apply_epoch():
    def apply_epoch(p, x, xs):
        try:
            edit_prompts(p, lambda prompt: set_epoch(prompt, str(x)))
        except ValueError as exc:
            raise RuntimeError(f"{EPOCH_LABEL}: {exc}.") from None

    return apply_epoch


def make_apply_weight(get_catalog: Callable[[], Catalog] | None = None):
    def apply_weight(p, x, xs):
        names = get_catalog().names if get_catalog else ()
        try:
            edit_prompts(p, lambda prompt: set_weight(prompt, float(x), names))
        except ValueError as exc:
            raise RuntimeError(
                f"{WEIGHT_LABEL}: {exc}. Write <lora:NAME:1> in the prompt, or put {EPOCH_LABEL} on an earlier axis (X is applied before Y before Z)."
            ) from None

    return apply_weight


def make_confirm_epoch(get_catalog: Callable[[], Catalog], before_check: Callable[[list[str], Catalog], None] | None = None):
    """Check the values before any image is made: real names, and (when the WebUI's Lora extension is
    loaded) names it knows, after `before_check` (e.g. copying them into the Lora folder) and a rescan."""

    def confirm_epoch(p, xs):
        values = [str(x).strip() for x in xs]
        bad = [v for v in values if not v or any(c in v for c in ":<>")]
        if bad:
            raise RuntimeError(f"{EPOCH_LABEL}: {', '.join(map(repr, bad))} is not a LoRA name.")
        if before_check is not None:
            before_check(values, get_catalog())
        missing = missing_in_webui(values)
        if missing:
            raise RuntimeError(
                f"{EPOCH_LABEL}: the WebUI has no LoRA named {', '.join(missing)}. Copy them into its Lora folder "
                "(the Test tab's 'Copy the epochs to the WebUI's Lora folder', or the setting that copies finished LoRAs), then try again."
            )

    return confirm_epoch


def missing_in_webui(names: list[str]) -> list[str]:
    """The names the WebUI's Lora extension (its `networks` module) does not know, after one rescan;
    [] when that extension is not loaded (nothing to check against)."""
    networks = sys.modules.get("networks")
    if networks is None or not isinstance(getattr(networks, "available_networks", None), dict):
        return []

    def unknown() -> list[str]:
        known = set(networks.available_networks) | set(getattr(networks, "available_network_aliases", None) or {})
        return [n for n in names if n not in known]

    missing = unknown()
    if missing and callable(getattr(networks, "list_available_networks", None)):
        try:
            networks.list_available_networks()
        except Exception:  # noqa: BLE001, S110 - a failed rescan must not hide the answer below
            pass
        missing = unknown()
    return missing


def add_axes(module, get_catalog: Callable[[], Catalog], before_check=None) -> list[str]:
    """Append the two axes to `module.axis_options` unless an axis of that label is there (Reload UI,
    or the script imported twice). Returns the labels added."""
    existing = {getattr(option, "label", None) for option in module.axis_options}
    added = []
    if EPOCH_LABEL not in existing:
        kwargs = {}
        if hasattr(module, "format_value"):  # the plain value: the legend shows NAME-01, not "LoRA epoch: NAME-01"
            kwargs["format_value"] = module.format_value
        module.axis_options.append(module.AxisOption(
            EPOCH_LABEL, str, make_apply_epoch(), confirm=make_confirm_epoch(get_catalog, before_check),
            choices=lambda: list(get_catalog().epochs), **kwargs,
        ))
        added.append(EPOCH_LABEL)
    if WEIGHT_LABEL not in existing:
        module.axis_options.append(module.AxisOption(WEIGHT_LABEL, float, make_apply_weight(get_catalog)))
        added.append(WEIGHT_LABEL)
    return added


def register_axes(get_catalog: Callable[[], Catalog], before_check=None, scripts_data=None) -> list[str] | None:
    """Find the X/Y/Z plot script and add the axes (the labels added, [] when both were there);
    None when the script is not loaded (yet)."""
    module = find_xyz_module(scripts_data)
    if module is None:
        return None
    return add_axes(module, get_catalog, before_check)
