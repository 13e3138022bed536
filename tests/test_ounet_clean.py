"""The clean stage (ounet/clean.py): a map over the low-noise stack's x0, saved, loaded, trained, resumed."""

import io
from dataclasses import replace

import pytest
import torch
from conftest import MNIST, check_ctrl_c_then_resume, needs_mnist
from test_ounet_low import rows_eps, with_low
from test_ounet_stage import staged

from organic_sd import cli, ola
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ounet import OUNet
from organic_sd.ounet.clean import clean_in_dim, clean_rows
from organic_sd.ounet.targets import to_eps
from organic_sd.ounet.train_clean import fit_clean


def with_clean(u: OUNet, window=3, seed=5, hidden=(3,)) -> OUNet:
    """u (with a low-noise stack) plus a random clean stage on a window x window window of its x0."""
    cfg = replace(u.config, clean_window=window)
    g = torch.Generator().manual_seed(seed)
    clean = ola.OLAModule(ola.OLAConfig(clean_in_dim(cfg), cfg.sample_shape[0], hidden, out_scale=1.05))
    for p in clean.parameters():
        p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return OUNet(cfg, u.module, u._schedule, stage=u.stage, low=u.low, clean=clean)


def test_rows_hold_the_window_of_x0_padded_with_the_background_the_levels_and_the_pixel():
    cfg = replace(with_low(staged("v")).config, clean_window=3)
    sched = torch.linspace(0.99, 0.01, cfg.num_steps, dtype=torch.float64)
    x_t, x0 = torch.randn(2, 2, 12, 12), torch.randn(2, 2, 12, 12) * 3  # beyond the bound: clamped
    t = torch.tensor([1, 7])
    rows = clean_rows(cfg, sched, x_t, t, x0)
    assert rows.shape == (2, 144, clean_in_dim(cfg)) == (2, 144, 2 * 9 + 2 + 2)
    bound = 1.05  # pixel range (-1, 1)
    # pixel (5, 6): its window is x0[:, :, 4:7, 5:8] of each channel, channel-major like F.unfold
    want = x0[:, :, 4:7, 5:8].clamp(-bound, bound).flatten(1)
    torch.testing.assert_close(rows[:, 5 * 12 + 6, :18], want)
    # the corner pixel's window reaches outside the image: there it reads the background (-1), not 0
    assert (rows[:, 0, 0] == -1).all() and (rows[:, 0, 4] == x0[:, 0, 0, 0].clamp(-bound, bound)).all()
    ab = sched[t].float()
    torch.testing.assert_close(rows[:, 0, 18], ab.sqrt())
    torch.testing.assert_close(rows[:, 0, 19], (1 - ab).sqrt())
    torch.testing.assert_close(rows[:, 5 * 12 + 6, 20:], x_t[:, :, 5, 6])


@pytest.mark.parametrize("hidden", [(3,), (3, 2), ()])
def test_the_clean_stage_redraws_the_low_stacks_x0_below_the_split_only(hidden):
    """Its convolution path is the function its rows describe, for any depth; from the split on nothing changes."""
    u = with_clean(with_low(staged("v")), hidden=hidden)
    x, t = torch.randn(4, 2, 12, 12), torch.tensor([3, 40, 19, 20])  # two below the split, two from it on
    out = u(x, t)
    low, high = t < 20, t >= 20
    # reference: the low stack's x0 by explicit feature rows, then the clean stage's rows through its module
    ab = u._schedule[t[low]].float()
    ref_x0_low = (x[low] - (1 - ab).sqrt().view(-1, 1, 1, 1) * rows_eps(u, u.low, "x0", x[low], t[low])) \
        / ab.sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(u.low_x0(x[low], t[low]), ref_x0_low, atol=1e-4, rtol=1e-4)
    redrawn = u.clean(clean_rows(u.config, u._schedule, x[low], t[low], ref_x0_low)).transpose(1, 2).reshape(x[low].shape)
    torch.testing.assert_close(out[low], to_eps("x0", redrawn, x[low], ab), atol=1e-4, rtol=1e-4)
    without = OUNet(replace(u.config, clean_window=0), u.module, u._schedule, stage=u.stage, low=u.low)
    torch.testing.assert_close(without(x[high], t[high]), out[high])  # from the split on nothing changed
    assert not torch.allclose(without(x[low], t[low]), out[low])
    torch.testing.assert_close(u(x[low], t[low]), out[low])  # a batch all below the split: the same numbers
    with pytest.raises(ValueError, match="below the split"):
        u.low_x0(x, t)


def test_round_trip_and_mismatches(tmp_path):
    u = with_clean(with_low(staged("v")))
    path = u.save(tmp_path / "u.safetensors")
    v = OUNet.load(path)
    assert v.config.clean_window == 3 and torch.equal(v.clean.readout.weight, u.clean.readout.weight)
    x, t = torch.randn(2, 2, 12, 12), torch.tensor([5, 30])
    torch.testing.assert_close(v(x, t), u(x, t))
    from organic_sd.info import ounet_summary

    assert "clean stage: " in ounet_summary(v) and "3x3 window of the low-noise stack's x0" in ounet_summary(v)
    with pytest.raises(ValueError, match="needs a clean stage"):
        OUNet(u.config, u.module, u._schedule, stage=u.stage, low=u.low)
    with pytest.raises(ValueError, match="needs no clean stage"):
        OUNet(replace(u.config, clean_window=0), u.module, u._schedule, stage=u.stage, low=u.low, clean=u.clean)
    with pytest.raises(ValueError, match="clean_window must be 0 or odd"):
        replace(u.config, clean_window=4)
    with pytest.raises(ValueError, match="reads the low-noise stack's x0"):
        replace(u.config, low_split=0, clean_window=3)
    # a file whose config names a clean stage but holds none is a clear error, not a silent plain O-UNet
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith("clean.")}
    md.pop("clean_config")
    save_file(tensors, str(tmp_path / "broken.safetensors"), metadata=md)
    with pytest.raises(ValueError, match="names a clean stage but the file holds none"):
        OUNet.load(tmp_path / "broken.safetensors")


