"""Saving LoRA files the way kohya's sd-scripts does: names, metadata, hashes, keep-last-N.

- `epoch_file_name`: `NAME-01.safetensors` (more digits when there are 100+ epochs); the final epoch too.
- `save_lora`: safetensors written atomically with string metadata plus `sshs_model_hash` (sha256 of the tensor
  data, i.e. every byte after the 8-byte length and the JSON header) and `sshs_legacy_hash`, as kohya's
  `precalculate_safetensors_hashes` computes it: first 8 hex of the sha256 of the 0x10000 bytes at offset
  0x100000 of the whole file serialized with only the `ss_*` metadata (so it moves with that header's length).
- `build_metadata`: kohya's `ss_*` keys and the `modelspec.*` keys, every value a string.
- `prune_epochs`: keep the last N epoch files (moved to a trash when a trash function is given).
- `read_lora_metadata`, `legacy_sd_model_hash` (A1111's old 8-char checkpoint hash), `full_file_sha256`.

No torch at import: the page reads metadata without loading torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import struct
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_path

LORA_SUFFIX = ".safetensors"
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000
_CHUNK = 1024 * 1024


# ----- names -----
def epoch_width(total_epochs: int) -> int:
    return max(2, len(str(max(int(total_epochs), 1))))


def epoch_file_name(output_name: str, epoch: int, total_epochs: int) -> str:
    """`name-01.safetensors`; three digits from 100 epochs on, so the names sort and X/Y/Z S/R works."""
    return f"{output_name}-{int(epoch):0{epoch_width(total_epochs)}d}{LORA_SUFFIX}"


def epoch_files(output_dir: Path, output_name: str) -> list[tuple[int, Path]]:
    """`[(epoch, path)]` of the `name-NN.safetensors` files in `output_dir`, by epoch."""
    pattern = re.compile(re.escape(output_name) + r"-(\d+)" + re.escape(LORA_SUFFIX) + r"$")
    found = []
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    for path in output_dir.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    found.sort(key=lambda item: (item[0], item[1].name))
    return found


def prune_epochs(output_dir: Path, output_name: str, keep_last_n: int | None,
                 trash: Callable[[list[Path]], Any] | None = None) -> list[Path]:
    """Keep the `keep_last_n` highest-epoch `name-NN.safetensors` files; return the others, removed.

    Only files named exactly `output_name-<digits>.safetensors` are touched. With `trash`, it is called once
    with the list of paths (it must move them away, e.g. into the project's trash); without it they are
    deleted. `keep_last_n` None or < 1 keeps everything.
    """
    if not keep_last_n or int(keep_last_n) < 1:
        return []
    files = epoch_files(output_dir, output_name)
    doomed = [path for _, path in files[: max(0, len(files) - int(keep_last_n))]]
    if not doomed:
        return []
    if trash is not None:
        trash(list(doomed))
    else:
        for path in doomed:
            path.unlink(missing_ok=True)
    return doomed


# ----- hashes -----
def _safetensors_header_length(data: bytes | memoryview) -> int:
    if len(data) < 8:
        raise ValueError("not a safetensors file: shorter than its 8-byte header length")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if 8 + n > len(data):
        raise ValueError("not a safetensors file: header runs past the end")
    return n


def _window_hash(blob: bytes | memoryview) -> str:
    return hashlib.sha256(blob[LEGACY_OFFSET: LEGACY_OFFSET + LEGACY_LENGTH]).hexdigest()[:8]


def training_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """The `ss_*` keys kohya keeps when it serializes for the hashes, so a title or other user key cannot change them."""
    return {k: v for k, v in metadata.items() if k.startswith("ss_")}


def kohya_hashes(tensors: Mapping[str, Any], metadata: Mapping[str, str]) -> tuple[str, str, bytes]:
    """(`sshs_model_hash`, `sshs_legacy_hash`, serialized bytes) as kohya precalculates them.

    kohya serializes the tensors with only the `ss_*` metadata; the model hash is the sha256 of that
    serialization's tensor data, the legacy hash the window at 0x100000 of the whole serialization, header
    included, so two files with the same tensors but `ss_*` headers of another length differ.
    """
    from safetensors.torch import save as st_save

    blob = st_save(dict(tensors), metadata=training_metadata(metadata))
    data = memoryview(blob)[8 + _safetensors_header_length(blob):]
    return hashlib.sha256(data).hexdigest(), _window_hash(blob), blob


def safetensors_file_hashes(path: Path) -> tuple[str, str]:
    """The two hashes of a saved file, recomputed as kohya would from its tensors and `ss_*` metadata."""
    from safetensors.torch import load_file

    model_hash, legacy, _ = kohya_hashes(load_file(str(path)), read_lora_metadata(path))
    return model_hash, legacy


def legacy_sd_model_hash(path: Path) -> str:
    """A1111's old 8-character checkpoint hash: sha256 of 0x10000 bytes at offset 0x100000 of the file."""
    with open(path, "rb") as f:
        f.seek(LEGACY_OFFSET)
        return hashlib.sha256(f.read(LEGACY_LENGTH)).hexdigest()[:8]


def full_file_sha256(path: Path, chunk_size: int = _CHUNK) -> str:
    """sha256 of the whole file (A1111's new hash, `ss_new_sd_model_hash`), streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----- writing and reading -----
def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)  # numbers, bools ("True"), None ("None"), tuples, as kohya writes them


def save_lora(path: Path, tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write `tensors` (name -> CPU tensor) to `path` atomically, with `metadata` and the two sshs hashes.

    Returns the metadata as written (all strings). The tensors are serialized once with the `ss_*` keys
    for the hashes (kohya's way), then again with every key and the hashes; safetensors' data layout is
    deterministic, and the data section is checked to be identical before anything is written.
    """
    from safetensors.torch import save as st_save

    meta = {str(k): _as_text(v) for k, v in (metadata or {}).items()}
    meta.pop("sshs_model_hash", None)
    meta.pop("sshs_legacy_hash", None)
    tensors = {k: (v.contiguous() if not v.is_contiguous() else v) for k, v in tensors.items()}
    model_hash, legacy_hash, first = kohya_hashes(tensors, meta)
    meta["sshs_model_hash"] = model_hash
    meta["sshs_legacy_hash"] = legacy_hash
    blob = st_save(tensors, metadata=meta)
    data = memoryview(blob)[8 + _safetensors_header_length(blob):]
    if data.nbytes != len(first) - 8 - _safetensors_header_length(first) or hashlib.sha256(data).hexdigest() != model_hash:
        raise RuntimeError("safetensors wrote different tensor data on the second pass; the hash would be wrong")
    del first
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
    return meta


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor entries and `__metadata__`), without reading the data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError("too short")
            (n,) = struct.unpack("<Q", head)
            size = path.stat().st_size
            if n > size - 8 or n > 100 * 1024 * 1024:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError("header is not an object")
            return header
    except FileNotFoundError:
        raise UserError(f"{path} does not exist.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path.name} is not a valid .safetensors file ({exc}): re-download or re-save it.") from None


