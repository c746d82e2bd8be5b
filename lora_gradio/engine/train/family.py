"""Base-model families: what differs between SD 1.x/2.x and SDXL, behind one small interface.

The two differ in their text encoders, how the UNet is conditioned, the LoRA's module names, the
metadata, the defaults and the memory they need. The training loop, sampling, compare, saving and the
checks ask `model.family` (or `family_named(key)`) instead of branching on the model:

- `tokenize(model, captions, max_token_length)` -> token ids per text encoder (the host's part, done ahead);
- `encode(model, captions, max_token_length, clip_skip, device, token_ids=...)` -> `Conditioning` (states, pooled);
- `unet_kwargs(conditioning, size_ids)` -> the extra arguments of the UNet call;
- `size_ids(pairs)` -> SDXL's size conditioning per image (None for SD 1.x);
- `network_text_encoders(model)` and `lora_unet_name(model)` -> what the LoRA wraps and how it is named;
- `base_model_version(version, v_pred)` -> kohya's `ss_base_model_version`;
- `pipeline(model, scheduler)` and `pipeline_embeds(positive, negative)` -> a diffusers pipeline for samples;
- `defaults`, `min_resolution`, `memory_version` -> settings and the memory check.
No torch at import: the page imports this to read the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from lora_gradio.engine.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from lora_gradio.engine.train.data import ImageItem


@dataclass
class Conditioning:
    """What the text encoders give the UNet for a batch: states [B, tokens, dim] and, for SDXL, the
    pooled text vector [B, dim]."""

    hidden: "torch.Tensor"
    pooled: "Optional[torch.Tensor]" = None

    def to(self, device: Any = None, dtype: Any = None, non_blocking: bool = False) -> "Conditioning":
        """Moved/cast; `non_blocking` only for copies from the CPU to the GPU (a copy back must be waited for)."""
        pooled = self.pooled.to(device=device, dtype=dtype, non_blocking=non_blocking) if self.pooled is not None else None
        return Conditioning(self.hidden.to(device=device, dtype=dtype, non_blocking=non_blocking), pooled)

    def pin(self) -> "Conditioning":
        """In page-locked memory, so that its copy to the GPU needs no synchronisation."""
        return Conditioning(self.hidden.pin_memory(), self.pooled.pin_memory() if self.pooled is not None else None)

    def rows(self) -> List["Conditioning"]:
        """One Conditioning per batch row (for caching per caption)."""
        pooled = self.pooled if self.pooled is not None else [None] * self.hidden.shape[0]
        return [Conditioning(h.unsqueeze(0), p.unsqueeze(0) if p is not None else None) for h, p in zip(self.hidden, pooled)]

    @staticmethod
    def stack(parts: Sequence["Conditioning"]) -> "Conditioning":
        import torch

        pooled = torch.cat([p.pooled for p in parts]) if parts[0].pooled is not None else None
        return Conditioning(torch.cat([p.hidden for p in parts]), pooled)


@dataclass(frozen=True)
class ModelFamily:
    """The SD 1.x/2.x behaviour; `StableDiffusionXL` overrides what SDXL does differently."""

    key: str = "sd"
    label: str = "SD 1.x/2.x"
    min_resolution: int = 256
    native_resolution: int = 512
    memory_version: str = "sd_v1"
    uses_clip_skip: bool = True
    # Settings whose default differs from the SD 1.5 guide's (the settings model holds those).
    defaults: Dict[str, Any] = field(default_factory=dict)

    # Text ------------------------------------------------------------------------------------------

    def text_encoders(self, model: Any) -> List[Any]:
        return list(model.text_encoders)

    def network_text_encoders(self, model: Any) -> List[Tuple[str, Any]]:
        """(kohya prefix, encoder) for each text encoder the LoRA can train."""
        return [("lora_te", model.text_encoders[0])]

    def tokenize(self, model: Any, captions: Sequence[str], max_token_length: int) -> Tuple["torch.Tensor", ...]:
        """Token ids [B, chunks, 77] for each text encoder: the host's half of `encode`, done ahead of the step."""
        from lora_gradio.engine.train.prompts import tokenize_prompts

        return tuple(tokenize_prompts(tokenizer, captions, max_token_length) for tokenizer in model.tokenizers)

    def encode(self, model: Any, captions: Sequence[str], max_token_length: int, clip_skip: int, device: Any,
               weighted: bool = False, token_ids: "Optional[Tuple[torch.Tensor, ...]]" = None) -> Conditioning:
        """The text encoders' conditioning; `token_ids` from `tokenize` when the captions were tokenized already."""
        from lora_gradio.engine.train.prompts import encode_prompts, encode_token_ids
        from lora_gradio.engine.train.weighting import encode_weighted_prompts

        if token_ids is not None and not weighted:
            return Conditioning(encode_token_ids(model.text_encoders[0], token_ids[0], max_token_length, clip_skip, device))
        encode = encode_weighted_prompts if weighted else encode_prompts
        return Conditioning(encode(model.tokenizers[0], model.text_encoders[0], captions, max_token_length, clip_skip, device=device))

    # UNet ------------------------------------------------------------------------------------------

    def size_ids(self, pairs: Sequence[Tuple["ImageItem", bool]]) -> "Optional[torch.Tensor]":
        return None

    def unet_kwargs(self, conditioning: Conditioning, size_ids: "Optional[torch.Tensor]") -> Dict[str, Any]:
        return {}

    def lora_unet_name(self, model: Any) -> Optional[Callable[[str], str]]:
        """How a UNet module path becomes a LoRA name (None: kohya's diffusers-path rule)."""
        return None

    # Files -----------------------------------------------------------------------------------------

    def base_model_version(self, version: str, v_pred: bool) -> str:
        return version

    # Sampling --------------------------------------------------------------------------------------

    def pipeline(self, model: Any, scheduler: Any) -> Any:
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            unet=model.unet, vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0],
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )

    def pipeline_embeds(self, positive: Conditioning, negative: Conditioning) -> Dict[str, Any]:
        return {"prompt_embeds": positive.hidden, "negative_prompt_embeds": negative.hidden}


