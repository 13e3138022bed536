"""Search strategies over a population of rows, in evosax's init/ask/tell style (the contract: base.Strategy).

A strategy never sees data: `ask(state) -> theta (P, R, d)` proposes candidates,
the trainer measures their loss `(P, R)`, and `tell(state, theta, loss)` returns the new
state and a dict of metrics (0-d tensors, read only when shown, so the GPU is not
synchronised every generation). `candidates(state) -> (K, R, d)` are what the trainer scores
on held-out data to pick the module it exports.
"""

from __future__ import annotations

from organic_sd.ola.strategies.base import Strategy
from organic_sd.ola.strategies.shared import SharedSNES
from organic_sd.ola.strategies.snes import SNES
from organic_sd.ola.strategies.trust import Trust
from organic_sd.strategy_names import AUTO, STRATEGY_NAMES

STRATEGIES = {
    "trust": lambda population: Trust(population, per_row=False),
    "trust-neuron": lambda population: Trust(population, per_row=True),
    "snes": lambda population: SNES(population),
    "snes-shared": lambda population: SharedSNES(population),
}
if tuple(STRATEGIES) != STRATEGY_NAMES:  # the command line offers the names of organic_sd/strategy_names.py
    raise ImportError(f"strategy registry {list(STRATEGIES)} and organic_sd/strategy_names.py "
                      f"{list(STRATEGY_NAMES)} differ")


def make_strategy(name: str, population: int):
    """The strategy registered under `name` ('auto' picks the benchmark winner)."""
    if name == "auto":
        name = AUTO
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {['auto', *STRATEGIES]}")
    if population < 2:
        raise ValueError(f"population must be at least 2, got {population}")
    return STRATEGIES[name](population)


__all__ = ["STRATEGIES", "AUTO", "make_strategy", "Strategy", "SNES", "SharedSNES", "Trust"]
