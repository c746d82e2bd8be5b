"""Sample images while training, so a person can see whether the LoRA is "cooking".

Prompts use kohya's inline options: `1girl, smile --n lowres, bad hands --w 512 --h 768
--s 20 --l 7 --d 42` (negative prompt, width, height, steps, CFG scale, seed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_gradio.engine.fsutil import atomic_path


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    scale: float = 7.0
    seed: int = 42


def parse_prompt(text: str, resolution: int, seed: int) -> SamplePrompt:
    parts = re.split(r"\s--(?=[nwhsld]\s)", " " + text.strip())
    sample = SamplePrompt(prompt=parts[0].strip(), width=resolution, height=resolution, seed=seed)
    for part in parts[1:]:
        key, _, value = part.partition(" ")
        value = value.strip()
        try:
            if key == "n":
                sample.negative = value
            elif key == "w":
                sample.width = max(64, int(value) // 8 * 8)
            elif key == "h":
                sample.height = max(64, int(value) // 8 * 8)
            elif key == "s":
                sample.steps = max(1, min(150, int(value)))
            elif key == "l":
                sample.scale = float(value)
            elif key == "d":
                sample.seed = int(value)
        except ValueError:
            continue  # a typo in one option must not stop training
    return sample


# kohya's inline options: (name, allowed range, what it sets). Sizes must also be multiples of 8.
SAMPLE_OPTION_RANGES = {"w": (64, 2048, "width"), "h": (64, 2048, "height"), "s": (1, 150, "steps"), "l": (0, 30, "CFG scale"),
                        "d": (0, 2**32 - 1, "seed")}


def check_sample_prompts(prompts: list[str]) -> None:
    """Refuse, before a run starts, sample prompt options that are not numbers or out of range (the run
    itself would round or skip them silently), with the range of each."""
    from lora_gradio.engine.errors import UserError

    problems = []
    for number, text in enumerate(prompts, 1):
        parts = re.split(r"\s--(?=[nwhsld]\s)", " " + text.strip())
        for part in parts[1:]:
            key, _, value = part.partition(" ")
            if key not in SAMPLE_OPTION_RANGES:
                continue
            low, high, label = SAMPLE_OPTION_RANGES[key]
            try:
                amount = float(value.strip())
            except ValueError:
                problems.append(f"prompt {number}: --{key} {value.strip()!r} is not a number ({label}, {low} to {high})")
                continue
            if not low <= amount <= high or (key in "whsd" and not amount.is_integer()):
                problems.append(f"prompt {number}: --{key} {value.strip()} is out of range ({label}: {low} to {high})")
            elif key in "wh" and int(amount) % 8:
                problems.append(f"prompt {number}: --{key} {int(amount)} is not a multiple of 8 ({label})")
    if problems:
        raise UserError("sample_prompts: " + "; ".join(problems) + ". Fix these options (kohya's --w --h --s --l --d).")


def sampling_pipeline(model: Any) -> Any:
    """A diffusers pipeline of the model's family with Euler a, set for the model's prediction type
    (v-prediction with zero terminal SNR samples from the last timestep: "trailing" spacing)."""
    from diffusers import EulerAncestralDiscreteScheduler

    config = dict(model.noise_scheduler.config)
    if model.zero_terminal_snr:
        config["timestep_spacing"] = "trailing"
    scheduler = EulerAncestralDiscreteScheduler.from_config(config)
    pipe = model.family.pipeline(model, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(model: Any, pipe: Any, prompt: str, negative: str, max_token_length: int, clip_skip: int, device: Any, **options: Any) -> list:
    """PIL images of `prompt`, its text encoded by the training code (long prompts, clip skip, SDXL's two
    encoders) so samples see the text as training does; `options` go to the pipeline (size, steps, ...).
    The VAE decodes in its own dtype (fp32; SDXL's VAE overflows in fp16) while the UNet may run in 16 bits."""
    import torch

    with torch.no_grad():
        both = model.family.encode(model, [prompt, negative], max_token_length, clip_skip, device).to(dtype=model.unet.dtype)
        positive, negative_rows = both.rows()
        latents = pipe(**model.family.pipeline_embeds(positive, negative_rows), output_type="latent", **options).images
        decoded = model.vae.decode(latents.to(model.vae.dtype) / model.vae.config.scaling_factor).sample
        return pipe.image_processor.postprocess(decoded, output_type="pil")


def sample_images(model: Any, prompts: list[str], folder: Path, stem: str, resolution: int, seed: int, device: Any, clip_skip: int = 1, max_token_length: int = 75) -> list[Path]:
    """Render each prompt once with the model as it is now; return the saved PNG paths."""
    import torch

    pipe = sampling_pipeline(model)
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for index, text in enumerate(prompts):
        sample = parse_prompt(text, resolution, seed)
        generator = torch.Generator(device="cpu").manual_seed(sample.seed)
        image = generate(model, pipe, sample.prompt, sample.negative, max_token_length, clip_skip, device, width=sample.width, height=sample.height,
                         num_inference_steps=sample.steps, guidance_scale=sample.scale, generator=generator)[0]
        target = folder / f"{stem}-{index:02d}.png"
        with atomic_path(target) as tmp:
            image.save(tmp, format="PNG")
        saved.append(target)
    return saved
