"""The denoiser protocol: what every denoiser teacher (and an O-UNet) provides, and the check of its inputs.

A step t indexes `alphas_cumprod`: x_t = sqrt(ab[t]) x_0 + sqrt(1 - ab[t]) eps.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch


class Denoiser(Protocol):
    """A denoiser teacher. x_t is (B, *sample_shape) in the teacher's own units (pixels or scaled latents)."""

    id: str  # stable identifier, recorded in store meta and checkpoints
    device: torch.device
    alphas_cumprod: torch.Tensor  # (T,) float64 on the CPU; valid steps are 0..T-1
    sample_shape: tuple[int, int, int]  # (C, H, W)
    cond_shape: tuple[int, ...] | None  # of encode_text per prompt: (L, D) text states; (K,) a one-hot class row for
    # a class-conditional teacher, which also names its classes in `classes` (its prompts); None: unconditional
    pixel_range: tuple[float, float]  # (lo, hi) of its clean images (decoded ones for a latent teacher)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) x_t, (B,) integer steps, cond (B, *cond_shape) or None -> (B, C, H, W) predicted noise."""
        ...

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """P prompts -> (P, *cond_shape) conditioning; a TeacherError for teachers without a text encoder."""
        ...


def check_eps_inputs(x_t, t, sample_shape: Sequence[int], num_steps: int) -> torch.Tensor:
    """Raise a ValueError naming the problem unless x_t is (B, *sample_shape) float and t fits; -> (B,) int64 t."""
    if not isinstance(x_t, torch.Tensor):
        raise ValueError(f"x_t must be a torch.Tensor (B, {', '.join(map(str, sample_shape))}), "
                         f"got {type(x_t).__name__}")
    if x_t.ndim != 1 + len(sample_shape) or tuple(x_t.shape[1:]) != tuple(sample_shape):
        raise ValueError(f"x_t must have shape (B, {', '.join(map(str, sample_shape))}), got {tuple(x_t.shape)}")
    if not x_t.is_floating_point():
        raise ValueError(f"x_t must be float, got dtype {x_t.dtype}")
    B = x_t.shape[0]
    tt = torch.as_tensor(t)
    if tt.is_floating_point() or tt.is_complex():
        if not torch.equal(tt, tt.round()):
            raise ValueError(f"t must hold integer steps 0..{num_steps - 1}, got non-integer values")
    tt = tt.to(torch.int64)
    if tt.ndim == 0:
        tt = tt.expand(B)
    if tuple(tt.shape) != (B,):
        raise ValueError(f"t must have shape ({B},) (one step per sample) or be a scalar, got {tuple(tt.shape)}")
    if B and (int(tt.min()) < 0 or int(tt.max()) >= num_steps):
        raise ValueError(f"t must be in 0..{num_steps - 1}, got values in {int(tt.min())}..{int(tt.max())}")
    return tt
