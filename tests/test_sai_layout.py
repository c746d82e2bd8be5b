"""The diffusers <-> SAI/LDM UNet naming (engine/train/sai_layout.py), checked three independent ways:
a tiny SDXL written as an Illustrious/NoobAI-style single file loads back identical through diffusers'
own single-file loader; diffusers' LDM-to-diffusers conversion undoes the mapping on the real-size
UNets (built on the meta device, nothing downloaded); and kohya's SDXL LoRA names, enumerated from the
SAI UNet's architecture, are exactly what the mapping gives for the modules a LoRA/LoCon targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lora_gradio.engine.train.sai_layout import lora_unet_name, unet_path_to_ldm, unet_state_dict_to_ldm

CONFIGS = Path(__file__).resolve().parents[1] / "lora_gradio" / "engine" / "train" / "model_configs"


def unet_config(name: str) -> dict:
    return json.loads((CONFIGS / name / "unet" / "config.json").read_text())


@pytest.fixture(scope="module")
def sdxl_config():
    return unet_config("sdxl")


@pytest.mark.parametrize("path, ldm", [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
    ("mid_block.attentions.0.proj_in", "middle_block.1.proj_in"),
    ("up_blocks.0.attentions.2.proj_out", "output_blocks.2.1.proj_out"),
    ("down_blocks.0.resnets.0.norm1", "input_blocks.1.0.in_layers.0"),
    ("down_blocks.0.resnets.0.conv1", "input_blocks.1.0.in_layers.2"),
    ("down_blocks.0.resnets.0.time_emb_proj", "input_blocks.1.0.emb_layers.1"),
    ("down_blocks.0.resnets.0.norm2", "input_blocks.1.0.out_layers.0"),
    ("down_blocks.0.resnets.0.conv2", "input_blocks.1.0.out_layers.3"),
    ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
    ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
    ("down_blocks.1.downsamplers.0.conv.weight", "input_blocks.6.0.op.weight"),
    ("mid_block.resnets.1.conv2.bias", "middle_block.2.out_layers.3.bias"),
    ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
    ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
    ("up_blocks.2.resnets.2.conv_shortcut.weight", "output_blocks.8.0.skip_connection.weight"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2.weight", "time_embed.2.weight"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2.bias", "label_emb.0.2.bias"),
    ("conv_in", "input_blocks.0.0"),
    ("conv_norm_out.weight", "out.0.weight"),
    ("conv_out", "out.2"),
])
def test_sdxl_paths(sdxl_config, path, ldm):
    assert unet_path_to_ldm(path, sdxl_config) == ldm


def test_unmapped_paths_raise_key_error_with_the_path(sdxl_config):
    for path in ("down_blocks.0", "down_blocks.0.resnets.0.nonlinearity", "down_blocks.0.attentions.0.proj_in", "nope.weight"):
        with pytest.raises(KeyError) as caught:
            unet_path_to_ldm(path, sdxl_config)
        assert caught.value.args == (path,)


def test_state_dict_keys_and_lora_names(sdxl_config):
    state = {"conv_in.weight": 1, "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2.bias": 2}
    assert unet_state_dict_to_ldm(state, sdxl_config) == {
        "model.diffusion_model.input_blocks.0.0.weight": 1,
        "model.diffusion_model.input_blocks.8.1.transformer_blocks.9.ff.net.2.bias": 2,
    }
    assert lora_unet_name("up_blocks.0.upsamplers.0.conv", sdxl_config) == "lora_unet_output_blocks_2_2_conv"


# --- A tiny SDXL as a single file, loaded back by diffusers ---------------------------------------

@pytest.mark.parametrize("v_pred", [False, True], ids=["eps", "v_pred"])
def test_tiny_sdxl_single_file_loads_back_identical_offline(request, tiny_sdxl_dir, tmp_path, v_pred):
    """As the tool loads single files: configs only (no weights, no tokenizers) plus the tokenizers."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from safetensors import safe_open
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from lora_gradio.engine.train import models

    single = request.getfixturevalue("tiny_sdxl_vpred_file" if v_pred else "tiny_sdxl_file")
    with safe_open(str(single), "pt") as f:
        assert ("v_pred" in f.keys()) == v_pred
    info = models.inspect_checkpoint(single)
    assert (info.version, info.v_pred) == ("sdxl", v_pred)

    configs = tmp_path / "configs"
    for source in tiny_sdxl_dir.rglob("*.json"):
        if not source.parent.name.startswith("tokenizer"):
            (configs / source.relative_to(tiny_sdxl_dir)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, configs / source.relative_to(tiny_sdxl_dir))
    tokenizers = [CLIPTokenizer.from_pretrained(tiny_sdxl_dir / sub) for sub in ("tokenizer", "tokenizer_2")]
    pipe = StableDiffusionXLPipeline.from_single_file(
        str(single), config=str(configs), local_files_only=True, tokenizer=tokenizers[0], tokenizer_2=tokenizers[1],
    )
    assert pipe.tokenizer_2.pad_token == "!" and pipe.vae.config.scaling_factor == 0.13025
    originals = {
        "unet": UNet2DConditionModel.from_pretrained(tiny_sdxl_dir / "unet"),
        "vae": AutoencoderKL.from_pretrained(tiny_sdxl_dir / "vae"),
        "text_encoder": CLIPTextModel.from_pretrained(tiny_sdxl_dir / "text_encoder"),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(tiny_sdxl_dir / "text_encoder_2"),
    }
    for name, original in originals.items():
        expected, loaded = original.state_dict(), getattr(pipe, name).state_dict()
        assert set(expected) == set(loaded), name
        different = [k for k in expected if not torch.equal(expected[k], loaded[k])]
        assert not different, (name, different[:5])


