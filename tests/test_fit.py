"""ola.fit: quality on problems with a known optimum, determinism, bad input, no autograd."""

import time
import warnings

import numpy as np
import pytest
import torch

from organic_sd import ola
from organic_sd.ola import cascade
from organic_sd.ola.strategies import SNES


def _linear_tanh(n=3000, n_in=8, n_out=4, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g) @ torch.randn(n_in, n_in, generator=g)  # correlated inputs
    w = torch.randn(n_out, n_in, generator=g) / n_in
    clean = torch.tanh(x @ w.T + 0.2)
    return x, clean + noise * torch.randn(clean.shape, generator=g), noise ** 2


def test_fit_reaches_the_noise_floor_of_a_linear_tanh_teacher():
    x, y, floor = _linear_tanh()
    m = ola.fit(x[:2500], y[:2500], generations=400, x_val=x[2500:], y_val=y[2500:])
    mse = float((m(x[2500:]) - y[2500:]).square().mean())
    assert mse < 1.3 * floor
    assert m.training_summary["generations"] == 400


def test_hidden_units_learn_what_one_layer_cannot():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 2, generator=g) * 4 - 2
    y = torch.tanh(x[:, :1] * x[:, 1:])  # a product: no single tanh of a linear map fits it
    flat = ola.fit(x, y, generations=300)
    deep = ola.fit(x, y, hidden=(8,), generations=600)
    xt = torch.rand(2000, 2, generator=g) * 4 - 2
    yt = torch.tanh(xt[:, :1] * xt[:, 1:])
    assert deep.config.hidden == (8,) and deep.hidden[0].weight.shape == (8, 2)
    assert (deep(xt) - yt).square().mean() < 0.5 * (flat(xt) - yt).square().mean()


def test_hidden_units_stay_off_the_flat_tails_of_tanh():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 6, generator=g) @ torch.randn(6, 6, generator=g)
    y = torch.sign(x[:, :1] * x[:, 1:2]) * 0.8  # a step target pulls unbounded units into saturation
    m = ola.fit(x, y, hidden=(16,), generations=300)
    pre = x @ m.hidden[0].weight.T + m.hidden[0].bias  # (N, 16) units' pre-activations
    assert float(pre.std(dim=0).max()) <= 1.05 * cascade.UNIT_SPREAD  # whitening's ridge leaves a hair of slack


def test_a_wider_spread_lets_units_sharpen_up_to_its_bound():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 6, generator=g) @ torch.randn(6, 6, generator=g)
    y = torch.sign(x[:, :1] * x[:, 1:2]) * 0.8
    m = ola.fit(x, y, hidden=(16,), generations=300, subspace=ola.Subspace(spread=3.0))
    pre = (x @ m.hidden[0].weight.T + m.hidden[0].bias).std(dim=0)  # (16,) units' pre-activation spreads
    assert float(pre.max()) <= 1.05 * 3.0
    assert float(pre.max()) > 1.1 * cascade.UNIT_SPREAD  # the step target pulls some unit past the default bound
    assert m.training_summary["subspace"]["spread"] == 3.0
    with pytest.raises(ValueError, match="spread"):
        ola.Subspace(spread=0.0)


def test_bounded_scales_only_rows_past_the_bound():
    theta = torch.tensor([[[3.0, 4.0, 7.0], [0.3, 0.4, -1.0]]])  # (P=1, R=2, in+1): weight norms 5 and 0.5
    out = cascade.bounded(theta)
    assert torch.allclose(out[0, 0], torch.tensor([3.0, 4.0, 0.0]) * cascade.UNIT_SPREAD / 5 + torch.tensor([0, 0, 7.0]))
    assert torch.equal(out[0, 1], theta[0, 1])  # within the bound: untouched, bias always untouched


@pytest.mark.parametrize("per_round, sizes", [(3, [3, 3, 1]), (None, None)])
def test_units_grow_in_rounds_of_the_asked_size(monkeypatch, per_round, sizes):
    grown = []
    real = cascade._evolve_units

    def spy(*args, n_units, **kw):
        grown.append(n_units)
        return real(*args, n_units=n_units, **kw)

    monkeypatch.setattr(cascade, "_evolve_units", spy)
    x = torch.randn(500, 4)
    kw = {} if per_round is None else {"units_per_round": per_round}
    m = ola.fit(x, torch.tanh(x[:, :2] * x[:, 2:]), hidden=(7,), generations=60, **kw)
    default = cascade.UNITS_PER_ROUND
    assert grown == (sizes or [min(default, 7 - s) for s in range(0, 7, default)])
    assert m.training_summary["units_per_round"] == (per_round or default)


