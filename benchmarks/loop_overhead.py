"""The training loop's own cost per step, with a model whose compute is negligible.

    python benchmarks/train_speed.py --tiny-loop                 # median ms per step over 3 runs
    python benchmarks/train_speed.py --tiny-loop --runs 5 --images 48 --json

Each run is a real `train_project` (caption shuffling, tokenizing, latent gathering, the step, the optimizer,
the scheduler, progress) on the tests' tiny SD with an even smaller UNet (4/4/8 channels, attention at the lowest level only), at 256 px, batch 2,
with one torch thread so that two runs on a shared machine compare. The time between steps is then mostly
the loop's host work, which a GPU would wait on whenever the loop synchronises. Reported: the median step
time of each run (the first epoch's first steps are left out) and the median over runs.

Two pieces of that host work are also timed apart, at real size: one AdamW step over the guide's SD 1.5 LoRA
(dim 16, UNet and text encoder: 528 tensors, 9.4M parameters; the base model on the meta device), fused and
one tensor at a time (`--no-fused` in the loop's own runs is not offered: the trainer always fuses AdamW);
and tokenizing one batch's captions at 225 tokens, which the loop now does on its feed thread.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TAGS = ["1girl", "solo", "smile", "red hair", "blue eyes", "dress", "outdoors", "sky", "long hair", "looking at viewer",
        "upper body", "simple background", "white background", "holding", "open mouth", "short sleeves"]


def build_micro_sd(folder: Path) -> Path:
    """The tests' tiny SD with a UNet of 4/4/8 channels: the same classes and files, next to no compute."""
    from diffusers import UNet2DConditionModel

    from tests.tiny_sd import TINY_TEXT_HIDDEN, build_tiny_sd

    build_tiny_sd(folder)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 4, 8), layers_per_block=1,
        # attention only at the lowest level (8x8 at 256 px): attention over 32x32 latents is what costs on a CPU
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_TEXT_HIDDEN, attention_head_dim=2, norm_num_groups=2,
    )
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return folder


def make_project(root: Path, model: Path, images: int, extra: "list[str]"):
    from PIL import Image

    from lora_gradio.engine.project import Projects
    from lora_gradio.engine.train.config import apply_overrides, load_settings, save_settings

    project = Projects(root).create("bench")
    rnd = random.Random(0)
    for i in range(images):
        Image.new("RGB", (256 + 64 * (i % 3), 256), tuple(rnd.randrange(256) for _ in range(3))).save(project.dataset_dir / f"{i}.png")
        (project.dataset_dir / f"{i}.txt").write_text("bench_char, " + ", ".join(rnd.sample(TAGS, 10)))
    settings = apply_overrides(load_settings(project), [
        f"training_model={model}", "resolution=256", "num_repeats=1", "how_many=3", "optimizer=AdamW", "network_dim=4",
        "network_alpha=2", "train_batch_size=2", "save_every_n_epochs=0", "lora_type=LoRA", *extra,
    ])
    save_settings(project, settings)
    return project


def one_run(model: Path, images: int, extra: "list[str]") -> "list[float]":
    """Seconds between consecutive steps of one whole training run (the first epoch's first 3 left out)."""
    from lora_gradio.engine.progress import Progress
    from lora_gradio.engine.train import loop

    class StepClock(Progress):
        def __init__(self):
            self.times: list[float] = []

        def update(self, done, total=None, message="", **data):
            if data.get("epoch") is not None:
                self.times.append(time.perf_counter())

        def log(self, message):
            pass

    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "Loras", model, images, extra)
        clock = StepClock()
        loop.train_project(project, progress=clock)
    return [b - a for a, b in zip(clock.times[3:], clock.times[4:])]


def optimizer_step_ms(fused: bool, steps: int = 20) -> float:
    """Median ms of one AdamW step over the guide's real-size SD 1.5 LoRA parameters (random gradients)."""
    import torch

    import memory_estimate as me
    from lora_gradio.engine.train.network import create_network

    network = create_network(me.build_unet("sd_v1", "meta"), [("lora_te", me.build_text_encoder("sd_v1", "meta"))], "LoRA", 16, 8, 8, 4,
                             train_text_encoder=True)
    params = [p for p in network.parameters() if p.requires_grad]
    for param in params:
        param.grad = torch.randn_like(param)
    optimizer = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if fused else {"foreach": False}))
    times = []
    for _ in range(steps + 2):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times[2:]) * 1000, 2)


def tokenize_ms(repeats: int = 50) -> float:
    """Median ms to tokenize one batch of 2 captions of ~60 tags into 225-token chunks (the real CLIP tokenizer when cached)."""
    from train_speed import tokenizers_for_benchmark

    from lora_gradio.engine.train.prompts import tokenize_prompts

    (tokenizer,), _ = tokenizers_for_benchmark("sd_v1")
    captions = [", ".join(random.Random(i).sample(TAGS * 4, 60)) for i in range(2)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokenize_prompts(tokenizer, captions, 225)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 3)


def measure(runs: int = 3, images: int = 32, extra: "list[str] | None" = None) -> dict:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_micro_sd(Path(tmp) / "micro")
        medians = []
        for _ in range(runs):
            intervals = one_run(model, images, list(extra or []))
            medians.append(statistics.median(intervals))
    return {
        "mode": "tiny-loop", "runs": runs, "steps_per_run": len(intervals) + 4, "images": images,
        "ms_per_step_each_run": [round(m * 1000, 2) for m in medians], "ms_per_step": round(statistics.median(medians) * 1000, 2),
        "adamw_step_ms_one_tensor_at_a_time": optimizer_step_ms(False), "adamw_step_ms_fused": optimizer_step_ms(True),
        "tokenize_batch_ms": tokenize_ms(),
    }


def main(argv: "list[str]") -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--set", action="append", default=[], help="a training setting for the runs, e.g. --set max_token_length=75")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = measure(args.runs, args.images, args.set)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"training loop on a negligible model: {report['ms_per_step']} ms per step (median of {args.runs} runs: "
              f"{report['ms_per_step_each_run']}; {report['steps_per_run']} steps each, batch 2, 256 px, one torch thread)")
        print(f"AdamW step over the guide's SD 1.5 LoRA (528 tensors): {report['adamw_step_ms_one_tensor_at_a_time']} ms one tensor at a time, "
              f"{report['adamw_step_ms_fused']} ms fused")
        print(f"tokenizing a batch of 2 captions at 225 tokens: {report['tokenize_batch_ms']} ms (on the feed thread, beside the step)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
