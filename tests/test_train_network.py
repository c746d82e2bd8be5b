"""The LoRA network: kohya's module set and names on the real SD1.5 architecture, the maths on a tiny model,
round trips through our files, and diffusers' `load_lora_weights` on what we save."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("lycoris")

from lora_gradio.engine.errors import UserError  # noqa: E402
from lora_gradio.engine.train import saving  # noqa: E402
from lora_gradio.engine.train.network import create_network, describe_kohya_state_dict  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "lora_gradio" / "engine" / "train" / "model_configs" / "sd15"


# ----- the real SD1.5 architecture (weights on the meta device: names and shapes only) -----
@pytest.fixture(scope="module")
def sd15():
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(json.loads((CONFIGS / "unet" / "config.json").read_text()))
        text_encoder = CLIPTextModel(CLIPTextConfig(**json.loads((CONFIGS / "text_encoder" / "config.json").read_text())))
    return unet, text_encoder


def kohya_names(unet, text_encoder, with_convs: bool) -> dict[str, torch.nn.Module]:
    """kohya's networks/lora.py naming rule, written out independently of the code under test."""
    names = {}
    te_prefix = "lora_te" if hasattr(text_encoder, "text_model") else "lora_te_text_model"
    unet_targets = {"Transformer2DModel"} | ({"ResnetBlock2D", "Downsample2D", "Upsample2D"} if with_convs else set())
    for prefix, root, targets in (("lora_unet", unet, unet_targets), (te_prefix, text_encoder, {"CLIPAttention", "CLIPMLP"})):
        for name, module in root.named_modules():
            if type(module).__name__ not in targets:
                continue
            for child_name, child in module.named_modules():
                is_linear = isinstance(child, torch.nn.Linear)
                is_conv = isinstance(child, torch.nn.Conv2d)
                if is_linear or (is_conv and (with_convs or child.kernel_size == (1, 1))):
                    names[f"{prefix}.{name}.{child_name}".replace(".", "_")] = child
    return names


def test_sd15_lora_has_kohyas_modules(sd15):
    unet, text_encoder = sd15
    network = create_network(unet, text_encoder, "LoRA", 16, 8, 8, 4)
    assert network.module_counts() == {"text_encoder": 72, "unet": 192}
    sd = network.kohya_state_dict(torch.float16)
    assert len(sd) == 792
    expected = kohya_names(unet, text_encoder, with_convs=False)
    assert {k.split(".")[0] for k in sd} == set(expected)
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for k in sd)
    assert not any("lycoris" in k for k in sd)
    for name in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                 "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_0_proj",
                 "lora_unet_mid_block_attentions_0_proj_out",
                 "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                 "lora_te_text_model_encoder_layers_11_mlp_fc2"):
        assert f"{name}.lora_down.weight" in sd, name
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"  # cross-attention: in = 768
    assert sd[f"{q}.lora_down.weight"].shape == (16, 768) and sd[f"{q}.lora_up.weight"].shape == (320, 16)
    p = "lora_unet_down_blocks_1_attentions_0_proj_in"  # a 1x1 conv in SD1.5
    assert sd[f"{p}.lora_down.weight"].shape == (16, 640, 1, 1) and sd[f"{p}.lora_up.weight"].shape == (640, 16, 1, 1)
    te = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    assert sd[f"{te}.lora_down.weight"].shape == (16, 768) and sd[f"{te}.lora_up.weight"].shape == (3072, 16)
    for key, value in sd.items():
        assert value.dtype == torch.float16 and value.device.type == "cpu" and value.is_contiguous()
        if key.endswith(".alpha"):
            assert value.dim() == 0 and float(value) == 8.0
    assert network.network_module == "networks.lora" and network.network_args() == {}
    # the LoRA parameters are the only trainable ones
    assert not any(p.requires_grad for p in unet.parameters())
    assert not any(p.requires_grad for p in text_encoder.parameters())
    # lycoris' process-global preset is left as it was
    from lycoris import LycorisNetwork

    assert LycorisNetwork.LORA_PREFIX == "lycoris"


