"""The UI must build under the WebUIs' Gradio: 3.41.2 (AUTOMATIC1111) and 4.40.0 (Forge), each in an
environment with that WebUI's pins (the page itself is driven in test_browser)."""

import pytest

from tests.appserver import FORGE_PYTHON, GRADIO3_PYTHON, run_under

WEBUI_GRADIOS = [
    pytest.param(GRADIO3_PYTHON, "3.41.2", id="gradio-3.41.2", marks=pytest.mark.gradio3),
    pytest.param(FORGE_PYTHON, "4.40.0", id="forge-gradio-4.40.0", marks=pytest.mark.forge),
]


@pytest.mark.parametrize("python, version", WEBUI_GRADIOS)
def test_ui_builds_under_the_webuis_gradio(tmp_path, python, version):
    code = (
        "import gradio, json\n"
        "from lora_gradio.ui import build_ui\n"
        f"blocks = build_ui({str(tmp_path)!r})\n"
        "ids = [b.elem_id for b in blocks.blocks.values() if getattr(b, 'elem_id', None)]\n"
        "timers = [b for b in blocks.blocks.values() if type(b).__name__ == 'Timer']\n"
        "deps = blocks.get_config_file()['dependencies']\n"
        "loops = [d for d in deps if d.get('every')]\n"
        "scripts = ' '.join(d.get('js') or '' for d in deps)\n"
        "print(json.dumps({'gradio': gradio.__version__, 'ids': ids, 'timers': len(timers), 'loops': len(loops), 'scripts': scripts}))\n"
    )
    result = run_under(python, code, timeout=120, what=f"Gradio {version}")
    assert result["gradio"] == version
    # Live refreshes are never `every=` loops: a loop holds a queue worker while the page is open and
    # keeps polling whatever project it started with. 4.40 has gr.Timer; on 3.41 the page presses
    # hidden buttons.
    assert result["loops"] == 0
    ticks = [elem_id for elem_id in result["ids"] if elem_id.startswith("lg-tick-")]
    if version.startswith("3."):
        assert len(ticks) >= 4 and all(f"#{elem_id}'" in result["scripts"] for elem_id in ticks)
    else:
        assert ticks == [] and result["timers"] >= 4
    for elem_id in ("lg-project", "lg-create-project", "lg-job-panel", "lg-upload", "lg-counts", "lg-tab-train", "lg-tab-test"):
        assert elem_id in result["ids"]
