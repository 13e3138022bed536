"""The O-UNet diagnosis benches: mixed DDIM paths (bench/ounet_hybrid.py), the gradient reference's fit
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


def test_adam_reference_fits_a_module_of_the_same_shape_better_than_zero():
    u = tiny_ounet(hidden=(4,))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, u.module.in_dim, generator=g)
    y = torch.tanh(x[:, :1] - 0.5 * x[:, 1:2])  # (N, 1)
    m, summary = adam_fit(u.module, x[:1500], y[:1500], x[1500:], y[1500:], seconds=0.5, batch=256)
    assert m.config == u.module.config and not any(p.requires_grad for p in m.parameters())
    assert heldout(m, x[1500:], y[1500:])["rel"] < 0.5 and summary["adam_steps"] > 0
