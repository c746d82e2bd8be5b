"""Base models: find, download and load the Stable Diffusion that a LoRA is trained on.

`training_model` may be one of the notebook's presets (anime, anylora, sd15), a single-file
checkpoint (.safetensors, or .ckpt read with weights_only=True), a diffusers folder, a
Hugging Face repo id, or a URL (Hugging Face `blob` links become `resolve` links; civitai
model pages and download links with an optional token). Single files are converted with the
diffusers configs this package ships, so nothing but the tokenizer needs the hub.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import move_file
from lora_gradio.engine.progress import Progress

CONFIG_DIR = Path(__file__).parent / "model_configs"
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Preset:
    label: str  # the notebook's wording
    url: str


# The guide's three choices, with the links its notebook used.
PRESETS = {
    "anime": Preset("Anime (animefull-final-pruned-fp16.safetensors)", "https://huggingface.co/hollowstrawberry/stable-diffusion-guide/resolve/main/models/animefull-final-pruned-fp16.safetensors"),
    "anylora": Preset("AnyLora (AnyLoRA_noVae_fp16-pruned.safetensors)", "https://huggingface.co/Lykon/AnyLoRA/resolve/main/AnyLoRA_noVae_fp16-pruned.safetensors"),
    "sd15": Preset("Stable Diffusion (sd-v1-5-pruned-noema-fp16.safetensors)", "https://huggingface.co/hollowstrawberry/stable-diffusion-guide/resolve/main/models/sd-v1-5-pruned-noema-fp16.safetensors"),
}
# Where the tokenizer of each family lives on the hub (single files do not contain one).
TOKENIZER_REPOS = {"sd_v1": "openai/clip-vit-large-patch14", "sd_v2": "stabilityai/stable-diffusion-2-1"}


@dataclass
class ModelSource:
    """Where the base model is, after presets and URLs were resolved to a local file."""

    kind: str  # "file" | "diffusers" | "hub"
    location: str  # file path, folder path or repo id
    name: str  # for ss_sd_model_name

    @property
    def path(self) -> Path:
        return Path(self.location)


@dataclass
class BaseModel:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    version: str  # sd_v1 | sd_v2 | sd_v2_v
    source: ModelSource

    @property
    def v_parameterization(self) -> bool:
        return self.version == "sd_v2_v"


# Resolving ---------------------------------------------------------------------------------------


def preset_for(spec: str) -> "Preset | None":
    key = spec.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    for preset in PRESETS.values():  # the notebook's own labels work too
        if key == preset.label.lower() or key == preset.label.split(" (")[0].lower():
            return preset
    return None


def normalize_url(url: str, civitai_token: str = "") -> str:
    """Turn the links people paste into direct download links."""
    parsed = urlparse(url)
    host = parsed.netloc.lower()
    if host.endswith("huggingface.co") and "/blob/" in parsed.path:
        return url.replace("/blob/", "/resolve/", 1)
    if host.endswith("civitai.com"):
        version = parse_qs(parsed.query).get("modelVersionId", [None])[0]
        match = re.match(r"^/api/download/models/(\d+)", parsed.path)
        if match:
            version = match.group(1)
        if version is None:
            raise UserError(
                f"{url} is a civitai model page without a version: open the version you want and copy its "
                "download link (https://civitai.com/api/download/models/NUMBER), or a page link with ?modelVersionId=NUMBER."
            )
        direct = f"https://civitai.com/api/download/models/{version}"
        return f"{direct}?token={civitai_token}" if civitai_token else direct
    return url


def resolve_source(spec: str, models_dir: Path, progress: "Progress | None" = None, civitai_token: str = "") -> ModelSource:
    """Find or download the model named by `spec` (see the module doc); never loads weights."""
    spec = (spec or "").strip().strip('"')
    if not spec:
        raise UserError("No base model chosen: set training_model to anime, anylora, sd15, a file, a folder, a repo id or a link.")
    preset = preset_for(spec)
    if preset is not None:
        spec = preset.url
    if re.match(r"^https?://", spec):
        url = normalize_url(spec, civitai_token or os.environ.get("CIVITAI_TOKEN", ""))
        path = download_model(url, models_dir, progress)
        return ModelSource("file", str(path), path.name)
    local = Path(spec).expanduser()
    if local.is_file():
        if local.suffix.lower() not in MODEL_EXTENSIONS:
            raise UserError(f"{local} is not a model file: use a .safetensors or .ckpt checkpoint, or a diffusers folder.")
        return ModelSource("file", str(local.resolve()), local.name)
    if local.is_dir():
        if (local / "model_index.json").is_file() or (local / "unet").is_dir():
            return ModelSource("diffusers", str(local.resolve()), local.name)
        raise UserError(f"{local} is a folder but not a diffusers model (no model_index.json or unet/): point at the .safetensors file or the model folder itself.")
    if re.match(r"^[\w.-]+/[\w.-]+$", spec) and not spec.endswith(MODEL_EXTENSIONS):
        return ModelSource("hub", spec, spec)
    raise UserError(f"Cannot find the base model {spec!r}: it is not a preset (anime, anylora, sd15), an existing file or folder, a Hugging Face repo id or a link.")


# Downloading -------------------------------------------------------------------------------------


def _file_name(url: str, response: Any) -> str:
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", disposition, re.IGNORECASE)
    name = unquote(match.group(1)) if match else unquote(Path(urlparse(url).path).name)
    name = Path(name).name  # never a path from the server
    if not name.lower().endswith(MODEL_EXTENSIONS):
        name += ".safetensors"
    return name


def download_model(url: str, models_dir: Path, progress: "Progress | None" = None, chunk: int = 1 << 16) -> Path:
    """Download `url` into `models_dir`, resuming a partial `.part` file; return the checked file.

    A finished file is reused. An HTML page, a 401/403/404 or a truncated download gets one
    clear message and never lands under the final name.
    """
    import requests

    progress = progress or Progress()
    models_dir.mkdir(parents=True, exist_ok=True)
    shown = re.sub(r"token=[^&]+", "token=***", url)
    try:
        head = requests.get(url, stream=True, timeout=30, allow_redirects=True)
    except requests.RequestException as exc:
        raise UserError(f"Cannot reach {shown} ({type(exc).__name__}): check the link and your internet connection.") from None
    with head:
        _raise_for_status(head, shown)
        name = _file_name(url, head)
        target = models_dir / name
        if target.is_file():
            check_model_file(target)
            progress.log(f"using {target} (already downloaded)")
            return target
        _refuse_html(head.headers.get("content-type", ""), shown)
    part = target.with_name(target.name + ".part")
    start = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    done, total = start, None
    try:
        with requests.get(url, stream=True, timeout=30, headers=headers) as response:
            _raise_for_status(response, shown)
            if start and response.status_code != 206:
                start = done = 0  # the server ignored the range: start over
            total = start + int(response.headers.get("content-length") or 0) or None
            with open(part, "ab" if start else "wb") as out:
                for data in response.iter_content(chunk):
                    progress.check_cancel()
                    out.write(data)
                    done += len(data)
                    progress.update(done >> 20, (total >> 20) if total else None, f"downloading {name} (MB)")
    except requests.RequestException as exc:
        raise UserError(f"The download of {name} broke off at {done:,} bytes ({type(exc).__name__}): run again to resume it.") from None
    if total and done != total:
        raise UserError(f"The download of {name} stopped at {done:,} of {total:,} bytes: run again to resume it.")
    check_model_file(part, shown_name=name)
    move_file(part, target)
    return target


def _raise_for_status(response: Any, shown_url: str) -> None:
    code = response.status_code
    if code in (401, 403):
        raise UserError(f"{shown_url} refused the download (HTTP {code}): civitai needs an API token for this model (set CIVITAI_TOKEN or the civitai token setting); a private Hugging Face repo needs `huggingface-cli login`.")
    if code == 404:
        raise UserError(f"{shown_url} does not exist (HTTP 404): check the link; on Hugging Face copy the link of the file itself.")
    if code >= 400:
        raise UserError(f"{shown_url} answered HTTP {code}: try again later or use another link.")


def _refuse_html(content_type: str, shown_url: str) -> None:
    if "text/html" in content_type.lower():
        raise UserError(f"{shown_url} returned a web page, not a model: use the file's download link (on Hugging Face a /resolve/ link, on civitai the Download button's link).")


def check_model_file(path: Path, shown_name: str = "") -> None:
    """Refuse HTML pages, truncated safetensors and non-checkpoints with a clear message."""
    name = shown_name or path.name
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if head.lstrip()[:15].lower().startswith((b"<!doctype", b"<html", b"<head", b"{\"error")):
        raise UserError(f"{name} is a web page or an error message, not a model: delete it and download the file's own link.")
    if path.suffix.lower() == ".safetensors" or name.lower().endswith(".safetensors"):
        if size < 8:
            raise UserError(f"{name} is empty or cut off: delete it and download it again.")
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len > size - 8 or header_len > 100 << 20:
            raise UserError(f"{name} is not a valid .safetensors file (truncated or corrupt): delete it and download it again.")
        with open(path, "rb") as f:
            f.seek(8)
            try:
                header = json.loads(f.read(header_len))
            except ValueError:
                raise UserError(f"{name} has a corrupt .safetensors header: delete it and download it again.") from None
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end > size:
            raise UserError(f"{name} is truncated ({size:,} of {8 + header_len + end:,} bytes): delete it and download it again.")
        return
    if not zipfile.is_zipfile(path) and head[:2] != b"\x80\x02":
        raise UserError(f"{name} is not a PyTorch checkpoint or safetensors file: check that the link points at a model.")


# Loading -----------------------------------------------------------------------------------------


def detect_version(path: Path) -> str:
    """sd_v1 / sd_v2 / sd_v2_v from a single file's tensor names (SDXL is refused for now)."""
    keys = _checkpoint_keys(path)
    if any(k.startswith("conditioner.embedders") for k in keys):
        raise UserError(f"{path.name} is an SDXL model: training SDXL LoRAs is not supported yet; use an SD 1.5 model (e.g. the anime or sd15 preset).")
    if any(k.startswith("cond_stage_model.model.transformer") for k in keys):
        # SD 2.x: the 768 px models predict v, the 512 px "base" ones predict noise.
        return "sd_v2" if "base" in path.name.lower() or "512" in path.name else "sd_v2_v"
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise UserError(f"{path.name} is not a Stable Diffusion checkpoint in the original layout (no model.diffusion_model weights): is it a LoRA or a VAE?")
    return "sd_v1"


