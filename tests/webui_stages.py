"""The engine's stages (dedupe, tag, train, compare) through the command line, run by whatever Python runs
this file: the tests run it under each WebUI's pinned packages (no pytest needed there).

    python tests/webui_stages.py ROOT --wd WD_DIR [--sd SD_DIR] [--clip CLIP_DIR]

The tiny WD tagger comes from the caller (building it needs onnx); the tiny SD and CLIP are built here,
by this environment's own diffusers and transformers, unless given. The last line printed is JSON:
the versions, then each stage's result ("ok" or the error) and how long it took.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PACKAGES = ("torch", "transformers", "diffusers", "accelerate", "peft", "safetensors", "huggingface-hub", "onnxruntime", "numpy", "pillow", "pydantic", "gradio")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "-"
    return found


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--wd", required=True)
    parser.add_argument("--sd")
    parser.add_argument("--clip")
    args = parser.parse_args(argv)
    from PIL import Image

    from lora_gradio.cli import main as cli

    root = Path(args.root)
    results: dict[str, object] = {"versions": versions(), "python": sys.executable}

    def stage(name, fn):
        start = time.monotonic()
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                value = fn()
            results[name] = "ok" if value in (None, 0) else f"exit {value}: {out.getvalue().strip()[-600:]}"
        except BaseException as exc:  # noqa: BLE001 - every stage reports, whatever it raised
            results[name] = f"{type(exc).__name__}: {exc}"[:600] + "\n" + traceback.format_exc()[-1500:]
        results[f"{name}_s"] = round(time.monotonic() - start, 1)
        return results[name] == "ok"

    def build_models():
        from tests.tiny_clip import build_tiny_clip
        from tests.tiny_sd import build_tiny_sd

        args.sd = args.sd or str(build_tiny_sd(root.parent / "sd"))
        args.clip = args.clip or str(build_tiny_clip(root.parent / "clip"))

    def run(*words):
        return cli(["--root", str(root), *words])

    def make_dataset():
        code = run("project", "create", "pins")
        dataset = root / "pins" / "dataset"
        rnd = random.Random(0)
        for i in range(4):
            Image.new("RGB", (256 + 64 * (i % 2), 256), tuple(rnd.randrange(256) for _ in range(3))).save(dataset / f"{i}.png")
        Image.open(dataset / "0.png").save(dataset / "0_copy.png")
        return code

    def trained():
        files = sorted(p.name for p in (root / "pins" / "output").glob("*.safetensors"))
        return None if files == ["pins-01.safetensors", "pins-02.safetensors"] else f"epoch files: {files}"

    def compared():
        grids = list((root / "pins" / "output" / "compare").glob("pins-grid-*.png"))
        return None if len(grids) == 1 else f"grids: {grids}"

    stage("models", build_models) and stage("project", make_dataset)
    stage("dedupe", lambda: run("dedupe", "pins", "--model", args.clip, "--threshold", "0.9999", "--apply"))
    stage("tag", lambda: run("tag", "pins", "--model", args.wd, "--existing", "overwrite") or run("tags", "pins", "--activation", "pins_char"))
    stage("train", lambda: run("train", "pins", "--set", f"training_model={args.sd}", "--set", "resolution=256", "--set", "num_repeats=1",
                               "--set", "how_many=2", "--set", "optimizer=AdamW", "--set", "network_dim=4", "--set", "network_alpha=2",
                               "--set", "max_token_length=75") or trained())
    stage("compare", lambda: run("compare", "pins", "--weights", "0.5,1", "--steps", "2", "--width", "64", "--height", "64") or compared())
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
