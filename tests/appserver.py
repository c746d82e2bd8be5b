"""Start the real app in a subprocess for page tests, under a given Python (and so Gradio)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRADIO3_PYTHON = Path(os.environ.get("LORA_GRADIO_GRADIO3_PYTHON", REPO / ".venv-gradio3" / "bin" / "python"))
# Forge's pins (Gradio 4.40.0, transformers 4.46.1, diffusers 0.31.0, ...) with torch: page and jobs both run there.
FORGE_PYTHON = Path(os.environ.get("LORA_GRADIO_FORGE_PYTHON", REPO / ".venv-forge" / "bin" / "python"))
CHROMIUM = os.environ.get("LORA_GRADIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http_ok(url: str, timeout_s: float, proc: "subprocess.Popen | None" = None) -> float:
    """Seconds until `url` answers 200; raises if the process dies or time runs out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"app exited with {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


class AppServer:
    def __init__(self, python: str, root: Path, extra_args: "list[str] | None" = None, env: "dict[str, str] | None" = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.root = root
        # Each app gets its own Gradio temp folder: versions and runs must not share cached uploads.
        temp = root.parent / f"gradio-tmp-{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "GRADIO_TEMP_DIR": str(temp), **(env or {})}
        cmd = [python, "-m", "lora_gradio", "--root", str(root), "--port", str(self.port), *(extra_args or [])]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.startup_s = wait_http_ok(self.url, 90, self.proc)

    def stop(self) -> str:
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return out or ""


def run_under(python: Path, code: str, timeout: int = 180, what: str = "the WebUI's") -> dict:
    """Run `code` with another environment's Python (a WebUI's pinned packages) and return the JSON
    its last line prints. Missing environment: a failure in CI, a skip elsewhere."""
    import json

    import pytest

    if not Path(python).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{python} missing: tests/run.sh makes it")
        pytest.skip(f"no environment with {what} packages at {python}: run tests/run.sh")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_under_gradio3(code: str, timeout: int = 180) -> dict:
    """`run_under` the AUTOMATIC1111 WebUI's Gradio 3.41.2."""
    return run_under(GRADIO3_PYTHON, code, timeout, "Gradio 3.41.2")


def run_under_forge(code: str, timeout: int = 180) -> dict:
    """`run_under` Forge's pins (Gradio 4.40.0)."""
    return run_under(FORGE_PYTHON, code, timeout, "Forge's")

