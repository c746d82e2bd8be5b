"""Base models: find, download and load the Stable Diffusion (1.x, 2.x or SDXL) that a LoRA is trained on.

`training_model` may be one of the notebooks' presets (SD 1.5: anime, anylora, sd15; SDXL: illustrious,
noobai_eps, noobai_vpred, pony, animagine, sdxl), a single-file checkpoint (.safetensors, or .ckpt read
with weights_only=True), a diffusers folder, a Hugging Face repo id, or a URL (Hugging Face `blob` links
become `resolve` links; civitai model pages and download links with an optional token). Single files are
converted with the diffusers configs this package ships, so nothing but the tokenizers needs the hub.
The family (SD 1.x/2.x or SDXL) and v-prediction are read from the file or folder itself
(`inspect_checkpoint`, `describe_model`); a file that is neither is refused with the reason.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from dataclasses import field as dc_field
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
    family: str = "sd"
    v_pred: bool = False


# The SD 1.5 guide's three choices and the XL notebook's six, with the links the notebooks used.
PRESETS = {
    "anime": Preset("Anime (animefull-final-pruned-fp16.safetensors)", "https://huggingface.co/hollowstrawberry/stable-diffusion-guide/resolve/main/models/animefull-final-pruned-fp16.safetensors"),
    "anylora": Preset("AnyLora (AnyLoRA_noVae_fp16-pruned.safetensors)", "https://huggingface.co/Lykon/AnyLoRA/resolve/main/AnyLoRA_noVae_fp16-pruned.safetensors"),
    "sd15": Preset("Stable Diffusion (sd-v1-5-pruned-noema-fp16.safetensors)", "https://huggingface.co/hollowstrawberry/stable-diffusion-guide/resolve/main/models/sd-v1-5-pruned-noema-fp16.safetensors"),
    "illustrious": Preset("Illustrious XL 0.1", "https://huggingface.co/OnomaAIResearch/Illustrious-xl-early-release-v0/resolve/main/Illustrious-XL-v0.1.safetensors", "sdxl"),
    "noobai_eps": Preset("NoobAI Eps 1.1", "https://huggingface.co/Laxhar/noobai-XL-1.1/resolve/main/NoobAI-XL-v1.1.safetensors", "sdxl"),
    "noobai_vpred": Preset("NoobAI V-Pred 1.0", "https://huggingface.co/Laxhar/noobai-XL-Vpred-1.0/resolve/main/NoobAI-XL-Vpred-v1.0.safetensors", "sdxl", v_pred=True),
    "pony": Preset("Pony Diffusion V6 XL", "https://civitai.com/api/download/models/290640", "sdxl"),
    "animagine": Preset("Animagine XL V3", "https://civitai.com/api/download/models/293564", "sdxl"),
    "sdxl": Preset("Stable Diffusion XL 1.0 base", "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors", "sdxl"),
}
DEFAULT_SDXL_PRESET = "illustrious"
# Where the tokenizers of each family live on the hub (single files do not contain them): (repo, subfolder).
TOKENIZER_REPOS = {
    "sd_v1": [("openai/clip-vit-large-patch14", None)],
    "sd_v2": [("stabilityai/stable-diffusion-2-1", "tokenizer")],
    "sdxl": [("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"), ("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2")],
}


@dataclass
class ModelSource:
    """Where the base model is, after presets and URLs were resolved to a local file."""

    kind: str  # "file" | "diffusers" | "hub"
    location: str  # file path, folder path or repo id
    name: str  # for ss_sd_model_name
    preset: "Preset | None" = None  # the preset it came from, which says its family and v-prediction

    @property
    def path(self) -> Path:
        return Path(self.location)


@dataclass
class BaseModel:
    unet: Any
    vae: Any
    text_encoders: list  # SD 1.x/2.x: [CLIP]; SDXL: [CLIP-L, OpenCLIP bigG with projection]
    tokenizers: list
    noise_scheduler: Any  # DDPM with the model's prediction type (and zero terminal SNR when asked)
    version: str  # sd_v1 | sd_v2 | sd_v2_v | sdxl
    source: ModelSource
    family: Any = None  # family.ModelFamily
    v_pred: bool = False
    zero_terminal_snr: bool = False
    notes: list = dc_field(default_factory=list)  # what was read from the model, for the run's log

    def __post_init__(self) -> None:
        if self.family is None:
            from lora_gradio.engine.train.family import family_named

            self.family = family_named("sdxl" if self.version == "sdxl" else "sd")

    @property
    def text_encoder(self) -> Any:
        return self.text_encoders[0]

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    @property
    def v_parameterization(self) -> bool:
        return self.v_pred

    @property
    def base_model_version(self) -> str:
        """kohya's ss_base_model_version."""
        return self.family.base_model_version(self.version, self.v_pred)


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


