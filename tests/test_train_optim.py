"""The optimizers and schedules the notebooks offer beyond the guide's: CAME and REX."""

from __future__ import annotations

import pytest

from lora_gradio.engine.train.optim import build_optimizer, build_scheduler, rex_factor


def _params():
    import torch

    return [{"params": [torch.nn.Parameter(torch.ones(3))], "lr": 1e-3, "name": "unet"},
            {"params": [torch.nn.Parameter(torch.ones(2))], "lr": 1e-4, "name": "text_encoder"}]


def test_came_trains_with_the_notebooks_arguments():
    import torch

    pytest.importorskip("pytorch_optimizer")
    groups = _params()
    optimizer, name = build_optimizer("CAME", groups, ["weight_decay=0.04"], on_cuda=False)
    assert name.endswith(".CAME")
    before = groups[0]["params"][0].detach().clone()
    groups[0]["params"][0].sum().backward()
    optimizer.step()
    assert not torch.equal(before, groups[0]["params"][0].detach())


def test_rex_warms_up_then_falls_to_zero_more_slowly_than_linear():
    assert rex_factor(0, 100, 10) == 0 and rex_factor(5, 100, 10) == pytest.approx(0.5)
    assert rex_factor(10, 100, 10) == pytest.approx(1.0)
    halfway = rex_factor(55, 100, 10)  # z = 0.5: (1 - 0.5) / (1 - 0.25)
    assert halfway == pytest.approx(2 / 3) and halfway > 0.5
    assert rex_factor(100, 100, 10) == 0


def test_rex_scales_every_parameter_groups_own_rate():
    groups = _params()
    optimizer, _ = build_optimizer("AdamW", groups, [], on_cuda=False)
    scheduler = build_scheduler("rex", optimizer, total_steps=10, warmup_ratio=0.0, number=3)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    lrs = [group["lr"] for group in optimizer.param_groups]
    assert lrs[0] == pytest.approx(1e-3 * rex_factor(5, 10)) and lrs[1] == pytest.approx(1e-4 * rex_factor(5, 10))
