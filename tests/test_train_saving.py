"""LoRA file saving: epoch names, kohya metadata, sshs hashes, atomic writes, keep-last-N."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train import saving
from tests import kohya_reference


def test_epoch_file_names():
    assert saving.epoch_file_name("char", 1, 9) == "char-01.safetensors"
    assert saving.epoch_file_name("char", 9, 9) == "char-09.safetensors"  # the final epoch named the same way
    assert saving.epoch_file_name("char", 10, 10) == "char-10.safetensors"
    assert saving.epoch_file_name("char", 7, 99) == "char-07.safetensors"
    assert saving.epoch_file_name("char", 1, 150) == "char-001.safetensors"
    assert saving.epoch_file_name("char", 150, 150) == "char-150.safetensors"
    assert saving.epoch_file_name("char", 5, 100) == "char-005.safetensors"
    assert saving.epoch_file_name("my lora", 3, 1000) == "my lora-0003.safetensors"
    names = [saving.epoch_file_name("a", e, 150) for e in range(1, 151)]
    assert names == sorted(names)


def _tensors():
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        # > 0x110000 bytes of data, so the legacy hash reads a full 64 KiB window
        "lora_unet_big.lora_down.weight": torch.randn(16, 40000, generator=g).to(torch.float16),
        "lora_unet_big.lora_up.weight": torch.randn(320, 16, generator=g).to(torch.float16),
        "lora_unet_big.alpha": torch.tensor(8.0).to(torch.float16),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 32, generator=g),
    }


def _independent_hashes(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return (*kohya_reference.file_hashes(path), json.loads(raw[8:8 + n]))


def test_save_lora_hashes_metadata_and_atomicity(tmp_path):
    import torch
    from safetensors.torch import load_file

    tensors = _tensors()
    meta_in = saving.build_metadata(output_name="char", network_dim=16, network_alpha=8.0, resolution=512,
                                    network_args={"conv_dim": 8, "conv_alpha": 4, "algo": "locon"},
                                    bucket_info={"buckets": {"0": {"resolution": [512, 512], "count": 3}}, "mean_img_ar_error": 0.0},
                                    num_epochs=10, epoch=1, clip_skip=2)
    out = tmp_path / "output" / "char-01.safetensors"
    written = saving.save_lora(out, tensors, meta_in)

    model_hash, legacy, header = _independent_hashes(out)
    assert written["sshs_model_hash"] == model_hash
    assert written["sshs_legacy_hash"] == legacy and len(legacy) == 8
    assert header["__metadata__"] == written
    assert all(isinstance(v, str) for v in header["__metadata__"].values())
    assert saving.read_lora_metadata(out) == written
    assert saving.safetensors_file_hashes(out) == (model_hash, legacy)
    for key, value in meta_in.items():
        assert written[key] == value

    loaded = load_file(out)
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    assert loaded["lora_unet_big.alpha"].dim() == 0

    # the data hash does not depend on the metadata (A1111 and civitai rely on that)
    other = tmp_path / "other.safetensors"
    again = saving.save_lora(other, tensors, {"ss_output_name": "something else"})
    assert again["sshs_model_hash"] == model_hash

    # overwriting works and no temporary files are left behind
    saving.save_lora(out, tensors, meta_in)
    assert sorted(p.name for p in out.parent.iterdir()) == ["char-01.safetensors"]


def test_save_lora_failure_leaves_nothing(tmp_path):
    import torch

    target = tmp_path / "char-02.safetensors"
    with pytest.raises(Exception):
        saving.save_lora(target, {"a": torch.zeros(2), "b": "not a tensor"}, {})
    assert list(tmp_path.iterdir()) == []


def test_build_metadata_keys_and_strings():
    meta = saving.build_metadata(
        session_id=123, training_started_at=1_700_000_000.5, training_finished_at=1_700_000_900.0, output_name="char",
        learning_rate=5e-4, unet_lr=5e-4, text_encoder_lr=1e-4, num_train_images=200, num_reg_images=0,
        num_batches_per_epoch=100, num_epochs=10, epoch=3, steps=300, max_train_steps=1000, lr_warmup_steps=50,
        lr_scheduler="cosine_with_restarts", optimizer="bitsandbytes.optim.adamw.AdamW8bit", seed=42,
        network_module="networks.lora", network_dim=16, network_alpha=8.0, network_dropout=None, network_args={},
        base_model_version="sd_v1", clip_skip=2, max_token_length=225, sd_model_name="anime.safetensors",
        sd_model_hash="abcd1234", new_sd_model_hash="f" * 64, mixed_precision="fp16", noise_offset=None,
        min_snr_gamma=5.0, prior_loss_weight=1.0, resolution=(512, 512), flip_aug=False, shuffle_caption=True,
        keep_tokens=1, enable_bucket=True, min_bucket_reso=256, max_bucket_reso=1024, bucket_no_upscale=False,
        batch_size_per_device=2, dataset_dirs={"10_char": {"n_repeats": 10, "img_count": 20}},
        tag_frequency={"10_char": {"1girl": 20, "smile": 3}}, caption_dropout_rate=0.0,
        title="char", author="me",
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert meta["ss_output_name"] == "char"
    assert meta["ss_network_dim"] == "16" and meta["ss_network_alpha"] == "8.0"
    assert meta["ss_network_args"] == "{}"
    assert meta["ss_v2"] == "False" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_flip_aug"] == "False" and meta["ss_shuffle_caption"] == "True"
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_noise_offset"] == "None"
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_char": {"n_repeats": 10, "img_count": 20}}
    assert json.loads(meta["ss_tag_frequency"])["10_char"]["1girl"] == 20
    assert meta["ss_training_started_at"] == "1700000000.5"
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.resolution"] == "512x512"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.encoder_layer"] == "2"
    assert meta["modelspec.title"] == "char" and meta["modelspec.author"] == "me"
    assert meta["modelspec.date"].startswith("2023-11-1")
    assert meta["modelspec.implementation"] == "diffusers"

    v_meta = saving.build_metadata(output_name="x", base_model_version="sd_v2_v", resolution=768)
    assert v_meta["ss_v2"] == "True" and v_meta["modelspec.prediction_type"] == "v"
    assert v_meta["modelspec.resolution"] == "768x768"
    assert v_meta["ss_session_id"] and v_meta["ss_training_started_at"]
    with pytest.raises(TypeError):
        saving.build_metadata(outptu_name="typo")


def test_prune_epochs_keeps_the_last_n(tmp_path):
    out = tmp_path / "output"
    out.mkdir()
    for epoch in (1, 2, 3, 4, 5, 10):
        (out / saving.epoch_file_name("char", epoch, 10)).write_bytes(b"x")
    keep_too = ["char.safetensors", "char-final.safetensors", "other-01.safetensors", "char-01.txt", "char-02.safetensors.bak"]
    for name in keep_too:
        (out / name).write_bytes(b"y")

    assert saving.prune_epochs(out, "char", 0) == []
    assert saving.prune_epochs(out, "char", None) == []
    assert saving.prune_epochs(out, "char", 10) == []

    trashed = []

    def trash(paths):
        trashed.append(list(paths))
        bin_ = tmp_path / "trash"
        bin_.mkdir(exist_ok=True)
        for p in paths:
            p.rename(bin_ / p.name)

    removed = saving.prune_epochs(out, "char", 3, trash=trash)
    assert [p.name for p in removed] == ["char-01.safetensors", "char-02.safetensors", "char-03.safetensors"]
    assert len(trashed) == 1 and [p.name for p in trashed[0]] == [p.name for p in removed]
    assert sorted(p.name for p in (tmp_path / "trash").iterdir()) == [p.name for p in removed]
    left = sorted(p.name for p in out.iterdir())
    assert left == sorted(keep_too + ["char-04.safetensors", "char-05.safetensors", "char-10.safetensors"])

    removed = saving.prune_epochs(out, "char", 1)  # no trash function: deleted
    assert [p.name for p in removed] == ["char-04.safetensors", "char-05.safetensors"]
    assert not (out / "char-04.safetensors").exists() and (out / "char-10.safetensors").exists()
    assert all((out / name).exists() for name in keep_too)


def test_model_hashes(tmp_path):
    import os

    data = os.urandom(0x100000 + 0x10000 + 12345)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    assert saving.legacy_sd_model_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert saving.full_file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert saving.full_file_sha256(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_read_metadata_of_bad_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"<html>not a model</html>")
    with pytest.raises(UserError, match="not a valid"):
        saving.read_lora_metadata(junk)
    with pytest.raises(UserError, match="does not exist"):
        saving.read_lora_metadata(tmp_path / "missing.safetensors")
    empty_meta = tmp_path / "plain.safetensors"
    header = json.dumps({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    empty_meta.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    assert saving.read_lora_metadata(empty_meta) == {}


def test_tag_frequency(tmp_path):
    (tmp_path / "a.txt").write_text("1girl, Smile, smile, solo")
    (tmp_path / "b.txt").write_text("1girl, red hair")
    assert saving.tag_frequency(sorted(tmp_path.glob("*.txt"))) == {"1girl": 2, "smile": 1, "solo": 1, "red hair": 1}


def test_the_legacy_hash_is_kohyas_window_of_the_whole_training_serialization(tmp_path):
    """kohya hashes 0x10000 bytes at 0x100000 of the file re-serialized with its `ss_*` keys, header included."""
    tensors = _tensors()
    short = saving.save_lora(tmp_path / "a.safetensors", tensors, {"ss_output_name": "a"})
    longer = saving.save_lora(tmp_path / "b.safetensors", tensors, {"ss_output_name": "a" * 200})
    titled = saving.save_lora(tmp_path / "c.safetensors", tensors, {"ss_output_name": "a", "modelspec.title": "x" * 300})
    for meta, name in ((short, "a"), (longer, "b"), (titled, "c")):
        assert (meta["sshs_model_hash"], meta["sshs_legacy_hash"]) == kohya_reference.file_hashes(tmp_path / f"{name}.safetensors")
    # Same tensors: one data hash. A longer ss_* header shifts the window, so kohya tells the files apart;
    # a longer non-ss key (the title) does not, because kohya leaves it out of the hashed serialization.
    assert short["sshs_model_hash"] == longer["sshs_model_hash"] == titled["sshs_model_hash"]
    assert short["sshs_legacy_hash"] != longer["sshs_legacy_hash"]
    assert short["sshs_legacy_hash"] == titled["sshs_legacy_hash"]
    # The old definition (the window of the tensor data alone) gives one value for both: the fault fixed here.
    data = lambda path: path.read_bytes()[8 + struct.unpack("<Q", path.read_bytes()[:8])[0]:]
    old = {hashlib.sha256(data(tmp_path / f"{n}.safetensors")[0x100000:0x110000]).hexdigest()[:8] for n in "ab"}
    assert len(old) == 1
