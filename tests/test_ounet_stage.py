"""The multi-scale O-UNet: its coarse stage, its targets, its files and its two-stage training run."""

import json

import pytest
import torch
from conftest import MNIST, T, needs_mnist, schedule

from organic_sd import cli, ola, runs
from organic_sd.ounet import OUNet, OUNetConfig
from organic_sd.ounet.features import features
from organic_sd.ounet.stage import soft_buckets, stage_in_dim, stage_inputs, stage_map
from organic_sd.ounet.targets import TARGETS, from_eps, to_eps


def staged(target="v", buckets=0, cond_dim=0, seed=0, copies="both"):
    """A multi-scale O-UNet with random weights: 2 channels, 12 x 12, a 4 x 4 coarse grid."""
    cfg = OUNetConfig(sample_shape=(2, 12, 12), num_steps=T, window=5, grid=2, freqs=2, modulate=3, gain=3, coarse=3,
                      stage_grid=4, stage_window=3, stage_buckets=buckets, target=target, cond_dim=cond_dim,
                      stage_copies=copies)
    g = torch.Generator().manual_seed(seed)
    stage = ola.OLAModule(ola.OLAConfig(stage_in_dim(cfg), 2 * 16, (6,), out_scale=2.0))
    stack = ola.OLAModule(ola.OLAConfig(cfg.in_dim, 2, (5,), out_scale=2.0))
    for p in [*stage.parameters(), *stack.parameters()]:
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return OUNet(cfg, stack, schedule(), stage=stage)


@pytest.mark.parametrize("target", TARGETS)
def test_targets_convert_back_to_the_same_eps(target):
    x_t, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    ab = schedule()[torch.tensor([0, 25, 49])].float()
    torch.testing.assert_close(to_eps(target, from_eps(target, eps, x_t, ab), x_t, ab), eps, atol=1e-4, rtol=1e-4)
    x0 = from_eps("x0", eps, x_t, ab)  # x_t = sqrt(ab) x0 + sqrt(1 - ab) eps
    torch.testing.assert_close(ab.sqrt()[:, None, None, None] * x0 + (1 - ab).sqrt()[:, None, None, None] * eps, x_t)
    with pytest.raises(ValueError, match="target must be one of"):
        from_eps("score", eps, x_t, ab)


@pytest.mark.parametrize("target,buckets,cond_dim,copies", [("v", 0, 0, "both"), ("eps", 3, 0, "both"),
                                                             ("x0", 0, 2, "both"), ("v", 0, 0, "noise"),
                                                             ("v", 2, 2, "none")])
def test_fast_path_equals_the_rows_path(target, buckets, cond_dim, copies):
    u = staged(target, buckets, cond_dim, copies=copies)
    x, t = torch.randn(4, 2, 12, 12), torch.tensor([3, 40, 3, 10])  # several noise levels in one batch
    cond = torch.randn(4, cond_dim) if cond_dim else None
    cfg = u.config
    coarse = stage_map(cfg, u.stage, u._schedule, x, t, cond)  # (B, C, H, W)
    pred = u.module(features(cfg, u._schedule, x, t, cond, coarse)).transpose(1, 2).reshape(x.shape)
    ref = to_eps(target, pred, x, u._schedule[t].float())
    torch.testing.assert_close(u(x, t, cond), ref, atol=1e-4, rtol=1e-4)
    # the coarse stage matters: another coarse stage gives another eps
    other = staged(target, buckets, cond_dim, seed=1, copies=copies)
    u2 = OUNet(cfg, u.module, u._schedule, stage=other.stage)
    assert not torch.allclose(u2(x, t, cond), u(x, t, cond))


