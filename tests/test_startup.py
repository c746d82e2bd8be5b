import json
import subprocess
import sys
import urllib.error
import urllib.request

from tests.appserver import REPO, AppServer

HEAVY = ["torch", "diffusers", "transformers", "onnxruntime", "fiftyone", "accelerate", "lycoris"]


def test_importing_the_package_and_building_the_page_stays_light(tmp_path):
    code = (
        "import sys, json, lora_gradio, lora_gradio.cli, lora_gradio.engine.project, lora_gradio.engine.jobs, "
        "lora_gradio.engine.images, lora_gradio.engine.archive, lora_gradio.engine.uploads\n"
        "before = 'gradio' in sys.modules\n"
        "from lora_gradio.ui import build_ui\n"
        f"build_ui({str(tmp_path)!r})\n"
        f"print(json.dumps({{'gradio_before_ui': before, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {"gradio_before_ui": False, "heavy": []}


def test_page_serves_and_only_serves_files_from_the_root(tmp_path):
    root = tmp_path / "Loras"
    inside = root / "p" / "dataset" / "x.txt"
    inside.parent.mkdir(parents=True)
    inside.write_text("inside")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    server = AppServer(sys.executable, root)
    try:
        with urllib.request.urlopen(server.url) as response:
            assert response.status == 200
        prefix = "gradio_api/file=" if _gradio_major() >= 5 else "file="
        with urllib.request.urlopen(server.url + prefix + str(inside)) as response:
            assert response.read() == b"inside"
        for path in (outside, REPO / "pyproject.toml", "/etc/passwd"):
            try:
                urllib.request.urlopen(server.url + prefix + str(path))
                raise AssertionError(f"{path} was served")
            except urllib.error.HTTPError as err:
                assert err.code in (403, 404)
    finally:
        server.stop()


def test_auth_protects_the_page(tmp_path):
    server = AppServer(sys.executable, tmp_path, ["--auth", "me:s3cret"])
    try:
        try:
            urllib.request.urlopen(server.url + "config")
            raise AssertionError("config served without login")
        except urllib.error.HTTPError as err:
            assert err.code in (401, 403)
    finally:
        server.stop()


def test_share_without_auth_warns_loudly_and_with_auth_does_not(tmp_path):
    # No internet here, so the tunnel itself fails; the page still runs locally.
    outputs = {}
    for args in (["--share"], ["--share", "--auth", "me:pw"]):
        server = AppServer(sys.executable, tmp_path, args)
        outputs[len(args)] = server.stop()
    assert "ANYONE who gets the public link" in outputs[1]
    assert "ANYONE" not in outputs[3]


def _gradio_major() -> int:
    import gradio

    return int(gradio.__version__.split(".")[0])
