"""The testing half: epoch x weight grids on the tiny model, the X/Y/Z strings, the WebUI API payload."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lora_gradio.cli import main as cli_main
from lora_gradio.engine import compare
from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.project import Projects
from lora_gradio.engine.train.config import apply_overrides, load_settings, save_settings
from tests.test_train_run import make_project
from tests.tiny_sd import build_tiny_sd

FAST = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model):
    """A 2-epoch tiny LoRA (high learning rates, so the weights visibly matter)."""
    from lora_gradio.engine.train import loop

    project = make_project(tmp_path_factory.mktemp("root") / "Loras", tiny_model, extra=["unet_lr=0.05", "text_encoder_lr=0.05"])
    loop.train_project(project)
    return project


@pytest.fixture(scope="module")
def grid_run(trained):
    result = compare.compare_project(trained, weights=[0, 0.5, 1], batch=2, save_cells=True, seed=7, **FAST)
    return trained, result


def pixels(image):
    import numpy as np

    return np.asarray(image.convert("RGB")).astype(int)


def fake_epochs(root, name="fake", epochs=(1, 2, 3), captions=("fake_char, 1girl, smile",)):
    """A project with empty epoch files: enough for everything that renders nothing."""
    project = Projects(root).create(name)
    for i, caption in enumerate(captions):
        (project.dataset_dir / f"{i}.txt").write_text(caption)
    project.output_dir.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        (project.output_dir / f"{name}-{epoch:02d}.safetensors").write_bytes(b"")
    return project


# Rendering ----------------------------------------------------------------------------------------


def test_grid_has_labelled_cells_in_the_right_places(grid_run):
    from PIL import Image

    project, result = grid_run
    grid = Image.open(result.grid)
    # 3 columns (no LoRA + 2 epochs) of 2 images of 64 px; 3 rows of 64 px; plus the label strips.
    layout = compare.grid_layout(grid.size, (64, 64), n_columns=3, n_rows=3, batch=2)
    assert layout["cell_w"] == 128 and layout["cell_h"] == 64
    assert grid.size[0] > 3 * 128 and grid.size[1] > 3 * 64
    left, top = layout["left"], layout["top"]
    assert left >= 40 and top >= 12  # room for "weight 0.5" and the epoch names
    px = pixels(grid)
    top_strip, side_strip = px[:top, left:], px[top:, :left]
    assert (top_strip < 128).any() and (side_strip < 128).any()  # text is drawn there
    assert (top_strip == 255).mean() > 0.5 and (side_strip == 255).mean() > 0.5  # on a white strip
    # Every cell in the grid is the saved single image of that epoch, weight and seed.
    cell_dir = Path(result.cells[0]).parent
    columns = ["base"] + result.epochs
    for col, label in enumerate(columns):
        for row, weight in enumerate(result.weights):
            for i, seed in enumerate(result.seeds):
                name = f"base-{seed}.png" if label == "base" else f"{label}-w{compare.format_weight(weight)}-{seed}.png"
                x, y = left + col * 128 + i * 64, top + row * 64
                assert (px[y : y + 64, x : x + 64] == pixels(Image.open(cell_dir / name))).all(), (label, weight, seed)
    record = json.loads(Path(result.record).read_text())
    assert record["epochs"] == ["tiny_char-01", "tiny_char-02"] and record["weights"] == [0, 0.5, 1]
    assert record["seeds"] == [7, 8] and record["prompt"] == result.prompt and record["width"] == 64
    assert Path(result.grid).parent == project.output_dir / "compare"
    assert not list((project.output_dir / "compare").glob(".*.tmp"))  # atomic writes leave nothing behind


def test_weights_and_epochs_change_the_image_and_seeds_are_shared(grid_run):
    from PIL import Image

    _, result = grid_run
    cell_dir = Path(result.cells[0]).parent

    def cell(label, weight, seed=7):
        name = f"base-{seed}.png" if label == "base" else f"{label}-w{compare.format_weight(weight)}-{seed}.png"
        return pixels(Image.open(cell_dir / name))

    # Weight 0 is the base model, for every epoch: the same noise in every cell.
    assert abs(cell("tiny_char-01", 0) - cell("base", None)).max() <= 1
    assert abs(cell("tiny_char-02", 0, 8) - cell("base", None, 8)).max() <= 1
    # Where the weight differs, the image differs; and the epochs differ from each other.
    assert abs(cell("tiny_char-02", 0.5) - cell("tiny_char-02", 1)).max() > 10
    assert abs(cell("tiny_char-01", 0.5) - cell("tiny_char-01", 0)).max() > 10
    assert abs(cell("tiny_char-01", 1) - cell("tiny_char-02", 1)).max() > 10
    # The two images in a cell have their own seeds.
    assert abs(cell("tiny_char-02", 1, 7) - cell("tiny_char-02", 1, 8)).max() > 10


def test_same_settings_render_the_same_grid_and_are_remembered(grid_run):
    from PIL import Image

    project, first = grid_run
    # Settings not given are the ones of the last run (batch 2 there): say batch=1.
    second = compare.compare_project(project, epochs="2", weights="1", include_base=False, seed=7, batch=1, **FAST)
    assert second.grid != first.grid and second.epochs == ["tiny_char-02"] and second.weights == [1.0]
    grid = Image.open(second.grid)
    layout = compare.grid_layout(grid.size, (64, 64), n_columns=1, n_rows=1)
    cell = pixels(grid)[layout["top"]:, layout["left"]:]
    expected = pixels(Image.open(Path(first.cells[0]).parent / "tiny_char-02-w1-7.png"))
    assert abs(cell - expected).max() <= 1
    stored = compare.load_compare_settings(project)
    assert stored.epochs == "2" and stored.weights == [1.0] and stored.include_base is False and stored.batch == 1


def test_cancel_stops_between_cells_and_writes_no_grid(trained):
    class CancelAfter(Progress):
        def __init__(self):
            self.cells = 0

        def update(self, done, total=None, message="", **data):
            self.cells = done

        def cancelled(self):
            return self.cells >= 2

    before = set((trained.output_dir / "compare").glob("*")) if (trained.output_dir / "compare").exists() else set()
    progress = CancelAfter()
    with pytest.raises(Cancelled):
        compare.compare_project(trained, progress=progress, epochs="all", weights=[0.5, 1], include_base=True, batch=1, **FAST)
    assert progress.cells == 2  # the base and one LoRA cell, then it stopped
    after = set((trained.output_dir / "compare").glob("*")) if (trained.output_dir / "compare").exists() else set()
    assert after == before


def test_other_lora_types_render_through_the_same_network(tmp_path, tiny_model):
    from lora_gradio.engine.train import loop

    project = make_project(tmp_path / "Loras", tiny_model, extra=["how_many=1", "lora_type=LoHa", "unet_lr=0.05", "text_encoder_lr=0.05"])
    loop.train_project(project)
    result = compare.compare_project(project, weights=[0, 1], save_cells=True, **FAST)
    from PIL import Image

    cells = {Path(p).name: pixels(Image.open(p)) for p in result.cells}
    assert abs(cells["tiny_char-01-w0-42.png"] - cells["base-42.png"]).max() <= 1
    assert abs(cells["tiny_char-01-w1-42.png"] - cells["base-42.png"]).max() > 10


# Choosing and checking ----------------------------------------------------------------------------


def test_choose_epochs():
    files = [(e, Path(f"x-{e:02d}.safetensors")) for e in (1, 2, 3, 4, 5)]
    epochs = lambda which: [e for e, _ in compare.choose_epochs(files, which)]
    assert epochs("all") == [1, 2, 3, 4, 5]
    assert epochs("every 2") == [2, 4, 5] and epochs("every2") == [2, 4, 5]  # the finished LoRA is always shown
    assert epochs("last 2") == [4, 5]
    assert epochs("1,3") == [1, 3] and epochs("5, 1") == [5, 1] and epochs("2-4") == [2, 3, 4]
    assert epochs([3, 1]) == [3, 1]
    with pytest.raises(UserError, match="Epoch 7 is not saved: the saved epochs are 1, 2, 3, 4, 5"):
        epochs("1, 7")
    with pytest.raises(UserError, match="not an epoch"):
        epochs("first")
    with pytest.raises(UserError, match="train first"):
        compare.choose_epochs([], "all")


def test_bad_input_says_what_to_do(tmp_path):
    fresh = Projects(tmp_path / "Loras").create("fresh")
    with pytest.raises(UserError, match="No saved epochs of fresh .*train first"):
        compare.compare_project(fresh)
    project = fake_epochs(tmp_path / "Loras")
    with pytest.raises(UserError, match="weight 5 is out of range: use weights from -2 to 3"):
        compare.compare_project(project, weights="0.5, 5")
    with pytest.raises(UserError, match="'abc' is not a number"):
        compare.compare_project(project, weights="0.5, abc")
    with pytest.raises(UserError, match="Epoch 9 is not saved"):
        compare.compare_project(project, epochs="9")
    with pytest.raises(UserError, match="seed"):
        compare.compare_project(project, seed=-5)
    with pytest.raises(UserError, match="at most 400 images"):
        compare.compare_project(project, weights=[w / 10 for w in range(30)], batch=8)
    settings = apply_overrides(load_settings(project), [f"training_model={tmp_path / 'nowhere.safetensors'}"])
    save_settings(project, settings)
    with pytest.raises(UserError, match="Cannot find the base model"):
        compare.compare_project(project)
    assert not (project.output_dir / "compare").exists()


def test_default_prompt_puts_the_activation_tag_first(tmp_path):
    project = fake_epochs(tmp_path / "Loras", captions=["zed, 1girl, smile", "zed, 1girl, red", "zed, 1girl, smile, blue"])
    assert compare.default_prompt(project) == "zed, 1girl, smile, blue, red"
    assert compare.default_prompt(project, n=1) == "zed, 1girl"
    project.write_section("tags", {"activation": "my_char, smile"})
    assert compare.default_prompt(project, n=2) == "my_char, smile, 1girl, zed"
    empty = Projects(tmp_path / "Loras").create("empty")
    assert compare.default_prompt(empty) == ""


# X/Y/Z plot strings -------------------------------------------------------------------------------


def test_sr_strings_match_the_example_prompt():
    files = [(e, Path(f"char-{e:02d}.safetensors")) for e in (1, 2, 3)]
    assert compare.epoch_sr_values(files) == "-01, -02, -03"
    assert compare.epoch_sr_values([Path("char-02.safetensors"), Path("char-01.safetensors")]) == "-02, -01"
    assert compare.weight_sr_values([0.5, 0.6, 1.0]) == ":0.5, :0.6, :1"
    assert compare.example_prompt("char", 1, 0.5, "char, 1girl") == "<lora:char-01:0.5> char, 1girl"
    assert compare.example_prompt("char", "001", 1.0, "x") == "<lora:char-001:1> x"
    strings = compare.xyz_strings("char", files, [0.5, 0.75, 1], "char, 1girl")
    assert strings.prompt == "<lora:char-01:0.5> char, 1girl"
    assert strings.x_values == "-01, -02, -03" and strings.y_values == ":0.5, :0.75, :1"
    # The WebUI's Prompt S/R: the first value must occur in the prompt; every occurrence is replaced.
    for values in (strings.x_values, strings.y_values):
        first = values.split(", ")[0]
        assert strings.prompt.count(first) == 1
    x2 = strings.prompt.replace("-01", "-03").replace(":0.5", ":0.75")
    assert x2 == "<lora:char-03:0.75> char, 1girl"


def test_sr_strings_avoid_values_that_occur_twice():
    # '(smile:0.5)' holds ':0.5', and a name ending in '-01' holds '-01': use the longer, unique forms.
    files = [(1, Path("v-01-01.safetensors")), (2, Path("v-01-02.safetensors"))]
    strings = compare.xyz_strings("v-01", files, [0.5, 1], "(smile:0.5)")
    assert strings.prompt == "<lora:v-01-01:0.5> (smile:0.5)"
    assert strings.x_values == "v-01-01, v-01-02" and strings.y_values == ":0.5>, :1>"
    for values in (strings.x_values, strings.y_values):
        assert strings.prompt.count(values.split(", ")[0]) == 1
    assert compare.xyz._csv(['a,b', 'c"d', "e"]) == '"a,b", "c""d", e'


def test_cli_xyz_prints_the_strings(tmp_path, capsys):
    fake_epochs(tmp_path / "Loras")
    code = cli_main(["--root", str(tmp_path / "Loras"), "compare", "fake", "--xyz", "--epochs", "every2", "--weights", "0.5,1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Prompt: <lora:fake-02:0.5> fake_char, 1girl, smile" in out
    assert "X values: -02, -03" in out and "Y values: :0.5, :1" in out
    code = cli_main(["--root", str(tmp_path / "Loras"), "compare", "fake", "--weights", "0.5,9"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: compare: weights") and "out of range" in err and err.count("\n") == 1


def test_cli_renders_a_grid(trained, capsys):
    code = cli_main(["--root", str(trained.root), "compare", "tiny_char", "--epochs", "1", "--weights", "1", "--steps", "1",
                     "--width", "64", "--height", "64", "--no-base", "--seed", "3", "--batch", "1"])
    out = capsys.readouterr().out
    assert code == 0
    line = out.strip().splitlines()[-1]
    assert "Compared 1 epoch(s) x 1 weight(s)" in line and line.endswith(".png")
    assert Path(line.rsplit(": ", 1)[1]).is_file()


# The WebUI API ------------------------------------------------------------------------------------

A1111_AXES = ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R", "Prompt order", "Sampler"]
FORGE_AXES = [[a, a] for a in ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Distilled CFG Scale", "Prompt S/R"]]


class FakeWebui:
    """Speaks the few routes `send_to_webui` uses, and applies Prompt S/R like the X/Y/Z plot does."""

    def __init__(self, axes, loras, extra_args=0):
        self.axes, self.loras, self.extra_args = axes, list(loras), extra_args
        self.posts: list[tuple[str, dict]] = []
        self.refreshed = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, data, status=200):
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802
                path = self.path.split("?")[0]
                if path == "/sdapi/v1/loras":
                    return self._send([{"name": n, "alias": n, "path": f"/m/{n}.safetensors"} for n in outer.visible])
                if path == "/sdapi/v1/script-info":
                    defaults = [0, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False] + [True] * outer.extra_args
                    args = [{"label": f"arg{i}", "value": v} for i, v in enumerate(defaults)]
                    args[0]["choices"] = outer.axes
                    return self._send([
                        {"name": "x/y/z plot", "is_alwayson": False, "is_img2img": True, "args": []},
                        {"name": "x/y/z plot", "is_alwayson": False, "is_img2img": False, "args": args},
                    ])
                if path == "/sdapi/v1/progress":
                    return self._send({"progress": 0.5})
                self._send({"detail": "Not Found"}, 404)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                outer.posts.append((self.path, body))
                if self.path == "/sdapi/v1/refresh-loras":
                    outer.refreshed += 1
                    outer.visible = outer.loras
                    return self._send(None)
                if self.path == "/sdapi/v1/txt2img":
                    return self._send(outer.txt2img(body))
                self._send({"detail": "Not Found"}, 404)

            def log_message(self, *args):
                pass

        self.visible: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def txt2img(self, body):
        from PIL import Image

        args = body["script_args"]
        sr = [a[0] if isinstance(a, list) else a for a in self.axes].index("Prompt S/R")
        assert body["script_name"] == "x/y/z plot" and len(args) == 18 + self.extra_args
        assert args[0] == sr and args[3] == sr and args[6] == 0
        prompts = []
        for y in [v.strip() for v in args[4].split(",")]:
            for x in [v.strip() for v in args[1].split(",")]:
                xs, ys = args[1].split(",")[0].strip(), args[4].split(",")[0].strip()
                assert xs in body["prompt"] and ys in body["prompt"], "Prompt S/R: the first value is not in the prompt"
                prompts.append(body["prompt"].replace(xs, x).replace(ys, y))
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
        return {"images": [base64.b64encode(buffer.getvalue()).decode()], "info": json.dumps({"all_prompts": prompts})}

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("axes, extra", [(A1111_AXES, 0), (FORGE_AXES, 1)])
def test_send_to_webui_renders_the_grid_there(tmp_path, axes, extra):
    from PIL import Image

    project = fake_epochs(tmp_path / "Loras")
    with FakeWebui(axes, ["fake-01", "fake-02", "fake-03"], extra_args=extra) as webui:
        result = compare.send_to_webui(webui.url, project, weights="0.5, 1", epochs="1, 3", seed=5)
    path, body = next(p for p in webui.posts if p[0] == "/sdapi/v1/txt2img")
    assert webui.refreshed == 1  # the new files were not listed yet: refreshed once
    assert body["prompt"] == "<lora:fake-01:0.5> fake_char, 1girl, smile" and body["seed"] == 5
    assert body["script_args"][1] == "-01, -03" and body["script_args"][4] == ":0.5, :1"
    assert body["width"] == 512 and body["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert Image.open(result.grid).size == (8, 8)
    record = json.loads(Path(result.record).read_text())
    assert record["info"]["all_prompts"][-1] == "<lora:fake-03:1> fake_char, 1girl, smile"


def test_send_to_webui_errors(tmp_path):
    project = fake_epochs(tmp_path / "Loras")
    with FakeWebui(A1111_AXES, ["fake-01"]) as webui:
        with pytest.raises(UserError, match="has no fake-02, fake-03: copy the files from"):
            compare.send_to_webui(webui.url, project)
    with FakeWebui(["Nothing", "Seed"], ["fake-01", "fake-02", "fake-03"]) as webui:
        with pytest.raises(UserError, match="no 'Prompt S/R' axis"):
            compare.send_to_webui(webui.url, project)
    with pytest.raises(UserError, match="Cannot reach the WebUI"):
        compare.send_to_webui("http://127.0.0.1:9", project)


def test_payload_keeps_the_scripts_later_defaults():
    defaults = [0, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False, "draw_grid"]
    payload = compare.webui_xyz_payload("p", "n", "-01, -02", ":0.5, :1", axis_index=8, defaults=defaults, batch=2)
    assert payload["script_args"][:9] == [8, "-01, -02", [], 8, ":0.5, :1", [], 0, "", []]
    assert payload["script_args"][9] is True and payload["script_args"][-1] == "draw_grid" and len(payload["script_args"]) == 19
    assert payload["batch_size"] == 2 and payload["sampler_name"] == "Euler a" and "override_settings" not in payload


def test_a_lora_of_another_layout_is_refused_with_advice(tmp_path, tiny_model):
    import torch
    from safetensors.torch import save_file

    project = make_project(tmp_path / "Loras", tiny_model)
    project.output_dir.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_foo.lora_down.weight": torch.zeros(4, 8), "lora_unet_foo.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_foo.alpha": torch.tensor(2.0)}, str(project.output_dir / "tiny_char-01.safetensors"))
    with pytest.raises(UserError, match="tiny_char-01.safetensors has a layout this tool cannot load.*compare --xyz"):
        compare.compare_project(project, **FAST)
    assert not (project.output_dir / "compare").exists()