def classify_spec(spec: str) -> tuple[str, str, "Preset | None"]:
    """(kind, location, preset) of a training_model without downloading or loading anything: kind is
    "url", "file", "diffusers" or "hub". Anything else is refused with what it could have been."""
    spec = (spec or "").strip().strip('"')
    if not spec:
        raise UserError(f"No base model chosen: set training_model to a preset ({', '.join(PRESETS)}), a file, a folder, a repo id or a link.")
    preset = preset_for(spec)
    if preset is not None:
        spec = preset.url
    if re.match(r"^https?://", spec):
        return "url", spec, preset
    local = Path(spec).expanduser()
    if local.is_file():
        if local.suffix.lower() not in MODEL_EXTENSIONS:
            raise UserError(f"{local} is not a model file: use a .safetensors or .ckpt checkpoint, or a diffusers folder.")
        return "file", str(local.resolve()), None
    if local.is_dir():
        if (local / "model_index.json").is_file() or (local / "unet").is_dir():
            return "diffusers", str(local.resolve()), None
        raise UserError(f"{local} is a folder but not a diffusers model (no model_index.json or unet/): point at the .safetensors file or the model folder itself.")
    if re.match(r"^[\w.-]+/[\w.-]+$", spec) and not spec.endswith(MODEL_EXTENSIONS):
        return "hub", spec, None
    names = list(PRESETS) + [p.label.split(" (")[0] for p in PRESETS.values()]
    close = difflib.get_close_matches(spec.lower(), [n.lower() for n in names], n=1, cutoff=0.6)
    hint = f" Did you mean {next(n for n in names if n.lower() == close[0])!r}?" if close else ""
    raise UserError(f"Cannot find the base model {spec!r}: it is not a preset ({', '.join(PRESETS)}), an existing file or folder, a Hugging Face repo id or a link.{hint}")


def resolve_source(spec: str, models_dir: Path, progress: "Progress | None" = None, civitai_token: str = "") -> ModelSource:
    """Find or download the model named by `spec` (see the module doc); never loads weights."""
    kind, location, preset = classify_spec(spec)
    if kind == "url":
        url = normalize_url(location, civitai_token or os.environ.get("CIVITAI_TOKEN", ""))
        path = download_model(url, models_dir, progress)
        return ModelSource("file", str(path), path.name, preset)
    return ModelSource(kind, location, Path(location).name if kind != "hub" else location)


# Downloading -------------------------------------------------------------------------------------


def _file_name(url: str, response: Any) -> str:
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", disposition, re.IGNORECASE)
    name = unquote(match.group(1)) if match else unquote(Path(urlparse(url).path).name)
    name = Path(name).name  # never a path from the server
    if not name.lower().endswith(MODEL_EXTENSIONS):
        name += ".safetensors"
    return name


# Base models are big: a whole download may take hours, but it must keep moving (a stall or a trickle
# stops it, and the next run resumes the `.part` file).
MODEL_DEADLINE_S = 6 * 3600.0
MODEL_MIN_RATE = 16 * 1024.0  # bytes/s, averaged over MODEL_RATE_WINDOW_S
MODEL_RATE_WINDOW_S = 60.0


