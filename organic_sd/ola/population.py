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


def corr_loss(theta: torch.Tensor, z: torch.Tensor, t: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
    """Minus the squared correlation of each unit `tanh(affine)` with its target t (B, R) -> (P, R).

    With `basis` (B, k), orthonormal columns spanning what the model already has (its
    inputs), only the part of each unit outside that span counts: a unit is worth adding
    for what it explains that a linear readout of the inputs could not.
    """
    h = affine(theta, z).tanh_()  # (P, B, R)
    h = h - h.mean(dim=1, keepdim=True)
    if basis is not None:
        h = h - basis @ (basis.T @ h)
    tc = t - t.mean(dim=0, keepdim=True)  # (B, R)
    cov = (h * tc).mean(dim=1)
    var = h.square().mean(dim=1) * tc.square().mean(dim=0)
    return -cov.square() / var.clamp_min(1e-12)


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
    def fit(cls, x: torch.Tensor, ridge: float = 1e-4, max_rows: int = 65536) -> "Whitener":
        """PCA whitening of x (N, in); `ridge` (relative to the mean eigenvalue) keeps flat directions finite."""
        xs = x[:max_rows].double()
        mean = xs.mean(0)
        cov = torch.cov((xs - mean).T).reshape(x.shape[1], x.shape[1])
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0) + ridge * evals.clamp_min(0).mean() + 1e-12
        A = evecs / evals.sqrt()  # (in, in): column k = k-th principal direction / its std
        A_inv = (evecs * evals.sqrt()).T
        return cls(mean.float(), A.float(), A_inv.float())

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
