"""VAE latents for training, encoded once: in memory and optionally on disk beside the project.

A cached file is keyed by the image file's identity (path, size, mtime), its bucket, the flip,
and the VAE, so a changed image is encoded again and an unchanged one is read back.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.fsutil import atomic_path
from lora_gradio.engine.progress import Progress, first_few
from lora_gradio.engine.train.data import _WORKERS, CollectedDataset, ImageItem, _reason, load_image_tensor

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_SCALING_FACTOR = 0.18215  # SD1.x/SD2.x; SDXL's VAE config says 0.13025
CACHE_FORMAT_VERSION = 1  # bump when the meaning of a cached latent file changes
# The fp32 VAE encoder needs about 2.5 GB per megapixel it encodes at once (SD's VAE: 2.51 GB for
# 4 images at 512 px, 2.51 GB for 1 at 1024 px). A batch holds at most this many pixels, so caching
# never needs more memory than 4 images at 512 px, whatever the resolution.
ENCODE_PIXELS = 4 * 512 * 512
# Latents kept on the GPU for the run when they take at most this much (SD 1.5 at 512 px: 64 KiB each, so
# 4096 latents; SDXL at 1024 px: 1024); larger datasets stay in host memory and are copied per batch.
DEVICE_CACHE_BYTES = 256 * 2**20


def encode_batch_size(width: int, height: int, most: int = 4) -> int:
    """How many images of a (width, height) bucket the VAE encodes at once."""
    return max(1, min(most, ENCODE_PIXELS // max(1, width * height)))

def vae_identity(vae: Any) -> str:
    """A short fingerprint of a VAE: its config plus the bytes of its first and last parameters.
    Two different VAEs (or a fine-tuned one) give different strings; computing it is cheap."""
    import torch

    digest = hashlib.sha256()
    config = getattr(vae, "config", None)
    try:
        digest.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    except Exception:
        digest.update(type(vae).__name__.encode())
    params = list(vae.parameters()) if hasattr(vae, "parameters") else []
    for param in params[:1] + params[-1:]:
        with torch.no_grad():
            digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentCache:
    """VAE latents for every (image, bucket, flip), in memory and optionally on disk.

    Latents are one draw of the VAE posterior, `latent_dist.sample()`, as kohya caches (its
    `cache_latents` encodes once and reuses that sample every epoch), times the VAE's scaling factor
    (`vae.config.scaling_factor`, default 0.18215). The draw is seeded per image from the cache key, so
    it does not depend on the batch it was encoded in. `use_mean=True` caches the posterior mean instead.
    With flip_aug the flipped image is encoded too (not the latent flipped), as kohya does.

    On disk (`cache_dir`, e.g. the project's `_cache/latents`) there is one safetensors file per entry,
    named by a hash of: the image's absolute path, file size and mtime, the bucket, the flip, the VAE
    identity, the VAE dtype, and sample/mean. A changed image gets a new key and is encoded again; old
    files are simply no longer read. Files store unscaled float32 latents [4, h/8, w/8].
    """

    def __init__(
        self,
        vae: Any,
        device: "str | torch.device | None" = None,
        dtype: "torch.dtype | None" = None,
        cache_dir: "Path | None" = None,
        vae_id: str | None = None,
        batch_size: int = 4,
        use_mean: bool = False,
        seed: int = 0,
        scaling_factor: float | None = None,
    ):
        import torch

        self.vae = vae
        first = next(iter(vae.parameters()), None) if hasattr(vae, "parameters") else None
        self.device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
        self.dtype = dtype or (first.dtype if first is not None else torch.float32)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.vae_id = vae_id if vae_id is not None else vae_identity(vae)
        self.batch_size = max(1, int(batch_size))
        self.use_mean = use_mean
        self.seed = seed
        config_factor = getattr(getattr(vae, "config", None), "scaling_factor", None)
        self.scaling_factor = float(scaling_factor or config_factor or DEFAULT_SCALING_FACTOR)
        self._memory: dict[str, "torch.Tensor"] = {}  # key -> scaled latents (float32; CPU until `move_to`)
        self._keys: dict[tuple[Path, tuple[int, int], bool], str] = {}
        self.encoded = 0  # entries encoded by the VAE in this session
        self.loaded = 0  # entries read back from disk

    # Keys ---------------------------------------------------------------------------------------

    def key(self, item: ImageItem, flip: bool) -> str:
        stat = item.path.stat()
        parts = [
            f"v{CACHE_FORMAT_VERSION}",
            str(item.path.resolve()),
            str(stat.st_size),
            str(stat.st_mtime_ns),
            f"{item.bucket[0]}x{item.bucket[1]}",
            "flip" if flip else "noflip",
            self.vae_id,
            str(self.dtype).replace("torch.", ""),
            "mean" if self.use_mean else "sample",
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:40]

    def _file(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    # Filling ------------------------------------------------------------------------------------

    def cache(self, items: "CollectedDataset | Iterable[ImageItem]", progress: Progress | None = None) -> list[tuple[Path, str]]:
        """Make sure every item in use (num_repeats > 0) has its latents (and flipped latents when the
        item may flip). Reads what the disk cache has, encodes the rest in batches of one bucket.

        Unreadable images are skipped and returned as (path, reason); given a `CollectedDataset` they
        are also dropped from it (so its step count stays right). Checks cancel between batches.
        """
        progress = progress or Progress()
        dataset = items if isinstance(items, CollectedDataset) else None
        wanted = [item for item in (dataset.items if dataset else items) if item.num_repeats > 0]
        entries: list[tuple[ImageItem, bool]] = []
        for item in wanted:
            entries.append((item, False))
            if item.flip:
                entries.append((item, True))

        total = len(entries)
        done = 0
        todo: dict[tuple[int, int], list[tuple[ImageItem, bool, str]]] = defaultdict(list)
        failed: dict[Path, str] = {}
        for item, flip in entries:
            try:
                key = self.key(item, flip)
            except OSError as exc:
                failed[item.path] = f"{item.path.name}: cannot read the file ({exc.strerror or exc})."
                continue
            self._keys[(item.path, item.bucket, flip)] = key
            if key in self._memory or self._load(key):
                done += 1
            else:
                todo[item.bucket].append((item, flip, key))
        progress.update(done, total, "caching latents")

        batches = []
        for bucket in sorted(todo):
            pending = todo[bucket]
            size = encode_batch_size(*bucket, most=self.batch_size)
            batches.extend(pending[i : i + size] for i in range(0, len(pending), size))

        # Images are decoded in threads, one task per image, a few batches ahead of the VAE.
        ahead = 2
        with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
            window: deque[list[Future]] = deque()

            def submit(batch: list[tuple[ImageItem, bool, str]]) -> list[Future]:
                return [pool.submit(self._load_one, item, flip) for item, flip, _ in batch]

            try:
                window.extend(submit(batch) for batch in batches[:ahead])
                for index, batch in enumerate(batches):
                    progress.check_cancel()
                    futures = window.popleft()
                    if index + ahead < len(batches):
                        window.append(submit(batches[index + ahead]))
                    good_entries, good_pixels = [], []
                    for entry, future in zip(batch, futures):
                        tensor, reason = future.result()
                        if tensor is None:
                            failed.setdefault(entry[0].path, reason or "unreadable")
                        else:
                            good_entries.append(entry)
                            good_pixels.append(tensor)
                    if good_entries:
                        self._encode(good_entries, good_pixels)
                    done += len(batch)
                    progress.update(done, total, f"caching latents {done}/{total}")
            finally:
                for futures in window:  # cancelled or failed: do not decode the rest
                    for future in futures:
                        future.cancel()
        progress.check_cancel()

        problems = sorted(failed.items())
        for path, reason in problems:
            for key_tuple in [k for k in self._keys if k[0] == path]:
                self._memory.pop(self._keys.pop(key_tuple), None)
            if dataset is not None:
                dataset.drop(path, reason, progress)
            else:
                progress.log(f"skipped {path.name}: {reason}")
        if dataset is not None and problems:
            # Dropping can give reg images more repeats: cache any newly used reg images too.
            if any(item.num_repeats > 0 and self._keys.get((item.path, item.bucket, False)) is None for item in dataset.items):
                problems += self.cache(dataset, progress)
        return problems

    @staticmethod
    def _load_one(item: ImageItem, flip: bool) -> "tuple[torch.Tensor | None, str | None]":
        try:
            return load_image_tensor(item, flip), None
        except Exception as exc:  # one bad file must not stop caching
            return None, _reason(exc)

    def _encode(self, batch: list[tuple[ImageItem, bool, str]], pixels: list["torch.Tensor"]) -> None:
        import torch

        x = torch.stack(pixels).to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            if self.use_mean:
                latents = dist.mode() if hasattr(dist, "mode") else dist.mean
            elif hasattr(dist, "mean") and hasattr(dist, "std"):
                noise = torch.stack(
                    [
                        torch.randn(dist.mean.shape[1:], generator=torch.Generator().manual_seed(self._entry_seed(key)), dtype=torch.float32)
                        for _, _, key in batch
                    ]
                ).to(device=dist.mean.device, dtype=dist.mean.dtype)
                latents = dist.mean + dist.std * noise
            else:
                latents = dist.sample()
        latents = latents.detach().to("cpu", torch.float32)
        if not torch.isfinite(latents).all():
            names = first_few([item.path.name for item, _, _ in batch])
            raise UserError(
                f"The VAE produced NaN/inf latents for {names} in {str(self.dtype).replace('torch.', '')}; "
                "run the VAE in float32 (or use a VAE fixed for half precision)."
            )
        for (item, flip, key), latent in zip(batch, latents):
            latent = latent.contiguous()
            self._memory[key] = latent * self.scaling_factor
            self.encoded += 1
            if self.cache_dir is not None:
                self._save(key, latent, item, flip)

    def _entry_seed(self, key: str) -> int:
        return int(hashlib.sha256(f"{self.seed}:{key}".encode()).hexdigest()[:15], 16)

    # Disk ---------------------------------------------------------------------------------------

    def _save(self, key: str, latent: "torch.Tensor", item: ImageItem, flip: bool) -> None:
        from safetensors.torch import save_file

        if getattr(self, "_disk_warned", False):
            return  # the disk said no once: do not try (and fail) again for every image
        path = self._file(key)
        metadata = {
            "image": str(item.path),
            "bucket": f"{item.bucket[0]}x{item.bucket[1]}",
            "flip": str(bool(flip)),
            "vae": self.vae_id,
            "mode": "mean" if self.use_mean else "sample",
            "format": str(CACHE_FORMAT_VERSION),
        }
        try:
            with atomic_path(path) as tmp:
                save_file({"latents": latent}, str(tmp), metadata=metadata)
        except Exception as exc:  # a full or read-only disk (UserError), or safetensors' own error: memory still has it
            if not getattr(self, "_disk_warned", False):
                self._disk_warned = True
                import warnings

                warnings.warn(f"The latent cache in {self.cache_dir} is not saved ({exc}): training goes on with the latents in memory.", stacklevel=2)

    def _load(self, key: str) -> bool:
        if self.cache_dir is None:
            return False
        path = self._file(key)
        if not path.is_file():
            return False
        try:
            import torch
            from safetensors.torch import load_file

            latent = load_file(str(path))["latents"].to(dtype=torch.float32)
        except Exception:  # a damaged cache file is re-encoded
            return False
        self._memory[key] = latent * self.scaling_factor
        self.loaded += 1
        return True

    # Reading ------------------------------------------------------------------------------------

    def get(self, item: ImageItem, flip: bool = False) -> "torch.Tensor":
        """Scaled latents [4, h/8, w/8] (float32; on the CPU, or where `move_to` put them) of a cached (item, flip)."""
        key = self._keys.get((item.path, item.bucket, bool(flip)))
        if key is None or key not in self._memory:
            raise KeyError(f"no cached latents for {item.path.name} (flip={flip}); call cache() first")
        return self._memory[key]

    def move_to(self, device: Any) -> bool:
        """Keep the cached latents on `device` for the steps, if they fit DEVICE_CACHE_BYTES: a batch is then
        gathered there, with no copy from the host per step. True when they moved (or are there)."""
        if getattr(device, "type", str(device)) == "cpu":
            return True
        size = sum(t.numel() * t.element_size() for t in self._memory.values())
        if size > DEVICE_CACHE_BYTES:
            return False
        self._memory = {key: latent.to(device) for key, latent in self._memory.items()}
        return True

    def batch(self, pairs: Sequence[tuple[ImageItem, bool]]) -> "torch.Tensor":
        """Stacked scaled latents [B, 4, h/8, w/8] for one batch from `epoch_batches`."""
        import torch

        return torch.stack([self.get(item, flip) for item, flip in pairs])

    def __len__(self) -> int:
        return len(self._memory)