def test_ctrl_c_while_growing_keeps_the_rounds_grown_and_init_grows_the_rest(monkeypatch):
    real, calls = cascade._evolve_units, []

    def stop_in_third_round(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(cascade, "_evolve_units", stop_in_third_round)
    x = torch.randn(600, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tanh(x[:, :2] * x[:, 2:])
    with pytest.raises(KeyboardInterrupt) as stop:  # still a KeyboardInterrupt to callers that do not look
        ola.fit(x, y, hidden=(10,), units_per_round=4, generations=80)
    assert isinstance(stop.value, ola.FitInterrupted)
    part = stop.value.module
    assert part.config.hidden == (8,)  # two whole rounds, and a readout over them
    assert float((part(x) - y).square().mean()) < float(y.square().mean())
    with pytest.raises(ValueError, match="hidden"):
        ola.fit(x, y, hidden=(6,), generations=5, init=part)  # more units than asked: not a grown part of it
    monkeypatch.setattr(cascade, "_evolve_units", real)
    full = ola.fit(x, y, hidden=(10,), units_per_round=4, generations=80, init=part, seed=1)
    assert full.config.hidden == (10,) and torch.equal(full.hidden[0].weight[:8], part.hidden[0].weight)


def test_ctrl_c_in_the_first_round_keeps_the_linear_readout_and_init_grows_every_unit(monkeypatch):
    real = cascade._evolve_units

    def stop_at_once(*a, **kw):
        raise KeyboardInterrupt  # Ctrl-C while the first round of units is searched

    monkeypatch.setattr(cascade, "_evolve_units", stop_at_once)
    x = torch.randn(600, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tanh(x[:, :2] * x[:, 2:])
    with pytest.raises(ola.FitInterrupted) as stop:
        ola.fit(x, y, hidden=(6,), units_per_round=4, generations=40)
    part = stop.value.module
    assert part.config.hidden == ()  # no unit yet: the readout fitted before the first round
    assert ola.grown_part_of((), (6,)) and not ola.grown_part_of((), ())
    monkeypatch.setattr(cascade, "_evolve_units", real)
    full = ola.fit(x, y, hidden=(6,), units_per_round=4, generations=40, init=part, seed=1)
    assert full.config.hidden == (6,)


def test_a_time_budget_stops_growing_instead_of_setting_up_rounds_it_cannot_search(monkeypatch):
    real = cascade._evolve_units

    def slow_round(*a, **kw):
        time.sleep(0.3)  # a round's setup on big inputs: seconds, whatever its share of the budget
        return real(*a, **kw)

    monkeypatch.setattr(cascade, "_evolve_units", slow_round)
    x = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tanh(x[:, :2] - x[:, 2:])  # the readout learns it: a fit this short must not look like it learned nothing
    t0 = time.perf_counter()
    with pytest.warns(ola.BudgetWarning, match="pass this module as init"):
        m = ola.fit(x, y, hidden=(40,), units_per_round=1, max_seconds=1.0)
    assert time.perf_counter() - t0 < 3.0  # before: all 40 rounds set up, 12 s and more
    assert 0 < sum(m.config.hidden) < 40 and ola.grown_part_of(m.config.hidden, (40,))


def test_hidden_units_search_only_the_principal_subspace_of_redundant_inputs():
    g = torch.Generator().manual_seed(0)
    lat = torch.rand(4000, 2, generator=g) * 4 - 2
    mix, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    # 12 inputs that are 2 numbers plus faint noise in 10 other directions (like redundant pixels)
    x = torch.cat([lat, 1e-3 * torch.randn(4000, 10, generator=g)], 1) @ mix.T
    y = torch.tanh(lat[:, :1] * lat[:, 1:])
    m = ola.fit(x, y, hidden=(8,), generations=600, subspace=ola.Subspace(units=0.99))
    w = m.hidden[0].weight  # (8, 12) raw input weights of the units
    noise_dirs = mix[:, 2:]  # (12, 10)
    assert (w @ noise_dirs).norm() < 1e-3 * (w @ mix[:, :2]).norm()  # nothing searched where only noise lives
    xt_lat = torch.rand(2000, 2, generator=g) * 4 - 2
    xt = torch.cat([xt_lat, 1e-3 * torch.randn(2000, 10, generator=g)], 1) @ mix.T
    yt = torch.tanh(xt_lat[:, :1] * xt_lat[:, 1:])
    assert float((m(xt) - yt).square().mean()) < 0.5 * float(yt.square().mean())  # and they still learn the product


def test_the_readout_gives_no_weight_to_directions_where_only_noise_lives():
    g = torch.Generator().manual_seed(1)
    n, k = 400, 40  # few rows for many faint noise directions: their fit is pure overfitting
    lat = torch.randn(n, 3, generator=g)
    mix, _ = torch.linalg.qr(torch.randn(3 + k, 3 + k, generator=g))
    x = torch.cat([lat, 3e-3 * torch.randn(n, k, generator=g)], 1) @ mix.T  # 3 signals + faint noise
    y = torch.tanh(lat @ torch.tensor([[0.5], [-0.3], [0.2]])) + 0.1 * torch.randn(n, 1, generator=g)
    m = ola.fit(x, y, generations=400, subspace=ola.Subspace(readout=0.9995))
    w = m.readout.weight  # (1, 43) raw input weights (searching every direction: 24x more on noise than signal)
    assert (w @ mix[:, 3:]).norm() < 0.01 * (w @ mix[:, :3]).norm()
    # so inputs whose faint directions differ from the training rows' (another photo's noise) move nothing
    shifted = x[:100] + 0.3 * mix[:, 3:].sum(1) / k**0.5
    assert float((m(shifted) - m(x[:100])).abs().max()) < 0.01 * float(m(x).std())


def test_by_default_every_direction_is_searched_so_a_faint_signal_is_learned():
    # a denoiser's case: the target lives in a direction holding 0.01% of the input variance
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3000, 6, generator=g) * torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.02])
    y = torch.tanh(20 * x[:, 5:])  # (N, 1): a function of the faint column alone
    full = ola.fit(x, y, generations=300)
    cut = ola.fit(x, y, generations=300, subspace=ola.Subspace(readout=0.999))
    assert full.training_summary["val_mse"] < 0.1 * float(y.var())
    assert cut.training_summary["val_mse"] > 0.9 * float(y.var())  # the faint direction was left out
    assert full.training_summary["subspace"] == {"units": 1.0, "readout": 1.0, "hessian": 0, "deflate": False,
                                                    "spread": 1.0}
    with pytest.raises(ValueError, match="Subspace.units"):
        ola.Subspace(units=0.0)
    with pytest.raises(ValueError, match="Subspace.hessian"):
        ola.Subspace(hessian=-1)


