"""The memory check before training (engine/train/memory.py) and the measurements its constants come from.

The estimate's tests are pure arithmetic. The measurement tests run benchmarks/memory_estimate.py's
counters on the tiny model (real CPU tensors against the meta device, the autocast replay against
PyTorch's real CPU autocast) and on the real-size SD1.5 and SDXL architectures on the meta device, at points
the constants were not fitted on. The SDXL tests hold the XL notebook's defaults against a 16 GB T4.
"""

from __future__ import annotations

import os
import stat

import pytest

from benchmarks import memory_estimate as me
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.settings_model import to_dict
from lora_gradio.engine.train import memory
from lora_gradio.engine.train.config import TrainSettings, validate_settings

GiB = memory.GiB


def est(version: str = "sd_v1", on_cuda: bool = True, **changes):
    return memory.estimate_memory(TrainSettings(**changes), version, on_cuda=on_cuda)


def training(**changes) -> int:
    return est(**changes).phase_total("training")


# The estimate ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, small, big",
    [
        ("train_batch_size", 1, 4),
        ("resolution", 512, 768),
        ("network_dim", 16, 128),
        ("conv_dim", 8, 64),
        ("max_token_length", 75, 225),
    ],
)
def test_more_of_anything_needs_more_memory(key, small, big):
    base = {"lora_type": "LoCon"} if key == "conv_dim" else {}
    assert training(**base, **{key: big}) > training(**base, **{key: small})
    assert est(**base, **{key: big}).total > est(**base, **{key: small}).total


def test_batch_and_resolution_scale_the_activations_not_the_weights():
    one, four = est(train_batch_size=1), est(train_batch_size=4)
    act = lambda e: next(v for k, v in e.phases["training"].items() if k.startswith("activations"))  # noqa: E731
    weights = lambda e: next(v for k, v in e.phases["training"].items() if k.startswith("UNet weights"))  # noqa: E731
    assert 3.8 < act(four) / act(one) < 4.01
    assert weights(four) == weights(one)
    # 768 px has 2.25 times the pixels of 512 px
    assert 2.1 < act(est(resolution=768, train_batch_size=1)) / act(one) < 2.3


def test_checkpointing_8bit_and_a_frozen_text_encoder_need_less():
    assert training(gradient_checkpointing=True) < 0.6 * training(gradient_checkpointing=False)
    assert training(optimizer="AdamW8bit", network_dim=128) < training(optimizer="AdamW", network_dim=128) < training(optimizer="Prodigy", network_dim=128)
    assert training(optimizer="Lion", network_dim=128) < training(optimizer="AdamW", network_dim=128)
    assert training(text_encoder_lr=0) < training(text_encoder_lr=1e-4)
    assert training(mixed_precision="auto") < training(mixed_precision="no")
    assert training(lora_type="LoRA") < training(lora_type="DoRA")


def test_breakdown_adds_up_to_the_total():
    for changes in ({}, {"sample_prompts": ["1girl --w 768 --h 1024"], "sample_every_n_epochs": 1}, {"resolution": 1024, "train_batch_size": 1}):
        e = est(**changes)
        assert sum(e.parts.values()) == e.total
        assert e.total == max(e.phase_total(name) for name in e.phases)
        assert all(value > 0 for value in e.parts.values())
        assert f"{e.total / GiB:.1f} GiB" in e.summary()
    sampled = est(sample_prompts=["1girl --w 768 --h 1024"], sample_every_n_epochs=1)
    assert "making sample images" in sampled.phases
    assert any("768x1024" in name for name in sampled.phases["making sample images"])
    assert "making sample images" not in est().phases  # no prompts, no sampling


def test_the_largest_bucket_has_resolution_squared_pixels():
    from lora_gradio.engine.train.data import make_bucket_resolutions

    for reso in (512, 640, 768):
        s = TrainSettings(resolution=reso)
        assert memory.largest_bucket(s) == (reso, reso)
        assert max(w * h for w, h in make_bucket_resolutions(reso, s.min_bucket_reso, s.max_bucket_reso, s.bucket_reso_steps)) == reso * reso


