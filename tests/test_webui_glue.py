"""The WebUI extension against a small stand-in of the WebUI's documented interfaces (tests/webui_standin.py):
the tab and its settings, the X/Y/Z plot axes, the copy into the Lora folder, and an installer that
leaves the WebUI's pins alone. What only a real WebUI shows: the README's "Testing a LoRA in the WebUI".
"""

import json
import os
import runpy
import struct
import sys
import types
from pathlib import Path

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.webui import xyz
from tests import webui_standin
from tests.appserver import FORGE_PYTHON, GRADIO3_PYTHON, REPO, run_under

SCRIPT = str(REPO / "scripts" / "lora_gradio_tab.py")


@pytest.fixture
def webui(monkeypatch, tmp_path):
    standin = webui_standin.install(lora_dir=tmp_path / "webui" / "models" / "Lora")
    for name, module in standin.modules_dict.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "networks", raising=False)
    return standin


def settings(webui, root, copy=False):
    for add in webui.callbacks.settings:
        add()
    webui.shared.opts.lora_gradio_root = str(root)
    webui.shared.opts.lora_gradio_copy_to_lora_folder = copy


def fake_lora(path, **metadata):
    """A valid .safetensors file with only a header (no tensors): enough for copies and metadata."""
    header = json.dumps({"__metadata__": {k: str(v) for k, v in metadata.items()}}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


@pytest.fixture
def trained(tmp_path):
    """Two projects under a root: `hero` with epochs 1-3 (and samples), `style` with output name `painty`."""
    projects = Projects(tmp_path / "Loras")
    hero = projects.create("hero")
    for epoch in (1, 2, 3):
        fake_lora(hero.output_dir / f"hero-{epoch:02d}.safetensors", ss_output_name="hero", ss_epoch=epoch, ss_num_epochs=3, ss_base_model_version="sd_v1")
    (hero.output_dir / "sample").mkdir()
    for name in ("hero-02-00.png", "hero-02-01.png", "hero-02-extra.png"):
        (hero.output_dir / "sample" / name).write_bytes(b"png " + name.encode())
    (hero.output_dir / "notes.safetensors").write_bytes(b"not an epoch")
    hero.write_section("tags", {"activation": "hero_tag"})
    style = projects.create("style")
    style.write_section("train", {"output_name": "painty"})
    fake_lora(style.output_dir / "painty-10.safetensors", ss_base_model_version="sdxl_base_v1-0")
    fake_lora(style.output_dir / "style-01.safetensors")  # an old name: not this project's output
    projects.create("empty")
    return projects


# ----- the tab and its settings -----
def test_script_registers_the_tab_settings_and_axes(webui, tmp_path):
    runpy.run_path(SCRIPT)
    assert len(webui.callbacks.tabs) == 1 and len(webui.callbacks.settings) == 1
    assert webui.callbacks.before_ui == []  # the X/Y/Z plot was loaded: axes added at import time
    webui.callbacks.settings[0]()
    options = webui.shared.opts.options
    assert set(options) == {"lora_gradio_root", "lora_gradio_layout", "lora_gradio_copy_to_lora_folder"}
    assert options["lora_gradio_copy_to_lora_folder"].default is False
    assert {info.section for info in options.values()} == {("lora_gradio", "LoRA Gradio")}
    webui.shared.opts.lora_gradio_root = str(tmp_path / "Loras")
    (blocks, title, elem_id), = webui.callbacks.tabs[0]()
    assert title == "LoRA Gradio" and elem_id == "lora_gradio"
    assert type(blocks).__name__ == "Blocks"
    # Inside the WebUI the Train tab offers to unload the WebUI's checkpoint before training.
    unload = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "lg-train-unload"]
    assert len(unload) == 1 and unload[0].value is True


def test_unload_hook_calls_the_webuis_unload(webui):
    from lora_gradio.webui import WebUIHooks

    WebUIHooks().unload_checkpoint()
    assert webui.sd_models.unloaded == [()]


def test_lora_folder_is_the_lora_dir_option_else_models_lora(webui, tmp_path):
    from lora_gradio.webui import WebUIHooks

    assert WebUIHooks().lora_folder() == tmp_path / "webui" / "models" / "Lora"
    webui.shared.cmd_opts.lora_dir = None  # not given: the models folder's Lora, as the Lora extension's default
    assert WebUIHooks().lora_folder() == Path("/webui/models") / "Lora"


