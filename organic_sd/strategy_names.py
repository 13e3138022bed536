"""Names of the search strategies, readable without torch (the command line's --strategy choices).

organic_sd/ola/strategies/__init__.py registers one strategy under each name and checks, on import,
that its registry and this list agree.
"""

STRATEGY_NAMES = ("trust", "trust-neuron", "snes", "snes-shared")
# `auto` is the strategy that won bench/ola_core.py (docs/BENCHMARKS.md).
AUTO = "snes"
CHOICES = ("auto", *STRATEGY_NAMES)  # what --strategy accepts
HELP = f"search strategy: {', '.join(CHOICES)} (auto: {AUTO})"