def test_latent_caching_is_its_own_phase_and_encodes_fewer_images_when_they_are_big():
    def encoding(reso: int, images: str) -> int:
        caching = est(resolution=reso).phases["caching latents"]
        assert "VAE weights (fp32)" in caching and not any(k.startswith("UNet") for k in caching)
        return next(v for k, v in caching.items() if k.startswith(f"VAE encoding ({images} at {reso}x{reso}"))

    # 4 images at 512 px and 1 at 1024 px are the same pixels: the same memory.
    assert encoding(1024, "1 image") == pytest.approx(encoding(512, "4 images"), rel=1e-6)
    assert encoding(768, "1 image") < encoding(512, "4 images")


def test_versions_and_bad_input():
    assert est("sd_v2").total > est("sd_v1").total  # the bigger text encoder
    assert est("sd15").total == est("sd_v1").total
    assert est("sdxl").total > est("sd_v2").total
    for alias in ("sdxl_base_v1-0", "sdxl_base_v1-0_v", "SDXL"):
        assert memory.canonical_version(alias) == "sdxl" and est(alias).total == est("sdxl").total
    with pytest.raises(UserError, match="sdxl"):
        est("sd3")


# Fitting and suggestions -------------------------------------------------------------------------


def apply(settings: TrainSettings, changes: dict) -> TrainSettings:
    return validate_settings({**to_dict(settings), **changes})


def test_a_run_that_fits_gets_no_suggestions_and_a_tight_one_a_warning():
    e = est()
    report = memory.check_fits(e, 80 * GiB, gpu_name="H100")
    assert report.verdict == "fits" and report.fits and not report.suggestions
    assert "H100" in report.message
    tight = memory.check_fits(e, int(e.total * 1.04))
    assert tight.verdict == "tight" and tight.fits and tight.suggestions


def test_suggestions_fit_when_applied():
    s = TrainSettings(train_batch_size=8, resolution=768, optimizer="AdamW", network_dim=64, network_alpha=32, text_encoder_lr=1e-4)
    e = memory.estimate_memory(s, "sd_v1")
    free = int(e.total * 0.6)
    report = memory.check_fits(e, free)
    assert report.verdict == "too_big" and not report.fits
    assert report.suggestions[0].changes == {"gradient_checkpointing": True}  # cheapest first
    assert any(x.fits for x in report.suggestions)
    for suggestion in report.suggestions:
        again = memory.estimate_memory(apply(s, suggestion.changes), "sd_v1")
        assert again.total == suggestion.total < e.total
        assert suggestion.fits == (again.total * (1 + memory.HEADROOM) <= free)
    batch = next(x for x in report.suggestions if "train_batch_size" in x.changes)
    b = batch.changes["train_batch_size"]
    if batch.fits and b + 1 < s.train_batch_size:  # the largest batch that fits
        bigger = memory.estimate_memory(apply(s, {"train_batch_size": b + 1}), "sd_v1").total
        assert bigger * (1 + memory.HEADROOM) > free
    reso = next(x for x in report.suggestions if "resolution" in x.changes)
    assert reso.changes["resolution"] % 64 == 0 and reso.changes["resolution"] < 768
    assert "optimizer" in " ".join(str(x.changes) for x in report.suggestions)
    assert "Will not fit" in report.summary()