# ----- X/Y/Z axes: registration -----
def axes(module):
    return {o.label: o for o in module.axis_options if o.label in (xyz.EPOCH_LABEL, xyz.WEIGHT_LABEL)}


def test_axes_are_added_once_even_when_the_script_runs_again(webui):
    runpy.run_path(SCRIPT)
    runpy.run_path(SCRIPT)  # Reload UI re-runs extension scripts; the X/Y/Z module may be the same one
    labels = [o.label for o in webui.xyz.axis_options]
    assert labels.count("LoRA epoch") == 1 and labels.count("LoRA weight") == 1
    assert labels[:2] == ["Nothing", "Prompt S/R"]  # appended: the WebUI's own indices do not move
    epoch, weight = axes(webui.xyz)["LoRA epoch"], axes(webui.xyz)["LoRA weight"]
    assert epoch.type is str and callable(epoch.choices) and callable(epoch.confirm)
    assert weight.type is float and weight.choices is None  # a text box: the plot parses 0.5-1 (+0.1) itself
    # A real Reload UI re-executes xyz_grid.py too: a fresh module gets the axes again.
    fresh, data = webui_standin.make_xyz_module()
    webui.scripts.scripts_data[:] = [data]
    runpy.run_path(SCRIPT)
    assert [o.label for o in fresh.axis_options].count("LoRA epoch") == 1


def test_axes_wait_for_the_ui_when_the_xyz_plot_is_not_loaded_yet(webui):
    from lora_gradio.webui import add_xyz_axes

    loaded = webui.scripts.scripts_data[:]
    webui.scripts.scripts_data.clear()
    runpy.run_path(SCRIPT)
    assert len(webui.callbacks.before_ui) == 1
    webui.scripts.scripts_data.extend(loaded)
    webui.callbacks.before_ui[0]()
    assert set(axes(webui.xyz)) == {"LoRA epoch", "LoRA weight"}
    assert add_xyz_axes() == []  # already there
    assert xyz.find_xyz_module([]) is None


# ----- X/Y/Z axes: the prompt edits -----
@pytest.mark.parametrize("prompt, value, expected", [
    ("hero_tag, smile, <lora:hero-03:0.7>", "hero-01", "hero_tag, smile, <lora:hero-01:0.7>"),
    ("<lora:hero:0.8:0.5> a, <lyco:hero-3:1>", "hero-10", "<lora:hero-10:0.8:0.5> a, <lyco:hero-10:1>"),
    ("<lora:other-02:0.5>, hero_tag", "hero-02", "<lora:other-02:0.5>, hero_tag, <lora:hero-02:1>"),  # appended
    ("hero_tag,", "hero-02", "hero_tag, <lora:hero-02:1>"),
    ("", "hero-02", "<lora:hero-02:1>"),
    ("<lora:hero-style-01:1>", "hero-02", "<lora:hero-style-01:1>, <lora:hero-02:1>"),  # another LoRA
])
def test_set_epoch(prompt, value, expected):
    assert xyz.set_epoch(prompt, value) == expected


@pytest.mark.parametrize("prompt, names, expected", [
    ("a <lora:hero-01:1> b", None, "a <lora:hero-01:0.6> b"),
    ("<lora:hero-01>", None, "<lora:hero-01:0.6>"),
    ("<lora:hero-01:1:0.5:8>", None, "<lora:hero-01:0.6:0.6:8>"),  # te and unet multipliers, dyn kept
    ("<lora:hero-01:te=1:unet=0.2:dyn=4>", None, "<lora:hero-01:te=0.6:unet=0.6:dyn=4>"),
    ("<lora:hero-01:1>, <lora:detail:0.3>", {"hero"}, "<lora:hero-01:0.6>, <lora:detail:0.3>"),  # only this tool's LoRA
    ("<lora:a:1>, <lora:b:0.3>", {"hero"}, "<lora:a:0.6>, <lora:b:0.6>"),  # none of ours: every tag
])
def test_set_weight(prompt, names, expected):
    assert xyz.set_weight(prompt, 0.6000000000000001, names) == expected