@dataclass(frozen=True)
class StableDiffusionXL(ModelFamily):
    key: str = "sdxl"
    label: str = "SDXL"
    min_resolution: int = 512
    native_resolution: int = 1024
    memory_version: str = "sdxl"
    uses_clip_skip: bool = False  # kohya's SDXL always takes the penultimate layers

    def network_text_encoders(self, model: Any) -> List[Tuple[str, Any]]:
        return [("lora_te1", model.text_encoders[0]), ("lora_te2", model.text_encoders[1])]

    def encode(self, model: Any, captions: Sequence[str], max_token_length: int, clip_skip: int, device: Any,
               weighted: bool = False, token_ids: "Optional[Tuple[torch.Tensor, ...]]" = None) -> Conditioning:
        from lora_gradio.engine.train.prompts import encode_sdxl_prompts

        if weighted:
            raise UserError("weighted_captions works with SD 1.x models only for now: turn it off for an SDXL base.")
        hidden, pooled = encode_sdxl_prompts(model.tokenizers, model.text_encoders, captions, max_token_length, device=device, token_ids=token_ids)
        return Conditioning(hidden, pooled)

    def size_ids(self, pairs: Sequence[Tuple["ImageItem", bool]]) -> "torch.Tensor":
        """Per image: original size (h, w), crop offset (top, left) after scaling, target bucket (h, w),
        as kohya's dataset records them for SDXL (the crop mirrored when the image is flipped)."""
        import torch

        from lora_gradio.engine.train.data import resized_size

        rows = []
        for item, flip in pairs:
            width, height = item.size if item.size != (0, 0) else item.bucket
            bucket_w, bucket_h = item.bucket
            scaled_w, scaled_h = resized_size((width, height), item.bucket)
            left, top = (scaled_w - bucket_w) // 2, (scaled_h - bucket_h) // 2
            if flip:
                left = scaled_w - bucket_w - left
            rows.append([height, width, top, left, bucket_h, bucket_w])
        return torch.tensor(rows, dtype=torch.float32)

    def unet_kwargs(self, conditioning: Conditioning, size_ids: "Optional[torch.Tensor]") -> Dict[str, Any]:
        pooled = conditioning.pooled
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": size_ids.to(pooled.device, pooled.dtype, non_blocking=True)}}

    def lora_unet_name(self, model: Any) -> Callable[[str], str]:
        from lora_gradio.engine.train.sai_layout import lora_unet_name

        config = dict(model.unet.config)
        return lambda path: lora_unet_name(path, config)

    def base_model_version(self, version: str, v_pred: bool) -> str:
        return "sdxl_base_v1-0"

    def pipeline(self, model: Any, scheduler: Any) -> Any:
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(
            unet=model.unet, vae=model.vae, text_encoder=model.text_encoders[0], text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], scheduler=scheduler,
            force_zeros_for_empty_prompt=False,
        )

    def pipeline_embeds(self, positive: Conditioning, negative: Conditioning) -> Dict[str, Any]:
        return {
            "prompt_embeds": positive.hidden, "negative_prompt_embeds": negative.hidden,
            "pooled_prompt_embeds": positive.pooled, "negative_pooled_prompt_embeds": negative.pooled,
        }


# The XL notebook's settings (hollowstrawberry's Lora_Trainer_XL), where they differ from the SD 1.5 guide's.
SDXL_DEFAULTS: Dict[str, Any] = {
    "resolution": 1024, "max_bucket_reso": 4096, "num_repeats": 2, "how_many": 10, "preferred_unit": "Epochs",
    "train_batch_size": 4, "unet_lr": 3e-4, "text_encoder_lr": 6e-5, "min_snr_gamma": 8.0,
    "multires_noise_iterations": 6, "multires_noise_discount": 0.3, "network_dim": 8, "network_alpha": 4,
    "optimizer": "AdamW8bit", "optimizer_args": ["weight_decay=0.1", "betas=[0.9,0.99]"], "mixed_precision": "full_fp16",
    "zero_terminal_snr": True, "scale_v_pred_loss": True, "gradient_checkpointing": True,
}

SD = ModelFamily()
SDXL = StableDiffusionXL(defaults=SDXL_DEFAULTS)
FAMILIES = {family.key: family for family in (SD, SDXL)}


def family_named(key: str) -> ModelFamily:
    try:
        return FAMILIES[key]
    except KeyError:
        raise UserError(f"Unknown model family {key!r}: use one of {', '.join(FAMILIES)}.") from None
