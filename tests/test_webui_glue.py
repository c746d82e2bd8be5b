"""The WebUI entry points against a small stand-in of the WebUI's documented interfaces.

The full extension (X/Y/Z axes, Lora folder copy) is tested with the Test tab; this covers what
the foundation ships: the tab, its settings, and an installer that leaves the WebUI's pins alone.
"""

import runpy
import sys
import types

import pytest

from tests.appserver import REPO


class Opts:
    def __init__(self):
        self.options = {}

    def add_option(self, key, info):
        self.options[key] = info
        setattr(self, key, info.default)


class OptionInfo:
    def __init__(self, default, label, section=None):
        self.default, self.label, self.section = default, label, section


@pytest.fixture
def webui(monkeypatch):
    callbacks = types.SimpleNamespace(tabs=[], settings=[])
    script_callbacks = types.ModuleType("modules.script_callbacks")
    script_callbacks.on_ui_tabs = callbacks.tabs.append
    script_callbacks.on_ui_settings = callbacks.settings.append
    shared = types.ModuleType("modules.shared")
    shared.opts, shared.OptionInfo = Opts(), OptionInfo
    sd_models = types.ModuleType("modules.sd_models")
    sd_models.unloaded = []
    sd_models.unload_model_weights = lambda *args: sd_models.unloaded.append(args)
    modules = types.ModuleType("modules")
    modules.script_callbacks, modules.shared, modules.sd_models = script_callbacks, shared, sd_models
    for name, module in (("modules", modules), ("modules.script_callbacks", script_callbacks), ("modules.shared", shared), ("modules.sd_models", sd_models)):
        monkeypatch.setitem(sys.modules, name, module)
    return callbacks, shared


def test_script_registers_a_tab_built_from_the_shared_ui(webui, tmp_path):
    callbacks, shared = webui
    runpy.run_path(str(REPO / "scripts" / "lora_gradio_tab.py"))
    assert len(callbacks.tabs) == 1 and len(callbacks.settings) == 1
    callbacks.settings[0]()
    assert set(shared.opts.options) == {"lora_gradio_root", "lora_gradio_layout"}
    shared.opts.lora_gradio_root = str(tmp_path / "Loras")
    (blocks, title, elem_id), = callbacks.tabs[0]()
    assert title == "LoRA Gradio" and elem_id == "lora_gradio"
    assert type(blocks).__name__ == "Blocks"
    # Inside the WebUI the Train tab offers to unload the WebUI's checkpoint before training.
    unload = [b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "lg-train-unload"]
    assert len(unload) == 1 and unload[0].value is True


def test_unload_hook_calls_the_webuis_unload(webui):
    from lora_gradio.webui import WebUIHooks

    WebUIHooks().unload_checkpoint()
    assert sys.modules["modules.sd_models"].unloaded == [()]


def test_installer_adds_only_what_is_missing_and_never_webui_pins(monkeypatch):
    installed = {"gradio", "pydantic", "pillow", "requests", "diffusers", "lycoris-lora", "peft", "onnxruntime"}
    calls = []
    launch = types.ModuleType("launch")
    launch.is_installed = lambda name: name in installed
    launch.run_pip = lambda args, desc: calls.append(args)
    monkeypatch.setitem(sys.modules, "launch", launch)
    runpy.run_path(str(REPO / "install.py"))
    assert calls == ['install "tomli-w>=1.0"']
    installed.add("tomli-w")
    # Missing training packages are added, the WebUI's own never (even when missing here).
    installed.discard("diffusers")
    calls.clear()
    runpy.run_path(str(REPO / "install.py"))
    assert calls == ['install "diffusers>=0.30"']
    installed.add("diffusers")
    calls.clear()
    calls.clear()
    runpy.run_path(str(REPO / "install.py"))
    assert calls == []
