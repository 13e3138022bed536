"""bench/peers.py: the batched net is the OLAModule, and the engine and Adam rows beat predicting zero."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import peers  # noqa: E402
from problems import linear_tanh, two_layer  # noqa: E402


def tiny_case(name="two"):
    """A 16 -> 8 -> 8 teacher (or 16 -> 8 linear) and its student: small enough for a few seconds."""
    p = two_layer(16, 8, 8, n=1_500, n_test=500, noise=0.02) if name == "two" else \
        linear_tanh(16, 8, n=1_500, n_test=500, noise=0.02)
    x, y, xv, yv = peers._split_val(p.x, p.y, seed=0)
    return peers.Case(name, p.name, x, y, xv, yv, p.x_test, p.y_test, (8,) if name == "two" else (), 1.0, p.floor,
                      "noise floor")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_batched_net_is_the_ola_module():
    case = tiny_case()
    net = peers.Net(case.x.shape[1], (8, 4), case.y.shape[1], 1.5)
    theta = torch.randn(3, net.dim) * 0.1  # (P, D)
    mean, std, (xs, _, _) = case.standardised()
    out = net.forward(theta, xs[:50])  # (P, B, out)
    assert out.shape == (3, 50, case.y.shape[1])
    for p in range(3):
        m = net.to_module(theta[p], mean, std)
        assert m.num_parameters() == net.dim
        torch.testing.assert_close(m(case.x[:50]), out[p], rtol=1e-4, atol=1e-5)


def test_the_net_without_the_skip_is_the_ola_module_with_zero_input_columns():
    case = tiny_case()
    net = peers.Net(case.x.shape[1], (8,), case.y.shape[1], 1.5, skip=False)
    assert net.dim == 8 * 17 + case.y.shape[1] * 9  # the hidden layer, then a readout over the 8 units only
    theta = torch.randn(2, net.dim) * 0.3
    mean, std, (xs, _, _) = case.standardised()
    out = net.forward(theta, xs[:50])
    for p in range(2):
        m = net.to_module(theta[p], mean, std)
        assert not m.readout.weight[:, :case.x.shape[1]].any()
        torch.testing.assert_close(m(case.x[:50]), out[p], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", ["ola-carry", "adam"])
def test_without_the_skip_the_engine_and_adam_fit_the_plain_net(method):
    row = peers.run_method(method, tiny_case(), seconds=None, generations=120, seed=0, batch=256, skip=False)
    assert row["status"] == "ok" and row["skip"] is False and row["ratio"] < 0.5 * row["zero_ratio"]
    assert row["params"] == 8 * 17 + 8 * 9
    if method == "ola-carry":
        assert row["refine"]["readout_inputs"] is False


def test_without_the_skip_the_cascade_methods_refuse():
    with pytest.raises(ValueError, match="readout over the inputs"):
        peers.run_method("ola", tiny_case(), seconds=None, generations=10, seed=0, skip=False)


@pytest.mark.parametrize("method,generations", [("ola", 60), ("ola-random", 120), ("adam", 150)])
def test_method_beats_predicting_zero(method, generations):
    case = tiny_case()
    row = peers.run_method(method, case, seconds=None, generations=generations, seed=0, batch=256)
    assert row["status"] == "ok" and row["generations"] > 0
    assert math.isfinite(row["ratio"]) and row["ratio"] < 0.5 * row["zero_ratio"]
    assert row["curve"] and all(len(pt) == 2 and math.isfinite(pt[1]) for pt in row["curve"])
    assert row["curve"][-1][1] <= row["curve"][0][1]  # best-so-far never rises


@pytest.mark.parametrize("method,package", [("snes", "evotorch"), ("cem", "evotorch"), ("sepcma", "cma")])
def test_optional_peer(method, package):
    pytest.importorskip(package)
    case = tiny_case("linear")
    row = peers.run_method(method, case, seconds=None, generations=20, seed=0, batch=256)
    assert row["status"] == "ok" and row["ratio"] < row["zero_ratio"]


def test_missing_peer_is_skipped(monkeypatch):
    monkeypatch.setitem(sys.modules, "nevergrad", None)  # import fails as if not installed
    row = peers.run_method("ngopt", tiny_case("linear"), seconds=None, generations=1)
    assert row["status"] == "skipped (pip install nevergrad)"


def test_the_decoder_problem_draws_train_rows_and_held_out_test_rows_from_a_store(tmp_path):
    from argparse import Namespace

    from conftest import make_store

    store = make_store(tmp_path)
    case = peers.make_case("decoder", Namespace(store=str(store), decoder_window=3, decoder_hidden=4, rows=400, seed=0,
                                                noise=0.02))
    assert case.hidden == (4,) and case.x.shape[1] == case.x_test.shape[1] == case.x_val.shape[1]
    assert case.y.shape[1] == case.y_test.shape[1] == 3 * 8 * 8 and len(case.x) + len(case.x_val) <= 400
    assert case.scale == pytest.approx(float((case.y_test - case.y_test.mean(0)).square().mean()))
    row = peers.run_method("ola", case, seconds=None, generations=40, seed=0)
    assert row["status"] == "ok" and row["ratio"] < 1.0  # the engine beats predicting each pixel's mean


@pytest.mark.parametrize("choice,expected", [(None, "snes-shared"), ("fit", None), ("trust-neuron", "trust-neuron")])
def test_the_refinements_strategy_is_chosen_and_recorded(choice, expected):
    row = peers.run_method("ola-carry", tiny_case(), seconds=None, generations=60, seed=0, batch=256,
                           refine_strategy=choice)
    assert row["status"] == "ok" and row["refine"]["strategy"] == expected
