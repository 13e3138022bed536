import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from organic_sd.metrics.samples import (SampleSpace, distribution_report, kid, pooled_features,
                                        precision_recall)

S = 16  # side of the synthetic "digits"
# four stroke templates, endpoints (x0, y0, x1, y1) on [0, 1]: a bar, a slash, an L and a V
TEMPLATES = torch.tensor([
    [[0.5, 0.15, 0.5, 0.85], [0.5, 0.15, 0.5, 0.85]],
    [[0.25, 0.85, 0.75, 0.15], [0.25, 0.85, 0.75, 0.15]],
    [[0.3, 0.15, 0.3, 0.85], [0.3, 0.85, 0.75, 0.85]],
    [[0.25, 0.15, 0.5, 0.85], [0.5, 0.85, 0.75, 0.15]],
])  # (4 templates, 2 strokes, 4)


def digits(n: int, seed: int) -> torch.Tensor:
    """(n, 1, S, S) in [-1, 1]: a random template per image, endpoints jittered, strokes ~1.5 px wide."""
    g = torch.Generator().manual_seed(seed)
    seg = TEMPLATES[torch.randint(0, len(TEMPLATES), (n,), generator=g)]  # (n, 2, 4)
    seg = seg + 0.06 * torch.randn(seg.shape, generator=g)
    a, b = seg[..., None, None, :2] * S, seg[..., None, None, 2:] * S  # (n, 2, 1, 1, 2)
    yy, xx = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    p = torch.stack([xx, yy], -1)  # (S, S, 2)
    ab = b - a
    u = (((p - a) * ab).sum(-1) / ab.square().sum(-1).clamp_min(1e-9)).clamp(0, 1)  # (n, 2, S, S)
    dist = (p - (a + u[..., None] * ab)).norm(dim=-1)  # distance of each pixel to each stroke
    ink = torch.exp(-dist.square() / (2 * 0.8 ** 2)).amax(1)  # (n, S, S)
    return (2 * ink - 1)[:, None]


def blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """k x k box blur (edge-padded) of (N, 1, H, W)."""
    return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)


def shuffle_pixels(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image's pixels in its own random order: the same ink, no shape."""
    g = torch.Generator().manual_seed(seed)
    flat = x.flatten(1)
    idx = torch.stack([torch.randperm(flat.shape[1], generator=g) for _ in range(len(x))])
    return flat.gather(1, idx).reshape(x.shape)


def direct_kid(x, y, paired=False):
    """Unbiased MMD^2 of the cubic kernel written out pair by pair."""
    d = x.shape[1]
    k = lambda a, b: (float(a @ b) / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    pairs = [(i, j) for i in range(m) for j in range(n) if not (paired and i == j)]
    return xx + yy - 2 * sum(k(x[i], y[j]) for i, j in pairs) / len(pairs)


def test_kid_matches_the_pairwise_formula():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64) + 1
    assert kid(x, y) == pytest.approx(direct_kid(x, y), rel=1e-12)
    y5 = x + 0.1 * torch.randn(5, 3, generator=g, dtype=torch.float64)  # partners of x
    assert kid(x, y5, paired=True) == pytest.approx(direct_kid(x, y5, paired=True), rel=1e-12)
    # identical sets: unbiased, so the estimate is below 0 unless the partners' kernel values are left out
    assert kid(x, x) < 0 and kid(x, x, paired=True) == pytest.approx(0, abs=1e-12)


def test_kid_blocks_give_the_same_sum(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(37, 4, generator=g), torch.randn(29, 4, generator=g)
    whole = kid(x, y)
    import organic_sd.metrics.samples as samples

    monkeypatch.setattr(samples, "BLOCK", 5)
    assert kid(x, y) == pytest.approx(whole, rel=1e-12)
    assert precision_recall(x, y) == samples.precision_recall(x, y)  # same ball tests, any block size


def test_precision_recall_known_answer():
    ref = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0]])
    gen = torch.tensor([[0.5], [2.2], [10.0], [10.5]])
    # k = 1: every reference ball has radius 1, so 0.5 and 2.2 are inside, 10 and 10.5 not;
    # generated radii 1.7, 1.7, 0.5, 0.5 cover the references 0..3 but not 4 (1.8 from 2.2)
    assert precision_recall(ref, gen, k=1) == (0.5, 0.8)
    # k = 2: reference radii 2, 1, 1, 1, 2 and generated 8.3, 7.8, 7.8, 8.3: every reference is covered
    assert precision_recall(ref, gen, k=2) == (0.5, 1.0)


