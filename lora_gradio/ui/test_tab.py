"""The Test tab: compare the saved epochs at several weights on one grid (engine/compare/), and the
values to do the same in the WebUI's X/Y/Z plot, or have a running WebUI render it."""

from __future__ import annotations

from lora_gradio.engine import jobs
from lora_gradio.engine.compare import newest_grid
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.project import Projects
from lora_gradio.ui import compat
from lora_gradio.ui.common import escape, ok, open_project, shown_errors
from lora_gradio.ui.compat import gr

COMPARE_FUNC = "lora_gradio.engine.compare:compare_project"
WEBUI_FUNC = "lora_gradio.engine.compare:send_to_webui_job"
POLL_SECONDS = 2.0
# The order of the fields on the tab; each is a CompareSettings key.
FIELDS = ["prompt", "negative_prompt", "epochs", "weights", "include_base", "seed", "batch", "steps", "cfg_scale", "width", "height"]


def epochs_text(project) -> str:
    from lora_gradio.engine.compare import saved_epochs

    try:
        return "Saved epochs: " + escape(", ".join(path.stem for _, path in saved_epochs(project))) + "."
    except UserError as exc:  # none yet: the engine's sentence says to train first
        return escape(str(exc))


def _overrides(values: list) -> dict:
    data = dict(zip(FIELDS, values))
    for key in ("seed", "batch", "steps", "width", "height"):
        if data[key] is not None:
            data[key] = int(data[key])
    return data


def _widget_value(key: str, value):
    if key == "weights":
        from lora_gradio.engine.compare import format_weight

        return ", ".join(format_weight(w) for w in value)
    return value


