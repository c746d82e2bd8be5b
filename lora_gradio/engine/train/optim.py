"""Optimizers and learning-rate schedules named as in the guide."""

from __future__ import annotations

import ast
from typing import Any

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.progress import Progress

# Package to install for each optimizer that torch does not have.
_PACKAGES = {"AdamW8bit": "bitsandbytes", "Prodigy": "prodigyopt", "DAdaptation": "dadaptation", "Lion": "lion-pytorch", "CAME": "pytorch-optimizer"}
_MODULES = {"lion-pytorch": "lion_pytorch", "pytorch-optimizer": "pytorch_optimizer"}


def parse_optimizer_args(args: list[str]) -> dict[str, Any]:
    """`["weight_decay=0.1", "betas=(0.9,0.99)"]` -> {"weight_decay": 0.1, "betas": (0.9, 0.99)}."""
    parsed: dict[str, Any] = {}
    for item in args:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"optimizer_args entry {item!r} needs key=value, e.g. weight_decay=0.1.")
        try:
            parsed[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed[key.strip()] = value.strip()  # a plain word such as a string option
    return parsed


def check_optimizer_installed(name: str, on_cuda: bool) -> None:
    """Refuse, before the base model downloads, an optimizer whose package is missing."""
    import importlib.util

    package = _PACKAGES.get(name)
    if package is None or (name == "AdamW8bit" and not on_cuda):  # on the CPU AdamW8bit becomes AdamW
        return
    module = _MODULES.get(package, package)
    if importlib.util.find_spec(module) is None:
        raise UserError(f"The {name} optimizer needs the {package} package: pip install {package} (or choose AdamW).")


def build_optimizer(name: str, param_groups: list[dict], args: list[str], on_cuda: bool, progress: "Progress | None" = None) -> tuple[Any, str]:
    """The optimizer and the class path kohya records in ss_optimizer."""
    import torch

    progress = progress or Progress()
    extra = parse_optimizer_args(args)
    if name == "AdamW8bit" and not on_cuda:
        progress.log("AdamW8bit needs an NVIDIA GPU (bitsandbytes); training on the CPU uses AdamW instead.")
        name = "AdamW"
    try:
        if name == "AdamW":
            # torch's fused AdamW: one kernel for every tensor of the LoRA instead of several per tensor (CPU and
            # GPU; under fp16 loss scaling it also spares the scaler's per-step read of the overflow flag).
            fused = {} if {"fused", "foreach"} & set(extra) else {"fused": True}
            opt = torch.optim.AdamW(param_groups, **fused, **extra)
        elif name == "AdamW8bit":
            import bitsandbytes as bnb

            opt = bnb.optim.AdamW8bit(param_groups, **extra)
        elif name == "Prodigy":
            from prodigyopt import Prodigy

            opt = Prodigy(param_groups, **extra)
        elif name == "DAdaptation":
            from dadaptation import DAdaptAdam

            opt = DAdaptAdam(param_groups, **extra)
        elif name == "Lion":
            from lion_pytorch import Lion

            opt = Lion(param_groups, **extra)
        elif name == "CAME":
            # The XL notebook's CAME (with weight_decay=0.04), from the maintained pytorch-optimizer collection.
            from pytorch_optimizer import CAME

            opt = CAME(param_groups, **extra)
        elif name == "AdaFactor":
            from transformers.optimization import Adafactor

            opt = Adafactor(param_groups, **{"relative_step": False, "scale_parameter": False, "warmup_init": False, **extra})
        else:
            raise UserError(f"Unknown optimizer {name!r}: choose AdamW8bit, AdamW, Prodigy, DAdaptation, Lion, AdaFactor or CAME.")
    except ImportError:
        raise UserError(f"The {name} optimizer needs the {_PACKAGES.get(name, name)} package: pip install {_PACKAGES.get(name, name)} (or choose AdamW).") from None
    except TypeError as exc:
        raise UserError(f"optimizer_args do not fit {name}: {exc}. Check the names against the optimizer's documentation.") from None
    return opt, f"{type(opt).__module__}.{type(opt).__name__}"


def build_scheduler(name: str, optimizer: Any, total_steps: int, warmup_ratio: float, number: int) -> Any:
    """diffusers' schedules: cosine_with_restarts uses `number` cycles, polynomial `number` as power;
    rex is the REX schedule (below) after the warmup."""
    from diffusers.optimization import get_scheduler

    warmup = int(round(total_steps * warmup_ratio)) if name != "constant" else 0
    if name == "rex":
        from torch.optim.lr_scheduler import LambdaLR

        return LambdaLR(optimizer, lambda step: rex_factor(step, total_steps, warmup))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, num_cycles=number, power=float(number))


def rex_factor(step: int, total_steps: int, warmup: int = 0) -> float:
    """The REX schedule (Chen et al., "REX: Revisiting Budgeted Training with an Improved Schedule", 2021),
    which the XL notebook offers: after a linear warmup, (1 - z) / (1 - z / 2) of the rate at progress z,
    falling slowly at first and reaching 0 at the end."""
    if step < warmup:
        return step / max(1, warmup)
    z = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return (1 - z) / (1 - z / 2)