def _checkpoint_keys(path: Path) -> list[str]:
    if path.suffix.lower() == ".safetensors":
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return [k for k in json.loads(f.read(n)) if k != "__metadata__"]
    return list(load_ckpt_state_dict(path).keys())


def load_ckpt_state_dict(path: Path) -> dict:
    """A .ckpt's weights, read with weights_only=True: a pickle that needs more is refused."""
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(
            f"{path.name} cannot be read safely ({type(exc).__name__}): it needs code execution to load, which could run malware. "
            "Use a .safetensors version of this model."
        ) from None
    return data.get("state_dict", data) if isinstance(data, dict) else data


def safetensors_from_ckpt(path: Path) -> Path:
    """Convert a .ckpt to a .safetensors beside it once (safe load, faster later loads)."""
    from safetensors.torch import save_file

    from lora_gradio.engine.fsutil import atomic_path

    target = path.with_suffix(".safetensors")
    if target.is_file():
        return target
    state = {k: v.contiguous() for k, v in load_ckpt_state_dict(path).items() if hasattr(v, "contiguous")}
    with atomic_path(target) as tmp:
        save_file(state, str(tmp))
    return target


def clip_tokenizer(version: str, config_folder: "Path | None" = None):
    """The CLIP tokenizer: from a model folder if it has one, else the hub (cache first)."""
    from transformers import CLIPTokenizer

    if config_folder is not None and (config_folder / "tokenizer").is_dir():
        return CLIPTokenizer.from_pretrained(config_folder / "tokenizer")
    repo = TOKENIZER_REPOS["sd_v2" if version.startswith("sd_v2") else "sd_v1"]
    subfolder = "tokenizer" if version.startswith("sd_v2") else None
    for offline in (True, False):
        try:
            return CLIPTokenizer.from_pretrained(repo, subfolder=subfolder, local_files_only=offline)
        except Exception:
            continue
    raise UserError(f"The CLIP tokenizer ({repo}) is neither cached nor downloadable: connect to the internet once, or set HF_HOME to a cache that has it.")


