"""The half-precision training path, on the CPU: base weights in bf16 under torch's CPU autocast.

This is the path a GPU takes apart from the device (mixed: the LoRA in fp32 over bf16 weights; full: the LoRA,
its gradients and the optimizer state in bf16 too), so a dtype mismatch fails here rather than on a user's GPU.
"""

from __future__ import annotations

import pytest

from lora_gradio.engine.progress import Progress
from lora_gradio.engine.train import loop
from lora_gradio.engine.train.config import apply_overrides, load_settings
from lora_gradio.engine.train.memory import resolved_precision
from tests.test_train_run import make_project, tiny_model  # noqa: F401  (the module's tiny model fixture)


class Recorder(Progress):
    def __init__(self):
        self.lines, self.losses = [], []

    def log(self, message):
        self.lines.append(message)

    def update(self, done, total=None, message="", **data):
        if data.get("loss") is not None:
            self.losses.append(data["loss"])


def _watch_dtypes(monkeypatch):
    """Wrap the loop's training step to record what each step really ran in."""
    seen = []
    real_step = loop.forward_backward

    def step(accelerator, model, network, latents, *args, **kwargs):
        import torch

        with accelerator.autocast():
            autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
        seen.append({
            "unet": next(model.unet.parameters()).dtype,
            "text_encoder": next(model.text_encoders[0].parameters()).dtype,
            "network": {p.dtype for p in network.parameters()},
            "autocast": autocast,
        })
        loss = real_step(accelerator, model, network, latents, *args, **kwargs)
        grads = {p.grad.dtype for p in network.parameters() if p.grad is not None}
        seen[-1]["grads"] = grads
        return loss

    monkeypatch.setattr(loop, "forward_backward", step)
    return seen


@pytest.mark.parametrize("precision, network_dtype", [("bf16", "float32"), ("full_bf16", "bfloat16")])
def test_training_in_bf16_on_the_cpu_takes_the_gpu_path(tmp_path, tiny_model, monkeypatch, precision, network_dtype):
    import torch
    from safetensors.torch import load_file

    project = make_project(tmp_path / "Loras", tiny_model, extra=[
        f"mixed_precision={precision}", "how_many=1", "sample_every_n_epochs=1", "sample_prompts=tiny_char, smile --w 64 --h 64 --s 2",
    ])
    seen = _watch_dtypes(monkeypatch)
    progress = Recorder()
    result = loop.train_project(project, progress=progress)

    assert result.steps == 2 and len(seen) == 2
    for step in seen:
        assert step["unet"] == step["text_encoder"] == torch.bfloat16  # the base weights in half
        assert step["autocast"] == torch.bfloat16
        assert step["network"] == step["grads"] == {getattr(torch, network_dtype)}
    assert all(loss == loss and abs(loss) < 10 for loss in progress.losses)  # finite, not diverged
    assert any("on cpu (bf16)" in line for line in progress.lines)
    # The file is saved in fp16 as always, and the run both changed the LoRA and sampled from it.
    saved = load_file(str(project.output_dir / "tiny_char-01.safetensors"))
    assert {t.dtype for name, t in saved.items() if name.endswith("weight")} == {torch.float16}
    ups = [t for name, t in saved.items() if name.endswith("lora_up.weight")]
    assert any(t.abs().max() > 0 for t in ups)  # lora_up starts at zero: it moved
    assert [p.rsplit("/", 1)[-1] for p in result.samples] == ["tiny_char-01-00.png"]


def test_only_a_bf16_choice_is_kept_on_the_cpu(tmp_path):
    from lora_gradio.engine.project import Projects

    project = Projects(tmp_path).create("p")
    chosen = {value: resolved_precision(apply_overrides(load_settings(project), [f"mixed_precision={value}"]), on_cuda=False)
              for value in ("auto", "fp16", "full_fp16", "bf16", "full_bf16", "no")}
    # fp16 needs loss scaling, which the CPU does not have: those train in fp32 there.
    assert chosen == {"auto": "no", "fp16": "no", "full_fp16": "no", "bf16": "bf16", "full_bf16": "full_bf16", "no": "no"}
    on_gpu = resolved_precision(apply_overrides(load_settings(project), ["mixed_precision=full_fp16"]), on_cuda=True)
    assert on_gpu == "full_fp16"


def test_full_fp16_gradients_are_unscaled_in_place_by_the_patched_scaler():
    """Full fp16 keeps fp16 gradients; torch's GradScaler refuses those unless patched as kohya does."""
    import types

    import torch

    def scaled_fp16_step():
        param = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        scaler.scale(param.sum()).backward()  # the gradient arrives scaled, in fp16
        return param, torch.optim.SGD([param], lr=0.1), scaler

    param, optimizer, scaler = scaled_fp16_step()
    with pytest.raises(ValueError, match="FP16 gradients"):
        scaler.unscale_(optimizer)
    param, optimizer, scaler = scaled_fp16_step()
    loop._allow_fp16_gradients(types.SimpleNamespace(scaler=scaler))
    scaler.unscale_(optimizer)
    assert param.grad.dtype == torch.float16 and torch.equal(param.grad, torch.ones(4, dtype=torch.float16))


def test_sdxl_trains_in_full_bf16_on_the_cpu(tmp_path, tiny_sdxl_dir, monkeypatch):
    """SDXL's extra conditioning (pooled text, size ids) meets half weights too: the XL notebook trains in full 16 bits."""
    import torch

    from tests.test_sdxl_train import make_project as make_sdxl_project

    project, _ = make_sdxl_project(tmp_path / "Loras", tiny_sdxl_dir, n_images=2, extra=["mixed_precision=full_bf16", "how_many=1"])
    seen = _watch_dtypes(monkeypatch)
    progress = Recorder()
    result = loop.train_project(project, progress=progress)
    assert result.steps == 1 and seen[0]["unet"] == torch.bfloat16 and seen[0]["network"] == seen[0]["grads"] == {torch.bfloat16}
    assert all(loss == loss for loss in progress.losses) and (project.output_dir / "xl_char-01.safetensors").is_file()


def test_a_second_run_in_the_same_process_may_choose_another_precision(tmp_path, tiny_model):
    """A notebook runs train_project in one process: Accelerate's one-precision-per-process state must not stop the second run."""
    first = make_project(tmp_path / "a", tiny_model, extra=["mixed_precision=no", "how_many=1"])
    second = make_project(tmp_path / "b", tiny_model, extra=["mixed_precision=bf16", "how_many=1"])
    assert loop.train_project(first).steps == 2
    progress = Recorder()
    assert loop.train_project(second, progress=progress).steps == 2
    assert any("on cpu (bf16)" in line for line in progress.lines)
