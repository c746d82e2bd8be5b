"""Training speed on the real SD1.5 or SDXL architecture: samples/s, peak memory and MFU.

    python benchmarks/train_speed.py                       # GPU: SD1.5 at 512 px, batch 2 (the guide's defaults)
    python benchmarks/train_speed.py --batch 8
    python benchmarks/train_speed.py --family sdxl         # GPU: SDXL at 1024 px, batch 1 (--batch 4: the XL notebook's)
    python benchmarks/train_speed.py --resolution 256 --batch 1 --steps 2   # what a CPU can show
    python benchmarks/train_speed.py --family sdxl --resolution 512 --batch 1 --steps 1   # SDXL's per-step cost on a CPU
    python benchmarks/train_speed.py --tiny-loop           # the training loop's own cost per step (benchmarks/loop_overhead.py)

The UNet and text encoder(s) are built from the configs the package ships, with random weights
(nothing is downloaded), and trained with the guides' defaults: SD1.5 LoRA 16/8 with min-SNR 5 and
clip skip 2; SDXL LoRA 8/4 with min-SNR 8 and multires noise (the XL notebook's); both on UNet and
text encoder(s), 225-token captions, AdamW8bit on a GPU (AdamW on a CPU), fp16/bf16 mixed precision on
a GPU. Latents are random (the real run caches them, so the VAE is not part of a training step). Each
step is the same `training_step` the trainer runs, with the family's conditioning (SDXL: both encoders,
pooled text and size ids). FLOPs of one step are counted with torch.utils.flop_counter; MFU divides the
achieved FLOP/s by the GPU's dense half-precision peak (from the table below, or --peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Dense fp16/bf16 tensor-core peaks (TFLOP/s), from the vendors' data sheets.
GPU_PEAK_TFLOPS = {
    "H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0, "A10": 125.0, "T4": 65.0, "V100": 125.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0, "RTX 3080": 59.5, "RTX 3060": 25.5,
}


def peak_tflops(name: str) -> "float | None":
    for key in sorted(GPU_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return GPU_PEAK_TFLOPS[key]
    return None


def tokenizers_for_benchmark(version: str, small: bool = False):
    """The real CLIP tokenizer(s) when cached; else (or `small`) the tests' small ones (same 77-token chunks)."""
    if not small:
        try:
            from lora_gradio.engine.train.models import clip_tokenizers

            return clip_tokenizers(version), "the model's own"
        except Exception:
            pass
    from transformers import CLIPTokenizer

    from tests.tiny_sd import write_tiny_tokenizer
    from tests.tiny_sdxl import write_tiny_tokenizer_2

    folder = Path(tempfile.mkdtemp())
    write_tiny_tokenizer(folder / "tokenizer")
    found = [CLIPTokenizer.from_pretrained(folder / "tokenizer")]
    if version == "sdxl":
        write_tiny_tokenizer_2(folder / "tokenizer_2")
        found.append(CLIPTokenizer.from_pretrained(folder / "tokenizer_2"))
    return found, "small test vocabulary (same sequence lengths)"