def test_set_weight_needs_a_tag_and_epoch_needs_a_name():
    with pytest.raises(ValueError):
        xyz.set_weight("hero_tag, smile", 0.5)
    with pytest.raises(ValueError):
        xyz.set_epoch("x", "bad:name")
    assert xyz.format_weight(1.0) == "1" and xyz.format_weight(0.30000000000000004) == "0.3"


def test_epoch_choices_come_from_the_projects_epoch_files(webui, trained):
    runpy.run_path(SCRIPT)
    settings(webui, trained.root)
    epoch = axes(webui.xyz)["LoRA epoch"]
    assert epoch.choices() == ["hero-01", "hero-02", "hero-03", "painty-10"]
    assert epoch.format_value(None, epoch, "hero-01") == "hero-01"
    found = xyz.catalog(trained.root)
    assert found.project_of["painty-10"] == "style" and found.names == {"hero", "painty", "empty"}
    assert xyz.catalog(trained.root / "missing").epochs == []


def test_apply_functions_edit_a_processing_object(webui, trained):
    runpy.run_path(SCRIPT)
    settings(webui, trained.root)
    epoch, weight = axes(webui.xyz)["LoRA epoch"], axes(webui.xyz)["LoRA weight"]
    # As the plot does per cell: a shallow copy of p, X applied before Y.
    shared_list = ["hero_tag, <lora:hero-03:1>, <lora:detail:0.4>"] * 2
    p = webui_standin.make_processing("hero_tag, <lora:hero-03:1>, <lora:detail:0.4>", all_prompts=shared_list, hr_prompt="hires, <lora:hero-03:1>")
    epoch.apply(p, "hero-01", ["hero-01", "hero-02"])
    weight.apply(p, 0.5, [0.5, 1.0])
    assert p.prompt == "hero_tag, <lora:hero-01:0.5>, <lora:detail:0.4>"
    assert p.hr_prompt == "hires, <lora:hero-01:0.5>"
    assert p.all_prompts == [p.prompt] * 2 and shared_list[0].endswith("<lora:detail:0.4>") and "hero-03" in shared_list[0]
    assert p.negative_prompt == ""
    # A prompt without the LoRA: the epoch axis adds it, then the weight axis sets its weight.
    p = webui_standin.make_processing("hero_tag, smile")
    epoch.apply(p, "hero-02", [])
    weight.apply(p, 0.8, [])
    assert p.prompt == "hero_tag, smile, <lora:hero-02:0.8>"
    # Weight first (X) on a prompt without a tag: the run stops before any image, with the reason.
    with pytest.raises(RuntimeError, match="LoRA epoch on an earlier axis"):
        weight.apply(webui_standin.make_processing("hero_tag"), 0.5, [])
    # A batch of prompts (p.prompt as a list) is edited item by item.
    p = webui_standin.make_processing(["<lora:hero-01:1> a", "<lora:hero-01:1> b"])
    epoch.apply(p, "hero-03", [])
    assert p.prompt == ["<lora:hero-03:1> a", "<lora:hero-03:1> b"]


def test_epoch_confirm_checks_names_the_webui_knows_and_copies_first_when_asked(webui, trained, monkeypatch):
    runpy.run_path(SCRIPT)
    settings(webui, trained.root)
    epoch = axes(webui.xyz)["LoRA epoch"]
    p = webui_standin.make_processing("x")
    epoch.confirm(p, ["hero-01"])  # no Lora extension loaded: nothing to check against
    with pytest.raises(RuntimeError, match="not a LoRA name"):
        epoch.confirm(p, ["hero:1"])
    lora_dir = webui.shared.cmd_opts.lora_dir
    networks = types.ModuleType("networks")
    networks.available_networks, networks.available_network_aliases = {}, {}

    def rescan():
        names = [f[: -len(".safetensors")] for f in os.listdir(lora_dir)] if os.path.isdir(lora_dir) else []
        networks.available_networks = {n: object() for n in names if not n.endswith((".json", ".png"))}

    networks.list_available_networks = rescan
    monkeypatch.setitem(sys.modules, "networks", networks)
    with pytest.raises(RuntimeError, match="no LoRA named hero-01, hero-02"):
        epoch.confirm(p, ["hero-01", "hero-02"])
    webui.shared.opts.lora_gradio_copy_to_lora_folder = True
    epoch.confirm(p, ["hero-01", "hero-02"])  # copied, rescanned, found
    assert "hero-03" in networks.available_networks  # the whole project was copied


