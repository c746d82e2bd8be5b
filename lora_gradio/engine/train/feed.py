"""What goes into and comes out of a training step, kept off the step's critical path.

A GPU runs a step's kernels while the host queues the next ones; it waits only when the host stops to read a
value or is still busy preparing. So:

- `BatchFeed` prepares the next batch (caption shuffling and dropout with the run's caption RNG, in batch
  order; tokenizing; SDXL's size ids; cached text-encoder outputs) on one worker thread while the current
  step runs, with its small tensors in page-locked memory on a GPU so that their copies need no sync;
- `LossReader` keeps each step's loss on the device and reads them together every few steps (and before
  anything is saved), instead of stopping the GPU every step to print one number.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from lora_gradio.engine.errors import UserError

# How many steps a GPU run goes between reading its losses (each read waits for the GPU to finish).
GPU_LOSS_READ_EVERY = 10


@dataclass
class PreparedBatch:
    pairs: Sequence[Tuple[Any, bool]]  # (ImageItem, flipped) as `epoch_batches` gives them
    captions: List[str]
    is_reg: List[bool]
    token_ids: Optional[Tuple[Any, ...]] = None  # per text encoder, when the step encodes from ids
    size_ids: Any = None  # SDXL's size conditioning
    conditioning: Any = None  # the cached text-encoder outputs, when they are cached


class BatchFeed:
    """Runs `prepare(batch)` one batch ahead, on one thread, strictly in order (the caption RNG depends on it)."""

    def __init__(self, prepare: Callable[[Any], PreparedBatch]):
        self._prepare = prepare
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-gradio-feed")

    def __enter__(self) -> "BatchFeed":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def batches(self, batches: Iterable[Any]) -> Iterator[PreparedBatch]:
        pending: "Optional[Future]" = None
        for batch in batches:
            upcoming = self._pool.submit(self._prepare, batch)
            if pending is not None:
                yield pending.result()
            pending = upcoming
        if pending is not None:
            yield pending.result()


def batch_preparer(model: Any, settings: Any, rng: Any, shuffle: bool, text_cache: Any, pin: bool) -> Callable[[Any], PreparedBatch]:
    """The host's work for one batch of `epoch_batches`, as the loop used to do it inline."""
    from lora_gradio.engine.train.data import process_caption

    family = model.family
    # The ids are tokenized ahead unless the step reads cached outputs or parses (weights) from the text.
    tokenize = text_cache is None and not settings.weighted_captions

    def pinned(tensor: Any) -> Any:
        return tensor.pin_memory() if pin and tensor is not None else tensor

    def prepare(batch: Any) -> PreparedBatch:
        captions = [process_caption(item.caption_text, item.keep_tokens, shuffle, rng) for item, _ in batch]
        prepared = PreparedBatch(batch, captions, [item.is_reg for item, _ in batch], size_ids=pinned(family.size_ids(batch)))
        if tokenize:
            prepared.token_ids = tuple(pinned(ids) for ids in family.tokenize(model, captions, settings.max_token_length))
        if text_cache is not None:
            prepared.conditioning = text_cache.batch(captions)
            if pin:
                prepared.conditioning = prepared.conditioning.pin()
        return prepared

    return prepare


class LossReader:
    """Each step's loss, read from the device every `every` steps (or when asked) in one transfer."""

    def __init__(self, every: int):
        self.every = max(1, int(every))
        self._pending: List[Tuple[int, Any]] = []

    def add(self, step: int, loss: Any) -> None:
        self._pending.append((step, loss))

    def due(self) -> bool:
        return len(self._pending) >= self.every

    def read(self) -> List[Tuple[int, float]]:
        """[(step, loss)] since the last read; a loss that is not finite stops the run with advice."""
        if not self._pending:
            return []
        import torch

        steps = [step for step, _ in self._pending]
        values = torch.stack([loss.float() for _, loss in self._pending]).tolist()
        self._pending = []
        for step, value in zip(steps, values):
            if not math.isfinite(value):
                raise UserError(
                    f"The loss became {value} at step {step}: the run diverged. Lower unet_lr (e.g. 1e-4) and text_encoder_lr, "
                    "use mixed_precision=bf16 if the GPU has it, or set noise_offset to 0. Epochs saved so far are kept."
                )
        return list(zip(steps, values))


def loss_read_interval(device: Any) -> int:
    """Every step on the CPU (reading costs nothing there), every few steps on a GPU."""
    return 1 if getattr(device, "type", str(device)) == "cpu" else GPU_LOSS_READ_EVERY
