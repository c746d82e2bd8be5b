"""Write a diffusers SD1.x model as a single-file checkpoint in the original (LDM) layout.

Tests use it to prove that single-file loading works offline with configs we ship: the
tiny model goes out in the layout A1111 checkpoints have and must come back identical.
Block indices are derived from the UNet config, so it works for the tiny model and SD1.5.
"""

from __future__ import annotations

from pathlib import Path

RESNET_MAP = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("emb_layers.1", "time_emb_proj"), ("skip_connection", "conv_shortcut")]


def _unet_prefix_map(config: dict) -> list[tuple[str, str]]:
    """(ldm prefix, diffusers prefix) pairs for the UNet's blocks."""
    pairs: list[tuple[str, str]] = []
    lpb = config["layers_per_block"]
    down_types, up_types = config["down_block_types"], config["up_block_types"]
    n = len(down_types)
    for i, kind in enumerate(down_types):
        for j in range(lpb):
            pairs.append((f"input_blocks.{(lpb + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if kind.startswith("CrossAttn"):
                pairs.append((f"input_blocks.{(lpb + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            pairs.append((f"input_blocks.{(lpb + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
    for i, kind in enumerate(up_types):
        for j in range(lpb + 1):
            pairs.append((f"output_blocks.{(lpb + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if kind.startswith("CrossAttn"):
                pairs.append((f"output_blocks.{(lpb + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < n - 1:
            slot = 2 if kind.startswith("CrossAttn") else 1
            pairs.append((f"output_blocks.{(lpb + 1) * i + lpb}.{slot}.", f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    pairs += [(f"middle_block.{2 * j}.", f"mid_block.resnets.{j}.") for j in range(2)]
    return pairs


def unet_to_ldm(state: dict, config: dict) -> dict:
    fixed = {
        "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
        "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
    }
    prefixes = sorted(_unet_prefix_map(config), key=lambda p: -len(p[1]))
    out = {}
    for key, value in state.items():
        new = None
        for hf, ldm in fixed.items():
            if key.startswith(hf):
                new = ldm + key[len(hf):]
        if new is None:
            for ldm, hf in prefixes:
                if key.startswith(hf):
                    rest = key[len(hf):]
                    if ".resnets." in hf:
                        for ldm_name, hf_name in RESNET_MAP:
                            if rest.startswith(hf_name + "."):
                                rest = ldm_name + rest[len(hf_name):]
                    new = ldm + rest
                    break
        if new is None:
            raise KeyError(f"no LDM name for UNet key {key}")
        out["model.diffusion_model." + new] = value
    return out


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