def test_hessian_directions_point_where_the_residual_bends():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 10, generator=g)
    v, _ = torch.linalg.qr(torch.randn(10, 2, generator=g))  # two orthonormal directions
    # output 0 bends along v0 (strongly), output 1 along v1: a linear readout follows neither
    resid = torch.stack([3 * (z @ v[:, 0]).square(), (z @ v[:, 1]).square()], 1) + 0.1 * torch.randn(20000, 2, generator=g)
    d = cascade.hessian_directions(z, resid, n_units=2, m=3)  # (U, k, m)
    assert d.shape == (2, 10, 3)
    torch.testing.assert_close(d[0].T @ d[0], torch.eye(3), atol=1e-4, rtol=0)
    assert abs(float(d[0][:, 0] @ v[:, 0])) > 0.95  # unit 0 follows the residual's main direction
    assert abs(float(d[1][:, 0] @ v[:, 1])) > 0.95  # unit 1 the next one
    more = cascade.hessian_directions(z, resid, n_units=3, m=3)  # more units than residual directions
    assert float((more[2].T @ more[0]).abs().max()) < 1e-4  # the third takes the next band: no shared direction


def test_units_in_hessian_subspaces_learn_a_bend_hidden_among_many_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6000, 24, generator=g)
    v = torch.randn(24, generator=g) / 24**0.5
    y = torch.tanh((x @ v).square() - 1)[:, None]  # a bend along one direction of 24
    flat = ola.fit(x[:5000], y[:5000], generations=200)
    m = ola.fit(x[:5000], y[:5000], hidden=(4,), generations=600, subspace=ola.Subspace(hessian=2))
    assert m.training_summary["subspace"]["hessian"] == 2
    mse = float((m(x[5000:]) - y[5000:]).square().mean())
    assert mse < 0.5 * float((flat(x[5000:]) - y[5000:]).square().mean())


