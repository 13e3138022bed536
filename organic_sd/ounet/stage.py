"""The O-UNet's coarse stage: the whole noisy image, pooled, -> the prediction pooled to the same grid.

At high noise the teacher's x0 estimate is a whole-digit decision made from the entire image; a
per-pixel stack that sees a window cannot make it (its samples are patch mosaics). The coarse stage
sees all of x_t at once, average-pooled to g x g:

    inputs   time features (as the per-pixel rows'), pooled x_t, pooled x_t times sqrt(ab)      2 + 2F + 3 C g g
             and times sqrt(1 - ab) (so a linear map can weigh the image by the noise level),
             pooled x_t times K soft time buckets (a linear map of its own per noise level)    + K C g g
             and cond                                                                            + cond_dim
    output   the O-UNet's target (eps, x0 or v: targets.py) average-pooled to g x g                C g g

Its output, upsampled bilinearly to full size, is an input of the per-pixel stage (features.py:
the `stage` columns). Trained first, on the teacher's target pooled to g x g; then frozen while the
per-pixel stage is trained on the full target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from organic_sd.ounet.features import STAGE_COPIES, image_inputs


def stage_in_dim(cfg) -> int:
    """Input columns of the coarse stage of an O-UNet config."""
    C, g = cfg.sample_shape[0], cfg.stage_grid
    maps = 1 + len(STAGE_COPIES[cfg.stage_copies]) + cfg.stage_buckets  # pooled image, its copies, bucket products
    return 2 + 2 * cfg.freqs + maps * C * g * g + cfg.cond_dim


def soft_buckets(t: torch.Tensor, buckets: int, num_steps: int) -> torch.Tensor:
    """(B,) steps -> (B, K) weights of K time buckets centred evenly on 0..T-1, linear between neighbours
    (they sum to 1), so the map each bucket owns blends smoothly into the next."""
    pos = t.float() / (num_steps - 1) * (buckets - 1)  # (B,) in [0, K-1]
    return (1 - (pos[:, None] - torch.arange(buckets, device=t.device)).abs()).clamp(min=0)


def stage_inputs(cfg, schedule: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                 cond: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) x_t, (B,) t, cond (B, cond_dim) or None -> (B, stage_in_dim) coarse-stage rows."""
    B = x_t.shape[0]
    ab, tf, _, _ = image_inputs(cfg, schedule, x_t, t)
    pooled = F.adaptive_avg_pool2d(x_t, cfg.stage_grid).flatten(1)  # (B, C g g)
    scale = {"signal": ab.sqrt()[:, None], "noise": (1 - ab).sqrt()[:, None]}  # (B, 1) each
    parts = [tf, pooled, *(pooled * scale[c] for c in STAGE_COPIES[cfg.stage_copies])]
    if cfg.stage_buckets > 1:
        w = soft_buckets(t, cfg.stage_buckets, cfg.num_steps)  # (B, K)
        parts.append((w[:, :, None] * pooled[:, None, :]).flatten(1))  # (B, K C g g)
    if cfg.cond_dim:
        parts.append(cond.to(x_t.device, torch.float32).reshape(B, -1))
    return torch.cat(parts, 1)


def pooled_target(cfg, target: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) full-size target -> (B, C g g): what the coarse stage is fitted to."""
    return F.adaptive_avg_pool2d(target, cfg.stage_grid).flatten(1)


def upsample(cfg, coarse: torch.Tensor) -> torch.Tensor:
    """(B, C g g) coarse-stage output -> (B, C, H, W), bilinear: the map the per-pixel stage reads."""
    C, H, W = cfg.sample_shape
    g = cfg.stage_grid
    return F.interpolate(coarse.reshape(-1, C, g, g), size=(H, W), mode="bilinear", align_corners=False)


def stage_map(cfg, stage, schedule: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
              cond: torch.Tensor | None = None) -> torch.Tensor:
    """The coarse stage's prediction for x_t, upsampled to (B, C, H, W)."""
    return upsample(cfg, stage(stage_inputs(cfg, schedule, x_t, t, cond)))
