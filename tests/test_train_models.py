import json
import struct

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train import models
from tests.http_fixture import LocalServer, send_bytes


def fake_safetensors(n_bytes: int = 3000, keys=("model.diffusion_model.x",)) -> bytes:
    per = n_bytes // len(keys)
    header = {k: {"dtype": "U8", "shape": [per], "data_offsets": [i * per, (i + 1) * per]} for i, k in enumerate(keys)}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(range(256)) * (per * len(keys) // 256) + bytes(per * len(keys) % 256)


def test_presets_and_notebook_labels_resolve():
    assert models.preset_for("anime").url.endswith("animefull-final-pruned-fp16.safetensors")
    assert models.preset_for("Stable Diffusion (sd-v1-5-pruned-noema-fp16.safetensors)") is models.PRESETS["sd15"]
    assert models.preset_for("AnyLora") is models.PRESETS["anylora"]
    assert models.preset_for("something else") is None


def test_links_people_paste_become_download_links():
    assert models.normalize_url("https://huggingface.co/a/b/blob/main/m.safetensors") == "https://huggingface.co/a/b/resolve/main/m.safetensors"
    assert models.normalize_url("https://civitai.com/models/123/name?modelVersionId=456") == "https://civitai.com/api/download/models/456"
    assert models.normalize_url("https://civitai.com/api/download/models/456", "tok") == "https://civitai.com/api/download/models/456?token=tok"
    with pytest.raises(UserError, match="without a version"):
        models.normalize_url("https://civitai.com/models/123/name")


def test_local_files_folders_and_repo_ids(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(fake_safetensors())
    assert models.resolve_source(str(f), tmp_path).kind == "file"
    (tmp_path / "diff" / "unet").mkdir(parents=True)
    assert models.resolve_source(str(tmp_path / "diff"), tmp_path).kind == "diffusers"
    assert models.resolve_source("runwayml/stable-diffusion-v1-5", tmp_path).kind == "hub"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a model file"):
        models.resolve_source(str(tmp_path / "notes.txt"), tmp_path)
    with pytest.raises(UserError, match="Cannot find the base model"):
        models.resolve_source("no/such/thing.safetensors", tmp_path)


def test_download_resumes_after_a_broken_connection(tmp_path):
    data = fake_safetensors(200_000)
    routes = {"/m.safetensors": send_bytes(data, cut_at=70_000)}
    with LocalServer(routes) as server:
        with pytest.raises(UserError, match="run again to resume"):
            models.download_model(server.url + "/m.safetensors", tmp_path)
        assert not (tmp_path / "m.safetensors").exists()
        kept = (tmp_path / "m.safetensors.part").stat().st_size
        assert 0 < kept <= 70_000  # whole chunks that arrived are kept
        routes["/m.safetensors"] = send_bytes(data)
        path = models.download_model(server.url + "/m.safetensors", tmp_path)
        assert path.read_bytes() == data
        assert any(h.get("Range") == f"bytes={kept}-" for _, h in server.requests)
        # A second run finds the finished file and downloads nothing.
        before = len(server.requests)
        assert models.download_model(server.url + "/m.safetensors", tmp_path) == path
        assert len(server.requests) == before + 1  # just the request that learns the file name


def test_file_name_comes_from_content_disposition(tmp_path):
    data = fake_safetensors()
    routes = {"/api/download/models/9": send_bytes(data, headers={"Content-Disposition": 'attachment; filename="cool_model_v2.safetensors"'})}
    with LocalServer(routes) as server:
        path = models.download_model(server.url + "/api/download/models/9", tmp_path)
    assert path.name == "cool_model_v2.safetensors"


@pytest.mark.parametrize(
    "route, message",
    [
        (send_bytes(b"<!DOCTYPE html><html>login</html>", content_type="text/html"), "web page"),
        (send_bytes(b"nope", status=401), "HTTP 401"),
        (send_bytes(b"", status=404), "HTTP 404"),
        (send_bytes(b"<html>oops</html>"), "web page"),
        (send_bytes(struct.pack("<Q", 10**6) + b"{}"), "not a valid .safetensors"),
    ],
)
def test_bad_downloads_get_a_clear_message_and_leave_nothing(tmp_path, route, message):
    with LocalServer({"/m.safetensors": route}) as server:
        with pytest.raises(UserError, match=message):
            models.download_model(server.url + "/m.safetensors", tmp_path)
    assert not (tmp_path / "m.safetensors").exists()


def test_truncated_safetensors_is_named_as_such(tmp_path):
    f = tmp_path / "cut.safetensors"
    f.write_bytes(fake_safetensors(5000)[:-1000])
    with pytest.raises(UserError, match="truncated"):
        models.check_model_file(f)


def test_version_detection_from_tensor_names(tmp_path):
    f = tmp_path / "v1.safetensors"
    f.write_bytes(fake_safetensors(keys=("model.diffusion_model.a", "cond_stage_model.transformer.b")))
    assert models.detect_version(f) == "sd_v1"
    f2 = tmp_path / "sd21-768.safetensors"
    f2.write_bytes(fake_safetensors(keys=("model.diffusion_model.a", "cond_stage_model.model.transformer.b")))
    assert models.detect_version(f2) == "sd_v2_v"
    f3 = tmp_path / "xl.safetensors"
    f3.write_bytes(fake_safetensors(keys=("model.diffusion_model.a", "conditioner.embedders.0.x")))
    with pytest.raises(UserError, match="SDXL"):
        models.detect_version(f3)
    f4 = tmp_path / "lora.safetensors"
    f4.write_bytes(fake_safetensors(keys=("lora_unet_x.lora_down.weight",)))
    with pytest.raises(UserError, match="is it a LoRA"):
        models.detect_version(f4)


def test_unsafe_ckpt_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    f = tmp_path / "evil.ckpt"
    f.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(UserError, match="cannot be read safely"):
        models.load_ckpt_state_dict(f)


def test_safe_ckpt_converts_once_to_safetensors(tmp_path):
    import torch

    f = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.w": torch.ones(2, 2)}}, f)
    out = models.safetensors_from_ckpt(f)
    from safetensors.torch import load_file

    assert torch.equal(load_file(out)["model.diffusion_model.w"], torch.ones(2, 2))
    assert models.detect_version(out) == "sd_v1"


def test_loading_a_diffusers_folder(tmp_path):
    from tests.tiny_sd import build_tiny_sd

    folder = build_tiny_sd(tmp_path / "tiny")
    model = models.load_base_model(models.resolve_source(str(folder), tmp_path))
    assert model.version == "sd_v1" and model.noise_scheduler.config.prediction_type == "epsilon"
    assert model.tokenizer("1girl").input_ids[0] == model.tokenizer.bos_token_id


def test_single_file_in_the_original_layout_loads_offline(tmp_path):
    """A checkpoint as A1111 users have them: one LDM-layout file, converted with shipped-style configs."""
    import torch
    from diffusers import UNet2DConditionModel

    from tests.ldm_checkpoint import write_ldm_checkpoint
    from tests.tiny_sd import build_tiny_sd

    folder = build_tiny_sd(tmp_path / "tiny")
    single = write_ldm_checkpoint(folder, tmp_path / "tiny_model.safetensors")
    source = models.resolve_source(str(single), tmp_path)
    assert models.detect_version(single) == "sd_v1"
    model = models.load_base_model(source, config_dir=folder)
    original = UNet2DConditionModel.from_pretrained(folder / "unet").state_dict()
    loaded = model.unet.state_dict()
    assert set(original) == set(loaded)
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    for part, loaded_part in ((AutoencoderKL.from_pretrained(folder / "vae"), model.vae), (CLIPTextModel.from_pretrained(folder / "text_encoder"), model.text_encoder)):
        expected, got = part.state_dict(), loaded_part.state_dict()
        assert set(expected) == set(got) and all(torch.equal(expected[k], got[k]) for k in expected)
