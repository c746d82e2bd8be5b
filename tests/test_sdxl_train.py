"""SDXL end to end on the tiny SDXL: loading, conditioning, LoRA/LoCon files with kohya's SDXL names and
metadata, v-prediction with zero terminal SNR, continue/resume, compare, and the refusals."""

from __future__ import annotations

import hashlib
import json
import random
import struct

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train import loop, models
from lora_gradio.engine.train.config import apply_overrides, load_settings, save_settings


@pytest.fixture(scope="module")
def tiny_sdxl_vpred_dir(tmp_path_factory):
    from tests.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(tmp_path_factory.mktemp("tiny_sdxl_v") / "model", prediction_type="v_prediction")


def make_project(root, model, n_images=4, extra=()):
    from PIL import Image

    project = Projects(root).create("xl_char")
    rnd = random.Random(0)
    for i in range(n_images):
        size = (512 + 64 * (i % 2), 512 + 128 * (i // 2))
        Image.new("RGB", size, tuple(rnd.randrange(256) for _ in range(3))).save(project.dataset_dir / f"{i}.png")
        (project.dataset_dir / f"{i}.txt").write_text("tiny_char, 1girl, smile, red hair")
    notes: list[str] = []
    settings = apply_overrides(load_settings(project), [
        f"training_model={model}", "resolution=512", "num_repeats=1", "how_many=2", "optimizer=AdamW", "optimizer_args=[]",
        "train_batch_size=2", "network_dim=4", "network_alpha=2", "max_token_length=75", "unet_lr=1e-3", "text_encoder_lr=1e-3",
        "max_bucket_reso=1024", "gradient_checkpointing=false", *extra,
    ], notes)
    save_settings(project, settings)
    return project, notes


def header_of(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def modules_of(header):
    return {key.split(".")[0] for key in header if key != "__metadata__"}


def test_choosing_an_sdxl_model_offers_the_xl_notebooks_defaults(tmp_path, tiny_sdxl_dir):
    project, notes = make_project(tmp_path / "Loras", tiny_sdxl_dir)
    settings = load_settings(project)
    # Set in the same change: kept. Not set: the XL notebook's value.
    assert settings.resolution == 512 and settings.network_dim == 4 and settings.train_batch_size == 2
    assert settings.min_snr_gamma == 8.0 and settings.multires_noise_iterations == 6 and settings.mixed_precision == "full_fp16"
    assert settings.zero_terminal_snr and settings.scale_v_pred_loss
    assert notes and notes[0].startswith("SDXL base: took its defaults for")


def test_sdxl_lora_trains_two_epochs_with_kohyas_sdxl_names_and_metadata(tmp_path, tiny_sdxl_dir):
    import torch

    from lora_gradio.engine.train.sai_layout import lora_unet_name

    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_dir)
    result = loop.train_project(project)
    files = sorted(p.name for p in project.output_dir.glob("*.safetensors"))
    assert files == ["xl_char-01.safetensors", "xl_char-02.safetensors"] and result.epochs_done == 2

    header, tensor_bytes = header_of(project.output_dir / "xl_char-02.safetensors")
    meta = header["__metadata__"]
    names = modules_of(header)
    te1 = {n for n in names if n.startswith("lora_te1_text_model_encoder_layers_")}
    te2 = {n for n in names if n.startswith("lora_te2_text_model_encoder_layers_")}
    unet = {n for n in names if n.startswith("lora_unet_")}
    assert te1 and te2 and unet and names == te1 | te2 | unet
    # SAI layout, never diffusers' down_blocks names; exactly the modules kohya's rule gives.
    assert not any("down_blocks" in n or "mid_block" in n or "up_blocks" in n for n in unet)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in unet
    from diffusers import UNet2DConditionModel

    reference = UNet2DConditionModel.from_pretrained(tiny_sdxl_dir, subfolder="unet")
    expected = set()
    for path, module in reference.named_modules():
        if type(module).__name__ == "Transformer2DModel":
            for sub, leaf in module.named_modules():
                if isinstance(leaf, (torch.nn.Linear, torch.nn.Conv2d)):
                    expected.add(lora_unet_name(f"{path}.{sub}", dict(reference.config)))
    assert unet == expected
    for module in names:
        assert header[f"{module}.lora_down.weight"]["shape"][0] == 4 and header[f"{module}.lora_down.weight"]["dtype"] == "F16"
        assert header[f"{module}.alpha"]["shape"] == []
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.resolution"] == "512x512" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["ss_v_parameterization"] == "False" and meta["ss_clip_skip"] == "None"
    assert meta["ss_multires_noise_iterations"] == "6" and meta["ss_min_snr_gamma"] == "8.0"
    assert meta["sshs_model_hash"] == hashlib.sha256(tensor_bytes).hexdigest()
    assert json.loads(meta["ss_dataset_dirs"]) == {"dataset": {"n_repeats": 1, "img_count": 4}}


def test_sdxl_locon_vpred_with_zero_terminal_snr(tmp_path, tiny_sdxl_vpred_dir):
    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_vpred_dir, extra=("lora_type=LoCon", "conv_dim=2", "conv_alpha=1", "text_encoder_lr=0"))
    progress_lines = []

    class Log(loop.Progress):
        def log(self, message):
            progress_lines.append(message)

    loop.train_project(project, progress=Log())
    header, _ = header_of(project.output_dir / "xl_char-02.safetensors")
    meta = header["__metadata__"]
    names = modules_of(header)
    assert all(n.startswith("lora_unet_") for n in names)  # text_encoder_lr 0: UNet only
    assert any(n.endswith("_in_layers_2") for n in names) and any(n.endswith("_0_op") for n in names)
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_v_parameterization"] == "True"
    assert meta["ss_zero_terminal_snr"] == "True"
    assert json.loads(meta["ss_network_args"])["conv_dim"] == "2"
    assert load_settings(project).v_pred  # choosing the model turned v_pred on: its scheduler predicts v
    assert any("is an SDXL model" in line for line in progress_lines)


def test_cached_text_encoder_outputs_win_over_shuffling_and_te_training(tmp_path, tiny_sdxl_dir):
    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_dir, extra=("cache_text_encoder_outputs=true", "how_many=1"))
    lines = []

    class Log(loop.Progress):
        def log(self, message):
            lines.append(message)

    loop.train_project(project, progress=Log())
    assert any("cache_text_encoder_outputs is on, so it wins over tag shuffling and text-encoder training" in line for line in lines)
    header, _ = header_of(project.output_dir / "xl_char-01.safetensors")
    assert all(n.startswith("lora_unet_") for n in modules_of(header))  # no text-encoder modules
    assert header["__metadata__"]["ss_shuffle_caption"] == "False"


