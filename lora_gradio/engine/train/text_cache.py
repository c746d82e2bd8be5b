"""The text encoders' output for every caption, computed once (kohya's cache_text_encoder_outputs).

Captions are encoded as written (no shuffling) in batches with no gradients; the results stay on the
CPU, keyed by the caption text, and the text encoders leave the GPU for the rest of the run. This saves
their memory and time per step, at the price of shuffling and text-encoder training.
"""

from __future__ import annotations

from typing import Any, Dict, List

from lora_gradio.engine.progress import Progress
from lora_gradio.engine.train.family import Conditioning

ENCODE_BATCH = 8


class TextEncoderCache:
    def __init__(self, model: Any, settings: Any, device: Any):
        self.model, self.settings, self.device = model, settings, device
        self._rows: Dict[str, Conditioning] = {}

    def cache(self, dataset: Any, progress: "Progress | None" = None) -> None:
        """Encode every used item's caption (as `process_caption` gives it without shuffling)."""
        import torch

        from lora_gradio.engine.train.data import process_caption

        progress = progress or Progress()
        captions = sorted({process_caption(item.caption_text, item.keep_tokens, False, None) for item in dataset.items if item.num_repeats > 0})
        encoders = self.model.text_encoders
        for encoder in encoders:
            encoder.to(self.device)
        try:
            for start in range(0, len(captions), ENCODE_BATCH):
                progress.check_cancel()
                chunk = captions[start : start + ENCODE_BATCH]
                with torch.no_grad():
                    encoded = self.model.family.encode(self.model, chunk, self.settings.max_token_length, self.settings.clip_skip, self.device,
                                                       self.settings.weighted_captions)
                for caption, row in zip(chunk, encoded.to("cpu").rows()):
                    self._rows[caption] = row
                progress.update(min(start + ENCODE_BATCH, len(captions)), len(captions), "caching text-encoder outputs")
        finally:
            for encoder in encoders:
                encoder.to("cpu")
        progress.log(f"cached the text encoders' output for {len(captions)} caption(s); the text encoders are not trained")

    def batch(self, captions: List[str]) -> Conditioning:
        return Conditioning.stack([self._rows[caption] for caption in captions])

    def __len__(self) -> int:
        return len(self._rows)