def download_model(url: str, models_dir: Path, progress: "Progress | None" = None, chunk: int = 1 << 16) -> Path:
    """Download `url` into `models_dir`, resuming a partial `.part` file; return the checked file.

    A finished file is reused. An HTML page, a 401/403/404 or a truncated download gets one
    clear message and never lands under the final name. The download has an overall deadline and a
    minimum rate, and a cancel stops it within a second, even while the server sends nothing.
    """
    from lora_gradio.engine.downloader import StreamFailed, open_url, stream_to_file

    progress = progress or Progress()
    models_dir.mkdir(parents=True, exist_ok=True)
    shown = re.sub(r"token=[^&]+", "token=***", url)
    try:
        with open_url(url, timeout=30, deadline_s=120, cancel=progress.cancelled) as head:
            _raise_for_status(head, shown)
            name = _file_name(url, head)
            target = models_dir / name
            if target.is_file():
                check_model_file(target)
                progress.log(f"using {target} (already downloaded)")
                return target
            _refuse_html(head.headers.get("content-type", ""), shown)
    except StreamFailed as exc:
        raise UserError(f"Cannot reach {shown} ({exc.reason}): check the link and your internet connection.") from None
    part = target.with_name(target.name + ".part")

    def report(done: int, total: "int | None") -> None:
        progress.update(done >> 20, (total >> 20) if total else None, f"downloading {name} (MB)")

    try:
        stream_to_file(url, part, resume=True, timeout=30, deadline_s=MODEL_DEADLINE_S, min_rate=MODEL_MIN_RATE,
                       rate_window_s=MODEL_RATE_WINDOW_S, cancel=progress.cancelled,
                       check=lambda response: _raise_for_status(response, shown), on_progress=report, chunk=chunk)
    except StreamFailed as exc:
        progress.check_cancel()  # a cancel is a cancel, not a failed download
        raise UserError(f"The download of {name} stopped at {exc.received:,} bytes ({exc.reason}): run again to resume it.") from None
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


# Recognising ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's tensor names (and a few shapes) say about it."""

    family: str  # "sd" | "sdxl"
    version: str  # sd_v1 | sd_v2 | sd_v2_v | sdxl
    v_pred: bool  # the file says so (SD2-768, or a `v_pred` key as Forge reads it)
    how: str  # for messages and the log


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """The family and prediction type of a single-file checkpoint, from its header alone.

    Refused with the reason: a LoRA or VAE, an inpainting model (9 input channels), SDXL's refiner.
    """
    shapes = _checkpoint_shapes(path)
    keys = shapes.keys()
    if not any(k.startswith("model.diffusion_model.") for k in keys):
        raise UserError(f"{path.name} is not a Stable Diffusion checkpoint in the original layout (no model.diffusion_model weights): is it a LoRA or a VAE?")
    first_conv = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if first_conv and len(first_conv) == 4 and first_conv[1] != 4:
        raise UserError(f"{path.name} is an inpainting (or other special) model with {first_conv[1]} input channels: train on the normal version of this model; a LoRA trained on it works on the inpainting one too.")
    v_pred_key = "v_pred" in keys
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return CheckpointInfo("sdxl", "sdxl", v_pred_key, f"{path.name} is an SDXL model" + (" (v-prediction: it has a v_pred key)" if v_pred_key else ""))
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise UserError(f"{path.name} is SDXL's refiner, which LoRAs are not trained on: use an SDXL base model such as the illustrious preset.")
    if any(k.startswith("conditioner.") for k in keys):
        raise UserError(f"{path.name} has SDXL-style text encoders but not both of SDXL's: it is not a model this tool can train on.")
    if any(k.startswith("cond_stage_model.model.transformer") for k in keys):
        # SD 2.x: the 768 px models predict v, the 512 px "base" ones predict noise.
        v2_v = not ("base" in path.name.lower() or "512" in path.name) or v_pred_key
        return CheckpointInfo("sd", "sd_v2_v" if v2_v else "sd_v2", v2_v, f"{path.name} is an SD 2.x model")
    return CheckpointInfo("sd", "sd_v1", v_pred_key, f"{path.name} is an SD 1.x model")


