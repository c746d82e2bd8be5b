"""Jobs in an environment of their own: a job runs under the Python `LORA_GRADIO_JOB_PYTHON` names, and the
WebUI installer decides from the WebUI's pins whether the jobs need such an environment, prepares it
without touching the WebUI's packages, and the tab says so.

The pin files in tests/webui_pins/ are the WebUIs' own `requirements_versions.txt`: AUTOMATIC1111 1.10
and Forge (2025-06). Under A1111's pins the stages cannot run (transformers 4.30.2 with accelerate 0.21.0:
diffusers' pipelines do not import), under Forge's they do (tests/webui_stages.py, and the page walk).
"""

from __future__ import annotations

import json
import re
import runpy
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from lora_gradio.engine import jobs
from lora_gradio.engine.project import Projects
from tests.appserver import REPO

PINS = Path(__file__).parent / "webui_pins"


def bare_venv(folder: Path) -> Path:
    """A Python with nothing installed (no lora_gradio either), the way a fresh environment starts."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    return folder / "bin" / "python"


def test_a_job_runs_under_the_job_python_with_this_lora_gradio(tmp_path, monkeypatch):
    python = bare_venv(tmp_path / "job-env")
    project = Projects(tmp_path / "Loras").create("elsewhere")
    monkeypatch.setenv(jobs.JOB_PYTHON_ENV, str(python))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)  # as in a WebUI: neither the working folder nor a path leads to this checkout
    status = jobs.wait_job(jobs.start_job(project, "where", "tests.job_samples:python_in_use", {}), timeout_s=60)
    assert status.state == jobs.DONE, jobs.read_log(jobs.list_jobs(project)[0])
    assert Path(status.result["prefix"]).resolve() == (tmp_path / "job-env").resolve()
    assert Path(status.result["package"]).resolve() == REPO / "lora_gradio" / "__init__.py"


# ----- install.py -----
def pinned_versions(pins_file: Path) -> dict:
    versions = {"torch": "2.1.2", "pydantic": "1.10.17", "requests": "2.32.3", "gradio": "3.41.2"}
    for line in pins_file.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s#;]+)", line.strip())
        if match:
            versions[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return versions


@pytest.fixture
def installer(monkeypatch):
    """install.py's functions (not run), with a fake WebUI `launch` module that records pip calls."""
    launch = types.ModuleType("launch")
    launch.installed, launch.calls = set(), []
    launch.is_installed = lambda name: name in launch.installed
    launch.run_pip = lambda args, desc: launch.calls.append(args.split(" -c ")[0])
    monkeypatch.setitem(sys.modules, "launch", launch)
    functions = runpy.run_path(str(REPO / "install.py"), run_name="lora_gradio_install")
    module = functions["main"].__globals__  # the dict the functions read their globals from
    module["launch"] = launch
    return types.SimpleNamespace(**{**functions, "launch": launch, "module": module})


def test_a1111_pins_need_the_jobs_own_environment_forge_pins_do_not(installer, tmp_path):
    root = tmp_path / "a1111"
    root.mkdir()
    (root / "requirements_versions.txt").write_text((PINS / "a1111-1.10.txt").read_text())
    a1111 = installer.webui_owned(root)
    versions = pinned_versions(PINS / "a1111-1.10.txt")
    reasons = installer.job_env_reasons(a1111, versions.get)
    assert reasons == ["transformers 4.30.2 (the jobs need >=4.40)", "accelerate 0.21.0 (the jobs need >=0.30)"]

    (root / "requirements_versions.txt").write_text((PINS / "forge.txt").read_text())
    forge = installer.webui_owned(root)
    assert {"diffusers", "peft", "huggingface-hub", "transformers"} <= forge
    assert installer.job_env_reasons(forge, pinned_versions(PINS / "forge.txt").get) == []
    # Forge's own diffusers and peft are never installed over; the rest of requirements.txt is added.
    assert [name for name, _ in installer.wanted_packages(forge)] == ["tomli-w", "bitsandbytes", "lycoris-lora", "onnxruntime"]
    # A package the WebUI owns but lacks: the jobs cannot have it beside the WebUI either.
    assert installer.job_env_reasons(forge, lambda name: None if name == "accelerate" else "99") == ["no accelerate (the jobs need >=0.30)"]