def test_paired_sets_leave_the_partner_out():
    ref = torch.tensor([[0.0], [1.0], [2.0], [10.0]])  # radii (k = 1): 1, 1, 1, 8
    gen = ref + 0.3  # each generated sample next to its partner
    assert precision_recall(ref, gen, k=1) == (1.0, 1.0)
    # without partners: 0.3, 1.3 lie 0.7 from 1, 2 (radius 1) and 2.3 lies 7.7 from 10 (radius 8), but 10.3
    # is 8.3 from 2; 1, 2 lie 0.7 from 0.3, 1.3 (radius 1) but 0 and 10 are 1.3 and 7.7 from the nearest ball
    assert precision_recall(ref, gen, k=1, paired=True) == (0.75, 0.5)
    with pytest.raises(ValueError, match="same size"):
        precision_recall(ref, gen[:3], k=1, paired=True)


def test_space_is_centred_and_scaled_by_the_reference():
    x = digits(64, 0)
    f = pooled_features(x, (-1, 1), 4)
    assert f.shape == (64, (S // 4) ** 2) and f.dtype == torch.float64
    assert torch.allclose(f[3].reshape(4, 4), x[3, 0].double().reshape(4, 4, 4, 4).mean((1, 3)))
    over = torch.where(x > 0.5, 7.0, x)  # overshoot past the pixel range counts as white, no more
    assert torch.equal(pooled_features(over, (-1, 1), 4), pooled_features(over.clamp(-1, 1), (-1, 1), 4))
    space = SampleSpace.fit(f)
    z = space(f)
    assert z.mean(0).abs().max() < 1e-12 and z.var(0, unbiased=False).mean() == pytest.approx(1.0)
    # units do not matter: the same images in [0, 1] land on the same points
    assert torch.allclose(SampleSpace.fit(pooled_features((x + 1) / 2, (0, 1), 4))(
        pooled_features((x + 1) / 2, (0, 1), 4)), z)
    with pytest.raises(ValueError, match="divide"):
        pooled_features(x, (-1, 1), 5)


def test_same_distribution_scores_well_and_damaged_sets_badly():
    ref, other = digits(400, 1), digits(400, 2)  # two sets from one distribution (other seeds)
    rep = {name: distribution_report(ref, gen, (-1, 1), 4) for name, gen in {
        "same": other,
        "blurred": blur(other, 5),  # 3x3 barely moves 4x4 cells of a 16x16 image (KID ~50)
        "shuffled": shuffle_pixels(other, 3),
        "noise": torch.randn(other.shape, generator=torch.Generator().manual_seed(4)),
        "one template": other[(other[:, 0, 2:-2, S // 2] > 0).all(1)],  # only the vertical bars
    }.items()}
    same = rep["same"]
    # measured: same -12 / 0.93 / 0.88, blurred 356 / 0.60 / 0.19, shuffled 7,586 / 0 / 0, noise 418,086 / 0 / 0;
    # same-distribution KID at 400 samples scatters by about +-10 over seeds
    assert abs(same["kid_x1000"]) < 25 and same["precision"] > 0.8 and same["recall"] > 0.8
    for bad in ("blurred", "shuffled", "noise"):
        assert rep[bad]["kid_x1000"] > 250, bad
        assert rep[bad]["precision"] < same["precision"] - 0.3, bad
    assert rep["noise"]["kid_x1000"] > rep["blurred"]["kid_x1000"]
    # mode collapse: the few samples kept are fine (precision) but most of the reference is missed (recall)
    assert rep["one template"]["precision"] > 0.8 and rep["one template"]["recall"] < 0.5
    assert rep["same"]["n_ref"] == 400 and rep["same"]["dims"] == 16 and not math.isnan(same["kid_x1000"])