# --- diffusers' own conversion undoes the mapping on the real architectures ------------------------

def meta_unet(config: dict):
    """The full-size UNet without memory or weights (parameter names and shapes only)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


@pytest.mark.parametrize("name", ["sdxl", "sd15", "sd2"])
def test_diffusers_converts_the_ldm_names_back(name):
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    config = unet_config(name)
    state = meta_unet(config).state_dict()
    checkpoint = unet_state_dict_to_ldm(state, config)  # raises KeyError for any unmapped parameter
    back = convert_ldm_unet_checkpoint(checkpoint, config)
    assert set(back) == set(state)
    assert all(back[key] is state[key] for key in state)  # each name came back to its own tensor


# --- kohya's LoRA names, from the SAI UNet's architecture ------------------------------------------

def sai_lora_targets(model_channels: int, channel_mult: tuple, num_res_blocks: int, depths: tuple, mid_depth: int) -> tuple[set, set]:
    """(LoRA, LoCon-only) module names of kohya's networks.lora on the SAI UNet (sgm openaimodel.UNetModel,
    kohya's sdxl_original_unet), built from its own parameters: `depths[level]` transformer blocks in each
    level's SpatialTransformers (0 = no attention at that level), `mid_depth` in the middle block's."""
    transformer, conv = [], []

    def spatial_transformer(prefix: str, depth: int) -> None:
        transformer.extend([f"{prefix}.proj_in", f"{prefix}.proj_out"])
        for t in range(depth):
            block = f"{prefix}.transformer_blocks.{t}"
            for attn in ("attn1", "attn2"):
                transformer.extend(f"{block}.{attn}.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0"))
            transformer.extend([f"{block}.ff.net.0.proj", f"{block}.ff.net.2"])

    def res_block(prefix: str, channels_in: int, channels_out: int) -> None:
        conv.extend(f"{prefix}.{p}" for p in ("in_layers.2", "emb_layers.1", "out_layers.3"))
        if channels_in != channels_out:
            conv.append(f"{prefix}.skip_connection")  # a 1x1 conv; else an Identity

    channels = model_channels
    skip_channels = [channels]  # input_blocks.0 is conv_in
    index = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            res_block(f"input_blocks.{index}.0", channels, mult * model_channels)
            channels = mult * model_channels
            if depths[level]:
                spatial_transformer(f"input_blocks.{index}.1", depths[level])
            skip_channels.append(channels)
            index += 1
        if level != len(channel_mult) - 1:
            conv.append(f"input_blocks.{index}.0.op")  # Downsample, alone in its entry
            skip_channels.append(channels)
            index += 1
    res_block("middle_block.0", channels, channels)
    spatial_transformer("middle_block.1", mid_depth)
    res_block("middle_block.2", channels, channels)
    index = 0
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            res_block(f"output_blocks.{index}.0", channels + skip_channels.pop(), mult * model_channels)
            channels = mult * model_channels
            slot = 1
            if depths[level]:
                spatial_transformer(f"output_blocks.{index}.1", depths[level])
                slot = 2
            if level and i == num_res_blocks:
                conv.append(f"output_blocks.{index}.{slot}.conv")  # Upsample after the resnet (and attention)
            index += 1
    as_names = lambda paths: {"lora_unet_" + p.replace(".", "_") for p in paths}  # noqa: E731
    lora, locon_only = as_names(transformer), as_names(conv)
    assert len(lora) == len(transformer) and len(locon_only) == len(conv)  # no name made twice
    return lora, locon_only


def diffusers_lora_targets(unet, config: dict) -> tuple[set, set]:
    """(LoRA, LoCon-only) names by kohya's rule applied to diffusers' UNet: Linear/Conv2d inside a
    Transformer2DModel; for LoCon also inside ResnetBlock2D/Downsample2D/Upsample2D."""
    from torch import nn

    def names(classes: tuple) -> set:
        found = set()
        for path, module in unet.named_modules():
            if type(module).__name__ in classes:
                found |= {lora_unet_name(f"{path}.{child_path}", config) for child_path, child in module.named_modules()
                          if isinstance(child, (nn.Linear, nn.Conv2d))}
        return found

    return names(("Transformer2DModel",)), names(("ResnetBlock2D", "Downsample2D", "Upsample2D"))


SAI_ARCHITECTURES = {
    # (model_channels, channel_mult, num_res_blocks, transformer depth per level, middle depth, LoRA, LoCon)
    "sdxl": (320, (1, 2, 4), 2, (0, 2, 10), 10, 722, 788),
    "sd15": (320, (1, 2, 4, 4), 2, (1, 1, 1, 0), 1, 192, 278),
}


@pytest.mark.parametrize("name", list(SAI_ARCHITECTURES))
def test_kohya_lora_names_on_the_real_unets(name):
    *architecture, lora_count, locon_count = SAI_ARCHITECTURES[name]
    config = unet_config(name)
    expected_lora, expected_conv = sai_lora_targets(*architecture)
    lora, conv = diffusers_lora_targets(meta_unet(config), config)
    assert len(expected_lora) == lora_count and len(expected_lora | expected_conv) == locon_count
    assert lora == expected_lora
    assert conv == expected_conv


def test_well_known_sd1_ldm_names():
    """SD1.x keeps attention on the first three levels, so its upsamplers sit elsewhere than SDXL's."""
    config = unet_config("sd15")
    assert unet_path_to_ldm("up_blocks.0.upsamplers.0.conv.weight", config) == "output_blocks.2.1.conv.weight"
    assert unet_path_to_ldm("up_blocks.2.upsamplers.0.conv", config) == "output_blocks.8.2.conv"
    assert unet_path_to_ldm("down_blocks.2.downsamplers.0.conv", config) == "input_blocks.9.0.op"
    assert unet_path_to_ldm("up_blocks.3.resnets.2.conv_shortcut.weight", config) == "output_blocks.11.0.skip_connection.weight"
    assert unet_path_to_ldm("down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k", config) == "input_blocks.2.1.transformer_blocks.0.attn2.to_k"
    assert unet_path_to_ldm("mid_block.attentions.0.proj_out", config) == "middle_block.1.proj_out"


def test_kohya_lora_names_on_the_tiny_sdxl(tiny_sdxl_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sdxl_dir / "unet")
    config = dict(unet.config)
    expected_lora, expected_conv = sai_lora_targets(32, (1, 2), 2, (0, 2), 2)
    assert diffusers_lora_targets(unet, config) == (expected_lora, expected_conv)