def test_when_no_single_change_is_enough_they_are_combined():
    s = TrainSettings(train_batch_size=8, resolution=512, optimizer="Prodigy", unet_lr=1.0, text_encoder_lr=1.0, network_dim=64, network_alpha=64)
    e = memory.estimate_memory(s, "sd_v1")
    target = memory.estimate_memory(apply(s, {"gradient_checkpointing": True, "train_batch_size": 2}), "sd_v1")
    free = int(target.total * (1 + memory.HEADROOM)) + 1
    report = memory.check_fits(e, free)
    singles, last = report.suggestions[:-1], report.suggestions[-1]
    assert not any(x.fits for x in singles)
    assert last.text.startswith("all together") and last.fits
    # checkpointing first, then the largest batch that fits on top of it: 2 (3 would not)
    assert last.changes == {"gradient_checkpointing": True, "train_batch_size": 2}
    assert memory.estimate_memory(apply(s, last.changes), "sd_v1").total == last.total
    three = memory.estimate_memory(apply(s, {"gradient_checkpointing": True, "train_batch_size": 3}), "sd_v1").total
    assert three * (1 + memory.HEADROOM) > free
    assert "No single change is enough" in report.summary()


def test_a_cpu_only_machine():
    e = est(on_cuda=False, optimizer="AdamW8bit")
    assert e.precision == "no" and "CUDA context" not in e.parts
    assert any("AdamW" in k for k in e.parts) and any("AdamW8bit is replaced" in n for n in e.notes)
    report = memory.check_fits(e, None)
    assert report.verdict == "no_gpu" and not report.suggestions
    assert "CPU" in report.message and "slowly" in report.message
    assert memory.check_training_memory(TrainSettings(), gpu=None).verdict == "no_gpu"
    on_t4 = memory.check_training_memory(TrainSettings(), gpu=(15 * GiB, 16 * GiB, "Tesla T4"))
    assert on_t4.estimate.precision == "fp16" and on_t4.verdict == "fits"


def test_gpu_memory_without_a_gpu(monkeypatch):
    import shutil

    import torch

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert memory.gpu_memory() is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert memory.gpu_memory() is None


def test_gpu_memory_asks_nvidia_smi_for_the_visible_gpu(tmp_path, monkeypatch):
    import torch

    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\necho "14920, 15360, Tesla T4"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert memory.gpu_memory() == (14920 * memory.MiB, 15360 * memory.MiB, "Tesla T4")
    assert "--id=3" in (tmp_path / "args").read_text()
    assert memory.parse_nvidia_smi("garbage") is None


def test_model_version_without_loading():
    assert memory.model_version(TrainSettings(training_model="anime"))[0] == "sd_v1"
    version, how = memory.model_version(TrainSettings(training_model="someone/some-model"))
    assert version == "sd_v1" and "assumed" in how


@pytest.mark.parametrize("preset", ["illustrious", "noobai_eps", "noobai_vpred", "pony", "animagine", "sdxl"])
def test_model_version_knows_the_sdxl_presets(preset):
    version, how = memory.model_version(xl_settings(training_model=preset))
    assert version == "sdxl" and preset in how


def test_model_version_reads_sdxl_from_a_file_header_or_a_diffusers_folder(tmp_path, monkeypatch):
    import json
    import struct

    def safetensors(path, keys):
        header = json.dumps({k: {"dtype": "F16", "shape": [1], "data_offsets": [2 * i, 2 * i + 2]} for i, k in enumerate(keys)}).encode()
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(2 * len(keys)))
        return path

    from lora_gradio.engine.train import models

    def no_loading(*args, **kwargs):
        raise AssertionError("model_version must not load weights")

    monkeypatch.setattr(models, "load_ckpt_state_dict", no_loading)
    xl = safetensors(tmp_path / "xl.safetensors", ["conditioner.embedders.0.transformer.x", "conditioner.embedders.1.model.x", "model.diffusion_model.x"])
    assert memory.model_version(xl_settings(training_model=str(xl))) == ("sdxl", "read from xl.safetensors")
    folder = tmp_path / "xl-diffusers"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    assert memory.model_version(xl_settings(training_model=str(folder)))[0] == "sdxl"


# SDXL --------------------------------------------------------------------------------------------

