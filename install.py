"""The WebUI runs this before loading the extension: install only what its environment lacks.

It never installs, upgrades or downgrades torch, gradio, fastapi, pydantic or anything else the
WebUI pins (the packages below, and every package its `requirements_versions.txt` pins): those are
skipped even if listed, because changing them breaks the WebUI. Each install also runs under a pip
constraint file holding the installed versions of those packages, so that a dependency of a missing
package cannot move them either (pip then fails instead, and says why).

When the WebUI's own versions cannot run the jobs (AUTOMATIC1111 1.10 pins transformers 4.30.2 and
accelerate 0.21.0; training needs transformers>=4.40 and accelerate>=0.30), the training packages go
into an environment of the extension's own instead, `job-env/` in this folder, and every job
(download, tagging, training, comparing) runs there while the tab stays in the WebUI. That
environment borrows the WebUI's torch (a `.pth` file names the WebUI's site-packages after its own), so
nothing large is downloaded twice, and its newer packages are seen only by the jobs.
"""

import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

import launch  # provided by the WebUI (its root is on sys.path while this runs)

HERE = Path(__file__).resolve().parent
WEBUI_OWNED = {"torch", "torchvision", "gradio", "fastapi", "pydantic", "numpy", "pillow", "transformers", "accelerate", "safetensors", "requests", "tomli"}
# What the page itself needs in the WebUI's environment even when the jobs run elsewhere.
PAGE_PACKAGES = {"tomli-w", "tomli"}
# Packages the jobs never import (the page is the WebUI's).
PAGE_ONLY = {"gradio"}
# Shared with the jobs' environment, so they must stay the WebUI's builds (binary interfaces).
SHARED_BINARIES = ("torch", "torchvision", "numpy")
# Their newest releases turn torch off below 2.6 (A1111 1.10 installs torch 2.1.2) without saying so to
# pip; asked for with their `torch` extra, pip picks releases whose torch range holds the WebUI's torch.
TORCH_EXTRA = {"transformers", "diffusers"}
JOB_ENV = HERE / "job-env"
JOB_ENV_RECORD = "lora_gradio_job_env.json"  # read by lora_gradio.webui.job_env


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def applies_here(marker: str) -> bool:
    """An environment marker such as `sys_platform != "darwin"`, evaluated for this Python."""
    try:
        from packaging.markers import Marker
    except ImportError:  # without packaging, leave such lines out (they are optional extras)
        return False
    return Marker(marker).evaluate()


def requirement_lines():
    """(name, line) for each line of requirements.txt that applies to this Python."""
    for line in (HERE / "requirements.txt").read_text().splitlines():
        line, _, marker = line.split("#")[0].partition(";")
        line = line.strip()
        if not line or (marker.strip() and not applies_here(marker.strip())):
            continue
        yield canonical(re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0]), line


def webui_owned(webui_root: Path = Path(".")) -> set:
    """The packages this WebUI owns: the usual ones plus every name its requirements_versions.txt
    pins (Forge pins diffusers, peft and huggingface-hub too). The WebUI runs us from its root."""
    owned = {canonical(name) for name in WEBUI_OWNED}
    pins = webui_root / "requirements_versions.txt"
    if pins.is_file():
        for line in pins.read_text(encoding="utf-8", errors="replace").splitlines():
            name = re.split(r"[<>=!~\[ ;#]", line.strip(), maxsplit=1)[0]
            if name:
                owned.add(canonical(name))
    return owned


def wanted_packages(owned=None):
    owned = webui_owned() if owned is None else owned
    for name, line in requirement_lines():
        if name not in owned:
            yield name, line


