import time

import pytest

from lora_gradio.engine import jobs
from lora_gradio.engine.errors import UserError


def test_job_runs_in_its_own_process_and_reports(project):
    job = jobs.start_job(project, "count", "tests.job_samples:count_slowly", {"n": 4, "delay": 0.05}, title="Count")
    status = jobs.wait_job(job, timeout_s=30)
    assert status.state == jobs.DONE, jobs.read_log(job)
    assert status.result == {"counted": 4}
    assert status.fraction == 1.0
    assert (project.config_dir / "count_slowly.txt").read_text() == "4"
    assert "all counted" in jobs.read_log(job)
    events, offset = jobs.read_events(job)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "progress" in kinds
    assert jobs.read_events(job, offset) == ([], offset)


def test_second_job_of_a_kind_is_refused_while_one_runs(project):
    job = jobs.start_job(project, "count", "tests.job_samples:count_slowly", {"n": 100, "delay": 0.05})
    try:
        with pytest.raises(UserError, match="already running"):
            jobs.start_job(project, "count", "tests.job_samples:count_slowly", {})
        assert jobs.active_job(project).id == job.id
    finally:
        jobs.cancel_job(job, force_after_s=10)


def test_cancel_stops_at_a_safe_point_and_keeps_work(project):
    job = jobs.start_job(project, "count", "tests.job_samples:count_slowly", {"n": 1000, "delay": 0.02})
    deadline = time.monotonic() + 20
    while jobs.job_status(job).done < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    status = jobs.cancel_job(job, force_after_s=20)
    assert status.state == jobs.CANCELLED
    assert 3 <= int((project.config_dir / "count_slowly.txt").read_text()) < 1000


def test_user_error_becomes_a_clear_failure(project):
    job = jobs.start_job(project, "fail", "tests.job_samples:fail_clearly")
    status = jobs.wait_job(job, timeout_s=30)
    assert status.state == jobs.FAILED
    assert status.message == "The dataset folder is empty: add images first."


def test_crash_keeps_the_traceback_in_the_log(project):
    job = jobs.start_job(project, "crash", "tests.job_samples:crash")
    status = jobs.wait_job(job, timeout_s=30)
    assert status.state == jobs.FAILED and "ZeroDivisionError" in status.message
    assert "Traceback" in jobs.read_log(job)


def test_killed_job_is_reported_as_died(project):
    job = jobs.start_job(project, "die", "tests.job_samples:die_hard")
    status = jobs.wait_job(job, timeout_s=30)
    assert status.state == jobs.DIED
    assert "stopped without finishing" in status.message


def test_job_is_found_again_from_files_only(project):
    """A new page (or the CLI) re-attaches with nothing but the project."""
    job = jobs.start_job(project, "count", "tests.job_samples:count_slowly", {"n": 200, "delay": 0.02})
    try:
        again = jobs.active_job(project)
        assert again is not None and again.id == job.id
        assert [j.id for j in jobs.list_jobs(project)] == [job.id]
        assert jobs.get_job(project, job.id).func == job.func
    finally:
        jobs.cancel_job(job, force_after_s=10)


def test_unknown_function_is_refused_before_anything_starts(project):
    with pytest.raises((ImportError, AttributeError, ValueError)):
        jobs.start_job(project, "x", "tests.job_samples:nope")
    assert jobs.list_jobs(project) == []


def test_get_job_rejects_paths(project):
    with pytest.raises(UserError, match="No job"):
        jobs.get_job(project, "../../etc")


def test_newest_job_is_found_even_within_the_same_second(project):
    first = jobs.start_job(project, "zzz", "tests.job_samples:count_slowly", {"n": 1, "delay": 0})
    second = jobs.start_job(project, "aaa", "tests.job_samples:count_slowly", {"n": 1, "delay": 0})
    assert [j.id for j in jobs.list_jobs(project)] == [second.id, first.id]
    jobs.wait_job(first, 30), jobs.wait_job(second, 30)


def test_latest_job_of_a_kind(project):
    assert jobs.latest_job(project, "count") is None
    first = jobs.start_job(project, "count", "tests.job_samples:count_slowly", {"n": 1, "delay": 0})
    jobs.wait_job(first, timeout_s=30)
    other = jobs.start_job(project, "fail", "tests.job_samples:fail_clearly")
    jobs.wait_job(other, timeout_s=30)
    assert jobs.latest_job(project, "count").id == first.id
    second = jobs.start_job(project, "count", "tests.job_samples:count_slowly", {"n": 1, "delay": 0})
    jobs.wait_job(second, timeout_s=30)
    assert jobs.latest_job(project, "count").id == second.id


def test_a_rewritten_job_file_is_read_again(project):
    """Jobs are remembered between polls; a job.json written again (same size, same instant) is not stale."""
    job = jobs.start_job(project, "count", "tests.job_samples:count_slowly", {"n": 1, "delay": 0})
    jobs.wait_job(job, timeout_s=30)
    for title in ("abc", "abd"):  # the same length: only the file's identity tells them apart
        listed = jobs.list_jobs(project)[0]
        listed.title = title
        listed.save()
        assert jobs.list_jobs(project)[0].title == title
    jobs.list_jobs(project)[0].title = "changed by a caller"
    assert jobs.list_jobs(project)[0].title == "abd"  # callers get their own copy


def test_an_ended_status_is_read_again_when_its_events_change(project):
    job = jobs.start_job(project, "die", "tests.job_samples:die_hard")
    assert jobs.wait_job(job, timeout_s=30).state == jobs.DIED
    assert jobs.job_status(job).state == jobs.DIED  # from memory now
    with open(job.events_file, "a") as f:
        f.write('{"type": "done", "t": 0, "result": 7}\n')
    status = jobs.job_status(job)
    assert status.state == jobs.DONE and status.result == 7