# The XL notebook's defaults (docs: its training cell), with gradient checkpointing on.
XL_DEFAULTS = dict(
    training_model="illustrious", resolution=1024, min_bucket_reso=256, max_bucket_reso=4096, bucket_reso_steps=64,
    train_batch_size=4, lora_type="LoRA", network_dim=8, network_alpha=4, optimizer="AdamW8bit", mixed_precision="full_fp16",
    gradient_checkpointing=True, unet_lr=3e-4, text_encoder_lr=6e-5, max_token_length=225,
)
# A free Colab T4: 16 GB, about 15 GiB free once the CUDA context is up.
T4 = (15 * GiB, 16 * GiB, "Tesla T4")


def xl_settings(**changes) -> TrainSettings:
    return TrainSettings(**{**XL_DEFAULTS, **changes})


def part(estimate, start: str, phase: str = "training") -> int:
    return next(v for k, v in estimate.phases[phase].items() if k.startswith(start))


def test_the_xl_defaults_here_are_the_settings_defaults_for_sdxl():
    family = pytest.importorskip("lora_gradio.engine.train.family")
    mine = {k: v for k, v in XL_DEFAULTS.items() if k in family.SDXL_DEFAULTS}
    assert mine == {k: family.SDXL_DEFAULTS[k] for k in mine} and len(mine) >= 8


def test_the_xl_defaults_fit_a_t4_with_gradient_checkpointing():
    report = memory.check_training_memory(xl_settings(), gpu=T4)
    e = report.estimate
    assert e.version == "sdxl" and e.precision == "full_fp16" and e.bucket == (1024, 1024)
    assert report.verdict == "fits" and not report.suggestions
    assert 10.0 * GiB < e.total < 11.5 * GiB, e.summary()  # 10.6 GiB with the constants of this version
    assert e.peak_phase == "training"
    assert part(e, "UNet weights (fp16)") == 2 * 2_567_463_684
    assert part(e, "text encoders (CLIP-L + bigG) weights (fp16)") == 2 * (123_060_480 + 694_659_840)


def test_the_xl_defaults_without_checkpointing_are_refused_on_a_t4_with_the_change_that_fits():
    s = xl_settings(gradient_checkpointing=False)
    report = memory.check_training_memory(s, gpu=T4)
    assert report.verdict == "too_big" and not report.fits
    assert report.estimate.total > 30 * GiB, report.estimate.summary()  # 36 GiB: a batch of 4 at 1024 px keeps every activation
    first = report.suggestions[0]
    assert first.changes == {"gradient_checkpointing": True} and first.fits
    assert memory.estimate_memory(apply(s, first.changes), "sdxl").total == first.total
    batch = next(x for x in report.suggestions if "train_batch_size" in x.changes)
    assert batch.changes == {"train_batch_size": 1} and not batch.fits  # even one 1024 px image does not fit
    cached = next(x for x in report.suggestions if "cache_text_encoder_outputs" in x.changes)
    assert cached.total < report.estimate.total and not cached.fits
    with pytest.raises(UserError) as refused:
        memory.refuse_if_too_big(report)
    message = str(refused.value)
    assert "Will not fit on Tesla T4" in message and "shared memory" in message
    assert "Change this to make it fit: turn on gradient_checkpointing" in message
    memory.refuse_if_too_big(memory.check_training_memory(xl_settings(), gpu=T4))  # fits: no error
    memory.refuse_if_too_big(memory.check_training_memory(s, gpu=None))  # the CPU: no GPU memory to refuse


