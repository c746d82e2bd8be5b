"""Copy a project's epoch files into the WebUI's Lora folder, with the card's sidecars.

No WebUI import here: `copy_loras(project, lora_dir)` works on plain folders (the WebUI glue finds the
folder, see `lora_gradio.webui.webui_lora_dir`).

For each `NAME-NN.safetensors` of the project it places, beside the copy:
- `NAME-NN.json`, the WebUI's Lora user metadata (what its card editor reads and writes):
  `description`, `sd version` (SD1/SD2/SDXL/Unknown), `activation text`, `preferred weight`,
  `negative text`, `notes`. The card then inserts `<lora:NAME-NN:weight>` plus the activation text.
- `NAME-NN.preview.png`, the epoch's first sample image (`output/sample/NAME-NN-00.png`), else the
  project's newest comparison grid (`output/compare/*.png`), unless the card already has a preview.

Nothing the user changed is overwritten: a file already there is replaced only when it is still byte for
byte what this tool wrote last time (recorded in the project's `webui_lora_copies.json`); otherwise it is
kept and reported. Every write is atomic (temporary file, then rename).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_path, atomic_write_bytes, atomic_write_text

MANIFEST = "webui_lora_copies.json"
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SD_VERSIONS = (("sdxl", "SDXL"), ("sd_v2", "SD2"), ("sd_v1", "SD1"))


@dataclass
class CopyReport:
    lora_dir: Path
    copied: list[Path] = field(default_factory=list)  # written now (new, or our own older copy)
    unchanged: list[Path] = field(default_factory=list)  # already there with the same content
    kept: list[Path] = field(default_factory=list)  # there and different (the user's): left alone

    def summary(self) -> str:
        loras = [p for p in self.copied if p.suffix == ".safetensors"]
        parts = [f"{len(loras)} LoRA file{'s' if len(loras) != 1 else ''} copied", f"{len(self.copied)} files written"]
        if self.unchanged:
            parts.append(f"{len(self.unchanged)} already up to date")
        if self.kept:
            parts.append(f"{len(self.kept)} kept because they differ from this tool's copy ({', '.join(p.name for p in self.kept[:5])}{' ...' if len(self.kept) > 5 else ''})")
        return f"{'; '.join(parts)} in {self.lora_dir}. Refresh the WebUI's Lora tab to see them."


def sd_version(metadata: dict[str, str]) -> str:
    """The WebUI's `sd version` for kohya's `ss_base_model_version` (or `ss_v2`)."""
    version = (metadata.get("ss_base_model_version") or "").lower()
    for prefix, name in SD_VERSIONS:
        if version.startswith(prefix):
            return name
    if str(metadata.get("ss_v2", "")).lower() == "true":
        return "SD2"
    return "Unknown"


def user_metadata(stem: str, metadata: dict[str, str], activation: str, preferred_weight: float, project_name: str) -> dict[str, Any]:
    """The `{stem}.json` the WebUI's Lora card reads (same keys as its own editor writes)."""
    epoch = metadata.get("ss_epoch")
    epochs = metadata.get("ss_num_epochs")
    trained = f"epoch {epoch} of {epochs}" if epoch and epochs else "a LoRA"
    return {
        "description": f"{trained}, trained with LoRA Gradio (project {project_name})",
        "sd version": sd_version(metadata),
        "activation text": activation,
        "preferred weight": float(preferred_weight),
        "negative text": "",
        "notes": f"Copied by LoRA Gradio from project {project_name}: {stem}.safetensors",
    }


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _Placer:
    """Writes files into the Lora folder under the no-overwrite rule, remembering what it wrote."""

    def __init__(self, manifest_path: Path, report: CopyReport):
        self.manifest_path = manifest_path
        self.report = report
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
            self.manifest: dict[str, str] = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.manifest = {}
        self.changed = False

    def place(self, target: Path, *, data: bytes | None = None, source: Path | None = None) -> bool:
        """Write `data` (or copy `source`) to `target`; True when it was written."""
        ours = hashlib.sha256(data).hexdigest() if data is not None else _sha256_file(source)
        key = str(target)
        if target.exists():
            theirs = _sha256_file(target)
            if theirs == ours:
                self.report.unchanged.append(target)
                self._remember(key, ours)
                return False
            if self.manifest.get(key) != theirs:  # not the copy this tool made last: the user's
                self.report.kept.append(target)
                return False
        if data is not None:
            atomic_write_bytes(target, data)
        else:
            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
        self.report.copied.append(target)
        self._remember(key, ours)
        return True

    def _remember(self, key: str, digest: str) -> None:
        if self.manifest.get(key) != digest:
            self.manifest[key] = digest
            self.changed = True

    def save(self) -> None:
        if self.changed:
            atomic_write_text(self.manifest_path, json.dumps(self.manifest, indent=1, sort_keys=True))


def preview_for(project, stem: str) -> Path | None:
    """The epoch's first sample image, else the project's newest comparison grid, else None."""
    samples = project.output_dir / "sample"
    if samples.is_dir():
        found = sorted(p for p in samples.iterdir() if p.suffix.lower() == ".png" and p.name.startswith(f"{stem}-") and p.stem[len(stem) + 1:].isdigit())
        if found:
            return found[0]
    grids = project.output_dir / "compare"
    if grids.is_dir():
        found = [p for p in grids.rglob("*.png") if p.is_file()]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
    return None


def _has_preview(lora_dir: Path, stem: str) -> bool:
    return any((lora_dir / f"{stem}{mid}{suffix}").exists() for mid in ("", ".preview") for suffix in PREVIEW_SUFFIXES)


def copy_loras(project, lora_dir: Path, preferred_weight: float = 1.0, activation: str | None = None) -> CopyReport:
    """Copy the project's `NAME-NN.safetensors` files and their sidecars into `lora_dir` (see the module).

    `activation` defaults to the project's saved activation tag(s)."""
    from lora_gradio.engine.tags import saved_activation
    from lora_gradio.engine.train.config import load_settings, resolved_output_name
    from lora_gradio.engine.train.saving import epoch_files, read_lora_metadata

    if not lora_dir:
        raise UserError("The WebUI's Lora folder is unknown: start the WebUI with --lora-dir, or copy the files from the project's output folder by hand.")
    lora_dir = Path(lora_dir)
    output_name = resolved_output_name(load_settings(project), project)
    files = epoch_files(project.output_dir, output_name)
    if not files:
        raise UserError(f"Project {project.name!r} has no {output_name}-NN.safetensors files in {project.output_dir} yet: train it first.")
    try:
        lora_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the WebUI's Lora folder {lora_dir} ({exc.strerror or exc}).") from None
    if activation is None:
        activation = saved_activation(project)
    report = CopyReport(lora_dir)
    placer = _Placer(project.config_dir / MANIFEST, report)
    try:
        for _, path in files:
            stem = path.name[: -len(".safetensors")]
            placer.place(lora_dir / path.name, source=path)
            try:
                metadata = read_lora_metadata(path)
            except UserError:
                metadata = {}
            card = user_metadata(stem, metadata, activation, preferred_weight, project.name)
            placer.place(lora_dir / f"{stem}.json", data=json.dumps(card, indent=4, ensure_ascii=False).encode("utf-8"))
            preview = preview_for(project, stem)
            target = lora_dir / f"{stem}.preview.png"
            if preview is not None and (target.exists() or not _has_preview(lora_dir, stem)):
                placer.place(target, source=preview)
    except OSError as exc:
        raise UserError(f"Copying into {lora_dir} failed ({exc.strerror or exc}); files already copied stay.") from None
    finally:
        placer.save()
    return report
