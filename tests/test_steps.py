"""The guide's step math, kohya's buckets and regularization balancing, and the 10,000-step refusal."""

from __future__ import annotations

import math

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train.steps import MAX_STEPS, FolderPlan, check_step_limit, plan_steps

# The guide's five example rows ("Make your own Loras, easy and free", holostrawberry, civitai), as quoted
# word for word in third-party READMEs that copy its table:
#   10 images x 10 repeats x 20 epochs / 2 batch size = 1000 steps
#   20 images x 10 repeats x 10 epochs / 2 batch size = 1000 steps
#   100 images x 3 repeats x 10 epochs / 2 batch size = 1500 steps
#   400 images x 1 repeat x 10 epochs / 2 batch size = 2000 steps
#   1000 images x 1 repeat x 10 epochs / 3 batch size = 3300 steps
# The last row is the guide rounding 3333; a trainer cannot take a third of a step, so each epoch is
# ceil(1000 / 3) = 334 steps and the run 3340 steps (what kohya does too).
GUIDE_ROWS = [
    # images, repeats, epochs, batch, the guide's steps, exact steps
    (10, 10, 20, 2, 1000, 1000),
    (20, 10, 10, 2, 1000, 1000),
    (100, 3, 10, 2, 1500, 1500),
    (400, 1, 10, 2, 2000, 2000),
    (1000, 1, 10, 3, 3300, 3340),
]


@pytest.mark.parametrize("images, repeats, epochs, batch, guide, exact", GUIDE_ROWS)
def test_the_guides_five_rows(images, repeats, epochs, batch, guide, exact):
    plan = plan_steps([FolderPlan("dataset", images, repeats)], batch, "Epochs", epochs)
    assert plan.epochs == epochs
    assert plan.total_steps == exact
    assert abs(plan.total_steps - guide) / guide < 0.02  # the guide's figure, up to its rounding
    assert plan.steps_per_epoch == math.ceil(images * repeats / batch)
    check_step_limit(plan)  # none of the guide's runs is refused


def test_explain_reads_like_the_guide():
    plan = plan_steps([FolderPlan("dataset", 20, 10)], 2, "Epochs", 10)
    text = plan.explain()
    assert "dataset: 20 images x 10 repeats x 10 epochs / 2 batch = 1000 steps" in text
    assert "Total: 1000 steps (10 epochs x 100 steps per epoch)" in text


def test_explain_says_1_repeat_in_the_singular():
    text = plan_steps([FolderPlan("dataset", 400, 1)], 2, "Epochs", 10).explain()
    assert "400 images x 1 repeat x 10 epochs / 2 batch = 2000 steps" in text


def test_several_folders_with_their_own_repeats():
    # The notebook's custom_dataset template: good images x3, normal images x1.
    folders = [FolderPlan("good_images", 30, 3), FolderPlan("normal_images", 100, 1)]
    plan = plan_steps(folders, 2, "Epochs", 10)
    assert plan.train_samples == 190 and plan.steps_per_epoch == 95 and plan.total_steps == 950
    text = plan.explain()
    assert "good_images: 30 images x 3 repeats x 10 epochs / 2 batch = 450 steps" in text
    assert "normal_images: 100 images x 1 repeat x 10 epochs / 2 batch = 500 steps" in text
    assert "Total: 950 steps" in text


def test_steps_unit_gives_epochs_rounded_up():
    plan = plan_steps([FolderPlan("dataset", 20, 10)], 2, "Steps", 1500)
    assert (plan.steps_per_epoch, plan.epochs, plan.total_steps) == (100, 15, 1500)
    plan = plan_steps([FolderPlan("dataset", 20, 10)], 2, "Steps", 2050)
    assert (plan.epochs, plan.total_steps) == (21, 2050)
    text = plan.explain()
    assert "2050 steps" in text and "21 epochs" in text and "last one 50 steps" in text


def test_buckets_batch_within_each_bucket_like_kohya():
    # 20 images in three buckets at 10 repeats, batch 4: ceil(110/4) + ceil(60/4) + ceil(30/4) = 28 + 15 + 8.
    plan = plan_steps([FolderPlan("dataset", 20, 10)], 4, "Epochs", 10, bucket_counts=[[11, 6, 3]])
    assert plan.steps_per_epoch == 51 and plan.total_steps == 510
    assert plan.guide_steps_per_epoch == 50
    assert "an epoch takes 51 steps instead of 50" in plan.explain()


def test_same_bucket_in_two_folders_is_batched_together():
    folders = [FolderPlan("a", 3, 1), FolderPlan("b", 3, 1)]
    merged = plan_steps(folders, 2, "Epochs", 1, bucket_counts=[{(512, 512): 3}, {(512, 512): 3}])
    separate = plan_steps(folders, 2, "Epochs", 1, bucket_counts=[[3], [3]])
    assert merged.steps_per_epoch == 3  # ceil(6 / 2)
    assert separate.steps_per_epoch == 4  # ceil(3 / 2) twice


def _kohya_reg_samples(train_samples: int, reg_folders: list[tuple[int, int]]) -> int:
    """kohya's DreamBoothDataset balancing loop, transcribed: the reg samples it registers per epoch."""
    infos = [repeats for images, repeats in reg_folders for _ in range(images)]
    if not infos:
        return 0
    registered: list[int] = []
    n, first_loop = 0, True
    while n < train_samples:
        for index, repeats in enumerate(infos):
            if first_loop:
                registered.append(repeats)
                n += repeats
            else:
                registered[index] += 1
                n += 1
            if n >= train_samples:
                break
        first_loop = False
    return sum(registered)