def installed_version(name: str):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def job_env_reasons(owned=None, version_of=None) -> list:
    """Why the WebUI's own packages cannot run the jobs: each package the WebUI owns (so we never
    change it) that requirements.txt needs at another version, e.g. "transformers 4.30.2 (the jobs
    need >=4.40)", or lacks ("no accelerate (...)"). Empty: the jobs run in the WebUI's environment."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # no way to compare versions here: let the jobs run beside the WebUI as before
        return []

    owned = webui_owned() if owned is None else owned
    version_of = version_of or installed_version
    reasons = []
    for name, line in requirement_lines():
        if name in PAGE_ONLY or name not in owned:
            continue
        requirement = Requirement(line)
        version = version_of(name)
        if version is None:
            reasons.append(f"no {name} (the jobs need {requirement.specifier or 'it'})")
        elif requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            reasons.append(f"{name} {version} (the jobs need {requirement.specifier})")
    return reasons


def write_pins(names, path: Path) -> None:
    """A pip constraint file: `name==version` for each of `names` installed here."""
    pins = [f"{name}=={version}" for name in sorted(names) if (version := installed_version(name))]
    path.write_text("\n".join(pins) + "\n")


def env_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def prepare_job_env(env: Path, specs, reasons, run=subprocess.run) -> Path:
    """Make (or bring up to date) the jobs' own environment at `env` with `specs` installed, never
    touching this (the WebUI's) environment; return its Python. It sees the WebUI's packages after its
    own, so torch is borrowed, and pip keeps torch and numpy at the WebUI's versions."""
    python = env_python(env)
    # Not ready until pip has finished: a failure on the way (no ensurepip, no network) is named on the tab.
    record = {"python": str(python), "reasons": list(reasons), "packages": list(specs), "ready": False}
    env.mkdir(parents=True, exist_ok=True)
    (env / JOB_ENV_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    if not python.exists():
        run([sys.executable, "-m", "venv", str(env)], check=True)
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True).stdout.strip()
    # After its own site-packages, as site dirs (so their own .pth files count too).
    webui_sites = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site) / "lora_gradio_webui_packages.pth").write_text("".join(f"import site; site.addsitedir({path!r})\n" for path in webui_sites))
    constraints = env / "webui-pins.txt"
    write_pins(SHARED_BINARIES, constraints)
    # pip leaves the WebUI's copies alone: they lie outside this environment ("Not uninstalling ... outside environment").
    run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *specs, "-c", str(constraints)], check=True)
    record["ready"] = True
    (env / JOB_ENV_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return python


def install_missing(specs) -> None:
    """pip-install `specs` into the WebUI's environment under its owned packages' installed versions."""
    if not specs:
        return
    handle, constraints = tempfile.mkstemp(prefix="lora_gradio-webui-pins-", suffix=".txt")
    os.close(handle)
    try:
        write_pins(webui_owned(), Path(constraints))
        for spec in specs:
            launch.run_pip(f'install "{spec}" -c "{constraints}"', f"{spec} for LoRA Gradio")
    finally:
        os.unlink(constraints)


def main():
    owned = webui_owned()
    wanted = list(wanted_packages(owned))
    reasons = job_env_reasons(owned)
    record = JOB_ENV / JOB_ENV_RECORD
    if not reasons:
        install_missing([spec for name, spec in wanted if not launch.is_installed(name)])  # distribution name, then module
        if record.is_file():  # the WebUI's packages run the jobs now (it was updated): stop sending them elsewhere
            record.unlink()
        return
    # The WebUI's pins cannot run the jobs: only what the page needs goes into the WebUI's environment,
    # the jobs get every requirement in their own.
    install_missing([spec for name, spec in wanted if name in PAGE_PACKAGES and not launch.is_installed(name)])
    specs = [re.sub(r"^([A-Za-z0-9_.-]+)", r"\1[torch]", line) if name in TORCH_EXTRA else line for name, line in requirement_lines() if name not in PAGE_ONLY]
    if record.is_file() and env_python(JOB_ENV).exists():
        done = json.loads(record.read_text())
        if done.get("ready") and done.get("packages") == specs:
            return
    print(f"LoRA Gradio: this WebUI has {' and '.join(reasons)}: preparing the jobs' own environment in {JOB_ENV} (the WebUI's packages stay as they are)")
    prepare_job_env(JOB_ENV, specs, reasons)


if __name__ != "lora_gradio_install":  # the tests import the functions under that name
    main()
