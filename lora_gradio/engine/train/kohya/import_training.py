"""Import of the training file: base model (with v-prediction), network, learning rates, scheduler, optimizer,
length, training options (precision, noise), sample prompts and outputs (kohya merges its sections into one
set of arguments). The SD notebook's and the XL notebook's files (sdxl_train_network.py) read the same way."""

from __future__ import annotations

import ast
from pathlib import Path, PurePosixPath
from typing import Any

from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.kohya.common import (
    CAME_CLASS,
    LYCORIS_TYPES,
    OPTIMIZER_FROM_KOHYA,
    OPTIMIZER_TO_KOHYA,
    REX_CLASS_NAMES,
    model_facts,
    models_dir,
    notebook_stem_matches,
    preset_label,
    url_file_name,
)
from lora_gradio.engine.train.kohya.import_state import ImportState
from lora_gradio.engine.train.kohya.keys import Keys, convert
from lora_gradio.engine.train.models import PRESETS

# kohya's multires_noise_discount when unset.
_KOHYA_MULTIRES_DISCOUNT = 0.3


class TrainingFileReader(ImportState):
    """Reads the training file's keys (`args`) into the settings."""

    def _model(self) -> None:
        a = self.args
        spec = a.get("pretrained_model_name_or_path", str)
        if spec:
            self.put("training_model", self._preset_or_path(spec), a, "pretrained_model_name_or_path")
        else:
            self.notes.append(f"{a.path} names no base model (pretrained_model_name_or_path): training_model stays {self.base.training_model!r}.")
        if a.get("v2", bool):
            self.notes.append("v2 = true is not needed here: the model's version is read from the model file.")
        facts = model_facts(str(self.data["training_model"]))
        self.family = facts.family
        self._v_prediction(facts.v_pred, facts.how)
        vae = a.get("vae", str)
        if vae is not None:
            if "sdxl_vae" in vae.lower() or "sdxl-vae" in vae.lower():
                self.notes.append(f"vae = {vae} is not needed here: the base model's own VAE is used, and for the SDXL presets that is the SDXL VAE.")
            else:
                self.notes.append(f"vae = {vae} is ignored: this tool encodes the images with the base model's own VAE.")

    def _v_prediction(self, model_v_pred: bool, how: str) -> None:
        """kohya's v_parameterization is v_pred here; zero_terminal_snr and scale_v_pred_loss_like_noise_pred
        only matter with v-prediction (this tool trains a model that says it predicts v as one anyway)."""
        a = self.args
        asked = bool(a.get("v_parameterization", bool))  # kohya's default: false
        if "v_parameterization" in a:
            self.put("v_pred", asked, a, "v_parameterization")
        else:
            self.data["v_pred"] = False
        self.v_pred = asked or model_v_pred
        if model_v_pred and asked:
            self.notes.append(f"v_parameterization = true is imported as v_pred = true ({how} predicts v anyway).")
        elif model_v_pred:
            self.notes.append(
                f"{how} is a v-prediction model, but the file does not set v_parameterization = true: kohya would train it "
                "as a noise-prediction model (black images), this tool trains it with v-prediction."
            )
        for name, key in (("zero_terminal_snr", "zero_terminal_snr"), ("scale_v_pred_loss", "scale_v_pred_loss_like_noise_pred")):
            if key in a:
                self.put(name, a.get(key, bool), a, key)
            elif self.v_pred:
                self.data[name] = False  # kohya's default
            else:
                self.kept.add(name)  # no use without v-prediction: the file leaves it open
        if not self.v_pred and a.get("zero_terminal_snr", bool):
            self.notes.append(
                "zero_terminal_snr = true without v_parameterization: kohya would rescale the noise schedule of a noise-prediction "
                "model (it warns that the result is unexpected); this tool uses zero terminal SNR with v-prediction only."
            )

    def _preset_or_path(self, spec: str) -> str:
        """The notebooks' downloaded presets (e.g. /content/animefull-final-pruned-fp16.safetensors, the XL
        notebook's /content/ponyDiffusionV6XL.safetensors) become the preset again; a copy of one that exists
        elsewhere on this machine stays a path."""
        path = Path(spec).expanduser()
        stem = PurePosixPath(spec.replace("\\", "/")).stem
        for key, preset in PRESETS.items():
            if PurePosixPath(url_file_name(preset.url)).stem != stem and not notebook_stem_matches(key, stem):
                continue
            ours = self.project is not None and path.resolve().parent == models_dir(self.project)
            if path.exists() and not ours:
                return spec
            if not ours:
                self.notes.append(f"pretrained_model_name_or_path = {spec} is the notebook's {preset_label(preset)} model: imported as the preset {key!r}.")
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
        self._rex_scheduler_type()
        scheduler = str(self.data["lr_scheduler"]).lower()
        # One number here: the power of polynomial, the restarts of cosine_with_restarts (kohya's defaults: 1).
        used, unused = ("lr_scheduler_power", "lr_scheduler_num_cycles") if scheduler == "polynomial" else ("lr_scheduler_num_cycles", "lr_scheduler_power")
        a.raw(unused)  # kohya ignores it with this scheduler too
        if used in a:
            self.put("lr_scheduler_number", a.get(used, int), a, used)
        elif scheduler in ("polynomial", "cosine_with_restarts"):
            self.data["lr_scheduler_number"] = 1

    def _rex_scheduler_type(self) -> None:
        """A REX class as kohya's lr_scheduler_type (the XL notebook's rex; kohya then ignores lr_scheduler) is
        lr_scheduler = rex here; its lr_scheduler_args are kept in `rex_args` for the warmup and the notes
        (importer). Another class stays unread: the notes say that lr_scheduler is used instead."""
        a = self.args
        kind = a.values["lr_scheduler_type"][0] if "lr_scheduler_type" in a else None
        if not isinstance(kind, str) or kind.strip().rsplit(".", 1)[-1].lower() not in {name.lower() for name in REX_CLASS_NAMES}:
            return
        self.put("lr_scheduler", "rex", a, "lr_scheduler_type")
        self.rex_class = a.get("lr_scheduler_type", str)
        value = a.raw("lr_scheduler_args", [])
        if isinstance(value, str):
            value = value.split()
        if not isinstance(value, list) or not all(isinstance(item, str) and "=" in item for item in value):
            raise a.bad("lr_scheduler_args", 'use a list of "key=value" texts, e.g. ["min_lr=1e-9", "gamma=0.9", "d=0.9"]')
        self.rex_args = {}
        for item in value:
            key, _, text = (part.strip() for part in item.partition("="))
            try:
                number = ast.literal_eval(text)  # as kohya reads them
            except (ValueError, SyntaxError):
                number = None
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise a.bad("lr_scheduler_args", f"{key}={text} must be a number for {self.rex_class.rsplit('.', 1)[-1]}")
            self.rex_args[key] = (number, f"{key}={text}")

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
            if found == "CAME":
                self._came_note(name)
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
        if self.data["optimizer"] == "CAME" and (a.get("optimizer_type", str) or "").lower() == "came_pytorch.came":
            value = self._came_pytorch_args(value)
        self.data["optimizer_args"] = value
        if "optimizer_args" in a:
            self.origins["optimizer_args"] = a.origin("optimizer_args")

    def _came_note(self, name: str) -> None:
        """This tool's CAME is pytorch-optimizer's (what kohya runs as pytorch_optimizer.CAME)."""
        module = name.rsplit(".", 1)[0].lower() if "." in name else ""
        if module == "loraeasycustomoptimizer.came":
            self.notes.append(
                f"optimizer_type = {name} is the XL notebook's CAME: imported as CAME, which runs pytorch-optimizer's CAME "
                "here (the notebook's is a copy of it that adds stochastic rounding for bf16 weights)."
            )
        elif module == "came_pytorch":
            self.notes.append(f"optimizer_type = {name} (the came-pytorch package) is imported as CAME, which runs pytorch-optimizer's CAME here.")
        elif not module:
            self.notes.append(f"optimizer_type = {name} is imported as CAME; kohya itself needs the class with its module: {CAME_CLASS}.")

    def _came_pytorch_args(self, args: list[str]) -> list[str]:
        """came-pytorch's eps=(eps1, eps2) is pytorch-optimizer's eps1 and eps2."""
        result = []
        for item in args:
            key, _, text = (part.strip() for part in item.partition("="))
            try:
                value: Any = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = None
            if key == "eps" and isinstance(value, (tuple, list)) and len(value) == 2:
                result += [f"eps1={value[0]!r}", f"eps2={value[1]!r}"]
                self.notes.append(f"optimizer_args {item} of came-pytorch is eps1={value[0]!r} eps2={value[1]!r} in pytorch-optimizer's CAME.")
            else:
                result.append(item)
        return result

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
            ("multires_noise_iterations", "multires_noise_iterations", int, 0),
            ("ip_noise_gamma", "ip_noise_gamma", float, 0.0),
            ("cache_text_encoder_outputs", "cache_text_encoder_outputs", bool, False),
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
        self._clip_skip()
        self._noise()
        self._precision()
        if a.get("cache_text_encoder_outputs_to_disk", bool):  # kohya then caches them, in memory too
            self.put("cache_text_encoder_outputs", True, a, "cache_text_encoder_outputs_to_disk")
            self.notes.append("cache_text_encoder_outputs_to_disk = true is imported as cache_text_encoder_outputs = true: this tool keeps them in memory.")
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

    def _clip_skip(self) -> None:
        a = self.args
        if "clip_skip" in a:
            self.put("clip_skip", a.get("clip_skip", int), a, "clip_skip")
        elif self.family == "sdxl":
            self.kept.add("clip_skip")  # sdxl_train_network.py always takes the penultimate layers, as this tool does
        else:
            self.data["clip_skip"] = 1  # kohya's default: the last layer

    def _noise(self) -> None:
        a = self.args
        if "multires_noise_discount" in a:
            self.put("multires_noise_discount", a.get("multires_noise_discount", float), a, "multires_noise_discount")
        elif self.data["multires_noise_iterations"]:
            self.data["multires_noise_discount"] = _KOHYA_MULTIRES_DISCOUNT
        else:
            self.kept.add("multires_noise_discount")  # no use without multires noise

    def _precision(self) -> None:
        """kohya's mixed_precision, with full_fp16 / full_bf16 on top (they need mixed_precision fp16 / bf16)."""
        a = self.args
        full = [key for key in ("full_fp16", "full_bf16") if a.get(key, bool)]
        if len(full) > 1:
            raise a.bad("full_bf16", "set full_fp16 or full_bf16, not both")
        if full:
            key = full[0]
            needed = key.removeprefix("full_")
            if self.data["mixed_precision"] != needed:
                raise a.bad(key, f'kohya\'s {key} needs mixed_precision = "{needed}": set that, or remove {key}')
            self.put("mixed_precision", key, a, key)
        elif self.data["mixed_precision"] == "fp16" and self.base.mixed_precision == "auto":
            # Export writes "auto" as fp16 (kohya has no auto), and fp16 was the notebook's only choice (for the T4).
            self.data["mixed_precision"] = "auto"
            self.notes.append("mixed_precision = fp16 is imported as auto (fp16, or bf16 where the GPU has it); --set mixed_precision=fp16 forces fp16.")

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
        from lora_gradio.engine.errors import UserError
        from lora_gradio.engine.fsutil import read_user_text

        try:
            text = read_user_text(path, "The sample prompts file")
        except UserError as exc:
            self.notes.append(f"{exc} Until then sample_prompts stay as they were.")
            return
        prompts, with_options = [], False
        for line in text.splitlines():
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