@pytest.mark.parametrize("name", ["mnist", "mnist-cond"])
def test_the_shipped_o_unets_fast_path_is_the_function_their_rows_were_scored_on(name):
    """The shipped files' own shapes (a 7x7 and a 14x14 coarse stage): the convolutions equal the rows."""
    u = OUNet.load(name)
    cfg = u.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *cfg.sample_shape, generator=g) * 0.5
    t = torch.tensor([cfg.num_steps - 1, (cfg.num_steps + cfg.low_split) // 2, 600])
    assert (t >= cfg.low_split).all()  # the low-noise stack stays out of this check (tests/test_ounet_low.py has it)
    cond = torch.nn.functional.one_hot(torch.tensor([1, 7, 3]), len(cfg.classes)).float() if cfg.classes else None
    coarse = stage_map(cfg, u.stage, u._schedule, x, t, cond)
    pred = u.module(features(cfg, u._schedule, x, t, cond, coarse)).transpose(1, 2).reshape(x.shape)
    ref = to_eps(cfg.target, pred, x, u._schedule[t].float())
    torch.testing.assert_close(u(x, t, cond), ref, atol=2e-4, rtol=1e-4)


def test_the_coarse_stage_sees_the_pooled_image_and_time():
    u = staged(buckets=3)
    cfg = u.config
    x = torch.randn(2, 2, 12, 12)
    rows = stage_inputs(cfg, u._schedule, x, torch.tensor([0, 49]))
    assert rows.shape == (2, stage_in_dim(cfg)) == (2, 2 + 2 * 2 + (3 + 3) * 2 * 16)
    # a change inside one pooled cell that keeps its mean changes nothing; one that moves the mean does
    y = x.clone()
    y[:, :, 0, 0] += 1
    y[:, :, 0, 1] -= 1
    torch.testing.assert_close(stage_inputs(cfg, u._schedule, y, torch.tensor([0, 49])), rows)
    # fewer noise-scaled copies: fewer columns, the same pooled image and time in the same places
    t = torch.tensor([0, 49])
    ab = u._schedule[t].float()[:, None]  # (B, 1)
    pooled = rows[:, 6:6 + 32]  # (B, C g g) after the 2 + 2F time columns
    for copies, scales in (("noise", [(1 - ab).sqrt()]), ("signal", [ab.sqrt()]), ("none", [])):
        c = staged(buckets=3, copies=copies).config
        r = stage_inputs(c, u._schedule, x, t)
        assert r.shape == (2, stage_in_dim(c)) == (2, 6 + (1 + len(scales) + 3) * 32)
        torch.testing.assert_close(r[:, :6 + 32], rows[:, :6 + 32])
        for k, sc in enumerate(scales):
            torch.testing.assert_close(r[:, 6 + 32 * (k + 1):6 + 32 * (k + 2)], pooled * sc)
    w = soft_buckets(torch.tensor([0, 10, 49]), 3, T)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert w[0, 0] == 1 and w[2, 2] == 1


@pytest.mark.parametrize("copies", ["both", "noise"])
def test_save_load_round_trip_and_broken_files(tmp_path, copies):
    u = staged(buckets=3, copies=copies)
    x, t = torch.randn(2, 2, 12, 12), torch.tensor([5, 30])
    f = u.save(tmp_path / "u.safetensors")
    u2 = OUNet.load(f)
    assert u2.config == u.config and torch.equal(u2(x, t), u(x, t))
    assert u2.num_parameters() == u.num_parameters() > u.module.num_parameters()
    with pytest.raises(ValueError, match="needs a coarse stage"):
        OUNet(u.config, u.module, schedule())
    with pytest.raises(ValueError, match="needs no coarse stage"):
        OUNet(OUNetConfig(sample_shape=(2, 12, 12), num_steps=T), ola.OLAModule(ola.OLAConfig(
            OUNetConfig(sample_shape=(2, 12, 12), num_steps=T).in_dim, 2)), schedule(), stage=u.stage)
    with pytest.raises(ValueError, match="the per-pixel rows need the coarse stage"):
        features(u.config, u._schedule, x, t)
    # a file whose coarse stage was dropped is refused by name
    from safetensors.torch import load_file, save_file

    from organic_sd.files import read_safetensors

    _, _, md = read_safetensors(f, "O-UNet")
    save_file({k: v for k, v in load_file(f).items() if not k.startswith("stage.")}, tmp_path / "bad.safetensors",
              metadata={k: v for k, v in md.items() if k != "stage_config"})
    with pytest.raises(ValueError, match="names a coarse stage but the file holds none"):
        OUNet.load(tmp_path / "bad.safetensors")


def test_bad_stage_settings():
    with pytest.raises(ValueError, match="stage_grid must be 0 or divide"):
        OUNetConfig(sample_shape=(1, 28, 28), num_steps=T, stage_grid=5)
    with pytest.raises(ValueError, match="stage_window must be odd"):
        OUNetConfig(sample_shape=(1, 28, 28), num_steps=T, stage_grid=7, stage_window=4)
    with pytest.raises(ValueError, match="target must be one of"):
        OUNetConfig(sample_shape=(1, 28, 28), num_steps=T, target="score")
    with pytest.raises(ValueError, match="stage_copies must be one of"):
        OUNetConfig(sample_shape=(1, 28, 28), num_steps=T, stage_grid=7, stage_copies="sqrt")


@needs_mnist
def test_two_stage_run_trains_resumes_and_survives_ctrl_c(tmp_path, monkeypatch, capsys):
    store, run = tmp_path / "store", tmp_path / "run"
    assert cli.main(["precompute", "denoiser", "--teacher", f"ddpm-mnist:{MNIST}", "--out", str(store),
                     "--samples", "8", "--steps", "4", "--renoise", "2", "--batch", "8", "--device", "cpu",
                     "--val-fraction", "0.25"]) == 0
    args = ["train", "denoiser", "--store", str(store), "--out", str(run), "--ticks", "1", "--generations", "4",
            "--max-rows", "2000", "--hidden", "2", "--eval-records", "4", "--window", "3", "--modulate", "1",
            "--stage-grid", "7", "--stage-hidden", "3", "--stage-minutes", "0.4", "--target", "v",
            "--stage-copies", "noise", "--tick-seconds", "20"]  # ticks end after 4 generations: the time limits only bound a slow machine
    # Ctrl-C in the coarse stage's second tick: its first tick is saved, nothing of the per-pixel stage exists
    real, calls = runs.fit_tick, []

    def interrupt_second(x, y, **kw):
        calls.append(x.shape[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(x, y, **kw)

    monkeypatch.setattr(runs, "fit_tick", interrupt_second)
    assert cli.main(args) == 130  # as a shell reports Ctrl-C
    assert json.loads((run / "coarse" / "state.json").read_text())["status"] == "interrupted"
    assert not (run / "model.safetensors").exists()
    monkeypatch.setattr(runs, "fit_tick", real)
    assert cli.main(args) == 0  # the same command resumes the coarse stage, finishes it, then trains the rest
    stage_log = (run / "coarse" / "log.jsonl").read_text().splitlines()
    ticks = [json.loads(line)["tick"] for line in stage_log]
    assert ticks == list(range(1, len(ticks) + 1)) and len(ticks) >= 2  # the tick before Ctrl-C, then more
    assert json.loads((run / "coarse" / "state.json").read_text())["status"] == "done"
    u = OUNet.load(run)
    assert u.config.stage_grid == 7 and u.config.target == "v" and u.stage is not None
    assert u.config.stage_copies == "noise" and u.stage.config.in_dim == stage_in_dim(u.config) == 2 + 8 + 2 * 49
    assert torch.equal(u.stage.readout.weight, ola.load(run / "coarse" / "model.safetensors").readout.weight)
    assert cli.main(args) == 0  # a later call trains the per-pixel stage on; the done coarse stage is left alone
    assert (run / "coarse" / "log.jsonl").read_text().splitlines() == stage_log
    assert [json.loads(line)["tick"] for line in (run / "log.jsonl").read_text().splitlines()] == [1, 2]
    state = json.loads((run / "state.json").read_text())
    assert {"heldout_mse", "eps_mse", "rel_err"} <= set(state["best"])
    assert cli.main([*args, "--target", "eps"]) == 2  # other settings: refused, not mixed
    assert cli.main([*args, "--stage-copies", "both"]) == 2
    capsys.readouterr()
    assert cli.main(["info", str(run)]) == 0 and "(noise-scaled copies: noise)" in capsys.readouterr().out
    assert u(torch.zeros(2, 1, 28, 28), torch.tensor([999, 3])).shape == (2, 1, 28, 28)


def test_the_train_flag_offers_exactly_the_copies_the_model_knows():
    from organic_sd.ounet.config import STAGE_COPY_CHOICES
    from organic_sd.ounet.features import STAGE_COPIES

    assert STAGE_COPY_CHOICES == tuple(STAGE_COPIES)  # kept twice so config.py reads without torch


def test_random_starts_without_units_to_move_are_refused():
    from organic_sd.ounet.config import DenoiserTrainConfig

    for kw in ({"refine_start": "random"}, {"refine_start": "random", "refine": 0.9, "hidden": (4, 2)},
               {"stage_refine_start": "random", "stage_refine": 0.0}):
        with pytest.raises(ValueError, match="-start random"):
            DenoiserTrainConfig(store="s", out="o", **kw)


@needs_mnist
def test_random_starts_reach_both_stages_searches(tmp_path, monkeypatch):
    store = tmp_path / "store"
    assert cli.main(["precompute", "denoiser", "--teacher", f"ddpm-mnist:{MNIST}", "--out", str(store),
                     "--samples", "8", "--steps", "4", "--renoise", "2", "--batch", "8", "--device", "cpu",
                     "--val-fraction", "0.25"]) == 0
    real, seen = runs.fit_tick, []
    monkeypatch.setattr(runs, "fit_tick",
                        lambda x, y, **kw: seen.append((x.shape[1], kw["refine"])) or real(x, y, **kw))
    # ticks end after 40 generations: the time limits only bound a slow machine
    assert cli.main(["train", "denoiser", "--store", str(store), "--out", str(tmp_path / "run"), "--ticks", "1",
                     "--generations", "40", "--max-rows", "2000", "--hidden", "2", "--eval-records", "4",
                     "--window", "3", "--modulate", "1", "--stage-grid", "7", "--stage-hidden", "3",
                     "--stage-minutes", "0.4", "--target", "v", "--tick-seconds", "20", "--refine", "0.9",
                     "--refine-start", "random", "--stage-refine", "0.8", "--stage-refine-start", "random"]) == 0
    u = OUNet.load(tmp_path / "run")
    widths = {u.stage.config.in_dim: "stage", u.module.config.in_dim: "stack"}
    assert {widths[w]: r for w, r in seen} == {"stage": ola.Refine.measured(0.8, "random"),
                                              "stack": ola.Refine.measured(0.9, "random")}
    assert u.stage.training_summary["refine"]["start"] == u.module.training_summary["refine"]["start"] == "random"
