"""--t-weight update: rows weighted by how much their error moves a DDIM update (ounet/targets.update_weight)."""

import math

import numpy as np
import pytest
import torch
from conftest import MNIST, T, needs_mnist, schedule

from organic_sd import cli
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ounet.config import DenoiserTrainConfig
from organic_sd.ounet.targets import TARGETS, from_eps, record_weights, to_eps, update_weight
from organic_sd.ounet.train import pool_weights, sample_rows
from organic_sd.teachers.ddim import ddim_step


@pytest.mark.parametrize("target", TARGETS)
def test_update_weight_is_the_squared_move_of_one_ddim_step(target):
    ab = schedule()
    steps = 4
    g = torch.Generator().manual_seed(0)
    for t in (T - 1, T // 2, T // 4 + 1, 3):
        x_t, eps = torch.randn(64, generator=g), torch.randn(64, generator=g)
        a = float(ab[t])
        nxt = t - T // steps
        a_next = float(ab[nxt]) if nxt >= 0 else 1.0
        pred = from_eps(target, eps, x_t, torch.tensor([a]))
        d = 1e-3 * torch.randn(64, generator=g)
        moved = ddim_step(x_t, to_eps(target, pred + d, x_t, torch.tensor([a])), a, a_next)
        base = ddim_step(x_t, eps, a, a_next)
        want = float((moved - base).double().square().sum() / d.double().square().sum())
        got = float(update_weight(target, ab, torch.tensor([t]), steps))
        assert math.isclose(got, want, rel_tol=1e-3), (target, t, got, want)


def test_update_weights_favour_the_low_noise_steps_for_v():
    ddpm = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)  # DDPM's linear betas
    w = update_weight("v", ddpm, torch.tensor([999, 499, 124]), 8)
    assert w[0] < w[1] < w[2] and w[2] > 100 * w[0]  # the top step moves x_t least
    assert record_weights("uniform", "v", schedule(), torch.tensor([1, 2]), 8) is None
    r = record_weights("update", "v", schedule(), torch.tensor([T - 1, 1, T // 8]), 8)
    assert math.isclose(float(r.sum()), 1.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="t_weight"):
        record_weights("flat", "v", schedule(), torch.tensor([1]), 8)


def test_weighted_draws_follow_the_weights():
    class Cfg:
        sample_shape = (1, 2, 2)

    pool = np.arange(1000)
    p = np.where(pool < 100, 9.0, 1.0)
    p /= p.sum()
    rows = lambda j: (torch.from_numpy(j)[:, None].repeat(4, 1).reshape(-1, 1).float(),) * 2  # noqa: E731
    x, _ = sample_rows(Cfg, pool, 200, np.random.default_rng(0), rows, p)
    low = float((x < 100).float().mean())
    assert low > 0.25  # 100 of 1000 records hold half the weight; uniform draws give ~0.1
    x, _ = sample_rows(Cfg, pool, 200, np.random.default_rng(0), rows)
    assert float((x < 100).float().mean()) < 0.18


def test_config_refuses_bad_weight_steps():
    with pytest.raises(ValueError, match="weight-steps"):
        DenoiserTrainConfig(store="s", out="o", weight_steps=0)


@needs_mnist
def test_weighted_run_draws_low_noise_records_and_resume_keeps_the_weighting(tmp_path):
    store, run = tmp_path / "store", tmp_path / "run"
    assert cli.main(["precompute", "denoiser", "--teacher", f"ddpm-mnist:{MNIST}", "--out", str(store),
                     "--samples", "8", "--steps", "4", "--renoise", "2", "--batch", "8", "--device", "cpu"]) == 0
    s = DenoiserStore.open(store)
    pool = s.indices("train")
    cfg = DenoiserTrainConfig(store=str(store), out=str(run), t_weight="update")
    p = pool_weights(cfg, "v", torch.from_numpy(s.alphas_cumprod), s, pool)
    t = s.t[pool]
    assert p is not None and p[t < 300].sum() / max((t < 300).mean(), 1e-9) > p[t > 900].sum() / max(
        (t > 900).mean(), 1e-9)  # per record, low noise weighs more than the top steps
    assert pool_weights(DenoiserTrainConfig(store=str(store), out=str(run)), "v",
                        torch.from_numpy(s.alphas_cumprod), s, pool) is None
    args = ["train", "denoiser", "--store", str(store), "--out", str(run), "--ticks", "1", "--generations", "3",
            "--max-rows", "1000", "--hidden", "2", "--eval-records", "4", "--window", "3", "--modulate", "1",
            "--target", "v", "--t-weight", "update", "--tick-seconds", "20"]
    assert cli.main(args) == 0
    assert cli.main([*args[:-4], "--tick-seconds", "20"]) == 2  # the same run with uniform rows: refused
    assert cli.main(args) == 0  # the same weighting resumes
