"""The training run: settings and dataset in, `NAME-01.safetensors ...` out.

`train_project(project, progress=...)` is what the `train` command and the page run (as a job).
It checks everything cheap first (settings, dataset, step plan), then loads the base model,
caches latents, trains with Accelerate (one GPU, several with `accelerate launch`, or the CPU),
saves every N epochs with kohya's metadata, and keeps a resumable training state.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_gradio.engine.errors import Cancelled, UserError
from lora_gradio.engine.progress import Progress, quiet_ml_libraries
from lora_gradio.engine.project import Project
from lora_gradio.engine.train import config as cfg
from lora_gradio.engine.train.steps import FolderPlan, StepPlan, check_step_limit, plan_steps

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STATE_FOLDER = "_train_state"


@dataclass
class TrainResult:
    output_name: str
    files: list[str] = field(default_factory=list)
    epochs_done: int = 0
    total_epochs: int = 0
    steps: int = 0
    dry_run: bool = False
    plan: str = ""
    samples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if self.dry_run:
            return f"Dry run: the settings and dataset are fine. {self.plan}"
        return f"Trained {self.output_name}: {self.epochs_done}/{self.total_epochs} epochs, {self.steps} steps; saved {', '.join(Path(f).name for f in self.files[-3:]) or 'nothing'}."


# Settings ----------------------------------------------------------------------------------------


def prepare_settings(project: Project, config_file: "str | None" = None, overrides: "list[str] | None" = None, resume: bool = False,
                     notes: "list[str] | None" = None) -> cfg.TrainSettings:
    """The project's settings, overlaid with a settings file and `--set`s, validated.

    Nothing is saved here: `train_project` saves them once the run passed its checks.
    Resuming uses the settings of the interrupted run, so a changed file cannot break it.
    """
    if resume:
        state = read_state_info(project)
        if state is None:
            raise UserError(f"Nothing to resume in {project.base!r}: no interrupted run was found. Start a new run without --resume.")
        if config_file or overrides:
            raise UserError("--resume continues with the settings the run started with: leave out --config and --set.")
        return cfg.validate_settings(state["settings"], where="In the saved training state: ")
    settings = cfg.load_settings(project)
    if config_file:
        settings = _merge_file(settings, Path(config_file), project)
    if overrides:
        settings = cfg.apply_overrides(settings, overrides, notes)
    return settings


def _merge_file(settings: cfg.TrainSettings, path: Path, project: "Project | None" = None) -> cfg.TrainSettings:
    """Overlay this tool's settings file (a [train] section or top-level keys), or import kohya's training_config.toml."""
    from lora_gradio.engine.fsutil import read_user_toml

    try:
        data = read_user_toml(path, "The settings file")  # a BOM is fine; a folder, UTF-16 or binary file is one clear error
    except FileNotFoundError:
        raise UserError(f"Settings file {path} does not exist.") from None
    from lora_gradio.engine.train import kohya

    if kohya.looks_like_kohya(data):
        return kohya.import_kohya(path, project=project, base=settings)[0]
    section = data.get(cfg.SECTION, data)
    merged = {**cfg.settings_to_toml(settings), **section}
    return cfg.validate_settings(merged, where=f"In {path}: ")


# Dataset and plan --------------------------------------------------------------------------------


def dataset_folders(project: Project, settings: cfg.TrainSettings) -> list:
    """The folders to train on: `custom_dataset` if set, else the dataset folder (its subfolders too)."""
    from lora_gradio.engine.fsutil import link_on_path
    from lora_gradio.engine.images import dataset_folders as image_folders
    from lora_gradio.engine.train.data import DatasetFolder, _list_images

    if settings.custom_dataset:
        folders = []
        for entry in settings.custom_dataset:
            path = project.dataset_root / entry.folder
            if not path.is_dir():
                raise UserError(f"custom_dataset folder {entry.folder!r} does not exist in {project.dataset_root}: create it or fix the name.")
            if link_on_path(path, project.dataset_root) is not None:
                raise UserError(f"custom_dataset folder {entry.folder!r} is a link: the dataset tools do not follow links; copy the real folder into {project.dataset_root}.")
            folders.append(DatasetFolder(
                path=path,
                num_repeats=entry.num_repeats or settings.num_repeats,
                is_reg=entry.is_reg,
                keep_tokens=settings.activation_tags if entry.keep_tokens is None else entry.keep_tokens,
                flip_aug=settings.flip_aug if entry.flip_aug is None else entry.flip_aug,
            ))
        return folders
    found = [p for p in image_folders(project) if _list_images(p)]
    if not found:
        raise UserError(f"No images in {project.dataset_dir}: add images on the Dataset tab (or copy them there) before training.")
    return [DatasetFolder(path=p, num_repeats=settings.num_repeats, keep_tokens=settings.activation_tags, flip_aug=settings.flip_aug) for p in found]



def step_plan(dataset: Any, settings: cfg.TrainSettings) -> StepPlan:
    """The guide's arithmetic over the real buckets, as kohya counts it."""
    folders = [FolderPlan(folder.name, dataset.image_counts.get(folder, 0), folder.num_repeats, folder.is_reg) for folder in dataset.folders]
    buckets: list[dict] = [{} for _ in dataset.folders]
    position = {id(folder): index for index, folder in enumerate(dataset.folders)}
    for item in dataset.items:
        per_folder = buckets[position[id(item.folder)]]
        per_folder[item.bucket] = per_folder.get(item.bucket, 0) + 1
    return plan_steps(folders, settings.train_batch_size, settings.preferred_unit, settings.how_many, bucket_counts=buckets)


