"""The Train tab's form, charts and run view helpers (the page itself: test_browser.py)."""

import pytest

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.monitor import RunView
from lora_gradio.ui.charts import MAX_POINTS, line_chart
from lora_gradio.ui.train_form import SECTIONS, format_number, from_widget, settings_from_widgets, to_widget
from lora_gradio.ui.train_run import resume_note, status_html


def test_every_setting_is_on_the_form_once():
    keys = [key for _, _, section, _ in SECTIONS for key in section]
    assert sorted(keys) == sorted(cfg.settings_fields()) and len(keys) == len(set(keys))


def _round_trip(settings):
    keys = list(cfg.settings_fields())
    return settings_from_widgets(keys, [to_widget(k, getattr(settings, k)) for k in keys])


def test_widget_values_round_trip():
    assert _round_trip(cfg.defaults()) == cfg.defaults()
    varied = cfg.apply_overrides(cfg.defaults(), [
        "unet_lr=2e-4", "text_encoder_lr=0", "min_snr_gamma=3.5", "optimizer=Prodigy", "optimizer_args=decouple=True d_coef=2",
        "sample_prompts=a, b | c", "max_token_length=150", "lora_type=LoCon", "flip_aug=true",
        'custom_dataset=[{"folder": "good", "num_repeats": 3}, {"folder": "reg", "is_reg": true, "flip_aug": false}]',
    ])
    assert _round_trip(varied) == varied


def test_numbers_read_as_the_guide_writes_them():
    assert format_number(5e-4) == "5e-4" and format_number(1e-4) == "1e-4" and format_number(2.5e-5) == "2.5e-5"
    assert format_number(0.05) == "0.05" and format_number(0.0) == "0" and format_number(1.0) == "1"


def test_bad_widget_values_say_what_to_do():
    with pytest.raises(UserError, match="unet_lr"):
        from_widget("unet_lr", "fast")
    with pytest.raises(UserError, match="whole number"):
        from_widget("network_dim", 16.5)
    with pytest.raises(UserError, match="whole number"):
        from_widget("network_dim", None)
    with pytest.raises(UserError, match="num_repeats of folder 'a'"):
        from_widget("custom_dataset", [["a", "lots", "false", "", ""]])
    with pytest.raises(UserError, match="true or false"):
        from_widget("custom_dataset", [["a", "2", "maybe", "", ""]])
    keys = list(cfg.settings_fields())
    values = [to_widget(k, getattr(cfg.defaults(), k)) for k in keys]
    values[keys.index("unet_lr")] = "5"
    with pytest.raises(UserError, match="far too high"):
        settings_from_widgets(keys, values)


def test_folder_rows_skip_empty_ones_and_accept_gradio3_values():
    rows = {"headers": ["folder"], "data": [["", "", "false", "", ""], ["good", "3", "no", "1", "yes"]]}
    assert from_widget("custom_dataset", rows) == [{"folder": "good", "is_reg": False, "num_repeats": 3, "keep_tokens": 1, "flip_aug": True}]


def test_line_chart_scales_and_thins():
    empty = line_chart("loss", [], {}, "c")
    assert "no steps yet" in empty and "data-points='0'" in empty
    xs = list(range(1, 2001))
    html = line_chart("lr", xs, {"unet": [x * 1e-6 for x in xs], "text_encoder": [1e-4] * 2000}, "c")
    assert "data-points='2000'" in html and html.count("<polyline") == 2 and "text_encoder" in html
    points = html.split("points='")[1].split("'")[0].split()
    assert len(points) <= MAX_POINTS + 1
    assert "2.0e-03" in html  # the highest rate labels the axis


def test_status_and_resume_texts():
    assert "No training has run" in status_html(RunView(None))
    view = RunView(None, resumable={"epoch": 3, "global_step": 12, "saved_at": 0})
    assert "epoch 3, step 12" in resume_note(view) and resume_note(RunView(None)) == ""


def _train_tab_handler(blocks, name, setting=None):
    functions = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns
    found = list({id(f.fn): f.fn for f in functions if getattr(f.fn, "__qualname__", "").startswith(f"build_train_tab.<locals>.{name}")
                  and getattr(f.fn, "setting", None) == setting}.values())  # one function may serve several events
    assert len(found) == 1, name
    return found[0]


def test_the_form_is_never_saved_into_a_project_it_was_not_loaded_from(tmp_path):
    """Gradio 3 can drop a project change, leaving another project's settings on the form."""
    from lora_gradio.engine.project import Projects
    from lora_gradio.ui.page import build_page

    projects = Projects(tmp_path / "Loras")
    for name, dim in (("a", 8), ("b", 32)):
        cfg.save_settings(projects.create(name), cfg.apply_overrides(cfg.defaults(), [f"network_dim={dim}", "network_alpha=4"]))
    blocks = build_page(projects.root)
    load_project, save_alpha = _train_tab_handler(blocks, "load_project"), _train_tab_handler(blocks, "autosave_for", "network_alpha")
    loaded = load_project("a")
    assert loaded[-1] == "a"
    keys = [key for _, _, section, _ in SECTIONS for key in section]  # the form's order
    alpha = loaded[2:-1][keys.index("network_alpha")]  # a's value, as the form shows it

    message, _ = save_alpha("b", "a", 2)  # the list says b, the form still shows a
    assert "nothing was saved" in message
    assert cfg.load_settings(projects.open("b")).network_alpha == 4
    message, _ = save_alpha("b", None, 2)  # nothing loaded yet
    assert "nothing was saved" in message and cfg.load_settings(projects.open("b")).network_alpha == 4

    message, _ = save_alpha("a", "a", 2)
    saved = cfg.load_settings(projects.open("a"))
    assert alpha == 4 and "Saved" in message and saved.network_alpha == 2 and saved.network_dim == 8  # only the field left is written
    message, _ = save_alpha("a", "a", None)  # an emptied number field
    assert "network_alpha" in message and cfg.load_settings(projects.open("a")).network_alpha == 2
