"""The guide's testing half: compare saved epochs and weights on an X/Y grid.

- `compare_project(project, progress=..., **overrides)`: load the base model once, then render the same
  prompt with the same seeds (the same starting noise in every cell) for each chosen epoch file (X) and
  LoRA weight (Y), plus a "no LoRA" reference column; save one labelled grid PNG and a JSON record under
  `output/compare/`. This is what the `compare` command and the Test tab run (as a job).
- The WebUI way: `xyz_strings` gives the prompt and the X/Y/Z plot's "Prompt S/R" values
  (`-01, -02, ...` for epochs, `:0.5, :0.6, ...` for weights); `send_to_webui` renders the same grid in a
  running WebUI through its API (`webui_xyz_payload` builds the request).

LoRA files are applied with the same kohya-named lycoris network the trainer uses (`train.network`): one
code path for LoRA, LoCon, LoHa, LoKr, IA3 and DoRA, built once, loaded once per epoch, and set to each weight
with a multiplier (nothing is merged, so nothing has to be undone). The prompt is encoded like training does
(clip skip, 225-token prompts). No torch at import.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, List, Sequence

from pydantic import Field

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_path, atomic_write_text, unique_path
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.project import Project
from lora_gradio.engine.settings_model import SettingsBase, allowed, field_check, to_dict, validate

SECTION = "compare"
COMPARE_FOLDER = "compare"
DEFAULT_WEIGHTS = [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
DEFAULT_NEGATIVE = "lowres, worst quality, low quality, bad anatomy, bad hands, jpeg artifacts, signature, watermark, text"
WEIGHT_MIN, WEIGHT_MAX = -2.0, 3.0
MAX_IMAGES = 400  # cells x batch: more is almost certainly a typo (and hours of rendering)
WEBUI_SCRIPT = "x/y/z plot"
_EVERY = re.compile(r"^every\s*-?\s*(\d+)$")
_LAST = re.compile(r"^last\s*-?\s*(\d+)$")
_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


# Settings ----------------------------------------------------------------------------------------


def _epochs_text(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v).strip() for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def parse_epochs(which: str) -> "tuple[str, int] | list[int]":
    """'all' -> ('all', 0); 'every 2' -> ('every', 2); 'last 3' -> ('last', 3); '1, 3-5' -> [1, 3, 4, 5]."""
    text = str(which).strip().lower()
    if text in ("", "all"):
        return ("all", 0)
    for kind, pattern in (("every", _EVERY), ("last", _LAST)):
        match = pattern.match(text)
        if match:
            n = int(match.group(1))
            if n < 1:
                raise ValueError(f"'{kind} N' needs N of at least 1, e.g. '{kind} 2'")
            return (kind, n)
    epochs: list[int] = []
    for part in re.split(r"[,\s]+", text.replace(", ", ",")):
        if not part:
            continue
        match = _RANGE.match(part)
        if match:
            low, high = int(match.group(1)), int(match.group(2))
            if low > high:
                raise ValueError(f"the range {part} runs backwards: write it as {high}-{low}")
            epochs.extend(range(low, high + 1))
        elif part.isdigit():
            epochs.append(int(part))
        else:
            raise ValueError(f"{part!r} is not an epoch: use 'all', 'every 2', 'last 3', or epoch numbers like '1, 2, 5' or '2-6'")
    if not epochs:
        raise ValueError("no epochs given: use 'all', 'every 2', 'last 3', or epoch numbers like '1, 2, 5'")
    return list(dict.fromkeys(epochs))


def parse_weights(value: Any) -> list[float]:
    """'0.5, 0.7, 1' (or a list) -> [0.5, 0.7, 1.0]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            bad = next(p for p in parts if not _is_number(p))
            raise ValueError(f"{bad!r} is not a number: write the weights as numbers separated by commas, e.g. 0.5, 0.7, 1") from None
    return list(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class CompareSettings(SettingsBase):
    """How to compare the saved epochs; saved in the project's [compare] section."""

    prompt: str = Field("", description="What to draw. Empty: your activation tag plus the dataset's most common tags, as the guide suggests.")
    negative_prompt: str = Field(DEFAULT_NEGATIVE, description="What to avoid in every image.")
    epochs: str = Field(
        "all", **allowed("'all', 'every N', 'last N', or epoch numbers like '1, 2, 5' or '2-6'"),
        description="Which saved epochs to compare (the grid's columns): all, every 2, last 3, or a list like 1, 3, 5.",
    )
    weights: List[float] = Field(
        default_factory=lambda: list(DEFAULT_WEIGHTS), **allowed(f"numbers from {WEIGHT_MIN:g} to {WEIGHT_MAX:g}, e.g. 0.5, 0.7, 1"),
        description="LoRA weights to try (the grid's rows): a good LoRA works from about 0.6 to 1.",
    )
    include_base: bool = Field(True, description="Add a 'no LoRA' column: the base model with the same seed, to see what the LoRA changes.")
    seed: int = Field(42, ge=-1, le=2**32 - 1, description="Seed of the first image (-1: a random one); every cell uses the same seeds.")
    batch: int = Field(1, ge=1, le=8, description="Images per cell, side by side (seed, seed+1, ...).")
    steps: int = Field(20, ge=1, le=150, description="Sampling steps (Euler a, like the training samples).")
    cfg_scale: float = Field(7.0, ge=1.0, le=30.0, description="How closely to follow the prompt (CFG scale); 7 is usual.")
    width: int = Field(0, ge=0, le=2048, multiple_of=8, description="Image width; 0 = the training resolution.")
    height: int = Field(0, ge=0, le=2048, multiple_of=8, description="Image height; 0 = the training resolution.")
    save_cells: bool = Field(False, description="Also save every single image, in a folder beside the grid.")

    @field_check("epochs", before=True)
    def check_epochs(cls, value: Any) -> Any:
        value = _epochs_text(value)
        if isinstance(value, str):
            parse_epochs(value)  # raises ValueError with the fix
            return value.strip() or "all"
        return value

    @field_check("weights", before=True)
    def read_weights(cls, value: Any) -> Any:
        return parse_weights(value)

    @field_check("weights")
    def check_weights(cls, value: List[float]) -> List[float]:
        if not value:
            raise ValueError("give at least one weight, e.g. 0.5, 0.7, 1")
        for weight in value:
            if math.isnan(weight) or not WEIGHT_MIN <= weight <= WEIGHT_MAX:
                raise ValueError(f"the weight {weight:g} is out of range: use weights from {WEIGHT_MIN:g} to {WEIGHT_MAX:g} (a LoRA is usually tested from 0.5 to 1)")
        return list(dict.fromkeys(float(w) for w in value))

    @field_check("width", "height")
    def check_size(cls, value: int) -> int:
        if value and value < 64:
            raise ValueError("use 0 (the training resolution) or at least 64")
        return value


def load_compare_settings(project: Project) -> CompareSettings:
    return validate(CompareSettings, project.read_section(SECTION), where=f"In {project.settings_file} [{SECTION}]: ")


def save_compare_settings(project: Project, settings: CompareSettings) -> None:
    project.write_section(SECTION, to_dict(settings))


def resolve_settings(project: Project, overrides: "dict[str, Any] | None" = None) -> CompareSettings:
    """The project's [compare] settings with `overrides` (None values ignored), validated."""
    stored = project.read_section(SECTION)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    return validate(CompareSettings, {**stored, **given}, where="compare: ")


# Epochs and prompts ------------------------------------------------------------------------------


def _as_files(files: Iterable[Any]) -> list[tuple[int, Path]]:
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
    files = sorted(_as_files(files), key=lambda item: item[0])
    if not files:
        raise UserError("No saved epochs to compare: train first (Train tab, or `train NAME`).")
    try:
        choice = parse_epochs(_epochs_text(which) if not isinstance(which, str) else which)
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
            f"No saved epochs of {name} in {project.output_dir}: train first (Train tab, or `train {project.base}`); "
            "keep save_every_n_epochs at 1 or 2 to have several epochs to compare."
        )
    return files