# State for resuming ------------------------------------------------------------------------------


def state_dir(project: Project) -> Path:
    return project.config_dir / STATE_FOLDER


def read_state_info(project: Project) -> "dict | None":
    """The saved state of an interrupted run (epoch, batch_index, global_step, settings...), or None.

    A state that cannot be resumed (state.json cut short by a crash, of the wrong shape, or its
    state.pt missing) is a `UserError` that names the file and says to start a new run."""
    from lora_gradio.engine.fsutil import read_user_json

    path = state_dir(project) / "state.json"
    fix = "start a new run instead (it moves this state to the trash)"
    try:
        info = read_user_json(path, "The saved training state", fix)
    except FileNotFoundError:
        return None
    needed = {"settings": dict, "epoch": int, "batch_index": int, "global_step": int}
    wrong = [key for key, kind in needed.items() if not isinstance(info, dict) or not isinstance(info.get(key), kind)]
    if wrong:
        raise UserError(f"The saved training state {path} is damaged (no valid {', '.join(wrong)}): it cannot be resumed; {fix}.")
    if not (state_dir(project) / "state.pt").is_file():
        raise UserError(f"The saved training state {path} has no state.pt beside it: it cannot be resumed; {fix}.")
    return info


def _save_state(project: Project, settings: cfg.TrainSettings, network: Any, optimizer: Any, scheduler: Any, epoch: int, batch_index: int, global_step: int, started_at: float) -> None:
    """Everything needed to continue: written beside, then renamed, so a crash keeps the old state."""
    import torch

    from lora_gradio.engine.fsutil import atomic_path, atomic_write_text

    folder = state_dir(project)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "state.pt") as tmp:
        torch.save({"network": network.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state()}, tmp)
    info = {"settings": cfg.settings_to_toml(settings), "epoch": epoch, "batch_index": batch_index, "global_step": global_step, "started_at": started_at, "saved_at": time.time()}
    atomic_write_text(folder / "state.json", json.dumps(info, indent=1))


def _set_aside_previous_run(project: Project, settings: cfg.TrainSettings, output_name: str, progress: Progress) -> cfg.TrainSettings:
    """A new run would overwrite the last run's epoch files and its resumable state: trash them instead.

    Continuing from one of those epochs is common (continue_from_lora = NAME-10.safetensors): the run
    then reads it from the trash, where it stays restorable. Returns the settings to run with."""
    from lora_gradio.engine.train.saving import epoch_files
    from lora_gradio.engine.trash import move_to_trash

    old = [path for _, path in epoch_files(project.output_dir, output_name)]
    old += [p for p in (state_dir(project) / "state.pt", state_dir(project) / "state.json") if p.exists()]
    if not old:
        return settings
    batch = move_to_trash(project, old, f"previous run of {output_name}", with_sidecars=False)
    progress.log(f"moved the previous run's {len(old)} file(s) to the trash (batch {batch.id}); `dataset restore {project.base} {batch.id}` brings them back")
    if settings.continue_from_lora:
        source = Path(settings.continue_from_lora).expanduser().resolve()
        for item in batch.items:
            if (project.root / item.original).resolve() == source:
                moved = batch.folder / item.stored
                progress.log(f"continuing from {source.name}, read from the trash ({moved})")
                return cfg.validate_settings({**cfg.settings_to_toml(settings), "continue_from_lora": str(moved)})
    return settings


