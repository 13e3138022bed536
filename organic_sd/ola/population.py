"""A population of affine+tanh rows, evaluated in one batched matmul, and the losses it is searched on.

A population is a tensor `theta (P, R, d)`: P candidates for each of R independent rows
(output neurons, or hidden units), each row `d = in + 1` numbers (weights, then bias).
Every objective here returns a loss per candidate per row, `(P, R)`: MSE is a sum over
output neurons and each neuron depends only on its own row, so rows can be selected
independently (each row keeps its own best candidate, whatever that candidate does for the others).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SharedCandidates:
    """P candidates for each of R rows, mean (R, d) + step (R,) x dirs (P, d), never materialised for the losses."""

    mean: torch.Tensor  # (R, d)
    step: torch.Tensor  # (R,)
    dirs: torch.Tensor  # (P, d): the shared directions, already times the shared scale

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.dirs.shape[0], *self.mean.shape))

    def dense(self) -> torch.Tensor:
        """theta (P, R, d), for a loss without a shared fast path."""
        return self.mean[None] + self.step[None, :, None] * self.dirs[:, None, :]


def dense(theta) -> torch.Tensor:
    """Candidates as a (P, R, d) tensor, whichever form the strategy asked them in."""
    return theta.dense() if isinstance(theta, SharedCandidates) else theta


def affine(theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """theta (P, R, in+1), z (B, in) -> pre-activations (P, B, R)."""
    if z.is_cuda:
        return wide_affine(theta, z).permute(1, 0, 2)  # a view; the memory stays (B, P, R)
    # on CPU, P batched (in, R) products measured faster than one wide one (158 vs 200 ms at 1024x800x7680)
    w, b = theta[..., :-1], theta[..., -1]  # (P, R, in), (P, R)
    return torch.matmul(z, w.transpose(1, 2)) + b[:, None, :]


def wide_affine(theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """theta (P, R, in+1), z (B, in) -> pre-activations (B, P, R), computed as one (B, in) x (in, P*R) GEMM.

    On a GPU, P narrow (in, R) products lose efficiency as R shrinks, which is what splitting
    rows across ranks does (half the rows: 1.71x faster on an H200), while one wide product
    keeps it (2.04x) and is faster at any R.
    """
    P, R, d = theta.shape
    w = theta[..., :-1].reshape(P * R, d - 1)
    b = theta[..., -1].reshape(P * R)
    return torch.addmm(b, z, w.T).view(z.shape[0], P, R)


def squash(theta: torch.Tensor, z: torch.Tensor, wide: bool | None = None) -> torch.Tensor:
    """theta (P, R, in+1), z (B, in) -> sigmoid(2 * pre-activations) = (1 + tanh) / 2, (P, B, R), for the losses.

    The searches' losses are a few memory-bound passes over this tensor, the largest in training, and on the CPU
    torch's tanh is several times slower than its logistic (AMD EPYC, 2 threads); the 2 and the bias ride in the
    GEMM: 1.1-1.55x faster losses (bench/loss_kernels.py). `wide` (default: on CUDA) computes it as one wide GEMM
    in a (B, P, R) memory layout, as `affine` does.
    """
    if isinstance(theta, SharedCandidates):  # one set of directions for every row: two thin products, not P x R
        mean2, dirs2 = 2 * theta.mean, 2 * theta.dirs
        base = torch.addmm(mean2[:, -1], z, mean2[:, :-1].T)  # (B, R)
        # (P, B) in memory: from a transposed (B, P) the output took a (B, P, R) layout, over which the losses'
        # reductions along B ran 7x slower on the CPU (vector_norm, 2 threads: 31.6 against 4.2 ms)
        move = torch.addmm(dirs2[:, -1:], dirs2[:, :-1], z.T)  # (P, B)
        return torch.addcmul(base[None], move[:, :, None], theta.step[None, None, :]).sigmoid_()  # (P, B, R)
    theta2 = 2 * theta
    if z.is_cuda if wide is None else wide:
        return wide_affine(theta2, z).sigmoid_().permute(1, 0, 2)
    P, d = theta.shape[0], theta.shape[-1]
    w, b = theta2[..., :-1], theta2[..., -1]  # (P, R, in), (P, R)
    return torch.baddbmm(b[:, None, :], z.expand(P, z.shape[0], d - 1), w.transpose(1, 2)).sigmoid_()


def mse_loss(theta: torch.Tensor, z: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-row MSE of `scale * tanh(affine)` against y (B, R) -> (P, R)."""
    # (s tanh(a) - y)^2 = 4 s^2 (sigmoid(2a) - (1 + y/s)/2)^2: in-place passes and one read over the (P, B, R)
    # tensor (no autograd here, so in place is safe)
    err = squash(theta, z).sub_((1 + y / scale) / 2)  # (P, B, R)
    return torch.linalg.vector_norm(err, dim=1).square_().mul_(4 * scale * scale / z.shape[0])


