"""The whole guide through the command line, on tiny models and the local booru: what a notebook cell does.

create -> scrape -> dedupe -> tag -> activation tag -> train two epochs -> compare, and every artefact checked.
"""

from __future__ import annotations

import json
import shutil

from lora_gradio.cli import main as cli_main
from lora_gradio.engine.project import Projects
from tests.booru_server import BooruServer


def test_the_guide_from_nothing_to_a_compared_lora(tmp_path, capsys):
    from tests.tiny_clip import build_tiny_clip
    from tests.tiny_sd import build_tiny_sd
    from tests.tiny_wd import build_tiny_wd

    root = str(tmp_path / "Loras")
    model, wd, clip = build_tiny_sd(tmp_path / "sd"), build_tiny_wd(tmp_path / "wd"), build_tiny_clip(tmp_path / "clip")

    def run(*args: str) -> str:
        capsys.readouterr()
        assert cli_main(["--root", root, *args]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    # 1. A project, and images from the booru (Safebooru's API, served locally).
    run("project", "create", "hero")
    project = Projects(root).open("hero")
    with BooruServer(n_posts=30) as booru:
        run("scrape", "hero", "--site", "safebooru", "--tags", "fake_tag", "--limit", "8", "--base-url", booru.safebooru_url, "--yes")
    images = sorted(p for p in project.dataset_dir.iterdir() if p.suffix in (".png", ".jpg", ".jpeg"))
    n = len(images)
    assert 6 <= n <= 8  # the local booru serves a few broken files on purpose; those are skipped
    records = list((project.root / "hero").rglob("_scrape/posts.jsonl"))
    assert len(records) == 1 and len(records[0].read_text().splitlines()) >= n  # post id, source, tags of each image

    # 2. A duplicate appears (a copy under another name); dedupe finds it and moves it to the trash.
    shutil.copy(images[0], project.dataset_dir / f"copy_of_{images[0].name}")
    run("dedupe", "hero", "--model", clip, "--threshold", "0.9999", "--apply")  # the tiny CLIP finds all images alike
    assert not (project.dataset_dir / f"copy_of_{images[0].name}").exists() or not images[0].exists()
    assert len([p for p in project.dataset_dir.iterdir() if p.suffix in (".png", ".jpg", ".jpeg")]) == n
    assert any(project.trash_dir.rglob("*copy_of_*")) or any(project.trash_dir.rglob(images[0].name))

    # 3. Tag with the WD tagger, then the activation tag first in every caption.
    out = run("tag", "hero", "--model", str(wd), "--existing", "overwrite")
    assert "solo" in out  # the top tags are printed after tagging, as the guide recommends
    run("tags", "hero", "--activation", "hero_char", "--remove", "solo")
    captions = sorted(project.dataset_dir.glob("*.txt"))
    assert len(captions) == n
    assert all(c.read_text().split(", ")[0] == "hero_char" and "solo" not in c.read_text() for c in captions)

    # 4. Train two epochs on the tiny model.
    run("train", "hero", "--set", f"training_model={model}", "--set", "resolution=256", "--set", "num_repeats=1", "--set", "how_many=2",
        "--set", "optimizer=AdamW", "--set", "network_dim=4", "--set", "network_alpha=2", "--set", "max_token_length=75")
    epochs = sorted(p.name for p in project.output_dir.glob("*.safetensors"))
    assert epochs == ["hero-01.safetensors", "hero-02.safetensors"]
    from safetensors import safe_open

    with safe_open(str(project.output_dir / "hero-02.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_epoch"] == "2" and json.loads(meta["ss_tag_frequency"])["dataset"]["hero_char"] == n

    # 5. Compare the epochs at two weights; the X/Y/Z values for the WebUI.
    run("compare", "hero", "--weights", "0.5,1", "--steps", "2", "--width", "64", "--height", "64")
    grids = list((project.output_dir / "compare").glob("hero-grid-*.png"))
    assert len(grids) == 1
    record = json.loads(grids[0].with_suffix(".json").read_text())
    assert "hero_char" in json.dumps(record)  # the default prompt starts from the activation tag
    out = run("compare", "hero", "--xyz")
    assert "<lora:hero-01:" in out and "-01, -02" in out


def test_an_sdxl_character_from_the_booru_to_compared_eps_and_vpred_loras(tmp_path, capsys, tiny_sdxl_dir):
    """The README's SDXL walk-through on the tiny SDXL: scrape -> tag (the XL tagger choice) -> train
    (noise prediction, then v-prediction) -> compare."""
    from tests.tiny_sdxl import build_tiny_sdxl
    from tests.tiny_wd import build_tiny_wd

    root = str(tmp_path / "Loras")
    wd = build_tiny_wd(tmp_path / "wd")
    vpred_model = build_tiny_sdxl(tmp_path / "xl_v", prediction_type="v_prediction")

    def run(*args: str) -> str:
        capsys.readouterr()
        assert cli_main(["--root", root, *args]) == 0, capsys.readouterr().err
        captured = capsys.readouterr()
        return captured.out + captured.err

    run("project", "create", "xlhero")
    project = Projects(root).open("xlhero")
    with BooruServer(n_posts=30) as booru:
        run("scrape", "xlhero", "--site", "safebooru", "--tags", "fake_tag", "--limit", "6", "--base-url", booru.safebooru_url, "--yes")
    n = len([p for p in project.dataset_dir.iterdir() if p.suffix in (".png", ".jpg", ".jpeg")])
    assert n >= 4
    run("tag", "xlhero", "--preset", "sdxl", "--model", str(wd), "--existing", "overwrite")
    run("tags", "xlhero", "--activation", "xlhero_char")

    common = ("--set", "resolution=512", "--set", "num_repeats=1", "--set", "how_many=2", "--set", "optimizer=AdamW",
              "--set", "optimizer_args=[]", "--set", "network_dim=4", "--set", "network_alpha=2", "--set", "max_token_length=75",
              "--set", "max_bucket_reso=1024")
    out = run("train", "xlhero", "--set", f"training_model={tiny_sdxl_dir}", *common)
    assert "SDXL base: took its defaults" in out
    from safetensors import safe_open

    with safe_open(str(project.output_dir / "xlhero-02.safetensors"), "pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["modelspec.prediction_type"] == "epsilon"
    assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in keys)
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)

    run("train", "xlhero", "--set", f"training_model={vpred_model}", *common)
    with safe_open(str(project.output_dir / "xlhero-02.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.prediction_type"] == "v" and meta["ss_zero_terminal_snr"] == "True"

    run("compare", "xlhero", "--weights", "0.5,1", "--steps", "2", "--width", "512", "--height", "512")
    assert len(list((project.output_dir / "compare").glob("xlhero-grid-*.png"))) == 1