def test_when_nothing_single_fits_the_combination_is_offered_for_sdxl():
    # Mixed precision, AdamW and LoCon 32 at batch 8 on a T4: no single change is enough.
    s = xl_settings(train_batch_size=8, gradient_checkpointing=False, mixed_precision="fp16", optimizer="AdamW",
                    lora_type="LoCon", network_dim=32, network_alpha=16, conv_dim=16, conv_alpha=8)
    report = memory.check_training_memory(s, gpu=T4)
    assert report.verdict == "too_big"
    texts = " | ".join(x.text for x in report.suggestions)
    assert "full_fp16" in texts and "cache_text_encoder_outputs" in texts and "AdamW8bit" in texts
    last = report.suggestions[-1]
    assert last.text.startswith("all together") and last.fits
    assert last.changes["gradient_checkpointing"] is True
    again = memory.estimate_memory(apply(s, last.changes), "sdxl")
    assert again.total == last.total and again.total * (1 + memory.HEADROOM) <= T4[0]
    # SDXL's resolution is the last thing lowered, and never below 512
    reso = [x for x in report.suggestions if "resolution" in x.changes]
    assert all(x.changes["resolution"] >= 512 for x in reso)
    assert "Change this to make it fit" in _refusal(report) or "No change" in _refusal(report)


def _refusal(report) -> str:
    with pytest.raises(UserError) as refused:
        memory.refuse_if_too_big(report)
    return str(refused.value)


def test_every_optimizer_has_measured_figures_in_both_precisions():
    from lora_gradio.engine.train.config import LORA_TYPES, OPTIMIZERS

    for name in OPTIMIZERS:
        for lora_type in LORA_TYPES:
            mixed, full = memory.optimizer_bytes(name, lora_type, 10**6), memory.optimizer_bytes(name, lora_type, 10**6, full_16bit=True)
            assert 0 < full[0] <= mixed[0]  # a 16-bit network's state is never larger (AdamW8bit's is the same)


def test_full_16_bit_precision_keeps_the_network_gradients_and_optimizer_in_16_bits():
    mixed, full = est("sdxl", **{**XL_DEFAULTS, "mixed_precision": "fp16", "optimizer": "AdamW"}), est("sdxl", **{**XL_DEFAULTS, "optimizer": "AdamW"})
    assert (mixed.precision, full.precision) == ("fp16", "full_fp16")
    params = sum(memory.network_params("sdxl", "LoRA", 8, 8, True).values())
    assert part(mixed, "LoRA network (fp32") == 4 * params and part(full, "LoRA network (fp16") == 2 * params
    assert part(mixed, "gradients (fp32)") == 4 * params and part(full, "gradients (fp16)") == 2 * params
    assert part(full, "optimizer state (AdamW, 16-bit)") == pytest.approx(part(mixed, "optimizer state (AdamW)") / 2, rel=0.01)
    # the frozen weights and the activations are the same: only the network's bytes change
    assert part(full, "UNet weights (fp16)") == part(mixed, "UNet weights (fp16)")
    assert part(full, "activations") == part(mixed, "activations")
    assert full.total < mixed.total
    assert est("sdxl", **{**XL_DEFAULTS, "mixed_precision": "full_bf16"}).precision == "full_bf16"
    assert est("sdxl", on_cuda=False, **XL_DEFAULTS).precision == "no"  # the CPU trains in fp32
    assert "full fp16" in full.summary()


def test_cached_text_encoder_outputs_take_the_encoders_off_the_gpu():
    plain, cached = est("sdxl", **XL_DEFAULTS), est("sdxl", **XL_DEFAULTS, cache_text_encoder_outputs=True)
    assert not any(k.startswith("text encoders") for k in cached.phases["training"])
    per_image = (77 * 3 * 2048 + 1280) * 2  # [231, 2048] states and the pooled [1280], fp16
    assert part(cached, "cached text-encoder outputs (100 images)") == 100 * per_image
    assert "cached text-encoder outputs" in " ".join(cached.notes)
    # the encoders, as loaded (fp32), encode every caption once, then leave the GPU; their LoRA is not trained
    caching = cached.phases["caching text-encoder outputs"]
    assert part(cached, "text encoders (CLIP-L + bigG) weights (fp32)", "caching text-encoder outputs") == 2 * part(plain, "text encoders")
    assert part(cached, "encoding (8 captions)", "caching text-encoder outputs") == 8 * 3 * 77 * memory._TEXT_CACHE_ENCODE_PER_TOKEN["sdxl"]
    assert sum(caching.values()) < cached.phase_total("training")
    assert part(cached, "LoRA network") == 2 * memory.network_params("sdxl", "LoRA", 8, 8, False)["unet"]
    assert cached.total < plain.total - 1.5 * GiB


