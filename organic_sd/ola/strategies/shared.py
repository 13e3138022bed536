"""Per-row SNES whose candidates share their directions: one GEMM for the whole population (low-rank moves).

Row r's candidates are mean_r + step_r * (scale * eps_p): the P directions eps_p (and a per-coordinate scale shared
by every row) are the same for all R rows, each row has its own mean and its own step. A row's pre-activations
on a batch z (B, d) are then z @ mean_r + step_r * (z @ (scale * eps_p)): two products of B x d by R or P numbers,
where independent directions need P x B x d x R (the losses' largest cost on the CPU: 45% of the carried rounds'
time in a profile of `two`; docs/BENCHMARKS.md). Rows are still ranked and moved on their own; what they give up is a
per-row, per-coordinate step (SNES's), kept here as one step per row times the shared scale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from organic_sd.ola.population import SharedCandidates
from organic_sd.ola.strategies.shaping import nes_utilities
from organic_sd.ola.strategies.snes import textbook_lr_sigma


@dataclass(frozen=True)
class SharedState:
    mean: torch.Tensor  # (R, d)
    step: torch.Tensor  # (R,) each row's step
    scale: torch.Tensor  # (d,) shared per-coordinate scale, geometric mean 1
    eps: torch.Tensor | None  # (P, d) the last standard-normal draws, antithetic
    generation: int
    generator: torch.Generator

    @property
    def sigma(self) -> torch.Tensor:
        """(R, d) the per-coordinate steps this state stands for (what a later search resumes from)."""
        return self.step[:, None] * self.scale[None, :]


class SharedSNES:
    """Per-row SNES over shared directions; `lr_sigma=None` takes SNES's (3 + ln d) / (5 sqrt d)."""

    per_row = True
    splittable = False  # the shared draw is cheap: every rank searches every row
    shard = None

    def __init__(self, population: int, lr_mean: float = 1.0, lr_sigma: float | None = None):
        self.population = population + population % 2  # antithetic pairs
        self.lr_mean = lr_mean
        self.lr_sigma = lr_sigma

    def init(self, mean: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator) -> SharedState:
        """Start at `mean (R, d)` with `sigma`: a number, or (R, d) per coordinate (split into row step x scale)."""
        sigma = torch.as_tensor(sigma, dtype=mean.dtype, device=mean.device).expand_as(mean)
        log = sigma.clamp_min(1e-30).log()
        row = log.mean(1)  # (R,)
        scale = (log - row[:, None]).mean(0)  # (d,), mean 0 in log
        return SharedState(mean.clone(), row.exp(), scale.exp(), None, 0, generator)

    def ask(self, state: SharedState) -> tuple[SharedState, SharedCandidates]:
        """Draw P / 2 antithetic pairs of directions, shared by every row."""
        d = state.mean.shape[1]
        half = torch.randn(self.population // 2, d, generator=state.generator, device=state.mean.device)
        eps = torch.cat([half, -half])  # (P, d)
        return replace(state, eps=eps), SharedCandidates(state.mean, state.step, eps * state.scale)

    def tell(self, state: SharedState, theta: SharedCandidates, loss: torch.Tensor) -> tuple[SharedState, dict]:
        """Move each row's mean and step towards its better-ranked candidates; the scale towards all rows' better."""
        R, d = state.mean.shape
        lr_sigma = self.lr_sigma if self.lr_sigma is not None else textbook_lr_sigma(d)
        u = nes_utilities(loss)  # (P, R)
        eps = state.eps
        mean = state.mean + self.lr_mean * state.sigma * (u.T @ eps)
        sq = eps.square() - 1  # (P, d)
        step = state.step * torch.exp(0.5 * lr_sigma * (u.T @ sq).mean(1))  # the coordinates' SNES moves, averaged
        log_scale = state.scale.log() + 0.5 * lr_sigma * (u.sum(1) @ sq) / R  # and averaged over the rows
        scale = (log_scale - log_scale.mean()).exp()
        new = replace(state, mean=mean, step=step, scale=scale, generation=state.generation + 1)
        return new, {"sigma": step.mean()}

    def fall_back(self, state: SharedState, rows: torch.Tensor, best: torch.Tensor) -> SharedState:
        """Restart the masked rows (R,) at `best (R, d)` with half their step (as SNES does)."""
        if not bool(rows.any()):
            return state
        return replace(state, mean=torch.where(rows[:, None], best, state.mean),
                       step=torch.where(rows, 0.5 * state.step, state.step))

    def candidates(self, state: SharedState) -> torch.Tensor:
        """The search means, (1, R, d)."""
        return state.mean[None]
