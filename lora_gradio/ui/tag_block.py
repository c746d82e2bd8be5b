"""Dataset step 3: tag the images with the WD tagger (anime) or caption them with BLIP (photos), as a job."""

from __future__ import annotations

from typing import Any

from lora_gradio.engine import jobs
from lora_gradio.engine.project import Projects
from lora_gradio.ui.common import escape, ok, open_project, shown_errors
from lora_gradio.ui.compat import gr

WD, BLIP = "WD tagger (anime art: booru tags)", "BLIP (photos: one sentence)"
EXISTING = ["skip", "append", "overwrite"]


def preset_fields(name: str) -> tuple[str, str, float, int]:
    """What a tagger choice button fills in: (WD tagger, second WD tagger, threshold, batch size; 0 = automatic)."""
    from lora_gradio.engine.tagger import tagger_preset

    preset = tagger_preset(name)
    return preset.models[0], preset.second_model, preset.general_threshold, preset.batch_size or 0


def tag_job_kwargs(method: str, wd_model: str, wd_second: str, threshold: float, characters: bool, character_threshold: float,
                   blacklist: str, rating: bool, blip_model: str, min_length: float, max_length: float, beams: float, existing: str,
                   batch_size: float | None = None) -> tuple[str, str, dict[str, Any]]:
    """(engine function, job title, its arguments) for the chosen method; the engine checks the values.

    A WD batch size of 0 (or empty) leaves it to the engine (the model's fixed batch, else 32)."""
    from lora_gradio.engine.tagger import DEFAULT_BLIP_MODEL, DEFAULT_WD_MODEL

    if method == BLIP:
        kwargs = {"model": (blip_model or "").strip() or DEFAULT_BLIP_MODEL, "min_length": int(min_length), "max_length": int(max_length), "num_beams": int(beams), "existing": existing}
        return "lora_gradio.engine.tagger:caption_images", "Caption images (BLIP)", kwargs
    models = [m.strip() for m in (wd_model, wd_second) if m and m.strip()] or [DEFAULT_WD_MODEL]
    kwargs = {
        "models": models,
        "general_threshold": float(threshold),
        "character_threshold": float(character_threshold) if characters else None,
        "blacklist": blacklist or "",
        "include_rating": bool(rating),
        "existing": existing,
    }
    if batch_size not in (None, "") and int(batch_size) != 0:
        kwargs["batch_size"] = int(batch_size)
    return "lora_gradio.engine.tagger:tag_images", "Tag images (WD)", kwargs


def build_tag_block(projects: Projects, project_dropdown: "gr.Dropdown") -> None:
    with gr.Accordion("Tag or caption the images", open=False, elem_id="lg-tag"):
        _build_controls(projects, project_dropdown)


def _build_controls(projects: Projects, project_dropdown: "gr.Dropdown") -> None:
    from lora_gradio.engine.tagger import (
        CHARACTER_THRESHOLD_WHEN_ON,
        DEFAULT_BLACKLIST,
        DEFAULT_BLIP_MODEL,
        DEFAULT_TAGGER_PRESET,
        NOTEBOOK_WD_MODELS,
        TAGGER_PRESETS,
    )

    gr.Markdown(
        "The guide tags anime art with the WD tagger (booru tags, one per concept) and captions photos with BLIP (a sentence). "
        "Images that already have a caption are skipped unless you choose otherwise, so a stopped run continues where it was. "
        "Models download once from Hugging Face; a local folder works too (`model.onnx` + `selected_tags.csv`). "
        "The buttons fill in the taggers and threshold of the guide's SD 1.5 notebook or of the current SDXL Dataset Maker "
        "(two large taggers: slower, more tags); the fields stay editable."
    )
    method = gr.Radio([WD, BLIP], value=WD, label="Method", elem_id="lg-tag-method")
    start_fields = preset_fields(DEFAULT_TAGGER_PRESET)
    with gr.Group(visible=True) as wd_group:
        with gr.Row():
            choices = [(gr.Button(preset.label, size="sm", elem_id=f"lg-tag-preset-{preset.key}"), preset.key) for preset in TAGGER_PRESETS]
        with gr.Row():
            wd_model = gr.Textbox(value=start_fields[0], label="WD tagger (repo id or folder)", elem_id="lg-tag-model")
            wd_second = gr.Textbox(value=start_fields[1], label="Second WD tagger (optional: adds only tags the first missed)", placeholder=NOTEBOOK_WD_MODELS[1], elem_id="lg-tag-model2")
            batch = gr.Number(value=start_fields[3], precision=0, label="Batch size (0: automatic)", elem_id="lg-tag-batch")
        with gr.Row():
            threshold = gr.Slider(0.05, 1.0, value=start_fields[2], step=0.01, label="Tag threshold", info="Lower finds more tags and more mistakes; the SD 1.5 guide uses 0.35, the SDXL Dataset Maker 0.25.", elem_id="lg-tag-threshold")
            characters = gr.Checkbox(value=False, label="Add character names", info="Off in the guide: the activation tag stands for the character.", elem_id="lg-tag-characters")
            character_threshold = gr.Slider(0.5, 1.0, value=CHARACTER_THRESHOLD_WHEN_ON, step=0.01, label="Character threshold")
        with gr.Row():
            blacklist = gr.Textbox(value=", ".join(DEFAULT_BLACKLIST), label="Never write these tags", lines=2, elem_id="lg-tag-blacklist")
            rating = gr.Checkbox(value=False, label="Add the rating tag (general, sensitive, ...)")
    with gr.Group(visible=False) as blip_group:
        with gr.Row():
            blip_model = gr.Textbox(value=DEFAULT_BLIP_MODEL, label="BLIP model (repo id or folder)", elem_id="lg-blip-model")
            min_length = gr.Number(value=10, precision=0, label="Min length (tokens)")
            max_length = gr.Number(value=75, precision=0, label="Max length (tokens)")
            beams = gr.Number(value=3, precision=0, label="Beams")
    with gr.Row():
        existing = gr.Radio(EXISTING, value="skip", label="Images that already have a caption", info="skip: leave them (and resume a stopped run); append: add new tags; overwrite: replace", elem_id="lg-tag-existing")
        start = gr.Button("Tag images", variant="primary", elem_id="lg-tag-run")
    message = gr.Markdown(elem_classes=["lg-message"], elem_id="lg-tag-message")

    def switch(chosen: str):
        return gr.update(visible=chosen == WD), gr.update(visible=chosen == BLIP), gr.update(value="Caption images" if chosen == BLIP else "Tag images")

    method.change(switch, inputs=[method], outputs=[wd_group, blip_group, start])

    def filler(key: str):
        def fill():
            return preset_fields(key)

        fill.__name__ = f"fill_tagger_{key}"
        return fill

    for button, key in choices:
        button.click(filler(key), inputs=None, outputs=[wd_model, wd_second, threshold, batch])
    inputs = [method, wd_model, wd_second, threshold, characters, character_threshold, blacklist, rating, blip_model, min_length, max_length, beams, existing, batch]

    @shown_errors(1)
    def begin(project_name, *values):
        project = open_project(projects, project_name)
        func, title, kwargs = tag_job_kwargs(*values)
        job = jobs.start_job(project, "tag", func, kwargs, title=title)
        return ok(f"Started **{escape(title)}** (job `{job.id}`); the top tags show below when it is done.")

    start.click(begin, inputs=[project_dropdown, *inputs], outputs=[message])
