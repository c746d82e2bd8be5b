"""How close end-to-end WD tagging comes to the bare speed of the model.

    python benchmarks/tag_speed.py [--images 500] [--size 1024x1536] [--batch-size 32]
                                   [--input 448] [--width 64] [--tags 10861] [--model DIR]

1. Bare: `session.run` throughput of the tagger on ready-made float32 NHWC batches in memory (no
   decoding, no files): the most the model can do.
2. End to end: `tagger.tag_images` on `--images` distinct JPEGs of `--size` in a temporary project
   (decode, alpha/pad/resize/BGR in the thread pool, batches through the model, caption files
   written), existing captions overwritten.
The ratio end-to-end / bare is the figure to watch (target: at least 90%).

The model is `--model` (a folder with model.onnx + selected_tags.csv, e.g. a real WD tagger) or,
by default, a WD-tagger-shaped convnet with random weights built here with the onnx helper API:
input [N, 448, 448, 3] BGR NHWC, four strided convolutions (`--width` channels in the first),
global pooling, a dense layer to `--tags` sigmoid outputs (the v3 taggers have 10,861). At width 64
it costs about 1.5 GFLOP per image, far less than a real SwinV2 (tens of GFLOP), so it is the
harder case for the input pipeline: the output says which model ran.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from lora_gradio.engine import tagger  # noqa: E402
from lora_gradio.engine.project import Projects  # noqa: E402


def build_conv_tagger(folder: Path, size: int, width: int, tags: int) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    inits = []
    channels = [3, width, 2 * width, 4 * width, 8 * width]
    for i in range(4):
        k, s = (4, 4) if i == 0 else (3, 2)
        w = (rng.standard_normal((channels[i + 1], channels[i], k, k)) / np.sqrt(channels[i] * k * k * 255)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inits.append(numpy_helper.from_array(np.zeros(channels[i + 1], np.float32), f"b{i}"))
        pads = [0, 0, 0, 0] if i == 0 else [1, 1, 1, 1]
        nodes.append(helper.make_node("Conv", [f"x{i}", f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[k, k], strides=[s, s], pads=pads))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"x{i + 1}"]))
    nodes += [
        helper.make_node("GlobalAveragePool", ["x4"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wd", "bd"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    inits.append(numpy_helper.from_array((rng.standard_normal((channels[4], tags)) * 0.05).astype(np.float32), "wd"))
    inits.append(numpy_helper.from_array(np.full(tags, -2.0, np.float32), "bd"))
    graph = helper.make_graph(
        nodes, "conv_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", tags])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    with open(folder / "selected_tags.csv", "w", encoding="utf-8") as f:
        f.write("tag_id,name,category,count\n")
        for i, name in enumerate(["general", "sensitive", "questionable", "explicit"]):
            f.write(f"{i},{name},9,1\n")
        for i in range(4, tags):
            f.write(f"{i},tag_{i},{4 if i >= tags - 2000 else 0},1\n")
    return folder


def make_jpeg(path: Path, seed: int, size: tuple[int, int]) -> None:
    """A distinct photo-like JPEG: a colour gradient with noise (JPEG cost close to a real photo)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    base = rng.uniform(0, 255, 3).astype(np.float32)
    img = base * (0.5 + 0.5 * y) + 80 * x + rng.normal(0, 12, (height, width, 3)).astype(np.float32)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def measure(tmp: Path, model_source: str, images: int, size: tuple[int, int], batch_size: "int | None" = None,
            providers: "list[str] | None" = None) -> dict:
    """Bare vs end-to-end tagging speed (images/s) in a project under `tmp`; see the module doc.
    `providers`: onnxruntime's execution providers (default: the tagger's choice, a GPU's when it has one)."""
    width, height = size
    loaded = tagger.load_wd_tagger(model_source, providers=providers)
    batch = batch_size or loaded.fixed_batch or tagger._DEFAULT_BATCH
    project = Projects(tmp / "Loras").create("bench")
    t0 = time.perf_counter()
    with ThreadPoolExecutor() as pool:
        list(pool.map(lambda i: make_jpeg(project.dataset_dir / f"{i:05d}.jpg", i, (width, height)), range(images)))
    write_seconds = time.perf_counter() - t0

    # 1. Bare model throughput on in-memory batches (after one warm-up batch).
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 255, (batch, loaded.height, loaded.width, 3)).astype(np.float32)
    loaded.predict(data)
    t0 = time.perf_counter()
    done = 0
    while done < images:
        n = min(batch, images - done)
        loaded.predict(data[:n])
        done += n
    bare = images / (time.perf_counter() - t0)

    # 2. End to end through tag_images (same loaded session: no load time counted).
    t0 = time.perf_counter()
    report = tagger.tag_images(project, [loaded], existing="overwrite", batch_size=batch)
    e2e = len(report.tagged) / (time.perf_counter() - t0)
    assert len(report.tagged) == images, report.summary()

    # For reference: decode + preprocess alone, in the same thread pool size.
    paths = sorted(project.dataset_dir.glob("*.jpg"))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=tagger._WORKERS) as pool:
        list(pool.map(lambda p: tagger.preprocess_wd(p, [(loaded.height, loaded.width)]), paths))
    decode = len(paths) / (time.perf_counter() - t0)
    return {"providers": list(loaded.providers), "batch": batch, "images": images, "size": f"{width}x{height}",
            "bare_images_per_s": bare, "end_to_end_images_per_s": e2e, "decode_images_per_s": decode,
            "ratio": e2e / bare, "workers": tagger._WORKERS, "jpeg_write_seconds": write_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", default="1024x1536", help="WIDTHxHEIGHT of the test JPEGs")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the tagger's (32, or the model's fixed batch)")
    parser.add_argument("--input", type=int, default=448, help="input size of the built model")
    parser.add_argument("--width", type=int, default=64, help="channels of the built model's first convolution")
    parser.add_argument("--tags", type=int, default=10861)
    parser.add_argument("--model", default=None, help="a WD tagger folder or repo id instead of the built model")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        if args.model:
            model_source, label = args.model, f"WD tagger {args.model}"
        else:
            model_source = str(build_conv_tagger(tmp / "model", args.input, args.width, args.tags))
            label = f"random-weight conv tagger, {args.input}x{args.input} input, width {args.width}, {args.tags} tags"
        result = measure(tmp, model_source, args.images, (width, height), args.batch_size)
        print(f"model: {label}; providers {result['providers']}; batch {result['batch']}")
        print(f"wrote {args.images} JPEGs of {width}x{height} in {result['jpeg_write_seconds']:.1f} s")

    print(f"bare ONNX inference : {result['bare_images_per_s']:8.1f} images/s")
    print(f"end-to-end tag_images: {result['end_to_end_images_per_s']:8.1f} images/s")
    print(f"decode+preprocess only ({result['workers']} threads): {result['decode_images_per_s']:8.1f} images/s")
    print(f"ratio end-to-end / bare: {100 * result['ratio']:.0f}% (target >= 90%)")


if __name__ == "__main__":
    main()
