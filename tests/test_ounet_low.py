"""The low-noise stack (ounet/low.py): steps below the split run their own stack, saved, loaded, trained, resumed."""

import io
from dataclasses import replace

import pytest
import torch
from conftest import MNIST, check_ctrl_c_then_resume, needs_mnist
from test_ounet_stage import staged

from organic_sd import cli, ola
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ounet import OUNet
from organic_sd.ounet.features import features
from organic_sd.ounet.low import below_split_weights, fit_low, prune_units
from organic_sd.ounet.stage import stage_map
from organic_sd.ounet.targets import to_eps


def with_low(u: OUNet, split=20, target="x0", seed=3) -> OUNet:
    """u with a random low-noise stack of its stack's shape for t < split."""
    g = torch.Generator().manual_seed(seed)
    low = ola.OLAModule(ola.OLAConfig(u.config.in_dim, u.config.sample_shape[0], (4,), out_scale=0.6))
    for p in low.parameters():
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return OUNet(replace(u.config, low_split=split, low_target=target), u.module, u._schedule, stage=u.stage, low=low)


def rows_eps(u, module, target, x, t):
    """The reference path: explicit feature rows through one stack, converted to eps."""
    coarse = stage_map(u.config, u.stage, u._schedule, x, t)
    pred = module(features(u.config, u._schedule, x, t, None, coarse)).transpose(1, 2).reshape(x.shape)
    return to_eps(target, pred, x, u._schedule[t].float())