def detect_version(path: Path) -> str:
    """sd_v1 / sd_v2 / sd_v2_v / sdxl from a single file's tensor names."""
    return inspect_checkpoint(path).version


def _checkpoint_shapes(path: Path) -> dict[str, list]:
    if path.suffix.lower() == ".safetensors":
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        return {k: v.get("shape", []) for k, v in header.items() if k != "__metadata__"}
    return {k: list(getattr(v, "shape", [])) for k, v in load_ckpt_state_dict(path).items()}


def diffusers_family(folder: Path) -> str:
    """"sdxl" or "sd" from a diffusers folder's model_index.json (or its unet/text_encoder_2 folders)."""
    index = folder / "model_index.json"
    if index.is_file():
        try:
            name = str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
        except (OSError, ValueError):
            name = ""
        if "Refiner" in name or "Img2Img" in name or "Inpaint" in name:
            raise UserError(f"{folder} is a {name} model, which LoRAs are not trained on: use a base (text-to-image) model.")
        if name.startswith("StableDiffusionXL"):
            return "sdxl"
        if name:
            return "sd"
    return "sdxl" if (folder / "text_encoder_2").is_dir() else "sd"


@dataclass(frozen=True)
class ModelInfo:
    """What can be known about a `training_model` before it is downloaded or loaded."""

    family: "str | None"  # None: unknown until downloaded (a link or repo id that is no preset)
    v_pred: bool
    how: str


def describe_model(spec: str) -> ModelInfo:
    """The family and v-prediction of a `training_model`, from cheap reads only (a preset, a file's
    header, a folder's model_index.json); never downloads or loads weights."""
    spec = (spec or "").strip().strip('"')
    preset = preset_for(spec)
    if preset is not None:
        return ModelInfo(preset.family, preset.v_pred, f"the {preset.label} preset")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() == ".safetensors":
        check_model_file(path)  # a broken header must not make us read gigabytes
        info = inspect_checkpoint(path)
        return ModelInfo(info.family, info.v_pred, info.how)
    if path.is_dir():
        return ModelInfo(diffusers_family(path), _diffusers_v_pred(path), f"read from {path.name}")
    return ModelInfo(None, False, "unknown until it is downloaded")


def _diffusers_v_pred(folder: Path) -> bool:
    config = folder / "scheduler" / "scheduler_config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("prediction_type") == "v_prediction"
    except (OSError, ValueError):
        return False


# Loading -----------------------------------------------------------------------------------------


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


def clip_tokenizers(version: str, config_folder: "Path | None" = None) -> list:
    """The model's CLIP tokenizer(s) (SDXL has two): from a model folder that has them, else the hub
    (cache first)."""
    from transformers import CLIPTokenizer

    subfolders = ["tokenizer", "tokenizer_2"] if version == "sdxl" else ["tokenizer"]
    if config_folder is not None and all((config_folder / sub).is_dir() for sub in subfolders):
        return [CLIPTokenizer.from_pretrained(config_folder / sub) for sub in subfolders]
    found = []
    for repo, subfolder in TOKENIZER_REPOS["sd_v2" if version.startswith("sd_v2") else version]:
        for offline in (True, False):
            try:
                found.append(CLIPTokenizer.from_pretrained(repo, subfolder=subfolder, local_files_only=offline))
                break
            except Exception:
                continue
        else:
            raise UserError(f"The CLIP tokenizer ({repo}) is neither cached nor downloadable: connect to the internet once, or set HF_HOME to a cache that has it.")
    return found


def clip_tokenizer(version: str, config_folder: "Path | None" = None):
    """The (first) CLIP tokenizer of `version`."""
    return clip_tokenizers(version, config_folder)[0]