def test_sdxl_latent_caching_and_samples():
    e = est("sdxl", **XL_DEFAULTS, sample_prompts=["1girl --w 832 --h 1216"], sample_every_n_epochs=1)
    assert part(e, "VAE encoding (1 image at 1024x1024)", "caching latents") > 2 * GiB  # fp32 VAE at 1024 px
    sampling = e.phases["making sample images"]
    assert any("832x1216" in k for k in sampling) and any(k.startswith("text encoders") for k in sampling)


# The measurements behind the constants -----------------------------------------------------------


def tiny_models(device: str, precision: str = "no", checkpointing: bool = False, replay: bool = True):
    import torch
    from transformers import CLIPTextModel

    from tests.tiny_sd import _vocab_size, tiny_components

    me.quiet()
    torch.manual_seed(0)
    with torch.device(device):
        unet, _vae, config = tiny_components()
        config.vocab_size = _vocab_size()
        te = CLIPTextModel(config)
    network = me.attach_network(unet, te, "LoRA", 4, 2, 4, 2, True, device)
    me.setup(unet, te, network, precision, checkpointing, True, device, replay=replay)
    return unet, te, network


def test_saved_bytes_counts_each_storage_once_and_leaves_out_weights():
    import torch

    weight = torch.nn.Parameter(torch.randn(16, 16), requires_grad=False)
    x = torch.randn(4, 16, requires_grad=True)
    with me.SavedBytes(me.model_storages(torch.nn.ParameterList([weight]))) as saved:
        y = x * x  # saves x twice
        z = y.view(64) * x.view(64)  # views of y and x: y's storage is new, x's is known
        w = torch.nn.functional.linear(x, weight)  # saves the frozen weight: the model's, not counted
    assert saved.bytes == 2 * 4 * 16 * 4
    assert saved.count == 2
    (z.sum() + w.sum()).backward()


def test_peak_bytes_follows_what_is_freed():
    import torch

    with me.PeakBytes() as peak:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # 8000 alive
        del a  # 4000
        c = b[:10] * 3  # 4040
        d = torch.ones(500)  # 6040
        peak.mark("end")
    assert peak.peak == 8000
    assert peak.marks["end"] == (6040, 8000)
    assert peak.tagged([b]) == 4000 and peak.tagged([c, d]) == 0  # c and d came after the peak


def test_the_meta_device_measures_what_real_tensors_take():
    for checkpointing in (False, True):
        real = me.measure_step(*tiny_models("cpu", checkpointing=checkpointing), batch=2, height=64, width=64, precision="no", attention="cpu", device="cpu")
        meta = me.measure_step(*tiny_models("meta", checkpointing=checkpointing), batch=2, height=64, width=64, precision="no", attention="cpu", device="meta")
        assert real["saved"] > 100_000 and real["peak"] >= real["saved"] // 2
        assert meta == real


def test_the_autocast_replay_matches_pytorchs_autocast():
    for checkpointing in (False, True):
        real = me.measure_step(*tiny_models("cpu", "bf16", checkpointing, replay=False), batch=2, height=64, width=64, precision="bf16", attention=None, device="cpu", policy="torch")
        replay = me.measure_step(*tiny_models("cpu", "bf16", checkpointing), batch=2, height=64, width=64, precision="bf16", attention=None, device="cpu", policy="cpu")
        assert replay["saved"] == real["saved"] and replay["peak"] == real["peak"]
    # CUDA's rules differ (norms and upsampling in fp32): the replay must not be a no-op.
    cuda = me.measure_step(*tiny_models("meta", "bf16"), batch=2, height=64, width=64, precision="bf16", device="meta", policy="cuda")
    cpu = me.measure_step(*tiny_models("meta", "bf16"), batch=2, height=64, width=64, precision="bf16", attention="cuda", device="meta", policy="cpu")
    assert cuda["saved"] > cpu["saved"]


