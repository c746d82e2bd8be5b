"""The WebUI runs this before loading the extension: install only what its environment lacks.

It never installs, upgrades or downgrades torch, gradio, fastapi, pydantic or anything else the
WebUI pins: those are skipped even if listed, because changing them breaks the WebUI. Each install
also runs under a pip constraint file holding the installed versions of those packages, so that a
dependency of a missing package cannot upgrade them either (pip then fails instead, and says why).
"""

import os
import re
import tempfile
from importlib import metadata
from pathlib import Path

import launch  # provided by the WebUI (its root is on sys.path while this runs)

WEBUI_OWNED = {"torch", "torchvision", "gradio", "fastapi", "pydantic", "numpy", "pillow", "transformers", "accelerate", "safetensors", "requests", "tomli"}


def applies_here(marker: str) -> bool:
    """An environment marker such as `sys_platform != "darwin"`, evaluated for this Python."""
    try:
        from packaging.markers import Marker
    except ImportError:  # without packaging, leave such lines out (they are optional extras)
        return False
    return Marker(marker).evaluate()


def wanted_packages():
    for line in (Path(__file__).parent / "requirements.txt").read_text().splitlines():
        line, _, marker = line.split("#")[0].partition(";")
        line = line.strip()
        if not line or (marker.strip() and not applies_here(marker.strip())):
            continue
        name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()
        if name not in WEBUI_OWNED:
            yield name, line


def webui_pins():
    """`name==version` for each WebUI-owned package installed here."""
    for name in sorted(WEBUI_OWNED):
        try:
            yield f"{name}=={metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue


def main():
    missing = [spec for name, spec in wanted_packages() if not launch.is_installed(name)]  # distribution name, then module
    if not missing:
        return
    handle, constraints = tempfile.mkstemp(prefix="lora_gradio-webui-pins-", suffix=".txt")
    try:
        with os.fdopen(handle, "w") as f:
            f.write("\n".join(webui_pins()) + "\n")
        for spec in missing:
            launch.run_pip(f'install "{spec}" -c "{constraints}"', f"{spec} for LoRA Gradio")
    finally:
        os.unlink(constraints)


main()
