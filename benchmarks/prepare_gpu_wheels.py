"""The wheels benchmarks/gpu_suite.py needs on a bare GPU machine, in one folder to carry there (at most ~60 MiB).

    python benchmarks/prepare_gpu_wheels.py                       # -> benchmarks/gpu_wheels/, for Python 3.12
    python benchmarks/prepare_gpu_wheels.py --python 3.11 3.12    # for more than one Python (the binary wheels twice)
    python benchmarks/prepare_gpu_wheels.py --no-bitsandbytes     # without AdamW8bit (~20 MB less)
    python benchmarks/prepare_gpu_wheels.py --with onnx           # also onnx, which the tagging part builds its model with

then on the GPU machine, with the folder carried beside the checkout:

    python benchmarks/gpu_suite.py --wheels benchmarks/gpu_wheels --out OUT

The GPU machine has torch, transformers, accelerate, peft, safetensors, timm and onnxruntime (this
workplace's image: Python 3.12, so 3.12 is the default), and cannot download anything. What the engine
imports beyond those comes from here: diffusers, lycoris-lora (+ toml, einops), pydantic (+ its core,
annotated-types, typing-inspection, typing-extensions), tomli-w, importlib-metadata, and bitsandbytes for
AdamW8bit. Each is pinned to this environment's version (what CI tests), else the newest, and fetched
with `pip download --only-binary=:all: --no-deps` for manylinux x86_64, so nothing of this machine's
platform matters. bitsandbytes' wheel (~43 MB) holds kernels for every CUDA, ROCm and XPU version; only
the CUDA ones named by --bnb-cuda (default 12.6 to 13.2, what current torch builds use) and the CPU one
are kept, which brings it to ~20 MB. The folder is emptied first, so it never holds two versions of a
package; the total is printed, and over --limit-mib the script fails (the checkout and the carried
folders travel together, 64 MiB at most).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DEST = REPO / "benchmarks" / "gpu_wheels"
# What the suite installs on the bare machine: the engine's imports that the GPU image lacks, and their needs.
PACKAGES = [
    "diffusers", "importlib-metadata",
    "lycoris-lora", "toml", "einops",
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions",
    "tomli-w",
]
OPTIONAL = {"onnx": ["onnx"], "pytorch-optimizer": ["pytorch-optimizer"]}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]
BNB_KERNEL = re.compile(r"^bitsandbytes/libbitsandbytes_(cuda|rocm|xpu)(\d+)\.(so|dll|dylib)$")


def pinned(name: str) -> str:
    """`name==version` as installed here (what the tests ran), or the bare name."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def download(requirements: list[str], python: str, dest: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--quiet",
               "--python-version", python, "--implementation", "cp", "--dest", str(dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run(command + requirements, check=True)


def slim_bitsandbytes(wheel: Path, keep_cuda: set[str]) -> tuple[int, int]:
    """Rewrite bitsandbytes' wheel with only the CUDA kernels in `keep_cuda` (e.g. {"128", "130"}) and the
    CPU one; its RECORD loses the dropped files' lines. Returns (bytes before, bytes after)."""
    before = wheel.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        slim = Path(tmp) / wheel.name
        with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
            dropped = set()
            for info in source.infolist():
                match = BNB_KERNEL.match(info.filename)
                if match and not (match.group(1) == "cuda" and match.group(2) in keep_cuda):
                    dropped.add(info.filename)
            for info in source.infolist():
                if info.filename in dropped:
                    continue
                data = source.read(info.filename)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode("utf-8").splitlines()
                    data = ("\n".join(line for line in lines if line.split(",")[0] not in dropped) + "\n").encode("utf-8")
                target.writestr(info, data)
        shutil.move(str(slim), wheel)
    return before, wheel.stat().st_size


def checkout_bytes() -> int:
    """What the checkout itself sends (tracked and untracked-not-ignored files)."""
    try:
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((REPO / name).stat().st_size for name in names.decode().split("\0") if name and (REPO / name).is_file())


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default=str(DEFAULT_DEST), help="the folder to fill (emptied first; git ignores the default)")
    parser.add_argument("--python", nargs="+", default=["3.12"], help="the GPU machine's Python version(s) (default 3.12)")
    parser.add_argument("--no-bitsandbytes", action="store_true", help="leave out bitsandbytes (the suite then skips AdamW8bit, saying so)")
    parser.add_argument("--bnb-cuda", default="126,128,130,132", help="bitsandbytes CUDA kernels to keep ('all': every one)")
    parser.add_argument("--with", dest="extras", nargs="*", default=[], choices=sorted(OPTIONAL), help="optional packages to add")
    parser.add_argument("--limit-mib", type=float, default=60.0, help="fail when the folder is larger (the carry limit is 64 MiB with the checkout)")
    args = parser.parse_args(argv)

    dest = Path(args.dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    names = PACKAGES + [name for extra in args.extras for name in OPTIONAL[extra]]
    if not args.no_bitsandbytes:
        names.append("bitsandbytes")
    requirements = [pinned(name) for name in names]
    for python in args.python:
        print(f"downloading for Python {python}: {' '.join(requirements)}", flush=True)
        download(requirements, python, dest)
    if not args.no_bitsandbytes and args.bnb_cuda != "all":
        keep = {version.strip().replace(".", "") for version in args.bnb_cuda.split(",") if version.strip()}
        for wheel in dest.glob("bitsandbytes-*.whl"):
            before, after = slim_bitsandbytes(wheel, keep)
            print(f"bitsandbytes: kept the CPU kernel and CUDA {', '.join(sorted(keep))}: {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"  {wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    tree = checkout_bytes()
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {dest} (the checkout adds {tree / 2**20:.1f} MiB; 64 MiB may travel)")
    if total / 2**20 > args.limit_mib:
        print(f"too large: over {args.limit_mib:g} MiB. Use fewer --python versions, --no-bitsandbytes, or fewer --bnb-cuda kernels.", file=sys.stderr)
        return 1
    try:
        relative = dest.resolve().relative_to(REPO)
    except ValueError:
        relative = dest
    print(f"carry [\"{relative}\"] and run: python benchmarks/gpu_suite.py --wheels {relative} --out $OUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
