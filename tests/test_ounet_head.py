import pytest
import torch

from organic_sd import ola
from organic_sd.data.denoiser_precompute import precompute_denoiser
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ounet import OUNet, OUNetConfig
from organic_sd.ounet.head import head_rows
from organic_sd.ounet.train_head import fit_head
from organic_sd.ounet.features import features

T = 40


class FakeTeacher:
    """eps a linear map of x_t whose gain changes by noise level: what a per-bucket head can take."""

    id = "fake-levels"
    device = torch.device("cpu")
    sample_shape = (1, 6, 6)
    cond_shape = None
    pixel_range = (-1.0, 1.0)
    alphas_cumprod = torch.linspace(0.99, 0.05, T, dtype=torch.float64)

    def eps(self, x_t, t, cond=None):
        gain = torch.where(torch.as_tensor(t) < T // 2, 0.3, -0.6).float().reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        return gain * x_t + 0.2 * torch.roll(x_t, 1, 3)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("levels") / "store"
    precompute_denoiser(FakeTeacher(), path, 40, steps=4, renoise=4, batch=20, val_fraction=0.25, progress=False)
    return DenoiserStore.open(path)


def _stack(cfg, seed=0, scale=0.05):
    m = ola.OLAModule(ola.OLAConfig(cfg.in_dim, 1, (3,), out_scale=2.0))
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.copy_(scale * torch.randn(p.shape, generator=g))
    return m


def test_head_is_evolved_per_bucket_and_survives_a_round_trip(tmp_path, store):
    torch.set_num_threads(1)
    cfg = OUNetConfig(sample_shape=(1, 6, 6), num_steps=T, window=3, grid=2, freqs=1, modulate=1, teacher="fake")
    u = OUNet(cfg, _stack(cfg), FakeTeacher.alphas_cumprod)
    u2, rep = fit_head(u, store, buckets=4, generations=150, max_rows=6000, eval_records=40,
                       log_to=open("/dev/null", "w"))
    assert rep["kept"] and rep["after"]["heldout_mse"] < 0.5 * rep["before"]["heldout_mse"]
    assert u2.config.head_buckets == 4 and u2.num_parameters() == u.num_parameters() + 4 * 10 + 1
    # the convolution path equals the rows the head was evolved on
    x, t = torch.randn(5, 1, 6, 6), torch.tensor([0, 9, 10, 25, 39])
    rows = u2.module(features(u2.config, u2._schedule, x, t)) + u2.head(head_rows(u2.config, x, t))  # (B, HW, 1)
    torch.testing.assert_close(u2(x, t), rows.transpose(1, 2).reshape(5, 1, 6, 6), atol=2e-5, rtol=1e-4)
    path = u2.save(tmp_path / "h.safetensors")
    torch.testing.assert_close(OUNet.load(path)(x, t), u2(x, t))
    # refitting drops the old head instead of stacking a second one on it
    u3, _ = fit_head(u2, store, buckets=2, generations=20, max_rows=2000, eval_records=40,
                     log_to=open("/dev/null", "w"))
    assert u3.config.head_buckets in (0, 2)


def test_a_head_keeps_the_low_noise_stack_it_is_fitted_beside(store):
    cfg = OUNetConfig(sample_shape=(1, 6, 6), num_steps=T, window=3, grid=2, freqs=1, modulate=1, teacher="fake",
                      low_split=T // 2)
    u = OUNet(cfg, _stack(cfg), FakeTeacher.alphas_cumprod, low=_stack(cfg, seed=1))
    u2, rep = fit_head(u, store, buckets=2, generations=40, max_rows=2000, eval_records=40,
                       log_to=open("/dev/null", "w"))
    assert u2.low is u.low and u2.config.low_split == T // 2


def test_head_shape_must_match_its_buckets():
    cfg = OUNetConfig(sample_shape=(1, 6, 6), num_steps=T, window=3, grid=2, freqs=1, head_buckets=2)
    with pytest.raises(ValueError, match="needs a linear head"):
        OUNet(cfg, _stack(cfg), FakeTeacher.alphas_cumprod)
    with pytest.raises(ValueError, match="needs a linear head"):
        OUNet(cfg, _stack(cfg), FakeTeacher.alphas_cumprod, head=ola.OLAModule(ola.OLAConfig(5, 1)))


def test_cli_writes_the_o_unet_with_or_without_its_head(tmp_path, store, capsys):
    from organic_sd import cli

    cfg = OUNetConfig(sample_shape=(1, 6, 6), num_steps=T, window=3, grid=2, freqs=1, modulate=1, teacher="fake")
    path = OUNet(cfg, _stack(cfg), FakeTeacher.alphas_cumprod).save(tmp_path / "u.safetensors")
    out = tmp_path / "h.safetensors"
    assert cli.main(["train", "denoiser-head", "--ounet", str(path), "--store", str(store.path), "--out", str(out),
                     "--buckets", "2", "--max-minutes", "0.02", "--max-rows", "2000", "--eval-records", "20"]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    assert OUNet.load(out).config.head_buckets in (0, 2)
