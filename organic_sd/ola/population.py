"""A population of affine+tanh rows, evaluated in one batched matmul, and the losses it is searched on.

A population is a tensor `theta (P, R, d)`: P candidates for each of R independent rows
(output neurons, or hidden units), each row `d = in + 1` numbers (weights, then bias).
Every objective here returns a loss per candidate per row, `(P, R)`: MSE is a sum over
output neurons and each neuron depends only on its own row, so rows can be selected
independently (the "single-neuron" lever of the spec).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def affine(theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """theta (P, R, in+1), z (B, in) -> pre-activations (P, B, R)."""
    w, b = theta[..., :-1], theta[..., -1]  # (P, R, in), (P, R)
    return torch.matmul(z, w.transpose(1, 2)) + b[:, None, :]


def mse_loss(theta: torch.Tensor, z: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-row MSE of `scale * tanh(affine)` against y (B, R) -> (P, R)."""
    err = affine(theta, z).tanh_().mul_(scale).sub_(y)  # (P, B, R), in place: no autograd here
    return err.square_().mean(dim=1)


def explained_loss(theta: torch.Tensor, z: torch.Tensor, resid: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Minus the residual energy each candidate unit `tanh(affine)` would explain -> (P, R).

    Cascade-correlation's objective: sum over outputs of cov(h, resid_o)^2 / var(h), where h
    is the unit's output with its projection on `basis` (B, k) removed (orthonormal columns
    spanning the inputs), so a unit only counts for what a linear readout could not do.
    resid (B, out) is the current model's residual on the batch.
    """
    h = affine(theta, z).tanh_()  # (P, B, R)
    h = h - basis @ (basis.T @ h)
    rc = resid - resid.mean(dim=0)
    cov = torch.einsum("pbr,bo->pro", h, rc) / z.shape[0]  # (P, R, out)
    return -cov.square().sum(-1) / h.square().mean(dim=1).clamp_min(1e-12)


@dataclass
class Whitener:
    """A fixed affine map of the inputs, z = (x - mean) @ A, that makes them zero-mean and decorrelated.

    Searching in whitened coordinates turns the ill-conditioned valley of correlated
    inputs into a round bowl, where a separable evolution strategy converges fast. It is
    computed from the inputs alone (no targets) and folded back into the exported weights.
    """

    mean: torch.Tensor  # (in,)
    A: torch.Tensor  # (in, in)
    A_inv: torch.Tensor  # (in, in)

    @classmethod
    def fit(cls, x: torch.Tensor, ridge: float = 1e-4, max_rows: int = 32768) -> "Whitener":
        """PCA whitening of x (N, in); `ridge` (relative to the mean eigenvalue) keeps flat directions finite."""
        xs = x[:max_rows]
        mean = xs.mean(0)
        xc = xs - mean
        cov = (xc.T @ xc).double() / max(1, xs.shape[0] - 1)  # float32 product, float64 eigensolve
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0) + ridge * evals.clamp_min(0).mean() + 1e-12
        A = evecs / evals.sqrt()  # (in, in): column k = k-th principal direction / its std
        A_inv = (evecs * evals.sqrt()).T
        return cls(mean, A.float(), A_inv.float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in) raw inputs -> (N, in) whitened inputs."""
        return (x - self.mean) @ self.A

    def to_raw(self, theta: torch.Tensor) -> torch.Tensor:
        """Rows (..., in+1) in whitened coordinates -> the same affine maps on raw inputs."""
        w, b = theta[..., :-1], theta[..., -1:]
        w_raw = w @ self.A.T
        return torch.cat([w_raw, b - (w_raw * self.mean).sum(-1, keepdim=True)], dim=-1)

    def from_raw(self, theta: torch.Tensor) -> torch.Tensor:
        """Rows (..., in+1) acting on raw inputs -> the same affine maps in whitened coordinates."""
        w, b = theta[..., :-1], theta[..., -1:]
        return torch.cat([w @ self.A_inv.T, b + (w * self.mean).sum(-1, keepdim=True)], dim=-1)
