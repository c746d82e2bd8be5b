"""GPU memory of a training run: measure it, fit the estimator's constants, check the estimate on a GPU.

    python benchmarks/memory_estimate.py --fit --versions sd_v1 --json-out v1.json   # ~10 min on 2 cores
    python benchmarks/memory_estimate.py --fit --versions sdxl --no-optimizers --json-out xl.json   # SDXL, ~1 h
    python benchmarks/memory_estimate.py --fit --optimizers-only --versions sd_v1 --json-out opt.json   # optimizer rows
    python benchmarks/memory_estimate.py --merge v1.json v2.json   # memory.py's constants, from --fit files
    python benchmarks/memory_estimate.py --check            # the estimate vs fresh meta measurements off the grid (~1 min)
    python benchmarks/memory_estimate.py --validate-cpu     # the meta measurement vs a real CPU step (256 px, ~20 s)
    python benchmarks/memory_estimate.py --cuda             # on a GPU: real training steps, estimate vs measured peak
    python benchmarks/memory_estimate.py --cuda --smoke --resolutions 256 --batches 1 --optimizers AdamW
                                                            # the --cuda code run on the CPU (tests the script only)

--fit's optimizer rows need bitsandbytes, prodigyopt, dadaptation and lion-pytorch importable (they are
measured on real CPU tensors; `pip install --target DIR ...` and PYTHONPATH=DIR keeps them out of the venv).

How it measures (no GPU needed for the first three):
- The real-size SD1.5 (or SD2, or SDXL) UNet, text encoder(s) and VAE are built from the configs the package
  ships, on PyTorch's "meta" device: tensors with shapes and dtypes but no data, so a 1024 px batch-8 forward
  and backward takes a second and no memory. Our real network (`create_network`, lycoris) is attached; for
  SDXL over the UNet and both text encoders (`SdxlTextEncoders`, `SdxlNetwork`), and the step is kohya's
  SDXL step (`encode_sdxl`: both encoders' penultimate states, 2048 channels, and `added_cond_kwargs`).
- Precisions: "bf16"/"fp16" (mixed: the network in fp32), "full_fp16"/"full_bf16" (the network in 16 bits
  too), "no" (fp32). The fit measures mixed bf16 and fp32; `--check` measures full 16-bit points against
  the mixed fit, which memory.py uses for both.
- Two counters run through one training step (the same steps as loop.training_step: text encoder, noise,
  UNet under autocast, fp32 MSE loss, backward, gradient clipping):
  `SavedBytes` counts the tensors autograd saves for backward (torch.autograd.graph.saved_tensors_hooks),
  each storage once, leaving out the model's own weights; `PeakBytes` follows every tensor storage that
  an operator creates (a TorchDispatchMode with a finalizer on each storage) and records the largest
  total alive at once: what torch.cuda.max_memory_allocated reports above the weights.
- Mixed precision is CUDA's autocast, replayed on the meta device by `EmulatedAutocast` (a TorchFunctionMode
  that casts the arguments of the ops in torch's CUDA autocast lists, ATen/autocast_mode.h of torch 2.13),
  and attention calls the kernel CUDA would use (flash attention for fp16/bf16, memory-efficient attention
  for fp32 or with a mask), whose saved tensors are those of the CUDA kernels.
- `--validate-cpu` runs the project's real `training_step` on the CPU (fp32, 256 px) under the same counters
  and compares it with the meta measurement routed to the CPU attention kernel (measured: saved -0.005%,
  peak +0.001%). The tests repeat this on the tiny model, and check the autocast replay against
  PyTorch's real CPU autocast.

`--cuda` (NVIDIA GPU) builds the same models with random weights on the GPU, runs real optimizer steps with
the project's `training_step` for a grid of (resolution, batch, gradient checkpointing, optimizer), reads
torch.cuda.max_memory_allocated / max_memory_reserved, and prints them next to memory.py's estimate with the
error in percent, plus the CUDA context size (what the driver reports in use beyond PyTorch's reserve),
the latent-caching peak, and the bytes saved for backward under the real CUDA autocast next to the replay.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402  (a benchmark: torch is what it is about)
import torch.nn.functional as F  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves, tree_map  # noqa: E402

MiB = 2**20
GiB = 2**30


# Counting ----------------------------------------------------------------------------------------


def _storage_keys(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {t.untyped_storage()._cdata for t in tensors if isinstance(t, torch.Tensor)}


def model_storages(*modules: Any) -> set[int]:
    """Storage keys of the modules' parameters and buffers (the weights), to leave out of the counts."""
    keys: set[int] = set()
    for module in modules:
        if module is not None:
            keys |= _storage_keys(module.parameters())
            keys |= _storage_keys(module.buffers())
    return keys


class SavedBytes:
    """Bytes of the tensors autograd saves for backward while active, each storage counted once.

    Weights (storages in `ignore`) are left out: a frozen layer saves its weight to compute the input's
    gradient, but that memory is the model's, counted once in the weights. Nothing is held: a storage
    leaves the "seen" set when it is freed, so a new one at the same address counts again.
    """

    def __init__(self, ignore: "set[int] | None" = None):
        self.ignore = set(ignore or ())
        self.bytes = 0
        self.count = 0
        self._seen: set[int] = set()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.ignore and key not in self._seen:
            self._seen.add(key)
            weakref.finalize(storage, self._seen.discard, key)
            self.bytes += storage.nbytes()
            self.count += 1
        return tensor

    def __enter__(self) -> "SavedBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


class PeakBytes(TorchDispatchMode):
    """The largest total of tensor storages alive at once, over the storages that operators create.

    Storages that existed before (the weights) are not seen. Each storage gets a finalizer, so it stops
    counting when PyTorch frees it: the count follows what a caching allocator's `memory_allocated` shows
    (without its rounding). `mark(name)` notes the current and peak totals at a point, e.g. after the
    forward. `tagged(tensors)` says how much of the peak those tensors' storages made up (e.g. gradients).
    `mark_grad(tensor)` (called when a gradient is accumulated) files its storage as a gradient:
    `nongrad_peak` is then the largest total alive at once of the storages that are not gradients.
    """

    def __init__(self, ignore: "set[int] | None" = None):
        super().__init__()
        self.ignore = set(ignore or ())
        self.current = 0
        self.peak = 0
        self._live: dict[int, tuple[int, int]] = {}  # storage key -> (token, bytes)
        self._peak_tokens: dict[int, int] = {}  # token -> bytes, alive at the peak
        self._token = 0
        self.marks: dict[str, tuple[int, int]] = {}
        self._grads: set[int] = set()  # storage keys of gradients (alive)
        self.grad_current = 0
        self.nongrad_peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        return out

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.ignore or key in self._live:
            return
        size = storage.nbytes()
        self._token += 1
        self._live[key] = (self._token, size)
        weakref.finalize(storage, self._free, key, self._token)
        self.current += size
        if self.current > self.peak:
            self.peak = self.current
            self._peak_tokens = dict(self._live.values())
        self.nongrad_peak = max(self.nongrad_peak, self.current - self.grad_current)

    def _free(self, key: int, token: int) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[0] == token:
            del self._live[key]
            self.current -= entry[1]
            if key in self._grads:
                self._grads.discard(key)
                self.grad_current -= entry[1]

    def mark_grad(self, tensor: "torch.Tensor | None") -> None:
        if tensor is None:
            return
        key = tensor.untyped_storage()._cdata
        entry = self._live.get(key)
        if entry is not None and key not in self._grads:
            self._grads.add(key)
            self.grad_current += entry[1]

    def mark(self, name: str) -> None:
        self.marks[name] = (self.current, self.peak)

    def reset_peak(self) -> None:
        self.peak = self.current
        self._peak_tokens = dict(self._live.values())

    def tagged(self, tensors: Iterable[torch.Tensor]) -> int:
        """Bytes at the peak that belonged to the storages of `tensors` (alive now)."""
        total = 0
        for key in _storage_keys(tensors):
            entry = self._live.get(key)
            if entry is not None and entry[0] in self._peak_tokens:
                total += entry[1]
        return total


# CUDA's autocast, replayed on any device -----------------------------------------------------------

# The op lists of torch 2.13's ATen/autocast_mode.h (AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32,
# AT_FORALL_FP32_SET_OPT_DTYPE), by the Python functions that reach those ops in the SD models.
_F = F
_T = torch.Tensor
CUDA_LOWER = [
    _F.linear, _F.conv1d, _F.conv2d, _F.conv3d, torch.conv2d, torch.matmul, _T.matmul, _T.__matmul__, _T.__rmatmul__,
    torch.mm, _T.mm, torch.bmm, _T.bmm, torch.baddbmm, _T.baddbmm, torch.addmm, _T.addmm, torch.einsum,
    _F.scaled_dot_product_attention, _F.prelu,
]
CUDA_FP32 = [
    torch.exp, _T.exp, torch.log, _T.log, torch.pow, _T.pow, _T.__pow__, torch.rsqrt, _T.rsqrt, torch.reciprocal,
    _T.reciprocal, torch.expm1, torch.log1p, _F.softplus, _F.layer_norm, torch.layer_norm, _F.group_norm,
    torch.group_norm, _F.mse_loss, _F.l1_loss, _F.interpolate, torch.logsumexp, _F.rms_norm,
]
CUDA_FP32_OPT_DTYPE = [torch.softmax, _T.softmax, _F.softmax, torch.log_softmax, _T.log_softmax, _F.log_softmax, torch.sum, _T.sum, torch.cumsum, _T.cumsum]
# PyTorch's CPU autocast for the same functions (what torch.autocast("cpu") does to them): the tests replay
# it and compare with the real thing, to show that the replay itself is faithful.
CPU_LOWER = [_F.linear, _F.conv1d, _F.conv2d, _F.conv3d, torch.conv2d, torch.matmul, _T.matmul, _T.__matmul__, _T.__rmatmul__, torch.mm, _T.mm, torch.bmm, _T.bmm, torch.baddbmm, _T.baddbmm, torch.addmm, _T.addmm, _F.scaled_dot_product_attention, _F.prelu]
CPU_FP32 = [_F.mse_loss, _F.l1_loss]


