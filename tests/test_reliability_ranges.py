"""Out-of-range values get their range before a run starts: sample prompt options, a batch larger than an epoch."""

from __future__ import annotations

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.check import WARNING, check_training_data
from lora_gradio.engine.train.sampling import check_sample_prompts
from tests.test_train_check import image


def test_sample_prompt_options_out_of_range_are_refused_with_the_range():
    check_sample_prompts(["1girl --n lowres --w 512 --h 768 --s 20 --l 7.5 --d 42"])
    with pytest.raises(UserError, match=r"--w 5000 is out of range \(width: 64 to 2048\)"):
        check_sample_prompts(["1girl --w 5000"])
    with pytest.raises(UserError, match=r"--h 100 is not a multiple of 8"):
        check_sample_prompts(["1girl --h 100"])
    with pytest.raises(UserError, match=r"--s 'many' is not a number \(steps, 1 to 150\)"):
        check_sample_prompts(["1girl --s many"])


def test_the_dataset_check_refuses_bad_sample_prompts_like_the_run(tmp_path):
    from lora_gradio.engine.project import Projects

    project = Projects(tmp_path / "Loras").create("char")
    for i in range(4):
        image(project.dataset_dir / f"{i}.png", caption="my_char, smile")
    settings = cfg.apply_overrides(cfg.defaults(), ["sample_prompts=my_char --w 9000"])
    check = check_training_data(project, settings)
    assert not check.ready and "--w 9000 is out of range" in check.findings[0].text


def test_a_batch_larger_than_an_epoch_is_said(tmp_path):
    from lora_gradio.engine.project import Projects

    project = Projects(tmp_path / "Loras").create("char")
    for i in range(3):
        image(project.dataset_dir / f"{i}.png", caption="my_char, smile")
    settings = cfg.apply_overrides(cfg.defaults(), ["num_repeats=1", "train_batch_size=8"])
    check = check_training_data(project, settings)
    assert any(f.level == WARNING and "train_batch_size 8 is larger than the 3 samples" in f.text for f in check.findings)
