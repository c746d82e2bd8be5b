"""A small stand-in of the WebUI interfaces the extension uses (no pytest: the Gradio 3.41.2
environment imports it too).

Covers: `modules.script_callbacks` (on_ui_tabs, on_ui_settings, on_before_ui, recorded),
`modules.shared` (opts.add_option, OptionInfo, cmd_opts.lora_dir), `modules.paths.models_path`,
`modules.sd_models.unload_model_weights`, `modules.scripts.scripts_data` holding an X/Y/Z plot entry
(`ScriptClassData(script_class, path, basedir, module)` whose script class lives in a module named
`xyz_grid.py`, as the WebUI's loader names it) with `AxisOption`, `axis_options` and `format_value`,
and a processing object with the prompt fields the axes touch.
"""

from __future__ import annotations

import sys
import types
from collections import namedtuple

ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])


class Opts:
    def __init__(self):
        self.options = {}

    def add_option(self, key, info):
        self.options[key] = info
        setattr(self, key, info.default)


class OptionInfo:
    def __init__(self, default, label, section=None, **kwargs):
        self.default, self.label, self.section = default, label, section


class AxisOption:
    """The X/Y/Z plot's axis record: the constructor signature of scripts/xyz_grid.py."""

    def __init__(self, label, type, apply, format_value=None, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply = label, type, apply
        self.format_value, self.confirm, self.cost, self.choices, self.prepare = format_value, confirm, cost, choices, prepare


def make_xyz_module():
    """A fresh X/Y/Z plot module, as each (re)load of scripts/xyz_grid.py makes one."""
    module = types.ModuleType("xyz_grid.py")
    module.AxisOption = AxisOption
    module.format_value = lambda p, opt, x: round(x, 8) if isinstance(x, float) else x
    module.axis_options = [AxisOption("Nothing", str, lambda p, x, xs: None), AxisOption("Prompt S/R", str, lambda p, x, xs: None)]
    script_class = type("Script", (), {"__module__": "xyz_grid.py"})
    module.Script = script_class
    return module, ScriptClassData(script_class, "/webui/scripts/xyz_grid.py", "/webui", module)


def make_processing(prompt="", **fields):
    """The fields of StableDiffusionProcessingTxt2Img the axes read or write."""
    p = types.SimpleNamespace(prompt=prompt, negative_prompt="", hr_prompt="", all_prompts=None, all_hr_prompts=None, styles=[])
    for key, value in fields.items():
        setattr(p, key, value)
    return p


def install(lora_dir=None, models_path="/webui/models", with_xyz=True):
    """Put the stand-in into sys.modules; returns a namespace with the recorded callbacks and parts.
    Callers undo it (tests use monkeypatch through `modules_dict`)."""
    callbacks = types.SimpleNamespace(tabs=[], settings=[], before_ui=[])
    script_callbacks = types.ModuleType("modules.script_callbacks")
    script_callbacks.on_ui_tabs = callbacks.tabs.append
    script_callbacks.on_ui_settings = callbacks.settings.append
    script_callbacks.on_before_ui = callbacks.before_ui.append
    shared = types.ModuleType("modules.shared")
    shared.opts, shared.OptionInfo = Opts(), OptionInfo
    shared.cmd_opts = types.SimpleNamespace(lora_dir=str(lora_dir) if lora_dir else None)
    paths = types.ModuleType("modules.paths")
    paths.models_path = models_path
    sd_models = types.ModuleType("modules.sd_models")
    sd_models.unloaded = []
    sd_models.unload_model_weights = lambda *args: sd_models.unloaded.append(args)
    scripts = types.ModuleType("modules.scripts")
    scripts.scripts_data = []
    xyz = None
    if with_xyz:
        xyz, data = make_xyz_module()
        scripts.scripts_data.append(ScriptClassData(type("Other", (), {"__module__": "other.py"}), "/webui/scripts/other.py", "/webui", types.ModuleType("other.py")))
        scripts.scripts_data.append(data)
    modules = types.ModuleType("modules")
    modules.__path__ = []  # a package, so `from modules import x` finds the submodules below
    parts = {"script_callbacks": script_callbacks, "shared": shared, "paths": paths, "sd_models": sd_models, "scripts": scripts}
    modules_dict = {"modules": modules}
    for name, module in parts.items():
        setattr(modules, name, module)
        modules_dict[f"modules.{name}"] = module
    return types.SimpleNamespace(callbacks=callbacks, shared=shared, scripts=scripts, sd_models=sd_models, paths=paths, xyz=xyz, modules_dict=modules_dict)


def install_into_sys_modules(**kwargs):
    webui = install(**kwargs)
    sys.modules.update(webui.modules_dict)
    return webui