def test_under_a1111_pins_only_the_page_packages_go_into_the_webui(installer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the WebUI runs install.py from its root
    (tmp_path / "requirements_versions.txt").write_text((PINS / "a1111-1.10.txt").read_text())
    versions = pinned_versions(PINS / "a1111-1.10.txt")
    prepared = []
    installer.module.update(
        installed_version=versions.get,
        JOB_ENV=tmp_path / "extension" / "job-env",
        prepare_job_env=lambda env, specs, reasons: prepared.append((env, specs, reasons)),
    )
    installer.main()
    assert installer.launch.calls == ['install "tomli-w>=1.0"']  # the page's one missing package; nothing for the jobs
    (env, specs, reasons), = prepared
    assert env == tmp_path / "extension" / "job-env" and reasons[0].startswith("transformers 4.30.2")
    assert "accelerate>=0.30" in specs and not any(s.startswith("gradio") for s in specs)
    # With their torch extra, so pip picks releases that accept the WebUI's torch (the newest turn torch < 2.6 off).
    assert "transformers[torch]>=4.40" in specs and "diffusers[torch]>=0.30" in specs
    # A ready environment with the same packages is left alone on the next start.
    env.mkdir(parents=True)
    (env / "bin").mkdir()
    (env / "bin" / "python").write_text("")
    (env / "lora_gradio_job_env.json").write_text(json.dumps({"ready": True, "packages": specs}))
    installer.launch.installed.add("tomli-w")
    installer.launch.calls.clear()
    installer.main()
    assert installer.launch.calls == [] and len(prepared) == 1
    # Once the WebUI's packages can run the jobs (say it was updated), the jobs stay in the WebUI.
    installer.module["installed_version"] = lambda name: "99"
    installer.main()
    assert len(prepared) == 1 and not (env / "lora_gradio_job_env.json").exists()


def test_the_jobs_environment_borrows_the_webuis_torch_and_pins_it(installer, tmp_path):
    commands = []

    def run(cmd, **kwargs):
        commands.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            cmd = [*cmd, "--without-pip"]  # the test installs nothing into it
        elif cmd[1:4] == ["-m", "pip", "install"]:
            return subprocess.CompletedProcess(cmd, 0)
        return subprocess.run(cmd, **kwargs)

    env = tmp_path / "job-env"
    # A failure on the way leaves a record that is not ready (the tab says so).
    with pytest.raises(subprocess.CalledProcessError):
        installer.prepare_job_env(env, ["x"], ["transformers 4.30.2 (the jobs need >=4.40)"], run=lambda cmd, **kw: subprocess.run(["false"], check=True))
    assert json.loads((env / "lora_gradio_job_env.json").read_text())["ready"] is False
    python = installer.prepare_job_env(env, ["transformers>=4.40", "accelerate>=0.30"], ["transformers 4.30.2 (the jobs need >=4.40)"], run=run)
    assert python == env / "bin" / "python"
    pip = commands[-1]
    assert pip[:3] == [str(python), "-m", "pip"] and "transformers>=4.40" in pip
    pins = Path(pip[pip.index("-c") + 1]).read_text().split()
    from importlib import metadata

    assert f"torch=={metadata.version('torch')}" in pins and f"numpy=={metadata.version('numpy')}" in pins
    record = json.loads((env / "lora_gradio_job_env.json").read_text())
    assert record["ready"] and record["python"] == str(python)
    # Its own packages come first, then this (the WebUI's) environment's: torch is borrowed, not downloaded.
    out = subprocess.run([str(python), "-c", "import sys, torch; print(torch.__file__); print(sys.prefix)"], capture_output=True, text=True, check=True)
    torch_file, prefix = out.stdout.split()
    assert Path(torch_file).is_relative_to(sysconfig.get_paths()["purelib"]) and Path(prefix) == env


def test_the_tab_names_the_jobs_environment_and_uses_it(tmp_path, monkeypatch):
    from lora_gradio.ui.page import jobs_note
    from lora_gradio.webui import job_env

    monkeypatch.setenv(jobs.JOB_PYTHON_ENV, "")  # restored (unset) afterwards: use_job_env sets it
    monkeypatch.delenv(jobs.JOB_PYTHON_ENV)
    assert job_env.use_job_env(tmp_path) is None and jobs_note() == ""
    folder = tmp_path / "job-env"
    folder.mkdir()
    record = {"python": sys.executable, "reasons": ["transformers 4.30.2 (the jobs need >=4.40)"], "ready": False}
    (folder / "lora_gradio_job_env.json").write_text(json.dumps(record))
    note = job_env.use_job_env(tmp_path)
    assert "not ready" in note and "restart the WebUI" in note and jobs.job_python() == sys.executable
    python = bare_venv(tmp_path / "env")
    (folder / "lora_gradio_job_env.json").write_text(json.dumps({**record, "python": str(python), "ready": True}))
    note = job_env.use_job_env(tmp_path)
    assert note == f"This WebUI has transformers 4.30.2 (the jobs need >=4.40), so the jobs run in the extension's own environment (`{python}`); the WebUI's packages are untouched."
    assert jobs.job_python() == str(python)
    hooks = types.SimpleNamespace(job_env_note=lambda: note)
    assert jobs_note(hooks) == f"\n\n{note}"
    # Without the WebUI, a chosen job Python is named too.
    assert jobs_note() == f"\n\nJobs run under `{python}` (`LORA_GRADIO_JOB_PYTHON`)."


def test_the_forge_test_environment_holds_forges_own_pins():
    """tests/forge-requirements.txt (what .venv-forge installs) pins each package as Forge does."""
    def pins(path):
        return dict(re.match(r"([A-Za-z0-9_.-]+)==([^\s#;]+)", line.strip()).groups() for line in path.read_text().splitlines() if "==" in line)

    ours, forge = pins(Path(__file__).parent / "forge-requirements.txt"), pins(PINS / "forge.txt")
    assert {name: forge.get(name) for name in ours} == ours
    assert {"gradio", "fastapi", "transformers", "diffusers", "peft", "accelerate", "safetensors", "huggingface-hub", "pydantic", "httpx"} <= set(ours)
