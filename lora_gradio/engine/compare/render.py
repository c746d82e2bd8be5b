"""Rendering the epoch x weight grid with diffusers.

`compare_project(project, progress=..., **overrides)`: load the base model once, then render the same
prompt with the same seeds (the same starting noise in every cell) for each chosen epoch file (X) and
LoRA weight (Y), plus a "no LoRA" reference column; save one labelled grid PNG and a JSON record under
`output/compare/`. This is what the `compare` command and the Test tab run (as a job).

LoRA files are applied with the same kohya-named lycoris network the trainer uses (`train.network`): one
code path for LoRA, LoCon, LoHa, LoKr, IA3 and DoRA, built once, loaded once per epoch, and set to each weight
with a multiplier (nothing is merged, so nothing has to be undone). The prompt is encoded like training does
(clip skip, 225-token prompts). No torch at import.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_gradio.engine.compare.epochs import plan, prompt_of
from lora_gradio.engine.compare.grid import build_grid
from lora_gradio.engine.compare.settings import COMPARE_FOLDER, CompareSettings, save_compare_settings
from lora_gradio.engine.compare.xyz import format_weight
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_path, atomic_write_text, unique_path
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.project import Project

MAX_IMAGES = 400  # cells x batch: more is almost certainly a typo (and hours of rendering)


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

    from lora_gradio.engine.train.network import create_network, describe_kohya_state_dict, lora_family
    from lora_gradio.engine.train.saving import read_lora_metadata

    try:
        sd = load_file(str(path))
        metadata = read_lora_metadata(path)
    except Exception as exc:
        raise UserError(f"{path.name} cannot be read ({type(exc).__name__}): it may be cut off; train that epoch again or leave it out.") from None
    found = describe_kohya_state_dict(sd, metadata)
    made_for = lora_family(sd, metadata)
    if made_for and made_for != model.family.key:
        raise UserError(f"{path.name} is a LoRA for another model family than the base model ({model.family.label}): "
                        "compare it on the base model it was trained on (the Train tab's training_model).")
    if not found["network_dim"]:
        raise UserError(f"{path.name} does not say its LoRA size (no lora_down tensors and no ss_network_dim): it was not saved by kohya or this tool.")
    key = (found["lora_type"], found["network_dim"], found["network_alpha"], found["conv_dim"], found["conv_alpha"], found["has_text_encoder"])
    network = current[1] if current and current[0] == key else None
    if network is None:
        if current:
            current[1].restore()
        network = create_network(model.unet, model.family.network_text_encoders(model), found["lora_type"], found["network_dim"],
                                 found["network_alpha"] or found["network_dim"], found["conv_dim"] or 8, found["conv_alpha"] or 4,
                                 train_text_encoder=found["has_text_encoder"], unet_name=model.family.lora_unet_name(model))
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

        from lora_gradio.engine.train.sampling import sampling_pipeline

        self.model, self.settings, self.device = model, settings, device
        self.width, self.height, self.seeds = width, height, seeds
        self.clip_skip, self.max_token_length = clip_skip, max_token_length
        self.pipe = sampling_pipeline(model)
        factor = self.pipe.vae_scale_factor
        shape = (1, model.unet.config.in_channels, height // factor, width // factor)
        self.noise = torch.cat([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=torch.float32) for s in seeds])

    def render(self, prompt: str, negative: str) -> list:
        import torch

        from lora_gradio.engine.train.sampling import generate

        generators = [torch.Generator("cpu").manual_seed(s + 1_000_003) for s in self.seeds]
        return generate(
            self.model, self.pipe, prompt, negative, self.max_token_length, self.clip_skip, self.device,
            width=self.width, height=self.height, num_inference_steps=self.settings.steps, guidance_scale=self.settings.cfg_scale,
            generator=generators, latents=self.noise.to(self.device, self.model.unet.dtype), num_images_per_prompt=len(self.seeds),
        )


def compare_project(project: Project, progress: "Progress | None" = None, **overrides: Any) -> CompareResult:
    """Render the epoch x weight grid (see the module doc) and return where it was saved.

    `overrides` are `CompareSettings` keys (e.g. epochs="1, 3", weights=[0.5, 1], seed=7); the settings
    used are saved in the project's [compare] section. Cancellable between cells.
    """
    progress = progress or Progress()
    started = time.monotonic()
    settings, train, name, chosen = plan(project, overrides)
    prompt = prompt_of(project, settings)
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
    model = load_base_model(source, v_pred=train.v_pred, zero_terminal_snr=train.zero_terminal_snr)
    device, dtype = _device_and_dtype()
    for part in (model.unet, model.vae, *model.text_encoders):
        part.requires_grad_(False)
        part.eval()
    model.unet.to(device, dtype=dtype)
    for encoder in model.text_encoders:
        encoder.to(device, dtype=dtype)
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
