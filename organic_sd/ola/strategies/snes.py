"""Per-row separable NES (SNES) with antithetic sampling and per-coordinate step sizes.

Each row (output neuron or hidden unit) is its own search distribution N(mean, sigma^2):
candidates are ranked within their row, so R searches over d numbers run side by side in
one tensor instead of one search over R*d numbers (Schaul et al. 2011, per row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from organic_sd.ola.strategies.shaping import nes_utilities


def textbook_lr_sigma(d: int) -> float:
    """SNES's step-size learning rate for d coordinates, (3 + ln d) / (5 sqrt d)."""
    return (3 + math.log(d)) / (5 * math.sqrt(d))


@dataclass(frozen=True)
class SNESState:
    mean: torch.Tensor  # (R, d)
    sigma: torch.Tensor  # (R, d)
    eps: torch.Tensor | None  # (P, R, d) the last standard-normal draws, antithetic
    generation: int
    generator: torch.Generator


class SNES:
    """Per-row SNES; `lr_sigma=None` takes the textbook (3 + ln d) / (5 sqrt d)."""

    per_row = True
    splittable = True  # ask draws the noise of every row and keeps its shard's rows
    shard = None  # a RowShard when this process searches only some rows (organic_sd.ola.distributed)

    def __init__(self, population: int, lr_mean: float = 1.0, lr_sigma: float | None = None):
        if population % 2:
            population += 1  # antithetic pairs
        self.population = population
        self.lr_mean = lr_mean
        self.lr_sigma = lr_sigma

    def init(self, mean: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator) -> SNESState:
        """Start every row at `mean (R, d)` with step size `sigma` (a number, or (R, d) per coordinate)."""
        step = torch.as_tensor(sigma, dtype=mean.dtype, device=mean.device).expand_as(mean).clone()
        return SNESState(mean.clone(), step, None, 0, generator)

    def ask(self, state: SNESState) -> tuple[SNESState, torch.Tensor]:
        """Draw P antithetic candidates per row -> theta (P, R, d)."""
        R, d = state.mean.shape
        if self.shard is None:
            half = torch.randn(self.population // 2, R, d, generator=state.generator, device=state.mean.device)
        else:
            # draw every row's noise, as one process would, and keep ours: the result does not depend on N
            full = torch.randn(self.population // 2, self.shard.total, d, generator=state.generator,
                               device=state.mean.device)
            half = full[:, self.shard.rows]
        eps = torch.cat([half, -half])  # (P, R, d)
        return replace(state, eps=eps), state.mean + state.sigma * eps

    def tell(self, state: SNESState, theta: torch.Tensor, loss: torch.Tensor) -> tuple[SNESState, dict]:
        """Move each row's mean and step sizes towards its better-ranked candidates."""
        d = state.mean.shape[1]
        lr_sigma = self.lr_sigma if self.lr_sigma is not None else textbook_lr_sigma(d)
        u = nes_utilities(loss)[..., None]  # (P, R, 1)
        eps = state.eps
        mean = state.mean + self.lr_mean * state.sigma * (u * eps).sum(0)
        sigma = state.sigma * torch.exp(0.5 * lr_sigma * (u * (eps.square() - 1)).sum(0))
        new = replace(state, mean=mean, sigma=sigma, generation=state.generation + 1)
        return new, {"sigma": sigma.mean()}  # a tensor: reading it here would sync the GPU every generation

    def fall_back(self, state: SNESState, rows: torch.Tensor, best: torch.Tensor) -> SNESState:
        """Restart the masked rows (R,) at their best-known point `best (R, d)` with half the step size.

        In high dimensions with small target weights, a mean step of sigma * sqrt(d) can
        be mostly noise and the mean drifts away faster than sigma adapts; the trainer
        notices on held-out data and sends those rows back, with smaller steps.
        """
        if not bool(rows.any()):
            return state
        m = rows[:, None]
        return replace(state, mean=torch.where(m, best, state.mean), sigma=torch.where(m, 0.5 * state.sigma, state.sigma))

    def candidates(self, state: SNESState) -> torch.Tensor:
        """The search means, (1, R, d): what the distribution believes in."""
        return state.mean[None]
