"""Synthetic cloning problems with a known optimum, shared by bench/ola_core.py and the tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Problem:
    name: str
    x: torch.Tensor  # (N, in) training inputs
    y: torch.Tensor  # (N, out) noisy teacher outputs
    x_test: torch.Tensor
    y_test: torch.Tensor
    floor: float  # the teacher's own test MSE: the noise, the best any clone can do


def correlated_inputs(n: int, dim: int, g: torch.Generator, decay: float = 1.0) -> torch.Tensor:
    """Gaussian inputs with covariance eigenvalues ~ k^-decay in a random basis (ill-conditioned)."""
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    scales = torch.arange(1, dim + 1, dtype=torch.float32) ** (-decay / 2)
    return (torch.randn(n, dim, generator=g) * scales) @ q.T * (dim ** 0.5 / scales.norm())


def linear_tanh(n_in=96, n_out=48, n=20_000, n_test=5_000, noise=0.1, seed=0) -> Problem:
    """y = tanh(W x + b) + noise, with correlated x."""
    g = torch.Generator().manual_seed(seed)
    x = correlated_inputs(n + n_test, n_in, g)
    w = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
    b = 0.3 * torch.randn(n_out, generator=g)
    clean = torch.tanh(x @ w.T + b)
    y = clean + noise * torch.randn(clean.shape, generator=g)
    floor = float((clean[n:] - y[n:]).square().mean())
    return Problem(f"linear+tanh {n_in}->{n_out}", x[:n], y[:n], x[n:], y[n:], floor)


def two_layer(n_in=96, n_hidden=64, n_out=48, n=20_000, n_test=5_000, noise=0.1, seed=0) -> Problem:
    """y = tanh(W2 tanh(W1 x + b1) + b2) + noise: needs hidden units to reach the floor."""
    g = torch.Generator().manual_seed(seed)
    x = correlated_inputs(n + n_test, n_in, g)
    w1 = 2.0 * torch.randn(n_hidden, n_in, generator=g) / n_in ** 0.5
    b1 = 0.5 * torch.randn(n_hidden, generator=g)
    w2 = 1.5 * torch.randn(n_out, n_hidden, generator=g) / n_hidden ** 0.5
    clean = torch.tanh(torch.tanh(x @ w1.T + b1) @ w2.T)
    y = clean + noise * torch.randn(clean.shape, generator=g)
    floor = float((clean[n:] - y[n:]).square().mean())
    return Problem(f"2-layer {n_in}->{n_hidden}->{n_out}", x[:n], y[:n], x[n:], y[n:], floor)


def three_layer(n_in=96, n_h1=64, n_h2=32, n_out=48, n=20_000, n_test=5_000, noise=0.1, seed=0) -> Problem:
    """y = tanh(W3 tanh(W2 tanh(W1 x + b1) + b2)) + noise: two hidden layers deep."""
    g = torch.Generator().manual_seed(seed)
    x = correlated_inputs(n + n_test, n_in, g)
    w1 = 2.0 * torch.randn(n_h1, n_in, generator=g) / n_in ** 0.5
    b1 = 0.5 * torch.randn(n_h1, generator=g)
    w2 = 2.0 * torch.randn(n_h2, n_h1, generator=g) / n_h1 ** 0.5
    b2 = 0.3 * torch.randn(n_h2, generator=g)
    w3 = 1.5 * torch.randn(n_out, n_h2, generator=g) / n_h2 ** 0.5
    clean = torch.tanh(torch.tanh(torch.tanh(x @ w1.T + b1) @ w2.T + b2) @ w3.T)
    y = clean + noise * torch.randn(clean.shape, generator=g)
    floor = float((clean[n:] - y[n:]).square().mean())
    return Problem(f"3-layer {n_in}->{n_h1}->{n_h2}->{n_out}", x[:n], y[:n], x[n:], y[n:], floor)
