"""Write a diffusers SD1.x model as a single-file checkpoint in the original (LDM) layout.

Tests use it to prove that single-file loading works offline with configs we ship: the
tiny model goes out in the layout A1111 checkpoints have and must come back identical.
Block indices are derived from the UNet config, so it works for the tiny model and SD1.5;
tests/tiny_sdxl.py reuses the UNet and VAE parts for SDXL files.
"""

from __future__ import annotations

from pathlib import Path

from lora_gradio.engine.train.sai_layout import unet_state_dict_to_ldm


def unet_to_ldm(state: dict, config: dict) -> dict:
    """The UNet's state dict under `model.diffusion_model.` in the LDM layout (see engine/train/sai_layout.py)."""
    return unet_state_dict_to_ldm(state, config)


def vae_to_ldm(state: dict, n_blocks: int, lpb: int) -> dict:
    pairs = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(n_blocks):
        for j in range(lpb):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < n_blocks - 1:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            pairs.append((f"up.{n_blocks - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(lpb + 1):
            pairs.append((f"decoder.up.{n_blocks - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    pairs += [(f"mid.block_{i + 1}.", f"mid_block.resnets.{i}.") for i in range(2)]
    attention = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]
    out = {}
    for key, value in state.items():
        new = key
        for ldm, hf in pairs:
            new = new.replace(hf, ldm)
        if "attn_1" in new:
            for ldm, hf in attention:
                new = new.replace(hf, ldm)
            if new.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")) and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # LDM keeps these as 1x1 convs
        out["first_stage_model." + new] = value
    return out


def write_ldm_checkpoint(diffusers_folder: Path, target: Path) -> Path:
    """Save the diffusers model in `diffusers_folder` as one LDM-layout .safetensors file."""
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(diffusers_folder / "unet")
    vae = AutoencoderKL.from_pretrained(diffusers_folder / "vae")
    text = CLIPTextModel.from_pretrained(diffusers_folder / "text_encoder")
    vae_config = json.loads((diffusers_folder / "vae" / "config.json").read_text())
    state = unet_to_ldm(unet.state_dict(), dict(unet.config))
    state.update(vae_to_ldm(vae.state_dict(), len(vae_config["block_out_channels"]), vae_config["layers_per_block"]))
    for key, value in text.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        state["cond_stage_model.transformer." + key] = value
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target
