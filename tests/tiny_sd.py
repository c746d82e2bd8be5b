"""A tiny Stable Diffusion in the real diffusers formats, built offline for tests.

Same classes and file layout as a real SD1.x model (UNet2DConditionModel, AutoencoderKL with
an 8x downscale, CLIPTextModel, CLIPTokenizer, DDPM scheduler), with a few thousand
parameters, so every loading and training code path runs on a 2-core CPU in seconds.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

TINY_TEXT_HIDDEN = 32
TINY_WORDS = ["tiny_char", "1girl", "solo", "smile", "red", "blue", "green", "hair", "eyes", "dress", "outdoors", "sky", "a", "photo", "of"]


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte-to-printable-character table (every byte gets a visible stand-in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer whose merges spell a few whole words, plus every single character."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in TINY_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            a, b = pieces[0], pieces[1]
            merge = f"{a} {b}"
            if merge not in merges:
                merges.append(merge)
                vocab_list.append(a + b)
            pieces = [a + b] + pieces[2:]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {}
    for token in vocab_list:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))


def tiny_vae(scaling_factor: float = 0.18215):
    """A tiny AutoencoderKL with the real 8x downscale (SDXL's differs only in its scaling factor).
    Its weights come from torch's current random state."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def tiny_components(seed: int = 0):
    """(unet, vae, text_config): the UNet and VAE with fixed random weights, and the text
    encoder's config (its vocabulary size is set from the tokenizer in build_tiny_sd)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = tiny_vae()
    text_config = CLIPTextConfig(
        vocab_size=_vocab_size(),
        hidden_size=TINY_TEXT_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=3,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=TINY_TEXT_HIDDEN,
    )
    return unet, vae, text_config


@lru_cache(maxsize=None)
def _vocab_size() -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer(Path(tmp))
        return len(json.loads((Path(tmp) / "vocab.json").read_text()))


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """Write a tiny SD1.x in diffusers' folder layout to `folder` and return it."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    unet, vae, text_config = tiny_components(seed)
    vocab = _vocab_size()
    text_config.vocab_size = vocab
    text_config.bos_token_id = vocab - 2
    text_config.eos_token_id = vocab - 1
    text_config.pad_token_id = vocab - 1
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(text_config)
    write_tiny_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
