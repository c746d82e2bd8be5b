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


def sample_images(model: Any, prompts: list[str], folder: Path, stem: str, resolution: int, seed: int, device: Any, clip_skip: int = 1, max_token_length: int = 75) -> list[Path]:
    """Render each prompt once with the model as it is now; return the saved PNG paths.

    Prompts are encoded by the training code (long prompts, clip skip), so samples see the
    text exactly as training does; diffusers' own clip_skip needs `.text_model`, which
    transformers 5 no longer has.
    """
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    from lora_gradio.engine.train.prompts import encode_prompts

    scheduler = EulerAncestralDiscreteScheduler.from_config(model.noise_scheduler.config)
    pipe = StableDiffusionPipeline(
        unet=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for index, text in enumerate(prompts):
        sample = parse_prompt(text, resolution, seed)
        generator = torch.Generator(device="cpu").manual_seed(sample.seed)
        with torch.no_grad():
            embeds = encode_prompts(model.tokenizer, model.text_encoder, [sample.prompt, sample.negative], max_token_length, clip_skip, device=device)
            embeds = embeds.to(model.unet.dtype)
            latents = pipe(
                prompt_embeds=embeds[:1], negative_prompt_embeds=embeds[1:], width=sample.width, height=sample.height,
                num_inference_steps=sample.steps, guidance_scale=sample.scale, generator=generator, output_type="latent",
            ).images
            # Decoded here: the UNet runs in 16 bits while the VAE stays in fp32, and the pipeline
            # would hand the VAE 16-bit latents.
            decoded = model.vae.decode(latents.to(model.vae.dtype) / model.vae.config.scaling_factor).sample
            image = pipe.image_processor.postprocess(decoded, output_type="pil")[0]
        target = folder / f"{stem}-{index:02d}.png"
        with atomic_path(target) as tmp:
            image.save(tmp, format="PNG")
        saved.append(target)
    return saved