def _clear_state(project: Project) -> None:
    for name in ("state.pt", "state.json"):
        (state_dir(project) / name).unlink(missing_ok=True)


# The run -----------------------------------------------------------------------------------------


def train_project(project: Project, resume: bool = False, dry_run: bool = False, progress: "Progress | None" = None, config_file: "str | None" = None, overrides: "list[str] | None" = None) -> TrainResult:
    """Check, then train. A run holds the project's training lock from its first check to its end, so a
    second run (a command line beside a background job, two pages) is refused before it changes anything;
    a dry run only reads and takes no lock."""
    if dry_run:
        return _train_project(project, resume, True, progress, config_file, overrides)
    with training_lock(project):
        return _train_project(project, resume, False, progress, config_file, overrides)


TRAINING_LOCK_WAIT_S = 1.0


def training_lock_file(project: Project) -> Path:
    """One lock per project; under `accelerate launch` each process of the run takes its own rank's."""
    import os

    from lora_gradio.engine.project import LOCKS_FOLDER

    rank = os.environ.get("RANK", "0") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else "0"
    return project.config_dir / LOCKS_FOLDER / ("training.lock" if rank in ("", "0") else f"training.rank{rank}.lock")


def training_lock(project: Project):
    """Hold the project's training lock, or refuse (UserError) naming the run that holds it and how to stop it."""
    from contextlib import ExitStack, contextmanager

    from lora_gradio.engine.locks import describe_holder, exclusive

    lock_file = training_lock_file(project)

    @contextmanager
    def held():
        with ExitStack() as stack:
            try:
                stack.enter_context(exclusive(lock_file, f"Training of {project.base!r}", wait_s=TRAINING_LOCK_WAIT_S))
            except UserError:
                raise UserError(
                    f"Project {project.base!r} is already training ({describe_holder(lock_file)}): nothing was changed. "
                    f"Wait for that run to finish, or stop it: a background job with `lora-gradio jobs cancel {project.base}`, "
                    "a run in a terminal with Ctrl+C there."
                ) from None
            yield

    return held()


def _train_project(project: Project, resume: bool, dry_run: bool, progress: "Progress | None", config_file: "str | None", overrides: "list[str] | None") -> TrainResult:
    progress = progress or Progress()
    notes: list[str] = []
    settings = prepare_settings(project, config_file, overrides, resume, notes)
    from lora_gradio.engine.train.data import collect_items
    from lora_gradio.engine.train.preflight import check_model_settings

    notes += check_model_settings(settings)  # before anything is read, moved or loaded
    for note in notes:
        progress.log(note)

    output_name = cfg.resolved_output_name(settings, project)
    dataset = collect_items(
        dataset_folders(project, settings), settings.caption_extension, settings.resolution,
        settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps, progress=progress,
    )
    plan = step_plan(dataset, settings)  # collect_items has logged unreadable images and caption warnings
    progress.log(plan.explain())
    from lora_gradio.engine.train.check import advice_for

    for finding in advice_for(project, settings, dataset, plan):
        progress.log(f"{finding.level}: {finding.text}")
    check_step_limit(plan, force=settings.force_steps)
    from lora_gradio.engine.train.optim import check_optimizer_installed

    check_optimizer_installed(settings.optimizer, _cuda_available())
    if dry_run:
        return TrainResult(output_name, total_epochs=plan.epochs, steps=plan.total_steps, dry_run=True, plan=plan.explain().splitlines()[-1])
    save = bool(config_file or overrides) and not resume
    return _run(project, settings, dataset, plan, output_name, resume, progress, save_settings=save)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _mixed_precision(settings: cfg.TrainSettings, on_cuda: bool) -> tuple[str, bool]:
    """(Accelerate's mixed precision, whether the LoRA itself is in 16 bits too: the notebook's "full")."""
    import torch

    from lora_gradio.engine.train.memory import resolved_precision

    chosen = resolved_precision(settings, on_cuda, on_cuda and torch.cuda.is_bf16_supported())
    return chosen.replace("full_", ""), chosen.startswith("full_")


