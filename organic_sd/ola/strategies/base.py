"""The contract every search strategy keeps (evosax's init/ask/tell), written down once.

A strategy never sees data: the search loop (ola/search.py) asks it for candidates, scores them
on a batch, tells it the losses, and keeps the best candidate on held-out data itself.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Strategy(Protocol):
    """What ola/search.py and ola/distributed.py rely on; a new strategy is one file plus one STRATEGIES entry (and its name in organic_sd/strategy_names.py).

    State is an immutable dataclass of the strategy's own: every method returns a new one.
    """

    population: int  # P: candidates per generation (for per-row strategies, per row)
    # True: selection acts on each row (output neuron or hidden unit) on its own, so the held-out
    # search keeps the best candidate per row; False: on whole genomes (all rows together)
    per_row: bool
    # True: the rows may be searched on different ranks under torchrun. Each rank then searches the
    # rows of its `shard` (set by run_search before init) and must draw, from the shared generator,
    # exactly what one process would draw for all rows, keeping its own: results match one process.
    splittable: bool
    shard: Any  # a distributed.RowShard while searching only some rows; None otherwise

    def init(self, mean: torch.Tensor, sigma: float, generator: torch.Generator) -> Any:
        """Start a search around `mean (R, d)` with spread `sigma`; -> state."""
        ...

    def ask(self, state: Any) -> tuple[Any, torch.Tensor]:
        """-> (state, candidates theta (P, R, d)) to be scored: a tensor, or population.SharedCandidates standing
        for one (the search loop hands a loss the tensor unless the loss scores the shared form itself)."""
        ...

    def tell(self, state: Any, theta: torch.Tensor, loss: torch.Tensor) -> tuple[Any, dict]:
        """The batch losses (P, R) of `theta` -> (state, metrics): 0-d tensors, read only when shown."""
        ...

    def candidates(self, state: Any) -> torch.Tensor:
        """-> (K, R, d): what the search loop scores on held-out data to pick the result."""
        ...

    def fall_back(self, state: Any, rows: torch.Tensor, best: torch.Tensor) -> Any:
        """Rows (R,) bool whose held-out loss drifted clearly above their best: restart them at `best (R, d)`
        (more cautiously). A strategy whose search cannot drift away returns `state` unchanged."""
        ...
