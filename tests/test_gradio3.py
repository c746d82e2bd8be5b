"""The UI must build under the WebUI's Gradio 3.41.2 (the page itself is driven in test_browser)."""

import pytest

from tests.appserver import run_under_gradio3

pytestmark = pytest.mark.gradio3


def test_ui_builds_under_gradio_3_41_2(tmp_path):
    code = (
        "import gradio, json\n"
        "from lora_gradio.ui import build_ui\n"
        f"blocks = build_ui({str(tmp_path)!r})\n"
        "ids = [b.elem_id for b in blocks.blocks.values() if getattr(b, 'elem_id', None)]\n"
        "loops = [d for d in blocks.dependencies if d.get('every')]\n"
        "scripts = ' '.join(d.get('js') or '' for d in blocks.dependencies)\n"
        "print(json.dumps({'gradio': gradio.__version__, 'ids': ids, 'loops': len(loops), 'scripts': scripts}))\n"
    )
    result = run_under_gradio3(code, timeout=120)
    assert result["gradio"] == "3.41.2"
    # Live refreshes are presses of hidden buttons by the page, not `every=` loops: a loop holds a
    # queue worker while the page is open and keeps polling whatever project it started with.
    assert result["loops"] == 0
    ticks = [elem_id for elem_id in result["ids"] if elem_id.startswith("lg-tick-")]
    assert len(ticks) >= 4 and all(f"#{elem_id}'" in result["scripts"] for elem_id in ticks)
    for elem_id in ("lg-project", "lg-create-project", "lg-job-panel", "lg-upload", "lg-counts", "lg-tab-train", "lg-tab-test"):
        assert elem_id in result["ids"]