def test_an_interrupted_sdxl_run_resumes(tmp_path, tiny_sdxl_dir):
    from lora_gradio.engine.errors import Cancelled

    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_dir)

    class StopAfterTwoSteps(loop.Progress):
        steps = 0

        def update(self, done, total=None, message="", **extra):
            if "epoch" in extra:  # training steps, not the caching before them
                self.steps = done or 0

        def cancelled(self):
            return self.steps >= 3

    total = loop.train_project(project, dry_run=True).steps
    with pytest.raises(Cancelled):
        loop.train_project(project, progress=StopAfterTwoSteps())
    assert loop.read_state_info(project)["global_step"] == 3
    result = loop.train_project(project, resume=True)
    assert result.epochs_done == 2 and result.steps == total
    assert sorted(p.name for p in project.output_dir.glob("*.safetensors")) == ["xl_char-01.safetensors", "xl_char-02.safetensors"]


def test_vpred_scheduler_reaches_pure_noise(tiny_sdxl_vpred_dir):
    model = models.load_base_model(models.resolve_source(str(tiny_sdxl_vpred_dir), tiny_sdxl_vpred_dir), zero_terminal_snr=True)
    assert model.family.key == "sdxl" and model.v_pred and model.zero_terminal_snr
    assert float(model.noise_scheduler.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-12)
    eps = models.load_base_model(models.resolve_source(str(tiny_sdxl_vpred_dir), tiny_sdxl_vpred_dir), zero_terminal_snr=False)
    assert float(eps.noise_scheduler.alphas_cumprod[-1]) > 0


def test_single_files_are_recognised_and_vpred_is_read_from_the_file(tiny_sdxl_dir, tiny_sdxl_file, tiny_sdxl_vpred_file):
    info = models.inspect_checkpoint(tiny_sdxl_file)
    assert (info.family, info.version, info.v_pred) == ("sdxl", "sdxl", False)
    assert models.inspect_checkpoint(tiny_sdxl_vpred_file).v_pred
    model = models.load_base_model(models.ModelSource("file", str(tiny_sdxl_vpred_file), tiny_sdxl_vpred_file.name), config_dir=tiny_sdxl_dir)
    assert model.family.key == "sdxl" and model.v_pred and len(model.text_encoders) == 2
    assert model.noise_scheduler.config.prediction_type == "v_prediction"
    assert any("v_pred key" in note for note in model.notes)


def test_refiner_and_inpainting_files_are_refused(tmp_path):
    from tests.test_train_models import fake_safetensors

    refiner = tmp_path / "refiner.safetensors"
    refiner.write_bytes(fake_safetensors(keys=("model.diffusion_model.a", "conditioner.embedders.0.model.b")))
    with pytest.raises(UserError, match="refiner"):
        models.inspect_checkpoint(refiner)
    inpainting = tmp_path / "xl_inpaint.safetensors"
    header = {"model.diffusion_model.input_blocks.0.0.weight": {"dtype": "F16", "shape": [320, 9, 3, 3], "data_offsets": [0, 51840]},
              "conditioner.embedders.1.model.x": {"dtype": "U8", "shape": [8], "data_offsets": [51840, 51848]}}
    raw = json.dumps(header).encode()
    inpainting.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(51848))
    with pytest.raises(UserError, match="inpainting"):
        models.inspect_checkpoint(inpainting)


