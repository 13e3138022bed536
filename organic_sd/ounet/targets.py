"""What an O-UNet's stacks predict: eps, x0 or v, and the conversions between them at a noise level.

With x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, for a fixed x_t an error d in the predicted quantity is
    eps  d                  in eps,   sqrt((1 - ab) / ab) d  in x0
    x0   sqrt(ab / (1 - ab)) d in eps,  d                      in x0
    v    sqrt(ab) d          in eps,   sqrt(1 - ab) d         in x0      (v = sqrt(ab) eps - sqrt(1 - ab) x0)
so fitting eps weighs the high-noise steps, where DDIM's x0 estimate picks the digit, least; v keeps
both errors at most d (its squared error is eps's weighted by 1 / ab).

What reaches the sample is the error of the DDIM update x_t -> x_t'. Writing sqrt(ab) = cos(th), an error d
moves x_t' by d sin(th - th') / cos(th) (eps), d sin(th - th') (v) or d sin(th - th') / sin(th) (x0):
`update_weight` is that factor squared. A uniform fit of v spends most of its error on the top steps,
where the teacher's own x0 is noise (std 3 at t = 1000) and a step moves x_t by 1/25 of the last step's
angle; weighting rows by what reaches x_t' spends it where the strokes are drawn.
"""

from __future__ import annotations

import numpy as np
import torch

from organic_sd.ounet.config import T_WEIGHTS  # how rows are weighted by their noise level (update_weight)

X0_HEADROOM = 1.05  # an x0 map's out_scale: this times the pixel range's largest magnitude

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


def update_weight(target: str, schedule: torch.Tensor, t: torch.Tensor, steps: int) -> torch.Tensor:
    """(B,) steps t -> (B,) the squared factor by which an error in `target` at t moves x_t' in one update of a
    `steps`-step DDIM path (t' = t - T / steps; past 0 the update lands on the clean sample, ab' = 1)."""
    schedule = torch.as_tensor(schedule, dtype=torch.float64).cpu()
    T = schedule.numel()
    t = torch.as_tensor(t).long().cpu()
    nxt = t - T // steps
    ab = schedule[t]
    ab_next = torch.where(nxt >= 0, schedule[nxt.clamp(min=0)], torch.ones_like(ab))
    th, th_next = torch.arccos(ab.sqrt()), torch.arccos(ab_next.clamp(max=1).sqrt())
    w = torch.sin(th - th_next).square()
    if target == "eps":
        return (w / ab).float()
    if target == "x0":
        return (w / (1 - ab).clamp(min=1e-12)).float()
    if target == "v":
        return w.float()
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def record_weights(t_weight: str, target: str, schedule: torch.Tensor, t, steps: int) -> np.ndarray | None:
    """Records' steps t (B,) -> their probabilities (B,) float64 summing to 1 under `t_weight` "update"; None
    for "uniform"."""
    if t_weight == "uniform":
        return None
    if t_weight != "update":
        raise ValueError(f"t_weight must be one of {T_WEIGHTS}, got {t_weight!r}")
    w = update_weight(target, schedule, torch.as_tensor(np.asarray(t)).round().long(), steps).double()
    return (w / w.sum()).numpy()


def draw_records(rng: np.random.Generator, pool: np.ndarray, n: int, p: np.ndarray | None) -> np.ndarray:
    """At most n records of pool, without replacement, with probabilities p (None: uniformly), sorted (sequential
    shard reads); records of probability 0 are never drawn."""
    n = min(len(pool) if p is None else int(np.count_nonzero(p)), n)
    return np.sort(rng.choice(pool, n, replace=False, p=p))
