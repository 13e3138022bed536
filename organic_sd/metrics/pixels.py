"""Pixel measures between images (or latents): PSNR, SSIM, cosine.

    psnr_of_mse   PSNR in dB of one MSE, for a value range (2 wide for [-1, 1], 1 for [0, 1]); pooled:
                  the MSE is over every pixel of every image
    pooled_psnr   psnr_of_mse of the MSE over all pixels of two image sets
    ssim          gaussian-window SSIM (11 x 11, sigma 1.5, valid positions) on [0, 1], mean over channels
    ms_ssim       multi-scale SSIM (Wang, Simoncelli & Bovik 2003): contrast-structure at 4 scales, full SSIM at the
                  5th (each a 2x2 average-pooled copy of the last), combined with the paper's weights
    cosine_rows   cosine between matching rows
    image_metrics l2, cosine, psnr, ssim of one image pair in [-1, 1] (the package boundary)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MSE_FLOOR = 1e-12  # identical images: PSNR 10 log10(width^2 / 1e-12), finite for json and tables


def psnr_of_mse(mse: float, width: float = 2.0) -> float:
    """PSNR in dB of an MSE measured on a range `width` wide: on [0, 1] from an MSE on [-1, 1] by default."""
    return 10.0 * math.log10(width ** 2 / max(float(mse), MSE_FLOOR))


def pooled_psnr(a: torch.Tensor, b: torch.Tensor, width: float = 2.0) -> float:
    """PSNR in dB of the MSE over every pixel of two image sets (not the mean of per-image PSNRs)."""
    return psnr_of_mse(float((a.double() - b.double()).square().mean()), width)


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between matching rows of a, b (N, D) -> (N,)."""
    return F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_cs(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and its contrast-structure term of images x, y (B, C, H, W) on [0, 1], per channel -> ((B, C), (B, C))."""
    C = x.shape[1]
    size = min(11, x.shape[-1], x.shape[-2])
    g = _gauss(size).to(x.device)
    rows, cols = g.reshape(1, 1, 1, size).expand(C, 1, 1, size), g.reshape(1, 1, size, 1).expand(C, 1, size, 1)
    # the 2-D gaussian is separable: two 1-D passes, k times fewer multiplies than one k x k kernel
    blur = lambda t: F.conv2d(F.conv2d(t, rows, groups=C), cols, groups=C)  # noqa: E731  ("valid": no border padding)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    s = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs
    return s.mean(dim=(2, 3)), cs.mean(dim=(2, 3))


def _unit(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"{name}: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a.double() + 1) / 2, (b.double() + 1) / 2


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of images a, b (B, C, H, W) in [-1, 1] -> (B,), computed on [0, 1] (Wang et al. 2004 constants)."""
    return _ssim_cs(*_unit(a, b, "ssim"))[0].mean(dim=1)


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang, Simoncelli & Bovik 2003, finest scale first


def ms_scales(side: int) -> int:
    """Scales MS-SSIM uses for images whose shorter side is `side`: up to 5, while the coarsest keeps 11 pixels."""
    if side < 22:
        return 1
    return min(len(MS_SSIM_WEIGHTS), 1 + int(math.floor(math.log2(side / 11))))


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Multi-scale SSIM of images a, b (B, C, H, W) in [-1, 1] -> (B,), on [0, 1].

    prod_j cs_j^w_j over the finer scales times ssim_M^w_M at the coarsest, each scale a 2x2 average pool of the
    last (odd sides padded, as pytorch-msssim does), per channel, then the mean over channels. Images smaller than 176 pixels (11 at the 5th scale) use
    fewer scales, their weights renormalised to sum to 1. Negative terms count as 0 (a fractional power of a
    negative number has no real value), so the result lies in [0, 1], 1 for identical images."""
    x, y = _unit(a, b, "ms_ssim")
    M = ms_scales(min(x.shape[-2:]))
    w = torch.tensor(MS_SSIM_WEIGHTS[:M], dtype=torch.float64, device=x.device)
    w = w / w.sum()
    terms = []
    for j in range(M):
        s, cs = _ssim_cs(x, y)
        terms.append(s if j == M - 1 else cs)
        if j < M - 1:
            pad = [n % 2 for n in x.shape[-2:]]
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    t = torch.stack(terms, dim=-1).clamp(min=0)  # (B, C, M)
    return (t ** w).prod(dim=-1).mean(dim=1)


def image_metrics(pred: torch.Tensor, ref: torch.Tensor) -> dict:
    """l2 (MSE on [-1, 1]), cosine, psnr, ssim, ms_ssim of one image pair (1, 3, H, W) in [-1, 1]."""
    p, r = pred.double().cpu(), ref.double().cpu()
    mse = float((p - r).square().mean())
    return {"l2": mse, "cosine": float(cosine_rows(p.flatten()[None], r.flatten()[None])[0]),
            "psnr": psnr_of_mse(mse), "ssim": float(ssim(p, r)[0]), "ms_ssim": float(ms_ssim(p, r)[0])}


def mean_image_psnr(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over images of each image's PSNR (B, C, H, W) in [-1, 1]; not the pooled_psnr of the set."""
    return sum(psnr_of_mse(float((p.double() - r.double()).square().mean())) for p, r in zip(pred, ref)) / len(ref)