def _fresh_accelerator(precision: str, on_cuda: bool) -> Any:
    """An Accelerator with this run's precision. Accelerate keeps one precision per process and refuses another,
    so a second run in the same process (a notebook cell) would fail: its per-run state is cleared first. The
    process state (which GPU, the distributed group of `accelerate launch`) is kept."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=not on_cuda)


def _allow_fp16_gradients(accelerator: Any) -> None:
    """Full fp16 keeps the LoRA's gradients in fp16, which torch's GradScaler refuses to unscale by
    default; unscaling them in place is what "full fp16" training means (kohya patches it the same way)."""
    scaler = getattr(accelerator, "scaler", None)
    if scaler is None:
        return
    unscale = scaler._unscale_grads_
    scaler._unscale_grads_ = lambda optimizer, inv_scale, found_inf, allow_fp16: unscale(optimizer, inv_scale, found_inf, True)


def _run(project: Project, settings: cfg.TrainSettings, dataset: Any, plan: StepPlan, output_name: str, resume: bool, progress: Progress,
         save_settings: bool = False) -> TrainResult:
    import torch
    from accelerate.utils import set_seed

    from lora_gradio.engine.train import data as data_mod
    from lora_gradio.engine.train.data import process_caption
    from lora_gradio.engine.train.feed import BatchFeed, LossReader, batch_preparer, loss_read_interval
    from lora_gradio.engine.train.latents import LatentCache
    from lora_gradio.engine.train.models import load_base_model, resolve_source
    from lora_gradio.engine.train.network import create_network
    from lora_gradio.engine.train.optim import build_optimizer, build_scheduler
    from lora_gradio.engine.train.saving import epoch_file_name, prune_epochs, save_lora

    quiet_ml_libraries()
    on_cuda = torch.cuda.is_available()
    precision, full_half = _mixed_precision(settings, on_cuda)
    accelerator = _fresh_accelerator(precision, on_cuda)
    if full_half and precision == "fp16":
        _allow_fp16_gradients(accelerator)
    device = accelerator.device
    if on_cuda and accelerator.is_main_process:
        report = _log_memory_plan(settings, progress)
        if report is not None:
            from lora_gradio.engine.train.memory import refuse_if_too_big

            # Too big is refused with the change that fits: spilling into shared memory makes SDXL 10-100x slower.
            refuse_if_too_big(report)
    if not on_cuda and precision == "no" and settings.mixed_precision not in ("auto", "no"):
        progress.log(f"mixed_precision={settings.mixed_precision} trains in float32 on the CPU: fp16 needs loss scaling, which the CPU lacks (bf16 is kept).")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    set_seed(settings.seed)
    started_at = time.time()

    progress.update(0, plan.total_steps, "loading the base model")
    source = resolve_source(settings.training_model, project.root / "_models", progress)
    model = load_base_model(source, v_pred=settings.v_pred, zero_terminal_snr=settings.zero_terminal_snr)
    from lora_gradio.engine.train.preflight import check_loaded_model

    check_loaded_model(settings, model)  # a link or repo id: its family is known only now
    # Everything is checked (and the model downloaded): only now does the run change the project.
    if save_settings:
        cfg.save_settings(project, settings)  # what this run used is what the project now holds
    if not resume:
        settings = _set_aside_previous_run(project, settings, output_name, progress)
    for note in model.notes:
        progress.log(note)
    for part in (model.unet, model.vae, *model.text_encoders):
        part.requires_grad_(False)
        part.eval()

    # Latents once, then the VAE leaves the GPU.
    model.vae.to(device, dtype=torch.float32)
    cache_dir = project.config_dir / "_cache" / "latents" if settings.cache_latents_to_disk else None
    cache = LatentCache(model.vae, device=device, dtype=torch.float32, cache_dir=cache_dir, seed=settings.seed)
    with accelerator.main_process_first():
        for path, reason in cache.cache(dataset, progress=progress):
            progress.log(f"skipped {path.name}: {reason}")
    model.vae.to("cpu")
    plan = step_plan(dataset, settings)  # unreadable images found while caching were dropped
    steps_per_epoch = math.ceil(data_mod.steps_per_epoch(dataset, settings.train_batch_size) / accelerator.num_processes)
    total_steps = steps_per_epoch * plan.epochs
    main = accelerator.is_main_process
    if not main:
        progress = _SilentButCancellable(progress)  # one process reports; all of them stop

    text_cache = None
    if settings.cache_text_encoder_outputs:
        from lora_gradio.engine.train.text_cache import TextEncoderCache

        text_cache = TextEncoderCache(model, settings, device)
        text_cache.cache(dataset, progress)
    train_te = settings.text_encoder_lr > 0 and text_cache is None
    family = model.family
    network = create_network(model.unet, family.network_text_encoders(model), settings.lora_type, settings.network_dim, settings.network_alpha,
                             settings.conv_dim, settings.conv_alpha, train_text_encoder=train_te, unet_name=family.lora_unet_name(model))
    if settings.continue_from_lora:
        from safetensors.torch import load_file

        from lora_gradio.engine.train.saving import read_lora_metadata

        lora_path = Path(settings.continue_from_lora).expanduser()
        network.load_kohya_state_dict(load_file(str(lora_path)), read_lora_metadata(lora_path))
        progress.log(f"continuing from {lora_path.name}")
    network.apply_to()
    model.unet.to(device, dtype=weight_dtype)
    if text_cache is None:
        for encoder in model.text_encoders:
            encoder.to(device, dtype=weight_dtype)
    network.to(device, dtype=weight_dtype if full_half else torch.float32)
    if settings.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        model.unet.train()
        if train_te:
            for encoder in model.text_encoders:
                encoder.gradient_checkpointing_enable()
                encoder.train()

    optimizer, optimizer_name = build_optimizer(settings.optimizer, network.param_groups(settings.unet_lr, settings.text_encoder_lr if train_te else None), settings.optimizer_args, on_cuda, progress)
    # Accelerate steps a prepared scheduler once per process for each optimizer step, so count all of them.
    lr_scheduler = build_scheduler(settings.lr_scheduler, optimizer, total_steps * accelerator.num_processes, settings.lr_warmup_ratio, settings.lr_scheduler_number)
    network, optimizer, lr_scheduler = accelerator.prepare(network, optimizer, lr_scheduler)
    raw_network = accelerator.unwrap_model(network)

    first_epoch, skip_batches, global_step = 0, 0, 0
    if resume:
        info = read_state_info(project)
        saved = torch.load(state_dir(project) / "state.pt", map_location="cpu", weights_only=False)
        raw_network.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        lr_scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        first_epoch, skip_batches, global_step = info["epoch"], info["batch_index"], info["global_step"]
        started_at = info.get("started_at", started_at)
        progress.log(f"resuming at epoch {first_epoch + 1}, step {global_step}")

    gamma = cfg.resolved_min_snr_gamma(settings)
    scheduler_cfg = model.noise_scheduler
    alphas_cumprod = scheduler_cfg.alphas_cumprod.to(device)
    metadata_base = _metadata_fields(settings, project, dataset, source, model, raw_network, optimizer_name, steps_per_epoch, plan.epochs, total_steps, started_at, gamma, precision, full_half)
    result = TrainResult(output_name, total_epochs=plan.epochs)
    rng = random.Random(settings.seed)
    shuffle = settings.shuffle_tags and text_cache is None  # cached captions are encoded as written
    cache.move_to(device)  # gathered where the step runs: no copy of the latents per step
    prepare = batch_preparer(model, settings, rng, shuffle, text_cache, pin=device.type == "cuda")
    trainable = [p for p in network.parameters() if p.requires_grad]
    losses = LossReader(loss_read_interval(device))
    window: list[float] = []
    tick, tick_step = time.monotonic(), global_step
    progress.log(f"training {plan.epochs} epochs x {steps_per_epoch} steps on {device} ({precision}); {raw_network.describe()}")

    def report(step: int, epoch: int, epoch_end: bool) -> None:
        """Progress for this step; the loss (and speed) when the losses are read: every few steps on a GPU, and
        at the end of each epoch, so that every loss is checked before anything of the epoch is saved."""
        nonlocal tick, tick_step
        data = dict(epoch=epoch + 1, **_learning_rates(optimizer))
        if losses.due() or epoch_end:
            window.extend(value for _, value in losses.read())
            del window[:-50]
            now = time.monotonic()
            data.update(loss=round(sum(window) / len(window), 5), it_per_s=round((step - tick_step) / max(now - tick, 1e-9), 3))
            tick, tick_step = now, step
        progress.update(step, total_steps, f"epoch {epoch + 1}/{plan.epochs}", **data)

    for epoch in range(first_epoch, plan.epochs):
        batches = _shard(data_mod.epoch_batches(dataset, settings.train_batch_size, epoch, settings.seed), accelerator)
        rng.seed(settings.seed * 100003 + epoch)
        network.train()
        position = skip_batches if epoch == first_epoch else 0  # the epoch's next batch
        for batch in batches[:position]:  # replay the caption shuffles so a resumed run matches an uninterrupted one
            for item, _ in batch:
                process_caption(item.caption_text, item.keep_tokens, shuffle, rng)
        with BatchFeed(prepare) as feed:
            for prepared in feed.batches(batches[position:]):
                try:
                    progress.check_cancel()
                except Cancelled:
                    losses.read()  # a diverged run is not saved for resuming
                    if main:
                        _save_state(project, settings, raw_network, optimizer, lr_scheduler, epoch, position, global_step, started_at)
                    progress.log(f"stopped at epoch {epoch + 1}, step {global_step}: `lora-gradio train {project.base} --resume` continues from here")
                    raise
                loss = forward_backward(accelerator, model, network, cache.batch(prepared.pairs), prepared.captions, prepared.is_reg, settings, gamma,
                                        alphas_cumprod, weight_dtype, train_te, size_ids=prepared.size_ids, conditioning=prepared.conditioning,
                                        token_ids=prepared.token_ids, trainable=trainable)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                position += 1
                losses.add(global_step, loss)
                report(global_step, epoch, epoch_end=position == len(batches))
        epoch_done = epoch + 1
        result.epochs_done = epoch_done
        if not main:
            accelerator.wait_for_everyone()
            continue
        if _should_save(epoch_done, plan.epochs, settings.save_every_n_epochs):
            name = epoch_file_name(output_name, epoch_done, plan.epochs)
            target = project.output_dir / name
            meta = dict(metadata_base, epoch=epoch_done, steps=global_step, training_finished_at=time.time())
            from lora_gradio.engine.train.saving import build_metadata

            save_lora(target, raw_network.kohya_state_dict(_save_dtype(settings.save_precision)), build_metadata(**meta))
            result.files.append(str(target))
            progress.log(f"saved {name}")
            pruned = prune_epochs(project.output_dir, output_name, settings.keep_only_last_n_epochs, trash=_trash_old_epochs(project))
            for old in pruned:
                progress.log(f"moved {old.name} to the project's trash (keep_only_last_n_epochs = {settings.keep_only_last_n_epochs})")
        if settings.sample_every_n_epochs and settings.sample_prompts and (epoch_done % settings.sample_every_n_epochs == 0 or epoch_done == plan.epochs):
            result.samples += [str(p) for p in _samples(model, raw_network, settings, project, output_name, epoch_done, plan.epochs, device)]
        _save_state(project, settings, raw_network, optimizer, lr_scheduler, epoch_done, 0, global_step, started_at)
        accelerator.wait_for_everyone()
    result.steps = global_step
    if main:
        _clear_state(project)
        if on_cuda:
            _log_peak_memory(settings, model.family.memory_version, device, progress)
    return result


def _log_memory_plan(settings: cfg.TrainSettings, progress: Progress, gpu: Any = True) -> Any:
    """The page's memory check, at the top of the run's log (the command line shows it nowhere else);
    returns the report (None when the model cannot be estimated yet)."""
    from lora_gradio.engine.train import memory

    try:
        report = memory.check_training_memory(settings, gpu=gpu)
    except UserError:
        return None  # an unusable model: loading it says so, with the fix
    for line in report.summary().splitlines():
        progress.log(line)
    return report


def _log_peak_memory(settings: cfg.TrainSettings, version: str, device: Any, progress: Progress) -> None:
    import torch

    from lora_gradio.engine.train import memory

    estimate = memory.estimate_memory(settings, version, on_cuda=True, bf16_supported=torch.cuda.is_bf16_supported())
    progress.log(memory.peak_report(estimate, torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)))


def _learning_rates(optimizer: Any) -> dict[str, float]:
    """The current rate of each part, e.g. {"lr_unet": 4.9e-4, "lr_text_encoder": 9.8e-5}."""
    return {f"lr_{group.get('name', index)}": float(f"{group['lr']:.3g}") for index, group in enumerate(optimizer.param_groups)}


def _shard(batches: list, accelerator: Any) -> list:
    """This process's share of an epoch's batches under `accelerate launch`.

    Every process must take the same number of steps (gradients are averaged at each), so the
    list is padded by repeating its first batches, as Accelerate's even_batches does.
    """
    count = accelerator.num_processes
    if count == 1:
        return batches
    per_process = math.ceil(len(batches) / count)
    padded = batches + batches[: per_process * count - len(batches)]
    return padded[accelerator.process_index :: count]


class _SilentButCancellable(Progress):
    def __init__(self, inner: Progress):
        self.inner = inner

    def cancelled(self) -> bool:
        return self.inner.cancelled()


def training_step(*args, **kwargs) -> float:
    """`forward_backward` with its loss read at once (the benchmarks' step, which times each step anyway)."""
    return float(forward_backward(*args, **kwargs))


def forward_backward(accelerator, model, network, latents, captions, is_reg, settings, gamma, alphas_cumprod, weight_dtype, train_te,
                     size_ids=None, conditioning=None, token_ids=None, trainable=None) -> Any:
    """One optimisation step's forward and backward on cached latents; returns the loss, still on the device.

    Noise (plus noise_offset and multires noise), uniform timesteps, input perturbation (ip_noise_gamma),
    the family's conditioning (SDXL: pooled text and size ids), epsilon or v target, per-sample MSE,
    prior-loss weight for regularization images, min-SNR and v-pred loss scaling, then the batch mean.
    `conditioning` is the text encoders' cached output, when they are not run; `token_ids` the captions'
    ids when they were tokenized ahead; `trainable` the network's trained parameters (found once per run).
    Nothing here waits for the GPU: inputs from the host arrive pinned and are copied without blocking.
    """
    import contextlib

    import torch
    import torch.nn.functional as F

    from lora_gradio.engine.train.noise import loss_weights, training_noise

    device = accelerator.device
    latents = latents.to(device, dtype=weight_dtype, non_blocking=True)
    with accelerator.autocast():
        if conditioning is None:
            with contextlib.nullcontext() if train_te else torch.no_grad():
                conditioning = model.family.encode(model, captions, settings.max_token_length, settings.clip_skip, device, settings.weighted_captions,
                                                   token_ids=token_ids)
        conditioning = conditioning.to(device, weight_dtype, non_blocking=True)
        noise = training_noise(latents, settings.noise_offset, settings.multires_noise_iterations, settings.multires_noise_discount)
        timesteps = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=device).long()
        model_input = noise + settings.ip_noise_gamma * torch.randn_like(latents) if settings.ip_noise_gamma else noise
        noisy = model.noise_scheduler.add_noise(latents, model_input, timesteps)
        extra = model.family.unet_kwargs(conditioning, size_ids)
        prediction = model.unet(noisy, timesteps, conditioning.hidden, **extra).sample
    target = model.noise_scheduler.get_velocity(latents, noise, timesteps) if model.v_parameterization else noise
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
    if any(is_reg):  # a weight of 1.0 changes nothing: only batches with regularization images copy weights over
        loss = loss * torch.tensor([settings.prior_loss_weight if reg else 1.0 for reg in is_reg]).to(device, non_blocking=True)
    weights = loss_weights(alphas_cumprod, timesteps, model.v_parameterization, gamma, settings.scale_v_pred_loss)
    if weights is not None:
        loss = loss * weights
    loss = loss.mean()
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(trainable if trainable is not None else [p for p in network.parameters() if p.requires_grad], 1.0)
    return loss.detach()