class EmulatedAutocast(TorchFunctionMode):
    """Autocast's casting rules applied by hand, so CUDA's mixed precision can be measured on the meta device.

    Like autocast: floating-point arguments (not float64) of a lower-precision op are cast to `dtype`, those
    of an fp32 op to float32; softmax/sum-like ops get dtype=float32 unless given one; casts of leaf tensors
    that require grad are cached while the mode is active. `attention` picks the attention kernel:
    "cuda" (flash for fp16/bf16 without a mask, else memory-efficient), "cpu" (PyTorch's CPU flash kernel),
    or None to leave F.scaled_dot_product_attention alone.
    """

    def __init__(self, dtype: "torch.dtype | None", policy: str = "cuda", attention: "str | None" = "cuda"):
        super().__init__()
        self.dtype = dtype
        lower, fp32, opt = (CUDA_LOWER, CUDA_FP32, CUDA_FP32_OPT_DTYPE) if policy == "cuda" else (CPU_LOWER, CPU_FP32, [])
        self.lower = set(lower) if dtype is not None else set()
        self.fp32 = set(fp32) if dtype is not None else set()
        self.opt = set(opt) if dtype is not None else set()
        self.attention = attention
        self._cache: dict[int, torch.Tensor] = {}

    def _cast(self, value: Any, dtype: torch.dtype) -> Any:
        def one(x: Any) -> Any:
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype in (dtype, torch.float64):
                return x
            if x.is_leaf and x.requires_grad and dtype != torch.float32:
                cached = self._cache.get(id(x))
                if cached is None:
                    cached = self._cache[id(x)] = x.to(dtype)
                return cached
            return x.to(dtype)

        return tree_map(one, value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.lower:
            args, kwargs = self._cast(args, self.dtype), self._cast(kwargs, self.dtype)
        elif func in self.fp32:
            args, kwargs = self._cast(args, torch.float32), self._cast(kwargs, torch.float32)
        elif func in self.opt and kwargs.get("dtype") is None and args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
            kwargs["dtype"] = torch.float32
        if func is F.scaled_dot_product_attention and self.attention:
            return _attention(self.attention, *args, **kwargs)
        return func(*args, **kwargs)

    _active: list["EmulatedAutocast"] = []

    def __enter__(self) -> "EmulatedAutocast":
        EmulatedAutocast._active.append(self)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._cache.clear()
        EmulatedAutocast._active.remove(self)
        super().__exit__(*exc)

    @classmethod
    def recompute_context(cls) -> Any:
        """For gradient checkpointing's context_fn: the replay active now, again for the recomputation
        (real checkpointing restores the forward's autocast state the same way)."""
        if not cls._active:
            return contextlib.nullcontext()
        mode = cls._active[-1]
        copy = EmulatedAutocast(mode.dtype, "cuda", mode.attention)
        copy.lower, copy.fp32, copy.opt = mode.lower, mode.fp32, mode.opt
        return copy


def _checkpoint_context() -> tuple[Any, Any]:
    return contextlib.nullcontext(), EmulatedAutocast.recompute_context()


def _unet_checkpoint(module, *args):
    """diffusers' default checkpointing function (non-reentrant), plus the autocast replay on recompute."""
    from torch.utils.checkpoint import checkpoint

    return checkpoint(module.__call__, *args, use_reentrant=False, context_fn=_checkpoint_context)


def _attention(kind: str, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """The attention kernel that the device would pick, called directly (its autograd saves what the real one saves)."""
    aten = torch.ops.aten
    if kind == "cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]
    if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256:
        return aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, False, scale=scale)[0]
    if attn_mask is not None:
        attn_mask = attn_mask.to(query.dtype).expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    return aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, True, dropout_p, is_causal, scale=scale)[0]


# Models ------------------------------------------------------------------------------------------


def is_sdxl(version: str) -> bool:
    return version.startswith("sdxl")


def config_dir(version: str) -> Path:
    from lora_gradio.engine.train.models import CONFIG_DIR

    return CONFIG_DIR / ("sdxl" if is_sdxl(version) else "sd2" if version.startswith("sd_v2") else "sd15")


def build_unet(version: str = "sd_v1", device: str = "meta"):
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel.from_config(json.loads((config_dir(version) / "unet/config.json").read_text()))


class SdxlTextEncoders(torch.nn.Module):
    """SDXL's two text encoders held as one module, so that the code written for SD's one text encoder
    (weights to leave out of the counts, dtype and device moves, requires_grad) covers both:
    `text_encoder` is CLIP ViT-L (768), `text_encoder_2` OpenCLIP ViT-bigG with its projection (1280)."""

    def __init__(self, text_encoder, text_encoder_2):
        super().__init__()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    @property
    def config(self):  # the vocabulary (both encoders share CLIP's 49408 tokens)
        return self.text_encoder.config


def text_encoders(text_encoder) -> list:
    """The text encoder(s) inside `text_encoder`: SDXL's two, or SD's one."""
    if isinstance(text_encoder, SdxlTextEncoders):
        return [text_encoder.text_encoder, text_encoder.text_encoder_2]
    return [text_encoder]


def build_text_encoder(version: str = "sd_v1", device: str = "meta"):
    """SD's CLIPTextModel, or for SDXL both encoders (an `SdxlTextEncoders`)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def config(folder: str):
        return CLIPTextConfig(**json.loads((config_dir(version) / folder / "config.json").read_text()))

    with torch.device(device):
        if is_sdxl(version):
            return SdxlTextEncoders(CLIPTextModel(config("text_encoder")), CLIPTextModelWithProjection(config("text_encoder_2")))
        return CLIPTextModel(config("text_encoder"))


def build_vae(version: str = "sd_v1", device: str = "meta"):
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL.from_config(json.loads((config_dir(version) / "vae/config.json").read_text()))


class SdxlNetwork(torch.nn.Module):
    """Our network over SDXL's UNet and both text encoders, from `create_network` called once per text
    encoder (when it takes one): the first call's network (UNet + CLIP-L) and the second call's text-encoder
    part (bigG; its UNet part, a duplicate, is dropped). The parameters, module counts and hooks are those of
    the two calls together; only the bigG module names (`lora_te_...` here, kohya's `lora_te2_...`) differ,
    which costs no memory."""

    def __init__(self, network, text_encoder_2_nets: list):
        super().__init__()
        self.network = network
        self.text_encoder_2_nets = torch.nn.ModuleList(text_encoder_2_nets)

    @property
    def unet_net(self):
        return self.network.unet_net

    def module_counts(self) -> dict[str, int]:
        counts = dict(self.network.module_counts())
        counts["text_encoder_2"] = sum(len(net.loras) for net in self.text_encoder_2_nets)
        return counts

    def apply_to(self) -> None:
        self.network.apply_to()
        for net in self.text_encoder_2_nets:
            net.apply_to()

    def param_groups(self, unet_lr: float, text_encoder_lr: "float | None") -> list[dict[str, Any]]:
        groups = self.network.param_groups(unet_lr, text_encoder_lr)
        params = list(self.text_encoder_2_nets.parameters())
        train = text_encoder_lr is not None and float(text_encoder_lr) > 0
        for p in params:
            p.requires_grad_(train)
        if train and params:
            groups.append({"params": params, "lr": float(text_encoder_lr), "name": "text_encoder_2"})
        return groups


def _text_encoder_nets(network) -> list:
    """The lycoris networks over the text encoder(s) inside one of create_network's networks."""
    nets = getattr(network, "text_encoder_nets", None)
    if nets is not None:
        return list(nets)
    net = getattr(network, "text_encoder_net", None)
    return [net] if net is not None else []


def _create_network(unet, text_encoder, lora_type, dim, alpha, conv_dim, conv_alpha, train_te):
    from lora_gradio.engine.train.network import create_network

    if not isinstance(text_encoder, SdxlTextEncoders):
        return create_network(unet, text_encoder, lora_type, dim, alpha, conv_dim, conv_alpha, train_text_encoder=train_te)
    te1, te2 = text_encoders(text_encoder)
    # A create_network that takes SDXL's two text encoders in one call: as family.network_text_encoders
    # gives them ((kohya prefix, encoder) pairs), or as a plain list (kohya's own create_network).
    for both in ([("lora_te1", te1), ("lora_te2", te2)], [te1, te2]):
        try:
            return create_network(unet, both, lora_type, dim, alpha, conv_dim, conv_alpha, train_text_encoder=train_te)
        except (AttributeError, TypeError, ValueError):
            pass
    # One text encoder per call (network.py at this module's SDXL fit):
    network = create_network(unet, te1, lora_type, dim, alpha, conv_dim, conv_alpha, train_text_encoder=train_te)
    second = []
    if train_te:
        second = _text_encoder_nets(create_network(unet, te2, lora_type, dim, alpha, conv_dim, conv_alpha, train_text_encoder=True))
    return SdxlNetwork(network, second)


def attach_network(unet, text_encoder, lora_type: str = "LoRA", dim: int = 16, alpha: int = 8, conv_dim: int = 8, conv_alpha: int = 4,
                   train_te: bool = True, device: str = "meta"):
    """Our real network over the models, hooked in, trainable parts requiring grad (as loop.py sets it up).
    For SDXL, over the UNet and both text encoders (`SdxlNetwork` unless create_network takes both)."""
    # Built outside the meta device context (lycoris computes a few shapes with tensors), then moved.
    try:
        network = _create_network(unet, text_encoder, lora_type, dim, alpha, conv_dim, conv_alpha, train_te)
    except (NotImplementedError, RuntimeError):
        if device != "meta":
            raise
        # DoRA reads the base weights (their norms): give the models uninitialised CPU memory while it does
        # (in bf16: SDXL's UNet in fp32 would be 10 GB; the values and their dtype do not matter here).
        dtypes = [next(part.parameters()).dtype for part in (unet, text_encoder)]
        for part in (unet, text_encoder):
            part.to(torch.bfloat16).to_empty(device="cpu")
        network = _create_network(unet, text_encoder, lora_type, dim, alpha, conv_dim, conv_alpha, train_te)
        for part, dtype in zip((unet, text_encoder), dtypes):
            part.to("meta", dtype=dtype)
    network.apply_to()
    network.to(device, dtype=torch.float32)
    network.param_groups(1e-4, 1e-4 if train_te else None)
    return network


WEIGHT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "full_fp16": torch.float16, "full_bf16": torch.bfloat16}