def read_lora_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` strings of a LoRA file (empty when it has none)."""
    meta = read_safetensors_header(path).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


# ----- metadata -----
# kohya's ss_* keys (without the prefix), in the order they are usually written.
SS_FIELDS = (
    # run
    "session_id", "training_started_at", "training_finished_at", "output_name", "learning_rate",
    "text_encoder_lr", "unet_lr", "num_train_images", "num_reg_images", "num_batches_per_epoch", "num_epochs",
    "epoch", "steps", "max_train_steps", "lr_warmup_steps", "lr_scheduler", "lr_scheduler_num_cycles",
    "lr_scheduler_power", "optimizer", "seed", "gradient_checkpointing", "gradient_accumulation_steps",
    "max_grad_norm", "cache_latents",
    # network
    "network_module", "network_dim", "network_alpha", "network_dropout", "network_args",
    # model
    "base_model_version", "v2", "v_parameterization", "clip_skip", "max_token_length", "sd_model_name",
    "sd_model_hash", "new_sd_model_hash", "vae_name", "vae_hash", "new_vae_hash",
    # training
    "mixed_precision", "full_fp16", "noise_offset", "adaptive_noise_scale", "multires_noise_iterations",
    "multires_noise_discount", "min_snr_gamma", "prior_loss_weight", "caption_dropout_rate",
    "caption_dropout_every_n_epochs", "caption_tag_dropout_rate", "face_crop_aug_range", "color_aug",
    "random_crop", "zero_terminal_snr", "scale_weight_norms", "ip_noise_gamma", "debiased_estimation",
    "weighted_captions", "training_comment",
    # dataset
    "resolution", "flip_aug", "shuffle_caption", "keep_tokens", "enable_bucket", "min_bucket_reso",
    "max_bucket_reso", "bucket_no_upscale", "bucket_reso_steps", "batch_size_per_device", "total_batch_size",
    "bucket_info", "dataset_dirs", "tag_frequency", "reg_dataset_dirs", "datasets",
)

MODELSPEC_VERSION = "1.0.1"
IMPL_STABILITY_AI = "https://github.com/Stability-AI/generative-models"
IMPL_DIFFUSERS = "diffusers"
ARCHITECTURES = {
    "sd_v1": "stable-diffusion-v1",
    "sd_v2": "stable-diffusion-v2-512",
    "sd_v2_v": "stable-diffusion-v2-768-v",
    "sdxl_base_v1-0": "stable-diffusion-xl-v1-base",
}
MODELSPEC_FIELDS = ("title", "author", "description", "license", "tags", "thumbnail", "usage_hint",
                    "trigger_phrase", "merged_from")


def _resolution_pair(resolution: Any) -> tuple[int, int]:
    if isinstance(resolution, (int, float)):
        return int(resolution), int(resolution)
    if isinstance(resolution, str):
        numbers = [int(x) for x in re.findall(r"\d+", resolution)]
        if len(numbers) == 1:
            return numbers[0], numbers[0]
        if len(numbers) >= 2:
            return numbers[0], numbers[1]
        raise ValueError(f"resolution {resolution!r} has no numbers")
    width, height = resolution
    return int(width), int(height)


def _iso_date(value: Any) -> str:
    if isinstance(value, (int, float)):
        return _dt.datetime.fromtimestamp(float(value)).replace(microsecond=0).isoformat()
    if isinstance(value, _dt.datetime):
        return value.replace(microsecond=0).isoformat()
    return str(value)


def build_metadata(**fields: Any) -> dict[str, str]:
    """kohya's metadata: `ss_<field>` for each known field plus the `modelspec.*` keys; every value a string.

    Fields are kohya's key names without `ss_` (e.g. `output_name`, `unet_lr`, `network_args={"conv_dim": "8"}`,
    `bucket_info={...}`, `tag_frequency={...}`, `resolution=512` or `(512, 512)`); dicts/lists become JSON,
    booleans `"True"`/`"False"`, None `"None"`, as kohya writes them. Defaults: a new `session_id`,
    `training_started_at` now, `base_model_version` `sd_v1` with `v2` derived from it.
    modelspec: `title` (default output_name), `date` (default training_started_at), `author`, `description`,
    `license`, `tags`, `thumbnail`, `usage_hint`, `trigger_phrase`, `merged_from`, `implementation` (kohya's:
    "diffusers" for SD1/2, Stability AI's repository for SDXL),
    `prediction_type` (default from `v_parameterization`). `extra={"key": value}` adds keys verbatim.
    An unknown field is a TypeError (a typo would otherwise silently drop a key).
    """
    extra = fields.pop("extra", None) or {}
    implementation = fields.pop("implementation", None)
    prediction_type = fields.pop("prediction_type", None)
    date = fields.pop("date", None)
    spec = {name: fields.pop(name) for name in MODELSPEC_FIELDS if name in fields}
    unknown = sorted(set(fields) - set(SS_FIELDS))
    if unknown:
        raise TypeError(f"build_metadata: unknown fields {unknown}")

    fields.setdefault("session_id", str(uuid.uuid4().int % (2 ** 31)))
    fields.setdefault("training_started_at", time.time())
    version = fields.setdefault("base_model_version", "sd_v1")
    fields.setdefault("v2", version.startswith("sd_v2"))
    if "v_parameterization" not in fields:
        fields["v_parameterization"] = version == "sd_v2_v"
    if "resolution" in fields:
        width, height = _resolution_pair(fields["resolution"])
        fields["resolution"] = f"({width}, {height})"
    else:
        width = height = 1024 if version.startswith("sdxl") else 512
    if isinstance(fields.get("network_args"), Mapping):
        fields["network_args"] = {str(k): _as_text(v) for k, v in fields["network_args"].items()}

    meta: dict[str, str] = {}
    for name in SS_FIELDS:
        if name in fields:
            meta[f"ss_{name}"] = _as_text(fields[name])

    # modelspec (sai_model_spec), as kohya's library/sai_model_spec.py writes it for a LoRA.
    meta["modelspec.sai_model_spec"] = MODELSPEC_VERSION
    meta["modelspec.architecture"] = ARCHITECTURES.get(version, version) + "/lora"
    # kohya: SD1/SD2 LoRAs are "diffusers", SDXL LoRAs Stability AI's implementation
    meta["modelspec.implementation"] = implementation or (IMPL_STABILITY_AI if version.startswith("sdxl") else IMPL_DIFFUSERS)
    meta["modelspec.title"] = _as_text(spec.pop("title", fields.get("output_name", "LoRA")))
    meta["modelspec.resolution"] = f"{width}x{height}"
    meta["modelspec.date"] = _iso_date(date if date is not None else fields["training_started_at"])
    if prediction_type is None:
        prediction_type = "v" if str(fields["v_parameterization"]) in ("True", "true", "1") else "epsilon"
    meta["modelspec.prediction_type"] = prediction_type
    clip_skip = fields.get("clip_skip")
    if clip_skip not in (None, "", "None") and not version.startswith("sdxl"):
        meta["modelspec.encoder_layer"] = _as_text(clip_skip)
    for name, value in spec.items():
        if value not in (None, ""):
            meta[f"modelspec.{name}"] = _as_text(value)
    for key, value in extra.items():
        meta[str(key)] = _as_text(value)
    return meta


def tag_frequency(caption_files: Iterable[Path]) -> dict[str, int]:
    """`ss_tag_frequency` for one folder: comma-split, stripped, lower-cased tags, counted once per caption."""
    counts: dict[str, int] = {}
    for path in caption_files:
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for tag in {t.strip().lower() for t in text.split(",") if t.strip()}:
            counts[tag] = counts.get(tag, 0) + 1
    return counts