def load_base_model(source: ModelSource, dtype: Any = None, tokenizer: Any = None, config_dir: "Path | None" = None) -> BaseModel:
    """Load UNet, VAE, text encoder, tokenizer and the DDPM noise scheduler of `source`.

    A single file is converted with the shipped SD1.x/SD2.x configs, or with `config_dir`
    (a diffusers-layout folder of configs) for an architecture of its own.
    """
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    dtype = dtype or torch.float32
    try:
        if source.kind == "file":
            path = source.path
            check_model_file(path)
            if path.suffix.lower() != ".safetensors":
                path = safetensors_from_ckpt(path)
            version = detect_version(path)
            config = config_dir or CONFIG_DIR / ("sd15" if version == "sd_v1" else "sd2")
            pipe = StableDiffusionPipeline.from_single_file(
                str(path), config=str(config), local_files_only=True, torch_dtype=dtype,
                tokenizer=tokenizer or clip_tokenizer(version, config_dir), safety_checker=None, feature_extractor=None,
            )
        else:
            local = source.kind == "diffusers"
            pipe = StableDiffusionPipeline.from_pretrained(source.location, torch_dtype=dtype, safety_checker=None, feature_extractor=None, local_files_only=local)
            version = _diffusers_version(pipe)
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"Cannot load the base model {source.name}: {str(exc).splitlines()[0]}") from None
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False,
        prediction_type="v_prediction" if version == "sd_v2_v" else "epsilon",
    )
    return BaseModel(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, scheduler, version, source)


def _diffusers_version(pipe: Any) -> str:
    hidden = pipe.text_encoder.config.hidden_size
    if hidden >= 1024:
        return "sd_v2_v" if pipe.scheduler.config.get("prediction_type") == "v_prediction" else "sd_v2"
    return "sd_v1"