def test_deflated_units_of_a_round_take_different_features():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6000, 8, generator=g)
    y = 0.16 * (4 * torch.tanh(3 * x[:, :1]) + torch.tanh(3 * x[:, 1:2]))  # two bends, one much stronger
    cos, mse = {}, {}
    for deflate in (False, True):  # one round of 2 units, from the same random starts
        m = ola.fit(x[:5000], y[:5000], hidden=(2,), generations=600, subspace=ola.Subspace(deflate=deflate), seed=2)
        w = m.hidden[0].weight / m.hidden[0].weight.norm(dim=1, keepdim=True)  # (2, 8)
        cos[deflate] = float((w[0] @ w[1]).abs())
        mse[deflate] = float((m(x[5000:]) - y[5000:]).square().mean())
    assert cos[False] > 0.95  # both units chase the stronger bend
    assert cos[True] < 0.5 and mse[True] < 0.5 * mse[False]
    assert m.training_summary["subspace"]["deflate"] is True


def test_fit_is_deterministic_for_a_seed():
    x, y, _ = _linear_tanh(n=500)
    a = ola.fit(x, y, generations=30, seed=3)
    b = ola.fit(x, y, generations=30, seed=3)
    c = ola.fit(x, y, generations=30, seed=4)
    assert torch.equal(a.readout.weight, b.readout.weight)
    assert not torch.equal(a.readout.weight, c.readout.weight)


@pytest.mark.parametrize("strategy", [*ola.STRATEGIES, "auto"])
def test_every_strategy_improves_on_the_starting_point(strategy):
    x, y, _ = _linear_tanh(n=1000)
    m = ola.fit(x, y, strategy=strategy, generations=150)
    assert m.training_summary["val_mse"] < float(y.square().mean())  # beats predicting tanh(0) = 0


def test_fit_takes_numpy_and_continues_from_init():
    x, y, _ = _linear_tanh(n=1000)
    first = ola.fit(x.numpy(), y.numpy().astype(np.float64), generations=20)
    more = ola.fit(x, y, generations=200, init=first, seed=1)
    assert more.training_summary["val_mse"] <= first.training_summary["val_mse"]
    grown = ola.fit(x, y, hidden=(4,), generations=5, init=first)  # a linear module is where growing starts
    assert grown.config.hidden == (4,)
    with pytest.raises(ValueError, match="hidden"):
        ola.fit(x, y, hidden=(2,), generations=5, init=grown)  # more units than asked: not a start of it


def test_fit_builds_no_autograd_graph(monkeypatch):
    seen = []
    tell = SNES.tell

    def spy(self, state, theta, loss):
        seen.append((torch.is_grad_enabled(), theta.requires_grad, loss.requires_grad, loss.grad_fn))
        return tell(self, state, theta, loss)

    monkeypatch.setattr(SNES, "tell", spy)
    x, y, _ = _linear_tanh(n=400)
    x.requires_grad_(True)  # even a caller's graph-tracking tensor must not start one
    m = ola.fit(x, y, hidden=(2,), generations=20)
    assert seen and all(s == (False, False, False, None) for s in seen)
    assert not any(p.requires_grad for p in m.parameters())
    assert not m(x.detach()).requires_grad


@pytest.mark.parametrize("x, y, match", [
    (torch.zeros(10, 3), torch.zeros(9, 2), "10 rows but y has 9"),
    (torch.zeros(10), torch.zeros(10, 2), r"x must have shape \(N, D\)"),
    (torch.full((10, 3), float("nan")), torch.zeros(10, 2), "x contains 30 NaN"),
    (torch.zeros(10, 3), torch.full((10, 2), float("inf")), "y contains 0 NaN and 20 inf"),
    ("not data", torch.zeros(10, 2), "torch.Tensor or numpy array"),
])
def test_bad_data_is_a_clear_error(x, y, match):
    with pytest.raises(ValueError, match=match):
        ola.fit(x, y, generations=1)


