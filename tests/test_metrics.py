import numpy as np
import pytest
import torch

from organic_sd.metrics.pixels import image_metrics, mean_image_psnr, pooled_psnr, psnr_of_mse, ssim


def test_metrics_known_values():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    m = image_metrics(x[:1], x[:1])
    assert m["l2"] == 0 and m["cosine"] == pytest.approx(1) and m["ssim"] == pytest.approx(1)
    y = x[:1] + 0.2  # MSE 0.04 on [-1, 1] is 0.01 on [0, 1]: 20 dB
    assert image_metrics(y, x[:1])["psnr"] == pytest.approx(20.0, abs=1e-6)
    assert float(ssim(x[:1], -x[:1])[0]) < 0.1


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((3, 40, 48))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    ref = metrics.structural_similarity(a, b, data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    ours = float(ssim(torch.from_numpy(a)[None] * 2 - 1, torch.from_numpy(b)[None] * 2 - 1)[0])
    assert ours == pytest.approx(ref, abs=2e-3)


def test_pooled_and_per_image_mean_psnr_differ_as_named():
    ref = torch.zeros(2, 3, 8, 8)
    pred = torch.cat([torch.full((1, 3, 8, 8), 0.2), torch.full((1, 3, 8, 8), 0.02)])  # MSE 0.04 and 0.0004
    assert psnr_of_mse(0.04) == pytest.approx(20.0)  # on [-1, 1]: 0.01 on [0, 1]
    assert mean_image_psnr(pred, ref) == pytest.approx((20.0 + 40.0) / 2)
    assert pooled_psnr(pred, ref) == pytest.approx(psnr_of_mse((0.04 + 0.0004) / 2))
    assert pooled_psnr(ref, ref) == pytest.approx(psnr_of_mse(0.0)) and np.isfinite(pooled_psnr(ref, ref))


def test_ms_ssim_known_properties():
    from organic_sd.metrics.pixels import ms_scales, ms_ssim

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 256, 256, generator=g) * 2 - 1
    assert torch.allclose(ms_ssim(x, x), torch.ones(2, dtype=torch.float64))
    noisy = [(x + s * torch.randn(x.shape, generator=g)).clamp(-1, 1) for s in (0.05, 0.2, 0.5)]
    scores = [float(ms_ssim(n, x)[0]) for n in noisy]
    assert 1 > scores[0] > scores[1] > scores[2] >= 0  # more noise, lower
    assert torch.allclose(ms_ssim(noisy[1], x), ms_ssim(x, noisy[1]))  # symmetric
    assert ms_scales(256) == 5 and ms_scales(176) == 5 and ms_scales(175) == 4 and ms_scales(21) == 1
    a, b = x[:, :, :16, :16], noisy[1][:, :, :16, :16]  # one scale: MS-SSIM is SSIM (weights renormalised to 1)
    assert torch.allclose(ms_ssim(a, b), ssim(a, b))
    assert image_metrics(x[:1], x[:1])["ms_ssim"] == pytest.approx(1)


def test_ms_ssim_matches_pytorch_msssim_values():
    # values of pytorch-msssim 1.0.0 `ms_ssim(a, b, data_range=1)` on these inputs (an independent implementation;
    # its float32 gaussian window explains the last digits)
    from organic_sd.metrics.pixels import ms_ssim

    rng = np.random.default_rng(0)
    a = rng.random((1, 3, 192, 200))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    c = np.clip(a + 0.3 * rng.standard_normal(a.shape), 0, 1)
    to = lambda t: torch.from_numpy(t) * 2 - 1  # noqa: E731  [0, 1] -> [-1, 1], the package boundary
    assert float(ms_ssim(to(a), to(b))[0]) == pytest.approx(0.9532966241800201, abs=1e-4)
    assert float(ms_ssim(to(a), to(c))[0]) == pytest.approx(0.7245585064312378, abs=1e-4)
