"""The research's trust rule, faithfully: trust follows each genome's own loss history.

Every tick each genome is scored on the batch. Its trust rises by `up` when its loss beats
its own previous loss by more than `epsilon`, and falls by `down` when it is worse by more
than `epsilon`. Genomes whose trust falls below `mutate_below` are replaced by a mutated
copy of a trusted genome (drawn from the `elite_fraction` with the highest trust, ties
broken by loss) and start again at `trust_init`, judged against their parent's loss. The
genome with the lowest loss is never replaced. Trust steers selection; it is not quality:
the trainer exports the genome with the best held-out loss.

With `per_row=True` the same rule runs per output neuron: each (genome, row) has its own
trust and loss, and rows are replaced independently.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from organic_sd.ola.strategies.shaping import sanitize


@dataclass(frozen=True)
class TrustState:
    theta: torch.Tensor  # (P, R, d)
    trust: torch.Tensor  # (P, Rt), Rt = R per row, else 1
    prev_loss: torch.Tensor  # (P, Rt)
    sigma: float  # absolute mutation scale
    generation: int
    generator: torch.Generator


class Trust:
    """The trust strategy; every constant of the rule is a constructor argument."""

    splittable = False  # whole-genome selection and replacement draws need every row in one process
    shard = None

    def __init__(self, population: int, per_row: bool = False, up: float = 0.01, down: float = 0.005,
                 epsilon: float = 1e-6, trust_init: float = 0.1, mutate_below: float = 0.1,
                 elite_fraction: float = 0.25, mutation: float = 0.1):
        self.population = population
        self.per_row = per_row
        self.up, self.down, self.epsilon = up, down, epsilon
        self.trust_init, self.mutate_below = trust_init, mutate_below
        self.elite_fraction = elite_fraction
        self.mutation = mutation  # mutation scale, as a fraction of the initial spread sigma

    def init(self, mean: torch.Tensor, sigma: float, generator: torch.Generator) -> TrustState:
        """P genomes scattered around `mean (R, d)` by one mutation (genome 0 is `mean` itself)."""
        P, (R, d) = self.population, mean.shape
        sigma = sigma * self.mutation
        noise = torch.randn(P, R, d, generator=generator, device=mean.device) * sigma
        noise[0] = 0
        Rt = R if self.per_row else 1
        trust = torch.full((P, Rt), self.trust_init, device=mean.device)
        prev = torch.full((P, Rt), float("inf"), device=mean.device)
        return TrustState(mean[None] + noise, trust, prev, sigma, 0, generator)

    def ask(self, state: TrustState) -> tuple[TrustState, torch.Tensor]:
        """The current genomes, (P, R, d)."""
        return state, state.theta

    def update_trust(self, state: TrustState, loss: torch.Tensor) -> torch.Tensor:
        """The trust rule's arithmetic: loss (P, Rt) against each genome's previous loss -> new trust."""
        better = loss < state.prev_loss - self.epsilon
        worse = loss > state.prev_loss + self.epsilon
        return state.trust + self.up * better - self.down * worse

    def tell(self, state: TrustState, theta: torch.Tensor, loss: torch.Tensor) -> tuple[TrustState, dict]:
        """Update trust from the new losses, then replace low-trust genomes by mutated trusted ones."""
        loss = sanitize(loss)
        if not self.per_row:
            loss = loss.sum(dim=1, keepdim=True)  # (P, 1): a genome is judged whole
        P, Rt = loss.shape
        trust = self.update_trust(state, loss)

        # Parents: the most trusted genomes (per row when per_row), loss breaking ties.
        n_elite = max(1, int(round(self.elite_fraction * P)))
        order = torch.argsort(trust - 1e-9 * loss.argsort(0).argsort(0), dim=0, descending=True)
        elite = order[:n_elite]  # (n_elite, Rt)
        pick = torch.randint(n_elite, (P, Rt), generator=state.generator, device=loss.device)
        parent = elite.gather(0, pick)  # (P, Rt)

        replace_mask = trust < self.mutate_below
        replace_mask[loss.argmin(dim=0), torch.arange(Rt, device=loss.device)] = False  # elitism
        R, d = theta.shape[1:]
        parent_full = parent.expand(P, R) if Rt == 1 else parent
        parents = theta.gather(0, parent_full[..., None].expand(P, R, d))
        mutants = parents + state.sigma * torch.randn(P, R, d, generator=state.generator, device=theta.device)
        mask = (replace_mask.expand(P, R) if Rt == 1 else replace_mask)[..., None]
        new_theta = torch.where(mask, mutants, theta)
        new_trust = torch.where(replace_mask, torch.full_like(trust, self.trust_init), trust)
        new_prev = torch.where(replace_mask, loss.gather(0, parent), loss)
        new = replace(state, theta=new_theta, trust=new_trust, prev_loss=new_prev, generation=state.generation + 1)
        return new, {"trust_best": trust.max(), "replaced": replace_mask.float().mean()}  # tensors: no sync

    def fall_back(self, state: TrustState, rows: torch.Tensor, best: torch.Tensor) -> TrustState:
        """Unchanged: the lowest-loss genome is never replaced, so the population cannot drift from it."""
        return state

    def candidates(self, state: TrustState) -> torch.Tensor:
        """All genomes, (P, R, d): the trainer picks by held-out loss, not by trust."""
        return state.theta