# X/Y/Z plot strings (pure) -----------------------------------------------------------------------


def newest_grid(project: Project) -> "Path | None":
    """The grid rendered last in this project (here or by a WebUI), or None."""
    folder = project.output_dir / COMPARE_FOLDER
    if not folder.is_dir():
        return None
    grids = [p for p in folder.glob("*.png") if p.is_file()]
    return max(grids, key=lambda p: (p.stat().st_mtime, p.name)) if grids else None


def format_weight(weight: float) -> str:
    """0.5 -> '0.5', 1.0 -> '1', 0.75 -> '0.75' (what goes into `<lora:name:W>`)."""
    text = f"{float(weight):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def epoch_label(path: "Path | str") -> str:
    """'NAME-01.safetensors' -> '01' (the digits as written in the file name)."""
    match = re.search(r"-(\d+)$", Path(path).stem)
    return match.group(1) if match else Path(path).stem


def _stems(files: Iterable[Any]) -> list[str]:
    return [Path(p).stem for _, p in _as_files(files)]


def _csv(values: Sequence[str]) -> str:
    """Values joined for an X/Y/Z axis (csv read with skipinitialspace): quoted where a value holds a comma or a quote."""
    def quote(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if ("," in value or '"' in value) else value

    return ", ".join(quote(v) for v in values)


def epoch_sr_values(files: Sequence[Any], full_names: bool = False) -> str:
    """Prompt S/R values for the epochs: '-01, -02, ...' (the first one must be the epoch in the prompt).

    `full_names` gives 'NAME-01, NAME-02, ...' instead, for when '-01' also occurs elsewhere in the prompt.
    """
    stems = _stems(files)
    values = stems if full_names else [f"-{epoch_label(s)}" for s in stems]
    return _csv(values)


def weight_sr_values(weights: Sequence[float], closing: bool = False) -> str:
    """Prompt S/R values for the weights: ':0.5, :0.6, ...'; with `closing` ':0.5>, :0.6>, ...'
    (for a prompt that holds ':0.5' elsewhere, e.g. '(smile:0.5)')."""
    end = ">" if closing else ""
    return _csv([f":{format_weight(w)}{end}" for w in weights])


def example_prompt(name: str, epoch: "int | str", weight: float, prompt: str) -> str:
    """'<lora:NAME-01:0.5> prompt': the txt2img prompt whose LoRA tag the S/R values rewrite.

    `epoch` is a number (written with two digits) or the digits as in the file name ('001').
    """
    digits = f"{int(epoch):02d}" if isinstance(epoch, int) else str(epoch)
    tag = f"<lora:{name}-{digits}:{format_weight(weight)}>"
    return f"{tag} {prompt.strip()}".strip()


@dataclass
class XYZStrings:
    """What to type into the WebUI: the prompt, and the X (epochs) and Y (weights) Prompt S/R values."""

    prompt: str
    negative_prompt: str
    x_values: str
    y_values: str
    epochs: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([
            "In txt2img, Script: X/Y/Z plot.",
            f"Prompt: {self.prompt}",
            f"Negative prompt: {self.negative_prompt}",
            f"X type: Prompt S/R    X values: {self.x_values}",
            f"Y type: Prompt S/R    Y values: {self.y_values}",
            "(Copy the LoRA files into the WebUI's models/Lora folder first.)",
        ])


def xyz_strings(name: str, files: Sequence[Any], weights: Sequence[float], prompt: str, negative_prompt: str = "") -> XYZStrings:
    """The example prompt and S/R values, each first value occurring exactly once in that prompt.

    Prompt S/R replaces every occurrence (X first, then Y), so a value that also occurs in the
    rest of the prompt would change it too: then the longer, unambiguous forms are used.
    """
    files = _as_files(files)
    weights = list(weights)
    if not files or not weights:
        raise UserError("Pick at least one epoch and one weight for the X/Y/Z plot.")
    first = Path(files[0][1]).stem
    digits = first[len(name) + 1:] if first.startswith(name + "-") else epoch_label(first)
    text = example_prompt(name, digits, weights[0], prompt)
    x_values = epoch_sr_values(files)
    if text.count(f"-{epoch_label(first)}") != 1:
        x_values = epoch_sr_values(files, full_names=True)
    y_values = weight_sr_values(weights)
    if text.count(f":{format_weight(weights[0])}") != 1:
        y_values = weight_sr_values(weights, closing=True)
    return XYZStrings(text, negative_prompt, x_values, y_values, [Path(p).stem for _, p in files], weights)


def xyz_plan(project: Project, **overrides: Any) -> XYZStrings:
    """`xyz_strings` for the project's saved epochs and compare settings (nothing rendered)."""
    settings = resolve_settings(project, overrides)
    chosen = choose_epochs(saved_epochs(project), settings.epochs)
    prompt = _prompt_of(project, settings)
    return xyz_strings(output_name(project), chosen, settings.weights, prompt, settings.negative_prompt)


def _prompt_of(project: Project, settings: CompareSettings) -> str:
    prompt = settings.prompt.strip() or default_prompt(project)
    if not prompt:
        raise UserError("No prompt: the dataset has no captions to build one from; give a prompt (--prompt \"...\").")
    return prompt


# Rendering ---------------------------------------------------------------------------------------


@dataclass
class CompareResult:
    grid: str
    record: str
    cells: list[str] = field(default_factory=list)
    prompt: str = ""
    epochs: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"Compared {len(self.epochs)} epoch(s) x {len(self.weights)} weight(s) in {self.seconds:.0f} s: {self.grid}")