def test_an_unknown_preset_label_is_refused_with_the_nearest_one(tmp_path, tiny_sdxl_dir):
    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_dir)
    save_settings(project, apply_overrides(load_settings(project), ["training_model=Illustrious XL 0.2"]))
    with pytest.raises(UserError, match="Did you mean 'Illustrious XL 0.1'"):
        loop.train_project(project, dry_run=True)


@pytest.mark.parametrize("lora_type", ["LoHa", "LoKr", "DoRA"])
def test_lycoris_types_use_kohyas_sdxl_names(tiny_sdxl_dir, lora_type):
    from lora_gradio.engine.train.network import create_network

    model = models.load_base_model(models.resolve_source(str(tiny_sdxl_dir), tiny_sdxl_dir))
    family = model.family
    network = create_network(model.unet, family.network_text_encoders(model), lora_type, 4, 2, 2, 1, unet_name=family.lora_unet_name(model))
    names = {key.split(".")[0] for key in network.kohya_state_dict()}
    assert any(n.startswith("lora_unet_input_blocks_") for n in names) and any(n.startswith("lora_te2_") for n in names)
    assert not any("down_blocks" in n for n in names)


def test_sdxl_settings_checks_refuse_before_anything_changes(tmp_path, tiny_sdxl_dir):
    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_dir, extra=("resolution=256", "min_bucket_reso=256"))
    def files():  # the lock files a run takes are bookkeeping, not a change to the project
        return sorted(p.name for p in project.root.rglob("*") if ".locks" not in p.parts)

    before = files()
    with pytest.raises(UserError, match="too low for an SDXL model: use at least 512"):
        loop.train_project(project)
    assert files() == before


def test_continue_from_lora_of_the_other_family_is_refused(tmp_path, tiny_sdxl_dir, tiny_model_dir_sd):
    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_dir, extra=("how_many=1",))
    loop.train_project(project)
    xl_lora = project.output_dir / "xl_char-01.safetensors"
    sd_project = Projects(tmp_path / "SD").create("sd_char")
    for path in project.dataset_dir.iterdir():
        (sd_project.dataset_dir / path.name).write_bytes(path.read_bytes())
    settings = apply_overrides(load_settings(sd_project), [f"training_model={tiny_model_dir_sd}", "resolution=256", f"continue_from_lora={xl_lora}"])
    save_settings(sd_project, settings)
    with pytest.raises(UserError, match="is an SDXL LoRA, but the base model is SD 1.x/2.x"):
        loop.train_project(sd_project, dry_run=True)
    # And the reverse: continuing an SDXL run from itself works.
    settings = apply_overrides(load_settings(project), [f"continue_from_lora={xl_lora}"])
    save_settings(project, settings)
    result = loop.train_project(project)
    assert result.epochs_done == 1


def test_compare_renders_an_sdxl_grid(tmp_path, tiny_sdxl_vpred_dir):
    from lora_gradio.engine.compare import compare_project

    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_vpred_dir)
    loop.train_project(project)
    result = compare_project(project, epochs="1, 2", weights=[0.5, 1.0], steps=2, width=512, height=512)
    from PIL import Image

    grid = Image.open(result.grid)
    assert grid.size[0] > 512 and len(result.epochs) == 2


def test_diffusers_sdxl_pipeline_loads_our_lora_and_changes_its_output(tmp_path, tiny_sdxl_dir):
    import torch
    from diffusers import StableDiffusionXLPipeline

    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_dir, extra=("how_many=1", "unet_lr=5e-2", "text_encoder_lr=5e-2"))
    loop.train_project(project)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_dir)
    pipe.set_progress_bar_config(disable=True)

    def render():
        return pipe("tiny_char, 1girl", num_inference_steps=2, width=64, height=64, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images

    before = render()
    pipe.load_lora_weights(str(project.output_dir / "xl_char-01.safetensors"))
    after = render()
    assert float(abs(after - before).max()) > 1e-4


def test_send_to_webui_keeps_the_webuis_clip_skip_for_sdxl(tmp_path):
    from lora_gradio.engine import compare
    from tests.test_compare import A1111_AXES, FakeWebui, fake_epochs

    project = fake_epochs(tmp_path / "Loras")
    save_settings(project, apply_overrides(load_settings(project), ["training_model=illustrious"]))
    with FakeWebui(A1111_AXES, ["fake-01", "fake-02", "fake-03"]) as webui:
        compare.send_to_webui(webui.url, project, weights="1", epochs="3")
    _, body = next(p for p in webui.posts if p[0] == "/sdapi/v1/txt2img")
    assert body["width"] == body["height"] == 1024 and "override_settings" not in body


def test_the_webui_card_of_an_sdxl_lora_says_sdxl(tmp_path, tiny_sdxl_dir):
    from lora_gradio.engine.train.saving import read_lora_metadata
    from lora_gradio.webui.lora_folder import sd_version

    project, _ = make_project(tmp_path / "Loras", tiny_sdxl_dir, extra=("how_many=1",))
    loop.train_project(project)
    assert sd_version(read_lora_metadata(project.output_dir / "xl_char-01.safetensors")) == "SDXL"
