"""Whole training runs on the tiny model: files, keys, metadata, hashes, diffusers loading, resume."""

from __future__ import annotations

import hashlib
import json
import random
import struct

import pytest

from lora_gradio.cli import main as cli_main
from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train import loop
from lora_gradio.engine.train.config import apply_overrides, load_settings, save_settings
from tests import kohya_reference
from tests.tiny_sd import build_tiny_sd


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("model") / "tiny")


def make_project(root, tiny_model, n_images=4, extra=()):
    from PIL import Image

    project = Projects(root).create("tiny_char")
    rnd = random.Random(0)
    for i in range(n_images):
        size = (256 + 64 * (i % 2), 256)
        Image.new("RGB", size, tuple(rnd.randrange(256) for _ in range(3))).save(project.dataset_dir / f"{i}.png")
        (project.dataset_dir / f"{i}.txt").write_text("tiny_char, 1girl, smile, red hair")
    settings = apply_overrides(load_settings(project), [
        f"training_model={tiny_model}", "resolution=256", "num_repeats=1", "how_many=2", "optimizer=AdamW",
        "network_dim=4", "network_alpha=2", "max_token_length=75", "unet_lr=1e-3", "text_encoder_lr=1e-3", *extra,
    ])
    save_settings(project, settings)
    return project


def read_header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def test_two_epochs_write_kohya_files_that_diffusers_loads(tmp_path, tiny_model):
    project = make_project(tmp_path / "Loras", tiny_model)
    result = loop.train_project(project)
    files = sorted(p.name for p in project.output_dir.glob("*.safetensors"))
    assert files == ["tiny_char-01.safetensors", "tiny_char-02.safetensors"]
    assert result.epochs_done == 2 and result.steps == 4  # 4 images, batch 2, 2 epochs

    header, tensor_bytes = read_header(project.output_dir / "tiny_char-02.safetensors")
    meta = header.pop("__metadata__")
    names = set(header)
    assert any(n.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.") for n in names)
    assert any(n.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for n in names)
    modules = {n.rsplit(".", 2)[0] if n.endswith(".weight") else n.rsplit(".", 1)[0] for n in names}
    for module in modules:
        down, up, alpha = header[f"{module}.lora_down.weight"], header[f"{module}.lora_up.weight"], header[f"{module}.alpha"]
        assert down["shape"][0] == 4 and up["shape"][1] == 4 and alpha["shape"] == []
        assert down["dtype"] == up["dtype"] == "F16"
    # Metadata as kohya writes it.
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_epoch"] == "2" and meta["ss_num_epochs"] == "2" and meta["ss_steps"] == "4"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2"
    assert meta["ss_output_name"] == "tiny_char" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_clip_skip"] == "2" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert json.loads(meta["ss_tag_frequency"])["dataset"]["tiny_char"] == 4
    assert json.loads(meta["ss_dataset_dirs"]) == {"dataset": {"n_repeats": 1, "img_count": 4}}  # key: the folder name
    assert sum(b["count"] for b in json.loads(meta["ss_bucket_info"])["buckets"].values()) == 4
    # Hashes as kohya precalculates them: the data hash over the tensor data only.
    assert meta["sshs_model_hash"] == hashlib.sha256(tensor_bytes).hexdigest()
    assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == kohya_reference.file_hashes(project.output_dir / "tiny_char-02.safetensors")
    # The LoRA actually changed something, and diffusers loads it and applies it.
    import torch
    from diffusers import StableDiffusionPipeline

    pytest.importorskip("peft")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def render():
        return pipe("tiny_char, 1girl", num_inference_steps=2, height=64, width=64, output_type="np", generator=torch.Generator().manual_seed(0)).images

    before = render()
    pipe.load_lora_weights(str(project.output_dir / "tiny_char-02.safetensors"), adapter_name="t")
    after = render()
    assert abs(after - before).max() > 1e-4


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(tmp_path, tiny_model):
    from safetensors.torch import load_file

    import shutil

    project = make_project(tmp_path / "Loras", tiny_model, extra=["how_many=3"])
    loop.train_project(project)  # the uninterrupted run, in the same place (same cached latents)
    expected = load_file(str(project.output_dir / "tiny_char-03.safetensors"))
    shutil.rmtree(project.output_dir)
    project.output_dir.mkdir()

    class StopAfter(Progress):
        """Interrupt like a closed Colab tab: a cancel request mid-epoch 2."""

        def __init__(self, steps):
            self.steps, self.seen = steps, 0

        def update(self, done, total=None, message="", **data):
            if data.get("loss") is not None:
                self.seen = done

        def cancelled(self):
            return self.seen >= self.steps

    with pytest.raises(Cancelled):
        loop.train_project(project, progress=StopAfter(3))
    assert loop.read_state_info(project)["global_step"] == 3
    assert sorted(p.name for p in project.output_dir.glob("*.safetensors")) == ["tiny_char-01.safetensors"]
    with pytest.raises(UserError, match="leave out --config and --set"):
        loop.prepare_settings(project, overrides=["seed=1"], resume=True)
    result = loop.train_project(project, resume=True)
    assert result.steps == 6 and result.epochs_done == 3
    resumed = load_file(str(project.output_dir / "tiny_char-03.safetensors"))
    import torch

    assert set(resumed) == set(expected)
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)  # bit-identical
    assert loop.read_state_info(project) is None  # finished: nothing left to resume