def test_sd15_locon_has_kohyas_modules(sd15):
    unet, text_encoder = sd15
    network = create_network(unet, text_encoder, "LoCon", 16, 8, 8, 4)
    assert network.module_counts() == {"text_encoder": 72, "unet": 278}
    sd = network.kohya_state_dict()
    assert len(sd) == 3 * (72 + 278)
    expected = kohya_names(unet, text_encoder, with_convs=True)
    assert {k.split(".")[0] for k in sd} == set(expected)
    for name, module in expected.items():
        down, up, alpha = sd[f"{name}.lora_down.weight"], sd[f"{name}.lora_up.weight"], sd[f"{name}.alpha"]
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1):
            assert down.shape == (8, module.in_channels, *module.kernel_size), name
            assert up.shape == (module.out_channels, 8, 1, 1), name
            assert float(alpha) == 4.0
        elif isinstance(module, torch.nn.Conv2d):
            assert down.shape == (16, module.in_channels, 1, 1) and up.shape == (module.out_channels, 16, 1, 1)
            assert float(alpha) == 8.0
        else:
            assert down.shape == (16, module.in_features) and up.shape == (module.out_features, 16)
            assert float(alpha) == 8.0
    for name in ("lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_down_blocks_1_resnets_0_conv_shortcut",
                 "lora_unet_down_blocks_0_resnets_0_time_emb_proj", "lora_unet_down_blocks_0_downsamplers_0_conv",
                 "lora_unet_up_blocks_0_upsamplers_0_conv", "lora_unet_mid_block_resnets_1_conv2"):
        assert name in expected
    assert sd["lora_unet_down_blocks_1_resnets_0_conv_shortcut.lora_down.weight"].shape == (16, 320, 1, 1)
    assert sd["lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight"].shape == (16, 1280)
    assert network.network_module == "lycoris.kohya"
    assert network.network_args() == {"conv_dim": "8", "conv_alpha": "4", "algo": "locon"}


def test_unet_only_and_bad_settings(sd15):
    unet, text_encoder = sd15
    network = create_network(unet, text_encoder, "lora", 8, 4, 0, 0, train_text_encoder=False)
    assert network.module_counts() == {"text_encoder": 0, "unet": 192}
    assert not any(k.startswith("lora_te") for k in network.kohya_state_dict())
    with pytest.raises(UserError, match="lora_type"):
        create_network(unet, text_encoder, "LoRB", 8, 4, 8, 4)
    with pytest.raises(UserError, match="conv_dim"):
        create_network(unet, text_encoder, "LoCon", 8, 4, 0, 0)


# ----- a tiny SD1.x: behaviour -----
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tests.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


def load_models(folder):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
    return unet, text_encoder


INPUTS = {}


def run_models(unet, text_encoder):
    if not INPUTS:
        g = torch.Generator().manual_seed(1)
        INPUTS.update(ids=torch.randint(0, 300, (2, 77), generator=g), x=torch.randn(2, 4, 8, 8, generator=g),
                      t=torch.tensor([10, 500]), ctx=torch.randn(2, 77, 32, generator=g))
    with torch.no_grad():
        te = text_encoder(INPUTS["ids"])[0]
        out = unet(INPUTS["x"], INPUTS["t"], INPUTS["ctx"]).sample
    return te, out


