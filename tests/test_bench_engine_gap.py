"""bench/engine_gap.py: its references start from the engine's own units, and each one learns."""

import argparse
import sys
from pathlib import Path

import torch

from organic_sd import ola

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import peers  # noqa: E402
from engine_gap import UNITS, run_jacobi, run_optimizer, start_units  # noqa: E402


def small_case():
    return peers.make_case("two", argparse.Namespace(rows=2_000, noise=0.02, seed=3, store=None))


def test_the_start_is_the_units_the_engine_draws():
    case = small_case()
    w, b = start_units(case)
    # a fit with one generation spends it on the readout over its random units: they are exported unmoved
    m = ola.fit(case.x, case.y, hidden=(UNITS,), generations=1, x_val=case.x_val, y_val=case.y_val,
                refine=ola.Refine.measured(0.9, "random"), seed=0)
    torch.testing.assert_close(m.hidden[0].weight, w)
    torch.testing.assert_close(m.hidden[0].bias, b)


def test_each_reference_improves_on_predicting_zero():
    case = small_case()
    zero = float(case.y_test.square().mean()) / case.scale
    track, extra = run_jacobi(case, 0.5, mu=1.0)
    assert extra["rounds"] >= 1 and track.test < 0.5 * zero
    with torch.enable_grad():
        track, extra = run_optimizer(case, 0.5, "sgd", 3.0, seed=0)
    assert extra["steps"] > 0 and track.test < 0.5 * zero
    assert [t for t, _ in track.curve] == sorted(t for t, _ in track.curve)