def weight_dtype_of(precision: str) -> torch.dtype:
    """The frozen models' dtype: 16 bits with mixed or full 16-bit precision, fp32 with "no"."""
    return WEIGHT_DTYPES.get(precision, torch.float32)


def network_dtype_of(precision: str) -> torch.dtype:
    """The network's dtype: fp32 (mixed precision, "no"), or 16 bits with full_fp16/full_bf16 (kohya's
    --full_fp16/--full_bf16: network, gradients and optimizer state in 16 bits)."""
    return weight_dtype_of(precision) if precision.startswith("full_") else torch.float32


def setup(unet, text_encoder, network, precision: str, checkpointing: bool, train_te: bool, device: str, replay: bool = True) -> torch.dtype:
    """Dtypes and modes as loop._run sets them; returns the weight dtype. `replay=False`: exactly loop.py's
    calls (a real run on a GPU or the CPU); True adds the autocast replay to checkpointing's recomputation.
    `text_encoder` may be SDXL's pair (`SdxlTextEncoders`): each encoder is set up alike."""
    weight_dtype = weight_dtype_of(precision)
    for part in (unet, text_encoder):
        part.requires_grad_(False)
        part.eval()
        part.to(device, dtype=weight_dtype)
    network.to(device, dtype=network_dtype_of(precision))
    if checkpointing and not replay:
        unet.enable_gradient_checkpointing()
        unet.train()
        if train_te:
            for te in text_encoders(text_encoder):
                te.gradient_checkpointing_enable()
                te.train()
    elif checkpointing:
        # loop.py: enable_gradient_checkpointing() / gradient_checkpointing_enable() with their defaults
        # (non-reentrant); the context_fn only re-enters the autocast replay when a block is recomputed.
        unet.enable_gradient_checkpointing(_unet_checkpoint)
        unet.train()
        if train_te:
            for te in text_encoders(text_encoder):
                te.gradient_checkpointing_enable({"use_reentrant": False, "context_fn": _checkpoint_context})
                te.train()
    else:
        if getattr(unet, "is_gradient_checkpointing", False):
            unet.disable_gradient_checkpointing()
        for te in text_encoders(text_encoder):
            if getattr(te, "is_gradient_checkpointing", False):
                te.gradient_checkpointing_disable()
    return weight_dtype


# One training step, measured ---------------------------------------------------------------------


def encode_sdxl(text_encoder: SdxlTextEncoders, ids: torch.Tensor, max_token_length: int, device: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning as kohya's sdxl_train_util.get_hidden_states_sdxl makes it: both encoders run on
    the [batch * chunks, 77] token ids; the penultimate hidden states of each (no final layer norm), joined
    across chunks like SD's, concatenated to [batch, max_token_length + 2, 768 + 1280]; and bigG's projected
    pooled output of each caption's first chunk [batch, 1280]."""
    te1, te2 = text_encoders(text_encoder)
    batch, n_chunks, length = ids.shape
    flat = ids.reshape(batch * n_chunks, length).to(device)
    hidden1 = te1(flat, output_hidden_states=True, return_dict=True).hidden_states[-2]
    out2 = te2(flat, output_hidden_states=True, return_dict=True)
    hidden2, pooled = out2.hidden_states[-2], out2.text_embeds
    del out2
    from lora_gradio.engine.train.prompts import join_chunks  # the trainer's own joining

    hidden = torch.cat([join_chunks(hidden1, batch, max_token_length), join_chunks(hidden2, batch, max_token_length)], dim=-1)
    pooled = pooled.reshape(batch, n_chunks, -1)[:, 0]
    return hidden, pooled


def sdxl_time_ids(batch: int, height: int, width: int, device: Any = None) -> torch.Tensor:
    """The six size conditions per image (original h/w, crop top/left, target h/w): [batch, 6]."""
    return torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=torch.float32, device=device)


def measure_step(unet, text_encoder, network, *, batch: int, height: int, width: int, max_token_length: int = 225,
                 clip_skip: int = 2, train_te: bool = True, precision: str = "bf16", attention: "str | None" = "cuda",
                 device: str = "meta", policy: str = "cuda") -> dict[str, int]:
    """One training step's memory above the weights: loop.training_step's operations, on `device`.

    Mixed precision follows `policy`: "cuda" replays CUDA's autocast (the estimate's case), "cpu" replays
    the CPU's, "torch" uses the real torch.autocast of `device` (and its own choice of attention kernel).

    Returns bytes: `saved` (tensors saved for backward at the end of the forward, unique storages),
    `te_saved` (the part saved during the text encoder), `peak` (largest total alive during forward and
    backward), `grads_at_peak` (the network's gradients alive at that peak), `grads` (all of them after
    backward), `grads_at_peak` ... as above, `nongrad_peak` (the largest total alive at once of what is not
    a gradient) and `after_forward` (alive when the forward ends).

    SDXL (`text_encoder` an `SdxlTextEncoders`): both encoders run (`encode_sdxl`) and the UNet also gets
    `added_cond_kwargs` (bigG's pooled output and the six size conditions), as kohya's SDXL step does.
    """
    from lora_gradio.engine.train.prompts import encode_token_ids

    sdxl = isinstance(text_encoder, SdxlTextEncoders)
    weight_dtype = weight_dtype_of(precision)
    autocast_dtype = weight_dtype if weight_dtype != torch.float32 else None
    ignore = model_storages(unet, text_encoder, network)
    params = [p for p in network.parameters() if p.requires_grad]
    chunks = max_token_length // 75 if max_token_length > 75 else 1
    vocab = text_encoder.config.vocab_size
    saved = SavedBytes(ignore)
    peak = PeakBytes(ignore)
    hooks = [p.register_post_accumulate_grad_hook(lambda p: peak.mark_grad(p.grad)) for p in params]
    with peak:
        ids = torch.randint(0, vocab - 2, (batch, chunks, 77), device=device)
        latents = torch.randn(batch, 4, height // 8, width // 8, device=device).to(weight_dtype)
        alphas = torch.linspace(0.9991, 0.0047, 1000, device=device)
        if policy == "torch":
            amp: Any = torch.autocast(device_type=device, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
        else:
            amp = EmulatedAutocast(autocast_dtype, policy, attention)
        with saved, amp:
            unet_kwargs: dict[str, Any] = {}
            with contextlib.nullcontext() if train_te else torch.no_grad():
                if sdxl:
                    hidden, pooled = encode_sdxl(text_encoder, ids, max_token_length, device=device)
                    unet_kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(weight_dtype),
                                                        "time_ids": sdxl_time_ids(batch, height, width, device).to(weight_dtype)}
                    del pooled
                else:
                    hidden = encode_token_ids(text_encoder, ids, max_token_length, clip_skip, device=device)
            te_saved = saved.bytes
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, 1000, (batch,), device=device)
            a = alphas[timesteps].to(latents.dtype).view(-1, 1, 1, 1)
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
            prediction = unet(noisy, timesteps, hidden.to(weight_dtype), **unet_kwargs).sample
        total_saved = saved.bytes
        loss = F.mse_loss(prediction.float(), noise.float(), reduction="none").mean(dim=[1, 2, 3])
        snr = alphas[timesteps] / (1 - alphas[timesteps])
        loss = (loss * torch.clamp(snr, max=5.0) / snr).mean()
        peak.mark("forward")
        del prediction, noisy, noise, hidden, latents, unet_kwargs
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
    for hook in hooks:
        hook.remove()
    grads = [p.grad for p in params if p.grad is not None]
    result = {
        "saved": total_saved, "te_saved": te_saved, "peak": peak.peak, "grads_at_peak": peak.tagged(grads),
        "grads": sum(g.untyped_storage().nbytes() for g in grads), "after_forward": peak.marks["forward"][0],
        "nongrad_peak": peak.nongrad_peak,
    }
    for p in params:
        p.grad = None
    return result