def _device_and_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def _lora_network(model: Any, path: Path, current: Any, device: Any, dtype: Any) -> Any:
    """A network that fits `path` (the one already built when it fits), loaded with its weights."""
    from safetensors.torch import load_file

    from lora_gradio.engine.train.network import create_network, describe_kohya_state_dict
    from lora_gradio.engine.train.saving import read_lora_metadata

    try:
        sd = load_file(str(path))
        metadata = read_lora_metadata(path)
    except Exception as exc:
        raise UserError(f"{path.name} cannot be read ({type(exc).__name__}): it may be cut off; train that epoch again or leave it out.") from None
    found = describe_kohya_state_dict(sd, metadata)
    if not found["network_dim"]:
        raise UserError(f"{path.name} does not say its LoRA size (no lora_down tensors and no ss_network_dim): it was not saved by kohya or this tool.")
    key = (found["lora_type"], found["network_dim"], found["network_alpha"], found["conv_dim"], found["conv_alpha"], found["has_text_encoder"])
    network = current[1] if current and current[0] == key else None
    if network is None:
        if current:
            current[1].restore()
        network = create_network(model.unet, model.text_encoder, found["lora_type"], found["network_dim"], found["network_alpha"] or found["network_dim"],
                                 found["conv_dim"] or 8, found["conv_alpha"] or 4, train_text_encoder=found["has_text_encoder"])
        network.to(device, dtype=dtype)
        network.eval()
        network.requires_grad_(False)
    try:
        network.load_kohya_state_dict(sd, metadata)
    except UserError:
        raise UserError(
            f"{path.name} has a layout this tool cannot load (not one dim for every layer, as this tool and the guide's "
            "notebook save them): test it in the WebUI instead (compare --xyz prints what to type there)."
        ) from None
    network.apply_to()
    return key, network


