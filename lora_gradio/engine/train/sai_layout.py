"""Names of diffusers' UNet2DConditionModel in the original SAI/LDM ("ldm") UNet layout.

Single-file checkpoints (A1111, Illustrious, NoobAI, ...) keep the UNet as Stability AI's
`openaimodel.UNetModel` wrote it (`input_blocks`, `middle_block`, `output_blocks`), and kohya
names SDXL LoRA modules after that layout (`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`)
while we train diffusers' UNet (`down_blocks.1.attentions.0...`). The block numbering is derived
from the UNet's config, so one mapping serves SD1.x, SD2.x, SDXL and tiny test models alike.

Pure string work: no torch import, so it is cheap to use from anywhere.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

LDM_UNET_PREFIX = "model.diffusion_model."
LORA_UNET_PREFIX = "lora_unet_"

# ResnetBlock2D children -> LDM ResBlock children. LDM keeps the activations (and a dropout) as
# Sequential entries, hence the gaps in the indices; diffusers' weightless `nonlinearity` and
# `dropout` have no single LDM counterpart and stay unmapped.
RESNET_CHILDREN = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# Downsample2D's convolution is called `op` in LDM; Upsample2D's `conv` keeps its name.
DOWNSAMPLER_CHILDREN = {"conv": "op"}

# Modules outside the down/mid/up blocks (the same in every SD generation).
TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# SDXL's size-and-pooled-text embedding (and the class embedding of other models) is LDM's label_emb.
LABEL_EMBEDDING = {"linear_1": "label_emb.0.0", "linear_2": "label_emb.0.2"}

# A rule: diffusers module prefix -> (LDM prefix, renames for its direct children or None = keep them).
Rule = tuple[str, "Mapping[str, str] | None"]


def unet_path_to_ldm(path: str, config: Mapping[str, Any]) -> str:
    """The LDM name of a diffusers UNet module or parameter path.

    `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> `input_blocks.4.1.transformer_blocks.0.attn1.to_q`
    on SDXL; `.weight`/`.bias` suffixes carry over. KeyError(path) for anything without an LDM name
    (a weightless activation, a block container such as `down_blocks.0`).
    """
    rules, longest = _rules(_layout_key(config))
    parts = path.split(".")
    for n in range(min(len(parts), longest), 0, -1):
        rule = rules.get(".".join(parts[:n]))
        if rule is None:
            continue
        ldm_prefix, children = rule
        tail = parts[n:]
        if tail and children is not None:
            if tail[0] not in children:
                raise KeyError(path)
            tail = [children[tail[0]], *tail[1:]]
        return ".".join([ldm_prefix, *tail])
    raise KeyError(path)


def unet_state_dict_to_ldm(state: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A diffusers UNet state dict with the keys of a single-file checkpoint (`model.diffusion_model.` + LDM name)."""
    return {LDM_UNET_PREFIX + unet_path_to_ldm(key, config): value for key, value in state.items()}


def lora_unet_name(path: str, config: Mapping[str, Any]) -> str:
    """kohya's LoRA module name for a diffusers UNet module on an SDXL-style network:
    `lora_unet_` + the LDM path with dots as underscores."""
    return LORA_UNET_PREFIX + unet_path_to_ldm(path, config).replace(".", "_")


def _layout_key(config: Mapping[str, Any]) -> tuple:
    """The config fields that decide the block numbering, hashable (for the rule cache)."""
    down_types = tuple(config["down_block_types"])
    per_block = config.get("layers_per_block", 2)
    if isinstance(per_block, int):
        per_block = (per_block,) * len(down_types)
    return (
        tuple(per_block),
        down_types,
        tuple(config["up_block_types"]),
        config.get("mid_block_type", "UNetMidBlock2DCrossAttn"),
        config.get("addition_embed_type"),
        config.get("class_embed_type"),
    )


def _has_attention(block_type: str) -> bool:
    return "Attn" in block_type  # CrossAttnDownBlock2D / CrossAttnUpBlock2D (DownBlock2D / UpBlock2D have none)


@lru_cache(maxsize=32)
def _rules(layout: tuple) -> tuple[dict[str, Rule], int]:
    """(rules by diffusers prefix, the most dot-separated parts a prefix has)."""
    per_block, down_types, up_types, mid_type, addition_embed_type, class_embed_type = layout
    rules: dict[str, Rule] = {hf: (ldm, None) for hf, ldm in TOP_LEVEL.items()}
    if addition_embed_type == "text_time":
        rules.update({f"add_embedding.{hf}": (ldm, None) for hf, ldm in LABEL_EMBEDDING.items()})
    if class_embed_type in ("timestep", "projection"):
        rules.update({f"class_embedding.{hf}": (ldm, None) for hf, ldm in LABEL_EMBEDDING.items()})

    # input_blocks: 0 is conv_in; then per level one entry per resnet (resnet at .0, its attention at .1)
    # and, except on the last level, one entry holding only the downsampler.
    index = 1
    for level, block_type in enumerate(down_types):
        for j in range(per_block[level]):
            rules[f"down_blocks.{level}.resnets.{j}"] = (f"input_blocks.{index}.0", RESNET_CHILDREN)
            if _has_attention(block_type):
                rules[f"down_blocks.{level}.attentions.{j}"] = (f"input_blocks.{index}.1", None)
            index += 1
        if level < len(down_types) - 1:
            rules[f"down_blocks.{level}.downsamplers.0"] = (f"input_blocks.{index}.0", DOWNSAMPLER_CHILDREN)
            index += 1

    # middle_block: resnet, attention, resnet (or resnet, resnet without attention).
    if mid_type is not None:
        with_attention = _has_attention(mid_type)
        rules["mid_block.resnets.0"] = ("middle_block.0", RESNET_CHILDREN)
        if with_attention:
            rules["mid_block.attentions.0"] = ("middle_block.1", None)
        rules["mid_block.resnets.1"] = (f"middle_block.{2 if with_attention else 1}", RESNET_CHILDREN)

    # output_blocks: levels in reverse, one more resnet per level than on the way down; the upsampler
    # sits in the level's last entry, after the resnet and (if any) the attention.
    up_per_block = list(reversed(per_block))
    index = 0
    for level, block_type in enumerate(up_types):
        n_resnets = up_per_block[level] + 1
        for j in range(n_resnets):
            rules[f"up_blocks.{level}.resnets.{j}"] = (f"output_blocks.{index}.0", RESNET_CHILDREN)
            if _has_attention(block_type):
                rules[f"up_blocks.{level}.attentions.{j}"] = (f"output_blocks.{index}.1", None)
            if j == n_resnets - 1 and level < len(up_types) - 1:
                slot = 2 if _has_attention(block_type) else 1
                rules[f"up_blocks.{level}.upsamplers.0"] = (f"output_blocks.{index}.{slot}", None)
            index += 1
    return rules, max(prefix.count(".") + 1 for prefix in rules)
