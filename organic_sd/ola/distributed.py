"""Evolution on many processes: each rank searches a contiguous slice of the rows, then all ranks gather them.

Rows (output neurons, cascade units) of a per-row strategy are independent searches, so
splitting them across ranks needs one gather per search and nothing per generation. The
result does not depend on the number of ranks because every rank draws exactly the random
numbers one process would (the full noise tensor, the same batch indices from the same
seeded generator) and keeps only its rows' share; whitening is computed from the full
data on every rank, and held-out selection and fall-back act on each row alone.

Only strategies with a `shard` attribute (SNES) split. Whole-genome strategies (`trust`)
select on the loss summed over all rows, which would need an all_reduce every generation;
they, and per-row `trust-neuron`, run unsplit and identically on every rank instead, as do
deflated cascade rounds (Subspace.deflate), where each unit's loss needs the round's earlier units.
Generation budgets give the same module at any N; a time budget does not, since the number
of generations then depends on each rank's speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from organic_sd import dist


@dataclass(frozen=True)
class RowShard:
    """This rank's rows `rows` of `total`, out of `world` ranks holding contiguous slices in rank order."""

    rows: slice
    total: int
    world: int

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """This rank's (r, ...) rows -> all (total, ...) rows in row order, on every rank."""
        parts = dist.all_gather_object(local.detach().cpu())
        return torch.cat(parts).to(local.device)

    def gather_curve(self, curve: list) -> list:
        """Per-rank curves of (seconds, generation, summed loss) -> rank 0's points with losses summed over ranks."""
        curves = dist.all_gather_object(curve)
        n = min(len(c) for c in curves)  # equal under a generation budget; a time budget may differ by a point
        return [(s, g, sum(c[i][2] for c in curves)) for i, (s, g, _) in enumerate(curves[0][:n])]


def shard_rows(strategy, total: int) -> RowShard | None:
    """This rank's RowShard of `total` rows when running on several ranks with a splittable strategy, else None."""
    world = dist.world_size()
    if world == 1 or not strategy.splittable or total < world:
        return None
    r = dist.rank()
    return RowShard(slice(r * total // world, (r + 1) * total // world), total, world)