# ----- the copy into the WebUI's Lora folder -----
def test_copy_places_loras_cards_and_previews_and_never_overwrites_the_users_files(webui, trained, tmp_path):
    from lora_gradio.webui import WebUIHooks

    settings(webui, trained.root)
    hooks = WebUIHooks()
    lora_dir = hooks.lora_folder()
    report = hooks.copy_loras("hero")
    names = sorted(p.name for p in lora_dir.iterdir())
    assert names == ["hero-01.json", "hero-01.safetensors", "hero-02.json", "hero-02.preview.png", "hero-02.safetensors", "hero-03.json", "hero-03.safetensors"]
    assert (lora_dir / "hero-02.safetensors").read_bytes() == (trained.project("hero").output_dir / "hero-02.safetensors").read_bytes()
    assert (lora_dir / "hero-02.preview.png").read_bytes() == b"png hero-02-00.png"  # the epoch's first sample
    card = json.loads((lora_dir / "hero-02.json").read_text(encoding="utf-8"))
    assert card["activation text"] == "hero_tag" and card["preferred weight"] == 1.0 and card["sd version"] == "SD1"
    assert set(card) == {"description", "sd version", "activation text", "preferred weight", "negative text", "notes"}
    assert "epoch 2 of 3" in card["description"]
    assert len(report.copied) == 7 and "3 LoRA files copied" in report.summary()
    assert not [p for p in lora_dir.iterdir() if p.name.startswith(".")]  # no temporary files left
    # Again: nothing to do.
    again = hooks.copy_loras(trained.project("hero"))
    assert again.copied == [] and len(again.unchanged) == 7
    # The user edits a card in the WebUI and replaces a preview; the project is retrained (new epoch 1).
    (lora_dir / "hero-01.json").write_text(json.dumps({**card, "preferred weight": 0.7}), encoding="utf-8")
    (lora_dir / "hero-02.preview.png").write_bytes(b"the user's preview")
    fake_lora(trained.project("hero").output_dir / "hero-01.safetensors", ss_epoch=1, ss_num_epochs=5)
    third = hooks.copy_loras("hero", preferred_weight=0.8)
    assert json.loads((lora_dir / "hero-01.json").read_text())["preferred weight"] == 0.7  # kept
    assert (lora_dir / "hero-02.preview.png").read_bytes() == b"the user's preview"  # kept
    assert (lora_dir / "hero-01.safetensors").read_bytes() == (trained.project("hero").output_dir / "hero-01.safetensors").read_bytes()  # our own older copy: updated
    assert json.loads((lora_dir / "hero-03.json").read_text())["preferred weight"] == 0.8  # our own card: updated
    assert {p.name for p in third.kept} == {"hero-01.json", "hero-02.preview.png"} and "kept" in third.summary()


def test_copy_of_another_projects_file_with_the_same_name_is_refused(webui, trained):
    from lora_gradio.webui import WebUIHooks

    settings(webui, trained.root)
    lora_dir = WebUIHooks().lora_folder()
    fake_lora(lora_dir / "painty-10.safetensors", ss_output_name="someone else's")
    (lora_dir / "painty-10.png").write_bytes(b"a preview the WebUI made")
    report = WebUIHooks().copy_loras("style")
    assert [p.name for p in report.kept] == ["painty-10.safetensors"]
    assert json.loads((lora_dir / "painty-10.json").read_text())["sd version"] == "SDXL"
    assert not (lora_dir / "painty-10.preview.png").exists()  # the card already has a preview
    assert not (lora_dir / "style-01.safetensors").exists()


