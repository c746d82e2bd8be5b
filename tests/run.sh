#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run them (arguments go to pytest).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

# Chromium for the page tests, from Debian's packages.
if ! command -v chromium >/dev/null 2>&1; then
  echo "== installing chromium"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# The project with its test tools, in .venv.
echo "== installing lora_gradio and test tools into .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch first, pinned: here that is the local CPU build, so nothing pulls the CUDA packages.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[test]"

# The AUTOMATIC1111 WebUI's Gradio 3.41.2, in its own environment.
echo "== installing the Gradio 3.41.2 environment into .venv-gradio3"
[ -x .venv-gradio3/bin/python ] || "$PYTHON" -m venv .venv-gradio3
.venv-gradio3/bin/python -m pip install -q -r tests/gradio3-requirements.txt

# Forge's pinned packages (Gradio 4.40.0, transformers 4.46.1, diffusers 0.31.0, ...) with torch, in
# .venv-forge: the page and the jobs are tested there as Forge runs them. The project comes from PYTHONPATH.
echo "== installing Forge's pinned packages into .venv-forge"
[ -x .venv-forge/bin/python ] || "$PYTHON" -m venv .venv-forge
.venv-forge/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
.venv-forge/bin/python -m pip install -q -r tests/forge-requirements.txt

# A real FiftyOne with its database, in its own environment (it pins packages of its own).
echo "== installing FiftyOne into .venv-fiftyone"
bash tests/fiftyone-setup.sh

echo "== running the tests"
exec .venv/bin/python -m pytest "$@"
