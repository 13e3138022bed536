"""Batched population evaluation, the losses, and whitening."""

import torch

from organic_sd.ola.population import Whitener, affine, explained_loss, mse_loss, squash


def test_affine_matches_a_loop_over_genomes():
    g = torch.Generator().manual_seed(0)
    theta, z = torch.randn(5, 3, 7, generator=g), torch.randn(11, 6, generator=g)
    pre = affine(theta, z)  # (P, B, R)
    for p in range(5):
        assert torch.allclose(pre[p], z @ theta[p, :, :-1].T + theta[p, :, -1], atol=1e-5)


def test_mse_loss_is_per_row():
    g = torch.Generator().manual_seed(1)
    theta, z, y = torch.randn(4, 3, 6, generator=g), torch.randn(9, 5, generator=g), torch.rand(9, 3, generator=g)
    loss = mse_loss(theta, z, y, 2.0)
    ref = (2.0 * torch.tanh(affine(theta, z)) - y).square().mean(1)
    assert loss.shape == (4, 3) and torch.allclose(loss, ref, atol=1e-6)


def test_squash_is_the_logistic_form_of_tanh():
    g = torch.Generator().manual_seed(5)
    theta, z = 3 * torch.randn(4, 3, 6, generator=g), torch.randn(9, 5, generator=g)
    for wide in (False, True):  # the CPU's batched GEMMs and the GPU's one wide GEMM
        assert torch.allclose(squash(theta, z, wide), (1 + torch.tanh(affine(theta, z))) / 2, atol=1e-6)


def test_explained_loss_is_cascade_correlation_of_tanh_units():
    g = torch.Generator().manual_seed(6)
    theta, z, resid = torch.randn(5, 4, 4, generator=g), torch.randn(300, 3, generator=g), torch.randn(300, 2)
    basis, _ = torch.linalg.qr(torch.cat([z, torch.ones(300, 1)], 1))
    h = torch.tanh(affine(theta, z))  # (P, B, R)
    h = h - torch.einsum("bk,pcr,ck->pbr", basis, h, basis)  # beyond what the inputs and the constant span
    cov = torch.einsum("bo,pbr->por", resid - resid.mean(0), h) / 300
    ref = -cov.square().sum(1) / h.square().mean(1)
    assert torch.allclose(explained_loss(theta, z, resid, basis), ref, rtol=1e-4)


def test_explained_loss_prefers_the_true_nonlinear_feature():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(4000, 2, generator=g)
    resid = torch.tanh(3 * z[:, :1]) - 0.9 * z[:, :1]  # nonlinear part of a feature of input 0
    q, _ = torch.linalg.qr(torch.cat([z, torch.ones(4000, 1)], 1))
    good = torch.tensor([[[3.0, 0.0, 0.0]]])
    bad = torch.tensor([[[0.0, 3.0, 0.0]]])
    assert explained_loss(good, z, resid, q) < explained_loss(bad, z, resid, q)


def test_deflate_makes_a_later_unit_worth_only_what_earlier_units_miss():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4000, 2, generator=g)
    # two nonlinear features; the first explains more
    resid = 2 * (torch.tanh(3 * z[:, :1]) - 0.9 * z[:, :1]) + (torch.tanh(3 * z[:, 1:]) - 0.9 * z[:, 1:])
    q, _ = torch.linalg.qr(torch.cat([z, torch.ones(4000, 1)], 1))
    a, b = [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]
    copy = torch.tensor([[a, a]])  # (P=1, R=2): unit 1 copies unit 0
    other = torch.tensor([[a, b]])  # unit 1 takes the other feature
    # alone, each unit would rather copy the stronger feature
    assert explained_loss(copy, z, resid, q)[0, 1] < explained_loss(other, z, resid, q)[0, 1]
    # deflated, the copy is worth ~nothing and the other feature all it explains; unit 0 is unchanged
    dc, do = explained_loss(copy, z, resid, q, deflate=True), explained_loss(other, z, resid, q, deflate=True)
    assert do[0, 1] < dc[0, 1] and dc[0, 1] > -1e-3
    # the features are independent only up to sampling: the other one keeps ~all its worth
    assert torch.allclose(do[0, 1], explained_loss(other, z, resid, q)[0, 1], rtol=0.1)
    assert torch.allclose(dc[0, 0], explained_loss(copy, z, resid, q)[0, 0])


def test_whitener_round_trips_and_decorrelates():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5000, 4, generator=g) @ torch.tensor([[3.0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0.1, 0], [1, 0, 0, 2]])
    x = x + 5
    wh = Whitener.fit(x)
    z = wh(x)
    # the ridge shrinks the flattest direction a little (variance 0.01 against a mean of ~4)
    assert torch.allclose(torch.cov(z.T), torch.eye(4), atol=0.05)
    theta = torch.randn(3, 5, generator=g)  # rows acting on whitened inputs
    raw = wh.to_raw(theta)
    assert torch.allclose(z @ theta[:, :-1].T + theta[:, -1], x @ raw[:, :-1].T + raw[:, -1], atol=1e-3)
    assert torch.allclose(wh.from_raw(raw), theta, atol=1e-3)


def test_principal_dims_counts_the_directions_that_hold_a_share_of_the_variance():
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([10.0, 3.0, 1.0, 0.1, 0.01])  # variances 100, 9, 1, 0.01, 1e-4
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    x = (torch.randn(20000, 5, generator=g) * scales) @ q.T  # rotated: the directions are not the axes
    wh = Whitener.fit(x)
    assert wh.principal_dims(0.5) == 1
    assert wh.principal_dims(0.95) == 2  # 100 / 110.01 < 0.95 <= 109 / 110.01
    assert wh.principal_dims(0.999) == 3
    assert wh.principal_dims(1.0) == 5


def test_whitener_statistics_come_from_rows_spread_over_the_whole_set():
    # Rows ordered like a store's (by timestep): the first block never uses the last 4 inputs.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8000, 8, generator=g)
    x[:6000, 4:] = -1.0
    wh = Whitener.fit(x, max_rows=2000)
    z = wh(x[6000:])  # whitened later rows: unit scale, not blown up by a zero variance seen in a first block
    assert float(z.std(dim=0).max()) < 5.0


def test_deflate_on_a_batch_of_fewer_rows_than_units():
    # a tiny fit (fewer rows than units grown side by side) once failed here with a shape error from the QR
    g = torch.Generator().manual_seed(0)
    z, resid = torch.randn(3, 2, generator=g), torch.randn(3, 1, generator=g)
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(3, 1), z], 1))
    theta = torch.randn(5, 4, 3, generator=g)  # (P, R, in + 1): 4 units, 3 rows
    e = explained_loss(theta, z, resid, basis, deflate=True)
    assert e.shape == (5, 4) and bool(torch.isfinite(e).all())
    assert torch.allclose(e[:, 0], explained_loss(theta, z, resid, basis)[:, 0])  # the first unit is never deflated


def test_a_fit_on_fewer_rows_than_a_round_of_units_grows_them():
    from organic_sd import ola

    x, y = torch.randn(12, 3, generator=torch.Generator().manual_seed(1)), torch.randn(12, 2).tanh() * 0.5
    m = ola.fit(x, y, hidden=(8,), generations=30, subspace=ola.Subspace(deflate=True), units_per_round=8,
                batch_size=6)
    assert m.config.hidden == (8,)
