"""Import of the training file: base model, network, learning rates, scheduler, optimizer, length,
training options, sample prompts and outputs (kohya merges its sections into one set of arguments)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.kohya.common import LYCORIS_TYPES, OPTIMIZER_FROM_KOHYA, OPTIMIZER_TO_KOHYA, models_dir, url_file_name
from lora_gradio.engine.train.kohya.import_state import ImportState
from lora_gradio.engine.train.kohya.keys import Keys, convert
from lora_gradio.engine.train.models import PRESETS


class TrainingFileReader(ImportState):
    """Reads the training file's keys (`args`) into the settings."""

    def _model(self) -> None:
        a = self.args
        spec = a.get("pretrained_model_name_or_path", str)
        if spec:
            self.put("training_model", self._preset_or_path(spec), a, "pretrained_model_name_or_path")
        else:
            self.notes.append(f"{a.path} names no base model (pretrained_model_name_or_path): training_model stays {self.base.training_model!r}.")
        for key in ("v2", "v_parameterization"):
            if a.get(key, bool):
                self.notes.append(f"{key} = true is not needed here: the model's version is read from the model file.")

    def _preset_or_path(self, spec: str) -> str:
        """The notebook's downloaded presets (e.g. /content/animefull-final-pruned-fp16.safetensors) become
        the preset again; a copy of one that exists elsewhere on this machine stays a path."""
        path = Path(spec).expanduser()
        stem = PurePosixPath(spec.replace("\\", "/")).stem
        for key, preset in PRESETS.items():
            if PurePosixPath(url_file_name(preset.url)).stem != stem:
                continue
            ours = self.project is not None and path.resolve().parent == models_dir(self.project)
            if path.exists() and not ours:
                return spec
            if not ours:
                self.notes.append(f"pretrained_model_name_or_path = {spec} is the notebook's {preset.label.split(' (')[0]} model: imported as the preset {key!r}.")
            return key
        return spec

    def _network(self) -> None:
        a = self.args
        self.copy((("network_dim", "network_dim", int, 4),), a)  # kohya's lora.py defaults: dim 4, alpha 1
        if "network_alpha" in a:
            self.put("network_alpha", _whole(a, "network_alpha"), a, "network_alpha")
        else:
            self.data["network_alpha"] = 1
        module = a.get("network_module", str)
        args = self._network_args()
        if module is None:
            self.notes.append(f"{a.path} names no network_module: lora_type stays {self.base.lora_type}.")
            return
        if module == "networks.lora":
            lora_type = "LoCon" if "conv_dim" in args else "LoRA"
            conv_defaults = (self.data["network_dim"], 1)
        elif module == "lycoris.kohya":
            algo = args.pop("algo", "lora").lower()
            if algo not in LYCORIS_TYPES:
                raise a.bad("network_args", f"algo={algo} is not supported here: use algo=locon, loha, lokr or ia3 (DoRA: algo=locon with dora_wd=True)")
            lora_type = LYCORIS_TYPES[algo]
            if algo == "lora":
                self.notes.append("network_args algo=lora of LyCORIS trains the conv layers too: imported as lora_type LoCon.")
            if _true(args.pop("dora_wd", "False")):
                if lora_type != "LoCon":
                    raise a.bad("network_args", "dora_wd=True works with algo=locon only (that is DoRA)")
                lora_type = "DoRA"
            conv_defaults = (self.data["network_dim"], self.data["network_alpha"])  # lycoris' own defaults
        else:
            raise a.bad("network_module", "use networks.lora (LoRA, LoCon) or lycoris.kohya (LoHa, LoKr, IA3, DoRA); other network types are not supported here")
        self.put("lora_type", lora_type, a, "network_module")
        for name, default in zip(("conv_dim", "conv_alpha"), conv_defaults):
            text = args.pop(name, None)
            if lora_type != "LoRA":
                self.data[name] = _network_int(a, name, text) if text is not None else default
                if text is not None:
                    self.origins[name] = a.origin("network_args")
        factor = args.pop("factor", "-1")
        if lora_type == "LoKr" and factor.strip() != "-1":
            self.notes.append(f"network_args factor={factor} is not used here: LoKr uses factor -1 (the default).")
        for name, value in args.items():
            self.notes.append(f"network_args {name}={value} has no equivalent here, ignored.")

    def _network_args(self) -> dict[str, str]:
        a = self.args
        value = a.raw("network_args", [])
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(item, str) and "=" in item for item in value):
            raise a.bad("network_args", 'use a list of "key=value" texts, e.g. ["conv_dim=8", "conv_alpha=4"]')
        return {key.strip(): text.strip() for key, _, text in (item.partition("=") for item in value)}

    def _learning_rates(self) -> None:
        """kohya's learning_rate is the default of both unet_lr and text_encoder_lr."""
        a = self.args
        a.raw("learning_rate")  # read here: with both rates set it is unused, as in kohya
        unet_key = next((key for key in ("unet_lr", "learning_rate") if key in a), None)
        if unet_key:
            self.put("unet_lr", a.get(unet_key, float), a, unet_key)
        else:
            self.notes.append(f"{a.path} sets no learning_rate or unet_lr: unet_lr stays {self.base.unet_lr}.")
        if a.get("network_train_text_encoder_only", bool):
            raise a.bad("network_train_text_encoder_only", "this tool always trains the UNet; remove the key")
        if a.get("network_train_unet_only", bool):
            a.raw("text_encoder_lr")
            self.put("text_encoder_lr", 0.0, a, "network_train_unet_only")
        else:
            te_key = next((key for key in ("text_encoder_lr", "learning_rate") if key in a), None)
            if te_key:
                self.put("text_encoder_lr", a.get(te_key, float), a, te_key)
        self.copy((("continue_from_lora", "network_weights", str, ""),), a)

    def _scheduler(self) -> None:
        a = self.args
        self.copy((("lr_scheduler", "lr_scheduler", str, "constant"),), a)
        scheduler = str(self.data["lr_scheduler"]).lower()
        # One number here: the power of polynomial, the restarts of cosine_with_restarts (kohya's defaults: 1).
        used, unused = ("lr_scheduler_power", "lr_scheduler_num_cycles") if scheduler == "polynomial" else ("lr_scheduler_num_cycles", "lr_scheduler_power")
        a.raw(unused)  # kohya ignores it with this scheduler too
        if used in a:
            self.put("lr_scheduler_number", a.get(used, int), a, used)
        elif scheduler in ("polynomial", "cosine_with_restarts"):
            self.data["lr_scheduler_number"] = 1

    def _optimizer(self) -> None:
        a = self.args
        if "optimizer_type" in a:
            name = a.get("optimizer_type", str)
            found = OPTIMIZER_FROM_KOHYA.get(name.lower())
            if name.lower() in ("dadaptation", "dadaptadampreprint"):
                found = "DAdaptation"
                self.notes.append(f"optimizer_type = {name} is kohya's DAdaptAdamPreprint: imported as DAdaptation, which runs DAdaptAdam here.")
            if found is None:
                raise a.bad("optimizer_type", f"use one of {', '.join(OPTIMIZER_TO_KOHYA.get(o, o) for o in cfg.OPTIMIZERS)}")
            self.put("optimizer", found, a, "optimizer_type")
        elif a.get("use_8bit_adam", bool):
            self.put("optimizer", "AdamW8bit", a, "use_8bit_adam")
        elif a.get("use_lion_optimizer", bool):
            self.put("optimizer", "Lion", a, "use_lion_optimizer")
        else:
            self.data["optimizer"] = "AdamW"  # kohya's default
        value = a.raw("optimizer_args", [])
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise a.bad("optimizer_args", 'use a list of "key=value" texts, e.g. ["weight_decay=0.1"]')
        self.data["optimizer_args"] = value
        if "optimizer_args" in a:
            self.origins["optimizer_args"] = a.origin("optimizer_args")

    def _length(self) -> None:
        a = self.args
        epochs, steps = a.get("max_train_epochs", int), a.get("max_train_steps", int)
        if epochs:
            self.put("preferred_unit", "Epochs", a, "max_train_epochs")
            self.put("how_many", epochs, a, "max_train_epochs")
            if steps:
                self.notes.append(f"max_train_steps = {steps} is ignored, as kohya does, because max_train_epochs is set.")
        elif steps:
            self.put("preferred_unit", "Steps", a, "max_train_steps")
            self.put("how_many", steps, a, "max_train_steps")
        else:
            self.data.update(preferred_unit="Steps", how_many=1600)
            self.notes.append(f"{a.path} sets neither max_train_epochs nor max_train_steps: kohya's default of 1600 steps is used.")

    def _training(self) -> None:
        a = self.args
        self.copy((
            ("save_every_n_epochs", "save_every_n_epochs", int, 0),
            ("keep_only_last_n_epochs", "save_last_n_epochs", int, 0),
            ("train_batch_size", "train_batch_size", int, 1),
            ("noise_offset", "noise_offset", float, 0.0),
            ("clip_skip", "clip_skip", int, 1),
            ("weighted_captions", "weighted_captions", bool, False),
            ("max_token_length", "max_token_length", int, 75),
            ("gradient_checkpointing", "gradient_checkpointing", bool, False),
            ("prior_loss_weight", "prior_loss_weight", float, 1.0),
            ("cache_latents", "cache_latents", bool, False),
            ("cache_latents_to_disk", "cache_latents_to_disk", bool, False),
            ("mixed_precision", "mixed_precision", str, "no"),
            ("save_precision", "save_precision", str, "float"),  # unset: kohya saves the float32 weights
            ("sample_every_n_epochs", "sample_every_n_epochs", int, 0),
        ), a)
        if self.data["mixed_precision"] == "fp16" and self.base.mixed_precision == "auto":
            # Export writes "auto" as fp16 (kohya has no auto), and fp16 was the notebook's only choice (for the T4).
            self.data["mixed_precision"] = "auto"
            self.notes.append("mixed_precision = fp16 is imported as auto (fp16, or bf16 where the GPU has it); --set mixed_precision=fp16 forces fp16.")
        gamma = a.get("min_snr_gamma", float)
        if gamma is None:
            self.data["min_snr_gamma"] = False
        else:
            self.put("min_snr_gamma", True if gamma == cfg.DEFAULT_MIN_SNR_GAMMA else gamma, a, "min_snr_gamma")
        if "seed" in a:
            self.put("seed", a.get("seed", int), a, "seed")
        else:
            self.notes.append(f"{a.path} sets no seed (kohya picks a random one each run): seed stays {self.base.seed}.")
        self._sample_prompts()

    def _sample_prompts(self) -> None:
        a = self.args
        location = a.get("sample_prompts", str)
        if location is None:
            self.data["sample_prompts"] = []
            return
        path = Path(location).expanduser()
        path = path if path.is_absolute() else a.path.parent / path
        if path.suffix.lower() != ".txt" or not path.is_file():
            why = "does not exist" if not path.is_file() else "is not a .txt file"
            self.notes.append(f"sample_prompts = {location} {why}: sample_prompts stay as they were.")
            return
        prompts, with_options = [], False
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                prompt, options, _ = line.partition(" --")  # kohya's per-prompt options: --n negative, --w width ...
                with_options = with_options or bool(options)
                prompts.append(prompt.strip())
        if with_options:
            self.notes.append(f"the prompt options (--n, --w, --s ...) in {path.name} are not used here: only the prompts were imported.")
        self.put("sample_prompts", prompts, a, "sample_prompts")

    def _outputs(self) -> None:
        a = self.args
        name = a.get("output_name", str)
        if name is not None:
            self.put("output_name", "" if self.project is not None and name == self.project.base else name, a, "output_name")
        a.raw("log_prefix")  # names the logs only
        model_format = a.get("save_model_as", str)
        if model_format not in (None, "safetensors"):
            self.notes.append(f"save_model_as = {model_format} is ignored: this tool saves .safetensors files.")
        # kohya's output and log folders are the project's here: only another folder is worth a note.
        folders = {"output_dir": self.project.output_dir, "logging_dir": self.project.log_dir} if self.project else {}
        for key in ("output_dir", "logging_dir"):
            value = a.get(key, str)
            if value is not None and (key not in folders or Path(value).expanduser().resolve() != folders[key].resolve()):
                self.notes.append(f"{key} = {value} is ignored: this tool writes to the project's {'output' if key == 'output_dir' else 'log'} folder.")


def _whole(keys: Keys, key: str) -> int:
    value = convert(keys, key, keys.raw(key), float)
    if not value.is_integer():
        raise keys.bad(key, "this tool keeps alpha a whole number: round it, e.g. 8")
    return int(value)


def _network_int(keys: Keys, name: str, text: str) -> int:
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not number.is_integer():
        raise keys.bad("network_args", f"{name}={text} must be a whole number, e.g. {name}=8")
    return int(number)


def _true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")