class _Renderer:
    """Euler a over the base model; the same starting noise and sampler noise for every cell."""

    def __init__(self, model: Any, settings: CompareSettings, width: int, height: int, seeds: list[int], clip_skip: int, max_token_length: int, device: Any):
        import torch
        from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

        self.model, self.settings, self.device = model, settings, device
        self.width, self.height, self.seeds = width, height, seeds
        self.clip_skip, self.max_token_length = clip_skip, max_token_length
        scheduler = EulerAncestralDiscreteScheduler.from_config(model.noise_scheduler.config)
        self.pipe = StableDiffusionPipeline(
            unet=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        self.pipe.set_progress_bar_config(disable=True)
        factor = self.pipe.vae_scale_factor
        shape = (1, model.unet.config.in_channels, height // factor, width // factor)
        self.noise = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32) for s in seeds])

    def render(self, prompt: str, negative: str) -> list:
        import torch

        from lora_gradio.engine.train.prompts import encode_prompts

        model = self.model
        generators = [torch.Generator("cpu").manual_seed(s + 1_000_003) for s in self.seeds]
        with torch.no_grad():
            embeds = encode_prompts(model.tokenizer, model.text_encoder, [prompt, negative], self.max_token_length, self.clip_skip, device=self.device)
            embeds = embeds.to(model.unet.dtype)
            latents = self.pipe(
                prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], width=self.width, height=self.height,
                num_inference_steps=self.settings.steps, guidance_scale=self.settings.cfg_scale, generator=generators,
                latents=self.noise.to(self.device, model.unet.dtype), num_images_per_prompt=len(self.seeds), output_type="latent",
            ).images
            # The VAE decodes in its own dtype (fp32), as the training samples do.
            decoded = model.vae.decode(latents.to(model.vae.dtype) / model.vae.config.scaling_factor).sample
            return self.pipe.image_processor.postprocess(decoded, output_type="pil")