def _should_save(epoch: int, total: int, every: int) -> bool:
    return epoch == total or (every > 0 and epoch % every == 0)


def _save_dtype(precision: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def _trash_old_epochs(project: Project):
    from lora_gradio.engine.trash import move_to_trash

    return lambda paths: move_to_trash(project, paths, "older epochs (keep_only_last_n_epochs)", with_sidecars=False)


def _samples(model, network, settings, project, output_name, epoch, total_epochs, device) -> list[Path]:
    import torch

    from lora_gradio.engine.train.sampling import sample_images
    from lora_gradio.engine.train.saving import epoch_file_name

    stem = epoch_file_name(output_name, epoch, total_epochs).rsplit(".", 1)[0]
    model.vae.to(device)
    try:
        with torch.no_grad():
            return sample_images(model, settings.sample_prompts, project.output_dir / "sample", stem, settings.resolution, settings.seed, device, settings.clip_skip, settings.max_token_length)
    finally:
        model.vae.to("cpu")


def _metadata_fields(settings, project, dataset, source, model, network, optimizer_name, steps_per_epoch, epochs, total_steps, started_at, gamma, precision, full_half=False) -> dict:
    """kohya's ss_* fields for this run (the per-epoch ones are added when saving)."""
    model_hash = new_hash = None
    if source.kind == "file":
        from lora_gradio.engine.train.saving import full_file_sha256, legacy_sd_model_hash

        model_hash, new_hash = legacy_sd_model_hash(source.path), full_file_sha256(source.path)
    return dict(
        training_started_at=started_at, output_name=cfg.resolved_output_name(settings, project),
        learning_rate=settings.unet_lr, unet_lr=settings.unet_lr, text_encoder_lr=settings.text_encoder_lr,
        num_train_images=dataset.num_train_images, num_reg_images=dataset.num_reg_images,
        num_batches_per_epoch=steps_per_epoch, num_epochs=epochs, max_train_steps=total_steps,
        lr_warmup_steps=int(round(total_steps * settings.lr_warmup_ratio)), lr_scheduler=settings.lr_scheduler,
        lr_scheduler_num_cycles=settings.lr_scheduler_number, optimizer=optimizer_name, seed=settings.seed,
        gradient_checkpointing=settings.gradient_checkpointing, cache_latents=settings.cache_latents,
        network_module=network.network_module, network_dim=settings.network_dim, network_alpha=settings.network_alpha,
        network_dropout=None, network_args=network.network_args(),
        base_model_version=model.base_model_version, v_parameterization=model.v_parameterization,
        zero_terminal_snr=model.zero_terminal_snr, clip_skip=settings.clip_skip if model.family.uses_clip_skip else None,
        max_token_length=settings.max_token_length,
        sd_model_name=source.name, sd_model_hash=model_hash, new_sd_model_hash=new_hash,
        mixed_precision=precision, full_fp16=full_half and precision == "fp16", noise_offset=settings.noise_offset or None, min_snr_gamma=gamma,
        multires_noise_iterations=settings.multires_noise_iterations or None,
        multires_noise_discount=settings.multires_noise_discount if settings.multires_noise_iterations else None,
        ip_noise_gamma=settings.ip_noise_gamma or None,
        prior_loss_weight=settings.prior_loss_weight, weighted_captions=settings.weighted_captions,
        resolution=settings.resolution, flip_aug=settings.flip_aug, shuffle_caption=settings.shuffle_tags and not settings.cache_text_encoder_outputs,
        keep_tokens=settings.activation_tags, enable_bucket=True, min_bucket_reso=settings.min_bucket_reso,
        max_bucket_reso=settings.max_bucket_reso, bucket_no_upscale=False, bucket_reso_steps=settings.bucket_reso_steps,
        batch_size_per_device=settings.train_batch_size, bucket_info=dataset.bucket_info(),
        dataset_dirs=dataset.dataset_dirs(), tag_frequency=dataset.tag_frequency(),
    )