def measure_vae_encode(vae, *, batch: int, height: int, width: int, device: str = "meta") -> int:
    """Peak bytes above the weights while the fp32 VAE encodes a batch of images (LatentCache, no grad)."""
    ignore = model_storages(vae)
    peak = PeakBytes(ignore)
    with peak, torch.no_grad():
        pixels = torch.randn(batch, 3, height, width, device=device)
        with EmulatedAutocast(None, "cuda", "cuda"):
            latents = vae.encode(pixels).latent_dist.sample()
        del latents, pixels
    return peak.peak


def measure_vae_decode(vae, *, batch: int, height: int, width: int, device: str = "meta") -> int:
    """Peak bytes above the weights while the fp32 VAE decodes latents (sample images, no grad)."""
    ignore = model_storages(vae)
    peak = PeakBytes(ignore)
    with peak, torch.no_grad():
        latents = torch.randn(batch, 4, height // 8, width // 8, device=device)
        with EmulatedAutocast(None, "cuda", "cuda"):
            image = vae.decode(latents).sample
        del image, latents
    return peak.peak


def measure_text_cache_encode(text_encoder, *, batch: int = 8, chunks: int = 3, device: str = "meta") -> int:
    """Peak bytes above the weights while the text encoder(s), as loaded (fp32), encode `batch` captions of
    `chunks` 77-token chunks without gradients (text_cache.TextEncoderCache, cache_text_encoder_outputs)."""
    from lora_gradio.engine.train.prompts import encode_token_ids

    ignore = model_storages(text_encoder)
    peak = PeakBytes(ignore)
    with peak, torch.no_grad(), EmulatedAutocast(None, "cuda", "cuda"):
        ids = torch.randint(0, text_encoder.config.vocab_size - 2, (batch, chunks, 77), device=device)
        if isinstance(text_encoder, SdxlTextEncoders):
            hidden, pooled = encode_sdxl(text_encoder, ids, 75 * chunks, device=device)
            del pooled
        else:
            hidden = encode_token_ids(text_encoder, ids, 75 * chunks, 2, device=device)
        del hidden, ids
    return peak.peak


def measure_unet_inference(unet, network, *, batch: int, height: int, width: int, tokens: int, precision: str = "bf16", device: str = "meta") -> int:
    """Peak bytes above the weights of one UNet call without grad (a sampling step with CFG: batch 2)."""
    weight_dtype = weight_dtype_of(precision)
    ignore = model_storages(unet, network)
    peak = PeakBytes(ignore)
    was_training = unet.training
    unet.eval()
    context = unet.config.cross_attention_dim
    with peak, torch.no_grad():
        latents = torch.randn(batch, 4, height // 8, width // 8, device=device, dtype=weight_dtype)
        hidden = torch.randn(batch, tokens, context, device=device, dtype=weight_dtype)
        kwargs: dict[str, Any] = {}
        if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text and size conditions
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 1280, device=device, dtype=weight_dtype),
                                           "time_ids": sdxl_time_ids(batch, height, width, device).to(weight_dtype)}
        with EmulatedAutocast(None, "cuda", "cuda"):
            out = unet(latents, torch.tensor([500] * batch, device=device), hidden, **kwargs).sample
        del out, latents, hidden, kwargs
    unet.train(was_training)
    return peak.peak