def test_fit_clean_needs_an_x0_low_stack():
    with pytest.raises(ValueError, match="train one with `osd train denoiser-low`"):
        fit_clean(staged("v"), store=None)


@needs_mnist
def test_fit_clean_learns_is_kept_only_if_better_and_the_cli_resumes_after_ctrl_c(tmp_path, monkeypatch):
    store, run, low = tmp_path / "store", tmp_path / "run", tmp_path / "low.safetensors"
    assert cli.main(["precompute", "denoiser", "--teacher", f"ddpm-mnist:{MNIST}", "--out", str(store),
                     "--samples", "16", "--steps", "4", "--renoise", "2", "--batch", "16", "--device", "cpu",
                     "--val-fraction", "0.4"]) == 0
    assert cli.main(["train", "denoiser", "--store", str(store), "--out", str(run), "--ticks", "1", "--generations",
                     "4", "--max-rows", "2000", "--hidden", "2", "--eval-records", "4", "--window", "3",
                     "--modulate", "1", "--target", "v", "--tick-seconds", "20"]) == 0
    ds = DenoiserStore.open(store)
    u = with_low(OUNet.load(run), split=500)  # a random low stack: a clean stage has plenty to redraw
    u.save(low)
    log = io.StringIO()
    u2, rep = fit_clean(u, ds, window=3, hidden=(2,), generations=40, max_rows=3000, eval_records=16, population=8,
                        log_to=log)
    assert "3x3 window of the low stack's x0" in log.getvalue() and "evolving for 40 generations" in log.getvalue()
    assert rep["before"]["heldout_mse"] > 0 and rep["fit"]["n_train"] > 0
    if rep["kept"]:  # kept exactly when the held-out error below the split fell
        assert rep["after"]["heldout_mse"] < rep["before"]["heldout_mse"] and u2.clean is not None
        assert u2.config.clean_window == 3
        assert u2.clean.config.out_scale == pytest.approx(1.05 * max(map(abs, u.config.pixel_range)))
    else:
        assert rep["after"]["heldout_mse"] >= rep["before"]["heldout_mse"] and u2.clean is None
    # a stage that does not beat the one the O-UNet already has leaves it as it was
    held = with_clean(u, window=3)
    u4, rep4 = fit_clean(held, ds, window=3, hidden=(1,), generations=2, max_rows=3000, eval_records=16,
                         population=8, log_to=io.StringIO())
    if not rep4["kept"]:
        assert u4.clean is held.clean and rep4["before"]["heldout_mse"] <= rep4["after"]["heldout_mse"]
    else:
        assert u4.clean is not held.clean and rep4["after"]["heldout_mse"] < rep4["before"]["heldout_mse"]
    with pytest.raises(ValueError, match="odd and >= 1"):
        fit_clean(u, ds, window=0)
    # the same generations and seed: the same stage
    u3, rep3 = fit_clean(u, ds, window=3, hidden=(2,), generations=40, max_rows=3000, eval_records=16, population=8,
                         log_to=io.StringIO())
    assert rep3["after"] == rep["after"]
    # `--refine` reaches the search
    seen, real_fit = [], ola.fit
    monkeypatch.setattr(ola, "fit", lambda *a, **kw: seen.append(kw["refine"].share) or real_fit(*a, **kw))
    assert cli.main(["train", "denoiser-clean", "--ounet", str(low), "--store", str(store), "--out",
                     str(tmp_path / "refined.safetensors"), "--window", "3", "--hidden", "2", "--max-rows", "3000",
                     "--eval-records", "16", "--population", "8", "--max-minutes", "0.02", "--refine", "0.5"]) == 0
    assert seen == [0.5]
    seen_refine = []
    monkeypatch.setattr(ola, "fit", lambda *a, **kw: seen_refine.append(kw["refine"]) or real_fit(*a, **kw))
    assert cli.main(["train", "denoiser-clean", "--ounet", str(low), "--store", str(store), "--out",
                     str(tmp_path / "random.safetensors"), "--window", "3", "--hidden", "2", "--max-rows", "3000",
                     "--eval-records", "16", "--population", "8", "--max-minutes", "0.02", "--refine", "0.9",
                     "--refine-start", "random"]) == 0
    assert seen_refine == [ola.Refine.measured(0.9, "random")]
    monkeypatch.undo()
    # Ctrl-C while growing: the units so far are kept beside --out, and the same command goes on from them
    out = tmp_path / "clean.safetensors"
    args = ["train", "denoiser-clean", "--ounet", str(low), "--store", str(store), "--out", str(out), "--window", "3",
            "--hidden", "3", "--max-rows", "3000", "--eval-records", "16", "--population", "8", "--max-minutes", "0.05"]
    check_ctrl_c_then_resume(monkeypatch, args, out, tmp_path / "clean.clean-partial.safetensors", grown=(1,))
    # the low stack cut to its 2 most used units, readout re-evolved: what a clean stage pairs with to stay fast
    cut = tmp_path / "cut.safetensors"
    assert cli.main(["train", "denoiser-low", "--ounet", str(low), "--store", str(store), "--out", str(cut),
                     "--split", "500", "--prune", "2", "--max-rows", "3000", "--eval-records", "16", "--population",
                     "8", "--max-minutes", "0.02"]) == 0
    v = OUNet.load(cut)
    assert v.low is None or v.low.config.hidden == (2,)

