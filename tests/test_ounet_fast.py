import pytest
import torch

from organic_sd import ola
from organic_sd.ounet import OUNet, OUNetConfig
from organic_sd.ounet.features import features

T = 50


@pytest.mark.parametrize("kw", [
    dict(modulate=0, gain=0, hidden=()),
    dict(modulate=3, gain=0, hidden=(5,)),
    dict(modulate=3, gain=5, hidden=(6, 4)),
    dict(modulate=5, gain=3, hidden=(7,), cond_dim=3),
    dict(modulate=3, gain=0, hidden=(5,), coarse=2),
    dict(modulate=0, gain=3, hidden=(4, 3), coarse=2, cond_dim=2),
])
def test_convolution_path_equals_the_rows_the_search_scored(kw):
    """OUNet.forward folds the stack into convolutions; it must be the function training scored on rows."""
    kw = dict(kw)
    hidden = kw.pop("hidden")
    g = torch.Generator().manual_seed(0)
    cfg = OUNetConfig(sample_shape=(2, 10, 12), num_steps=T, window=5, grid=3, freqs=2, **kw)
    m = ola.OLAModule(ola.OLAConfig(cfg.in_dim, 2, hidden, out_scale=3.0))
    for p in m.parameters():
        p.copy_(0.2 * torch.randn(p.shape, generator=g))
    u = OUNet(cfg, m, torch.linspace(0.999, 0.01, T, dtype=torch.float64))
    x = torch.randn(4, 2, 10, 12, generator=g)
    cond = torch.randn(4, cfg.cond_dim, generator=g) if cfg.cond_dim else None
    for t in (torch.tensor([3, 3, 40, 17]), torch.full((4,), 49)):  # mixed noise levels, and one level
        ref = m(features(cfg, u._schedule, x, t, cond)).transpose(1, 2).reshape(4, 2, 10, 12)
        torch.testing.assert_close(u(x, t, cond), ref, atol=2e-5, rtol=1e-4)
