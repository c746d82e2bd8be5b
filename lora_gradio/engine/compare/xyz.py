"""The WebUI's X/Y/Z plot strings: the prompt and the "Prompt S/R" values
(`-01, -02, ...` for epochs, `:0.5, :0.6, ...` for weights). Pure, but for `xyz_plan`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from lora_gradio.engine.compare.epochs import as_files, choose_epochs, output_name, prompt_of, saved_epochs
from lora_gradio.engine.compare.settings import resolve_settings
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Project


def format_weight(weight: float) -> str:
    """0.5 -> '0.5', 1.0 -> '1', 0.75 -> '0.75' (what goes into `<lora:name:W>`)."""
    text = f"{float(weight):.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def epoch_label(path: "Path | str") -> str:
    """'NAME-01.safetensors' -> '01' (the digits as written in the file name)."""
    match = re.search(r"-(\d+)$", Path(path).stem)
    return match.group(1) if match else Path(path).stem


def _stems(files: Iterable[Any]) -> list[str]:
    return [Path(p).stem for _, p in as_files(files)]


def _csv(values: Sequence[str]) -> str:
    """Values joined for an X/Y/Z axis (csv read with skipinitialspace): quoted where a value holds a comma or a quote."""
    def quote(value: str) -> str:
        return '"' + value.replace('"', '""') + '"' if ("," in value or '"' in value) else value

    return ", ".join(quote(v) for v in values)


def epoch_sr_values(files: Sequence[Any], full_names: bool = False) -> str:
    """Prompt S/R values for the epochs: '-01, -02, ...' (the first one must be the epoch in the prompt).

    `full_names` gives 'NAME-01, NAME-02, ...' instead, for when '-01' also occurs elsewhere in the prompt.
    """
    stems = _stems(files)
    values = stems if full_names else [f"-{epoch_label(s)}" for s in stems]
    return _csv(values)


def weight_sr_values(weights: Sequence[float], closing: bool = False) -> str:
    """Prompt S/R values for the weights: ':0.5, :0.6, ...'; with `closing` ':0.5>, :0.6>, ...'
    (for a prompt that holds ':0.5' elsewhere, e.g. '(smile:0.5)')."""
    end = ">" if closing else ""
    return _csv([f":{format_weight(w)}{end}" for w in weights])


def example_prompt(name: str, epoch: "int | str", weight: float, prompt: str) -> str:
    """'<lora:NAME-01:0.5> prompt': the txt2img prompt whose LoRA tag the S/R values rewrite.

    `epoch` is a number (written with two digits) or the digits as in the file name ('001').
    """
    digits = f"{int(epoch):02d}" if isinstance(epoch, int) else str(epoch)
    tag = f"<lora:{name}-{digits}:{format_weight(weight)}>"
    return f"{tag} {prompt.strip()}".strip()


@dataclass
class XYZStrings:
    """What to type into the WebUI: the prompt, and the X (epochs) and Y (weights) Prompt S/R values."""

    prompt: str
    negative_prompt: str
    x_values: str
    y_values: str
    epochs: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join([
            "In txt2img, Script: X/Y/Z plot.",
            f"Prompt: {self.prompt}",
            f"Negative prompt: {self.negative_prompt}",
            f"X type: Prompt S/R    X values: {self.x_values}",
            f"Y type: Prompt S/R    Y values: {self.y_values}",
            "(Copy the LoRA files into the WebUI's models/Lora folder first.)",
        ])


def xyz_strings(name: str, files: Sequence[Any], weights: Sequence[float], prompt: str, negative_prompt: str = "") -> XYZStrings:
    """The example prompt and S/R values, each first value occurring exactly once in that prompt.

    Prompt S/R replaces every occurrence (X first, then Y), so a value that also occurs in the
    rest of the prompt would change it too: then the longer, unambiguous forms are used.
    """
    files = as_files(files)
    weights = list(weights)
    if not files or not weights:
        raise UserError("Pick at least one epoch and one weight for the X/Y/Z plot.")
    first = Path(files[0][1]).stem
    digits = first[len(name) + 1:] if first.startswith(name + "-") else epoch_label(first)
    text = example_prompt(name, digits, weights[0], prompt)
    x_values = epoch_sr_values(files)
    if text.count(f"-{epoch_label(first)}") != 1:
        x_values = epoch_sr_values(files, full_names=True)
    y_values = weight_sr_values(weights)
    if text.count(f":{format_weight(weights[0])}") != 1:
        y_values = weight_sr_values(weights, closing=True)
    return XYZStrings(text, negative_prompt, x_values, y_values, [Path(p).stem for _, p in files], weights)


def xyz_plan(project: Project, **overrides: Any) -> XYZStrings:
    """`xyz_strings` for the project's saved epochs and compare settings (nothing rendered)."""
    settings = resolve_settings(project, overrides)
    chosen = choose_epochs(saved_epochs(project), settings.epochs)
    prompt = prompt_of(project, settings)
    return xyz_strings(output_name(project), chosen, settings.weights, prompt, settings.negative_prompt)