def measure_optimizer(network, optimizer_name: str, device: str = "cpu") -> dict[str, int]:
    """Persistent state bytes of an optimizer over the network's trainable parameters, and the peak above
    parameters + gradients + state during a step, measured by running two steps on `device`."""
    params = [p for p in network.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = make_optimizer(optimizer_name, params)
    optimizer.step()  # creates the state
    ignore = model_storages(network) | _storage_keys(p.grad for p in params) | _storage_keys(_state_tensors(optimizer))
    peak = PeakBytes(ignore)
    with peak:
        optimizer.step()
    state = sum(t.untyped_storage().nbytes() for t in {t.untyped_storage()._cdata: t for t in _state_tensors(optimizer)}.values())
    for p in params:
        p.grad = None
    return {"state": state, "step_peak": peak.peak, "params": sum(p.numel() for p in params)}


def _state_tensors(optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def make_optimizer(name: str, params: list, foreach: "bool | None" = None):
    """The optimizer loop.py would build (optim.build_optimizer, without the CPU fallback for AdamW8bit)."""
    groups = [{"params": params, "lr": 1e-4}]
    if name == "AdamW":
        return torch.optim.AdamW(groups, foreach=foreach)
    if name == "AdamW8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups)
    from lora_gradio.engine.train.optim import build_optimizer

    return build_optimizer(name, groups, [], on_cuda=True)[0]


# The grid and the fit ------------------------------------------------------------------------------

LORA_TYPES = ("LoRA", "LoCon", "LoHa", "LoKr", "IA3", "DoRA")
CONV_TYPES = ("LoCon", "LoHa", "LoKr", "IA3", "DoRA")
OPTIMIZERS = ("AdamW8bit", "AdamW", "Prodigy", "DAdaptation", "Lion", "AdaFactor", "CAME")
VERSIONS = ("sd_v1", "sd_v2", "sdxl")
# (batch, resolution, max_token_length): the points each set-up is measured at.
BASE_POINTS = ((1, 512, 225), (2, 512, 225), (1, 768, 225), (2, 768, 75))
DIM_POINTS = ((1, 512, 225), (2, 768, 225))
TE_POINTS = ((1, 512, 225), (2, 512, 225), (2, 768, 75))  # a subset of BASE_POINTS: the UNet-only rows are reused
# SDXL at its own sizes (1024 px native; the meta device's time does not grow with the size).
XL_BASE_POINTS = ((1, 1024, 225), (2, 1024, 225), (1, 768, 225), (2, 768, 75), (4, 1024, 225))  # batch 4: the XL defaults
XL_DIM_POINTS = ((1, 1024, 225), (2, 768, 225))
# What training the text encoders adds has a part per image pixel too (with checkpointing, 1024 px: 62 MiB
# per image and 0.10 MiB per token; 768 px: 35 MiB and the same per token): sizes and token counts vary apart.
XL_TE_POINTS = ((1, 1024, 225), (2, 1024, 225), (2, 768, 75), (4, 1024, 75), (1, 768, 225), (4, 768, 225))


def grid_points(version: str) -> tuple[tuple, tuple, tuple]:
    """(base, dim, text-encoder) points of `version`."""
    return (XL_BASE_POINTS, XL_DIM_POINTS, XL_TE_POINTS) if is_sdxl(version) else (BASE_POINTS, DIM_POINTS, TE_POINTS)


def vae_points(version: str) -> tuple[tuple, tuple, tuple]:
    """(encode, decode, UNet inference) points (batch, resolution) of `version`."""
    if is_sdxl(version):
        return ((1, 1024), (2, 768), (4, 512), (1, 512)), ((1, 1024), (1, 768), (2, 512)), ((2, 1024), (2, 768), (4, 512))
    return ((1, 512), (4, 512), (2, 768), (4, 256)), ((1, 512), (1, 768), (2, 512)), ((2, 512), (2, 768), (4, 512))


def quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    logging.getLogger("lycoris").setLevel(logging.ERROR)


def build(version: str, lora_type: str, dim: int, conv_dim: int, train_te: bool, precision: str, checkpointing: bool,
          device: str = "meta", replay: bool = True):
    """UNet, text encoder and our network as loop.py sets them up (alpha = half the dim, as the guide)."""
    unet = build_unet(version, device)
    te = build_text_encoder(version, device)
    network = attach_network(unet, te, lora_type, dim, max(1, dim // 2), conv_dim, max(1, conv_dim // 2), train_te, device)
    setup(unet, te, network, precision, checkpointing, train_te, device, replay=replay)
    return unet, te, network


def network_param_counts(network) -> dict[str, int]:
    """Parameters of the network on the UNet and on the text encoder(s) (SDXL: both together)."""
    total = sum(p.numel() for p in network.parameters())
    unet = sum(p.numel() for p in network.unet_net.parameters())
    return {"unet": unet, "text_encoder": total - unet}


def activation(row: dict, version: str = "sd_v1") -> int:
    """What memory.py calls activations (it adds all the gradients to them).

    SD 1.x/2.x: the step's peak above the weights, less the gradients alive then. SDXL: the largest total
    alive at once of what is not a gradient (`nongrad_peak`). Both bound the real peak from above once all
    the gradients are added; SD's is tighter, but with gradient checkpointing SDXL's peak moves from the
    forward's end to the backward's end as the network grows (at 1024 px, LoRA 64: 0.3 GiB of activations
    beside 0.6 GiB of gradients, LoRA 16: 0.75 GiB beside none), which no linear fit follows; the
    non-gradient peak grows with every term, as the fit assumes, and costs at most the gradients not yet
    alive at that peak (0.1 GiB at LoRA 8)."""
    if is_sdxl(version):
        return row["nongrad_peak"]
    return row["peak"] - row["grads_at_peak"]


def measure_points(version, precision, checkpointing, lora_type, dim, conv_dim, train_te, points) -> tuple[list[dict], dict]:
    unet, te, network = build(version, lora_type, dim, conv_dim, train_te, precision, checkpointing)
    counts = network_param_counts(network)
    rows = []
    for batch, reso, tokens in points:
        m = measure_step(unet, te, network, batch=batch, height=reso, width=reso, max_token_length=tokens, train_te=train_te, precision=precision)
        # conv_dim only matters to the types that train the convs (network.py ignores it for plain LoRA).
        effective_conv = conv_dim if lora_type in CONV_TYPES else 0
        rows.append({"batch": batch, "resolution": reso, "tokens": tokens, "dim": dim, "conv_dim": effective_conv, "unet_params": counts["unet"], **m})
    return rows, counts


def text_encoder_features(batch: int, resolution: int, tokens: int) -> list[float]:
    """The text-encoder model's terms (memory.text_encoder_activation_bytes): per caption token, a fixed
    part, per latent pixel (SD's constants were fitted before the last term: theirs is 0)."""
    return [batch * max(1, tokens // 75) * 77, 1.0, batch * (resolution // 8) ** 2]


def unet_features(batch: int, resolution: int, tokens: int, dim: int, conv_dim: int, unet_params: int) -> list[float]:
    """The activation model's terms (memory.py evaluates the same ones): per sample, latent pixels (plain and
    times the ranks) and context tokens; per step, a fixed part and one per network parameter."""
    px = (resolution // 8) ** 2
    return [batch * px, batch * px * dim, batch * px * conv_dim, batch * (tokens + 2), 1.0, float(unet_params)]


def lstsq(rows: list[list[float]], values: list[float], intercept: int) -> tuple[list[float], float]:
    """Least squares with no negative term (a term that comes out negative is dropped and the rest refitted:
    more pixels, tokens or rank never need less memory), then the constant term (column `intercept`) raised
    until no point is underestimated: the fit may only err on the safe side. Returns the coefficients and
    the largest overestimate among the points (relative)."""
    import numpy as np

    a, y = np.array(rows, dtype=float), np.array(values, dtype=float)
    keep = [i for i in range(a.shape[1]) if np.any(a[:, i])]  # unused terms (all zero) get 0
    while True:
        sub = a[:, keep]
        scale = np.abs(sub).max(axis=0)  # scaled columns: the solver treats the terms alike
        solved, *_ = np.linalg.lstsq(sub / scale, y, rcond=None)
        solved = solved / scale
        negative = [k for k, c in zip(keep, solved, strict=True) if c < 0 and k != intercept]
        if not negative:
            break
        keep.remove(min(negative, key=lambda k: solved[keep.index(k)] * scale[keep.index(k)]))
    coef = np.zeros(a.shape[1])
    coef[keep] = solved
    coef[intercept] += max(0.0, float(np.max(y - a @ coef)))
    worst = float(max((a[i] @ coef - y[i]) / y[i] for i in range(len(y))))
    return [float(c) for c in coef], worst


def refit_unet(entry: dict, version: str = "sd_v1") -> dict:
    """The UNet fit from a --fit JSON entry's measured rows (with the current `lstsq`)."""
    rows = entry["rows"]
    coef, worst = lstsq([unet_features(r["batch"], r["resolution"], r["tokens"], r["dim"], r["conv_dim"], r["unet_params"]) for r in rows],
                        [activation(r, version) for r in rows], intercept=4)
    return dict(entry, coef=coef, worst_fit_error=worst)


def selected(only: list[str], *values: str) -> bool:
    """--only: for each kind of choice named (precision, checkpointing, type), the set-up must be one named."""
    kinds = (("16bit", "fp32"), ("full", "checkpointing"), LORA_TYPES)
    return all(value in only or not any(x in only for x in kind) for value, kind in zip(values, kinds, strict=True))


def fit_grid(args) -> int:
    """Measure everything memory.py needs and print it as the Python constants memory.py holds."""
    quiet()
    started = time.perf_counter()
    result: dict[str, Any] = {"unet": {}, "text_encoder": {}, "network_params": {}, "base_params": {}, "vae": {}, "sampling": {}, "optimizers": {}}
    te_only = bool(args.text_encoder_only)
    if te_only:  # the rest comes from an earlier --fit's JSON; only the text-encoder rows are measured again
        result.update({k: v for k, v in json.loads(Path(args.text_encoder_only).read_text()).items() if k != "text_encoder"})
    for version in [] if args.optimizers_only else args.versions:
        base_points, dim_points, te_points = grid_points(version)
        for precision, prec_key in (("bf16", "16bit"), ("no", "fp32")):
            for checkpointing in (False, True):
                ck_key = "checkpointing" if checkpointing else "full"
                for lora_type in LORA_TYPES:
                    if not selected(args.only, prec_key, ck_key, lora_type):
                        continue
                    key = (version, prec_key, ck_key, lora_type)
                    if te_only:
                        rows: list[dict] = []
                        te_rows, _ = measure_points(version, precision, checkpointing, lora_type, 16, 8, True, te_points)
                        fit_text_encoder(result, key, te_rows, rows, args.json_out)
                        continue
                    rows, counts = measure_points(version, precision, checkpointing, lora_type, 16, 8, False, base_points)
                    more, counts64 = measure_points(version, precision, checkpointing, lora_type, 64, 8, False, dim_points)
                    rows += more
                    if is_sdxl(version):  # SDXL's defaults are dim 8: with checkpointing, its peak is not linear in the dim
                        more, _ = measure_points(version, precision, checkpointing, lora_type, 8, 8, False, dim_points)
                        rows += more
                    if lora_type in CONV_TYPES:
                        more, _ = measure_points(version, precision, checkpointing, lora_type, 16, 32, False, dim_points)
                        rows += more
                    coef, worst = lstsq([unet_features(r["batch"], r["resolution"], r["tokens"], r["dim"], r["conv_dim"], r["unet_params"]) for r in rows], [activation(r, version) for r in rows], intercept=4)
                    result["unet"]["/".join(key)] = {"coef": coef, "worst_fit_error": worst, "points": len(rows),
                                                     "rows": [{k: r[k] for k in ("batch", "resolution", "tokens", "dim", "conv_dim", "unet_params", "peak", "grads_at_peak", "saved", "nongrad_peak")} for r in rows]}
                    print("unet", "/".join(key), f"largest overestimate {worst:.2%}", [f"{c:.6g}" for c in coef], flush=True)
                    # What training the text encoder adds (its own LoRA, its activations, grads through the UNet's context).
                    te_rows, te_counts = measure_points(version, precision, checkpointing, lora_type, 16, 8, True, te_points)
                    fit_text_encoder(result, key, te_rows, rows, args.json_out)
                    if precision == "bf16" and not checkpointing:
                        te64 = build(version, lora_type, 64, 32, True, precision, False)[2]
                        c16, c64 = te_counts, network_param_counts(te64)
                        u32 = network_param_counts(build(version, lora_type, 16, 32, False, precision, False)[2]) if lora_type in CONV_TYPES else counts
                        per_dim_unet = (counts64["unet"] - counts["unet"]) / 48
                        per_conv_unet = (u32["unet"] - counts["unet"]) / 24
                        per_dim_te = (c64["text_encoder"] - c16["text_encoder"]) / 48
                        result["network_params"][f"{version}/{lora_type}"] = {
                            "unet": [counts["unet"] - 16 * per_dim_unet - 8 * per_conv_unet, per_dim_unet, per_conv_unet],
                            "text_encoder": [c16["text_encoder"] - 16 * per_dim_te, per_dim_te],
                            "check_64_32": network_param_counts(te64),
                        }
                        print("  params", json.dumps(result["network_params"][f"{version}/{lora_type}"]), flush=True)
        if te_only:
            continue
        vae = build_vae(version)
        vae.requires_grad_(False)
        enc_points, dec_points, inf_points = vae_points(version)
        enc = [(b, r, measure_vae_encode(vae, batch=b, height=r, width=r)) for b, r in enc_points]
        dec = [(b, r, measure_vae_decode(vae, batch=b, height=r, width=r)) for b, r in dec_points]
        result["vae"][version] = {"encode": _fit_px(enc), "decode": _fit_px(dec)}
        te = build_text_encoder(version)
        te.requires_grad_(False)
        result.setdefault("text_cache", {})[version] = max(measure_text_cache_encode(te, batch=b, chunks=c) / (b * c * 77) for b, c in ((8, 3), (8, 1), (2, 2)))
        result["sampling"][version] = {}
        for precision, prec_key in (("bf16", "16bit"), ("no", "fp32")):
            unet, te, network = build(version, "LoRA", 16, 8, False, precision, False)
            inf = [(b, r, measure_unet_inference(unet, network, batch=b, height=r, width=r, tokens=227, precision=precision)) for b, r in inf_points]
            result["sampling"][version][prec_key] = _fit_px(inf)
        lora = {id(q) for q in network.parameters()}  # (not among the UNet's, but never count them)
        result["base_params"][version] = {
            "unet": sum(p.numel() for p in unet.parameters() if id(p) not in lora),
            "text_encoder": sum(p.numel() for p in te.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
        }
        print("base params", version, result["base_params"][version], flush=True)
        print("vae", version, json.dumps(result["vae"][version]), "unet inference", json.dumps(result["sampling"][version]), flush=True)
    if not args.no_optimizers and not te_only:
        result["optimizers"] = measure_optimizers(args.versions[0])
        result["optimizers_16bit"] = measure_optimizers(args.versions[0], torch.float16)
    print(f"measured in {time.perf_counter() - started:.0f} s", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=1))
    print(render_constants(result))
    return 0


def fit_text_encoder(result: dict, key: tuple, te_rows: list[dict], rows: list[dict], json_out: str) -> None:
    """What training the text encoder(s) adds: each text-encoder row against the same step with them frozen
    (from `rows` where measured, else measured now), fitted on `text_encoder_features`."""
    version, prec_key, ck_key, lora_type = key
    precision = "bf16" if prec_key == "16bit" else "no"
    base = {(r["batch"], r["resolution"], r["tokens"]): r for r in rows if r["dim"] == 16 and r["conv_dim"] == 8}
    missing = [(r["batch"], r["resolution"], r["tokens"]) for r in te_rows if (r["batch"], r["resolution"], r["tokens"]) not in base]
    if missing:
        extra, _ = measure_points(version, precision, ck_key == "checkpointing", lora_type, 16, 8, False, missing)
        base.update({(r["batch"], r["resolution"], r["tokens"]): r for r in extra})
    feats, values, kept = [], [], []
    for r in te_rows:
        point = (r["batch"], r["resolution"], r["tokens"])
        feats.append(text_encoder_features(*point))
        values.append(activation(r, version) - activation(base[point], version))
        kept.append({"batch": point[0], "resolution": point[1], "tokens": point[2], "added": values[-1]})
    te_coef, te_worst = lstsq(feats, values, intercept=1)
    result["text_encoder"]["/".join(key)] = {"coef": te_coef, "worst_fit_error": te_worst, "rows": kept}
    if json_out:  # as it goes: a long run that stops keeps what it measured
        Path(json_out).write_text(json.dumps(result, indent=1))
    print("  text encoder", "/".join(key), f"largest overestimate {te_worst:.2%}", [f"{c:.6g}" for c in te_coef], flush=True)


def measure_optimizers(version: str, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Optimizer state and step bytes per trainable parameter, with each network type at dim 16 / conv 8 on
    real CPU tensors (the optimizers' own code; AdamW with foreach=True as on a GPU). `dtype` float16: the
    network in 16 bits, as full_fp16/full_bf16 train it (the state follows the parameters' dtype)."""
    out: dict[str, Any] = {}
    for lora_type in LORA_TYPES:
        unet = build_unet(version, "meta")
        te = build_text_encoder(version, "meta")
        network = attach_network(unet, te, lora_type, 16, 8, 8, 4, True, "meta")
        network.to(dtype=dtype)
        network.to_empty(device="cpu")
        with torch.no_grad():
            for p in network.parameters():
                p.normal_(0, 0.01)
        for name in OPTIMIZERS:
            try:
                m = measure_optimizer(network, name, "cpu") if name != "AdamW" else _measure_adamw_foreach(network)
            except Exception as exc:  # an optimizer package that is not installed
                print(f"  {name}: not measured ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})", flush=True)
                continue
            out[f"{lora_type}/{name}"] = {"state_per_param": m["state"] / m["params"], "step_per_param": m["step_peak"] / m["params"], "params": m["params"]}
            print("optimizer", lora_type, name, str(dtype), json.dumps(out[f"{lora_type}/{name}"]), flush=True)
    return out


def _measure_adamw_foreach(network) -> dict[str, int]:
    params = [p for p in network.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW([{"params": params, "lr": 1e-4}], foreach=True)
    opt.step()
    ignore = model_storages(network) | _storage_keys(p.grad for p in params) | _storage_keys(_state_tensors(opt))
    peak = PeakBytes(ignore)
    with peak:
        opt.step()
    state = sum(t.untyped_storage().nbytes() for t in _state_tensors(opt))
    for p in params:
        p.grad = None
    return {"state": state, "step_peak": peak.peak, "params": sum(p.numel() for p in params)}


def _fit_px(points: list[tuple[int, int, int]]) -> dict[str, float]:
    """bytes = per_px * batch * image pixels, the largest ratio of the points (and how far the others are)."""
    ratios = [value / (batch * reso * reso) for batch, reso, value in points]
    per_px = max(ratios)
    return {"per_px": per_px, "worst_fit_error": max(abs(per_px - r) / r for r in ratios)}


def render_constants(result: dict[str, Any]) -> str:
    """The fit as the Python literals memory.py holds."""
    import pprint

    def repr(value: Any) -> str:  # noqa: A001  (wrapped literals, as pasted into memory.py)
        return pprint.pformat(value, width=120, compact=True, sort_dicts=False)

    lines = ["# ---- paste into lora_gradio/engine/train/memory.py ----"]
    lines.append("_BASE_PARAMS = " + repr(result["base_params"]))
    params = {}
    for key, value in result["network_params"].items():
        version, lora_type = key.split("/")
        params.setdefault(version, {})[lora_type] = {"unet": tuple(round(v, 3) for v in value["unet"]), "text_encoder": tuple(round(v, 3) for v in value["text_encoder"])}
    lines.append("_NETWORK_PARAMS = " + repr(params))
    unet: dict = {}
    for key, value in result["unet"].items():
        version, prec, ck, lora_type = key.split("/")
        unet.setdefault(version, {}).setdefault(prec, {}).setdefault(ck, {})[lora_type] = tuple(float(f"{c:.6g}") for c in value["coef"])
    lines.append("_UNET_ACTIVATIONS = " + repr(unet))
    te: dict = {}
    for key, value in result["text_encoder"].items():
        version, prec, ck, lora_type = key.split("/")
        te.setdefault(version, {}).setdefault(prec, {}).setdefault(ck, {})[lora_type] = tuple(float(f"{c:.6g}") for c in value["coef"])
    lines.append("_TEXT_ENCODER_ACTIVATIONS = " + repr(te))
    lines.append("_VAE_ENCODE_PER_PX = " + repr({v: float(f"{x['encode']['per_px']:.6g}") for v, x in result["vae"].items()}))
    lines.append("_VAE_DECODE_PER_PX = " + repr({v: float(f"{x['decode']['per_px']:.6g}") for v, x in result["vae"].items()}))
    lines.append("_UNET_SAMPLING_PER_PX = " + repr({v: {p: float(f"{y['per_px']:.6g}") for p, y in x.items()} for v, x in result["sampling"].items()}))
    lines.append("_TEXT_CACHE_ENCODE_PER_TOKEN = " + repr({v: float(f"{x:.6g}") for v, x in result.get("text_cache", {}).items()}))
    for key, constant in (("optimizers", "_OPTIMIZER_BYTES_PER_PARAM"), ("optimizers_16bit", "_OPTIMIZER_BYTES_PER_PARAM_16BIT")):
        opt: dict = {}
        for name_key, value in result.get(key, {}).items():
            lora_type, name = name_key.split("/")
            opt.setdefault(name, {})[lora_type] = (round(value["state_per_param"], 4), round(value["step_per_param"], 4))
        if opt:
            lines.append(f"{constant} = " + repr(opt))
    return "\n".join(lines)


# Checking the estimate ------------------------------------------------------------------------------

# Points off the fitting grid: (version, precision, checkpointing, lora_type, dim, conv_dim, train_te, batch, resolution, tokens)
CHECK_POINTS = (
    ("sd_v1", "bf16", False, "LoRA", 32, 8, True, 3, 640, 150),
    ("sd_v1", "bf16", False, "LoRA", 128, 8, False, 1, 1024, 225),
    ("sd_v1", "bf16", True, "LoRA", 16, 8, True, 6, 576, 225),
    ("sd_v1", "bf16", False, "LoCon", 32, 16, True, 2, 448, 75),
    ("sd_v1", "bf16", True, "LoCon", 64, 32, False, 8, 512, 225),
    ("sd_v1", "no", False, "LoRA", 16, 8, True, 2, 384, 225),
    ("sd_v1", "bf16", False, "LoHa", 8, 4, True, 2, 576, 150),
    ("sd_v1", "bf16", False, "DoRA", 16, 8, False, 1, 640, 225),
    ("sd_v2", "bf16", False, "LoRA", 16, 8, True, 2, 640, 225),
    ("sd_v2", "bf16", True, "LoRA", 32, 8, False, 4, 896, 150),
    ("sdxl", "bf16", True, "LoRA", 8, 8, True, 4, 1024, 225),  # the XL notebook's defaults (its full fp16 below)
    ("sdxl", "full_fp16", True, "LoRA", 8, 8, True, 4, 1024, 225),
    ("sdxl", "full_fp16", False, "LoRA", 8, 8, True, 1, 1024, 225),
    ("sdxl", "bf16", True, "LoCon", 16, 8, True, 2, 896, 150),
    ("sdxl", "full_bf16", True, "LoCon", 16, 8, False, 3, 832, 225),
    ("sdxl", "bf16", False, "LoRA", 32, 8, False, 1, 1152, 75),
    ("sdxl", "no", True, "LoRA", 16, 8, True, 2, 1024, 225),
)


def settings_for(lora_type="LoRA", dim=16, conv_dim=8, train_te=True, batch=1, resolution=512, tokens=225, checkpointing=False,
                 precision="bf16", optimizer="AdamW8bit"):
    from lora_gradio.engine.train.config import TrainSettings

    return TrainSettings(
        lora_type=lora_type, network_dim=dim, network_alpha=max(1, dim // 2), conv_dim=conv_dim, conv_alpha=max(1, conv_dim // 2),
        text_encoder_lr=1e-4 if train_te else 0.0, train_batch_size=batch, resolution=resolution, max_token_length=tokens,
        gradient_checkpointing=checkpointing, mixed_precision={"no": "no"}.get(precision, precision), optimizer=optimizer,
        min_bucket_reso=min(256, resolution), max_bucket_reso=max(1024, resolution),
    )


def estimated_activations(version, precision, checkpointing, lora_type, dim, conv_dim, train_te, batch, resolution, tokens) -> int:
    from lora_gradio.engine.train import memory

    params = memory.network_params(version, lora_type, dim, conv_dim, train_te)
    act = memory.unet_activation_bytes(version, precision, checkpointing, lora_type, batch, resolution, resolution, tokens, dim, conv_dim, params["unet"])
    if train_te:
        act += memory.text_encoder_activation_bytes(version, precision, checkpointing, lora_type, batch, tokens, resolution, resolution)
    return act


def check_grid(args) -> int:
    """memory.py's activations vs a fresh measurement at points that were not fitted."""
    quiet()
    from lora_gradio.engine.train import memory

    print(f"{'version':7} {'prec':4} {'ckpt':4} {'type':5} {'dim':>7} {'TE':3} {'batch':>5} {'px':>5} {'tok':>4}  {'measured':>10} {'estimate':>10} {'error':>7}  params measured/estimated")
    worst = 0.0
    for point in CHECK_POINTS:
        version, precision, ck, lora_type, dim, conv_dim, train_te, batch, reso, tokens = point
        if version not in args.versions:
            continue
        unet, te, network = build(version, lora_type, dim, conv_dim, train_te, precision, ck)
        m = measure_step(unet, te, network, batch=batch, height=reso, width=reso, max_token_length=tokens, train_te=train_te, precision=precision)
        measured = activation(m, version)
        estimate = estimated_activations(*point)
        error = (estimate - measured) / measured
        worst = max(worst, abs(error))
        counts = network_param_counts(network)
        est_params = memory.network_params(version, lora_type, dim, conv_dim, train_te)
        print(f"{version:7} {precision:4} {str(ck)[0]:4} {lora_type:5} {dim:>3}/{conv_dim:<3} {str(train_te)[0]:3} {batch:>5} {reso:>5} {tokens:>4}  "
              f"{measured / MiB:8.1f}Mi {estimate / MiB:8.1f}Mi {error:+7.2%}  {sum(counts.values())}/{sum(est_params.values())}", flush=True)
    print(f"worst error {worst:.2%}")
    return 0


def validate_cpu(args) -> int:
    """The meta-device measurement against the project's real training_step on the CPU (fp32, 256 px)."""
    quiet()
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from benchmarks.train_speed import tokenizers_for_benchmark
    from lora_gradio.engine.train.config import resolved_min_snr_gamma
    from lora_gradio.engine.train.loop import training_step
    from lora_gradio.engine.train.models import BaseModel, ModelSource

    torch.manual_seed(0)
    reso, batch = args.resolution, 1
    settings = settings_for(resolution=reso, batch=batch, precision="no")
    started = time.perf_counter()
    unet, te, network = build("sd_v1", "LoRA", 16, 8, True, "no", False, device="cpu", replay=False)
    tokenizers, _ = tokenizers_for_benchmark("sd_v1")
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False)
    model = BaseModel(unet, None, [te], tokenizers, scheduler, "sd_v1", ModelSource("diffusers", "random", "random SD1.5"))
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    caption = ", ".join(f"tag{i} 1girl solo smile red hair" for i in range(60))
    ignore = model_storages(unet, te, network)
    saved, peak = SavedBytes(ignore), PeakBytes(ignore)
    print(f"built the real-size models on the CPU in {time.perf_counter() - started:.0f} s; running one step at {reso} px ...", flush=True)
    started = time.perf_counter()
    with peak, saved:
        latents = torch.randn(batch, 4, reso // 8, reso // 8)
        training_step(accelerator, model, network, latents, [caption] * batch, [False] * batch, settings,
                      resolved_min_snr_gamma(settings), scheduler.alphas_cumprod, torch.float32, True)
    params = [p for p in network.parameters() if p.requires_grad]
    real = {"saved": saved.bytes, "peak": peak.peak, "grads_at_peak": peak.tagged([p.grad for p in params if p.grad is not None])}
    print(f"real CPU step in {time.perf_counter() - started:.0f} s", flush=True)
    for p in params:
        p.grad = None
    del unet, te, network, model
    unet, te, network = build("sd_v1", "LoRA", 16, 8, True, "no", False)
    meta = measure_step(unet, te, network, batch=batch, height=reso, width=reso, train_te=True, precision="no", attention="cpu")
    for key in ("saved", "peak"):
        print(f"{key:6}: real CPU {real[key]:,} bytes, meta device {meta[key]:,} bytes, difference {(meta[key] - real[key]) / real[key]:+.3%}")
    est = estimated_activations("sd_v1", "no", False, "LoRA", 16, 8, True, batch, reso, 225)
    print(f"memory.py's fp32 activations for this step: {est:,} bytes ({(est - activation(real)) / activation(real):+.2%} against the real step, "
          "whose attention is PyTorch's CPU kernel rather than the CUDA one)")
    return 0


class _Gpu:
    """torch.cuda's memory statistics, or (`--smoke`) the same questions answered on the CPU, so the --cuda
    code path can be run through on a machine without a GPU (its figures are then CPU tensors under the
    CPU's autocast, not a GPU measurement)."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self._peak: "PeakBytes | None" = None
        self._base = 0

    def name(self) -> str:
        return "CPU (smoke run)" if self.smoke else torch.cuda.get_device_name()

    def precision(self) -> str:
        return "bf16" if self.smoke or torch.cuda.is_bf16_supported() else "fp16"

    def free_total(self) -> tuple[int, int]:
        return (0, 0) if self.smoke else torch.cuda.mem_get_info()

    def reserved(self) -> int:
        return 0 if self.smoke else torch.cuda.memory_reserved()

    def sync(self) -> None:
        if not self.smoke:
            torch.cuda.synchronize()

    def empty(self) -> None:
        if not self.smoke:
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def measure(self, held: int = 0, ignore: "set[int] | None" = None):
        """Peak allocated inside the block: torch.cuda.max_memory_allocated, or on the CPU the bytes `held`
        (weights, optimizer state: storages `ignore`) plus the peak of what the block creates."""
        if self.smoke:
            self._peak, self._base = PeakBytes(ignore), held
            with self._peak:
                yield
        else:
            torch.cuda.reset_peak_memory_stats()
            yield
            torch.cuda.synchronize()

    def peak_allocated(self) -> int:
        return self._base + self._peak.peak if self.smoke else torch.cuda.max_memory_allocated()

    def peak_reserved(self) -> int:
        return self.peak_allocated() if self.smoke else torch.cuda.max_memory_reserved()


def _bytes_of(tensors: Iterable[torch.Tensor]) -> int:
    return sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}.values())


def _train_step(training_step, accelerator, model, network, optimizer, latents, captions, settings, gamma, alphas, weight_dtype) -> None:
    """One step as loop.py takes it: training_step, then the optimizer."""
    training_step(accelerator, model, network, latents, captions, [False] * len(captions), settings, gamma, alphas, weight_dtype, True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def cuda_grid(args) -> int:
    """Real training steps on the GPU: torch.cuda.max_memory_allocated against memory.py's estimate."""
    quiet()
    if not args.smoke and not torch.cuda.is_available():
        print("--cuda needs an NVIDIA GPU with a CUDA build of torch (--smoke runs the same code on the CPU, for testing it).")
        return 2
    if is_sdxl(args.versions[0]):
        # Its steps are loop.training_step's with SD's one text encoder; SDXL's estimate rests on the meta
        # measurement (measure_step, kohya's SDXL step) until the loop's SDXL step is measured here too.
        print("--cuda measures SD 1.x/2.x (loop.training_step with one text encoder); SDXL is not wired in yet: use --versions sd_v1 or sd_v2.")
        return 2
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    from benchmarks.train_speed import tokenizers_for_benchmark
    from lora_gradio.engine.train import memory
    from lora_gradio.engine.train.latents import encode_batch_size
    from lora_gradio.engine.train.config import resolved_min_snr_gamma
    from lora_gradio.engine.train.loop import training_step
    from lora_gradio.engine.train.models import BaseModel, ModelSource
    from lora_gradio.engine.train.prompts import encode_token_ids

    gpu = _Gpu(args.smoke)
    dev = gpu.device
    if not args.smoke:
        torch.cuda.init()
    free0, total = gpu.free_total()
    name, precision = gpu.name(), gpu.precision()
    print(f"{name}: {total / GiB:.1f} GiB, {free0 / GiB:.1f} GiB free after creating the CUDA context; {precision}; torch {torch.__version__}")
    if not args.smoke:
        print(f"CUDA context at start (in use, not PyTorch's): {(total - free0 - gpu.reserved()) / MiB:.0f} MiB "
              f"(memory.py assumes {memory.CUDA_CONTEXT_BYTES / MiB:.0f} MiB; other processes on this GPU count here too)")
    tokenizers, tokenizer_name = tokenizers_for_benchmark("sd_v1")
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False)
    caption = ", ".join(f"tag{i} 1girl solo smile red hair" for i in range(60))  # long enough for 225 tokens
    version = args.versions[0]
    reso0 = args.resolutions[0]

    def new_accelerator():
        return Accelerator(mixed_precision=precision, cpu=args.smoke)

    # 1. The autocast replay against the real autocast: bytes saved for backward in one forward.
    unet, te, network = build(version, "LoRA", 16, 8, True, precision, False, device=dev, replay=False)
    accelerator = new_accelerator()
    saved = SavedBytes(model_storages(unet, te, network))
    with saved, accelerator.autocast():
        ids = torch.randint(0, te.config.vocab_size - 2, (1, 3, 77), device=dev)
        hidden = encode_token_ids(te, ids, 225, 2, device=dev)
        latents = torch.randn(1, 4, reso0 // 8, reso0 // 8, device=dev, dtype=unet.dtype)
        out = unet(latents, torch.tensor([500], device=dev), hidden.to(unet.dtype)).sample
    del out, hidden, latents, unet, te, network
    meta_unet, meta_te, meta_net = build(version, "LoRA", 16, 8, True, precision, False)
    meta = measure_step(meta_unet, meta_te, meta_net, batch=1, height=reso0, width=reso0, train_te=True, precision=precision)
    print(f"saved for backward, {reso0} px batch 1: real autocast on {name} {saved.bytes / MiB:.1f} MiB, "
          f"CUDA autocast replayed on the meta device {meta['saved'] / MiB:.1f} MiB ({(meta['saved'] - saved.bytes) / saved.bytes:+.2%})", flush=True)
    del meta_unet, meta_te, meta_net, saved
    gpu.empty()

    # 2. Latent caching: the fp32 VAE encoding a batch of images.
    vae = build_vae(version, dev)
    vae.requires_grad_(False)
    for reso in args.resolutions:
        gpu.empty()
        with gpu.measure(_bytes_of(list(vae.parameters()) + list(vae.buffers())), model_storages(vae)), torch.no_grad():
            vae.encode(torch.randn(encode_batch_size(reso, reso), 3, reso, reso, device=dev)).latent_dist.sample()
        measured = gpu.peak_allocated()
        estimate = memory.estimate_memory(settings_for(resolution=reso, precision=precision), version).phase_total("caching latents") - memory.CUDA_CONTEXT_BYTES
        print(f"caching latents at {reso} px: measured {measured / GiB:.2f} GiB allocated, estimate {estimate / GiB:.2f} GiB ({(estimate - measured) / measured:+.1%})", flush=True)
    del vae
    gpu.empty()

    # 3. Training steps over the grid.
    print(f"\n{'reso':>4} {'batch':>5} {'ckpt':>4} {'optimizer':11} {'type':5} {'allocated':>10} {'reserved':>9} {'estimate':>9} {'error':>7}  s/step")
    errors = []
    for ck in args.checkpointing:
        for lora_type in args.lora_types:
            unet, te, network = build(version, lora_type, 16, 8, True, precision, ck, device=dev, replay=False)
            model = BaseModel(unet, None, [te], tokenizers, scheduler, version, ModelSource("diffusers", "random", "random"))
            alphas = scheduler.alphas_cumprod.to(dev)
            weights = _bytes_of(list(unet.parameters()) + list(unet.buffers()) + list(te.parameters()) + list(te.buffers()))
            for optimizer_name in args.optimizers:
                for reso in args.resolutions:
                    for batch in args.batches:
                        settings = settings_for(lora_type, 16, 8, True, batch, reso, 225, ck, precision, optimizer_name)
                        params = [p for p in network.parameters() if p.requires_grad]
                        try:
                            optimizer = make_optimizer(optimizer_name, params)
                        except Exception as exc:  # a package that is not installed
                            print(f"{optimizer_name}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0]})")
                            break
                        accelerator = new_accelerator()
                        prepared, optimizer = accelerator.prepare(network, optimizer)
                        latents = torch.randn(batch, 4, reso // 8, reso // 8)
                        gamma = resolved_min_snr_gamma(settings)

                        step = functools.partial(_train_step, training_step, accelerator, model, prepared, optimizer, latents,
                                                 [caption] * batch, settings, gamma, alphas, unet.dtype)

                        seconds = float("nan")
                        try:
                            gpu.empty()
                            step()  # creates the optimizer state
                            gpu.sync()
                            held = weights + _bytes_of(list(network.parameters()) + _state_tensors(optimizer))
                            with gpu.measure(held, model_storages(unet, te, network) | _storage_keys(_state_tensors(optimizer))):
                                started = time.perf_counter()
                                for _ in range(args.steps):
                                    step()
                                gpu.sync()
                                seconds = (time.perf_counter() - started) / args.steps
                            allocated, reserved = gpu.peak_allocated(), gpu.peak_reserved()
                        except torch.cuda.OutOfMemoryError:
                            allocated = reserved = None
                        estimate = memory.estimate_memory(settings, version, on_cuda=True, bf16_supported=precision == "bf16").phase_total("training") - memory.CUDA_CONTEXT_BYTES
                        if allocated is None:
                            print(f"{reso:>4} {batch:>5} {str(ck)[0]:>4} {optimizer_name:11} {lora_type:5} out of memory; estimate {estimate / GiB:.2f} GiB", flush=True)
                        else:
                            error = (estimate - allocated) / allocated
                            errors.append(error)
                            print(f"{reso:>4} {batch:>5} {str(ck)[0]:>4} {optimizer_name:11} {lora_type:5} {allocated / GiB:8.2f}Gi {reserved / GiB:7.2f}Gi "
                                  f"{estimate / GiB:7.2f}Gi {error:+7.1%}  {seconds:.3f}", flush=True)
                        accelerator.free_memory()
                        del optimizer, prepared, accelerator, latents, step
                        for p in params:
                            p.grad = None
            del unet, te, network, model
            gpu.empty()
    if not args.smoke:
        free1, _ = gpu.free_total()
        print(f"\nCUDA context + kernels loaded + libraries at the end (in use, not PyTorch's reserve): {(total - free1 - gpu.reserved()) / MiB:.0f} MiB")
    if errors:
        print(f"estimate vs max_memory_allocated: mean error {sum(errors) / len(errors):+.1%}, worst {max(errors, key=abs):+.1%} over {len(errors)} runs")
    print(f"(tokenizer: {tokenizer_name}; estimate = the training phase without the CUDA context)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--fit", action="store_true", help="measure the grid on the meta device and print the constants")
    mode.add_argument("--check", action="store_true", help="estimate vs fresh meta measurements at points off the grid")
    mode.add_argument("--validate-cpu", action="store_true", help="meta measurement vs the real training_step on the CPU")
    mode.add_argument("--cuda", action="store_true", help="real training steps on the GPU: estimate vs measured")
    mode.add_argument("--merge", nargs="+", metavar="JSON", help="print the constants of several --fit --json-out files together")
    parser.add_argument("--versions", nargs="+", default=["sd_v1", "sd_v2"], choices=list(VERSIONS))
    parser.add_argument("--json-out", default="", help="--fit: also write the raw fit here")
    parser.add_argument("--no-optimizers", action="store_true", help="--fit: leave out the optimizer measurements")
    parser.add_argument("--text-encoder-only", default="", metavar="JSON",
                        help="--fit: measure only what training the text encoder adds, the rest taken from this earlier --fit JSON")
    parser.add_argument("--optimizers-only", action="store_true", help="--fit: only the optimizer measurements (per parameter, with the first version's network)")
    parser.add_argument("--only", nargs="+", default=[], help="--fit: only these set-ups, e.g. --only checkpointing LoHa DoRA (precision 16bit/fp32, full/checkpointing, lora types)")
    parser.add_argument("--resolution", type=int, default=256, help="--validate-cpu: the resolution (256 takes about a minute)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512, 768], help="--cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4], help="--cuda")
    parser.add_argument("--optimizers", nargs="+", default=["AdamW8bit", "AdamW", "Prodigy"], help="--cuda")
    parser.add_argument("--lora-types", nargs="+", default=["LoRA"], help="--cuda")
    parser.add_argument("--steps", type=int, default=2, help="--cuda: measured steps per point")
    parser.add_argument("--checkpointing", type=lambda v: v.lower() in ("1", "true", "yes", "on"), nargs="+", default=[False, True],
                        help="--cuda: gradient checkpointing off/on (default both)")
    parser.add_argument("--smoke", action="store_true", help="--cuda: run its code on the CPU instead (a test of the script, not a measurement)")
    args = parser.parse_args()
    if args.fit:
        return fit_grid(args)
    if args.merge:
        merged: dict[str, Any] = {}
        for name in args.merge:
            for key, value in json.loads(Path(name).read_text()).items():
                merged.setdefault(key, {}).update(value)
        merged["unet"] = {key: refit_unet(entry, key.split("/")[0]) if "rows" in entry else entry for key, entry in merged.get("unet", {}).items()}
        for key, entry in merged["unet"].items():
            print(f"# {key}: largest overestimate at the measured points {entry['worst_fit_error']:.2%}")
        print(render_constants(merged))
        return 0
    if args.check:
        return check_grid(args)
    if args.validate_cpu:
        return validate_cpu(args)
    return cuda_grid(args)


if __name__ == "__main__":
    sys.exit(main())