@pytest.mark.parametrize(
    "precision, checkpointing, lora_type, dim, conv_dim, train_te, batch, reso, tokens",
    [
        ("bf16", False, "LoRA", 32, 8, True, 3, 640, 150),
        ("bf16", True, "LoCon", 24, 12, False, 2, 576, 225),
    ],
)
def test_the_constants_agree_with_a_fresh_measurement_of_sd15(precision, checkpointing, lora_type, dim, conv_dim, train_te, batch, reso, tokens):
    unet, te, network = me.build("sd_v1", lora_type, dim, conv_dim, train_te, precision, checkpointing)
    measured = me.activation(me.measure_step(unet, te, network, batch=batch, height=reso, width=reso, max_token_length=tokens, train_te=train_te, precision=precision))
    estimate = me.estimated_activations("sd_v1", precision, checkpointing, lora_type, dim, conv_dim, train_te, batch, reso, tokens)
    assert abs(estimate - measured) / measured < 0.03
    counts = me.network_param_counts(network)
    assert memory.network_params("sd_v1", lora_type, dim, conv_dim, train_te) == counts


def test_a_gpu_run_logs_its_real_peak_beside_the_estimate():
    estimate = est()
    expected = estimate.total - memory.CUDA_CONTEXT_BYTES
    line = memory.peak_report(estimate, allocated=int(expected / 1.25), reserved=expected)
    assert line.startswith("GPU memory: peak ") and f"while {estimate.peak_phase} (+25%)" in line
    assert "(-20%)" in memory.peak_report(estimate, allocated=int(expected / 0.8), reserved=expected)


@pytest.mark.parametrize(
    "precision, checkpointing, lora_type, dim, conv_dim, train_te, batch, reso, tokens",
    [
        ("full_fp16", True, "LoRA", 8, 8, True, 4, 1024, 225),  # the XL notebook's defaults
        ("bf16", True, "LoCon", 24, 12, False, 2, 896, 150),
    ],
)
def test_the_constants_agree_with_a_fresh_measurement_of_sdxl(precision, checkpointing, lora_type, dim, conv_dim, train_te, batch, reso, tokens):
    unet, te, network = me.build("sdxl", lora_type, dim, conv_dim, train_te, precision, checkpointing)
    measured = me.activation(me.measure_step(unet, te, network, batch=batch, height=reso, width=reso, max_token_length=tokens, train_te=train_te, precision=precision), "sdxl")
    estimate = me.estimated_activations("sdxl", precision, checkpointing, lora_type, dim, conv_dim, train_te, batch, reso, tokens)
    assert 0 <= (estimate - measured) / measured < 0.05  # never below the measurement
    assert memory.network_params("sdxl", lora_type, dim, conv_dim, train_te) == me.network_param_counts(network)


@pytest.mark.parametrize("lora_type, unet_modules", [("LoRA", 722), ("LoCon", 788)])
def test_sdxl_network_parameters_are_create_networks(lora_type, unet_modules):
    """Our network over the real-size SDXL on the meta device: kohya's module counts (text encoders
    72 + 192), and the parameters memory.py counts."""
    unet = me.build_unet("sdxl")
    te = me.build_text_encoder("sdxl")
    network = me.attach_network(unet, te, lora_type, 8, 4, 8, 4, True)
    counts = network.module_counts()
    assert counts["unet"] == unet_modules
    assert sum(v for k, v in counts.items() if k.startswith("text_encoder")) == 72 + 192
    assert memory.network_params("sdxl", lora_type, 8, 8, True) == me.network_param_counts(network)
    assert memory.network_params("sdxl", lora_type, 8, 8, False)["text_encoder"] == 0