def build_test_tab(blocks, projects: Projects, project_dropdown, webui=None) -> None:
    from lora_gradio.engine.compare import CompareSettings
    from lora_gradio.engine.settings_model import field_infos

    info = field_infos(CompareSettings)
    defaults = CompareSettings()
    gr.Markdown(
        "The guide's last step: render the same prompt and seed with every saved epoch (columns) at several LoRA weights (rows). "
        "Pick the earliest epoch that looks right at about 0.7-1 without \"frying\" (artifacts, burnt colours)."
    )
    with gr.Accordion("Compare epochs and weights", open=True, elem_id="lg-compare"):
        found = gr.Markdown(elem_id="lg-compare-found")
        widgets = {}
        with gr.Row():
            widgets["prompt"] = gr.Textbox(label="prompt", lines=2, info=info["prompt"].description, elem_id="lg-compare-prompt")
            widgets["negative_prompt"] = gr.Textbox(value=defaults.negative_prompt, label="negative_prompt", lines=2, info=info["negative_prompt"].description)
        with gr.Row():
            widgets["epochs"] = gr.Textbox(value=defaults.epochs, label="epochs", info=info["epochs"].description, elem_id="lg-compare-epochs")
            widgets["weights"] = gr.Textbox(value=_widget_value("weights", defaults.weights), label="weights", info=info["weights"].description, elem_id="lg-compare-weights")
            widgets["include_base"] = gr.Checkbox(value=defaults.include_base, label="include_base", info=info["include_base"].description)
        with gr.Row():
            for key in ("seed", "batch", "steps", "cfg_scale", "width", "height"):
                widgets[key] = gr.Number(value=getattr(defaults, key), label=key, info=info[key].description, precision=None if key == "cfg_scale" else 0, elem_id=f"lg-compare-{key}")
        with gr.Row():
            render = gr.Button("Render the grid", variant="primary", elem_id="lg-compare-run")
            default_prompt = gr.Button("Fill in the default prompt", elem_id="lg-compare-default-prompt")
        message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-compare-message")
        grid = gr.Image(type="filepath", interactive=False, label="Grid (newest)", elem_id="lg-compare-grid")

    with gr.Accordion("Test in the WebUI (X/Y/Z plot)", open=False, elem_id="lg-xyz"):
        gr.Markdown(
            "In txt2img choose **Script: X/Y/Z plot**, paste the prompt, then set **X type: Prompt S/R** with the epoch values and "
            "**Y type: Prompt S/R** with the weight values (copy the LoRA files into the WebUI's `models/Lora` first). "
            "Inside the WebUI this extension also adds the axes **LoRA epoch** and **LoRA weight**. With a WebUI started with `--api`, "
            "**Send to the WebUI** renders the grid there."
        )
        show_xyz = gr.Button("Show the X/Y/Z values", elem_id="lg-xyz-show")
        xyz_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="lg-xyz-prompt", **compat.copy_button())
        with gr.Row():
            xyz_x = gr.Textbox(label="X values (Prompt S/R: epochs)", elem_id="lg-xyz-x", **compat.copy_button())
            xyz_y = gr.Textbox(label="Y values (Prompt S/R: weights)", elem_id="lg-xyz-y", **compat.copy_button())
        with gr.Row():
            webui_url = gr.Textbox(value="http://127.0.0.1:7860", label="WebUI address (started with --api)", elem_id="lg-xyz-url")
            send = gr.Button("Send to the WebUI", elem_id="lg-xyz-send")
        xyz_message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-xyz-message")
        if webui is not None:
            copy = gr.Button("Copy the epochs to the WebUI's Lora folder", elem_id="lg-copy-loras")
            copy.click(shown_errors(1)(lambda name: ok(escape(webui.copy_loras(open_project(projects, name)).summary()))), inputs=[project_dropdown], outputs=[xyz_message])

    inputs = [widgets[key] for key in FIELDS]

    def checked(project_name, values):
        from lora_gradio.engine.compare import resolve_settings

        project = open_project(projects, project_name)
        overrides = _overrides(list(values))
        resolve_settings(project, overrides)  # every value checked before a job starts
        return project, overrides

    @shown_errors(1)
    def start(project_name, *values):
        project, overrides = checked(project_name, values)
        job = jobs.start_job(project, "compare", COMPARE_FUNC, overrides, title="Compare epochs")
        return ok(f"Rendering the grid (job `{job.id}`); it shows below when it is done.")

    @shown_errors(1)
    def start_webui(project_name, url, *values):
        project, overrides = checked(project_name, values)
        if not (url or "").strip():
            raise UserError("Type the WebUI's address, e.g. http://127.0.0.1:7860 (start it with --api).")
        job = jobs.start_job(project, "compare", WEBUI_FUNC, {"url": url.strip(), **overrides}, title="Compare in the WebUI")
        return ok(f"Sent to {escape(url)} (job `{job.id}`); the grid shows above when the WebUI has rendered it.")

    @shown_errors(4)
    def xyz_values(project_name, *values):
        from lora_gradio.engine.compare import xyz_plan

        project, overrides = checked(project_name, values)
        plan = xyz_plan(project, **overrides)
        return ok("Paste these into the X/Y/Z plot."), plan.prompt, plan.x_values, plan.y_values

    @shown_errors(2)
    def fill_default(project_name):
        from lora_gradio.engine.compare import default_prompt as prompt_of

        return "", prompt_of(open_project(projects, project_name))

    def load_project(project_name):
        from lora_gradio.engine.compare import load_compare_settings

        try:
            project = open_project(projects, project_name)
            saved = load_compare_settings(project)
        except UserError as exc:
            return [escape(str(exc)), *[gr.update()] * (len(FIELDS) + 1)]
        shown = newest_grid(project)
        return [epochs_text(project), *(_widget_value(key, getattr(saved, key)) for key in FIELDS), str(shown) if shown else None]

    def watch_outputs(project_name, memo):
        """The newest grid and the list of epochs, sent only when they changed (a run may end any time)."""
        try:
            project = open_project(projects, project_name)
        except UserError:
            return gr.update(), gr.update()
        shown = newest_grid(project)
        state = (str(shown) if shown else None, epochs_text(project))
        seen = memo.get(project_name, (None, None))
        memo[project_name] = state
        return tuple(gr.update() if old == new else new for old, new in zip(seen, state))

    render.click(start, inputs=[project_dropdown, *inputs], outputs=[message])
    send.click(start_webui, inputs=[project_dropdown, webui_url, *inputs], outputs=[xyz_message])
    show_xyz.click(xyz_values, inputs=[project_dropdown, *inputs], outputs=[xyz_message, xyz_prompt, xyz_x, xyz_y])
    default_prompt.click(fill_default, inputs=[project_dropdown], outputs=[message, widgets["prompt"]])
    project_dropdown.change(load_project, inputs=[project_dropdown], outputs=[found, *inputs, grid])
    blocks.load(load_project, inputs=[project_dropdown], outputs=[found, *inputs, grid])
    compat.poll(blocks, watch_outputs, project_dropdown, [grid, found], seconds=POLL_SECONDS, memory=True)

