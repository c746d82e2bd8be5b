"""Everything a GPU can tell us about lora_gradio, in one command that finishes in under 8 minutes.

    python benchmarks/prepare_gpu_wheels.py                         # here: the wheels a bare GPU machine lacks
    python benchmarks/gpu_suite.py --wheels benchmarks/gpu_wheels --out OUT   # on the GPU machine (one H100/H200)
    python benchmarks/gpu_suite.py --smoke --out OUT                # the same code on a CPU, tiny models (CI)
    python benchmarks/gpu_suite.py --parts train_sd15_bf16,tagging --out OUT  # some parts only

It needs no download: the models are built here from the configs the package ships, with random weights
(real-size SD 1.5 and SDXL; `--smoke`: the tests' tiny models of the same classes), the dataset is
generated, and packages the machine lacks (diffusers, lycoris-lora, bitsandbytes, pydantic, ...) come from
`--wheels` (made by prepare_gpu_wheels.py), installed into a folder of their own, never from the network.
A part whose package is missing is skipped with a note that says which one.

Each part runs in a process of its own, with a time budget (all of them inside `--budget`, 480 s by
default); a part that would overrun is skipped with a note, and one that still runs at its limit is
stopped, keeping the rows it had measured. The parts, in the order they run:

  probe              the machine: GPU, memory, bf16, torch/CUDA, which packages import
  train_sd15_bf16    SD 1.5 training steps at 512 px, batch 2 (the guide's) and 8, AdamW8bit (when carried)
  train_sd15_fp16      and AdamW: samples/s, s/step, peak allocated and reserved memory, MFU from the
                     counted FLOPs, and memory.py's estimate against the measured peak (train_speed's step)
  train_project      a short real run through train_project on a real-size SD 1.5 written here: latent
                     caching, fp16 training with the GradScaler, saving, sample images, an interrupted run
                     and its resume
  train_sdxl_bf16    SDXL training steps at 1024 px, batch 1 and 4, the same figures; then batch 4 with
  train_sdxl_fp16      gradient checkpointing (the XL notebook's defaults)
  compare            compare_project's epoch x weight grid at 512 px, 20 steps: cells/s
  tagging            bare ONNX vs end to end (tag_speed.measure), on the GPU if onnxruntime has CUDA there

Writes OUT/gpu_suite.json (every figure), OUT/summary.md (tables) and OUT/gpu_suite.log (each part's
output), and prints the summary. `--smoke` runs every part's code on the CPU in a minute or two: its
figures are not measurements of anything, it only keeps the suite from rotting before a GPU comes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lora_gradio.engine.progress import Progress  # noqa: E402  (plain Python: no torch, no pydantic)

GiB = 2**30
DEFAULT_BUDGET_S = 480.0
SMOKE_BUDGET_S = 420.0
WRITE_RESERVE_S = 5.0  # kept back from the budget for writing the results
CARRY_HINT = "carry it: python benchmarks/prepare_gpu_wheels.py here, then --wheels benchmarks/gpu_wheels there"
# Never reach the network: the hub's clients fail at once instead of waiting for a connection.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DISABLE_TELEMETRY": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
# Import name -> distribution name, for the packages the parts need.
PACKAGES = {
    "torch": "torch", "transformers": "transformers", "accelerate": "accelerate", "safetensors": "safetensors", "peft": "peft",
    "diffusers": "diffusers", "lycoris": "lycoris-lora", "bitsandbytes": "bitsandbytes", "pydantic": "pydantic", "tomli_w": "tomli-w",
    "PIL": "pillow", "numpy": "numpy", "onnx": "onnx", "onnxruntime": "onnxruntime",
}
TRAINING_NEEDS = ("torch", "transformers", "accelerate", "safetensors", "diffusers", "lycoris", "pydantic")


@dataclass
class Part:
    name: str
    title: str
    budget_s: float  # on a GPU
    smoke_budget_s: float
    needs: tuple = ()  # import names
    min_s: float = 20.0  # less time left than this: skipped
    run: "Callable[[dict, 'Result'], None] | None" = None


class SkipPart(Exception):
    """The part cannot run here; the message says why and what would make it run."""


# Results ------------------------------------------------------------------------------------------


@dataclass
class Result:
    """What a part reports: rows (one per measured set-up), metrics, checks and notes. A child process
    writes it after every row, so a part stopped at its time limit keeps what it had measured."""

    path: "Path | None" = None
    status: str = "measured"  # measured | skipped | failed | timed out
    reason: str = ""
    rows: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "rows": self.rows, "metrics": self.metrics, "checks": self.checks, "notes": self.notes}

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.as_dict(), indent=1, default=str))
            os.replace(tmp, self.path)

    def add_row(self, row: dict) -> None:
        self.rows.append(row)
        self.save()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.save()


def _round(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    return value


def _sig(value: Any, digits: int = 4) -> Any:
    """`value` to `digits` significant digits (tiny CPU figures stay above zero)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else None
    return value


# Child process: the parts ------------------------------------------------------------------------


def _deadline_left(config: dict) -> float:
    return config["deadline"] - time.time()


def _quiet() -> None:
    from benchmarks.memory_estimate import quiet

    quiet()