def explained_loss(theta: torch.Tensor, z: torch.Tensor, resid: torch.Tensor, basis: torch.Tensor,
                   deflate: bool = False) -> torch.Tensor:
    """Minus the residual energy each candidate unit `tanh(affine)` would explain -> (P, R).

    Cascade-correlation's objective: sum over outputs of cov(h, resid_o)^2 / var(h), where h
    is the unit's output with its projection on `basis` (B, k) removed (orthonormal columns
    spanning the inputs), so a unit only counts for what a linear readout could not do.
    resid (B, out) is the current model's residual on the batch.
    `deflate`: unit r counts only for the part of h that units 0..r-1 (at their population means) do
    not already make, still divided by the variance of all of h: a near copy scores near zero (not
    the noise left in a tiny remainder), so the R side-by-side searches find R features, not R copies.
    """
    B = z.shape[0]
    # sigmoid(2a) = (1 + tanh a) / 2, not tanh (faster on the CPU, `squash`): the energy below is the same for
    # a h + c as for h (a > 0), since `basis` holds the constant
    h = wide_affine(2 * theta, z).sigmoid_()  # (B, P, R)
    P, R = h.shape[1:]
    h = h.view(B, P * R)
    h = h - basis @ (basis.T @ h)  # (B, P*R): one GEMM each way
    var = h.square().mean(dim=0)
    if deflate and R > 1:
        ref = torch.tanh(z @ theta[..., :-1].mean(0).T + theta[..., -1].mean(0))  # (B, R): each unit's mean
        q, _ = torch.linalg.qr(ref - basis @ (basis.T @ ref))  # (B, K): column j spans unit j beyond units < j
        K = q.shape[1]  # min(B, R): a batch of fewer rows than units holds only B independent columns
        earlier = torch.ones(K, R, device=z.device, dtype=z.dtype).triu(1)  # [j, r] = 1 where j < r
        coef = (q.T @ h).view(K, P, R) * earlier[:, None, :]  # (K, P, R)
        h = h - q @ coef.view(K, P * R)
    rc = resid - resid.mean(dim=0)
    cov = (rc.T @ h) / B  # (out, P*R)
    energy = cov.square().sum(0) / var.clamp_min(1e-12)  # (P*R,)
    return -energy.view(P, R)


@dataclass(frozen=True)
class Subspace:
    """Which principal directions the searches may use: those holding a share of their inputs' variance.

    1.0 (the default) keeps every direction. Lower shares suit redundant inputs such as image
    windows, whose flat directions hold pixel noise: whitening blows those up to unit variance and
    a search there fits the training rows and explodes on other images. They do not suit inputs
    whose faint directions are the signal (a denoiser's: at low noise the noise *is* the faint
    high-frequency part), so each caller chooses (ovae/train.py: units 0.99, readout 0.9995).
    """

    units: float = 1.0  # hidden units' inputs
    readout: float = 1.0  # the readout's features [x, h_1, ...]
    # >0: each unit of a round searches only this many directions of its own (cascade.hessian_directions):
    # those along which one principal direction of the residual bends most. 0: all units search alike.
    # A short-budget aid: it wins with ~1,000 generations a round, loses with the shipped GPU recipe's ~2,000.
    hessian: int = 0
    # True: unit r of a round counts only for what units 0..r-1 do not already make (explained_loss)
    deflate: bool = False
    # a unit's weights, in whitened coordinates, have norm at most this: its pre-activation std over the
    # training rows (cascade.UNIT_SPREAD, the default, says why a bound; a wider one lets units sharpen)
    spread: float = 1.0

    def __post_init__(self):
        for name in ("units", "readout"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"Subspace.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.hessian < 0:
            raise ValueError(f"Subspace.hessian must be >= 0, got {self.hessian}")
        if not self.spread > 0:
            raise ValueError(f"Subspace.spread must be positive, got {self.spread}")


def spread_rows(x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """At most max_rows rows of x (N, ...), evenly strided over all N.

    Not the first max_rows: stores and precomputed pairs are often ordered (by timestep, by image),
    and statistics of the first block alone miss directions that only later rows use; whitening then
    scales those up a hundredfold and every candidate saturates on them.
    """
    step = -(-x.shape[0] // max_rows)  # ceil
    return x[::step]


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
    variance: torch.Tensor | None = None  # (in,) the principal variances, ascending like A's columns

    @classmethod
    def fit(cls, x: torch.Tensor, ridge: float = 1e-4, max_rows: int = 32768) -> "Whitener":
        """PCA whitening of x (N, in); `ridge` (relative to the mean eigenvalue) keeps flat directions finite."""
        xs = spread_rows(x, max_rows)
        mean = xs.mean(0)
        xc = xs - mean
        cov = (xc.T @ xc).double() / max(1, xs.shape[0] - 1)  # float32 product, float64 eigensolve
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0) + ridge * evals.clamp_min(0).mean() + 1e-12
        A = evecs / evals.sqrt()  # (in, in): column k = k-th principal direction / its std
        A_inv = (evecs * evals.sqrt()).T
        return cls(mean, A.float(), A_inv.float(), evals.float())

    def principal_dims(self, share: float) -> int:
        """How many top principal directions hold `share` of the input variance (they are the last columns)."""
        if share >= 1.0:
            return self.variance.numel()
        v = self.variance.flip(0)  # largest first
        return min(v.numel(), int((v.cumsum(0) < share * v.sum()).sum()) + 1)

    def pad(self, theta: torch.Tensor) -> torch.Tensor:
        """Rows (..., k+1) over the top k principal coordinates -> (..., in+1), zero on the others."""
        extra = self.mean.numel() + 1 - theta.shape[-1]
        return torch.cat([theta.new_zeros(*theta.shape[:-1], extra), theta], dim=-1)

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
