import pytest
import torch

from organic_sd.global_shift import GlobalShift, ShiftConfig, global_stats
from organic_sd.ola.module import OLAConfig, OLAModule


def _module(i: int, o: int, seed: int) -> OLAModule:
    m = OLAModule(OLAConfig(i, o))
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.data = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
    return m


def random_shift(C=4, O=3, maps=2, seed=0) -> GlobalShift:
    """A global shift with random weights (and a random standardisation)."""
    cfg = ShiftConfig(C, O, maps)
    F_ = cfg.n_stats
    g = torch.Generator().manual_seed(seed + 99)
    return GlobalShift(cfg, [_module(F_, O, seed + k) for k in range(maps)],
                       _module(F_, 1, seed + 9) if maps == 2 else None,
                       torch.randn(F_, generator=g) * 0.1, torch.rand(F_, generator=g) + 0.5)


def test_statistics_of_known_maps():
    z = torch.zeros(2, 4, 3, 5)
    z[0, 1] = 2.0  # a constant channel: mean 2, no spread, no differences
    z[1, 2, :, ::2] = 1.0  # stripes: mean 3/5, every horizontal step 1, no vertical one
    y = torch.full((2, 3, 8, 8), -0.5)
    s = global_stats(z, y)
    assert s.shape == (2, 4 * 4 + 3 * 3)
    zm, zs, dx, dy, ym, ys, yx = s.split([4, 4, 4, 4, 3, 3, 3], 1)
    assert zm[0, 1] == 2 and zs[0, 1] == 0 and dx[0, 1] == 0
    assert torch.isclose(zm[1, 2], torch.tensor(0.6)) and dx[1, 2] == 1 and dy[1, 2] == 0
    assert torch.isclose(zs[1, 2], torch.tensor(0.6 * 0.4) ** 0.5)
    assert torch.all(ym == -0.5) and torch.all(ys == 0) and torch.all(yx == 0)
    one = global_stats(torch.randn(2, 4, 1, 1), torch.randn(2, 3, 8, 8))  # a one-cell latent: no neighbours, no NaN
    assert torch.isfinite(one).all() and torch.all(one[:, 8:16] == 0)


def test_one_number_per_image_and_channel_and_the_probe_picks_the_map():
    sh = random_shift(maps=2)
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(6, 4, 4, 4, generator=g), torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
    out = sh(z, y)
    d = out - y  # (y + s) - y: s to float32 rounding
    assert torch.allclose(d, d[:, :, :1, :1].expand_as(d), rtol=0, atol=1e-6)  # constant over each image's channel
    s = sh.features(z, y)
    first = (sh.probe(s) > 0)[:, 0]
    want = torch.where(first[:, None], sh.maps[0](s), sh.maps[1](s))
    assert torch.allclose(d[:, :, 0, 0], want, atol=1e-6)
    with torch.no_grad():  # a probe that always says "first" gives the first map's shifts everywhere
        sh.probe.readout.weight.zero_()
        sh.probe.readout.bias.fill_(1.0)
    assert torch.allclose((sh(z, y) - y)[:, :, 0, 0], sh.maps[0](s), atol=1e-6)


def test_round_trip_through_its_description():
    for maps in (1, 2):
        sh = random_shift(maps=maps)
        sh.training_summary = {"seconds": 2.0}
        back = GlobalShift.from_description(sh.describe(), sh.state_dict(), "here")
        z, y = torch.randn(2, 4, 3, 3), torch.randn(2, 3, 24, 24)
        assert torch.equal(back(z, y), sh(z, y)) and back.describe() == sh.describe()
    bad = dict(sh.state_dict())
    del bad["probe.readout.bias"]
    with pytest.raises(ValueError, match="here: global shift weights do not match"):
        GlobalShift.from_description(sh.describe(), bad, "here")


def test_wrong_shapes_are_refused():
    cfg = ShiftConfig(4, 3, 2)
    F_ = cfg.n_stats
    with pytest.raises(ValueError, match="1 or 2 maps"):
        ShiftConfig(4, 3, 3)
    with pytest.raises(ValueError, match="needs 2 map"):
        GlobalShift(cfg, [_module(F_, 3, 0)], _module(F_, 1, 1), torch.zeros(F_), torch.ones(F_))
    with pytest.raises(ValueError, match="a probe"):
        GlobalShift(cfg, [_module(F_, 3, 0), _module(F_, 3, 1)], None, torch.zeros(F_), torch.ones(F_))
    with pytest.raises(ValueError, match="standardises"):
        GlobalShift(ShiftConfig(4, 3), [_module(F_, 3, 0)], None, torch.zeros(3), torch.ones(F_))
