"""Engine-shaped functions for job tests: they take a project and a progress like the real ones."""

import time

from lora_gradio.engine.errors import UserError


def count_slowly(project, n=5, delay=0.05, progress=None):
    marker = project.config_dir / "count_slowly.txt"
    for i in range(n):
        progress.check_cancel()
        time.sleep(delay)
        marker.write_text(str(i + 1))
        progress.update(i + 1, n, f"item {i + 1}")
    progress.log("all counted")
    return {"counted": n}


def fail_clearly(project, progress=None):
    raise UserError("The dataset folder is empty: add images first.")


def crash(project, progress=None):
    return 1 / 0


def die_hard(project, progress=None):
    import os

    progress.update(1, 2, "about to die")
    os._exit(9)  # like the OOM killer: no final event


def python_in_use(project, progress=None):
    """Which Python runs the job, and where its lora_gradio comes from."""
    import sys

    import lora_gradio

    return {"executable": sys.executable, "prefix": sys.prefix, "package": lora_gradio.__file__}
