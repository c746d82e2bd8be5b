"""How fast dedupe embeds images and groups embeddings.

    python benchmarks/dedupe_speed.py [--images 256] [--size 1024x1536] [--batch-size 32] [--device cuda]
                                      [--embeddings 5000] [--model ID_OR_DIR]

1. Embeddings/s through `dedupe.embed_images` (decode + CLIP preprocessing in the thread pool,
   batches through the model) on `--images` distinct JPEGs written to a temporary folder. The
   model is the real `openai/clip-vit-base-patch32` when it is in the local Hugging Face cache
   (or `--model` names one), else a CLIP ViT-B/32 of the real size with random weights, built
   from its config (no download); the output says which. Decoding alone is timed too, to show
   whether the model or Pillow is the limit.
2. Grouping time (`dedupe.group_embeddings`) for `--embeddings` random L2-normalised 512-d vectors
   at the default threshold, the part that replaces the notebook's full similarity matrix.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np

from lora_gradio.engine import dedupe
from lora_gradio.engine.images import open_image


def make_jpeg(path: Path, seed: int, size: tuple[int, int]) -> None:
    """A distinct photo-like JPEG: a colour gradient, a few shapes and some noise."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    width, height = size
    gradient = Image.linear_gradient("L").resize((width, height))
    image = Image.merge("RGB", (gradient, gradient.rotate(90, expand=False).resize((width, height)), Image.new("L", (width, height), rng.randrange(256))))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(20, max(21, width // 4))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    noise = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    Image.blend(image, noise, 0.06).save(path, format="JPEG", quality=90)


def load_model(model: "str | None", device: "str | None"):
    """The dedupe model as `dedupe.load_clip` returns it, and a line saying which it is."""
    if model:
        return dedupe.load_clip(model, device), f"{model} (as given)"
    try:
        from transformers import CLIPModel

        CLIPModel.from_pretrained(dedupe.DEFAULT_MODEL, local_files_only=True)
        return dedupe.load_clip(dedupe.DEFAULT_MODEL, device), f"{dedupe.DEFAULT_MODEL} (real weights, from the local hub cache)"
    except OSError:
        pass
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(projection_dim=512)  # the defaults are ViT-B/32: 224 px, patch 32, 12 layers, 768 wide
    clip = CLIPModel(config)
    processor = CLIPImageProcessor()  # CLIP's standard 224 px preprocessing, as the real repo ships it
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    clip = clip.to(device=device, dtype=dtype).eval()
    return (clip, processor, device, dtype), "CLIP ViT-B/32 built from its config with random weights (not in the local hub cache)"


def bench_embeddings(args: argparse.Namespace) -> None:
    width, height = (int(v) for v in args.size.lower().split("x"))
    loaded, which = load_model(args.model, args.device)
    clip, _, device, dtype = loaded
    params = sum(p.numel() for p in clip.vision_model.parameters()) / 1e6
    print(f"model: {which}; vision tower {params:.0f} M parameters on {device} ({str(dtype).replace('torch.', '')})")
    with tempfile.TemporaryDirectory(prefix="dedupe-bench-") as tmp:
        folder = Path(tmp)
        paths = [folder / f"{i:05d}.jpg" for i in range(args.images)]
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda i: make_jpeg(paths[i], i, (width, height)), range(args.images)))
        megabytes = sum(p.stat().st_size for p in paths) / 1e6
        print(f"images: {args.images} JPEGs of {width}x{height} ({megabytes / args.images:.2f} MB each); {dedupe._WORKERS} decode threads")

        # Warm-up batch: first CUDA/oneDNN calls pay one-off set-up costs.
        list(dedupe.embed_images(paths[: args.batch_size], loaded, batch_size=args.batch_size))

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=dedupe._WORKERS) as pool:
            list(pool.map(lambda p: open_image(p).size, paths))
        decode_s = time.perf_counter() - start
        print(f"decode only:            {args.images / decode_s:8.1f} images/s ({decode_s:.2f} s)")

        import torch

        pixels = torch.randn(args.batch_size, 3, 224, 224, device=device, dtype=dtype)
        rounds = max(1, args.images // args.batch_size)
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(rounds):
                features = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
            features.float().cpu()  # waits for the GPU
        model_s = time.perf_counter() - start
        print(f"model only:             {rounds * args.batch_size / model_s:8.1f} images/s ({model_s:.2f} s)")

        start = time.perf_counter()
        out = list(dedupe.embed_images(paths, loaded, batch_size=args.batch_size))
        embed_s = time.perf_counter() - start
        assert len(out) == args.images and all(err is None for _, _, err in out)
        print(f"embeddings (end to end): {args.images / embed_s:8.1f} images/s ({embed_s:.2f} s, batch {args.batch_size})")


def bench_grouping(count: int, threshold: float) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, 512)).astype(np.float32)
    # Plant 5% near-duplicates so the walk has groups to build, as a real dataset would.
    copies = rng.choice(count, size=count // 20, replace=False)
    vectors[copies] = vectors[rng.choice(count, size=len(copies))] + 0.02 * rng.normal(size=(len(copies), 512)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dedupe.group_embeddings(vectors[:256], threshold)  # warm-up (BLAS threads)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        groups = dedupe.group_embeddings(vectors, threshold)
        best = min(best, time.perf_counter() - start)
    print(f"grouping {count} x 512-d embeddings at {threshold}: {best * 1000:.0f} ms (best of 3; {len(groups)} groups)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256, help="images to embed (default 256; 0 skips)")
    parser.add_argument("--size", default="1024x1536", help="image size WxH (default 1024x1536, a typical booru sample)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--model", default=None, help="repo id or folder (default: the real model if cached, else random ViT-B/32)")
    parser.add_argument("--embeddings", type=int, default=5000, help="embeddings to group (default 5000; 0 skips)")
    parser.add_argument("--threshold", type=float, default=dedupe.DEFAULT_THRESHOLD)
    args = parser.parse_args()
    if args.images:
        bench_embeddings(args)
    if args.embeddings:
        bench_grouping(args.embeddings, args.threshold)


if __name__ == "__main__":
    main()