@pytest.mark.parametrize(
    "train, reg",
    [
        ((20, 10), [(50, 1)]),  # few reg samples: repeated up to the 200 training samples
        ((20, 10), [(500, 1)]),  # more reg images than needed: only 200 are used
        ((20, 10), [(30, 3)]),  # reg repeats overshoot: the last image counts whole
        ((7, 3), [(4, 1), (2, 5)]),  # two reg folders, several rounds
        ((10, 10), [(3, 2)]),
    ],
)
def test_regularization_matches_kohyas_balancing(train, reg):
    folders = [FolderPlan("train", *train)] + [FolderPlan(f"reg{i}", images, repeats, is_reg=True) for i, (images, repeats) in enumerate(reg)]
    plan = plan_steps(folders, 2, "Epochs", 10)
    expected_reg = _kohya_reg_samples(train[0] * train[1], reg)
    assert plan.reg_samples == expected_reg
    assert plan.steps_per_epoch == math.ceil((train[0] * train[1] + expected_reg) / 2)


def test_regularization_doubles_the_epoch_and_says_so():
    folders = [FolderPlan("chars", 20, 10), FolderPlan("reg", 50, 1, is_reg=True)]
    plan = plan_steps(folders, 2, "Epochs", 10)
    assert (plan.train_samples, plan.reg_samples, plan.steps_per_epoch, plan.total_steps) == (200, 200, 200, 2000)
    assert plan.reg_repeats == {"reg": 4.0}
    text = plan.explain()
    assert "chars: 20 images x 10 repeats x 10 epochs / 2 batch = 1000 steps" in text
    assert "reg (regularization): 50 images x 4 repeats" in text
    assert "400 samples (200 training + 200 regularization)" in text and "twice" in text
    assert "Total: 2000 steps" in text


def test_regularization_with_buckets():
    folders = [FolderPlan("chars", 4, 5), FolderPlan("reg", 10, 1, is_reg=True)]
    plan = plan_steps(folders, 2, "Epochs", 1, bucket_counts=[{"sq": 4}, {"sq": 5, "wide": 5}])
    # 20 train samples; reg balanced to 20 samples, spread 10/10 over its two buckets.
    assert plan.reg_samples == 20
    assert plan.steps_per_epoch == math.ceil(30 / 2) + math.ceil(10 / 2)


def test_several_processes_share_each_epoch():
    plan = plan_steps([FolderPlan("dataset", 20, 10)], 2, "Epochs", 10, num_processes=2)
    assert (plan.steps_per_epoch, plan.total_steps) == (50, 500)
    assert "/ 2 GPUs" in plan.explain()


def test_more_than_10000_steps_is_refused_unless_forced():
    plan = plan_steps([FolderPlan("dataset", 500, 10)], 2, "Epochs", 10)
    assert plan.total_steps == 25_000 > MAX_STEPS
    with pytest.raises(UserError) as caught:
        check_step_limit(plan)
    message = str(caught.value)
    assert "25,000 steps is probably a mistake" in message
    assert "500 images x 10 repeats x 10 epochs / 2 batch" in message
    assert "lower repeats or epochs, or set force_steps=true" in message
    check_step_limit(plan, force=True)  # forced: allowed
    check_step_limit(plan_steps([FolderPlan("dataset", 100, 10)], 1, "Epochs", 10))  # exactly 10,000 is fine


def test_steps_unit_past_the_limit_is_refused_too():
    with pytest.raises(UserError, match="20,000 steps"):
        check_step_limit(plan_steps([FolderPlan("dataset", 20, 10)], 2, "Steps", 20_000))


def test_no_images_is_refused():
    plan = plan_steps([FolderPlan("dataset", 0, 10)], 2, "Epochs", 10)
    assert plan.total_steps == 0 and plan.epochs == 0
    with pytest.raises(UserError, match="No training images in dataset"):
        check_step_limit(plan, force=True)
    only_reg = plan_steps([FolderPlan("main", 0, 10), FolderPlan("reg", 40, 1, is_reg=True)], 2, "Epochs", 10)
    with pytest.raises(UserError, match="No training images in main"):
        check_step_limit(only_reg)
    with pytest.raises(UserError, match="No training images"):
        check_step_limit(plan_steps([], 2, "Steps", 100))


def test_bad_arguments_are_programming_errors():
    with pytest.raises(ValueError):
        plan_steps([FolderPlan("d", 1, 1)], 0, "Epochs", 1)
    with pytest.raises(ValueError):
        plan_steps([FolderPlan("d", 1, 1)], 1, "Minutes", 1)
    with pytest.raises(ValueError):
        plan_steps([FolderPlan("d", 1, 1)], 1, "Epochs", 1, bucket_counts=[])


def test_regularization_repeats_follow_kohyas_walk():
    """The closed form against kohya's loop, written out: first pass with folder repeats, then +1 each."""
    import random

    from lora_gradio.engine.train.steps import regularization_repeats

    def walk(train, folder_repeats):
        repeats, n, first = [0] * len(folder_repeats), 0, True
        while n < train and folder_repeats:
            for i, r in enumerate(folder_repeats):
                repeats[i] = r if first else repeats[i] + 1
                n += r if first else 1
                if n >= train:
                    break
            first = False
        return repeats

    rng = random.Random(0)
    for _ in range(500):
        image_repeats = [rng.choice([1, 1, 2, 5, 10]) for _ in range(rng.randint(0, 12))]
        train = rng.randint(0, 200)
        assert regularization_repeats(train, image_repeats) == walk(train, image_repeats), (train, image_repeats)
    assert regularization_repeats(10, [3, 3, 3, 3, 3]) == [3, 3, 3, 3, 0]  # the last image is not reached
    assert regularization_repeats(10, [1, 2]) == [5, 5]  # 1 and 2 on the first pass, then 7 more round-robin: +4 and +3