def test_nan_loss_stops_with_advice(tmp_path, tiny_model, monkeypatch):
    project = make_project(tmp_path / "Loras", tiny_model)
    import torch

    monkeypatch.setattr(loop, "forward_backward", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(UserError, match="Lower unet_lr"):
        loop.train_project(project)


def test_a_gpu_reads_the_losses_every_few_steps_and_still_catches_the_first_bad_one(tmp_path, tiny_model, monkeypatch):
    """Reading a loss waits for the GPU, so a GPU run reads them in groups; each epoch's are read before it is saved."""
    import torch

    from lora_gradio.engine.train import feed

    monkeypatch.setattr(feed, "loss_read_interval", lambda device: 3)
    project = make_project(tmp_path / "Loras", tiny_model, extra=["how_many=3"])  # 2 steps an epoch, 6 in all

    class Seen(Progress):
        def __init__(self):
            self.steps, self.with_loss = [], []

        def update(self, done, total=None, message="", **data):
            if data.get("epoch") is not None:
                self.steps.append(done)
                if "loss" in data:
                    self.with_loss.append(done)

    seen = Seen()
    loop.train_project(project, progress=seen)
    assert seen.steps == [1, 2, 3, 4, 5, 6]
    assert seen.with_loss == [2, 4, 6]  # at each epoch's end (the 3-step group never fills inside a 2-step epoch)

    real = loop.forward_backward
    calls = []

    def diverges_at_step_3(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(loop, "forward_backward", diverges_at_step_3)
    with pytest.raises(UserError, match="at step 3"):
        loop.train_project(project)
    assert len(calls) == 4  # found when epoch 2 ended, before its file was written
    assert not (project.output_dir / "tiny_char-02.safetensors").exists()


def test_keep_only_last_epochs_moves_older_ones_to_the_trash(tmp_path, tiny_model):
    from lora_gradio.engine.trash import list_trash

    project = make_project(tmp_path / "Loras", tiny_model, extra=["how_many=3", "keep_only_last_n_epochs=1", "text_encoder_lr=0"])
    loop.train_project(project)
    assert sorted(p.name for p in project.output_dir.glob("*.safetensors")) == ["tiny_char-03.safetensors"]
    assert sum(len(b.pending) for b in list_trash(project)) == 2
    header, _ = read_header(project.output_dir / "tiny_char-03.safetensors")
    assert not any(k.startswith("lora_te") for k in header)  # text_encoder_lr 0: UNet only, like kohya


def test_cli_dry_run_and_step_limit(tmp_path, tiny_model, capsys):
    project = make_project(tmp_path / "Loras", tiny_model)
    root = str(project.root)
    assert cli_main(["--root", root, "train", "tiny_char", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "4 images x 1 repeat x 2 epochs / 2 batch = 4 steps" in err and "Dry run" in out
    assert "advice: 4 images x repeats = 4 samples per epoch" in err and "raise num_repeats" in err  # as the page's check says
    (project.dataset_dir / "3.txt").write_text("1girl, smile")  # the activation tag is missing here
    (project.dataset_dir / "1.txt").unlink()  # and this image has no caption
    assert cli_main(["--root", root, "train", "tiny_char", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert "1 of 3 training captions do not start with the activation tag" in err
    missing = [line for line in err.splitlines() if "1.png" in line and "caption" in line]
    assert len(missing) == 1, err  # said once
    (project.dataset_dir / "1.txt").write_text("tiny_char, 1girl")
    (project.dataset_dir / "3.txt").write_text("tiny_char, 1girl")
    code = cli_main(["--root", root, "train", "tiny_char", "--dry-run", "--set", "num_repeats=1000", "--set", "how_many=100"])
    out, err = capsys.readouterr()
    assert code == 2 and "probably a mistake" in err and "force_steps=true" in err
    assert load_settings(project).num_repeats == 1  # a refused run changes no setting
    assert cli_main(["--root", root, "train", "tiny_char", "--dry-run", "--set", "force_steps=true"]) == 0
    capsys.readouterr()
    code = cli_main(["--root", root, "train", "tiny_char", "--set", "network_dimm=8"])
    _, err = capsys.readouterr()
    assert code == 2 and "network_dim" in err and err.count("\n") == 1


def test_empty_dataset_is_refused_before_loading_anything(tmp_path, tiny_model):
    project = Projects(tmp_path).create("empty")
    save_settings(project, apply_overrides(load_settings(project), [f"training_model={tiny_model}"]))
    with pytest.raises(UserError, match="No images"):
        loop.train_project(project)


def test_sample_images_every_epoch(tmp_path, tiny_model):
    project = make_project(tmp_path / "Loras", tiny_model, extra=["how_many=1", "sample_every_n_epochs=1", "sample_prompts=tiny_char, smile --w 64 --h 64 --s 2 | tiny_char, red hair --w 64 --h 64 --s 2 --d 7"])
    result = loop.train_project(project)
    from PIL import Image

    assert [p.split("/")[-1] for p in result.samples] == ["tiny_char-01-00.png", "tiny_char-01-01.png"]
    assert Image.open(result.samples[0]).size == (64, 64)


def test_batches_are_shared_evenly_between_processes():
    import types

    batches = list(range(7))
    shares = [loop._shard(batches, types.SimpleNamespace(num_processes=3, process_index=i)) for i in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]  # equal steps, or the gradient sync would hang
    assert set(sum(shares, [])) == set(batches)


def test_hub_model_offline_gets_a_clear_message(tmp_path, monkeypatch):
    from lora_gradio.engine.train import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = models.resolve_source("nobody-here/no-such-model", tmp_path)
    with pytest.raises(UserError, match="Cannot load the base model nobody-here/no-such-model"):
        models.load_base_model(source)


def test_weighted_captions_train(tmp_path, tiny_model):
    project = make_project(tmp_path / "Loras", tiny_model, extra=["how_many=1", "weighted_captions=true", "shuffle_tags=false"])
    (project.dataset_dir / "0.txt").write_text("tiny_char, (red hair:1.3), [smile]")
    assert loop.train_project(project).steps == 2


def test_a_new_run_sets_the_previous_one_aside_instead_of_overwriting(tmp_path, tiny_model):
    from lora_gradio.engine.trash import list_trash, restore

    project = make_project(tmp_path / "Loras", tiny_model, extra=["how_many=1"])
    loop.train_project(project)
    first = (project.output_dir / "tiny_char-01.safetensors").read_bytes()
    save_settings(project, apply_overrides(load_settings(project), ["seed=7"]))
    loop.train_project(project)
    assert (project.output_dir / "tiny_char-01.safetensors").read_bytes() != first
    batch = next(b for b in list_trash(project) if b.reason == "previous run of tiny_char")
    restored = restore(project, batch.id)
    assert any(r.endswith("tiny_char-01 (2).safetensors") for r in restored)


def test_samples_with_a_16_bit_unet_and_an_fp32_vae(tmp_path, tiny_model):
    # On a GPU the UNet and text encoder run in bf16/fp16 while the VAE stays fp32 (as in the loop).
    import torch
    from diffusers import StableDiffusionPipeline

    from lora_gradio.engine.train.sampling import sample_images

    from lora_gradio.engine.train.models import BaseModel

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None, requires_safety_checker=False)
    model = BaseModel(
        unet=pipe.unet.to(torch.bfloat16), text_encoders=[pipe.text_encoder.to(torch.bfloat16)], vae=pipe.vae,
        tokenizers=[pipe.tokenizer], noise_scheduler=pipe.scheduler, version="sd_v1", source=None,
    )
    saved = sample_images(model, ["tiny_char --w 64 --h 64 --s 2"], tmp_path / "sample", "x-01", 64, 1, "cpu")
    from PIL import Image

    assert [p.name for p in saved] == ["x-01-00.png"] and Image.open(saved[0]).size == (64, 64)


def test_a_missing_optimizer_package_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    """The guide's AdamW8bit needs bitsandbytes on a GPU; finding out after a 2 GB download is too late."""
    import importlib.util

    from lora_gradio.engine.train import loop, optim

    project = make_project(tmp_path / "Loras", "anime", extra=["optimizer=Prodigy"])  # a preset: loading it would download
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "prodigyopt" else real_find_spec(name, *a))
    with pytest.raises(UserError, match="pip install prodigyopt"):
        loop.train_project(project, dry_run=True)
    monkeypatch.setattr(loop, "_cuda_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(UserError, match="pip install bitsandbytes"):
        optim.check_optimizer_installed("AdamW8bit", on_cuda=True)
    optim.check_optimizer_installed("AdamW8bit", on_cuda=False)  # the CPU trains with AdamW instead
    project_8bit = make_project(tmp_path / "Other", "anime", extra=["optimizer=AdamW8bit"])
    with pytest.raises(UserError, match="pip install bitsandbytes"):
        loop.train_project(project_8bit)  # refused before anything loads


def test_a_gpu_run_starts_its_log_with_the_memory_check(tmp_path, tiny_model):
    """What the page's Check GPU memory says, for people who train from the command line."""
    from lora_gradio.engine.train import loop

    settings = apply_overrides(load_settings(make_project(tmp_path / "Loras", tiny_model)), ["resolution=512", "train_batch_size=2"])
    lines = []

    class Recording(Progress):
        def log(self, message):
            lines.append(message)

    loop._log_memory_plan(settings, Recording(), gpu=(15 << 30, 16 << 30, "Tesla T4"))
    assert any("Tesla T4" in line for line in lines) and any("GiB" in line for line in lines)
    lines.clear()
    loop._log_memory_plan(settings, Recording(), gpu=(1 << 30, 2 << 30, "Tiny GPU"))  # too small: the changes that would fit
    assert len(lines) > 2 and any("gradient_checkpointing" in line or "batch" in line for line in lines), lines
