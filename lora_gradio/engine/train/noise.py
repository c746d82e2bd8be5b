"""The noise a training step adds, and the loss weights that depend on the timestep, as kohya computes them.

- `training_noise`: Gaussian noise, plus `noise_offset` (one random shift per image and channel) and
  multires (pyramid) noise: noise drawn at coarser and coarser scales, upsampled, added with a discount
  per level, then renormalised to unit standard deviation.
- `loss_weights`: min-SNR-gamma (epsilon: min(snr, g) / snr; v: min(snr, g) / (snr + 1)) and v-prediction's
  "scale like noise prediction" (snr / (snr + 1), snr capped at 1000).
torch is imported at module level: import this only where training happens.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def multires_noise(noise: torch.Tensor, iterations: int, discount: float) -> torch.Tensor:
    """Pyramid noise over `noise` [B, C, H, W]: each level i = 0 .. iterations-1 adds fresh noise drawn
    at 1 / r^i of the size (r drawn in [2, 4) per level; level 0 is full size), upsampled, times
    discount^i, as kohya's recipe does; stops after a 1-pixel level."""
    batch, channels, height, width = noise.shape
    out = noise.clone()
    for level in range(iterations):
        ratio = float(torch.rand(()) * 2 + 2)
        small_h, small_w = max(1, int(height / ratio**level)), max(1, int(width / ratio**level))
        coarse = torch.randn(batch, channels, small_h, small_w, device=noise.device, dtype=noise.dtype)
        out = out + F.interpolate(coarse, size=(height, width), mode="bilinear") * discount**level
        if small_h == 1 or small_w == 1:
            break
    return out / out.std()


def training_noise(latents: torch.Tensor, noise_offset: float = 0.0, multires_iterations: int = 0,
                   multires_discount: float = 0.3) -> torch.Tensor:
    noise = torch.randn_like(latents)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, device=latents.device, dtype=latents.dtype)
    if multires_iterations:
        noise = multires_noise(noise, multires_iterations, multires_discount)
    return noise


def loss_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, v_prediction: bool,
                 min_snr_gamma: Optional[float], scale_v_pred_loss: bool) -> Optional[torch.Tensor]:
    """Per-sample loss weights for these timesteps, or None when no weighting is on."""
    if not min_snr_gamma and not (v_prediction and scale_v_pred_loss):
        return None
    abar = alphas_cumprod[timesteps]
    snr = abar / (1 - abar).clamp(min=1e-12)  # zero terminal SNR makes the last timestep's snr 0
    weight = torch.ones_like(snr)
    if min_snr_gamma:
        clipped = torch.clamp(snr, max=min_snr_gamma)
        weight = weight * (clipped / (snr + 1) if v_prediction else clipped / snr.clamp(min=1e-8))
    if v_prediction and scale_v_pred_loss:
        capped = torch.clamp(snr, max=1000)
        weight = weight * capped / (capped + 1)
    return weight