def part_probe(config: dict, out: Result) -> None:
    """The machine and which packages import (the parent skips the parts whose packages are missing)."""
    import importlib
    import platform

    packages = {}
    for module, dist in PACKAGES.items():
        try:
            imported = importlib.import_module(module)
            version = getattr(imported, "__version__", None)
            if version is None:
                from importlib.metadata import version as dist_version

                version = dist_version(dist)
            packages[module] = {"ok": True, "version": str(version), "from": str(Path(getattr(imported, "__file__", "") or "").parent)}
        except BaseException as exc:  # noqa: BLE001 - an import can fail in any way (a missing CUDA library too)
            packages[module] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}
    out.metrics["packages"] = packages
    out.metrics["python"] = platform.python_version()
    out.metrics["cpus"] = os.cpu_count()
    if not packages["torch"]["ok"]:
        raise SkipPart("torch does not import: " + packages["torch"]["error"])
    import torch

    from benchmarks.train_speed import peak_tflops

    gpu: dict[str, Any] = {"cuda": torch.cuda.is_available(), "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        gpu.update(name=torch.cuda.get_device_name(), capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   total_gib=round(total / GiB, 2), free_gib=round(free / GiB, 2), bf16=torch.cuda.is_bf16_supported(),
                   peak_tflops=peak_tflops(torch.cuda.get_device_name()), count=torch.cuda.device_count())
    if packages["onnxruntime"]["ok"]:
        import onnxruntime

        gpu["onnxruntime_providers"] = onnxruntime.get_available_providers()
    if packages["bitsandbytes"]["ok"] and torch.cuda.is_available():
        try:  # the 8-bit optimizer's kernels load for this GPU's CUDA
            import bitsandbytes as bnb

            p = torch.nn.Parameter(torch.ones(4096, device="cuda"))
            p.grad = torch.ones_like(p)
            bnb.optim.AdamW8bit([p]).step()
            torch.cuda.synchronize()
            gpu["adamw8bit"] = "works"
        except Exception as exc:  # noqa: BLE001
            gpu["adamw8bit"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    out.metrics["gpu"] = gpu


# Training steps (train_speed's step) and the memory estimate -----------------------------------------

# family -> (resolution, [(batch, optimizer, gradient checkpointing)], warm-up steps, timed steps), on a GPU / --smoke.
# The step that counts the FLOPs (the first of each batch size) is a warm-up step too. --smoke keeps one
# measured set-up per part (the CPU's steps take seconds), the GPU's takes the whole grid.
TRAIN_PLANS = {
    "sd": {
        False: (512, [(2, "AdamW8bit", False), (2, "AdamW", False), (8, "AdamW8bit", False), (8, "AdamW", False)], 3, 10),
        True: (256, [(1, "AdamW8bit", False), (1, "AdamW", False)], 0, 1),
    },
    "sdxl": {
        False: (1024, [(1, "AdamW8bit", False), (1, "AdamW", False), (4, "AdamW8bit", False), (4, "AdamW", False), (4, "AdamW8bit", True)], 2, 6),
        True: (256, [(1, "AdamW", True)], 0, 1),
    },
}
FIRST_POINT_S = {"sd": 25.0, "sdxl": 45.0}  # time a first set-up needs on a GPU (model build and FLOP count included)


def _train_part(family: str, precision: str) -> Callable[[dict, Result], None]:
    def run(config: dict, out: Result) -> None:
        train_steps(config, out, family, precision)

    return run


def train_steps(config: dict, out: Result, family: str, precision: str) -> None:
    """Training steps of `family` in mixed `precision` over the plan's set-ups (one model, one network)."""
    import torch

    smoke = config["smoke"]
    on_cuda = torch.cuda.is_available() and not smoke
    if not smoke and not on_cuda:
        raise SkipPart("no CUDA GPU here (--smoke runs this code on a CPU)")
    if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported():
        raise SkipPart(f"{torch.cuda.get_device_name()} has no bf16")
    _quiet()
    from benchmarks.memory_estimate import _bytes_of, _Gpu, _state_tensors, _storage_keys, model_storages
    from benchmarks.train_speed import BenchmarkStep, benchmark_settings, build_random_model, peak_tflops
    from lora_gradio.engine.errors import UserError
    from lora_gradio.engine.train import memory

    gpu = _Gpu(smoke=not on_cuda)
    resolution, points, warmup, steps = TRAIN_PLANS[family][smoke]
    version = "sdxl" if family == "sdxl" else "sd_v1"
    started = time.monotonic()
    torch.manual_seed(0)
    model, tokenizer_name = build_random_model(family, device=gpu.device, tiny=smoke)
    device_name = gpu.name()
    peak = peak_tflops(device_name) if on_cuda else None
    out.metrics.update(device=device_name, precision=precision, resolution=resolution, tokenizer=tokenizer_name,
                       model=("tiny test model (smoke)" if smoke else f"real-size {family.upper()}, random weights"),
                       build_seconds=_round(time.monotonic() - started, 2), peak_tflops=peak, warmup_steps=warmup, timed_steps=steps)
    if smoke:
        out.note("smoke: tiny model on the CPU; its figures measure nothing, and the memory estimate is the real model's")
    bnb_ok = config.get("packages", {}).get("bitsandbytes", {}).get("ok", False)
    adamw8bit = config.get("adamw8bit", "works")  # the probe's one AdamW8bit step on this GPU
    network = None
    flops: dict[tuple, int] = {}
    seconds_per_sample = None
    for batch, optimizer_name, checkpointing in points:
        row: dict[str, Any] = {"family": family, "resolution": resolution, "batch": batch, "precision": precision, "optimizer": optimizer_name,
                               "gradient_checkpointing": checkpointing}
        if optimizer_name == "AdamW8bit" and not on_cuda:
            out.add_row(dict(row, status="skipped", reason="AdamW8bit (bitsandbytes) needs a CUDA GPU; the CPU trains with AdamW"))
            continue
        if optimizer_name == "AdamW8bit" and not bnb_ok:
            out.add_row(dict(row, status="skipped", reason=f"bitsandbytes is not installed ({CARRY_HINT})"))
            continue
        if optimizer_name == "AdamW8bit" and adamw8bit != "works":
            out.add_row(dict(row, status="skipped", reason=f"bitsandbytes' AdamW8bit failed its first step on this GPU: {adamw8bit}"))
            continue
        need = FIRST_POINT_S[family] if on_cuda else 5.0
        if seconds_per_sample is not None:
            need = max(5.0, seconds_per_sample * batch * (warmup + steps + 2) * 1.3 + 3.0)
        if _deadline_left(config) < need:
            out.add_row(dict(row, status="skipped", reason=f"not enough time left in the part's budget ({_deadline_left(config):.0f} s, needs ~{need:.0f} s)"))
            continue
        settings = benchmark_settings(family, batch, resolution, optimizer=optimizer_name, gradient_checkpointing=checkpointing,
                                      mixed_precision=precision)
        point_started = time.monotonic()
        step = None
        try:
            gpu.empty()
            step = BenchmarkStep(model, settings, precision, on_cuda, network=network)
            network = step.network
            key = (batch, checkpointing)
            losses = []
            if key not in flops:
                flops[key] = step.count_flops()  # also the first warm-up step
            for _ in range(warmup):
                losses.append(step())
            gpu.sync()
            held, ignore = 0, None
            if not on_cuda:  # the CPU's "allocated": what the timed steps create, above what is held
                state = _state_tensors(step.optimizer)
                held = _bytes_of([t for m in (model.unet, *model.text_encoders, network) for t in (*m.parameters(), *m.buffers())] + state)
                ignore = model_storages(model.unet, *model.text_encoders, network) | _storage_keys(state)
            with gpu.measure(held, ignore):
                timer = time.perf_counter()
                for _ in range(steps):
                    losses.append(step())
                gpu.sync()
                seconds = (time.perf_counter() - timer) / steps
            allocated, reserved = gpu.peak_allocated(), gpu.peak_reserved()
            estimate = memory.estimate_memory(settings, version, on_cuda=True, bf16_supported=precision == "bf16")
            expected = estimate.phase_total("training") - memory.CUDA_CONTEXT_BYTES
            achieved = flops[key] / seconds / 1e12
            row.update(
                status="measured", optimizer_class=step.optimizer_name.rsplit(".", 1)[-1], seconds_per_step=_sig(seconds),
                samples_per_s=_sig(batch / seconds), tflop_per_sample=_sig(flops[key] / batch / 1e12), flops_per_step=flops[key],
                achieved_tflops=_sig(achieved), mfu=_sig(achieved / peak) if peak else None,
                peak_allocated_gib=_sig(allocated / GiB), peak_reserved_gib=_sig(reserved / GiB),
                estimate_gib=_sig(expected / GiB), estimate_error=_sig((expected - allocated) / allocated) if allocated else None,
                losses_finite=all(math.isfinite(v) for v in losses), point_seconds=_round(time.monotonic() - point_started, 1),
            )
            scaler = getattr(step.accelerator, "scaler", None)
            if scaler is not None:  # fp16: the GradScaler's scale after the steps (it halves on each skipped step)
                row["grad_scale"] = float(scaler.get_scale())
            elif precision == "fp16" and not any("GradScaler" in note for note in out.notes):
                out.note("fp16 without a GradScaler here: Accelerate makes none on the CPU (a GPU run reports its scale)")
            seconds_per_sample = seconds / batch
        except torch.cuda.OutOfMemoryError as exc:
            row.update(status="out of memory", reason=str(exc).splitlines()[0][:200])
        except UserError as exc:  # an optimizer the machine lacks
            row.update(status="skipped", reason=str(exc)[:300])
        except Exception as exc:  # noqa: BLE001 - one set-up's failure must not cost the others
            traceback.print_exc()
            row.update(status="failed", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
        finally:
            if step is not None:
                step.free()
            del step
            gpu.empty()
        out.add_row(row)
    failed = [row for row in out.rows if row.get("status") == "failed"]
    if failed:
        out.reason = f"{len(failed)} set-up(s) failed: " + "; ".join(sorted({row["reason"] for row in failed}))
    if not any(row.get("status") == "measured" for row in out.rows):
        if failed:
            out.status = "failed"
            return
        raise SkipPart("no set-up could be measured: " + "; ".join(sorted({row.get("reason", row["status"]) for row in out.rows})))


# A real run through train_project -----------------------------------------------------------------


class Recorder(Progress):
    """A Progress that keeps the run's log and updates, with the time of each, and stops after `stop_after`
    optimizer steps (as a closed Colab tab does: the run saves its state and raises Cancelled)."""

    def __init__(self, stop_after: "int | None" = None):
        self.stop_after = stop_after
        self.started = time.monotonic()
        self.logs: list[tuple[float, str]] = []
        self.updates: list[tuple[float, int, Any, str, dict]] = []
        self.step = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def update(self, done: int, total: Any = None, message: str = "", **data: Any) -> None:
        if "loss" in data:
            self.step = done
        self.updates.append((self.now(), done, total, message, data))

    def log(self, message: str) -> None:
        self.logs.append((self.now(), str(message)))
        print(f"  [{self.now():6.1f} s] {message}", flush=True)

    def cancelled(self) -> bool:
        return self.stop_after is not None and self.step >= self.stop_after

    def first_log(self, text: str) -> "float | None":
        return next((t for t, line in self.logs if text in line), None)

    def losses(self) -> list:
        return [data["loss"] for _, _, _, _, data in self.updates if "loss" in data]

    def step_times(self) -> list:
        return [t for t, _, _, _, data in self.updates if "loss" in data]


def write_base_model(folder: Path, tiny: bool, device: str) -> Path:
    """An SD 1.5 in diffusers' folder layout with random weights: real size (fp16 files, ~2 GB, built on
    `device`) or the tests' tiny one. Its tokenizer is the tests' small CLIP vocabulary (no download)."""
    if tiny:
        from tests.tiny_sd import build_tiny_sd

        return build_tiny_sd(folder)
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    from benchmarks.memory_estimate import build_text_encoder, build_unet, build_vae
    from tests.tiny_sd import write_tiny_tokenizer

    torch.manual_seed(0)
    unet, vae, text_encoder = build_unet("sd_v1", device), build_vae("sd_v1", device), build_text_encoder("sd_v1", device)
    write_tiny_tokenizer(folder / "tokenizer")
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    half = dict(device="cpu", dtype=torch.float16)  # saved from the CPU, in fp16 (the loader upcasts, as for a real fp16 file)
    pipe = StableDiffusionPipeline(
        unet=unet.to(**half), vae=vae.to(**half), text_encoder=text_encoder.to(**half),
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    del pipe, unet, vae, text_encoder
    import gc

    gc.collect()
    return folder


# on a GPU / --smoke: images, their sizes, repeats, resolution, the step to interrupt at, sample prompt size and steps
RUN_PLANS = {
    False: {"images": 12, "sizes": [(512, 512), (512, 640), (640, 512)], "repeats": 2, "resolution": 512, "stop_after": 16, "sample": (512, 10)},
    True: {"images": 4, "sizes": [(256, 256), (320, 256)], "repeats": 1, "resolution": 256, "stop_after": 3, "sample": (64, 2)},
}


def part_train_project(config: dict, out: Result) -> None:
    """Two runs of the real trainer: one stopped mid-epoch 2 (its state saved), then its resume."""
    import torch

    smoke = config["smoke"]
    on_cuda = torch.cuda.is_available() and not smoke
    if not smoke and not on_cuda:
        raise SkipPart("no CUDA GPU here (--smoke runs this code on a CPU)")
    _quiet()
    from safetensors.torch import load_file

    from benchmarks.tag_speed import make_jpeg
    from lora_gradio.engine.errors import Cancelled
    from lora_gradio.engine.project import Projects
    from lora_gradio.engine.train import loop
    from lora_gradio.engine.train.config import apply_overrides, load_settings, save_settings

    plan = RUN_PLANS[smoke]
    work = Path(config["work"]) / "train_project"
    started = time.monotonic()
    model_dir = write_base_model(work / "base_model", smoke, "cuda" if on_cuda else "cpu")
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    out.metrics["write_model_seconds"] = _round(time.monotonic() - started, 1)
    out.metrics["model"] = "tiny test SD (smoke)" if smoke else "real-size SD 1.5, random weights (fp16 files)"
    bnb_ok = config.get("packages", {}).get("bitsandbytes", {}).get("ok", False)
    optimizer = "AdamW8bit" if bnb_ok and on_cuda else "AdamW"
    if optimizer != "AdamW8bit":
        out.notes.append("AdamW: " + ("the CPU trains with AdamW" if not on_cuda else f"bitsandbytes is not installed ({CARRY_HINT})"))
    if not on_cuda:
        out.notes.append("smoke: the CPU trains in fp32 (the loop's choice), so the GradScaler is not used here")

    project = Projects(work / "Loras").create("gpu_char")
    for i in range(plan["images"]):
        make_jpeg(project.dataset_dir / f"{i:03d}.jpg", i, plan["sizes"][i % len(plan["sizes"])])
        (project.dataset_dir / f"{i:03d}.txt").write_text("gpu_char, 1girl, solo, smile, red hair, outdoors")
    side, sample_steps = plan["sample"]
    settings = apply_overrides(load_settings(project), [
        f"training_model={model_dir}", f"resolution={plan['resolution']}", f"num_repeats={plan['repeats']}", "how_many=2",
        "train_batch_size=2", f"optimizer={optimizer}", "mixed_precision=fp16", "save_every_n_epochs=1", "sample_every_n_epochs=1",
        f"sample_prompts=gpu_char, smile --w {side} --h {side} --s {sample_steps}",
    ])
    save_settings(project, settings)
    total_steps = 2 * math.ceil(plan["images"] * plan["repeats"] / 2)
    out.metrics.update(project_root=str(project.root), project_name=project.base, steps_planned=total_steps, optimizer=optimizer,
                       resolution=plan["resolution"], batch=2, images=plan["images"], repeats=plan["repeats"], stopped_at_step=plan["stop_after"])
    out.save()

    first = Recorder(stop_after=plan["stop_after"])
    started = time.monotonic()
    try:
        loop.train_project(project, progress=first)
        out.checks["the first run stopped when asked"] = False
    except Cancelled:
        out.checks["the first run stopped when asked"] = True
    out.metrics["interrupted_run_seconds"] = _round(time.monotonic() - started, 1)
    state = loop.read_state_info(project)
    out.checks["its state was saved at the step it stopped"] = bool(state) and state.get("global_step") == plan["stop_after"]
    out.save()

    second = Recorder()
    started = time.monotonic()
    result = loop.train_project(project, resume=True, progress=second)
    out.metrics["resumed_run_seconds"] = _round(time.monotonic() - started, 1)
    out.checks["the resume started where it stopped"] = second.first_log(f"step {plan['stop_after']}") is not None
    out.checks["every planned step ran"] = result.steps == total_steps
    files = sorted(project.output_dir.glob("*.safetensors"))
    out.checks["an epoch file per epoch"] = len(files) == 2
    samples = sorted((project.output_dir / "sample").glob("*.png"))
    out.checks["sample images of both epochs"] = len(samples) >= 2
    losses = first.losses() + second.losses()
    out.checks["finite losses"] = bool(losses) and all(math.isfinite(v) for v in losses)
    out.checks["nothing left to resume"] = loop.read_state_info(project) is None
    if files:
        state_dict = load_file(str(files[-1]))
        ups = [v.float().abs().max().item() for k, v in state_dict.items() if "lora_up" in k]
        out.checks["the LoRA learned (lora_up moved from zero)"] = bool(ups) and max(ups) > 0
        out.metrics["lora_file_mib"] = _round(files[-1].stat().st_size / 2**20, 2)
    all_logs = [line for _, line in first.logs + second.logs]
    if on_cuda:
        out.checks["trained in fp16 on the GPU (the GradScaler's path)"] = any("(fp16)" in line and "cuda" in line for line in all_logs)
        out.metrics["peak_memory_line"] = next((line for line in reversed(all_logs) if line.startswith("GPU memory: peak")), None)
        out.metrics["peak_allocated_gib"] = _round(torch.cuda.max_memory_allocated() / GiB, 3)
        out.metrics["peak_reserved_gib"] = _round(torch.cuda.max_memory_reserved() / GiB, 3)
    times = second.step_times()
    if len(times) >= 3:  # the steady pace of the resumed run's steps (its first step leaves out)
        seconds = (times[-1] - times[1]) / (len(times) - 2) if len(times) > 2 else None
        out.metrics["seconds_per_step"] = _round(seconds)
        out.metrics["samples_per_s"] = _round(2 / seconds, 3) if seconds else None
    load_done = second.first_log("training ")
    out.metrics["resume_to_first_step_seconds"] = _round(times[0] - (second.first_log("resuming") or 0.0), 2) if times else None
    out.metrics["resume_load_and_cache_seconds"] = _round(load_done, 2) if load_done is not None else None
    out.metrics["losses"] = [_round(v, 5) for v in losses]
    out.metrics["samples"] = len(samples)
    failed = [name for name, ok in out.checks.items() if not ok]
    if failed:
        out.status, out.reason = "failed", "checks failed: " + "; ".join(failed)


def part_compare(config: dict, out: Result) -> None:
    """compare_project over the train_project part's epochs: a grid of 2 epochs x 4 weights + the base."""
    import torch

    smoke = config["smoke"]
    on_cuda = torch.cuda.is_available() and not smoke
    if not smoke and not on_cuda:
        raise SkipPart("no CUDA GPU here (--smoke runs this code on a CPU)")
    made = config.get("from_train_project") or {}
    if not made.get("project_root"):
        raise SkipPart("it compares the LoRA files of the train_project part, which made none")
    _quiet()
    from lora_gradio.engine.compare import compare_project
    from lora_gradio.engine.project import Projects

    project = Projects(made["project_root"]).open(made["project_name"])
    size, steps = (64, 2) if smoke else (512, 20)
    weights = [0.5, 1.0] if smoke else [0.25, 0.5, 0.75, 1.0]
    recorder = Recorder()
    started = time.monotonic()
    result = compare_project(project, progress=recorder, epochs="all", weights=weights, include_base=True, steps=steps,
                             width=size, height=size, batch=1, seed=1)
    total = time.monotonic() - started
    cells = len(result.epochs) * len(result.weights) + 1
    first = recorder.first_log("comparing ")  # logged once the model is loaded, before the first cell
    last = recorder.updates[-1][0] if recorder.updates else None
    render = (last - first) if first is not None and last is not None else None
    out.metrics.update(cells=cells, width=size, height=size, steps=steps, sampler="Euler a", cfg_scale=7.0,
                       cells_per_s=_round(cells / render, 3) if render else None, render_seconds=_round(render, 2),
                       seconds_per_cell=_round(render / cells, 3) if render else None, end_to_end_seconds=_round(total, 2),
                       load_seconds=_round(first, 2), grid=Path(result.grid).name,
                       device="cuda (fp16)" if on_cuda else "cpu (fp32)")
    if not Path(result.grid).is_file():
        out.status, out.reason = "failed", "no grid image was written"


def part_tagging(config: dict, out: Result) -> None:
    """tag_speed.measure with its WD-shaped convnet: bare session.run vs tag_images end to end."""
    smoke = config["smoke"]
    from benchmarks.tag_speed import build_conv_tagger, measure

    import onnxruntime

    available = onnxruntime.get_available_providers()
    on_gpu = "CUDAExecutionProvider" in available and not smoke
    if not on_gpu:
        out.notes.append(
            "ran on the CPU: " + ("smoke" if smoke else
                                  "this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is several hundred MB, over the "
                                  "64 MiB the checkout may carry), so these are CPU figures, not the GPU's"))
    work = Path(config["work"]) / "tagging"
    images, size, width, tags = (8, (256, 384), 8, 200) if smoke else (192, (1024, 1536), 64, 10861)
    model = build_conv_tagger(work / "model", 448, width, tags)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if on_gpu else ["CPUExecutionProvider"]
    result = measure(work, str(model), images, size, providers=providers)
    out.metrics.update({k: _round(v, 3) for k, v in result.items()})
    out.metrics["model"] = f"random-weight WD-shaped convnet, 448 px input, width {width}, {tags} tags (tag_speed.build_conv_tagger)"


PARTS = [
    Part("probe", "The machine", 30, 90, (), 10, part_probe),
    Part("train_sd15_bf16", "SD 1.5 training steps, bf16", 60, 120, TRAINING_NEEDS, 25, _train_part("sd", "bf16")),
    Part("train_sd15_fp16", "SD 1.5 training steps, fp16", 45, 120, TRAINING_NEEDS, 25, _train_part("sd", "fp16")),
    Part("train_project", "A real run through train_project", 110, 180, TRAINING_NEEDS + ("tomli_w", "PIL"), 60, part_train_project),
    Part("train_sdxl_bf16", "SDXL training steps, bf16", 80, 120, TRAINING_NEEDS, 45, _train_part("sdxl", "bf16")),
    Part("train_sdxl_fp16", "SDXL training steps, fp16", 65, 120, TRAINING_NEEDS, 45, _train_part("sdxl", "fp16")),
    Part("compare", "compare grid", 40, 90, TRAINING_NEEDS + ("tomli_w", "PIL"), 20, part_compare),
    Part("tagging", "Tagging", 35, 90, ("onnxruntime", "onnx", "PIL", "numpy", "pydantic"), 15, part_tagging),
]
PART_NAMES = [part.name for part in PARTS]


def child_main(name: str, config_file: Path) -> int:
    config = json.loads(config_file.read_text())
    out = Result(path=Path(config["result"]))
    part = next(p for p in PARTS if p.name == name)
    try:
        part.run(config, out)
    except SkipPart as exc:
        out.status, out.reason = "skipped", str(exc)
    except Exception as exc:  # noqa: BLE001 - the parent reports it with the traceback's end
        traceback.print_exc()
        out.status, out.reason = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        out.save()
        return 1
    out.save()
    return 0


# Parent: wheels, budgets, results -----------------------------------------------------------------


def _wheel_dist(path: Path) -> str:
    return path.name.split("-")[0].lower().replace("_", "-")


def _compatible(path: Path) -> bool:
    """Whether a wheel's tags fit this interpreter (for the unzip fallback when pip is missing)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename

        supported = set(sys_tags())
        return any(tag in supported for tag in parse_wheel_filename(path.name)[3])
    except Exception:  # noqa: BLE001 - no packaging: a pure-python wheel is the safe guess
        return path.name.endswith("-none-any.whl")


def install_wheels(folder: Path, target: Path) -> dict:
    """Install every distribution in `folder` into `target` (first on the children's sys.path), offline:
    pip with --no-index, or where pip is missing the wheels unzipped. Returns what went in and what failed."""
    report: dict[str, Any] = {"folder": str(folder), "target": str(target), "installed": [], "failed": {}}
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        report["failed"]["(none)"] = f"no wheels in {folder} (run python benchmarks/prepare_gpu_wheels.py before the device run)"
        return report
    report["mib"] = round(sum(w.stat().st_size for w in wheels) / 2**20, 1)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    names = sorted({_wheel_dist(w) for w in wheels})
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0
    base = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--disable-pip-version-check", "--quiet",
            "--target", str(target), "--find-links", str(folder)]
    if has_pip and subprocess.run(base + names, capture_output=True, text=True).returncode == 0:
        report["installed"] = names
        return report
    for name in names:
        if has_pip:
            done = subprocess.run(base + [name], capture_output=True, text=True)
            if done.returncode == 0:
                report["installed"].append(name)
            else:
                report["failed"][name] = (done.stderr.strip().splitlines() or ["pip failed"])[-1][:300]
            continue
        import zipfile

        fitting = [w for w in wheels if _wheel_dist(w) == name and _compatible(w)]
        if not fitting:
            report["failed"][name] = f"no wheel for Python {sys.version_info.major}.{sys.version_info.minor} here"
            continue
        with zipfile.ZipFile(fitting[0]) as archive:
            archive.extractall(target)
        report["installed"].append(name)
    return report


def run_part(part: Part, config: dict, work: Path, timeout: float, env: dict, log) -> dict:
    """Run one part in its own process, at most `timeout` seconds; returns its result."""
    result_file = work / f"{part.name}.json"
    config = dict(config, result=str(result_file), deadline=time.time() + timeout - 3.0)
    config_file = work / f"{part.name}.config.json"
    config_file.write_text(json.dumps(config))
    log.write(f"\n===== {part.name} (limit {timeout:.0f} s) =====\n")
    log.flush()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", part.name, "--config", str(config_file)],
                            cwd=str(REPO), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    seconds = time.monotonic() - started
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        result = Result().as_dict()
        result.update(status="failed", reason=f"the part's process ended (exit code {code}) without a result")
    if timed_out:
        result["status"] = "timed out"
        result["reason"] = f"stopped at its {timeout:.0f} s limit; the rows measured before are kept"
    elif code != 0 and result.get("status") != "failed":
        result.update(status="failed", reason=f"exit code {code}")
    result["seconds"] = round(seconds, 1)
    result["limit_s"] = round(timeout, 1)
    return result


def _tail(path: Path, marker: str, lines: int = 12) -> list[str]:
    text = path.read_text(errors="replace")
    section = text.split(marker)[-1]
    return section.strip().splitlines()[-lines:]


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_suite_out", help="folder for gpu_suite.json, summary.md and gpu_suite.log")
    parser.add_argument("--smoke", action="store_true", help="run every part's code on the CPU with tiny models (CI); figures mean nothing")
    parser.add_argument("--budget", type=float, default=None, help=f"seconds for the whole suite (default {DEFAULT_BUDGET_S:.0f}; --smoke {SMOKE_BUDGET_S:.0f})")
    parser.add_argument("--wheels", default=None, help="a folder of wheels (prepare_gpu_wheels.py) to install first, offline")
    parser.add_argument("--site", default=None, help="where --wheels go (default: a temporary folder); first on the parts' sys.path")
    parser.add_argument("--parts", default="", help=f"only these parts, comma-separated (of {', '.join(PART_NAMES)}; the probe always runs)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (models, projects) instead of deleting it")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, Path(args.config))

    suite_started = time.monotonic()
    budget = args.budget or (SMOKE_BUDGET_S if args.smoke else DEFAULT_BUDGET_S)
    deadline = suite_started + budget - WRITE_RESERVE_S
    chosen = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PART_NAMES]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PART_NAMES)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_suite_"))
    env = dict(os.environ, **OFFLINE_ENV)
    python_path = [str(REPO)]
    report: dict[str, Any] = {
        "suite": {"smoke": args.smoke, "budget_s": budget, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "command": " ".join([Path(sys.executable).name, *sys.argv]), "python": sys.version.split()[0]},
        "parts": {},
    }
    if args.wheels:
        site = Path(args.site) if args.site else work / "site"
        wheel_started = time.monotonic()
        report["wheels"] = install_wheels(Path(args.wheels), site)
        report["wheels"]["seconds"] = round(time.monotonic() - wheel_started, 1)
        python_path.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(python_path + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))

    log_path = out_dir / "gpu_suite.log"
    base_config: dict[str, Any] = {"smoke": args.smoke, "work": str(work)}
    packages: dict[str, Any] = {}
    with open(log_path, "w", encoding="utf-8") as log:
        for part in PARTS:
            budget_s = part.smoke_budget_s if args.smoke else part.budget_s
            if chosen and part.name not in chosen and part.name != "probe":
                continue
            missing = [module for module in part.needs if packages and not packages.get(module, {}).get("ok")]
            left = deadline - time.monotonic()
            if left < part.min_s:
                result = {"status": "skipped", "reason": f"not enough time left in the suite's budget ({max(left, 0):.0f} s; the part needs at least {part.min_s:.0f} s)"}
            elif missing:
                why = "; ".join(f"{PACKAGES.get(m, m)} ({packages.get(m, {}).get('error', 'not importable')})" for m in missing)
                hint = CARRY_HINT.replace("prepare_gpu_wheels.py", "prepare_gpu_wheels.py --with onnx") if "onnx" in missing else CARRY_HINT
                result = {"status": "skipped", "reason": f"missing package(s): {why} — {hint}"}
            elif part.name == "compare" and report["parts"].get("train_project", {}).get("status") not in ("measured", "failed"):
                result = {"status": "skipped", "reason": "it compares the LoRA files of the train_project part, which did not run"}
            else:
                config = dict(base_config, packages=packages, adamw8bit=report.get("environment", {}).get("gpu", {}).get("adamw8bit", "works"))
                if part.name == "compare":
                    config["from_train_project"] = report["parts"]["train_project"].get("metrics", {})
                result = run_part(part, config, work, min(budget_s, left), env, log)
                if result["status"] in ("failed", "timed out"):
                    log.flush()
                    result["log_tail"] = _tail(log_path, f"===== {part.name} ")
            result.setdefault("budget_s", budget_s)
            report["parts"][part.name] = result
            if part.name == "probe":
                packages = result.get("metrics", {}).get("packages", {})
                report["environment"] = {k: v for k, v in result.get("metrics", {}).items()}
                if result["status"] != "measured":
                    packages = {"torch": {"ok": False, "error": "the probe did not finish: " + result.get("reason", "")}}
            print(f"{part.name}: {result['status']}" + (f" ({result['reason']})" if result.get("reason") else "")
                  + (f" in {result['seconds']:.0f} s" if "seconds" in result else ""), flush=True)
            write_report(report, out_dir, suite_started)  # after every part: a run cut short keeps what it measured
    report["suite"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    summary = write_report(report, out_dir, suite_started)
    print(summary)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work folder kept: {work}")
    return 0


# Summary ------------------------------------------------------------------------------------------


def write_report(report: dict, out_dir: Path, suite_started: float) -> str:
    """gpu_suite.json and summary.md as they stand; returns the summary."""
    report["suite"]["seconds"] = round(time.monotonic() - suite_started, 1)
    (out_dir / "gpu_suite.json").write_text(json.dumps(report, indent=1, default=str))
    summary = render_summary(report)
    (out_dir / "summary.md").write_text(summary)
    return summary


def _fmt(value: Any, spec: str = "", suffix: str = "") -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, (int, float)) and spec:
        return format(value, spec) + suffix
    return f"{value}{suffix}"


def render_summary(report: dict) -> str:
    suite, parts, env = report["suite"], report["parts"], report.get("environment", {})
    gpu = env.get("gpu", {})
    where = gpu.get("name") or ("CPU" if env else "unknown")
    lines = [f"# GPU suite: {where}{' (SMOKE RUN: tiny models on the CPU; the figures measure nothing)' if suite['smoke'] else ''}", ""]
    facts = [f"torch {gpu.get('torch', '?')}", f"CUDA {gpu.get('torch_cuda') or '–'}", f"Python {env.get('python', '?')}"]
    if gpu.get("total_gib"):
        facts.append(f"{gpu['total_gib']} GiB ({gpu.get('free_gib')} free)")
    if gpu.get("peak_tflops"):
        facts.append(f"MFU against {gpu['peak_tflops']} TFLOP/s dense bf16/fp16")
    if "adamw8bit" in gpu:
        facts.append(f"AdamW8bit: {gpu['adamw8bit']}")
    lines.append("; ".join(facts) + f". Started {suite['started']}, {suite.get('seconds', 0):.0f} s of a {suite['budget_s']:.0f} s budget.")
    wheels = report.get("wheels")
    if wheels:
        lines.append(f"Wheels: installed {', '.join(wheels.get('installed', [])) or 'none'}"
                     + (f"; failed: {'; '.join(f'{k}: {v}' for k, v in wheels['failed'].items())}" if wheels.get("failed") else "")
                     + f" ({wheels.get('seconds', 0)} s).")
    missing = [f"{PACKAGES.get(m, m)}" for m, info in env.get("packages", {}).items() if not info.get("ok")]
    if missing:
        lines.append(f"Not importable here: {', '.join(missing)}.")
    lines += ["", "## Parts", "", "| part | status | seconds | limit | note |", "| --- | --- | --- | --- | --- |"]
    for name, result in parts.items():
        note = result.get("reason", "")
        lines.append(f"| {name} | {result['status']} | {_fmt(result.get('seconds'), '.0f')} | {_fmt(result.get('limit_s', result.get('budget_s')), '.0f')} | {note} |")

    rows = [row for name in ("train_sd15_bf16", "train_sd15_fp16", "train_sdxl_bf16", "train_sdxl_fp16") for row in parts.get(name, {}).get("rows", [])]
    if rows:
        lines += ["", "## Training steps (train_speed's step: the trainer's training_step + optimizer, random latents, 225-token captions, UNet + text encoder(s) trained)", "",
                  "| family | px | batch | precision | optimizer | ckpt | samples/s | s/step | TFLOP/sample | MFU | peak alloc GiB | peak reserved GiB | estimate GiB | estimate error |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in rows:
            head = f"| {row['family'].upper()} | {row['resolution']} | {row['batch']} | {row['precision']} | {row['optimizer']} | {'yes' if row['gradient_checkpointing'] else 'no'} "
            if row.get("status") != "measured":
                lines.append(head + f"| {row.get('status')}: {row.get('reason', '')} | | | | | | | |")
                continue
            lines.append(head + f"| {_fmt(row['samples_per_s'], '.2f')} | {_fmt(row['seconds_per_step'], '.3f')} | {_fmt(row['tflop_per_sample'], '.3f')} "
                         f"| {_fmt(row['mfu'] * 100 if row.get('mfu') is not None else None, '.1f', '%')} | {_fmt(row['peak_allocated_gib'], '.2f')} "
                         f"| {_fmt(row['peak_reserved_gib'], '.2f')} | {_fmt(row['estimate_gib'], '.2f')} "
                         f"| {_fmt(row['estimate_error'] * 100 if row.get('estimate_error') is not None else None, '+.1f', '%')} |")
        scaled = [row for row in rows if "grad_scale" in row]
        if scaled:
            lines.append("")
            lines.append("fp16 GradScaler scale after the timed steps: " + ", ".join(
                f"{row['family']} b{row['batch']} {row['optimizer']}: {row['grad_scale']:g}" for row in scaled)
                + " (it starts at 65536 and halves at each step skipped for inf/NaN gradients).")
        if any(not row.get("losses_finite", True) for row in rows if row.get("status") == "measured"):
            lines.append("Some set-ups had non-finite losses (random weights; see the JSON).")

    run = parts.get("train_project")
    if run and run.get("metrics"):
        m = run["metrics"]
        lines += ["", "## A real run through train_project", "",
                  f"{m.get('model')}, {m.get('images')} images x {m.get('repeats')} repeats, {m.get('resolution')} px, batch {m.get('batch')}, "
                  f"{m.get('optimizer')}, mixed_precision=fp16, 2 epochs = {m.get('steps_planned')} steps, stopped at step "
                  f"{m.get('stopped_at_step')} and resumed.", "",
                  f"- writing the base model: {_fmt(m.get('write_model_seconds'), '.1f', ' s')}; interrupted run {_fmt(m.get('interrupted_run_seconds'), '.1f', ' s')}; "
                  f"resumed run {_fmt(m.get('resumed_run_seconds'), '.1f', ' s')} (loading and caching before its first step: {_fmt(m.get('resume_load_and_cache_seconds'), '.1f', ' s')})",
                  f"- steady pace: {_fmt(m.get('samples_per_s'), '.2f')} samples/s ({_fmt(m.get('seconds_per_step'), '.3f')} s/step over the resumed run's steps after its first)",
                  f"- peak memory: {_fmt(m.get('peak_allocated_gib'), '.2f', ' GiB')} allocated, {_fmt(m.get('peak_reserved_gib'), '.2f', ' GiB')} reserved; the run's own line: {m.get('peak_memory_line') or '–'}"]
        for name, ok in run.get("checks", {}).items():
            lines.append(f"- [{'x' if ok else ' '}] {name}")

    grid = parts.get("compare")
    if grid and grid.get("metrics"):
        m = grid["metrics"]
        lines += ["", "## compare grid", "",
                  f"{m.get('cells')} cells ({m.get('width')} px, {m.get('steps')} steps, {m.get('sampler')}, CFG {m.get('cfg_scale')}) on {m.get('device')}: "
                  f"**{_fmt(m.get('cells_per_s'), '.2f')} cells/s** ({_fmt(m.get('seconds_per_cell'), '.2f', ' s')} a cell); "
                  f"{_fmt(m.get('end_to_end_seconds'), '.1f', ' s')} end to end with {_fmt(m.get('load_seconds'), '.1f', ' s')} of model loading."]

    tag = parts.get("tagging")
    if tag and tag.get("metrics"):
        m = tag["metrics"]
        lines += ["", "## Tagging", "",
                  f"{m.get('images')} JPEGs of {m.get('size')}, batch {m.get('batch')}, providers {m.get('providers')}, {m.get('workers')} decode threads; {m.get('model')}:",
                  f"bare ONNX {_fmt(m.get('bare_images_per_s'), '.1f')} images/s, end to end {_fmt(m.get('end_to_end_images_per_s'), '.1f')} images/s "
                  f"({_fmt(m.get('ratio') * 100 if m.get('ratio') is not None else None, '.0f', '%')}), decode + preprocess alone {_fmt(m.get('decode_images_per_s'), '.1f')} images/s."]

    notes = [f"{name}: {note}" for name, result in parts.items() for note in result.get("notes", [])]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
