"""benchmarks/gpu_suite.py runs on the CPU (--smoke, tiny models), so it cannot rot before a GPU comes;
its offline wheel install and its time budget work; prepare_gpu_wheels slims bitsandbytes' wheel."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_suite  # noqa: E402
from benchmarks.prepare_gpu_wheels import slim_bitsandbytes  # noqa: E402

# Parts whose packages CI always has: they must be measured, not skipped.
ALWAYS_MEASURED = ["probe", "train_sd15_bf16", "train_sd15_fp16", "train_project", "train_sdxl_bf16", "train_sdxl_fp16", "compare"]
ROW_FIGURES = ["samples_per_s", "seconds_per_step", "tflop_per_sample", "achieved_tflops", "peak_allocated_gib", "peak_reserved_gib", "estimate_gib"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--smoke", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_suite.json").read_text()), (out / "summary.md").read_text(), out, done.stdout


def test_smoke_runs_every_part_or_says_why_not(smoke):
    report, summary, out, stdout = smoke
    parts = report["parts"]
    assert list(parts) == gpu_suite.PART_NAMES
    log = (out / "gpu_suite.log").read_text()
    for name, part in parts.items():
        assert part["status"] in ("measured", "skipped"), f"{name}: {part['status']} {part.get('reason')}\n" + "\n".join(part.get("log_tail", []))
        if part["status"] == "skipped":
            assert part["reason"].strip(), name
    for name in ALWAYS_MEASURED:
        assert parts[name]["status"] == "measured", f"{name}: {parts[name].get('reason')}\n{log[-3000:]}"
    if parts["tagging"]["status"] == "skipped":
        assert "onnx" in parts["tagging"]["reason"]  # only a missing package may skip it here
    assert report["suite"]["smoke"] is True and report["suite"]["seconds"] > 0
    assert "SMOKE RUN" in summary and summary in stdout


def test_training_rows_have_every_figure(smoke):
    parts = smoke[0]["parts"]
    for name in ("train_sd15_bf16", "train_sd15_fp16", "train_sdxl_bf16", "train_sdxl_fp16"):
        rows = parts[name]["rows"]
        measured = [row for row in rows if row["status"] == "measured"]
        assert measured, name
        for row in rows:
            assert row["status"] in ("measured", "skipped"), row
            if row["status"] == "skipped":
                assert row["reason"], row
                continue
            for figure in ROW_FIGURES:
                assert row[figure] is not None and row[figure] > 0, (name, figure, row)
            assert row["estimate_error"] is not None and row["losses_finite"] is True
        precision = name.rsplit("_", 1)[-1]
        assert all(row["precision"] == precision for row in rows)
    # AdamW8bit needs CUDA: on the CPU its rows are skipped with that reason, not run as AdamW.
    skipped = [row for row in parts["train_sd15_bf16"]["rows"] if row["optimizer"] == "AdamW8bit"]
    assert skipped and all(row["status"] == "skipped" and "CUDA" in row["reason"] for row in skipped)
    assert any(row["gradient_checkpointing"] for row in parts["train_sdxl_fp16"]["rows"] if row["status"] == "measured")
    assert any("GradScaler" in note for note in parts["train_sd15_fp16"]["notes"])  # none on the CPU, and the suite says so


def test_the_real_run_passed_its_checks_and_compare_timed_its_cells(smoke):
    parts = smoke[0]["parts"]
    run = parts["train_project"]
    assert run["checks"] and all(run["checks"].values()), run["checks"]
    assert run["metrics"]["steps_planned"] == 4 and run["metrics"]["samples"] >= 2
    grid = parts["compare"]["metrics"]
    assert grid["cells"] == 5 and grid["cells_per_s"] > 0 and grid["end_to_end_seconds"] > grid["render_seconds"] > 0
    tag = parts["tagging"]
    if tag["status"] == "measured":
        assert tag["metrics"]["bare_images_per_s"] > 0 and tag["metrics"]["end_to_end_images_per_s"] > 0
        assert any("CPU" in note for note in tag["notes"])


def test_a_part_that_would_overrun_is_skipped_with_a_note(tmp_path, capsys):
    assert gpu_suite.main(["--smoke", "--budget", "9", "--parts", "tagging", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert set(report["parts"]) == {"probe", "tagging"}
    for part in report["parts"].values():
        assert part["status"] == "skipped" and "not enough time left" in part["reason"]
    assert "not enough time left" in (tmp_path / "summary.md").read_text()


def test_a_part_stopped_at_its_limit_keeps_its_rows(tmp_path, monkeypatch):
    """A part that outlives its limit is killed; the rows it had written stay, marked as timed out."""
    import time as time_module

    part = gpu_suite.Part("slow", "slow", 2, 2)
    script = tmp_path / "slow.py"
    script.write_text("import json, sys, time\n"
                      "config = json.load(open(sys.argv[-1]))\n"
                      "json.dump({'status': 'measured', 'reason': '', 'rows': [{'a': 1}], 'metrics': {}, 'checks': {}, 'notes': []}, open(config['result'], 'w'))\n"
                      "time.sleep(60)\n")
    monkeypatch.setattr(gpu_suite, "__file__", str(script))
    started = time_module.monotonic()
    with open(tmp_path / "log", "w") as log:
        result = gpu_suite.run_part(part, {"smoke": True}, tmp_path, 3.0, dict(__import__("os").environ), log)
    assert time_module.monotonic() - started < 20
    assert result["status"] == "timed out" and result["rows"] == [{"a": 1}] and "limit" in result["reason"]


def _wheel(folder: Path, name: str, version: str, files: dict[str, bytes], tag: str = "py3-none-any") -> Path:
    path = folder / f"{name}-{version}-{tag}.whl"
    info = f"{name}-{version}.dist-info"
    entries = dict(files)
    entries[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    entries[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n".encode()
    entries[f"{info}/RECORD"] = ("".join(f"{n},,\n" for n in entries) + f"{info}/RECORD,,\n").encode()
    with zipfile.ZipFile(path, "w") as archive:
        for entry, data in entries.items():
            archive.writestr(entry, data)
    return path


def test_wheels_install_offline_into_their_own_folder(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "suite_probe_pkg", "1.0", {"suite_probe_pkg/__init__.py": b"VALUE = 42\n"})
    _wheel(wheels, "suite_other_py", "1.0", {"suite_other_py.py": b"X = 1\n"}, tag="cp27-cp27m-manylinux2014_x86_64")
    report = gpu_suite.install_wheels(wheels, tmp_path / "site")
    assert report["installed"] == ["suite-probe-pkg"]
    assert "suite-other-py" in report["failed"]  # no wheel for this Python: a note, not a crash
    done = subprocess.run([sys.executable, "-c", "import suite_probe_pkg; print(suite_probe_pkg.VALUE)"], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "42"
    empty = gpu_suite.install_wheels(tmp_path / "nothing-here", tmp_path / "site2")
    assert not empty["installed"] and "prepare_gpu_wheels" in next(iter(empty["failed"].values()))


def test_bitsandbytes_keeps_only_the_chosen_cuda_kernels(tmp_path):
    kernels = {f"bitsandbytes/libbitsandbytes_{kind}.so": b"x" * 1000 for kind in ("cpu", "cuda118", "cuda128", "cuda130", "rocm64", "xpu2025")}
    wheel = _wheel(tmp_path, "bitsandbytes", "0.50.2", {"bitsandbytes/__init__.py": b"", **kernels}, tag="py3-none-manylinux_2_24_x86_64")
    slim_bitsandbytes(wheel, {"128", "130"})
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        record = archive.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    kept = {n for n in names if n.endswith(".so")}
    assert kept == {"bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda128.so", "bitsandbytes/libbitsandbytes_cuda130.so"}
    assert "cuda118" not in record and "rocm64" not in record and "cuda130" in record and "bitsandbytes/__init__.py" in record
