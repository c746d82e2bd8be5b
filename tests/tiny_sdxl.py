"""A tiny SDXL in the real formats, built offline for tests: a diffusers folder and single files.

Same classes and layout as the real SDXL base (UNet2DConditionModel with the "text_time" size
embedding, AutoencoderKL, CLIPTextModel + CLIPTextModelWithProjection, two CLIP tokenizers, Euler
scheduler), a few hundred thousand parameters, so SDXL code paths run on a 2-core CPU in seconds.
`write_sdxl_single_file` writes it the way Illustrious/NoobAI/A1111 files are stored.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from tests.ldm_checkpoint import vae_to_ldm
from tests.tiny_sd import _vocab_size, tiny_vae, write_tiny_tokenizer

# The two text encoders must differ in width: diffusers' single-file loader tells CLIP-L from
# bigG by comparing each embedding's width with the encoder it is building (768 vs 1280 for real).
TE1_HIDDEN = 32
TE2_HIDDEN = 48
TE2_PROJECTION = 24  # != TE2_HIDDEN, so a text_projection stored untransposed cannot load
ADD_TIME_DIM = 8  # real SDXL: 256 per size number, 6 numbers

SDXL_CONFIGS = Path(__file__).resolve().parents[1] / "lora_gradio" / "engine" / "train" / "model_configs" / "sdxl"


def tiny_sdxl_components(seed: int = 0):
    """(unet, vae, text_encoder, text_encoder_2) with fixed random weights."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = _vocab_size()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        # Like SDXL: no attention on the first level, then cross-attention with deeper transformers.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),  # as in SDXL's config, this is the number of heads per level
        use_linear_projection=True,
        cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADD_TIME_DIM,
        projection_class_embeddings_input_dim=6 * ADD_TIME_DIM + TE2_PROJECTION,
        norm_num_groups=8,
    )
    vae = tiny_vae(scaling_factor=0.13025)
    special_ids = {"bos_token_id": vocab - 2, "eos_token_id": vocab - 1}
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=TE1_HIDDEN, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=TE1_HIDDEN, pad_token_id=vocab - 1, **special_ids,
    ))
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=vocab, hidden_size=TE2_HIDDEN, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=TE2_PROJECTION, pad_token_id=_pad_id(), **special_ids,
    ))
    return unet, vae, text_encoder, text_encoder_2


@lru_cache(maxsize=None)
def _pad_id() -> int:
    """The id of tokenizer_2's pad token "!" (0, as in the real vocabulary)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_tokenizer(Path(tmp))
        return json.loads((Path(tmp) / "vocab.json").read_text())["!"]


def write_tiny_tokenizer_2(folder: Path) -> None:
    """The tiny tokenizer, padding with "!" as the real SDXL tokenizer_2 does (CLIP-L's pads with the EOS)."""
    write_tiny_tokenizer(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        settings = json.loads((folder / name).read_text())
        settings["pad_token"] = "!"
        (folder / name).write_text(json.dumps(settings))


def build_tiny_sdxl(folder: Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a tiny SDXL in diffusers' folder layout (StableDiffusionXLPipeline.save_pretrained) and return it."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    unet, vae, text_encoder, text_encoder_2 = tiny_sdxl_components(seed)
    write_tiny_tokenizer(folder / "tokenizer")
    write_tiny_tokenizer_2(folder / "tokenizer_2")
    scheduler_config = json.loads((SDXL_CONFIGS / "scheduler" / "scheduler_config.json").read_text())
    scheduler = EulerDiscreteScheduler.from_config(scheduler_config, prediction_type=prediction_type)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def clip_to_open_clip(state: dict) -> dict:
    """A transformers CLIPTextModelWithProjection state dict in OpenCLIP's layout (SDXL's bigG encoder
    as SAI files store it): fused q/k/v `in_proj`, `resblocks`, `ln_*`, and `text_projection` as the
    matrix that multiplies from the right (the Linear weight transposed)."""
    import torch

    renames = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
               ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]
    fixed = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
    }
    layer_prefix = "text_model.encoder.layers."
    out, qkv = {}, {}
    for key, value in state.items():
        if key in fixed:
            out[fixed[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif key.startswith(layer_prefix):
            layer, rest = key[len(layer_prefix):].split(".", 1)
            block = f"transformer.resblocks.{layer}."
            projection = rest.removeprefix("self_attn.").split("_proj.")
            if rest.startswith("self_attn.") and projection[0] in ("q", "k", "v"):
                qkv.setdefault((block, projection[1]), {})[projection[0]] = value
                continue
            for old, new in renames:
                rest = rest.replace(old, new)
            out[block + rest] = value
        elif key.endswith("position_ids"):
            continue  # a buffer, not a weight (older transformers saved it)
        else:
            raise KeyError(f"no OpenCLIP name for text encoder key {key}")
    for (block, kind), parts in qkv.items():
        out[f"{block}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def write_sdxl_single_file(diffusers_folder: Path, target: Path, v_pred: bool = False) -> Path:
    """Save the diffusers SDXL in `diffusers_folder` as one .safetensors file in the original SAI layout.

    UNet under `model.diffusion_model.`, VAE under `first_stage_model.`, CLIP-L under
    `conditioner.embedders.0.transformer.text_model.`, bigG under `conditioner.embedders.1.model.`
    (OpenCLIP layout); `v_pred` adds the empty `v_pred` tensor that NoobAI's v-prediction files carry.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from lora_gradio.engine.train.sai_layout import unet_state_dict_to_ldm

    unet = UNet2DConditionModel.from_pretrained(diffusers_folder / "unet")
    vae = AutoencoderKL.from_pretrained(diffusers_folder / "vae")
    text_encoder = CLIPTextModel.from_pretrained(diffusers_folder / "text_encoder")
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(diffusers_folder / "text_encoder_2")
    state = unet_state_dict_to_ldm(unet.state_dict(), dict(unet.config))
    state.update(vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels), vae.config.layers_per_block))
    for key, value in text_encoder.state_dict().items():
        # transformers >= 5.6 has no `.text_model` level in CLIPTextModel; the files always do.
        key = key if key.startswith("text_model.") else "text_model." + key
        state["conditioner.embedders.0.transformer." + key] = value
    for key, value in clip_to_open_clip(text_encoder_2.state_dict()).items():
        state["conditioner.embedders.1.model." + key] = value
    if v_pred:
        state["v_pred"] = torch.tensor([])
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target
