"""What one refresh of the page costs in a project with a long job history.

    python benchmarks/page_poll.py [--jobs 200] [--train-runs 10] [--steps 20000] [--ticks 20]

An open page refreshes four things by itself: the job panel (every second), the tag overview's
watch, the training status and the Test tab (every 2 s each). Each refresh reads the project's job
folders. This builds a project with `--jobs` ended jobs, `--train-runs` of them training runs of
`--steps` steps with a progress event every 4 steps (events.jsonl as the training loop writes it),
and times the engine work behind each refresh, the mean over `--ticks` ticks after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lora_gradio.engine import jobs  # noqa: E402
from lora_gradio.engine.project import Projects  # noqa: E402


def make_history(project, n_jobs: int, train_runs: int, steps: int) -> None:
    """Ended jobs written the way `jobs.start_job` and the job runner write them."""
    kinds = ["scrape", "dedupe", "tag", "compare"]
    t0 = time.time() - 86_400
    for i in range(n_jobs):
        kind = "train" if i < train_runs else kinds[i % len(kinds)]
        job_id = f"20260101-{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}-000-{kind}-{i:04x}"
        folder = project.jobs_dir / job_id
        folder.mkdir(parents=True)
        job = jobs.Job(id=job_id, kind=kind, title=kind, func="x:y", kwargs={}, project={}, created="2026-01-01 00:00:00", folder=folder, pid=999_999)
        job.save()
        lines = [{"type": "start", "t": t0}]
        total = steps if kind == "train" else 50
        every = 4 if kind == "train" else 1
        for step in range(every, total + 1, every):
            event = {"type": "progress", "t": t0 + step * 0.3, "done": step, "total": total, "message": f"step {step}"}
            if kind == "train":
                event.update(loss=0.1 + 0.01 * (step % 7), lr_unet=5e-4, lr_text_encoder=1e-4, epoch=1 + step * 10 // total, it_per_s=3.2)
            lines.append(event)
        lines.append({"type": "done", "t": t0 + total, "result": None})
        (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
        (folder / "log.txt").write_text("".join(f"line {n}\n" for n in range(300)))


def refreshes(projects, project) -> dict:
    """The engine calls behind each of the page's refreshes, as the UI makes them."""
    from lora_gradio.engine.compare import newest_grid
    from lora_gradio.engine.train.monitor import run_view
    from lora_gradio.ui.jobs_panel import current_job
    from lora_gradio.ui.test_tab import epochs_text

    def panel():
        job = current_job(projects, project.base)
        if job is not None:
            jobs.job_status(job)
            jobs.read_log(job)

    return {
        "job panel (1 s)": panel,
        "tag overview watch (2 s)": lambda: jobs.latest_job(project, "tag"),
        "training status (2 s)": lambda: run_view(project, project.base),
        "Test tab (2 s)": lambda: (newest_grid(project), epochs_text(project)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--train-runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        projects = Projects(Path(tmp))
        project = projects.create("bench")
        make_history(project, args.jobs, args.train_runs, args.steps)
        size = sum(p.stat().st_size for p in project.jobs_dir.rglob("*") if p.is_file())
        print(f"{args.jobs} ended jobs ({args.train_runs} training runs of {args.steps} steps), {size / 1e6:.1f} MB of job files")
        total_per_s = 0.0
        for name, call in refreshes(projects, project).items():
            call()  # warm-up: imports, first reads
            start = time.perf_counter()
            for _ in range(args.ticks):
                call()
            ms = (time.perf_counter() - start) / args.ticks * 1000
            per_s = ms / (1.0 if "1 s" in name else 2.0)
            total_per_s += per_s
            print(f"  {name:28s} {ms:8.2f} ms per tick")
        print(f"  one open page: {total_per_s:.1f} ms of work per second ({total_per_s / 10:.1f}% of a core)")


if __name__ == "__main__":
    main()
