"""OLA: populations of affine+tanh genomes trained by evolution, never by gradients.

    from organic_sd import ola
    m = ola.fit(x, y, hidden=(), strategy="auto")   # x (N, in), y (N, out)
    y_hat = m(x); m.save("run/enc"); m2 = ola.load("run/enc")
"""

from organic_sd.ola.cascade import UNITS_PER_ROUND
from organic_sd.ola.fit import BudgetWarning, FitDidNotLearn, FitInterrupted, NoProgressWarning, fit, grown_part_of
from organic_sd.ola.module import OLAConfig, OLAModule, load
from organic_sd.ola.population import Subspace, Whitener, affine
from organic_sd.ola.refine import Refine
from organic_sd.ola.search import Budget, run_search
from organic_sd.ola.strategies import STRATEGIES, Strategy, make_strategy

__all__ = ["fit", "FitInterrupted", "BudgetWarning", "FitDidNotLearn", "NoProgressWarning", "load", "OLAModule", "OLAConfig",
           "Subspace", "Refine", "STRATEGIES", "Strategy", "make_strategy", "grown_part_of", "UNITS_PER_ROUND",
           "Budget", "run_search", "Whitener", "affine"]
