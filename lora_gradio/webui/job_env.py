"""The jobs' own environment in a WebUI whose pinned packages cannot run them.

`install.py` decides (it compares the WebUI's versions with requirements.txt) and, when needed, makes
`job-env/` in the extension folder and records what it did in `job-env/lora_gradio_job_env.json`:
`{"python": ..., "reasons": ["transformers 4.30.2 (the jobs need >=4.40)", ...], "ready": true}`.
Here the tab reads that record: a ready environment becomes `LORA_GRADIO_JOB_PYTHON` for every job
started from this WebUI (unless the person set that variable already), and the page says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lora_gradio.engine.jobs import JOB_PYTHON_ENV

JOB_ENV_DIR = "job-env"
JOB_ENV_RECORD = "lora_gradio_job_env.json"  # written by install.py


def extension_root() -> Path:
    """The folder holding the lora_gradio package: the extension's folder in a WebUI."""
    return Path(__file__).resolve().parents[2]


def read_record(root: "Path | None" = None) -> "dict | None":
    path = (root or extension_root()) / JOB_ENV_DIR / JOB_ENV_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def use_job_env(root: "Path | None" = None) -> "str | None":
    """Point the jobs at the prepared environment (when there is one and the person has not chosen
    another) and return the sentence the tab shows about it; None when the jobs run beside the WebUI."""
    record = read_record(root)
    if record is None:
        return None
    reasons = " and ".join(str(r) for r in record.get("reasons") or []) or "packages too old for training"
    python = str(record.get("python") or "")
    if not record.get("ready") or not Path(python).exists():
        return (
            f"This WebUI has {reasons}, and the jobs' own environment in `{(root or extension_root()) / JOB_ENV_DIR}` is not ready "
            "(see the WebUI's console): restart the WebUI to let the extension's installer finish it; until then training cannot start."
        )
    chosen = os.environ.get(JOB_PYTHON_ENV)
    if chosen and Path(chosen) != Path(python):
        return None  # the person's own choice; the page names it (see job_python_note)
    os.environ[JOB_PYTHON_ENV] = python
    return f"This WebUI has {reasons}, so the jobs run in the extension's own environment (`{python}`); the WebUI's packages are untouched."
