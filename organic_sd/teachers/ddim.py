"""Deterministic DDIM (eta = 0) over anything with eps() and alphas_cumprod: shared by precompute,
generation and evaluation. The same starting noise gives the same samples."""

from __future__ import annotations

import math
from typing import Callable

import torch


def seeded_noise(shape, n: int, seed: int) -> torch.Tensor:
    """(n, C, H, W) standard normal noise drawn on the CPU from `seed` (same on every machine)."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


def ddim_timesteps(num_steps: int, steps: int, last: int | None = None) -> list[int]:
    """`steps` integer steps from the top of a schedule of `num_steps` entries down (the last one > 0).

    last=None: evenly spaced, the last step at top / steps (e.g. 1000, 875, ..., 125); an int: evenly spaced
    from the top down to `last` itself (a lower last step leaves the final x0 estimate less noise to remove;
    one step is the top alone).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    top = num_steps - 1
    if steps > top:
        raise ValueError(f"steps must be <= {top} for a schedule of {num_steps} entries, got {steps}")
    if last is None:
        return [int(round(top * (steps - k) / steps)) for k in range(steps)]  # e.g. 1000, 980, ..., 20
    if not 1 <= last <= top - (steps - 1):
        raise ValueError(f"the last step must be in 1..{top - (steps - 1)} for {steps} steps of a schedule of "
                         f"{num_steps} entries, got {last}")
    if steps == 1:
        return [top]
    return [int(round(top - (top - last) * k / (steps - 1))) for k in range(steps)]


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, ab_t: float, ab_next: float) -> torch.Tensor:
    """One eta = 0 DDIM step from alpha-bar ab_t to ab_next (1.0: the clean estimate x_0)."""
    x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    return math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * eps


def ddim_sample(denoiser, noise: torch.Tensor, steps: int, cond: torch.Tensor | None = None,
                on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
                last: int | None = None) -> torch.Tensor:
    """(B, C, H, W) noise -> (B, C, H, W) samples in `steps` DDIM steps of `denoiser` (anything with eps()).

    `on_step(k, t, x_t, eps)` sees every step's input and the teacher's eps (for recording); `last`: the
    schedule's last step (ddim_timesteps).
    """
    ab = denoiser.alphas_cumprod
    t_steps = ddim_timesteps(len(ab), steps, last)
    x = noise.to(denoiser.device, torch.float32)
    B = x.shape[0]
    for k, t in enumerate(t_steps):
        e = denoiser.eps(x, torch.full((B,), t, dtype=torch.int64), cond)
        if on_step is not None:
            on_step(k, t, x, e)
        ab_next = float(ab[t_steps[k + 1]]) if k + 1 < len(t_steps) else 1.0
        x = ddim_step(x, e, float(ab[t]), ab_next)
    return x
