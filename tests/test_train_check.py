"""Checks before a run, presets and the run view (engine side)."""

import json
import time

import pytest
from PIL import Image

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.check import ADVICE, ERROR, WARNING, check_training_data, quick_plan
from lora_gradio.engine.train.monitor import run_view
from lora_gradio.engine.train.presets import list_presets, load_preset, save_preset


def image(path, size=(512, 512), caption=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 20, 20)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption)


@pytest.fixture
def project(tmp_path):
    project = Projects(tmp_path / "Loras").create("char")
    for i in range(20):
        image(project.dataset_dir / f"{i}.png", caption="my_char, smile")
    return project


def levels(check):
    return [f.level for f in check.findings]


def test_quick_plan_is_the_guides_formula(project):
    plan = quick_plan(project, cfg.defaults())
    assert plan.total_steps == 20 * 10 * 10 // 2 and plan.epochs == 10


def test_a_good_dataset_is_ready(project):
    check = check_training_data(project, cfg.defaults())
    assert check.ready and levels(check) == [] and check.plan.total_steps == 1000


def test_missing_captions_and_activation_tag(project):
    (project.dataset_dir / "3.txt").unlink()
    (project.dataset_dir / "4.txt").write_text("smile, my_char")
    check = check_training_data(project, cfg.defaults())
    assert check.ready and levels(check) == [WARNING, WARNING]
    assert "3.png" in check.findings[0].text
    assert "4.png" in check.findings[1].text and "'my char'" in check.findings[1].text
    # No tag is first in most captions: the activation tag is asked for.
    for i in range(20):
        (project.dataset_dir / f"{i}.txt").write_text(f"tag{i}, smile")
    assert "different tags" in check_training_data(project, cfg.defaults()).findings[-1].text
    assert check_training_data(project, cfg.apply_overrides(cfg.defaults(), ["activation_tags=0"])).findings == []


def test_the_saved_activation_tag_is_the_one_checked(project):
    from lora_gradio.engine.tags import set_activation_tags

    set_activation_tags(project, "other_char")
    (project.dataset_dir / "0.txt").write_text("my_char, smile")
    check = check_training_data(project, cfg.defaults())
    assert [f.level for f in check.findings] == [WARNING] and "'other char'" in check.findings[0].text and "0.png" in check.findings[0].text


def test_errors_stop_the_run(project, tmp_path):
    image(project.dataset_dir / "0.jpg", caption="x")  # shares 0.txt with 0.png
    check = check_training_data(project, cfg.defaults())
    assert not check.ready and levels(check) == [ERROR] and check.plan is None
    (project.dataset_dir / "0.jpg").unlink()
    big = cfg.apply_overrides(cfg.defaults(), ["num_repeats=100", "how_many=30"])
    check = check_training_data(project, big)
    assert not check.ready and ERROR in levels(check) and "force_steps" in check.errors[0].text
    empty = Projects(tmp_path / "Loras").create("empty")
    assert not check_training_data(empty, cfg.defaults()).ready
    with pytest.raises(UserError):
        quick_plan(empty, cfg.defaults())


def test_guide_advice_on_samples_per_epoch(project):
    check = check_training_data(project, cfg.apply_overrides(cfg.defaults(), ["num_repeats=2"]))
    assert levels(check) == [ADVICE] and "raise num_repeats" in check.findings[0].text


def test_presets_round_trip_and_refuse_bad_names(tmp_path):
    root = tmp_path / "Loras"
    settings = cfg.apply_overrides(cfg.defaults(), ["network_dim=32", "lora_type=LoCon"])
    save_preset(root, "style 32", settings)
    assert list_presets(root) == ["style 32"] and load_preset(root, "style 32") == settings
    assert Projects(root).list() == []  # presets are not a project
    for bad in ("../x", "", "a/b", "x" * 80):
        with pytest.raises(UserError):
            save_preset(root, bad, settings)
    with pytest.raises(UserError, match="style 32"):
        load_preset(root, "nope")


def test_run_view_reads_the_jobs_files(project):
    from lora_gradio.engine import jobs

    job = jobs.start_job(project, "train", "tests.job_samples:count_slowly", {"n": 1, "delay": 0}, title="Train LoRA")
    jobs.wait_job(job, timeout_s=30)
    now = time.time()
    with open(job.events_file, "a") as f:  # what the training loop reports, as a resumed run writes it
        for step, t in ((1, now), (2, now + 1), (3, now + 2), (2, now + 3), (4, now + 4)):
            f.write(json.dumps({"type": "progress", "t": t, "done": step, "total": 10, "loss": 0.1 * step, "lr_unet": 1e-4 * step, "epoch": 1, "it_per_s": 1.0}) + "\n")
    (project.output_dir / "char-01.safetensors").write_bytes(b"x")
    (project.output_dir / "other-01.safetensors").write_bytes(b"x")
    view = run_view(project, "char")
    assert view.steps == [1, 2, 3, 4] and view.loss == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert view.learning_rates == {"unet": pytest.approx([1e-4, 2e-4, 3e-4, 4e-4])}
    assert [p.name for p in view.epoch_files] == ["char-01.safetensors"] and not view.running and view.resumable is None


def test_a_resumed_run_shows_its_whole_curve(project):
    from lora_gradio.engine import jobs

    def job_with_steps(steps, resume):
        job = jobs.start_job(project, "train", "tests.job_samples:count_slowly", {"n": 1, "delay": 0}, title="Train LoRA")
        jobs.wait_job(job, timeout_s=30)
        # The stand-in function takes no `resume`: mark the job as a resumed run once it has run.
        data = json.loads((job.folder / "job.json").read_text())
        data["kwargs"]["resume"] = resume
        (job.folder / "job.json").write_text(json.dumps(data))
        with open(job.events_file, "a") as f:
            for step in steps:
                f.write(json.dumps({"type": "progress", "t": time.time(), "done": step, "total": 6, "loss": 1.0, "lr_unet": 1e-4}) + "\n")

    job_with_steps([1, 2], resume=False)  # an older, finished run: not part of the newest one
    job_with_steps([1, 2, 3], resume=False)
    job_with_steps([3, 4, 5, 6], resume=True)
    assert run_view(project, "char").steps == [1, 2, 3, 4, 5, 6]


def test_run_view_reads_only_what_was_appended_and_notices_a_new_file(project):
    from lora_gradio.engine import jobs

    job = jobs.start_job(project, "train", "tests.job_samples:count_slowly", {"n": 1, "delay": 0}, title="Train LoRA")
    jobs.wait_job(job, timeout_s=30)

    def append(steps):
        with open(job.events_file, "a") as f:
            for step in steps:
                f.write(json.dumps({"type": "progress", "t": time.time(), "done": step, "total": 9, "loss": 0.5, "lr_unet": 1e-4}) + "\n")

    append([1, 2])
    assert run_view(project, "char").steps == [1, 2]
    append([3])
    with open(job.events_file, "a") as f:
        f.write('{"type": "progress", "done": 4, "tot')  # a line being written is read when complete
    assert run_view(project, "char").steps == [1, 2, 3]
    with open(job.events_file, "a") as f:
        f.write('al": 9, "loss": 0.5}\n')
    assert run_view(project, "char").steps == [1, 2, 3, 4]
    job.events_file.write_text(json.dumps({"type": "progress", "done": 7, "total": 9, "loss": 0.5}) + "\n")  # replaced, shorter
    assert run_view(project, "char").steps == [7]