def test_copy_errors_are_one_line_user_errors_and_the_setting_gates_after_training(webui, trained, tmp_path):
    from lora_gradio.webui import WebUIHooks
    from lora_gradio.webui.lora_folder import copy_loras

    settings(webui, trained.root)
    hooks = WebUIHooks()
    with pytest.raises(UserError, match="train it first"):
        hooks.copy_loras("empty")
    with pytest.raises(UserError, match="No project"):
        hooks.copy_loras("nobody")
    with pytest.raises(UserError, match="Lora folder is unknown"):
        copy_loras(trained.project("hero"), None)
    assert hooks.after_training("hero") is None and not hooks.lora_folder().exists()
    webui.shared.opts.lora_gradio_copy_to_lora_folder = True
    assert hooks.copy_enabled() and len(hooks.after_training("hero").copied) == 7


# ----- installer -----
def test_installer_adds_only_what_is_missing_and_never_webui_pins(monkeypatch):
    installed = {"gradio", "pydantic", "pillow", "requests", "diffusers", "lycoris-lora", "peft", "onnxruntime"}
    calls, pins = [], []
    launch = types.ModuleType("launch")
    launch.is_installed = lambda name: name in installed
    monkeypatch.setitem(sys.modules, "launch", launch)

    def run_pip(args, desc):
        calls.append(args.split(" -c ")[0])
        constraint = args.split(" -c ")[1].strip('"')
        with open(constraint) as f:
            pins.append(f.read().split())

    launch.run_pip = run_pip
    runpy.run_path(str(REPO / "install.py"))
    # Lines with a marker count where it holds: bitsandbytes (not on macOS) yes, tomli (Python < 3.11) not here.
    assert calls == ['install "tomli-w>=1.0"', 'install "bitsandbytes>=0.43"'] and sys.version_info >= (3, 11)
    # Every install runs under the installed versions of the WebUI's packages, so no dependency moves them.
    from importlib import metadata

    assert f"gradio=={metadata.version('gradio')}" in pins[0] and f"pydantic=={metadata.version('pydantic')}" in pins[0]
    assert all(pin.split("==")[0] in {"torch", "torchvision", "gradio", "fastapi", "pydantic", "numpy", "pillow", "transformers", "accelerate", "safetensors", "requests", "tomli"} for pin in pins[0])
    installed.update({"tomli-w", "bitsandbytes"})
    # Missing training packages are added, the WebUI's own never (even when missing here).
    installed.discard("diffusers")
    calls.clear()
    runpy.run_path(str(REPO / "install.py"))
    assert calls == ['install "diffusers>=0.30"']
    installed.add("diffusers")
    calls.clear()
    runpy.run_path(str(REPO / "install.py"))
    assert calls == []


# ----- the WebUI's Gradio -----
@pytest.mark.parametrize("python, gradio_version", [
    pytest.param(GRADIO3_PYTHON, "3.41.2", id="a1111-gradio-3.41.2", marks=pytest.mark.gradio3),
    pytest.param(FORGE_PYTHON, "4.40.0", id="forge-gradio-4.40.0", marks=pytest.mark.forge),
])
def test_the_webui_shows_the_tab_and_axes(tmp_path, python, gradio_version):
    """What the WebUI (and Forge) do with the extension: run the script, then build the tab, in their Gradio."""
    code = (
        "import json, runpy, gradio\n"
        "from tests import webui_standin\n"
        f"w = webui_standin.install_into_sys_modules(lora_dir={str(tmp_path / 'Lora')!r})\n"
        f"runpy.run_path({SCRIPT!r})\n"
        "[add() for add in w.callbacks.settings]\n"
        f"w.shared.opts.lora_gradio_root = {str(tmp_path / 'Loras')!r}\n"
        "(blocks, title, elem_id), = w.callbacks.tabs[0]()\n"
        "ids = [b.elem_id for b in blocks.blocks.values() if getattr(b, 'elem_id', None)]\n"
        "labels = [o.label for o in w.xyz.axis_options]\n"
        "print(json.dumps({'gradio': gradio.__version__, 'title': title, 'ids': ids, 'labels': labels}))\n"
    )
    result = run_under(python, code, what=f"Gradio {gradio_version}")
    assert result["gradio"] == gradio_version and result["title"] == "LoRA Gradio"
    assert "lg-train-unload" in result["ids"] and "lg-tab-train" in result["ids"]
    assert result["labels"][-2:] == ["LoRA epoch", "LoRA weight"]