def _plan(project: Project, overrides: "dict[str, Any] | None"):
    """(compare settings, training settings, LoRA name, chosen epoch files): what both ways of comparing start from."""
    from lora_gradio.engine.train.config import load_settings, resolved_output_name

    settings = resolve_settings(project, overrides)
    train = load_settings(project)
    return settings, train, resolved_output_name(train, project), choose_epochs(saved_epochs(project), settings.epochs)


def compare_project(project: Project, progress: "Progress | None" = None, **overrides: Any) -> CompareResult:
    """Render the epoch x weight grid (see the module doc) and return where it was saved.

    `overrides` are `CompareSettings` keys (e.g. epochs="1, 3", weights=[0.5, 1], seed=7); the settings
    used are saved in the project's [compare] section. Cancellable between cells.
    """
    progress = progress or Progress()
    started = time.monotonic()
    settings, train, name, chosen = _plan(project, overrides)
    prompt = _prompt_of(project, settings)
    cells_total = len(chosen) * len(settings.weights) + (1 if settings.include_base else 0)
    if cells_total * settings.batch > MAX_IMAGES:
        raise UserError(f"That is {cells_total * settings.batch} images: pick fewer epochs or weights (at most {MAX_IMAGES} images per grid, e.g. epochs 'every 2').")
    width = settings.width or train.resolution
    height = settings.height or train.resolution
    first_seed = settings.seed if settings.seed >= 0 else int.from_bytes(os.urandom(4), "little")
    seeds = [(first_seed + i) % 2**32 for i in range(settings.batch)]
    save_compare_settings(project, settings)

    import torch

    from lora_gradio.engine.progress import quiet_ml_libraries
    from lora_gradio.engine.train.models import load_base_model, resolve_source

    quiet_ml_libraries()
    progress.update(0, cells_total, "loading the base model")
    source = resolve_source(train.training_model, project.root / "_models", progress)
    model = load_base_model(source)
    device, dtype = _device_and_dtype()
    for part in (model.unet, model.text_encoder, model.vae):
        part.requires_grad_(False)
        part.eval()
    model.unet.to(device, dtype=dtype)
    model.text_encoder.to(device, dtype=dtype)
    model.vae.to(device, dtype=torch.float32)
    renderer = _Renderer(model, settings, width, height, seeds, train.clip_skip, train.max_token_length, device)
    progress.log(f"comparing {len(chosen)} epoch(s) x {len(settings.weights)} weight(s) at {width}x{height}, {settings.steps} steps, seed {first_seed}; prompt: {prompt}")

    done = 0
    base_images = None
    if settings.include_base:
        progress.check_cancel()
        base_images = renderer.render(prompt, settings.negative_prompt)
        done += 1
        progress.update(done, cells_total, "no LoRA")
    columns: list[list[list]] = []  # [epoch][weight] -> images
    current = None
    try:
        for epoch, path in chosen:
            progress.check_cancel()
            current = _lora_network(model, path, current, device, dtype)
            network = current[1]
            column = []
            for weight in settings.weights:
                progress.check_cancel()
                network.set_multiplier(weight)
                column.append(renderer.render(prompt, settings.negative_prompt))
                done += 1
                progress.update(done, cells_total, f"{path.stem} at {format_weight(weight)}")
            columns.append(column)
    finally:
        if current:
            current[1].restore()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = project.output_dir / COMPARE_FOLDER
    grid_path = unique_path(folder / f"{name}-grid-{stamp}.png")
    labels = [path.stem for _, path in chosen]
    grid = build_grid(columns, labels, settings.weights, base_images)
    record = {
        "prompt": prompt, "negative_prompt": settings.negative_prompt, "seeds": seeds, "epochs": labels,
        "epoch_files": [project.relative(p) for _, p in chosen], "weights": settings.weights,
        "include_base": settings.include_base, "steps": settings.steps, "cfg_scale": settings.cfg_scale,
        "sampler": "Euler a", "width": width, "height": height, "clip_skip": train.clip_skip,
        "base_model": source.name, "grid": grid_path.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    cell_paths: list[str] = []
    if settings.save_cells:
        cell_dir = grid_path.with_suffix("")
        for label, column in zip(labels, columns):
            for weight, images in zip(settings.weights, column):
                for seed, image in zip(seeds, images):
                    cell_paths.append(str(_save_png(image, cell_dir / f"{label}-w{format_weight(weight)}-{seed}.png")))
        if base_images:
            for seed, image in zip(seeds, base_images):
                cell_paths.append(str(_save_png(image, cell_dir / f"base-{seed}.png")))
        record["cells"] = [Path(p).name for p in cell_paths]
    _save_png(grid, grid_path, text={"parameters": json.dumps(record)})
    record_path = grid_path.with_suffix(".json")
    atomic_write_text(record_path, json.dumps(record, indent=1))
    progress.log(f"saved {grid_path}")
    return CompareResult(str(grid_path), str(record_path), cell_paths, prompt, labels, settings.weights, seeds, time.monotonic() - started)


def _save_png(image: Any, target: Path, text: "dict[str, str] | None" = None) -> Path:
    from PIL import PngImagePlugin

    info = None
    if text:
        info = PngImagePlugin.PngInfo()
        for key, value in text.items():
            info.add_text(key, value)
    with atomic_path(target) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return target


# The grid ----------------------------------------------------------------------------------------


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one small bitmap font
        return ImageFont.load_default()


def _text_size(draw: Any, text: str, font: Any) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _fitting_font(draw: Any, texts: Sequence[str], size: int, max_width: int):
    while size > 8:
        font = _font(size)
        if all(_text_size(draw, t, font)[0] <= max_width for t in texts):
            return font, size
        size -= 1
    return _font(8), 8


def build_grid(columns: Sequence[Sequence[Sequence[Any]]], epoch_labels: Sequence[str], weights: Sequence[float], base: "Sequence[Any] | None" = None):
    """One image: a label strip with the epoch names along the top, the weights down the left side,
    then a cell per epoch (column) and weight (row), each holding its images side by side.
    With `base`, a first 'no LoRA' column repeats those images in every row."""
    from PIL import Image, ImageDraw

    first = (base or columns[0][0])[0]
    image_w, image_h = first.size
    per_cell = len(base or columns[0][0])
    cell_w, cell_h = image_w * per_cell, image_h
    headers = (["no LoRA"] if base is not None else []) + list(epoch_labels)
    row_labels = [f"weight {format_weight(w)}" for w in weights]
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wanted = max(12, min(40, round(min(cell_w, cell_h) / 12)))
    top_font, top_size = _fitting_font(scratch, headers, wanted, cell_w - 4)
    side_font = _font(wanted)
    side_w = max(_text_size(scratch, t, side_font)[0] for t in row_labels) + wanted
    top_h = top_size * 2
    n_cols = len(headers)
    grid = Image.new("RGB", (side_w + n_cols * cell_w, top_h + len(weights) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for col, text in enumerate(headers):
        tw, th = _text_size(draw, text, top_font)
        draw.text((side_w + col * cell_w + (cell_w - tw) // 2, (top_h - th) // 2), text, fill="black", font=top_font)
    for row, text in enumerate(row_labels):
        tw, th = _text_size(draw, text, side_font)
        draw.text(((side_w - tw) // 2, top_h + row * cell_h + (cell_h - th) // 2), text, fill="black", font=side_font)
    all_columns = ([[list(base)] * len(weights)] if base is not None else []) + [list(c) for c in columns]
    for col, column in enumerate(all_columns):
        for row, images in enumerate(column):
            for i, image in enumerate(images):
                grid.paste(image.convert("RGB"), (side_w + col * cell_w + i * image_w, top_h + row * cell_h))
    return grid


def grid_layout(grid_size: tuple[int, int], image_size: tuple[int, int], n_columns: int, n_rows: int, batch: int = 1) -> dict[str, int]:
    """Where the cells of a grid made by `build_grid` are: {'left', 'top', 'cell_w', 'cell_h'} (for tests and the UI)."""
    cell_w, cell_h = image_size[0] * batch, image_size[1]
    return {"left": grid_size[0] - n_columns * cell_w, "top": grid_size[1] - n_rows * cell_h, "cell_w": cell_w, "cell_h": cell_h}


# The WebUI's X/Y/Z plot through its API ----------------------------------------------------------


def _choice_label(choice: Any) -> str:
    if isinstance(choice, (list, tuple)) and choice:
        return str(choice[0])  # Gradio 4 (Forge): [label, value]
    return str(choice)


def xyz_script_args(script_info: Any, is_img2img: bool = False) -> tuple[int, list[Any]]:
    """(index of the 'Prompt S/R' axis, the script's default args) from `/sdapi/v1/script-info`.

    The axis list differs between A1111 (7) and Forge (8), so the index is looked up, never assumed.
    """
    scripts = script_info if isinstance(script_info, list) else []
    for script in scripts:
        if str(script.get("name", "")).lower() == WEBUI_SCRIPT and bool(script.get("is_img2img")) == is_img2img:
            args = script.get("args") or []
            defaults = [arg.get("value") for arg in args]
            choices = (args[0].get("choices") if args else None) or []
            labels = [_choice_label(c) for c in choices]
            if "Prompt S/R" in labels:
                return labels.index("Prompt S/R"), defaults
            raise UserError("The WebUI's X/Y/Z plot has no 'Prompt S/R' axis in its script info: update the WebUI, or use the X/Y/Z strings by hand.")
    raise UserError("The WebUI does not list the X/Y/Z plot script (/sdapi/v1/script-info): is it an AUTOMATIC1111 or Forge WebUI started with --api?")


def webui_xyz_payload(prompt: str, negative_prompt: str, x_values: str, y_values: str, *, axis_index: int,
                      seed: int = 42, steps: int = 20, cfg_scale: float = 7.0, width: int = 512, height: int = 512,
                      batch: int = 1, sampler: str = "Euler a", clip_skip: "int | None" = None,
                      defaults: "Sequence[Any] | None" = None) -> dict[str, Any]:
    """The `/sdapi/v1/txt2img` body that renders an X/Y grid with the X/Y/Z plot script, both axes Prompt S/R.

    script_args (A1111 1.10 and Forge): [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown,
    z_type, z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode] and, on newer versions, more (draw_grid):
    those keep the script's defaults from `defaults` (script-info), so the list is always complete.
    """
    ours = [axis_index, x_values, [], axis_index, y_values, [], 0, "", [], True, False, False, False, False, False, False, 0, False]
    extra = list(defaults[len(ours):]) if defaults and len(defaults) > len(ours) else []
    payload: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": negative_prompt, "seed": int(seed), "steps": int(steps), "cfg_scale": float(cfg_scale),
        "width": int(width), "height": int(height), "batch_size": int(batch), "n_iter": 1, "sampler_name": sampler,
        "script_name": WEBUI_SCRIPT, "script_args": ours + extra, "send_images": True, "save_images": False,
    }
    if clip_skip:
        payload["override_settings"] = {"CLIP_stop_at_last_layers": int(clip_skip)}
    return payload


@dataclass
class WebuiResult:
    grid: str
    record: str
    prompt: str
    x_values: str
    y_values: str
    seconds: float = 0.0

    def summary(self) -> str:
        return f"The WebUI rendered the grid in {self.seconds:.0f} s: {self.grid}"


def send_to_webui(url: str, project: Project, progress: "Progress | None" = None, auth: "tuple[str, str] | None" = None,
                  timeout_s: float = 3600, **overrides: Any) -> WebuiResult:
    """Render the comparison in a running WebUI (started with --api): check that it has the epoch files,
    find the Prompt S/R axis, run txt2img with the X/Y/Z plot, save the grid it returns under output/compare/.

    Cancelling interrupts the WebUI's generation.
    """
    import base64
    import threading

    import requests

    progress = progress or Progress()
    started = time.monotonic()
    settings, train, name, chosen = _plan(project, overrides)
    strings = xyz_strings(name, chosen, settings.weights, _prompt_of(project, settings), settings.negative_prompt)
    base = url.rstrip("/")
    session = requests.Session()
    if auth:
        session.auth = tuple(auth)

    def call(method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = session.request(method, base + path, timeout=kwargs.pop("timeout", 30), **kwargs)
        except requests.RequestException as exc:
            raise UserError(f"Cannot reach the WebUI at {base} ({type(exc).__name__}): start it with --api and check the address.") from None
        if response.status_code in (401, 403):
            raise UserError(f"The WebUI at {base} refused the request (HTTP {response.status_code}): give its --api-auth user and password.")
        if response.status_code == 404:
            raise UserError(f"The WebUI at {base} has no {path} (HTTP 404): start it with the --api flag.")
        if response.status_code >= 400:
            detail = response.text[:200].replace("\n", " ")
            raise UserError(f"The WebUI answered HTTP {response.status_code} to {path}: {detail}")
        try:
            return response.json()
        except ValueError:
            raise UserError(f"The WebUI at {base} did not answer {path} with JSON: is this address a WebUI?") from None

    progress.update(0, None, "asking the WebUI")
    wanted = {Path(p).stem for _, p in chosen}

    def missing() -> set[str]:
        listed = call("GET", "/sdapi/v1/loras")
        names = {str(item.get("name", "")) for item in listed} if isinstance(listed, list) else set()
        return wanted - names

    if missing():
        call("POST", "/sdapi/v1/refresh-loras")
        absent = missing()
        if absent:
            raise UserError(f"The WebUI has no {', '.join(sorted(absent))}: copy the files from {project.output_dir} into the WebUI's models/Lora folder, then try again.")
    axis, defaults = xyz_script_args(call("GET", "/sdapi/v1/script-info"))
    payload = webui_xyz_payload(
        strings.prompt, strings.negative_prompt, strings.x_values, strings.y_values, axis_index=axis,
        seed=settings.seed, steps=settings.steps, cfg_scale=settings.cfg_scale, width=settings.width or train.resolution,
        height=settings.height or train.resolution, batch=settings.batch, clip_skip=train.clip_skip, defaults=defaults,
    )
    answer: dict[str, Any] = {}

    def post() -> None:
        try:
            answer["data"] = call("POST", "/sdapi/v1/txt2img", json=payload, timeout=(10, timeout_s))
        except BaseException as exc:  # handed to the waiting thread
            answer["error"] = exc

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    total = len(chosen) * len(settings.weights)
    while worker.is_alive():
        worker.join(1.0)
        if progress.cancelled():
            try:
                session.post(base + "/sdapi/v1/interrupt", timeout=10)
            except requests.RequestException:
                pass
            progress.check_cancel()
        if worker.is_alive():
            try:
                state = session.get(base + "/sdapi/v1/progress?skip_current_image=true", timeout=5).json()
                progress.update(int(float(state.get("progress") or 0) * total), total, "rendering in the WebUI")
            except (requests.RequestException, ValueError, AttributeError, TypeError):
                pass
    if "error" in answer:
        raise answer["error"]
    data = answer.get("data") or {}
    images = data.get("images") if isinstance(data, dict) else None
    if not images:
        raise UserError("The WebUI returned no image: see its console for the X/Y/Z plot's error (e.g. a Prompt S/R value not found in the prompt).")
    raw = images[0].split(",", 1)[-1] if images[0].startswith("data:") else images[0]
    try:
        png = base64.b64decode(raw)
    except ValueError:
        raise UserError("The WebUI's answer holds no readable image.") from None
    folder = project.output_dir / COMPARE_FOLDER
    grid_path = unique_path(folder / f"{name}-webui-grid-{time.strftime('%Y%m%d-%H%M%S')}.png")
    from lora_gradio.engine.fsutil import atomic_write_bytes

    atomic_write_bytes(grid_path, png)
    info = data.get("info")
    try:
        info = json.loads(info) if isinstance(info, str) else info
    except ValueError:
        pass
    record = {"webui": base, "prompt": strings.prompt, "negative_prompt": strings.negative_prompt, "x_values": strings.x_values,
              "y_values": strings.y_values, "epochs": strings.epochs, "weights": settings.weights, "seed": settings.seed,
              "grid": grid_path.name, "info": info}
    record_path = grid_path.with_suffix(".json")
    atomic_write_text(record_path, json.dumps(record, indent=1, default=str))
    progress.update(total, total, "done")
    return WebuiResult(str(grid_path), str(record_path), strings.prompt, strings.x_values, strings.y_values, time.monotonic() - started)


def send_to_webui_job(project: Project, url: str, progress: "Progress | None" = None, **overrides: Any) -> WebuiResult:
    """`send_to_webui` with the project first, as `jobs.start_job` calls engine functions."""
    return send_to_webui(url, project, progress=progress, **overrides)
