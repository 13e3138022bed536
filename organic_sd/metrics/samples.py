"""Distribution measures of generated samples: KID and improved precision / recall in a pooled shape space.

Same-noise PSNR rewards a clone for matching the teacher pixel by pixel; it cannot tell digits from
blobs on a mostly black background. These measures compare two *sets* of samples instead:

    space       samples clamped to the pixel range, average-pooled `pool` x `pool` (28x28 MNIST -> 7x7),
                flattened, centred on the reference set's mean and divided by one scale (the root of the
                reference's mean feature variance), so every teacher's units give comparable numbers
    KID         unbiased MMD^2 with the cubic kernel k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018)
    P / R       improved precision / recall (Kynkaanniemi et al. 2019): a set's manifold is the union of
                balls around its samples, each with the radius to its k-th nearest neighbour in that set;
                precision = share of generated samples inside the reference manifold, recall the reverse

`paired=True` says gen[i] and ref[i] came from the same starting noise (e.g. 8-step and 50-step DDIM of
one seed). Such pairs are far closer than two independent samples, so the measures skip the partner:
the KID's cross term runs over i != j (Gretton et al. 2012's U-statistic, unbiased for iid pairs) and
sample i is tested against the other set's manifold without its partner.
Everything runs in float64 on the features' device, in row blocks, so 10,000 samples fit in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLOCK = 1024  # rows per kernel / distance block: BLOCK x N float64 (80 MB at N = 10,000)


def pooled_features(images: torch.Tensor, pixel_range=(-1.0, 1.0), pool: int = 4) -> torch.Tensor:
    """(N, C, H, W) samples in teacher units -> (N, C (H/pool) (W/pool)) float64 pooled features."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    N, C, H, W = images.shape
    if pool < 1 or H % pool or W % pool:
        raise ValueError(f"pool {pool} must divide the sample's height and width {H}x{W}")
    lo, hi = pixel_range
    x = images.detach().to(torch.float64).clamp(lo, hi)  # overshoot past the clean range is not shape
    return F.avg_pool2d(x, pool).flatten(1)  # (N, C h w)


@dataclass
class SampleSpace:
    """The reference set's centre and single scale; calling it maps features into the shared space."""

    mean: torch.Tensor  # (d,) float64
    scale: float

    @classmethod
    def fit(cls, ref: torch.Tensor) -> SampleSpace:
        """Centre and scale of (N, d) reference features; one scale keeps the features' relative weights."""
        if ref.ndim != 2 or ref.shape[0] < 2:
            raise ValueError(f"reference features must be (N >= 2, d), got shape {tuple(ref.shape)}")
        ref = ref.to(torch.float64)
        scale = math.sqrt(float(ref.var(0, unbiased=False).mean()))
        if not scale > 0:
            raise ValueError("the reference features do not vary: no scale for the sample space")
        return cls(ref.mean(0), scale)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, d) features -> (N, d) centred and scaled."""
        return (feats.to(torch.float64) - self.mean.to(feats.device)) / self.scale


def _check_pair(a: torch.Tensor, b: torch.Tensor, paired: bool, least: int) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, d) with the same d, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[0], b.shape[0]) < least:
        raise ValueError(f"need at least {least} samples in each set, got {a.shape[0]} and {b.shape[0]}")
    if paired and a.shape[0] != b.shape[0]:
        raise ValueError(f"paired sets must have the same size, got {a.shape[0]} and {b.shape[0]}")


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, skip_diagonal: bool) -> float:
    """Sum of (a_i . b_j / d + 1)^3 over all i, j (i != j when skip_diagonal), in row blocks."""
    d = a.shape[1]
    total = 0.0
    for i in range(0, a.shape[0], BLOCK):
        total += float(((a[i:i + BLOCK] @ b.T) / d + 1).pow(3).sum())  # (block, Nb) kernel values
    if skip_diagonal:
        total -= float(((a * b).sum(1) / d + 1).pow(3).sum())  # k(a_i, b_i), same formula as the blocks
    return total


def kid(ref: torch.Tensor, gen: torch.Tensor, paired: bool = False) -> float:
    """Unbiased MMD^2 between (m, d) and (n, d) features with the cubic kernel (not scaled; reports use x1000)."""
    _check_pair(ref, gen, paired, 2)
    x, y = ref.to(torch.float64), gen.to(torch.float64).to(ref.device)
    m, n = x.shape[0], y.shape[0]
    kxx = _kernel_sum(x, x, True) / (m * (m - 1))
    kyy = _kernel_sum(y, y, True) / (n * (n - 1))
    kxy = _kernel_sum(x, y, paired) / (m * (n - 1) if paired else m * n)
    return kxx + kyy - 2 * kxy


def _kth_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N, d) -> (N,) distance of each sample to its k-th nearest other sample of the same set."""
    out = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], BLOCK):
        dist = torch.cdist(x[i:i + BLOCK], x)  # (block, N)
        rows = torch.arange(dist.shape[0], device=x.device)
        dist[rows, rows + i] = math.inf  # a sample is not its own neighbour
        out[i:i + BLOCK] = dist.kthvalue(k, 1).values
    return out


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, paired: bool) -> torch.Tensor:
    """(N,) bool: point i lies in some ball (centre j, radius j), its partner j = i left out when paired."""
    hit = torch.empty(points.shape[0], dtype=torch.bool, device=points.device)
    for i in range(0, points.shape[0], BLOCK):
        dist = torch.cdist(points[i:i + BLOCK], centres)  # (block, M)
        if paired:
            rows = torch.arange(dist.shape[0], device=points.device)
            dist[rows, rows + i] = math.inf
        hit[i:i + BLOCK] = (dist <= radii[None]).any(1)
    return hit


def precision_recall(ref: torch.Tensor, gen: torch.Tensor, k: int = 3, paired: bool = False) -> tuple[float, float]:
    """Improved precision and recall of (n, d) generated features against (m, d) reference features."""
    _check_pair(ref, gen, paired, k + 1)  # k neighbours besides itself
    x, y = ref.to(torch.float64), gen.to(torch.float64).to(ref.device)
    precision = float(_inside(y, x, _kth_radii(x, k), paired).double().mean())
    recall = float(_inside(x, y, _kth_radii(y, k), paired).double().mean())
    return precision, recall


def distribution_report(ref_images: torch.Tensor, gen_images: torch.Tensor, pixel_range=(-1.0, 1.0), pool: int = 4,
                        k: int = 3, paired: bool = False) -> dict:
    """KID x1000, precision and recall of generated (N, C, H, W) samples against reference samples, one dict."""
    ref = pooled_features(ref_images, pixel_range, pool)  # (m, d)
    space = SampleSpace.fit(ref)
    x, y = space(ref), space(pooled_features(gen_images, pixel_range, pool).to(ref.device))  # (m, d), (n, d)
    precision, recall = precision_recall(x, y, k, paired)
    return {"kid_x1000": 1000 * kid(x, y, paired), "precision": precision, "recall": recall,
            "n_ref": x.shape[0], "n_gen": y.shape[0], "dims": x.shape[1], "pool": pool, "k": k, "paired": paired}
