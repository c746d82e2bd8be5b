"""The Train tab: the guide's settings (saved to the project as they change), presets, the checks
before a run (train_checks.py) and the run itself (train_run.py)."""

from __future__ import annotations

import time

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train import config as cfg
from lora_gradio.ui import compat
from lora_gradio.ui.common import escape, ok, open_project, shown_errors, warn
from lora_gradio.ui.compat import gr
from lora_gradio.ui.train_checks import calculator_text, data_check_text, memory_check_text
from lora_gradio.ui.train_form import build_settings_form, from_widget, settings_from_widgets, to_widget
from lora_gradio.ui.train_run import build_run_controls, build_run_view

SAVED_HINT = "Changes are saved to the project's settings file as you make them."


def build_train_tab(blocks, projects: Projects, project_dropdown, webui=None) -> None:
    from lora_gradio.engine.train.presets import list_presets

    gr.Markdown(
        "Every setting of the guide, with its advice. The command line's `train NAME` reads the same settings file. "
        "Start when the checks below are happy."
    )
    with gr.Accordion("Presets and kohya's files", open=False, elem_id="lg-train-presets"):
        with gr.Row():
            preset = gr.Dropdown(list_presets(projects.root), label="Preset (shared by every project)", elem_id="lg-preset", allow_custom_value=False)
            load_preset = gr.Button("Load preset", elem_id="lg-preset-load")
            preset_name = gr.Textbox(label="Save these settings as", placeholder="character 16-8", elem_id="lg-preset-name")
            save_preset = gr.Button("Save preset", elem_id="lg-preset-save")
        gr.Markdown("kohya's `training_config.toml` + `dataset_config.toml` (what the guide's notebook wrote): import them into this project, or export this project's settings to run kohya's scripts.")
        with gr.Row():
            kohya_upload = gr.File(label="kohya's training_config.toml (and dataset_config.toml)", file_count="multiple", file_types=[".toml"], elem_id="lg-kohya-upload")
            with gr.Column():
                import_kohya = gr.Button("Import into this project", elem_id="lg-kohya-import")
                export_kohya = gr.Button("Export kohya's files", elem_id="lg-kohya-export")
                kohya_files = gr.File(label="Exported", file_count="multiple", interactive=False, elem_id="lg-kohya-files")
        kohya_message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-kohya-message")
    form = build_settings_form()

    with gr.Accordion("Check and start", open=True, elem_id="lg-train-checks"):
        with gr.Row():
            with gr.Column(scale=3):
                calculator = gr.Markdown(elem_id="lg-train-calc")
                check_result = gr.Markdown(elem_id="lg-train-check-result")
            # The buttons sit in a column of their own: blocks that a save refreshes are never above
            # them, so a click that ends a field's edit (the save runs on blur) cannot miss its button.
            with gr.Column(scale=1, min_width=260):
                controls = build_run_controls(webui)
                with gr.Row():
                    check_data = gr.Button("Check the dataset", elem_id="lg-train-check-data")
                    check_memory = gr.Button("Check GPU memory", elem_id="lg-train-check-memory")
                settings_message = gr.Markdown(SAVED_HINT, elem_classes=["lg-message"], elem_id="lg-train-settings-message")

    # Which project's settings the form shows. Gradio 3 drops a project change that comes while the
    # last one is still loading, so the form can show another project's settings than the list;
    # saving them would overwrite this project's. Everything that saves the form checks this first.
    shown = gr.State(None)
    form_inputs = [shown, *form.widgets]

    def require_shown(project, shown_name) -> None:
        if shown_name != project.name:
            raise UserError(
                f"The form shows the settings of {shown_name or 'no project yet'}, not of {project.name}: "
                f"nothing was saved. Choose {project.name} in the Project list again to load its settings."
            )

    def save_form(project, shown_name, *values) -> cfg.TrainSettings:
        require_shown(project, shown_name)
        settings = settings_from_widgets(form.keys, list(values))
        cfg.save_settings(project, settings)
        return settings

    build_run_view(blocks, projects, project_dropdown, controls, save_form, form_inputs, webui=webui)

    def form_values(settings: cfg.TrainSettings) -> list:
        return [to_widget(key, getattr(settings, key)) for key in form.keys]

    def autosave_for(key: str):
        """Save one field. Only its own value: a field left while a preset or an import loads must not
        write the form's older values over what they saved."""

        @shown_errors(2)
        def autosave(project_name, shown_name, value):
            project = open_project(projects, project_name)
            require_shown(project, shown_name)
            settings = cfg.update_settings(project, {key: from_widget(key, value)})
            return ok(f"Saved to `{escape(project.settings_file.name)}` at {time.strftime('%H:%M:%S')}."), calculator_text(project, settings)

        autosave.setting = key
        return autosave

    @shown_errors(3 + len(form.keys))
    def autosave_model(project_name, shown_name, value):
        """The base model saves like any field, and may bring its family's defaults (SD 1.5 <-> SDXL): the
        form then shows them, with a sentence saying what changed."""
        project = open_project(projects, project_name)
        require_shown(project, shown_name)
        notes: list[str] = []
        settings = cfg.update_settings(project, {"training_model": from_widget("training_model", value)}, notes)
        text = ok(f"Saved to `{escape(project.settings_file.name)}` at {time.strftime('%H:%M:%S')}." + "".join(f" {escape(n)}" for n in notes))
        return [text, calculator_text(project, settings), *form_values(settings), project.name]

    def load_project(project_name):
        try:
            project = open_project(projects, project_name)
            settings = cfg.load_settings(project)
        except UserError as exc:
            return [warn(escape(str(exc))), gr.update(), *[gr.update()] * len(form.keys), None]
        return [SAVED_HINT, calculator_text(project, settings), *form_values(settings), project.name]

    @shown_errors(3 + len(form.keys))
    def apply_preset(project_name, name):
        from lora_gradio.engine.train.presets import load_preset as read_preset

        if not name:
            raise UserError("Pick a preset first (or save one).")
        project = open_project(projects, project_name)
        settings = read_preset(projects.root, name)
        cfg.save_settings(project, settings)
        return [ok(f"Loaded preset **{escape(name)}** into this project's settings."), calculator_text(project, settings), *form_values(settings), project.name]

    @shown_errors(2)
    def store_preset(name, *values):
        from lora_gradio.engine.train.presets import list_presets as names, save_preset as write_preset

        settings = settings_from_widgets(form.keys, list(values))
        path = write_preset(projects.root, name, settings)
        return ok(f"Saved preset **{escape(path.stem)}** (for every project under this root)."), gr.update(choices=names(projects.root), value=path.stem)

    @shown_errors(1)
    def run_data_check(project_name, *values):
        project = open_project(projects, project_name)
        return data_check_text(project, save_form(project, *values))

    @shown_errors(1)
    def run_memory_check(project_name, *values):
        project = open_project(projects, project_name)
        return memory_check_text(project, save_form(project, *values))

    @shown_errors(4 + len(form.keys))
    def import_files(project_name, uploaded, shown_name, *values):
        from lora_gradio.engine.train import kohya

        project = open_project(projects, project_name)
        training, dataset = kohya.split_uploaded(compat.uploaded_paths(uploaded))
        # What kohya's files do not describe keeps this project's values (the form's, once it shows them).
        base = settings_from_widgets(form.keys, list(values)) if shown_name == project.name else cfg.load_settings(project)
        settings, notes = kohya.import_kohya(training, dataset, project=project, base=base)
        cfg.save_settings(project, settings)
        text = ok("Imported kohya's settings into this project.") + "".join(f"\n- {escape(note)}" for note in notes)
        return [text, SAVED_HINT, calculator_text(project, settings), *form_values(settings), project.name]

    @shown_errors(2)
    def export_files(project_name, *values):
        from lora_gradio.engine.train.kohya import export_kohya as write_kohya

        from lora_gradio.engine.train.kohya import kohya_command

        project = open_project(projects, project_name)
        settings = save_form(project, *values)
        paths = write_kohya(project, settings, project.config_dir / "kohya")
        return ok(f"Wrote kohya's files to `{escape(paths[0].parent)}`: `{escape(kohya_command(settings, paths[0], project))}` runs the same training."), [str(p) for p in paths]

    loaded_outputs = [settings_message, calculator, *form.widgets, shown]
    for key, widget in zip(form.keys, form.widgets):
        # Typing fields save when left (not on every key), choices and tables as soon as they change.
        event = compat.listener(widget, "blur" if isinstance(widget, (gr.Textbox, gr.Number)) else "input")
        if key == "training_model":
            event(autosave_model, inputs=[project_dropdown, shown, widget], outputs=loaded_outputs, show_progress="hidden")
        else:
            event(autosave_for(key), inputs=[project_dropdown, shown, widget], outputs=[settings_message, calculator], show_progress="hidden")
    project_dropdown.change(load_project, inputs=[project_dropdown], outputs=loaded_outputs)
    blocks.load(load_project, inputs=[project_dropdown], outputs=loaded_outputs)
    load_preset.click(apply_preset, inputs=[project_dropdown, preset], outputs=loaded_outputs)
    save_preset.click(store_preset, inputs=[preset_name, *form.widgets], outputs=[settings_message, preset])
    import_kohya.click(import_files, inputs=[project_dropdown, kohya_upload, *form_inputs], outputs=[kohya_message, *loaded_outputs], **compat.upload_event_options())
    export_kohya.click(export_files, inputs=[project_dropdown, *form_inputs], outputs=[kohya_message, kohya_files])
    check_data.click(run_data_check, inputs=[project_dropdown, *form_inputs], outputs=[check_result])
    check_memory.click(run_memory_check, inputs=[project_dropdown, *form_inputs], outputs=[check_result])
