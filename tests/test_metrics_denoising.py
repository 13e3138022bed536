import pytest
import torch
from test_metrics_samples import S, digits, shuffle_pixels

from organic_sd.metrics.denoising import denoising_error, probe_steps

T = 100


class GaussianJudge:
    """The exact denoiser of a Gaussian fitted to the synthetic digits: it knows their pixel correlations."""

    pixel_range = (-1.0, 1.0)
    sample_shape = (1, S, S)
    device = torch.device("cpu")

    def __init__(self, data: torch.Tensor):
        x = data.flatten(1).double()  # (N, d)
        self.mu = x.mean(0)
        self.cov = torch.cov(x.T) + 1e-4 * torch.eye(x.shape[1], dtype=torch.float64)
        self.alphas_cumprod = torch.linspace(0.9999, 0.01, T, dtype=torch.float64)

    def eps(self, x_t, t, cond=None):
        a = self.alphas_cumprod[t][:, None]  # (B, 1)
        x = x_t.flatten(1).double()
        out = []
        for xi, ai in zip(x, a):  # x0 = mu + sqrt(a) S (a S + (1 - a) I)^-1 (x_t - sqrt(a) mu)
            m = ai * self.cov + (1 - ai) * torch.eye(len(self.mu), dtype=torch.float64)
            x0 = self.mu + ai.sqrt() * self.cov @ torch.linalg.solve(m, xi - ai.sqrt() * self.mu)
            out.append((xi - ai.sqrt() * x0) / (1 - ai).sqrt())
        return torch.stack(out).float().view(x_t.shape)


@pytest.fixture(scope="module")
def judge():
    return GaussianJudge(digits(2000, seed=0))


def speckle(x: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """A share of the pixels set to full ink: what the per-pixel O-UNets' samples look like up close."""
    g = torch.Generator().manual_seed(seed)
    out = x.clone()
    out[torch.rand(x.shape, generator=g) < share] = 1.0
    return out


def test_probe_steps_scale_with_the_schedule():
    assert probe_steps(1001) == (50, 100, 150)
    assert probe_steps(22) == (1, 2, 3)
    assert probe_steps(2) == (1, 1, 1)
    with pytest.raises(ValueError, match="at least 2"):
        probe_steps(1)


def test_unseen_digits_score_better_than_speckled_shuffled_or_noise(judge):
    x = digits(64, seed=1)  # drawn like the judge's data, never shown to it
    g = torch.Generator().manual_seed(2)
    clean = float(denoising_error(judge, x).mean())
    damaged = {"speckle 3%": speckle(x, 0.03, 3), "shuffled pixels": shuffle_pixels(x, 4),
               "noise": 2 * torch.rand(x.shape, generator=g) - 1}
    for name, y in damaged.items():
        assert float(denoising_error(judge, y).mean()) > 1.5 * clean, name


def test_a_sample_scores_the_same_in_any_batch(judge):
    x = digits(10, seed=5)
    whole = denoising_error(judge, x, batch=256)
    assert torch.allclose(denoising_error(judge, x, batch=3), whole)
    assert torch.allclose(denoising_error(judge, x[4:6]), whole[4:6])


def test_samples_in_another_range_are_mapped_onto_the_judges(judge):
    x = digits(8, seed=6)
    assert torch.allclose(denoising_error(judge, (x + 1) / 2, pixel_range=(0.0, 1.0)), denoising_error(judge, x))
    # overshoot past the clean range is clamped: the image that would be shown is scored
    assert torch.allclose(denoising_error(judge, 3 * x.sign()), denoising_error(judge, x.sign()))


def test_wrong_shapes_are_refused(judge):
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        denoising_error(judge, torch.zeros(4, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, 16, 16\)"):
        denoising_error(judge, torch.zeros(1, 16, 16))