def load_base_model(source: ModelSource, dtype: Any = None, tokenizer: Any = None, config_dir: "Path | None" = None,
                    v_pred: bool = False, zero_terminal_snr: bool = False) -> BaseModel:
    """Load UNet, VAE, text encoder(s), tokenizer(s) and the DDPM noise scheduler of `source`.

    The family is read from the model. A single file is converted with the shipped SD1.x/SD2.x/SDXL
    configs, or with `config_dir` (a diffusers-layout folder of configs) for an architecture of its own.
    v-prediction is used when the model says so (SD2-768, a `v_pred` key, a v-pred scheduler config,
    the preset) or `v_pred` asks for it; `zero_terminal_snr` then rescales the noise schedule.
    """
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    dtype = dtype or torch.float32
    notes: list[str] = []
    try:
        if source.kind == "file":
            path = source.path
            check_model_file(path)
            if path.suffix.lower() != ".safetensors":
                path = safetensors_from_ckpt(path)
            info = inspect_checkpoint(path)
            version, model_v_pred = info.version, info.v_pred
            notes.append(info.how)
            pipeline_class = StableDiffusionXLPipeline if info.family == "sdxl" else StableDiffusionPipeline
            config = config_dir or CONFIG_DIR / {"sd_v1": "sd15", "sdxl": "sdxl"}.get(version, "sd2")
            tokenizers = [tokenizer] if tokenizer is not None else clip_tokenizers(version, config_dir)
            extra = {"tokenizer_2": tokenizers[1]} if info.family == "sdxl" else {"safety_checker": None, "feature_extractor": None}
            pipe = pipeline_class.from_single_file(
                str(path), config=str(config), local_files_only=True, torch_dtype=dtype, tokenizer=tokenizers[0], **extra,
            )
        else:
            local = source.kind == "diffusers"
            family = diffusers_family(source.path) if local else _hub_family(source.location)
            if family == "sdxl":
                pipe = StableDiffusionXLPipeline.from_pretrained(source.location, torch_dtype=dtype, local_files_only=local)
                version = "sdxl"
            else:
                pipe = StableDiffusionPipeline.from_pretrained(source.location, torch_dtype=dtype, safety_checker=None, feature_extractor=None, local_files_only=local)
                version = _diffusers_version(pipe)
            model_v_pred = pipe.scheduler.config.get("prediction_type") == "v_prediction" or version == "sd_v2_v"
            notes.append(f"{source.name} is an {'SDXL' if version == 'sdxl' else 'SD ' + ('2.x' if version.startswith('sd_v2') else '1.x')} model (diffusers layout)")
    except UserError:
        raise
    except OSError as exc:
        raise UserError(f"Cannot load the base model {source.name}: {str(exc).splitlines()[0]}") from None
    preset_v_pred = bool(source.preset and source.preset.v_pred)
    use_v_pred = model_v_pred or preset_v_pred or bool(v_pred)
    if (model_v_pred or preset_v_pred) and not v_pred:
        notes.append("v-prediction: the model is a v-prediction model, so it is trained as one (v_pred on); "
                     "training it as a noise-prediction model would give black or washed-out images")
    ztsnr = use_v_pred and zero_terminal_snr
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False,
        prediction_type="v_prediction" if use_v_pred else "epsilon", rescale_betas_zero_snr=ztsnr,
    )
    text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if version == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if version == "sdxl" else [])
    return BaseModel(pipe.unet, pipe.vae, text_encoders, tokenizers, scheduler, version, source, v_pred=use_v_pred,
                     zero_terminal_snr=ztsnr, notes=notes)


def _hub_family(repo: str) -> str:
    """A hub repo's family from its model_index.json (cached or downloaded, a few hundred bytes)."""
    from huggingface_hub import hf_hub_download

    for offline in (True, False):
        try:
            return diffusers_family(Path(hf_hub_download(repo, "model_index.json", local_files_only=offline)).parent)
        except UserError:
            raise
        except Exception:
            continue
    return "sd"  # from_pretrained then says what is wrong with the repo


def _diffusers_version(pipe: Any) -> str:
    hidden = pipe.text_encoder.config.hidden_size
    if hidden >= 1024:
        return "sd_v2_v" if pipe.scheduler.config.get("prediction_type") == "v_prediction" else "sd_v2"
    return "sd_v1"