def test_bad_arguments_are_clear_errors():
    x, y = torch.randn(20, 3), torch.rand(20, 2) * 0.5
    with pytest.raises(ValueError, match="unknown strategy"):
        ola.fit(x, y, strategy="sgd", generations=1)
    with pytest.raises(ValueError, match="x_val has 4 columns but x has 3"):
        ola.fit(x, y, x_val=torch.zeros(5, 4), y_val=torch.zeros(5, 2), generations=1)
    with pytest.raises(ValueError, match="both x_val and y_val"):
        ola.fit(x, y, x_val=x, generations=1)
    with pytest.raises(ValueError, match="population"):
        ola.fit(x, y, population=1, generations=1)
    with pytest.raises(ValueError, match="units_per_round must be at least 1"):
        ola.fit(x, y, hidden=(4,), units_per_round=0, generations=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda_says_so():
    with pytest.raises(ValueError, match="CUDA is not available"):
        ola.fit(torch.zeros(10, 3), torch.zeros(10, 2), device="cuda", generations=1)


def test_a_fit_on_rows_ordered_by_block_learns_from_all_of_them():
    # More rows than the whitener reads, ordered so the first block never varies the last inputs
    # (a store ordered by timestep: background cells are constant at low noise).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40_000, 16, generator=g)
    x[:34_000, 8:] = -1.0
    y = torch.tanh(x @ (torch.randn(16, 3, generator=g) / 4))
    xv, yv = x[::9], y[::9]
    m = ola.fit(x, y, x_val=xv, y_val=yv, generations=150)
    assert float((m(xv) - yv).square().mean() / yv.square().mean()) < 1e-3


def test_a_fresh_fit_that_learned_nothing_raises_with_the_module():
    x, y, _ = _linear_tanh()
    # held-out rows that contradict the training rows: any learning makes them worse than predicting 0
    with pytest.raises(ola.FitDidNotLearn, match="learned nothing") as err:
        ola.fit(x[:2500], y[:2500], generations=100, x_val=x[2500:], y_val=-y[2500:])
    assert isinstance(err.value.module, ola.OLAModule)


def test_a_continued_fit_that_improved_nothing_warns():
    from organic_sd.ola.fit import _check_progress
    m = ola.OLAModule(ola.OLAConfig(2, 1))
    m.training_summary = {"generations": 10, "seconds": 0.1, "n_train": 100}
    with pytest.warns(ola.NoProgressWarning, match="improved nothing"):
        _check_progress(m, val_mse=0.5, start_mse=0.5, fresh=False)
    assert m.training_summary["learned"] is False
    with pytest.warns(ola.NoProgressWarning, match="improved nothing"):  # too few generations to judge: warn
        _check_progress(m, val_mse=0.5, start_mse=0.5, fresh=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_progress(m, val_mse=0.4, start_mse=0.5, fresh=False)
    assert m.training_summary["learned"] is True


def test_default_rows_per_generation_are_many_on_a_gpu_but_bounded_by_the_scratch_they_need():
    from organic_sd.ola.fit import CPU_BATCH, CUDA_BATCH, CUDA_MIN_BATCH, CUDA_SCRATCH, default_batch_size
    h100 = 80 * 2**30
    assert default_batch_size("cpu", 160, 96) == CPU_BATCH
    assert default_batch_size("cuda", 160, 96, h100) == CUDA_BATCH  # the staged O-Decoder's stages, as measured
    wide = default_batch_size("cuda:0", 40, 768, h100)  # a text adapter's readout: (P, B, 768) is 4 GiB at 32k rows
    assert CUDA_MIN_BATCH < wide < CUDA_BATCH and 40 * 768 * wide <= CUDA_SCRATCH
    small = default_batch_size("cuda", 160, 96, 8 * 2**30)  # an 8 GiB card: fewer rows for the same fit
    assert CUDA_MIN_BATCH < small < CUDA_BATCH and 4 * 160 * 96 * small <= 8 * 2**30 // 16
    assert default_batch_size("cuda", 1000, 4096, h100) == CUDA_MIN_BATCH


def test_a_fit_without_batch_size_uses_the_default_and_reports_it():
    x, y, _ = _linear_tanh(n=3000)
    m = ola.fit(x, y, generations=2)
    assert m.training_summary["batch_size"] == 1024
    assert ola.fit(x, y, generations=2, batch_size=300).training_summary["batch_size"] == 300
