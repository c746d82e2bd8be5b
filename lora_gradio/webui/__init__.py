"""Glue for the AUTOMATIC1111 WebUI and Forge: the tab, its settings, the X/Y/Z plot axes and the
copy into the WebUI's Lora folder.

`scripts/lora_gradio_tab.py` (loaded by the WebUI, again on every Reload UI) calls `register()`.
The axes themselves live in `lora_gradio.webui.xyz`, the copy in `lora_gradio.webui.lora_folder`.
"""

from __future__ import annotations

import os
from pathlib import Path

SETTINGS_SECTION = ("lora_gradio", "LoRA Gradio")
ROOT_OPTION = "lora_gradio_root"
LAYOUT_OPTION = "lora_gradio_layout"
COPY_OPTION = "lora_gradio_copy_to_lora_folder"


def _opts():
    from modules import shared

    return shared.opts


def projects_root(opts) -> str:
    """The root chosen in Settings, else $LORA_GRADIO_ROOT, else ~/Loras."""
    from lora_gradio.engine.project import resolve_root

    chosen = getattr(opts, ROOT_OPTION, "") or os.environ.get("LORA_GRADIO_ROOT") or None
    return str(resolve_root(chosen))


def projects_layout(opts) -> str:
    return getattr(opts, LAYOUT_OPTION, "project") or "project"


def webui_lora_dir() -> Path | None:
    """The folder the WebUI's built-in Lora extension scans: `--lora-dir` (its default is
    models/Lora), else `modules.paths.models_path`/Lora; None outside a WebUI."""
    try:
        from modules import shared

        chosen = getattr(getattr(shared, "cmd_opts", None), "lora_dir", None)
        if chosen:
            return Path(chosen)
    except ImportError:
        return None
    try:
        from modules import paths

        return Path(paths.models_path) / "Lora"
    except (ImportError, AttributeError):
        return None


def current_catalog():
    """The epoch files of the projects under the root chosen in Settings (read anew on each call)."""
    from lora_gradio.webui.xyz import catalog

    opts = _opts()
    return catalog(projects_root(opts), projects_layout(opts))


def copy_enabled() -> bool:
    return bool(getattr(_opts(), COPY_OPTION, False))


class WebUIHooks:
    """What the page may ask of the WebUI it runs in."""

    def unload_checkpoint(self) -> None:
        """Free the GPU memory of the WebUI's loaded model before training (it reloads on the next
        generation). Training itself runs in a process of its own, never inside the WebUI's."""
        from modules import sd_models

        sd_models.unload_model_weights()

    def job_env_note(self) -> "str | None":
        """One sentence for the tab when the jobs run in the extension's own environment (see
        `lora_gradio.webui.job_env`), which this also makes the jobs' Python; None otherwise."""
        from lora_gradio.webui.job_env import use_job_env

        return use_job_env()

    def lora_folder(self) -> Path | None:
        """The WebUI's Lora folder (see `webui_lora_dir`)."""
        return webui_lora_dir()

    def copy_enabled(self) -> bool:
        """Whether Settings asks to copy finished LoRAs into the WebUI's Lora folder."""
        return copy_enabled()

    def copy_loras(self, project, preferred_weight: float = 1.0):
        """Copy the project's epoch files (with `.json` card data and a preview) into the Lora folder;
        `project` is a `Project` or a project name. Returns a `CopyReport` (`.summary()` for the page);
        raises `UserError` with a one-line reason."""
        from lora_gradio.webui.lora_folder import copy_loras

        return copy_loras(self._project(project), webui_lora_dir(), preferred_weight=preferred_weight)

    def after_training(self, project):
        """Call when a training run has finished: copies when the setting is on; None otherwise."""
        return self.copy_loras(project) if copy_enabled() else None

    @staticmethod
    def _project(project):
        if not isinstance(project, str):
            return project
        from lora_gradio.engine.project import Projects

        opts = _opts()
        return Projects(projects_root(opts), projects_layout(opts)).open(project)


def _copy_before_plot(values, found) -> None:
    """The epoch axis's check: with the copy setting on, bring the plotted projects' files into the
    Lora folder first (a failure is printed; the check that follows names what is still missing)."""
    if not copy_enabled():
        return
    from lora_gradio.engine.errors import UserError

    for name in sorted({found.project_of[v] for v in values if v in found.project_of}):
        try:
            report = WebUIHooks().copy_loras(name)
            print(f"LoRA Gradio: {report.summary()}")
        except UserError as exc:
            print(f"LoRA Gradio: {exc}")


def add_xyz_axes(scripts_data=None):
    """Add "LoRA epoch" and "LoRA weight" to the X/Y/Z plot (once): the labels added, or None when
    the X/Y/Z plot script is not loaded."""
    from lora_gradio.webui.xyz import register_axes

    return register_axes(current_catalog, _copy_before_plot, scripts_data)


def register() -> None:
    """Register the tab, its settings and the X/Y/Z axes with the WebUI (call at script import)."""
    from modules import script_callbacks, shared

    from lora_gradio.webui.job_env import use_job_env

    use_job_env()  # jobs started from this WebUI run in the installer's environment when it made one

    def add_settings() -> None:
        section = SETTINGS_SECTION
        shared.opts.add_option(ROOT_OPTION, shared.OptionInfo("", "Projects folder (empty: $LORA_GRADIO_ROOT or ~/Loras); reload the UI after changing", section=section))
        shared.opts.add_option(LAYOUT_OPTION, shared.OptionInfo("project", "Folder layout: 'project' (Loras/NAME/dataset) or 'category' (datasets/NAME)", section=section))
        shared.opts.add_option(COPY_OPTION, shared.OptionInfo(False, "Copy finished LoRAs (with activation text, preferred weight and a preview) into the WebUI's Lora folder; never overwrites files you changed", section=section))

    def add_tab():
        from lora_gradio.ui import build_ui

        blocks = build_ui(projects_root(shared.opts), projects_layout(shared.opts), webui=WebUIHooks())
        return [(blocks, "LoRA Gradio", "lora_gradio")]

    script_callbacks.on_ui_settings(add_settings)
    script_callbacks.on_ui_tabs(add_tab)
    # The X/Y/Z plot is a root script, loaded before extensions: adding at import time makes the axes
    # reach the API (--nowebui) too. If it was not loaded yet, try again just before the UI is built.
    if add_xyz_axes() is None and hasattr(script_callbacks, "on_before_ui"):
        script_callbacks.on_before_ui(add_xyz_axes)
