"""How long until the page answers: process start to the first HTTP 200, over several runs.

    python benchmarks/startup_time.py [--runs 5] [--python PATH ...]

Prints min / median / max seconds for each Python (each has its own Gradio). The target from
the foundation issue is under 5 s on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.appserver import GRADIO3_PYTHON, AppServer  # noqa: E402


def gradio_version(python: str) -> str:
    return subprocess.run([python, "-c", "import gradio; print(gradio.__version__)"], capture_output=True, text=True, check=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--python", action="append", help="interpreter(s) to measure (default: this one and .venv-gradio3 if present)")
    args = parser.parse_args()
    pythons = args.python or [sys.executable, *([str(GRADIO3_PYTHON)] if GRADIO3_PYTHON.exists() else [])]
    for python in pythons:
        times = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                start = time.monotonic()
                server = AppServer(python, Path(tmp) / "Loras")
                times.append(time.monotonic() - start)
                server.stop()
        print(f"gradio {gradio_version(python):8} start to HTTP 200: min {min(times):.2f} s  median {statistics.median(times):.2f} s  max {max(times):.2f} s  ({args.runs} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
