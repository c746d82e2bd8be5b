"""What an import has built so far, shared by the readers of the training and the dataset file: this tool's
settings, where each value came from, and the notes for the person."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.kohya.keys import Keys, Origin

if TYPE_CHECKING:
    from lora_gradio.engine.project import Project
    from lora_gradio.engine.train.data import DatasetFolder


class ImportState:
    """The settings being built from kohya's keys (`data`, in this tool's settings file form), remembering
    where each value came from (`origins`)."""

    def __init__(self, args: Keys, project: Project | None, base: cfg.TrainSettings):
        self.args = args
        self.project = project
        self.base = base
        self.data = cfg.settings_to_toml(base)
        self.notes: list[str] = []
        self.origins: dict[str, Origin] = {}
        self.dataset_levels: list[Keys] = []
        self.folders: list[DatasetFolder] | None = None  # the dataset file's folders, to count steps
        # Settings the files leave open for this model (e.g. zero_terminal_snr without v-prediction): they keep
        # base's value, or the model family's default when the import changes the family.
        self.kept: set[str] = set()
        self.family: str | None = None  # the imported base model's family ("sd"/"sdxl"), None: unknown here
        self.v_pred = False  # whether this tool trains the imported model with v-prediction
        # A REX class as lr_scheduler_type (the XL notebook's rex): its dotted name and its lr_scheduler_args
        # (name -> (number, "name=text")), read for the warmup and the notes once the run's steps are known.
        self.rex_class = ""
        self.rex_args: dict[str, tuple[float, str]] | None = None

    def put(self, name: str, value: Any, keys: Keys, key: str) -> None:
        self.data[name] = value
        self.origins[name] = keys.origin(key)

    def copy(self, pairs: tuple[tuple[str, str, type, Any], ...], keys: Keys) -> None:
        """(name here, kohya key, type, kohya's default): a missing key means kohya's default."""
        for name, key, kind, default in pairs:
            if key in keys:
                self.put(name, keys.get(key, kind), keys, key)
            else:
                self.data[name] = default
