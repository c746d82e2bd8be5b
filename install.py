"""The WebUI runs this before loading the extension: install only what its environment lacks.

It never installs, upgrades or downgrades torch, gradio, fastapi, pydantic or anything else the
WebUI pins: those are skipped even if listed, because changing them breaks the WebUI.
"""

import re
from pathlib import Path

import launch  # provided by the WebUI (its root is on sys.path while this runs)

WEBUI_OWNED = {"torch", "torchvision", "gradio", "fastapi", "pydantic", "numpy", "pillow", "transformers", "accelerate", "safetensors", "requests", "tomli"}


def wanted_packages():
    for line in (Path(__file__).parent / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or ";" in line:  # markers are for old Pythons the WebUI does not use
            continue
        name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()
        if name not in WEBUI_OWNED:
            yield name, line


for name, spec in wanted_packages():
    if not launch.is_installed(name):  # looks up the distribution name, then the module
        launch.run_pip(f'install "{spec}"', f"{spec} for LoRA Gradio")
