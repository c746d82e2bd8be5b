"""Import of the dataset file: its [general], [[datasets]] and [[datasets.subsets]] levels (a subset's
value beats its dataset's, which beats [general], which beats the training file's), read into the run-wide
settings and the image folders with their own settings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train.kohya.common import DATASET_FILE, main_folders
from lora_gradio.engine.train.kohya.files import read_toml
from lora_gradio.engine.train.kohya.import_state import ImportState
from lora_gradio.engine.train.kohya.keys import Keys, Origin, agreed, convert, lookup, lookup_value, show


# One value for the whole run here, though kohya allows one per subset: (name here, kohya key, type, kohya's default).
_RUN_WIDE_DATASET_KEYS = (
    ("resolution", "resolution", int, None),
    ("caption_extension", "caption_extension", str, ".caption"),
    ("shuffle_tags", "shuffle_caption", bool, False),
    ("min_bucket_reso", "min_bucket_reso", int, 256),
    ("max_bucket_reso", "max_bucket_reso", int, 1024),
    ("bucket_reso_steps", "bucket_reso_steps", int, 64),
    ("train_batch_size", "batch_size", int, None),
)


@dataclass
class _Subset:
    """One [[datasets.subsets]] table with the values set on it or on its [[datasets]] (None: inherited)."""

    keys: Keys
    directory: Path
    num_repeats: int | None
    is_reg: bool
    keep_tokens: int | None
    flip_aug: bool | None

    @property
    def plain(self) -> bool:
        """Nothing of its own but its repeats: the way the notebook lists the main dataset folder."""
        return self.num_repeats is not None and not self.is_reg and self.keep_tokens is None and self.flip_aug is None


class DatasetFileReader(ImportState):
    """Finds the dataset file and reads it (or, without one, the dataset keys of the training file)."""

    def _find_dataset_config(self, given: Path | None) -> Path | None:
        a = self.args
        named = a.get("dataset_config", str)
        if given is not None:
            if not given.is_file():
                raise UserError(f"The dataset config {given} does not exist: give the {DATASET_FILE} written with {a.path.name}.")
            return given
        beside = a.path.parent / DATASET_FILE
        if named:
            path = Path(named).expanduser()
            path = path if path.is_absolute() else a.path.parent / path
            if path.is_file():
                return path
            if beside.is_file():
                self.notes.append(f"dataset_config = {named} does not exist: read {beside} instead.")
                return beside
        elif beside.is_file():
            return beside
        if "train_data_dir" in a:
            self.notes.append(f"train_data_dir = {a.raw('train_data_dir')} is not read here (kohya's REPEATS_NAME folders): set custom_dataset for folders with their own repeats.")
        self.notes.append(f"No {DATASET_FILE} found beside {a.path}: the dataset settings stay as they were, except those set in the training file.")
        return None

    def _dataset_keys_in_training_file(self) -> None:
        self._run_wide([[self.args]], kohya_defaults=False)
        for name, key, kind in (("activation_tags", "keep_tokens", int), ("flip_aug", "flip_aug", bool)):
            if key in self.args:
                self.put(name, self.args.get(key, kind), self.args, key)
        # The rest stays as it was (or takes the model family's defaults, when the import changes the family).
        dataset_names = ("resolution", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "num_repeats", "activation_tags", "flip_aug",
                         "shuffle_tags", "caption_extension")
        for name in dataset_names:
            if name not in self.origins:
                self.kept.add(name)

    def _dataset(self, path: Path) -> None:
        data = read_toml(path)
        for key, value in data.items():
            if key not in ("general", "datasets"):
                self.notes.append(f"kohya key {key} = {show(value)} in {path.name} has no equivalent here, ignored.")
        general = Keys.table(path, _table(data, "general", path), "[general]")
        self.dataset_levels.append(general)
        datasets = data.get("datasets")
        if not isinstance(datasets, list) or not datasets or not all(isinstance(d, dict) for d in datasets):
            raise UserError(f"{path} has no [[datasets]] table: it needs one, with a [[datasets.subsets]] table naming each image_dir.")
        chains: list[list[Keys]] = []
        for d_number, dataset in enumerate(datasets, start=1):
            level = Keys.table(path, {k: v for k, v in dataset.items() if k != "subsets"}, f"[[datasets]] #{d_number}")
            subsets = dataset.get("subsets")
            if not isinstance(subsets, list) or not subsets or not all(isinstance(s, dict) for s in subsets):
                raise UserError(f"In {path}, [[datasets]] #{d_number} has no [[datasets.subsets]]: add one per image folder, with its image_dir.")
            self.dataset_levels.append(level)
            for s_number, subset in enumerate(subsets, start=1):
                keys = Keys.table(path, subset, f"[[datasets.subsets]] #{s_number} of dataset #{d_number}:")
                self.dataset_levels.append(keys)
                chains.append([keys, level, general, self.args])
        self._run_wide(chains, kohya_defaults=True)
        self._folders(path, chains)

    def _run_wide(self, chains: list[list[Keys]], kohya_defaults: bool) -> None:
        """Keys that are one value for the whole run here (kohya allows one per subset): the subsets must agree."""
        for name, key, kind, default in _RUN_WIDE_DATASET_KEYS:
            hit = agreed(chains, key)
            if hit is not None:
                self.put(name, self._run_wide_value(name, kind, *hit), *hit)
            elif kohya_defaults and default is not None:
                self.data[name] = default
        for key, ignored in (("enable_bucket", False), ("bucket_no_upscale", True)):
            hit = agreed(chains, key)
            if hit is not None and hit[0].get(key, bool) is ignored:
                self.notes.append(f"{key} = {str(ignored).lower()} is ignored: this tool always sorts images into aspect-ratio buckets, upscaling small ones.")

    def _run_wide_value(self, name: str, kind: Any, keys: Keys, key: str) -> Any:
        value = keys.raw(key)
        if name == "resolution":  # 512, [512, 512] or kohya's command-line "512,512"
            parts = [part.strip() for part in value.split(",")] if isinstance(value, str) else value if isinstance(value, list) else [value]
            if len(parts) not in (1, 2) or len({str(part) for part in parts}) != 1:
                raise keys.bad(key, "this tool trains square images: use one number, e.g. resolution = 512")
            value = int(parts[0]) if isinstance(parts[0], str) and parts[0].isdigit() else parts[0]
            return convert(keys, key, value, int)
        value = convert(keys, key, value, kind)
        if name == "caption_extension" and value == "":
            self.notes.append(
                f"caption_extension = \"\" means the images have no caption files (kohya then uses class_tokens): "
                f"kept {self.base.caption_extension!r}; images without one train with an empty caption."
            )
            return self.base.caption_extension
        return value

    def _folders(self, path: Path, chains: list[list[Keys]]) -> None:
        from lora_gradio.engine.train.data import DatasetFolder

        # [general] (or the training file) holds the main settings; [[datasets]] and subsets hold a folder's own.
        main: dict[str, Any] = {}
        for name, key, kind, default in (("activation_tags", "keep_tokens", int, 0), ("flip_aug", "flip_aug", bool, False)):
            hit = lookup(chains[0][2:], key)
            main[key] = convert(hit[0], key, hit[0].raw(key), kind) if hit else default
            self.data[name] = main[key]
            if hit:
                self.origins[name] = hit[0].origin(key)
        general_repeats = lookup_value(chains[0][2:3], "num_repeats", int)
        subsets = [self._subset(chain) for chain in chains]
        self.folders = [
            DatasetFolder(
                path=s.directory,
                num_repeats=s.num_repeats if s.num_repeats is not None else (general_repeats or 1),
                is_reg=s.is_reg,
                keep_tokens=main["keep_tokens"] if s.keep_tokens is None else s.keep_tokens,
                flip_aug=main["flip_aug"] if s.flip_aug is None else s.flip_aug,
            )
            for s in subsets
        ]
        repeats = {s.num_repeats for s in subsets}
        plain = general_repeats is None and len(repeats) == 1 and all(s.plain for s in subsets)
        if self.project is None:
            if not (plain and len(subsets) == 1):
                raise UserError(f"{path} lists image folders of their own: import it into a project (train NAME --config FILE), where they become custom_dataset folders.")
            self.data.update(num_repeats=subsets[0].num_repeats, custom_dataset=[])
            self.notes.append(f"image_dir = {subsets[0].directory}: the project's dataset folder is what gets trained here.")
            return
        if plain and sorted(s.directory for s in subsets) == sorted(p.resolve() for p in main_folders(self.project)):
            self.data.update(num_repeats=repeats.pop(), custom_dataset=[])
            return
        if general_repeats is not None:
            self.data["num_repeats"] = general_repeats
        self.data["custom_dataset"] = [self._custom_entry(s, general_repeats) for s in subsets]
        self.origins["custom_dataset"] = Origin(path, "[[datasets.subsets]]")

    def _subset(self, chain: list[Keys]) -> _Subset:
        keys, own = chain[0], chain[:2]
        if "metadata_file" in keys:
            raise keys.bad("metadata_file", "fine-tuning subsets (metadata_file) are not supported here; use image_dir with caption files beside the images")
        if "image_dir" not in keys:
            raise UserError(f"In {keys.path}, a [[datasets.subsets]] table has no image_dir: add the folder of its images.")
        directory = Path(keys.get("image_dir", str)).expanduser()
        if not directory.is_absolute():
            if self.project is None:
                raise keys.bad("image_dir", "a relative folder needs a project: import it into a project, or write the full path")
            directory = self.project.dataset_root / directory
        return _Subset(
            keys=keys,
            directory=self._on_this_machine(directory.resolve()),
            num_repeats=lookup_value(own, "num_repeats", int),
            is_reg=bool(lookup_value(own, "is_reg", bool)),
            keep_tokens=lookup_value(own, "keep_tokens", int),
            flip_aug=lookup_value(own, "flip_aug", bool),
        )

    def _on_this_machine(self, directory: Path) -> Path:
        """A folder of the notebook's Google Drive (.../Loras/NAME/dataset/SUB or .../datasets/NAME/SUB) that is
        not on this machine is read as the same folder of the project."""
        if directory.exists() or self.project is None:
            return directory
        base, parts = self.project.base, directory.parts
        for start in range(len(parts) - 1):
            if parts[start : start + 2] in ((base, "dataset"), ("datasets", base)):
                mapped = self.project.dataset_root.joinpath(*parts[start + 2 :]).resolve()
                self.notes.append(f"image_dir = {directory} is not on this machine: read as the project's {mapped}.")
                return mapped
        return directory

    def _custom_entry(self, subset: _Subset, general_repeats: int | None) -> dict[str, Any]:
        root = self.project.dataset_root.resolve()
        try:
            folder = subset.directory.relative_to(root).as_posix() or "."
        except ValueError:
            raise subset.keys.bad("image_dir", f"the folder is outside the project's dataset folder {root}: move or copy it into {root}, then import again") from None
        # A folder's unset repeats mean the main num_repeats here, but kohya's default (1) without [general] num_repeats.
        repeats = subset.num_repeats if subset.num_repeats is not None or general_repeats is not None else 1
        entry = {"folder": folder, "num_repeats": repeats, "is_reg": subset.is_reg, "keep_tokens": subset.keep_tokens, "flip_aug": subset.flip_aug}
        return {key: value for key, value in entry.items() if value is not None}


def _table(data: Mapping[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise UserError(f"In {path}, {name} must be a table ([{name}]): fix the file.")
    return value
