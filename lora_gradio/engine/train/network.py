"""LoRA networks with kohya's module names, built with lycoris-lora.

`create_network` drives `lycoris.LycorisNetwork` with a custom preset per model (target classes, prefix),
so the module set and the tensor names are exactly those of kohya's sd-scripts:

- UNet: every Linear/Conv2d inside `Transformer2DModel` (proj_in/proj_out included); LoCon and the other
  conv-capable algorithms add every conv and Linear inside `ResnetBlock2D`, `Downsample2D`, `Upsample2D`
  (3x3 convs use conv_dim/conv_alpha, 1x1 convs and Linears use network_dim/network_alpha).
- Text encoder: every Linear inside `CLIPAttention` and `CLIPMLP`.
- Names: `lora_unet_<path>` / `lora_te_text_model_<path>` with dots as underscores. transformers >= 5.6 has no
  `CLIPTextModel.text_model`, so `text_model_` is put into the prefix there (A1111/ComfyUI drop
  `lora_te_encoder_...` keys silently).

The SD1.5 counts are 72 text-encoder + 192 UNet modules for LoRA and 278 UNet modules for LoCon.
torch is imported at module level: import this module only where training happens.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable, Sequence

import torch

from lora_gradio.engine.errors import UserError

LORA_TYPES = ("LoRA", "LoCon", "LoHa", "LoKr", "IA3", "DoRA")

UNET_PREFIX = "lora_unet"
TE_PREFIX = "lora_te"

# Target classes, as kohya's networks/lora.py names them (plus transformers' older attention class names).
UNET_TARGETS = ["Transformer2DModel"]
UNET_CONV_TARGETS = ["ResnetBlock2D", "Downsample2D", "Upsample2D"]
TE_TARGETS = ["CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP"]

# lora_type -> (lycoris algo, targets include the UNet's convs, extra lycoris kwargs)
_ALGOS: dict[str, tuple[str, bool, dict[str, Any]]] = {
    "lora": ("lora", False, {"bypass_mode": True}),
    "locon": ("locon", True, {"bypass_mode": True}),
    "loha": ("loha", True, {}),
    "lokr": ("lokr", True, {"factor": -1}),
    "ia3": ("ia3", True, {}),
    # DoRA is LoCon with weight decomposition; lycoris' bypass path would skip the decomposition.
    "dora": ("locon", True, {"weight_decompose": True, "bypass_mode": False}),
}

_PRESET_LOCK = threading.Lock()
_PRESET_ATTRS = (
    "ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "LORA_PREFIX",
    "MODULE_ALGO_MAP", "NAME_ALGO_MAP", "USE_FNMATCH", "TARGET_EXCLUDE_NAME",
)


def canonical_lora_type(lora_type: str) -> str:
    """'locon' -> 'LoCon'; a UserError for an unknown type."""
    for name in LORA_TYPES:
        if str(lora_type).strip().lower() == name.lower():
            return name
    raise UserError(f"Unknown lora_type {lora_type!r}: choose one of {', '.join(LORA_TYPES)}.")


def text_encoder_prefix(text_encoder: torch.nn.Module, prefix: str = TE_PREFIX) -> str:
    """The prefix that makes the text encoder's names read `lora_te_text_model_encoder_layers_...`.

    transformers < 5.6 wraps the transformer in `.text_model` (its module paths already start with it);
    newer versions do not, so `text_model` joins the prefix.
    """
    if isinstance(getattr(text_encoder, "text_model", None), torch.nn.Module):
        return prefix
    return prefix + "_text_model"


def _build_lycoris(root: torch.nn.Module, prefix: str, targets: list[str], algo: str, dim: int, alpha: float,
                   conv_dim: int, conv_alpha: float, dropout: float, extra: dict[str, Any],
                   rename: "Callable[[str], str] | None" = None):
    """One LycorisNetwork over `root` with a kohya preset; lycoris' class-level preset state is restored after.

    `rename(module_path)` gives a module's LoRA name when kohya does not name it from the module path
    (SDXL's UNet modules carry the original SAI layout's names)."""
    from lycoris import LycorisNetwork

    preset = {
        "enable_conv": True,
        "target_module": list(targets),
        "target_name": [],
        "module_algo_map": {},
        "name_algo_map": {},
        "lora_prefix": prefix,
        "use_fnmatch": False,
        "exclude_name": [],
    }
    from lycoris.logging import logger as lycoris_logger

    with _PRESET_LOCK:
        saved = {attr: getattr(LycorisNetwork, attr) for attr in _PRESET_ATTRS}
        level = lycoris_logger.level
        # lycoris logs every step of the build to stdout, where a job's progress lines go: keep it quiet.
        lycoris_logger.setLevel(logging.ERROR)
        try:
            LycorisNetwork.apply_preset(preset)  # process-global: set it every time
            net = LycorisNetwork(
                root,
                multiplier=1.0,
                lora_dim=int(dim),
                conv_lora_dim=int(conv_dim),
                alpha=float(alpha),
                conv_alpha=float(conv_alpha),
                dropout=float(dropout or 0.0),
                network_module=algo,
                warn_on_unmatched=False,
                **extra,
            )
        finally:
            lycoris_logger.setLevel(level)
            for attr, value in saved.items():
                setattr(LycorisNetwork, attr, value)
    if rename is not None:
        paths = {id(module): path for path, module in root.named_modules()}
        for lora in net.loras:
            lora.lora_name = rename(paths[id(lora.org_module[0])])
    # lycoris registers its modules only in apply_to(); register them now so parameters()/state_dict() and
    # optimizers see them before the network is applied.
    for lora in net.loras:
        net.add_module(lora.lora_name, lora)
    return net


class KohyaNetwork(torch.nn.Module):
    """The text-encoder and UNet lycoris networks together, saved and loaded under kohya's names.

    Its parameters are the LoRA parameters only (the base models are frozen by `create_network`).
    The lycoris modules are created on the CPU in float32: move the network with `.to(device)` (or let
    `accelerator.prepare` do it) and keep it in float32 while the base models run in fp16/bf16.
    """

    def __init__(self, text_encoder_nets, unet_net, *, lora_type: str, algo: str, network_dim: int,
                 network_alpha: float, conv_dim: int, conv_alpha: float, dropout: float, uses_convs: bool,
                 extra: dict[str, Any]):
        super().__init__()
        # One per text encoder (SDXL has two); empty when the text encoders are not trained.
        self.text_encoder_nets = torch.nn.ModuleList(text_encoder_nets)
        self.unet_net = unet_net
        self.lora_type = lora_type
        self.algo = algo
        self.network_dim = int(network_dim)
        self.network_alpha = float(network_alpha)
        self.conv_dim = int(conv_dim) if uses_convs else 0
        self.conv_alpha = float(conv_alpha) if uses_convs else 0.0
        self.dropout = float(dropout or 0.0)
        self.uses_convs = uses_convs
        self._extra = dict(extra)
        self.multiplier = 1.0
        self.applied = False

    # ----- structure -----
    @property
    def text_encoder_loras(self) -> list:
        return [lora for net in self.text_encoder_nets for lora in net.loras]

    @property
    def _nets(self) -> list:
        return [*self.text_encoder_nets, self.unet_net]

    @property
    def unet_loras(self) -> list:
        return list(self.unet_net.loras)

    @property
    def loras(self) -> list:
        return self.text_encoder_loras + self.unet_loras

    def module_counts(self) -> dict[str, int]:
        return {"text_encoder": len(self.text_encoder_loras), "unet": len(self.unet_loras)}

    @property
    def network_module(self) -> str:
        """`ss_network_module`: kohya's own module for plain LoRA, lycoris' kohya entry for the rest."""
        return "networks.lora" if self.lora_type == "LoRA" else "lycoris.kohya"

    def network_args(self) -> dict[str, str]:
        """`ss_network_args` (string values, as kohya's `--network_args key=value` would give)."""
        if self.lora_type == "LoRA":
            return {}
        args = {"conv_dim": str(self.conv_dim), "conv_alpha": _num(self.conv_alpha), "algo": self.algo}
        if self.lora_type == "DoRA":
            args["dora_wd"] = "True"
        if self.lora_type == "LoKr":
            args["factor"] = str(self._extra.get("factor", -1))
        if self.dropout:
            args["dropout"] = _num(self.dropout)
        return args

    # ----- hooking into the models -----
    def apply_to(self) -> None:
        """Route the targeted modules' forward through the LoRA modules (idempotent)."""
        if self.applied:
            return
        for net in self._nets:
            net.apply_to()
        self.applied = True

    def restore(self) -> None:
        """Undo `apply_to`: the base models' original forwards come back."""
        if not self.applied:
            return
        for net in self._nets:
            net.restore()
        self.applied = False

    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = float(multiplier)
        for net in self._nets:
            net.set_multiplier(self.multiplier)

    # ----- training -----
    def _params(self, loras: Iterable) -> list[torch.nn.Parameter]:
        params: list[torch.nn.Parameter] = []
        for lora in loras:
            params.extend(p for p in lora.parameters())
        return params

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None) -> list[dict[str, Any]]:
        """Optimizer groups `[{"params", "lr", "name"}]`; a part whose rate is 0/None is frozen and left out."""
        groups = []
        te_params = self._params(self.text_encoder_loras)
        unet_params = self._params(self.unet_loras)
        for name, params, lr in (("text_encoder", te_params, text_encoder_lr), ("unet", unet_params, unet_lr)):
            if not params:
                continue
            train = lr is not None and float(lr) > 0
            for p in params:
                p.requires_grad_(train)
            if train:
                groups.append({"params": params, "lr": float(lr), "name": name})
        if not groups:
            raise UserError("Nothing to train: set unet_lr (and text_encoder_lr to train the text encoder) above 0.")
        return groups

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ----- kohya files -----
    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """`{name.lora_down.weight, name.lora_up.weight, name.alpha, ...}` on the CPU, contiguous, in `dtype`
        (floating tensors only; None keeps float32)."""
        out: dict[str, torch.Tensor] = {}
        for net in self._nets:
            for lora in net.loras:
                for key, value in lora.state_dict().items():
                    tensor = value.detach().to("cpu")
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    if tensor.data_ptr() == value.data_ptr():
                        tensor = tensor.clone()  # a snapshot, never the live parameter
                    out[f"{lora.lora_name}.{key}"] = tensor.contiguous()
        return out

    def describe(self) -> str:
        return _describe(self.lora_type, self.network_dim, self.network_alpha, self.conv_dim, self.conv_alpha)

    @torch.no_grad()
    def load_kohya_state_dict(self, sd: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> dict[str, Any]:
        """Load a kohya-format LoRA into this network ("continue from an existing LoRA").

        The UNet modules must match exactly (names, shapes, alpha); text-encoder modules too when the file has
        them. A file without text-encoder modules leaves them at their start (no effect); a file's text-encoder
        modules are ignored when this network trains no text encoder. Returns
        `{"loaded": n_modules, "text_encoder": "loaded"|"fresh"|"ignored"|"none"}`.
        """
        ours = self.kohya_state_dict()
        theirs_by_module = _group(sd)
        ours_by_module = _group(ours)
        found = describe_kohya_state_dict(sd, metadata)
        found_text = _describe(found["lora_type"], found["network_dim"], found["network_alpha"],
                               found["conv_dim"], found["conv_alpha"])

        def refuse(detail: str) -> UserError:
            return UserError(
                f"This LoRA cannot be continued with the current settings ({detail}): it was trained as {found_text}, "
                f"the settings ask for {self.describe()}. Set lora_type, network_dim/network_alpha and "
                f"conv_dim/conv_alpha to the values it was trained with, or start a new LoRA."
            )

        their_unet = {m for m in theirs_by_module if m.startswith(UNET_PREFIX + "_")}
        their_te = {m for m in theirs_by_module if _is_text_encoder_module(m)}
        other = set(theirs_by_module) - their_unet - their_te
        if other:
            raise refuse(f"unknown module names such as {sorted(other)[0]!r}")
        our_unet = {m for m in ours_by_module if m.startswith(UNET_PREFIX + "_")}
        our_te = set(ours_by_module) - our_unet
        if their_unet != our_unet:
            missing, extra = sorted(our_unet - their_unet), sorted(their_unet - our_unet)
            detail = f"{len(missing)} UNet modules missing" + (f" (e.g. {missing[0]})" if missing else "")
            detail += f", {len(extra)} unexpected" + (f" (e.g. {extra[0]})" if extra else "")
            raise refuse(detail)
        te_state = "none"
        to_load = set(our_unet)
        if their_te and our_te:
            if their_te != our_te:
                raise refuse("the text-encoder modules differ")
            to_load |= our_te
            te_state = "loaded"
        elif their_te:
            te_state = "ignored"
        elif our_te:
            te_state = "fresh"
        for module in sorted(to_load):
            mine, theirs = ours_by_module[module], theirs_by_module[module]
            if set(mine) != set(theirs):
                raise refuse(f"{module} has tensors {sorted(theirs)}, expected {sorted(mine)}")
            for key, tensor in mine.items():
                if tuple(theirs[key].shape) != tuple(tensor.shape):
                    raise refuse(f"{module}.{key} has shape {list(theirs[key].shape)}, expected {list(tensor.shape)}")
            if "alpha" in mine and abs(float(theirs["alpha"]) - float(mine["alpha"])) > 1e-3 * max(1.0, abs(float(mine["alpha"]))):
                raise refuse(f"{module}.alpha is {float(theirs['alpha']):g}, expected {float(mine['alpha']):g}")
        lookup = {lora.lora_name: lora for lora in self.loras}
        for module in to_load:
            lora = lookup[module]
            state = {key: value.detach().to("cpu", torch.float32) if value.is_floating_point() else value
                     for key, value in theirs_by_module[module].items()}
            result = lora.load_state_dict(state, strict=False)
            bad = [k for k in result.missing_keys if "scalar" not in k] + list(result.unexpected_keys)
            if bad:
                raise refuse(f"{module} could not take {bad}")
        return {"loaded": len(to_load), "text_encoder": te_state}


def _num(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _describe(lora_type, dim, alpha, conv_dim, conv_alpha) -> str:
    text = f"{lora_type} dim {dim} alpha {_num(alpha) if alpha is not None else '?'}"
    if conv_dim:
        text += f", conv dim {conv_dim} alpha {_num(conv_alpha) if conv_alpha is not None else '?'}"
    return text


def _group(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        module, _, rest = key.partition(".")
        groups.setdefault(module, {})[rest] = value
    return groups


def describe_kohya_state_dict(sd: dict[str, Any], metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Guess how a kohya-format LoRA was trained: `{"lora_type", "network_dim", "network_alpha", "conv_dim",
    "conv_alpha", "has_text_encoder"}` (dims from the tensors, types from the tensor names).

    Useful to pre-fill the settings when continuing from a LoRA."""
    keys = list(sd)
    groups = _group(sd)
    kind = "LoRA"
    if any(".hada_" in k for k in keys):
        kind = "LoHa"
    elif any(".lokr_" in k for k in keys):
        kind = "LoKr"
    elif any(k.endswith(".on_input") for k in keys):
        kind = "IA3"
    elif any(k.endswith(".dora_scale") for k in keys):
        kind = "DoRA"
    elif any(_is_conv_module(m) for m in groups):
        kind = "LoCon"
    dim = alpha = conv_dim = conv_alpha = None
    for module, tensors in sorted(groups.items()):
        down = tensors.get("lora_down.weight")
        if down is None:
            continue
        a = float(tensors["alpha"]) if "alpha" in tensors else None
        if down.dim() == 4 and tuple(down.shape[2:]) != (1, 1):
            if conv_dim is None:
                conv_dim, conv_alpha = int(down.shape[0]), a
        elif dim is None:
            dim, alpha = int(down.shape[0]), a
    metadata = metadata or {}
    if dim is None and metadata.get("ss_network_dim"):
        dim = _maybe_number(metadata.get("ss_network_dim"))
        alpha = _maybe_number(metadata.get("ss_network_alpha"))
    if conv_dim is None and metadata.get("ss_network_args"):
        import json

        try:
            args = json.loads(metadata["ss_network_args"])
            conv_dim = _maybe_number(args.get("conv_dim"))
            conv_alpha = _maybe_number(args.get("conv_alpha"))
        except (ValueError, AttributeError):
            pass
    return {
        "lora_type": kind, "network_dim": dim, "network_alpha": alpha, "conv_dim": conv_dim, "conv_alpha": conv_alpha,
        "has_text_encoder": any(_is_text_encoder_module(m) for m in groups),
    }


# Parts of the names of the conv modules only LoCon trains: diffusers paths (SD 1.x) and the SAI layout (SDXL).
_CONV_MODULE_PARTS = ("_resnets_", "_downsamplers_", "_upsamplers_", "_in_layers_", "_out_layers_", "_emb_layers_",
                      "_skip_connection")


def _is_conv_module(name: str) -> bool:
    return any(part in name for part in _CONV_MODULE_PARTS) or name.endswith(("_op", "_conv"))


def _is_text_encoder_module(name: str) -> bool:
    """lora_te_ (SD 1.x/2.x), lora_te1_ and lora_te2_ (SDXL)."""
    return name.startswith(TE_PREFIX + "_") or name.startswith(TE_PREFIX + "1_") or name.startswith(TE_PREFIX + "2_")


def lora_family(sd: dict[str, Any], metadata: dict[str, str] | None = None) -> "str | None":
    """"sdxl" or "sd" for a kohya-format LoRA (its metadata, else SDXL's text-encoder prefixes, else the
    cross-attention width of its UNet modules); None when nothing tells."""
    version = (metadata or {}).get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl"
    if version.startswith("sd_v"):
        return "sd"
    if any(k.startswith((TE_PREFIX + "1_", TE_PREFIX + "2_")) for k in sd):
        return "sdxl"
    if any(k.startswith(TE_PREFIX + "_") for k in sd):
        return "sd"
    for key, value in sd.items():
        if "_attn2_to_k." in key and key.endswith("lora_down.weight"):
            return "sdxl" if int(value.shape[-1]) == 2048 else "sd"
    return None


def _maybe_number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else number


def create_network(unet: torch.nn.Module, text_encoder: "torch.nn.Module | Sequence[tuple[str, torch.nn.Module]] | None",
                   lora_type: str, network_dim: int, network_alpha: float, conv_dim: int, conv_alpha: float,
                   train_text_encoder: bool = True, dropout: float = 0.0,
                   unet_name: "Callable[[str], str] | None" = None) -> KohyaNetwork:
    """A kohya-named network over `unet` (diffusers UNet2DConditionModel) and the text encoder(s).

    `text_encoder` is one CLIP text model (named `lora_te_...`) or a list of (kohya prefix, encoder), e.g.
    SDXL's `[("lora_te1", clip_l), ("lora_te2", clip_g)]` (a model's `family.network_text_encoders`).
    `unet_name(module_path)` names the UNet's modules where kohya does not use the diffusers path (SDXL).
    Freezes the base models (`requires_grad_(False)`); the returned network holds the only trainable
    parameters. Call `apply_to()` to hook it in. With `train_text_encoder=False` (or no text encoder) no
    text-encoder modules are made and none are saved, as kohya does for a UNet-only run.
    """
    lora_type = canonical_lora_type(lora_type)
    algo, uses_convs, extra = _ALGOS[lora_type.lower()]
    network_dim = int(network_dim)
    if network_dim < 1:
        raise UserError(f"network_dim must be at least 1 (got {network_dim}).")
    conv_dim = int(conv_dim or 0) if uses_convs else 0
    conv_alpha = float(conv_alpha or 0) if uses_convs else 0.0
    if uses_convs and conv_dim < 1:
        raise UserError(f"{lora_type} needs conv_dim of at least 1 (got {conv_dim}).")
    network_alpha = float(network_alpha) if network_alpha else float(network_dim)  # kohya: alpha 0/None = dim
    if uses_convs and not conv_alpha:
        conv_alpha = float(conv_dim)

    if text_encoder is None:
        encoders: list[tuple[str, torch.nn.Module]] = []
    elif isinstance(text_encoder, torch.nn.Module):
        encoders = [(TE_PREFIX, text_encoder)]
    else:
        encoders = list(text_encoder)
    unet.requires_grad_(False)
    for _, encoder in encoders:
        encoder.requires_grad_(False)

    common = dict(algo=algo, dim=network_dim, alpha=network_alpha, conv_dim=conv_dim, conv_alpha=conv_alpha,
                  dropout=dropout, extra=extra)
    te_nets = []
    if train_text_encoder:
        for prefix, encoder in encoders:
            net = _build_lycoris(encoder, text_encoder_prefix(encoder, prefix), TE_TARGETS, **common)
            if not net.loras:
                raise UserError("The text encoder has no CLIP attention/MLP layers to train: is it a CLIP text model?")
            te_nets.append(net)
    unet_targets = UNET_TARGETS + (UNET_CONV_TARGETS if uses_convs else [])
    unet_net = _build_lycoris(unet, UNET_PREFIX, unet_targets, rename=unet_name, **common)
    if not unet_net.loras:
        raise UserError("The UNet has no Transformer2DModel blocks to train: is it a Stable Diffusion UNet?")

    network = KohyaNetwork(te_nets, unet_net, lora_type=lora_type, algo=algo, network_dim=network_dim,
                           network_alpha=network_alpha, conv_dim=conv_dim, conv_alpha=conv_alpha, dropout=dropout,
                           uses_convs=uses_convs, extra=extra)
    network.requires_grad_(True)
    return network
