"""The step's inputs prepared ahead on a thread, and the losses read in groups."""

from __future__ import annotations

import threading

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train.feed import BatchFeed, LossReader, loss_read_interval


def test_the_next_batch_is_prepared_while_the_current_one_is_used_in_order():
    events, started = [], {}
    lock = threading.Lock()

    def prepare(n):
        with lock:
            events.append(("prepare", n))
        started[n] = threading.current_thread().name
        return n * 10

    results = []
    with BatchFeed(prepare) as feed:
        for value in feed.batches(range(4)):
            # batch n+1 was handed to the worker before batch n is used (it may or may not have run yet)
            results.append(value)
            with lock:
                events.append(("use", value // 10))
    assert results == [0, 10, 20, 30]
    prepared = [n for kind, n in events if kind == "prepare"]
    assert prepared == [0, 1, 2, 3]  # one worker, in order: the caption RNG sees the batches as before
    assert all(name.startswith("lora-gradio-feed") for name in started.values())


def test_the_worker_runs_ahead_of_a_slow_step():
    gate = threading.Event()

    def prepare(n):
        if n == 1:
            gate.set()  # reached while batch 0 is still being used
        return n

    with BatchFeed(prepare) as feed:
        batches = feed.batches(range(3))
        assert next(batches) == 0
        assert gate.wait(5), "the next batch was not prepared while the current one was in use"
        assert list(batches) == [1, 2]


def test_a_failure_while_preparing_reaches_the_loop():
    def prepare(n):
        if n == 2:
            raise ValueError("unreadable caption")
        return n

    with BatchFeed(prepare) as feed, pytest.raises(ValueError, match="unreadable caption"):
        list(feed.batches(range(4)))


def test_losses_are_read_in_groups_and_a_bad_one_is_named_by_its_step():
    import torch

    reader = LossReader(every=3)
    reader.add(1, torch.tensor(0.5))
    reader.add(2, torch.tensor(0.25))
    assert not reader.due()
    reader.add(3, torch.tensor(0.125))
    assert reader.due()
    assert reader.read() == [(1, 0.5), (2, 0.25), (3, 0.125)]
    assert reader.read() == [] and not reader.due()
    reader.add(4, torch.tensor(0.5))
    reader.add(5, torch.tensor(float("inf")))
    with pytest.raises(UserError, match="became inf at step 5"):
        reader.read()


def test_the_cpu_reads_every_loss_and_a_gpu_every_few():
    import torch

    assert loss_read_interval(torch.device("cpu")) == 1
    assert loss_read_interval(torch.device("cuda", 0)) > 1