def build_random_model(family_key: str, device: str = "cpu", tiny: bool = False):
    """(BaseModel, tokenizer description) with the real architecture and random weights, built on `device`
    (a GPU builds SDXL's 2.6B parameters in seconds, a CPU in about a minute). `tiny`: the tests' tiny
    models of the same classes instead (tests/tiny_sd.py, tests/tiny_sdxl.py), for smoke runs of this code."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_gradio.engine.train.models import CONFIG_DIR, BaseModel, ModelSource

    folder = CONFIG_DIR / ("sdxl" if family_key == "sdxl" else "sd15")
    version = "sdxl" if family_key == "sdxl" else "sd_v1"

    def config(part: str) -> dict:
        return json.loads((folder / part / "config.json").read_text())

    with torch.device(device):
        if tiny and family_key == "sdxl":
            from tests.tiny_sdxl import tiny_sdxl_components

            unet, _vae, te1, te2 = tiny_sdxl_components()
            encoders = [te1, te2]
        elif tiny:
            from tests.tiny_sd import _vocab_size, tiny_components

            unet, _vae, text_config = tiny_components()
            vocab = _vocab_size()
            text_config.vocab_size, text_config.bos_token_id, text_config.eos_token_id, text_config.pad_token_id = vocab, vocab - 2, vocab - 1, vocab - 1
            encoders = [CLIPTextModel(text_config)]
        else:
            unet = UNet2DConditionModel.from_config(config("unet"))
            encoders = [CLIPTextModel(CLIPTextConfig(**config("text_encoder")))]
            if family_key == "sdxl":
                encoders.append(CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"))))
        scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False)
    tokenizers, tokenizer_name = tokenizers_for_benchmark(version) if not tiny else tokenizers_for_benchmark(version, small=True)
    model = BaseModel(unet, None, encoders, tokenizers, scheduler, version, ModelSource("diffusers", "random", f"random {'tiny ' if tiny else ''}{family_key}"))
    return model, tokenizer_name


def benchmark_settings(family_key: str, batch: int, resolution: int, *, lora_type: str = "LoRA", gradient_checkpointing: bool = False,
                       optimizer: str = "AdamW8bit", mixed_precision: str = "auto"):
    """The guides' training settings for a benchmark step (SDXL: the XL notebook's network, min-SNR and noise)."""
    from lora_gradio.engine.train.config import TrainSettings
    from lora_gradio.engine.train.family import SDXL_DEFAULTS

    keys = ("min_snr_gamma", "multires_noise_iterations", "multires_noise_discount", "network_dim", "network_alpha")
    family_defaults = {k: v for k, v in SDXL_DEFAULTS.items() if k in keys} if family_key == "sdxl" else {}
    return TrainSettings(**{**family_defaults, "train_batch_size": batch, "resolution": resolution, "lora_type": lora_type,
                            "gradient_checkpointing": gradient_checkpointing, "max_bucket_reso": max(1024, resolution),
                            "optimizer": optimizer, "mixed_precision": mixed_precision})


class BenchmarkStep:
    """One training step as the trainer takes it (`loop.training_step`, then the optimizer), on random latents:
    the network over `model` (built once, reused across set-ups), an Accelerator in `precision`, and the
    optimizer. Call it to take a step; `free()` drops the optimizer and gradients before the next set-up."""

    def __init__(self, model, settings, precision: str, on_cuda: bool, network=None):
        import torch
        from accelerate import Accelerator

        from lora_gradio.engine.train.config import resolved_min_snr_gamma
        from lora_gradio.engine.train.network import create_network
        from lora_gradio.engine.train.optim import build_optimizer

        self.model, self.settings, self.precision = model, settings, precision
        self.accelerator = Accelerator(mixed_precision=precision, cpu=not on_cuda)
        device = self.device = self.accelerator.device
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        family, unet = model.family, model.unet
        for part in (unet, *model.text_encoders):  # as loop.py sets them up
            part.requires_grad_(False)
            part.eval()
        if network is None:
            network = create_network(unet, family.network_text_encoders(model), settings.lora_type, settings.network_dim, settings.network_alpha,
                                     settings.conv_dim, settings.conv_alpha, unet_name=family.lora_unet_name(model))
            network.apply_to()
        self.network = network
        unet.to(device, dtype=self.dtype)
        for encoder in model.text_encoders:
            encoder.to(device, dtype=self.dtype)
        network.to(device, dtype=torch.float32)
        if settings.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            unet.train()
            for encoder in model.text_encoders:  # the text encoders are trained here
                encoder.gradient_checkpointing_enable()
                encoder.train()
        elif getattr(unet, "is_gradient_checkpointing", False):
            unet.disable_gradient_checkpointing()
            for encoder in model.text_encoders:
                encoder.gradient_checkpointing_disable()
        optimizer, self.optimizer_name = build_optimizer(settings.optimizer, network.param_groups(settings.unet_lr, settings.text_encoder_lr), [], on_cuda)
        self.prepared, self.optimizer = self.accelerator.prepare(network, optimizer)
        self.gamma = resolved_min_snr_gamma(settings)
        self.alphas = model.noise_scheduler.alphas_cumprod.to(device)
        self.caption = ", ".join(f"tag{i} 1girl solo smile red hair" for i in range(60))  # long enough for 225 tokens
        batch, reso = settings.train_batch_size, settings.resolution
        self.latent_shape = (batch, 4, reso // 8, reso // 8)
        # SDXL's size conditioning for square images at the training resolution.
        self.size_ids = torch.tensor([[reso, reso, 0, 0, reso, reso]] * batch, dtype=torch.float32) if family.key == "sdxl" else None

    def __call__(self) -> float:
        import torch

        from lora_gradio.engine.train.loop import training_step

        batch = self.settings.train_batch_size
        latents = torch.randn(*self.latent_shape)
        loss = training_step(self.accelerator, self.model, self.prepared, latents, [self.caption] * batch, [False] * batch, self.settings,
                             self.gamma, self.alphas, self.dtype, True, size_ids=self.size_ids)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def count_flops(self) -> int:
        """FLOPs of one step (forward, backward, optimizer), counted by torch.utils.flop_counter; takes the step."""
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self()
        return counter.get_total_flops()

    def free(self) -> None:
        for p in self.network.parameters():
            p.grad = None
        self.accelerator.free_memory()
        self.optimizer = self.prepared = None


def main() -> int:
    if "--tiny-loop" in sys.argv:  # whole training runs on a negligible model: the loop's host work per step
        from loop_overhead import main as loop_overhead_main

        return loop_overhead_main([arg for arg in sys.argv[1:] if arg != "--tiny-loop"])
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_cuda = torch.cuda.is_available()
    parser.add_argument("--family", choices=["sd", "sdxl"], default="sd")
    parser.add_argument("--resolution", type=int, default=None, help="default: 512 (SD) / 1024 (SDXL) on a GPU, 256 / 512 on a CPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 2 (SD) / 1 (SDXL) on a GPU, 1 on a CPU")
    parser.add_argument("--steps", type=int, default=20 if on_cuda else 2)
    parser.add_argument("--warmup", type=int, default=3 if on_cuda else 1)
    parser.add_argument("--precision", choices=["auto", "fp16", "bf16", "no"], default="auto")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--lora-type", default="LoRA")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU (default: from the table)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    args = parser.parse_args()
    xl = args.family == "sdxl"
    if args.resolution is None:
        args.resolution = (1024 if xl else 512) if on_cuda else (512 if xl else 256)
    if args.batch is None:
        args.batch = (1 if xl else 2) if on_cuda else 1

    precision = "no" if not on_cuda else (args.precision if args.precision != "auto" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16"))
    settings = benchmark_settings(args.family, args.batch, args.resolution, lora_type=args.lora_type, gradient_checkpointing=args.gradient_checkpointing)
    torch.manual_seed(0)
    model, tokenizer_name = build_random_model(args.family, device="cuda" if on_cuda else "cpu")
    step = BenchmarkStep(model, settings, precision, on_cuda)
    optimizer_name = step.optimizer_name

    def sync() -> None:
        if on_cuda:
            torch.cuda.synchronize()

    flops_per_step = step.count_flops()
    for _ in range(args.warmup):
        step()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    sync()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    if on_cuda:
        device_name = torch.cuda.get_device_name()
        peak_mem = torch.cuda.max_memory_allocated() / 2**30
    else:
        import resource

        device_name = "CPU"
        peak_mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    peak = args.peak_tflops or (peak_tflops(device_name) if on_cuda else None)
    achieved = flops_per_step / seconds / 1e12
    report = {
        "family": args.family, "device": device_name, "precision": precision, "resolution": args.resolution, "batch": args.batch,
        "optimizer": optimizer_name.rsplit(".", 1)[-1], "gradient_checkpointing": args.gradient_checkpointing,
        "seconds_per_step": round(seconds, 4), "samples_per_s": round(args.batch / seconds, 3),
        "tflop_per_sample": round(flops_per_step / args.batch / 1e12, 3), "achieved_tflops": round(achieved, 2),
        "mfu": round(achieved / peak, 4) if peak else None, "peak_memory_gib": round(peak_mem, 2),
        "tokenizer": tokenizer_name, "steps_timed": args.steps,
    }
    if args.json:
        print(json.dumps(report))
    else:
        mem_label = "peak GPU memory" if on_cuda else "peak process memory (RSS)"
        encoders = "both text encoders" if xl else "text encoder"
        print(f"{args.family.upper()} on {device_name}, {precision}, {args.resolution} px, batch {args.batch}, {report['optimizer']}, "
              f"LoRA {settings.network_dim}/{settings.network_alpha} on UNet + {encoders}")
        print(f"  {report['samples_per_s']} samples/s ({report['seconds_per_step']} s/step over {args.steps} steps)")
        print(f"  {report['tflop_per_sample']} TFLOP per sample; {report['achieved_tflops']} TFLOP/s achieved" + (f"; MFU {report['mfu']:.1%} of {peak} TFLOP/s" if peak else "; MFU: no peak known for this device (--peak-tflops)"))
        print(f"  {mem_label}: {report['peak_memory_gib']} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
