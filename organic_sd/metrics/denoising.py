"""How plausible a sample's fine structure is to a denoiser: its eps error on the sample noised a little.

The pooled KID / precision / recall (metrics/samples.py) compare shapes at 7x7 on MNIST; they cannot
see the speckle and broken strokes that make a sample unreadable (measured: a multi-scale O-UNet whose
grid shows tangles scored a lower pooled KID than the teacher's own 8-step samples, and sprinkling 2%
bright pixels on the teacher's samples *lowered* their KID). A denoiser is a model of the data at
every noise level; at low noise it knows strokes. So each sample x0 (clamped to the judge's pixel
range) is noised at a few fixed low-noise probes, the same for every sample,

    x_t = sqrt(ab[t]) x0 + sqrt(1 - ab[t]) noise,     t = 5%, 10%, 15% of the schedule, 2 noises each,

and the judge's mean squared eps error over probes and pixels is the sample's score: low for images
the judge would have drawn, high for speckle, noise and shuffled pixels. Measured with the MNIST DiT
judging the DDPM's samples (t = 50 / 100 / 150, 300 samples each): 50-step samples 0.122, 8-step 0.153,
the O-UNets 0.23-0.27, pixel-shuffled digits 0.86, uniform noise 1.71 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import torch

from organic_sd.metrics.class_fidelity import make_probes

LOW_NOISE = (0.05, 0.10, 0.15)  # probe steps as fractions of the schedule (t = 50, 100, 150 of 1000)
PROBE_NOISES = 2
PROBE_SEED = 20261204  # fixed: a sample's score never depends on its batch or on the other samples


def probe_steps(num_steps: int, fractions=LOW_NOISE) -> tuple[int, ...]:
    """Probe steps of a num_steps schedule: each fraction of the last step, at least step 1."""
    if num_steps < 2:
        raise ValueError(f"a schedule needs at least 2 steps, got {num_steps}")
    return tuple(max(1, round(f * (num_steps - 1))) for f in fractions)


def denoising_error(judge, images: torch.Tensor, pixel_range=None, fractions=LOW_NOISE,
                    noises: int = PROBE_NOISES, seed: int = PROBE_SEED, batch: int = 256) -> torch.Tensor:
    """(N, C, H, W) samples -> (N,) float64 mean eps error of `judge` on them, noised at the low-noise probes.

    judge: anything with eps(x_t, t, cond=None), alphas_cumprod and sample_shape (a teacher, an O-UNet).
    pixel_range: the samples' (lo, hi), mapped linearly onto the judge's own `pixel_range` (a judge without
    one takes the samples' range), so one model can judge another's samples; None: the judge's range.
    """
    shape = tuple(judge.sample_shape)
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(f"images must be (N, {', '.join(map(str, shape))}) samples for this judge, got "
                         f"{tuple(images.shape)}")
    ab = torch.as_tensor(judge.alphas_cumprod, dtype=torch.float64).cpu()  # (T,)
    t_p, noise_p = make_probes(shape, probe_steps(len(ab), fractions), noises, seed)  # (P,), (P, C, H, W)
    lo, hi = getattr(judge, "pixel_range", None) or pixel_range or (-1.0, 1.0)
    src = pixel_range or (lo, hi)
    # few-step samples overshoot the clean range: score the image that would be shown
    x0 = (images.detach().double().cpu().clamp(*src) - src[0]) / (src[1] - src[0]) * (hi - lo) + lo
    dev = getattr(judge, "device", torch.device("cpu"))
    out = torch.zeros(len(x0), dtype=torch.float64)
    with torch.no_grad():
        for b0 in range(0, len(x0), batch):
            xb = x0[b0:b0 + batch].float()  # (b, C, H, W)
            for t, noise in zip(t_p.tolist(), noise_p):
                a = float(ab[t])
                x_t = (a ** 0.5 * xb + (1 - a) ** 0.5 * noise).to(dev)
                eps = judge.eps(x_t, torch.full((len(xb),), t, device=dev)).float().cpu()
                out[b0:b0 + len(xb)] += ((eps - noise) ** 2).flatten(1).mean(1).double() / len(t_p)
    return out
