"""Training data: buckets, captions, repeats/reg step math, image tensors, the latent cache, long prompts."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.train.data import (
    DatasetFolder,
    collect_items,
    epoch_batches,
    load_image_tensor,
    make_bucket_resolutions,
    process_caption,
    read_image_size,
    steps_per_epoch,
)
from lora_gradio.engine.train.latents import LatentCache
from lora_gradio.engine.train.prompts import encode_prompts, tokenize_prompts
from tests.images_factory import make_image


class RecordingProgress(Progress):
    def __init__(self):
        self.logs: list[str] = []
        self.updates: list[tuple] = []

    def update(self, done, total=None, message="", **data):
        self.updates.append((done, total, message))

    def log(self, message):
        self.logs.append(message)


def write(folder: Path, stem: str, size=(64, 64), caption: str | None = "tag", colour=(200, 30, 30), ext=".png") -> Path:
    path = make_image(folder / f"{stem}{ext}", size=size, colour=colour)
    if caption is not None:
        (folder / f"{stem}.txt").write_text(caption, encoding="utf-8")
    return path


# Buckets -------------------------------------------------------------------------------------


def test_bucket_list_for_512_matches_kohya():
    resos = make_bucket_resolutions(512, 256, 1024, 64)
    expected = {
        (256, 1024), (1024, 256), (320, 768), (768, 320), (384, 640), (640, 384), (448, 576), (576, 448),
        (512, 512), (320, 704), (704, 320), (256, 832), (832, 256), (256, 896), (896, 256), (256, 960), (960, 256),
    }
    assert set(resos) == expected
    assert resos == sorted(resos)
    assert all(min(w, h) >= 256 and max(w, h) <= 1024 and w % 64 == 0 and h % 64 == 0 for w, h in resos)
    assert all(w * h <= 512 * 512 for w, h in resos)


def test_800x600_goes_to_nearest_aspect_bucket_and_is_cropped_centrally(tmp_path):
    folder = tmp_path / "10_char"
    folder.mkdir()
    # Red with 8 px blue stripes at both edges: scaled to 597x448 (6 px stripes), then 10 px are
    # cropped from each side, so a centred crop leaves only red.
    img = Image.new("RGB", (800, 600), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 8, 600))
    img.paste((0, 0, 255), (792, 0, 800, 600))
    img.save(folder / "wide.png")
    (folder / "wide.txt").write_text("a")
    dataset = collect_items([DatasetFolder(folder, num_repeats=1)], ".txt", 512)
    (item,) = dataset.items
    assert item.size == (800, 600)
    assert item.bucket == (576, 448)  # 1.286 is the nearest ratio to 1.333
    tensor = load_image_tensor(item, flip=False)
    assert tuple(tensor.shape) == (3, 448, 576)
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    assert tensor[0].mean() > 0.99 and tensor[2].mean() < -0.99  # all red: the stripe was cropped

    info = dataset.bucket_info()
    assert info["buckets"] == {"0": {"resolution": [576, 448], "count": 1}}
    assert info["mean_img_ar_error"] == pytest.approx(abs(576 / 448 - 800 / 600))
    json.dumps(info)


def test_flip_and_exif_orientation(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    img = Image.new("RGB", (512, 512), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 256, 512))  # left half blue
    img.save(folder / "half.png")
    # Stored 400x300 with EXIF orientation 6 (rotate 90°): upright it is 300x400, a portrait.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (400, 300), (0, 255, 0)).save(folder / "rotated.jpg", exif=exif.tobytes())
    assert read_image_size(folder / "rotated.jpg") == (300, 400)
    dataset = collect_items([DatasetFolder(folder, flip_aug=True)], ".txt", 512)
    by_name = {item.path.name: item for item in dataset.items}
    assert by_name["rotated.jpg"].bucket[0] < by_name["rotated.jpg"].bucket[1]
    assert tuple(load_image_tensor(by_name["rotated.jpg"]).shape) == (3, *reversed(by_name["rotated.jpg"].bucket))
    plain = load_image_tensor(by_name["half.png"], flip=False)
    flipped = load_image_tensor(by_name["half.png"], flip=True)
    assert plain[2, :, :10].mean() > 0.99 and flipped[2, :, -10:].mean() > 0.99
    assert flipped.flip(-1).equal(plain)


# Folders, captions and problems --------------------------------------------------------------


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        collect_items([DatasetFolder(tmp_path / "nope")], ".txt", 512)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="add images or check the folder name"):
        collect_items([DatasetFolder(tmp_path / "empty")], ".txt", 512)
    clash = tmp_path / "clash"
    write(clash, "a", ext=".png")
    write(clash, "a", ext=".jpg")
    with pytest.raises(UserError, match="rename or remove one"):
        collect_items([DatasetFolder(clash)], ".txt", 512)


def test_missing_captions_warn_and_train_empty(tmp_path):
    folder = tmp_path / "5_x"
    write(folder, "a", caption="Tiny_Char, 1girl, smile, SMILE")
    write(folder, "b", caption=None)
    write(folder, "c", caption=None)
    progress = RecordingProgress()
    dataset = collect_items([DatasetFolder(folder, num_repeats=5)], "txt", 512, progress=progress)
    assert len(dataset.items) == 3
    assert {p.name for p in dataset.missing_captions} == {"b.png", "c.png"}
    assert "2 image(s) have no .txt caption" in dataset.warnings[0]
    assert any("2 image(s) have no .txt caption" in line for line in progress.logs)
    assert {item.path.name: item.caption_text for item in dataset.items}["b.png"] == ""
    assert dataset.tag_frequency() == {"5_x": {"tiny_char": 1, "1girl": 1, "smile": 1}}
    assert dataset.dataset_dirs() == {"5_x": {"n_repeats": 5, "img_count": 3}}


def test_corrupt_image_is_skipped_and_reported(tmp_path):
    folder = tmp_path / "imgs"
    write(folder, "good")
    (folder / "bad.png").write_bytes(b"this is not a png at all")
    (folder / "bad.txt").write_text("x")
    progress = RecordingProgress()
    dataset = collect_items([DatasetFolder(folder)], ".txt", 512, progress=progress)
    assert [item.path.name for item in dataset.items] == ["good.png"]
    assert [p.name for p, _ in dataset.problems] == ["bad.png"]
    assert "not an image" in dataset.problems[0][1]
    assert any("bad.png" in line for line in progress.logs)
    assert dataset.image_counts[dataset.folders[0]] == 1


def test_folder_of_only_corrupt_images_is_an_error(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "bad.jpg").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="could be read"):
        collect_items([DatasetFolder(folder)], ".txt", 512)


def test_keep_tokens_stay_first_while_the_rest_shuffles():
    caption = "tiny_char, 1girl, solo, smile, red hair, blue eyes, dress, outdoors, sky"
    tags = [t.strip() for t in caption.split(",")]
    outputs = set()
    for seed in range(20):
        out = process_caption(caption, keep_tokens=2, shuffle=True, rng=random.Random(seed))
        parts = out.split(", ")
        assert parts[:2] == ["tiny_char", "1girl"]
        assert sorted(parts[2:]) == sorted(tags[2:])
        outputs.add(out)
    assert len(outputs) > 10  # the rest really is shuffled
    # Seeded: the same rng state gives the same caption.
    assert process_caption(caption, 2, True, random.Random(3)) == process_caption(caption, 2, True, random.Random(3))
    assert process_caption(caption, 2, False, random.Random(0)) == caption
    assert process_caption(caption, 1, True, random.Random(0), caption_dropout_rate=1.0) == ""
    assert process_caption(caption, 1, True, random.Random(0), tag_dropout_rate=1.0) == "tiny_char"


# Repeats, regularization, steps --------------------------------------------------------------


def test_steps_per_epoch_with_repeats_buckets_and_reg(tmp_path):
    train = tmp_path / "10_char"
    for i in range(3):
        write(train, f"sq{i}", size=(64, 64))
    write(train, "wide", size=(128, 64))  # a second bucket
    reg = tmp_path / "1_reg"
    for i in range(3):
        write(reg, f"r{i}", size=(64, 64), caption="1girl")
    train_folder = DatasetFolder(train, num_repeats=10, keep_tokens=1)
    reg_folder = DatasetFolder(reg, num_repeats=1, is_reg=True)

    only_train = collect_items([train_folder], ".txt", 512)
    # square bucket 3 x 10 = 30 samples, wide bucket 1 x 10 = 10: ceil(30/4) + ceil(10/4) = 8 + 3.
    assert steps_per_epoch(only_train, 4) == 11
    assert only_train.num_train_images == 40 and only_train.num_reg_images == 0

    both = collect_items([train_folder, reg_folder], ".txt", 512)
    # Reg images are repeated round-robin until they match the 40 training samples: 14 + 13 + 13.
    reg_repeats = sorted(item.num_repeats for item in both.reg_items)
    assert reg_repeats == [13, 13, 14] and sum(reg_repeats) == 40
    assert both.num_reg_images == 3  # kohya's ss_num_reg_images counts folder repeats only
    # square bucket: 30 train + 40 reg = 70 -> ceil(70/4) = 18; wide: 3. Total 21.
    assert steps_per_epoch(both, 4) == 21
    for batch_size in (1, 2, 3, 4, 7):
        assert len(epoch_batches(both, batch_size, epoch=1, seed=42)) == steps_per_epoch(both, batch_size)

    batches = epoch_batches(both, 4, epoch=1, seed=42)
    assert all(len({item.bucket for item, _ in batch}) == 1 for batch in batches)  # within a bucket
    seen = Counter(item.path.name for batch in batches for item, _ in batch)
    assert all(seen[item.path.name] == item.num_repeats for item in both.items)
    assert not any(flip for batch in batches for _, flip in batch)  # flip_aug off
    same = epoch_batches(both, 4, epoch=1, seed=42)
    assert [[(i.path, f) for i, f in b] for b in batches] == [[(i.path, f) for i, f in b] for b in same]
    other = epoch_batches(both, 4, epoch=2, seed=42)
    assert [[i.path for i, _ in b] for b in batches] != [[i.path for i, _ in b] for b in other]

    info = both.bucket_info()
    assert [b["count"] for b in info["buckets"].values()] == [70, 10]
    assert [b["resolution"] for b in info["buckets"].values()] == [[512, 512], [704, 320]]
    assert both.dataset_dirs() == {"10_char": {"n_repeats": 10, "img_count": 4}}
    assert both.dataset_dirs(reg=True) == {"1_reg": {"n_repeats": 1, "img_count": 3}}
    assert both.tag_frequency()["1_reg"] == {"1girl": 3}


def test_more_reg_images_than_needed_leaves_some_unused(tmp_path):
    train = tmp_path / "2_char"
    write(train, "a")
    reg = tmp_path / "reg"
    for i in range(5):
        write(reg, f"r{i}")
    dataset = collect_items(
        [DatasetFolder(train, num_repeats=2), DatasetFolder(reg, num_repeats=1, is_reg=True)], ".txt", 512
    )
    assert [item.num_repeats for item in dataset.reg_items] == [1, 1, 0, 0, 0]
    assert steps_per_epoch(dataset, 1) == 4


def test_flip_is_drawn_per_sample(tmp_path):
    folder = tmp_path / "f"
    for i in range(4):
        write(folder, f"i{i}")
    dataset = collect_items([DatasetFolder(folder, num_repeats=10, flip_aug=True)], ".txt", 512)
    flips = [flip for batch in epoch_batches(dataset, 2, 1, 0) for _, flip in batch]
    assert 5 < sum(flips) < 35


# Latent cache --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    from tests.tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


@pytest.fixture(scope="module")
def vae(tiny_sd):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_sd / "vae").eval()


def counting(vae):
    calls = []
    original = type(vae).encode

    def encode(x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(vae, x, *args, **kwargs)

    vae.encode = encode
    return calls


def small_dataset(folder: Path, flip=False):
    for i in range(3):
        write(folder, f"img{i}", size=(64 + 16 * i, 64), colour=(40 * i, 100, 200))
    return collect_items([DatasetFolder(folder, num_repeats=2, flip_aug=flip)], ".txt", 128, 64, 256, 64)


def test_latent_cache_reuses_disk_and_reencodes_a_changed_image(tmp_path, vae):
    dataset = small_dataset(tmp_path / "data")
    cache_dir = tmp_path / "_cache" / "latents"
    calls = counting(vae)
    try:
        progress = RecordingProgress()
        first = LatentCache(vae, device="cpu", dtype=vae.dtype, cache_dir=cache_dir, batch_size=2)
        assert first.cache(dataset, progress) == []
        assert first.encoded == 3 and first.loaded == 0 and sum(calls) == 3
        assert any("caching latents 3/3" in u[2] for u in progress.updates)
        item = dataset.items[0]
        latent = first.get(item)
        w, h = item.bucket
        assert tuple(latent.shape) == (4, h // 8, w // 8)
        assert first.scaling_factor == pytest.approx(vae.config.scaling_factor)
        assert len(list(cache_dir.rglob("*.safetensors"))) == 3
        batch = epoch_batches(dataset, 2, 1, 0)[0]
        assert tuple(first.batch(batch).shape)[:2] == (len(batch), 4)

        calls.clear()
        second = LatentCache(vae, device="cpu", dtype=vae.dtype, cache_dir=cache_dir, batch_size=2)
        second.cache(dataset)
        assert calls == [] and second.encoded == 0 and second.loaded == 3
        assert second.get(item).equal(latent)

        # The same image with other pixels and a new mtime is encoded again; the others are read back.
        path = dataset.items[1].path
        Image.new("RGB", Image.open(path).size, (255, 255, 0)).save(path)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
        calls.clear()
        third = LatentCache(vae, device="cpu", dtype=vae.dtype, cache_dir=cache_dir, batch_size=2)
        third.cache(dataset)
        assert sum(calls) == 1 and third.encoded == 1 and third.loaded == 2
        assert not third.get(dataset.items[1]).equal(second.get(dataset.items[1]))

        # A different VAE identity does not reuse the files.
        calls.clear()
        other = LatentCache(vae, device="cpu", dtype=vae.dtype, cache_dir=cache_dir, vae_id="another-vae")
        other.cache(dataset)
        assert other.encoded == 3
    finally:
        del vae.encode


def test_latent_cache_sample_is_seeded_per_image_and_mean_option(tmp_path, vae):
    import torch

    dataset = small_dataset(tmp_path / "data")
    a = LatentCache(vae, batch_size=1)
    a.cache(dataset)
    b = LatentCache(vae, batch_size=3)
    b.cache(dataset)
    item = dataset.items[0]
    assert torch.allclose(a.get(item), b.get(item), atol=1e-5)  # same draw whatever the batch
    reseeded = LatentCache(vae, seed=1)
    reseeded.cache(dataset)
    assert not torch.allclose(reseeded.get(item), a.get(item), atol=1e-3)
    mean = LatentCache(vae, use_mean=True)
    mean.cache(dataset)
    assert not torch.allclose(mean.get(item), a.get(item), atol=1e-3)
    with torch.no_grad():
        expected = vae.encode(load_image_tensor(item)[None]).latent_dist.mean[0] * vae.config.scaling_factor
    assert torch.allclose(mean.get(item), expected, atol=1e-5)


def test_latent_cache_flip_and_truncated_image_dropped(tmp_path, vae):
    folder = tmp_path / "data"
    dataset_items = small_dataset(folder, flip=True)
    assert len(dataset_items.items) == 3
    # A file whose header reads fine but whose pixels are cut off passes collect_items ...
    good = folder / "trunc.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(good)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    dataset = collect_items([DatasetFolder(folder, num_repeats=2, flip_aug=True)], ".txt", 128, 64, 256, 64)
    assert len(dataset.items) == 4
    steps_before = steps_per_epoch(dataset, 1)
    cache = LatentCache(vae)
    progress = RecordingProgress()
    problems = cache.cache(dataset, progress)
    # ... and is dropped while caching, with the reason, never crashing the run.
    assert [p.name for p, _ in problems] == ["trunc.png"]
    assert [p.name for p, _ in dataset.problems] == ["trunc.png"]
    assert len(dataset.items) == 3 and steps_per_epoch(dataset, 1) == steps_before - 2
    assert any("trunc.png" in line for line in progress.logs)
    assert len(cache) == 6  # plain + flipped for each good image
    item = dataset.items[0]
    assert not cache.get(item, True).equal(cache.get(item, False))
    for batch in epoch_batches(dataset, 2, 1, 0):
        cache.batch(batch)  # every (item, flip) drawn is cached


def test_decode_check_catches_truncation_early(tmp_path):
    folder = tmp_path / "data"
    write(folder, "ok")
    bad = folder / "trunc.png"
    Image.effect_noise((64, 64), 50).convert("RGB").save(bad)
    bad.write_bytes(bad.read_bytes()[:200])
    dataset = collect_items([DatasetFolder(folder)], ".txt", 512, decode_check=True)
    assert [p.name for p, _ in dataset.problems] == ["trunc.png"]


# Prompts -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_parts(tiny_sd):
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(tiny_sd / "text_encoder").eval()
    return tokenizer, text_encoder


def _manual(tokenizer, text_encoder, ids, clip_skip):
    import torch

    with torch.no_grad():
        out = text_encoder(ids, output_hidden_states=True)
        norm = getattr(getattr(text_encoder, "text_model", text_encoder), "final_layer_norm")
        return norm(out.hidden_states[-clip_skip])


def test_encode_prompts_shapes_and_chunks(text_parts):
    import torch

    tokenizer, text_encoder = text_parts
    captions = ["tiny_char, 1girl, smile", "a photo of sky"]
    with torch.no_grad():
        short = encode_prompts(tokenizer, text_encoder, captions, max_token_length=75, clip_skip=2)
        long = encode_prompts(tokenizer, text_encoder, captions, max_token_length=225, clip_skip=2)
        mid = encode_prompts(tokenizer, text_encoder, captions, max_token_length=150, clip_skip=2)
    assert tuple(short.shape) == (2, 77, 32)
    assert tuple(long.shape) == (2, 227, 32)
    assert tuple(mid.shape) == (2, 152, 32)

    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    manual = _manual(tokenizer, text_encoder, ids, 2)
    assert torch.allclose(short, manual, atol=1e-5)
    # A short prompt fits in chunk 1: its BOS + 75 states are the plain encode's.
    assert torch.allclose(long[:, :76], manual[:, :76], atol=1e-5)

    with torch.no_grad():
        skip1 = encode_prompts(tokenizer, text_encoder, captions, max_token_length=75, clip_skip=1)
        last = text_encoder(ids).last_hidden_state
    assert torch.allclose(skip1, last, atol=1e-5)
    assert not torch.allclose(skip1, short, atol=1e-3)


def test_long_prompt_chunks_match_kohya(text_parts):
    import torch

    tokenizer, text_encoder = text_parts
    caption = ", ".join(["smile", "red", "blue", "green", "hair", "eyes", "dress", "sky"] * 5)  # > 75 tokens
    ids = tokenizer([caption], padding="max_length", max_length=227, truncation=True, return_tensors="pt").input_ids[0]
    n_content = int((ids != tokenizer.eos_token_id).sum()) - 1
    assert 75 < n_content < 150
    chunks = tokenize_prompts(tokenizer, [caption], 225)[0]
    assert chunks.shape == (3, 77)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert chunks[1].tolist() == [bos] + ids[76:151].tolist() + [eos]
    assert chunks[2, 0] == bos and chunks[2, 1] == eos
    states = encode_prompts(tokenizer, text_encoder, [caption], 225, 2)
    manual = _manual(tokenizer, text_encoder, chunks, 2)
    expected = torch.cat([manual[0, :1], manual[0, 1:76], manual[1, 1:76], manual[2, 1:76], manual[2, 76:]])
    assert torch.allclose(states[0], expected, atol=1e-5)


def test_gradients_flow_to_the_text_encoder(text_parts):
    tokenizer, text_encoder = text_parts
    text_encoder.zero_grad()
    states = encode_prompts(tokenizer, text_encoder, ["tiny_char, smile"], 225, 2)
    states.square().mean().backward()
    grad = text_encoder.get_input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    text_encoder.zero_grad()


def test_bad_token_length_is_refused(text_parts):
    tokenizer, text_encoder = text_parts
    with pytest.raises(UserError, match="75, 150 or 225"):
        encode_prompts(tokenizer, text_encoder, ["x"], 100, 2)


def test_latent_caching_stops_on_cancel(tmp_path, vae):
    from lora_gradio.engine.errors import Cancelled

    class CancelAfterFirst(Progress):
        def __init__(self):
            self.batches = 0

        def update(self, done, total=None, message="", **data):
            self.batches += message.startswith("caching latents ")

        def cancelled(self):
            return self.batches >= 1

    dataset = small_dataset(tmp_path / "data")
    cache = LatentCache(vae, batch_size=1)
    with pytest.raises(Cancelled):
        cache.cache(dataset, CancelAfterFirst())
    assert cache.encoded == 1


def test_big_buckets_are_encoded_a_few_images_at_a_time(tmp_path, vae, monkeypatch):
    """The VAE's memory grows with the pixels encoded at once: 4 images at 512 px, 1 at 768 or 1024."""
    from lora_gradio.engine.train import latents

    assert [latents.encode_batch_size(w, h) for w, h in ((512, 512), (640, 384), (704, 576), (768, 768), (1024, 1024))] == [4, 4, 2, 1, 1]
    folder = tmp_path / "data"
    for i in range(5):
        write(folder, f"img{i}", size=(128, 128), colour=(40 * i, 100, 200))
    dataset = collect_items([DatasetFolder(folder, num_repeats=1)], ".txt", 128, 64, 256, 64)
    monkeypatch.setattr(latents, "ENCODE_PIXELS", 2 * 128 * 128)  # the tiny model's "big" bucket
    calls = counting(vae)
    try:
        LatentCache(vae, device="cpu", dtype=vae.dtype).cache(dataset)
    finally:
        del vae.encode
    assert calls == [2, 2, 1]
