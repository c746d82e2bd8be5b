"""Captions to text-encoder states: 75/150/225-token prompts in 77-token chunks, with clip skip,
exactly as kohya's sd-scripts does it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from lora_gradio.engine.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import torch

def _final_layer_norm(text_encoder: Any):
    """The text model's final LayerNorm: on `.text_model` (CLIPTextModelWithProjection, transformers
    < 5.6 CLIPTextModel) or on the model itself (transformers >= 5.6 CLIPTextModel)."""
    for owner in (getattr(text_encoder, "text_model", None), text_encoder):
        norm = getattr(owner, "final_layer_norm", None) if owner is not None else None
        if norm is not None:
            return norm
    for name, module in text_encoder.named_modules():
        if name.split(".")[-1] == "final_layer_norm":
            return module
    raise ValueError(f"{type(text_encoder).__name__} has no final_layer_norm; clip skip needs a CLIP text model")


def tokenize_prompts(tokenizer: Any, captions: Sequence[str], max_token_length: int = 225) -> "torch.Tensor":
    """Token ids [B, chunks, 77] as kohya's `get_input_ids`: tokenize to max_token_length + 2 (padded,
    truncated), then split the content into chunks of 75, each as BOS + 75 tokens + the last id.
    For pad != eos tokenizers (SD2, SDXL) a chunk ending in content gets EOS, and an empty chunk
    starts BOS EOS, like kohya."""
    model_max = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if model_max > 1000:  # tokenizers without a set length say "very large"
        model_max = 77
    content = model_max - 2
    if max_token_length not in (content, 2 * content, 3 * content):
        raise UserError(f"max_token_length must be {content}, {2 * content} or {3 * content} (got {max_token_length}).")
    ids = tokenizer(
        list(captions), padding="max_length", truncation=True, max_length=max_token_length + 2, return_tensors="pt"
    ).input_ids
    return chunk_token_ids(tokenizer, ids, max_token_length)


def chunk_token_ids(tokenizer: Any, ids: "torch.Tensor", max_token_length: int) -> "torch.Tensor":
    """Padded ids [B, max_token_length + 2] -> [B, chunks, 77], each chunk BOS + 75 + last id."""
    import torch

    content = max_token_length if max_token_length <= 75 else 75
    if max_token_length == content:
        return ids.unsqueeze(1)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = []
    for i in range(1, max_token_length - content + 2, content):
        chunk = torch.cat([ids[:, :1], ids[:, i : i + content], ids[:, -1:]], dim=1).clone()
        if pad != eos:
            ends_in_content = (chunk[:, -2] != eos) & (chunk[:, -2] != pad)
            chunk[ends_in_content, -1] = eos
            chunk[chunk[:, 1] == pad, 1] = eos
        chunks.append(chunk)
    return torch.stack(chunks, dim=1)


def encode_prompts(
    tokenizer: Any,
    text_encoder: Any,
    captions: Sequence[str],
    max_token_length: int = 225,
    clip_skip: int = 2,
    device: "str | torch.device | None" = None,
) -> "torch.Tensor":
    """Text-encoder states [B, max_token_length + 2, dim] for the UNet, as kohya's `get_hidden_states`.

    Each 77-token chunk is encoded as one (B * chunks, 77) batch with `output_hidden_states=True`;
    clip_skip > 1 takes hidden_states[-clip_skip] through the final layer norm (clip_skip 1 is the
    plain last hidden state). Chunks are joined as BOS state of chunk 1 + states[1:76] of every chunk
    + the last state of the last chunk. No `no_grad` here: gradients flow when the encoder trains
    (wrap the call in `torch.no_grad()` yourself when it does not).
    """
    if clip_skip < 1:
        raise UserError(f"clip_skip must be 1 or more (got {clip_skip}); the guide uses 2.")
    return encode_token_ids(text_encoder, tokenize_prompts(tokenizer, captions, max_token_length), max_token_length, clip_skip, device)


def encode_token_ids(text_encoder: Any, ids: "torch.Tensor", max_token_length: int, clip_skip: int, device: Any = None) -> "torch.Tensor":
    """The encoding half of `encode_prompts`, for ids already split into 77-token chunks [B, chunks, 77]."""
    batch, n_chunks, length = ids.shape
    if device is None:
        device = next(text_encoder.parameters()).device
    flat = ids.reshape(batch * n_chunks, length).to(device, non_blocking=True)  # pinned ids copy without a sync
    if clip_skip == 1:
        states = text_encoder(flat, return_dict=True).last_hidden_state
    else:
        out = text_encoder(flat, output_hidden_states=True, return_dict=True)
        states = _final_layer_norm(text_encoder)(out.hidden_states[-clip_skip])
    return join_chunks(states, batch, max_token_length)


def join_chunks(states: "torch.Tensor", batch: int, max_token_length: int) -> "torch.Tensor":
    """[B * chunks, 77, dim] chunk states -> [B, max_token_length + 2, dim]: the BOS state of chunk 1,
    states[1:76] of every chunk, the last state of the last chunk (kohya's joining)."""
    import torch

    length = states.shape[1]
    states = states.reshape(batch, -1, states.shape[-1])
    if states.shape[1] == length:
        return states
    parts = [states[:, :1]]
    for i in range(1, max_token_length, length):
        parts.append(states[:, i : i + length - 2])
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


def encode_sdxl_prompts(
    tokenizers: Sequence[Any],
    text_encoders: Sequence[Any],
    captions: Sequence[str],
    max_token_length: int = 225,
    device: "str | torch.device | None" = None,
    token_ids: "Sequence[torch.Tensor] | None" = None,
) -> "tuple[torch.Tensor, torch.Tensor]":
    """SDXL's conditioning as kohya's sdxl_train_util computes it: (states [B, max_token_length + 2,
    dim1 + dim2], pooled [B, projection_dim]).

    Both encoders give their penultimate hidden states without the final layer norm (clip skip is
    not a setting for SDXL), joined over 75-token chunks like SD 1.x and concatenated on the last axis.
    The pooled vector is the bigG encoder's final-normed state at the first EOS of the first chunk,
    through its text projection. `token_ids`: both tokenizers' ids, when the captions were tokenized already.
    """
    import torch

    (tokenizer1, tokenizer2), (encoder1, encoder2) = tokenizers, text_encoders
    if device is None:
        device = next(encoder1.parameters()).device
    if token_ids is None:
        token_ids = [tokenize_prompts(tokenizer, captions, max_token_length) for tokenizer in (tokenizer1, tokenizer2)]
    ids1, ids2 = token_ids
    batch, _, length = ids1.shape
    flat1 = ids1.reshape(-1, length).to(device, non_blocking=True)
    flat2 = ids2.reshape(-1, length).to(device, non_blocking=True)
    states1 = encoder1(flat1, output_hidden_states=True, return_dict=True).hidden_states[-2]
    out2 = encoder2(flat2, output_hidden_states=True, return_dict=True)
    states2 = out2.hidden_states[-2]
    first_chunks = torch.arange(0, flat2.shape[0], ids2.shape[1], device=flat2.device)
    eos = (flat2[first_chunks] == tokenizer2.eos_token_id).int().argmax(dim=-1)
    last = out2.last_hidden_state[first_chunks, eos]
    pooled = encoder2.text_projection(last.to(encoder2.text_projection.weight.dtype))
    hidden = torch.cat([join_chunks(states1, batch, max_token_length), join_chunks(states2.to(states1.dtype), batch, max_token_length)], dim=-1)
    return hidden, pooled
