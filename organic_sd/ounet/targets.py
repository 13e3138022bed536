"""What an O-UNet's stacks predict: eps, x0 or v, and the conversions between them at a noise level.

With x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, for a fixed x_t an error d in the predicted quantity is
    eps  d                  in eps,   sqrt((1 - ab) / ab) d  in x0
    x0   sqrt(ab / (1 - ab)) d in eps,  d                      in x0
    v    sqrt(ab) d          in eps,   sqrt(1 - ab) d         in x0      (v = sqrt(ab) eps - sqrt(1 - ab) x0)
so fitting eps weighs the high-noise steps, where DDIM's x0 estimate picks the digit, least; v keeps
both errors at most d (its squared error is eps's weighted by 1 / ab).
"""

from __future__ import annotations

import torch

TARGETS = ("eps", "x0", "v")


def _levels(ab: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) alpha-bar -> sqrt(ab), sqrt(1 - ab) shaped to broadcast over `like` (B, ...)."""
    shape = (-1,) + (1,) * (like.ndim - 1)
    ab = ab.to(like.device, like.dtype).reshape(shape)
    return ab.sqrt(), (1 - ab).sqrt()


def from_eps(target: str, eps: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """The teacher's eps (B, ...) at x_t (B, ...) and alpha-bar ab (B,) -> the same prediction as `target`."""
    s, n = _levels(ab, x_t)
    if target == "eps":
        return eps
    if target == "x0":
        return (x_t - n * eps) / s
    if target == "v":
        return (eps - n * x_t) / s
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def to_eps(target: str, pred: torch.Tensor, x_t: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
    """A prediction of `target` (B, ...) at x_t, ab (B,) -> the eps it stands for."""
    s, n = _levels(ab, x_t)
    if target == "eps":
        return pred
    if target == "x0":
        return (x_t - s * pred) / n
    if target == "v":
        return s * pred + n * x_t
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
