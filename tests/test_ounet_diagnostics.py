"""The O-UNet diagnosis benches: mixed DDIM paths (bench/ounet_hybrid.py, bench/ounet_split_paths.py), the gradient reference's fit
(bench/ounet_reference.py) and the low-noise split (bench/ounet_low_noise.py), on tiny random models."""

import sys
from pathlib import Path

import torch
from conftest import T, tiny_ounet

from organic_sd.teachers.ddim import ddim_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from ounet_hybrid import mixed_path  # noqa: E402
from ounet_low_noise import LowNoiseSplit  # noqa: E402
from ounet_reference import adam_fit, heldout  # noqa: E402
from ounet_split_paths import SplitPath  # noqa: E402


def test_mixed_path_is_each_model_alone_at_the_ends_and_differs_between():
    a, b = tiny_ounet(seed=0), tiny_ounet(seed=1)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone_a, alone_b = ddim_sample(a, noise, 4), ddim_sample(b, noise, 4)
    assert torch.allclose(mixed_path(a, b, 4, noise, 4), alone_a)
    assert torch.allclose(mixed_path(a, b, 0, noise, 4), alone_b)
    mid = mixed_path(a, b, 2, noise, 4)
    assert not torch.allclose(mid, alone_a) and not torch.allclose(mid, alone_b)


def test_low_noise_split_uses_the_specialist_below_the_split_only():
    u, other = tiny_ounet(seed=0), tiny_ounet(seed=1)
    split = LowNoiseSplit(u, other.module, T // 2)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([T // 2 - 1, T // 2])
    with torch.no_grad():
        got = split.eps(x, t)
        assert torch.allclose(got[0], other(x[:1], t[:1])[0]) and torch.allclose(got[1], u(x[1:], t[1:])[0])


def test_split_path_runs_the_high_model_from_the_split_up_and_refuses_a_straddling_batch():
    import pytest

    hi, lo = tiny_ounet(seed=0), tiny_ounet(seed=1)
    path = SplitPath(hi, lo, T // 2)
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        for t, owner in ((T // 2, hi), (T - 1, hi), (T // 2 - 1, lo), (0, lo)):
            tt = torch.full((2,), t)
            assert torch.equal(path.eps(x, tt), owner.eps(x, tt)), t
        with pytest.raises(ValueError, match="straddle"):
            path.eps(x, torch.tensor([T // 2 - 1, T // 2]))
        samples = ddim_sample(path, x, 4)
        assert not torch.allclose(samples, ddim_sample(hi, x, 4)) and not torch.allclose(samples, ddim_sample(lo, x, 4))


def test_adam_reference_fits_a_module_of_the_same_shape_better_than_zero():
    u = tiny_ounet(hidden=(4,))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, u.module.in_dim, generator=g)
    y = torch.tanh(x[:, :1] - 0.5 * x[:, 1:2])  # (N, 1)
    m, summary = adam_fit(u.module, x[:1500], y[:1500], x[1500:], y[1500:], seconds=0.5, batch=256)
    assert m.config == u.module.config and not any(p.requires_grad for p in m.parameters())
    assert heldout(m, x[1500:], y[1500:])["rel"] < 0.5 and summary["adam_steps"] > 0


def test_mid_reference_assembles_the_ounet_and_reads_its_mid_stage():
    from ounet_mid_reference import Assembled, fine_columns, mid_grid, mid_rows
    from test_ounet_stage import staged

    from organic_sd.ola.module import OLAConfig, OLAModule
    from organic_sd.ounet.stage import stage_map

    u = staged()  # 2 x 12 x 12, a 4 x 4 coarse stage
    x_t = torch.randn(3, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 7, 15])
    with torch.no_grad():
        assert torch.allclose(Assembled(u, u.module).eps(x_t, t), u(x_t, t), atol=1e-5)  # no mid: the O-UNet itself
        coarse = stage_map(u.config, u.stage, u._schedule, x_t, t)
        rows = mid_rows(u, x_t, t, coarse)
        assert mid_grid(u) == 6 and rows.shape == (3, 36, 3 * 2 * 25 + 3 * 2 * 9 + 2 + 2 * 2)
        mid = OLAModule(OLAConfig(rows.shape[2], 2, (4,), 2.0))
        assert fine_columns(u, mid(rows).reshape(3, -1), t).shape == (3, 144, 3 * 2 * 9)
        fine = OLAModule(OLAConfig(u.config.in_dim + 3 * 2 * 9, 2, (5,), 2.0))
        a = Assembled(u, fine, mid).eps(x_t, t)
        mid.readout.bias.add_(0.5)  # the per-pixel stack reads the mid prediction: moving it moves eps
        assert a.shape == x_t.shape and not torch.allclose(a, Assembled(u, fine, mid).eps(x_t, t))


def test_conv_reference_reads_the_coarse_map_and_returns_eps_of_its_target():
    from ounet_conv_reference import ConvReference
    from test_ounet_stage import staged

    from organic_sd.ounet.stage import stage_map
    from organic_sd.ounet.targets import to_eps

    u = staged()  # 2 x 12 x 12, v target
    net = ConvReference(u, channels=4)
    x_t = torch.randn(3, 2, 12, 12, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([1, 7, 15])
    z = net.inputs(x_t, t)
    assert z.shape == (3, 2 * 2 + 2, 12, 12)
    assert torch.allclose(z[:, 2:4], stage_map(u.config, u.stage, u._schedule, x_t, t))
    with torch.no_grad():
        net.readout.weight.zero_(), net.readout.bias.fill_(0.25)  # predicts v = 0.25 everywhere
    ab = u._schedule[t].float()
    assert torch.allclose(net.eps(x_t, t), to_eps("v", torch.full_like(x_t, 0.25), x_t, ab), atol=1e-6)


def test_conv_reference_below_a_step_hands_the_others_to_the_o_unet():
    from ounet_conv_reference import ConvReference
    from test_ounet_stage import staged

    u = staged()
    net = ConvReference(u, channels=4)
    with torch.no_grad():
        net.readout.weight.zero_(), net.readout.bias.fill_(0.25)
    mixed = SplitPath(u, net, 8)  # what --below 8 samples with
    x_t = torch.randn(2, 2, 12, 12, generator=torch.Generator().manual_seed(1))
    for step in (3, 7, 8, 15):  # a DDIM batch shares one step
        t = torch.full((2,), step)
        want = (net if step < 8 else u).eps(x_t, t)
        assert torch.equal(mixed.eps(x_t, t), want)
    assert not torch.allclose(net.eps(x_t, torch.full((2,), 15)), u.eps(x_t, torch.full((2,), 15)))
