"""The search loop shared by every OLA fit: ask, score on a batch, tell, keep the best on held-out data."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm.auto import tqdm

from organic_sd import dist
from organic_sd.ola.population import dense
from organic_sd.ola.strategies.base import Strategy


@dataclass
class Budget:
    """A wall-clock and/or generation allowance; whichever runs out first ends the search.

    A share is at least one generation, so a cascade of many searches can run a few generations
    past a very small generation budget.
    """

    seconds: float | None = None
    generations: int | None = None
    start: float = field(default_factory=time.perf_counter)
    used: int = 0  # generations spent, by this budget and its shares
    parent: "Budget | None" = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def done(self, generation: int) -> bool:
        """True once either limit is reached."""
        if self.generations is not None and self.used + generation >= self.generations:
            return True
        return self.seconds is not None and self.elapsed() >= self.seconds

    def share(self, fraction: float) -> "Budget":
        """A sub-budget starting now: `fraction` of what is left (at least one generation)."""
        secs = None if self.seconds is None else max(0.0, self.seconds - self.elapsed()) * fraction
        gens = None if self.generations is None else max(1, round((self.generations - self.used) * fraction))
        return Budget(secs, gens, parent=self)

    def spend(self, generations: int) -> None:
        """Record generations spent here and in every budget this one is a share of."""
        b = self
        while b is not None:
            b.used += generations
            b = b.parent


@dataclass
class SearchResult:
    theta: torch.Tensor  # (R, d) best candidate per row (or the best whole genome)
    val_loss: torch.Tensor  # (R,) its held-out loss per row
    generations: int
    seconds: float
    curve: list[tuple[float, int, float]]  # (seconds, generation, summed held-out loss)
    step: torch.Tensor | None = None  # (R, d) the strategy's last per-coordinate step sizes, where it has them


def run_search(
    strategy: Strategy,
    batch_loss: Callable[[torch.Tensor], torch.Tensor],
    val_loss: Callable[[torch.Tensor], torch.Tensor],
    mean0: torch.Tensor,
    sigma0: float | torch.Tensor,
    budget: Budget,
    generator: torch.Generator,
    eval_every: int = 25,
    fallback_tolerance: float = 0.05,
    progress: bool = False,
    desc: str = "evolve",
    shard=None,
    keep_step: bool = False,
    shared_loss: bool = False,
) -> SearchResult:
    """Evolve rows starting at `mean0 (R, d)` with step `sigma0` (a number or (R, d)) until the budget is spent.

    `batch_loss(theta (P, R, d)) -> (P, R)` scores candidates on a fresh training batch;
    `val_loss(theta (K, R, d)) -> (K, R)` on held-out data. The result keeps, per row for
    per-row strategies or per genome otherwise, the candidate with the lowest held-out loss
    seen at any evaluation: loss, not trust, decides what is exported.

    With a `shard` (organic_sd.ola.distributed.RowShard) this rank evolves only the rows
    `shard.rows` of `mean0`, the losses score those rows alone, and every rank returns all
    rows gathered. `keep_step`: also return the strategy's last step sizes (SearchResult.step) for a later
    search to resume from (gathered over ranks only then). `shared_loss`: `batch_loss` takes a strategy's
    SharedCandidates as they are (losses through population.squash do, in two thin products); otherwise it gets
    them as a (P, R, d) tensor.
    """
    if shard is not None:
        mean0 = mean0[shard.rows]
        if torch.is_tensor(sigma0):
            sigma0 = sigma0[shard.rows]
        strategy.shard = shard
    best_theta = mean0.clone()
    best_val = val_loss(mean0[None])[0]  # (R,)
    curve = [(budget.elapsed(), 0, float(best_val.sum()))]
    state = strategy.init(mean0, sigma0, generator)
    gen = 0
    bar = tqdm(desc=desc, disable=not progress or not dist.is_main(), unit="gen", leave=False)
    while not budget.done(gen):
        state, theta = strategy.ask(state)
        state, metrics = strategy.tell(state, theta, batch_loss(theta if shared_loss else dense(theta)))
        gen += 1
        bar.update(1)
        if gen % eval_every == 0 or budget.done(gen):
            best_theta, best_val, cand_val = _keep_best(strategy, state, val_loss, best_theta, best_val)
            # rows whose search wandered off (held-out loss clearly above their best) restart there, calmer
            state = strategy.fall_back(state, drifted(cand_val, best_val, fallback_tolerance), best_theta)
            curve.append((budget.elapsed(), gen, float(best_val.sum())))
            bar.set_postfix(val=f"{curve[-1][2]:.4g}", **{k: f"{float(v):.3g}" for k, v in metrics.items()})
    bar.close()
    budget.spend(gen)
    step = getattr(state, "sigma", None) if keep_step else None
    step = step if torch.is_tensor(step) and step.shape == best_theta.shape else None
    if shard is not None:
        best_theta, best_val, curve = shard.gather(best_theta), shard.gather(best_val), shard.gather_curve(curve)
        step = None if step is None else shard.gather(step)
    return SearchResult(best_theta, best_val, gen, budget.elapsed(), curve, step)


def drifted(cand_val: torch.Tensor, best_val: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Rows whose current held-out loss is worse than their best by more than `tolerance` of its size.

    Relative to |best|, because some objectives (a unit's explained energy) are negative.
    """
    return cand_val > best_val + tolerance * best_val.abs() + 1e-12


def _keep_best(strategy, state, val_loss, best_theta, best_val):
    """Score the strategy's candidates on held-out data and keep whichever beats the best so far.

    Returns the new best rows, their held-out losses, and the current candidates' losses.
    """
    cand = strategy.candidates(state)  # (K, R, d)
    vl = torch.nan_to_num(val_loss(cand), nan=float("inf"))  # (K, R)
    if strategy.per_row:
        k = vl.argmin(dim=0)  # (R,)
        rows = torch.arange(cand.shape[1], device=cand.device)
        cand_best, cand_val = cand[k, rows], vl[k, rows]
        better = cand_val < best_val
        return torch.where(better[:, None], cand_best, best_theta), torch.where(better, cand_val, best_val), cand_val
    k = int(vl.sum(dim=1).argmin())
    if vl[k].sum() < best_val.sum():
        return cand[k].clone(), vl[k], vl[k]
    return best_theta, best_val, vl[k]