def test_steps_below_the_split_take_the_low_stack_in_the_fast_path_and_mixed_batches():
    u = with_low(staged("v"))
    x, t = torch.randn(4, 2, 12, 12), torch.tensor([3, 40, 19, 20])  # two below the split, two from it on
    out = u(x, t)
    low, high = t < 20, t >= 20
    torch.testing.assert_close(out[low], rows_eps(u, u.low, "x0", x[low], t[low]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[high], rows_eps(u, u.module, "v", x[high], t[high]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(u(x[low], t[low]), out[low])  # a batch all below the split: the same numbers
    plain = OUNet(replace(u.config, low_split=0), u.module, u._schedule, stage=u.stage)
    torch.testing.assert_close(plain(x[high], t[high]), out[high])  # above the split nothing changed
    assert not torch.allclose(plain(x[low], t[low]), out[low])


def test_round_trip_and_mismatches(tmp_path):
    u = with_low(staged("v"))
    path = u.save(tmp_path / "u.safetensors")
    v = OUNet.load(path)
    assert (v.config.low_split, v.config.low_target) == (20, "x0")
    assert torch.equal(v.low.readout.weight, u.low.readout.weight)
    x, t = torch.randn(2, 2, 12, 12), torch.tensor([5, 30])
    torch.testing.assert_close(v(x, t), u(x, t))
    assert v.num_parameters() == u.num_parameters() > OUNet(replace(u.config, low_split=0), u.module, u._schedule,
                                                            stage=u.stage).num_parameters()
    from organic_sd.info import ounet_summary

    assert "low-noise stack: " in ounet_summary(v) and "for t < 20, predicts x0" in ounet_summary(v)
    with pytest.raises(ValueError, match="needs a low-noise stack"):
        OUNet(u.config, u.module, u._schedule, stage=u.stage)
    with pytest.raises(ValueError, match="needs no low-noise stack"):
        OUNet(replace(u.config, low_split=0), u.module, u._schedule, stage=u.stage, low=u.low)
    with pytest.raises(ValueError, match="low_split"):
        replace(u.config, low_split=u.config.num_steps)


def test_weights_vanish_from_the_split_on():
    t = [0, 10, 399, 400, 900]
    sched = torch.linspace(0.9999, 0.01, 1000, dtype=torch.float64)
    p = below_split_weights("x0", sched, t, 400)
    assert p[3] == p[4] == 0 and (p[:3] > 0).all() and abs(p.sum() - 1) < 1e-9
    with pytest.raises(ValueError, match="no record has t < 1"):
        below_split_weights("x0", sched, [5, 9], 1)


@needs_mnist
def test_fit_low_learns_is_kept_only_if_better_and_the_cli_resumes_after_ctrl_c(tmp_path, monkeypatch):
    store, run = tmp_path / "store", tmp_path / "run"
    assert cli.main(["precompute", "denoiser", "--teacher", f"ddpm-mnist:{MNIST}", "--out", str(store),
                     "--samples", "16", "--steps", "4", "--renoise", "2", "--batch", "16", "--device", "cpu",
                     "--val-fraction", "0.4"]) == 0
    assert cli.main(["train", "denoiser", "--store", str(store), "--out", str(run), "--ticks", "1", "--generations",
                     "4", "--max-rows", "2000", "--hidden", "2", "--eval-records", "4", "--window", "3",
                     "--modulate", "1", "--stage-grid", "7", "--stage-hidden", "3", "--stage-minutes", "0.2",
                     "--target", "v", "--tick-seconds", "20"]) == 0
    u, ds = OUNet.load(run), DenoiserStore.open(store)
    log = io.StringIO()
    u2, rep = fit_low(u, ds, split=500, hidden=(3,), generations=60, max_rows=3000, eval_records=16, population=8,
                      log_to=log)
    assert "evolving for 60 generations (--progress shows the search)" in log.getvalue()  # a silent wait says how long
    assert rep["before"]["heldout_mse"] > 0 and rep["fit"]["n_train"] > 0
    if rep["kept"]:  # kept exactly when the held-out error below the split fell
        assert rep["after"]["heldout_mse"] < rep["before"]["heldout_mse"] and u2.low is not None
        assert u2.config.low_split == 500 and u2.low.config.out_scale == pytest.approx(1.05 * 0.5)
    else:
        assert rep["after"]["heldout_mse"] >= rep["before"]["heldout_mse"] and u2.low is None
    # --refine reaches the search: the pruned stack's units move instead of keeping them and re-fitting the readout
    seen, starts = [], []

    def fit_seeing_refine(*a, **kw):
        seen.append((kw["init"] is not None, kw["refine"].share))
        starts.append(kw["refine"])
        return real_fit(*a, **kw)

    real_fit = ola.fit
    monkeypatch.setattr(ola, "fit", fit_seeing_refine)
    _, rep = fit_low(u, ds, split=500, hidden=(3,), generations=60, max_rows=3000, eval_records=16, population=8,
                     log_to=io.StringIO(), refine=0.5)
    assert seen == [(False, 0.5)] and rep["refine"] == 0.5 and starts[-1] == ola.Refine(share=0.5)
    # --refine-start random: a fresh stack from random units, refined in the measured rounds
    _, rep = fit_low(u, ds, split=500, hidden=(3,), generations=60, max_rows=3000, eval_records=16, population=8,
                     log_to=io.StringIO(), refine=0.9, refine_start="random")
    assert starts[-1] == ola.Refine.measured(0.9, "random") and rep["refine_start"] == "random"
    with pytest.raises(ValueError, match="share > 0"):  # before any rows are drawn
        fit_low(u, ds, split=500, refine=0.0, refine_start="random", log_to=io.StringIO())
    assert len(starts) == 2
    monkeypatch.undo()
    # Ctrl-C while growing: the units so far are kept beside --out, and the same command goes on from them
    out = tmp_path / "low.safetensors"
    args = ["train", "denoiser-low", "--ounet", str(run), "--store", str(store), "--out", str(out), "--split", "500",
            "--hidden", "4", "--max-rows", "3000", "--eval-records", "16", "--population", "8", "--max-minutes", "0.05"]
    check_ctrl_c_then_resume(monkeypatch, args, out, tmp_path / "low.low-partial.safetensors", grown=(2,))


def test_prune_keeps_the_most_used_units_and_the_readouts_columns():
    u = with_low(staged("v"))  # a 4-unit low stack for t < 20, predicting x0
    low, col = u.low, u.config.in_dim
    with torch.no_grad():
        low.readout.weight[:, col + 1] = 0.0  # unit 1 reaches nothing: the first to go
    x = torch.randn(500, col)
    cut = prune_units(u, 20, "x0", x, 3, log_to=io.StringIO())
    assert cut.config.hidden == (3,) and cut.config.out_scale == low.config.out_scale
    torch.testing.assert_close(cut.hidden[0].weight, low.hidden[0].weight[[0, 2, 3]])
    torch.testing.assert_close(cut.readout.weight[:, :col], low.readout.weight[:, :col])
    torch.testing.assert_close(cut.readout.weight[:, col:], low.readout.weight[:, col + torch.tensor([0, 2, 3])])
    torch.testing.assert_close(cut(x), low(x))  # the dropped unit added nothing, so nothing changed
    with pytest.raises(ValueError, match="needs one for t < 30"):
        prune_units(u, 30, "x0", x, 3)
    with pytest.raises(ValueError, match="keeps 1 to 3 units"):
        prune_units(u, 20, "x0", x, 4)