def randomize(network, seed=0, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in network.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("lora_type", ["LoRA", "LoCon"])
def test_tiny_forward_is_kohyas(tiny_folder, lora_type):
    import torch.nn.functional as F

    unet, text_encoder = load_models(tiny_folder)
    base_te, base_unet = run_models(unet, text_encoder)
    network = create_network(unet, text_encoder, lora_type, 4, 2, 2, 1)
    network.apply_to()
    network.apply_to()  # idempotent
    te, out = run_models(unet, text_encoder)
    assert torch.equal(te, base_te) and torch.allclose(out, base_unet, atol=1e-6)  # up starts at zero

    # init: down kaiming-uniform(a=sqrt(5)) -> bound 1/sqrt(fan_in); up zeros
    lora = next(l for l in network.unet_loras if l.lora_name.endswith("attn1_to_q"))
    fan_in = lora.lora_down.weight.shape[1]
    assert lora.lora_down.weight.abs().max() <= 1 / math.sqrt(fan_in) + 1e-6 and lora.lora_down.weight.std() > 0
    assert torch.count_nonzero(lora.lora_up.weight) == 0

    randomize(network)
    te, out = run_models(unet, text_encoder)
    assert not torch.allclose(te, base_te) and not torch.allclose(out, base_unet)

    # one Linear: org(x) + up(down(x)) * multiplier * alpha / r
    network.set_multiplier(0.5)
    linear = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    x = torch.randn(3, 5, linear.in_features)
    with torch.no_grad():
        expected = F.linear(x, linear.weight, linear.bias) + (x @ lora.lora_down.weight.T @ lora.lora_up.weight.T) * 0.5 * 2 / 4
        assert torch.allclose(linear(x), expected, atol=1e-5)
    if lora_type == "LoCon":  # a 3x3 conv: conv dim 2, conv alpha 1
        conv = unet.down_blocks[0].resnets[0].conv1
        c = next(l for l in network.unet_loras if l.lora_name == "lora_unet_down_blocks_0_resnets_0_conv1")
        xc = torch.randn(1, conv.in_channels, 8, 8)
        with torch.no_grad():
            delta = F.conv2d(F.conv2d(xc, c.lora_down.weight, None, conv.stride, conv.padding), c.lora_up.weight)
            assert torch.allclose(conv(xc), conv._lycoris_original_forward(xc) + delta * 0.5 * 1 / 2, atol=1e-5)
    network.set_multiplier(0.0)
    te, out = run_models(unet, text_encoder)
    assert torch.allclose(te, base_te, atol=1e-6) and torch.allclose(out, base_unet, atol=1e-6)
    network.set_multiplier(1.0)
    network.restore()
    te, out = run_models(unet, text_encoder)
    assert torch.equal(te, base_te) and torch.equal(out, base_unet)


def test_param_groups_and_gradients(tiny_folder):
    unet, text_encoder = load_models(tiny_folder)
    network = create_network(unet, text_encoder, "LoRA", 4, 2, 0, 0)
    network.apply_to()
    groups = network.param_groups(unet_lr=5e-4, text_encoder_lr=1e-4)
    assert [(g["name"], g["lr"]) for g in groups] == [("text_encoder", 1e-4), ("unet", 5e-4)]
    own = {id(p) for p in network.parameters()}
    assert all(id(p) in own for g in groups for p in g["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(network.parameters()))
    trainable = [p for m in (unet, text_encoder, network) for p in m.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == own

    optimizer = torch.optim.AdamW(groups)
    te = text_encoder(INPUTS.get("ids", torch.randint(0, 300, (2, 77))))[0]
    out = unet(torch.randn(2, 4, 8, 8), torch.tensor([10, 20]), te).sample
    out.pow(2).mean().backward()
    assert all(p.grad is None for p in unet.parameters()) and all(p.grad is None for p in text_encoder.parameters())
    assert all(l.lora_up.weight.grad is not None for l in network.loras)
    optimizer.step()
    assert all(torch.count_nonzero(l.lora_up.weight) > 0 for l in network.loras)

    groups = network.param_groups(unet_lr=5e-4, text_encoder_lr=0)
    assert [g["name"] for g in groups] == ["unet"]
    assert not any(p.requires_grad for l in network.text_encoder_loras for p in l.parameters())
    with pytest.raises(UserError):
        network.param_groups(unet_lr=0, text_encoder_lr=0)


def test_round_trip_through_our_files(tiny_folder, tmp_path):
    from safetensors.torch import load_file

    unet, text_encoder = load_models(tiny_folder)
    network = create_network(unet, text_encoder, "LoCon", 4, 2, 2, 1)
    randomize(network, seed=3)
    sd = network.kohya_state_dict()
    path = tmp_path / "char-01.safetensors"
    meta = saving.save_lora(path, sd, saving.build_metadata(output_name="char", network_module=network.network_module,
                                                             network_dim=4, network_alpha=2, network_args=network.network_args()))
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1", "algo": "locon"}
    loaded = load_file(path)
    assert describe_kohya_state_dict(loaded) == {"lora_type": "LoCon", "network_dim": 4, "network_alpha": 2,
                                                 "conv_dim": 2, "conv_alpha": 1, "has_text_encoder": True}

    unet2, te2 = load_models(tiny_folder)
    fresh = create_network(unet2, te2, "LoCon", 4, 2, 2, 1)
    assert fresh.load_kohya_state_dict(loaded) == {"loaded": len(fresh.loras), "text_encoder": "loaded"}
    again = fresh.kohya_state_dict()
    assert set(again) == set(sd) and all(torch.equal(again[k], sd[k]) for k in sd)
    network.apply_to()
    fresh.apply_to()
    for a, b in zip(run_models(unet, text_encoder), run_models(unet2, te2)):
        assert torch.allclose(a, b, atol=1e-6)

    # fp16 files load into the fp32 network
    half = {k: v.half() for k, v in sd.items()}
    unet3, te3 = load_models(tiny_folder)
    assert create_network(unet3, te3, "LoCon", 4, 2, 2, 1).load_kohya_state_dict(half)["loaded"] == len(fresh.loras)

    # a UNet-only network ignores the file's text-encoder modules; a UNet-only file leaves the TE fresh
    unet_only = create_network(*load_models(tiny_folder), "LoCon", 4, 2, 2, 1, train_text_encoder=False)
    assert unet_only.load_kohya_state_dict(loaded)["text_encoder"] == "ignored"
    no_te = {k: v for k, v in loaded.items() if k.startswith("lora_unet")}
    assert create_network(*load_models(tiny_folder), "LoCon", 4, 2, 2, 1).load_kohya_state_dict(no_te)["text_encoder"] == "fresh"


def test_continue_refuses_other_settings(tiny_folder):
    unet, text_encoder = load_models(tiny_folder)
    locon = create_network(unet, text_encoder, "LoCon", 4, 2, 2, 1).kohya_state_dict()
    with pytest.raises(UserError, match="trained as LoCon dim 4 alpha 2, conv dim 2 alpha 1"):
        create_network(*load_models(tiny_folder), "LoRA", 4, 2, 0, 0).load_kohya_state_dict(locon)
    with pytest.raises(UserError, match="LoCon dim 4"):
        create_network(*load_models(tiny_folder), "LoCon", 8, 2, 2, 1).load_kohya_state_dict(locon)
    with pytest.raises(UserError, match="alpha"):
        create_network(*load_models(tiny_folder), "LoCon", 4, 4, 2, 1).load_kohya_state_dict(locon)
    with pytest.raises(UserError, match="conv dim 2"):
        create_network(*load_models(tiny_folder), "LoCon", 4, 2, 4, 1).load_kohya_state_dict(locon)


@pytest.mark.parametrize("lora_type, marker", [("LoHa", ".hada_w1_a"), ("LoKr", ".lokr_w1"), ("IA3", ".on_input"), ("DoRA", ".dora_scale")])
def test_other_algorithms(tiny_folder, lora_type, marker):
    unet, text_encoder = load_models(tiny_folder)
    base = run_models(unet, text_encoder)
    network = create_network(unet, text_encoder, lora_type, 4, 2, 2, 1)
    assert network.module_counts()["unet"] == create_network(*load_models(tiny_folder), "LoCon", 4, 2, 2, 1).module_counts()["unet"]
    network.apply_to()
    randomize(network, seed=5, std=0.2)
    changed = run_models(unet, text_encoder)
    assert not torch.allclose(changed[1], base[1])
    sd = network.kohya_state_dict(torch.float16)
    assert any(marker in k for k in sd)
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for k in sd)
    assert network.network_module == "lycoris.kohya" and network.network_args()["algo"]
    assert describe_kohya_state_dict(sd)["lora_type"] == lora_type
    other = create_network(*load_models(tiny_folder), lora_type, 4, 2, 2, 1)
    assert other.load_kohya_state_dict(network.kohya_state_dict())["loaded"] == len(other.loras)


# ----- the key compatibility test: diffusers loads our file like a kohya file -----
@pytest.mark.parametrize("lora_type", ["LoRA", "LoCon"])
def test_diffusers_loads_our_files(tiny_folder, tmp_path, lora_type):
    pytest.importorskip("peft", reason="diffusers' load_lora_weights needs peft")
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_folder)
    base = run_models(pipe.unet, pipe.text_encoder)
    network = create_network(pipe.unet, pipe.text_encoder, lora_type, 4, 2, 2, 1)
    randomize(network, seed=7)
    path = tmp_path / "char-01.safetensors"
    saving.save_lora(path, network.kohya_state_dict(torch.float16), saving.build_metadata(output_name="char"))
    network.apply_to()
    ours = run_models(pipe.unet, pipe.text_encoder)
    network.restore()

    pipe.load_lora_weights(str(path), adapter_name="char")
    theirs = run_models(pipe.unet, pipe.text_encoder)
    for b, o, t in zip(base, ours, theirs):
        assert (t - b).abs().max() > 1e-2  # both the text encoder and the UNet changed
        assert torch.allclose(t, o, atol=5e-3, rtol=1e-3)  # ... exactly as our network does (fp16 file)
    pipe.set_adapters(["char"], adapter_weights=[0.0])
    off = run_models(pipe.unet, pipe.text_encoder)
    for b, o in zip(base, off):
        assert torch.allclose(b, o, atol=1e-5)
