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
