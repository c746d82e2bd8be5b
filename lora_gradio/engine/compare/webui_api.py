"""Sending the comparison to a running AUTOMATIC1111 or Forge WebUI (started with --api): `send_to_webui`
renders the same grid there with its X/Y/Z plot script (`webui_xyz_payload` builds the request)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lora_gradio.engine.compare.epochs import plan, prompt_of
from lora_gradio.engine.compare.settings import COMPARE_FOLDER
from lora_gradio.engine.compare.xyz import xyz_strings
from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_write_text, unique_path
from lora_gradio.engine.progress import Progress
from lora_gradio.engine.project import Project

WEBUI_SCRIPT = "x/y/z plot"


def _choice_label(choice: Any) -> str:
    if isinstance(choice, (list, tuple)) and choice:
        return str(choice[0])  # Gradio 4 (Forge): [label, value]
    return str(choice)


def xyz_script_args(script_info: Any, is_img2img: bool = False) -> tuple[int, list[Any]]:
    """(index of the 'Prompt S/R' axis, the script's default args) from `/sdapi/v1/script-info`.

    The axis list differs between A1111 (7) and Forge (8), so the index is looked up, never assumed.
    """
    scripts = script_info if isinstance(script_info, list) else []
    for script in scripts:
        if str(script.get("name", "")).lower() == WEBUI_SCRIPT and bool(script.get("is_img2img")) == is_img2img:
            args = script.get("args") or []
            defaults = [arg.get("value") for arg in args]
            choices = (args[0].get("choices") if args else None) or []
            labels = [_choice_label(c) for c in choices]
            if "Prompt S/R" in labels:
                return labels.index("Prompt S/R"), defaults
            raise UserError("The WebUI's X/Y/Z plot has no 'Prompt S/R' axis in its script info: update the WebUI, or use the X/Y/Z strings by hand.")
    raise UserError("The WebUI does not list the X/Y/Z plot script (/sdapi/v1/script-info): is it an AUTOMATIC1111 or Forge WebUI started with --api?")


def webui_xyz_payload(prompt: str, negative_prompt: str, x_values: str, y_values: str, *, axis_index: int,
                      seed: int = 42, steps: int = 20, cfg_scale: float = 7.0, width: int = 512, height: int = 512,
                      batch: int = 1, sampler: str = "Euler a", clip_skip: "int | None" = None,
                      defaults: "Sequence[Any] | None" = None) -> dict[str, Any]:
    """The `/sdapi/v1/txt2img` body that renders an X/Y grid with the X/Y/Z plot script, both axes Prompt S/R.

    script_args (A1111 1.10 and Forge): [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown,
    z_type, z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode] and, on newer versions, more (draw_grid):
    those keep the script's defaults from `defaults` (script-info), so the list is always complete.
    """
    ours = [axis_index, x_values, [], axis_index, y_values, [], 0, "", [], True, False, False, False, False, False, False, 0, False]
    extra = list(defaults[len(ours):]) if defaults and len(defaults) > len(ours) else []
    payload: dict[str, Any] = {
        "prompt": prompt, "negative_prompt": negative_prompt, "seed": int(seed), "steps": int(steps), "cfg_scale": float(cfg_scale),
        "width": int(width), "height": int(height), "batch_size": int(batch), "n_iter": 1, "sampler_name": sampler,
        "script_name": WEBUI_SCRIPT, "script_args": ours + extra, "send_images": True, "save_images": False,
    }
    if clip_skip:
        payload["override_settings"] = {"CLIP_stop_at_last_layers": int(clip_skip)}
    return payload


@dataclass
class WebuiResult:
    grid: str
    record: str
    prompt: str
    x_values: str
    y_values: str
    seconds: float = 0.0

    def summary(self) -> str:
        return f"The WebUI rendered the grid in {self.seconds:.0f} s: {self.grid}"


def send_to_webui(url: str, project: Project, progress: "Progress | None" = None, auth: "tuple[str, str] | None" = None,
                  timeout_s: float = 3600, **overrides: Any) -> WebuiResult:
    """Render the comparison in a running WebUI (started with --api): check that it has the epoch files,
    find the Prompt S/R axis, run txt2img with the X/Y/Z plot, save the grid it returns under output/compare/.

    Cancelling interrupts the WebUI's generation.
    """
    import base64
    import threading

    import requests

    progress = progress or Progress()
    started = time.monotonic()
    settings, train, name, chosen = plan(project, overrides)
    strings = xyz_strings(name, chosen, settings.weights, prompt_of(project, settings), settings.negative_prompt)
    base = url.rstrip("/")
    session = requests.Session()
    if auth:
        session.auth = tuple(auth)

    def call(method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = session.request(method, base + path, timeout=kwargs.pop("timeout", 30), **kwargs)
        except requests.RequestException as exc:
            raise UserError(f"Cannot reach the WebUI at {base} ({type(exc).__name__}): start it with --api and check the address.") from None
        if response.status_code in (401, 403):
            raise UserError(f"The WebUI at {base} refused the request (HTTP {response.status_code}): give its --api-auth user and password.")
        if response.status_code == 404:
            raise UserError(f"The WebUI at {base} has no {path} (HTTP 404): start it with the --api flag.")
        if response.status_code >= 400:
            detail = response.text[:200].replace("\n", " ")
            raise UserError(f"The WebUI answered HTTP {response.status_code} to {path}: {detail}")
        try:
            return response.json()
        except ValueError:
            raise UserError(f"The WebUI at {base} did not answer {path} with JSON: is this address a WebUI?") from None

    progress.update(0, None, "asking the WebUI")
    wanted = {Path(p).stem for _, p in chosen}

    def missing() -> set[str]:
        listed = call("GET", "/sdapi/v1/loras")
        names = {str(item.get("name", "")) for item in listed} if isinstance(listed, list) else set()
        return wanted - names

    if missing():
        call("POST", "/sdapi/v1/refresh-loras")
        absent = missing()
        if absent:
            raise UserError(f"The WebUI has no {', '.join(sorted(absent))}: copy the files from {project.output_dir} into the WebUI's models/Lora folder, then try again.")
    axis, defaults = xyz_script_args(call("GET", "/sdapi/v1/script-info"))
    from lora_gradio.engine.train.config import model_family

    # SDXL always uses its encoders' penultimate layers: the WebUI's CLIP skip must stay as it is.
    clip_skip = None if model_family(train.training_model) == "sdxl" else train.clip_skip
    payload = webui_xyz_payload(
        strings.prompt, strings.negative_prompt, strings.x_values, strings.y_values, axis_index=axis,
        seed=settings.seed, steps=settings.steps, cfg_scale=settings.cfg_scale, width=settings.width or train.resolution,
        height=settings.height or train.resolution, batch=settings.batch, clip_skip=clip_skip, defaults=defaults,
    )
    answer: dict[str, Any] = {}

    def post() -> None:
        try:
            answer["data"] = call("POST", "/sdapi/v1/txt2img", json=payload, timeout=(10, timeout_s))
        except BaseException as exc:  # handed to the waiting thread
            answer["error"] = exc

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    total = len(chosen) * len(settings.weights)
    while worker.is_alive():
        worker.join(1.0)
        if progress.cancelled():
            try:
                session.post(base + "/sdapi/v1/interrupt", timeout=10)
            except requests.RequestException:
                pass
            progress.check_cancel()
        if worker.is_alive():
            try:
                state = session.get(base + "/sdapi/v1/progress?skip_current_image=true", timeout=5).json()
                progress.update(int(float(state.get("progress") or 0) * total), total, "rendering in the WebUI")
            except (requests.RequestException, ValueError, AttributeError, TypeError):
                pass
    if "error" in answer:
        raise answer["error"]
    data = answer.get("data") or {}
    images = data.get("images") if isinstance(data, dict) else None
    if not images:
        raise UserError("The WebUI returned no image: see its console for the X/Y/Z plot's error (e.g. a Prompt S/R value not found in the prompt).")
    raw = images[0].split(",", 1)[-1] if images[0].startswith("data:") else images[0]
    try:
        png = base64.b64decode(raw)
    except ValueError:
        raise UserError("The WebUI's answer holds no readable image.") from None
    folder = project.output_dir / COMPARE_FOLDER
    grid_path = unique_path(folder / f"{name}-webui-grid-{time.strftime('%Y%m%d-%H%M%S')}.png")
    from lora_gradio.engine.fsutil import atomic_write_bytes

    atomic_write_bytes(grid_path, png)
    info = data.get("info")
    try:
        info = json.loads(info) if isinstance(info, str) else info
    except ValueError:
        pass
    record = {"webui": base, "prompt": strings.prompt, "negative_prompt": strings.negative_prompt, "x_values": strings.x_values,
              "y_values": strings.y_values, "epochs": strings.epochs, "weights": settings.weights, "seed": settings.seed,
              "grid": grid_path.name, "info": info}
    record_path = grid_path.with_suffix(".json")
    atomic_write_text(record_path, json.dumps(record, indent=1, default=str))
    progress.update(total, total, "done")
    return WebuiResult(str(grid_path), str(record_path), strings.prompt, strings.x_values, strings.y_values, time.monotonic() - started)


def send_to_webui_job(project: Project, url: str, progress: "Progress | None" = None, **overrides: Any) -> WebuiResult:
    """`send_to_webui` with the project first, as `jobs.start_job` calls engine functions."""
    return send_to_webui(url, project, progress=progress, **overrides)
