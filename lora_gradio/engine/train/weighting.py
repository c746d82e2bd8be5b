"""Weighted captions: `(tag:1.2)`, `(tag)` = x1.1, `[tag]` = /1.1, as in WebUI prompts.

kohya's `weighted_captions`: each token's text-encoder state is multiplied by its weight, then
the whole is rescaled so its mean is what it was (the weights shift emphasis, not magnitude).
`\\(` and `\\)` are literal brackets. Commas inside brackets would be split by tag shuffling, so
weight single tags.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from lora_gradio.engine.train.prompts import chunk_token_ids, encode_token_ids

_TOKEN = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:|\\")
UP, DOWN = 1.1, 1 / 1.1


def parse_weights(text: str) -> list[tuple[str, float]]:
    """`"a (b:1.5) [c]"` -> [("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", 0.909...)] (merged where equal)."""
    pieces: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for match in _TOKEN.finditer(text):
        token, explicit = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif explicit is not None and round_open:
            scale(round_open.pop(), float(explicit))
        elif token == ")" and round_open:
            scale(round_open.pop(), UP)
        elif token == "]" and square_open:
            scale(square_open.pop(), DOWN)
        else:
            pieces.append([token, 1.0])
    for start in round_open:  # unclosed brackets still count, as in the WebUI
        scale(start, UP)
    for start in square_open:
        scale(start, DOWN)
    merged: list[tuple[str, float]] = []
    for piece, weight in pieces:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def weighted_token_ids(tokenizer: Any, captions: Sequence[str], max_token_length: int):
    """Padded ids and per-position weights, both [B, max_token_length + 2]."""
    import torch

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    all_ids, all_weights = [], []
    for caption in captions:
        ids: list[int] = []
        weights: list[float] = []
        for text, weight in parse_weights(caption):
            tokens = tokenizer(text, add_special_tokens=False).input_ids
            ids += tokens
            weights += [weight] * len(tokens)
        ids, weights = ids[:max_token_length], weights[:max_token_length]
        rest = max_token_length - len(ids)
        all_ids.append([bos, *ids, eos, *[pad] * rest])
        all_weights.append([1.0, *weights, 1.0, *[1.0] * rest])
    return torch.tensor(all_ids), torch.tensor(all_weights)


def encode_weighted_prompts(tokenizer: Any, text_encoder: Any, captions: Sequence[str], max_token_length: int = 225, clip_skip: int = 2, device: Any = None):
    """Like `prompts.encode_prompts`, with each token's state scaled by its caption weight."""
    ids, weights = weighted_token_ids(tokenizer, captions, max_token_length)
    states = encode_token_ids(text_encoder, chunk_token_ids(tokenizer, ids, max_token_length), max_token_length, clip_skip, device)
    before = states.float().mean(dim=(-2, -1))
    states = states * weights.to(states.device, states.dtype).unsqueeze(-1)
    after = states.float().mean(dim=(-2, -1))
    import torch

    # A mean of (almost) zero has no magnitude to restore (layer norm without bias).
    ratio = torch.where(after.abs() > 1e-6, before / after, torch.ones_like(after))
    return states * ratio.to(states.dtype)[:, None, None]
