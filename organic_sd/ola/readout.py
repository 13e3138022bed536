"""The output layer of an OLA module, y ~ s * tanh(W [features] + b), evolved per output neuron.

Shared by `fit` (a single layer) and the cascade (the readout over inputs and hidden units).
"""

from __future__ import annotations

import math

import torch

from organic_sd.ola.distributed import shard_rows
from organic_sd.ola.population import Whitener, mse_loss, spread_rows
from organic_sd.ola.search import run_search


class Data:
    """Training and held-out rows on one device, and the batches drawn from them."""

    def __init__(self, x, y, x_val, y_val, batch_size: int, generator: torch.Generator):
        self.x, self.y, self.x_val, self.y_val = x, y, x_val, y_val
        self.batch_size = batch_size
        self.generator = generator

    def batch_index(self, size: int | None = None) -> torch.Tensor:
        """Random training rows for one generation (shared by every candidate: common random numbers)."""
        n = self.x.shape[0]
        size = min(n, size or self.batch_size)
        return torch.randint(n, (size,), generator=self.generator, device=self.x.device)


def fit_readout(data: Data, feats, feats_val, out_scale, strategy, budget, init_raw, progress, share: float = 1.0,
                step: torch.Tensor | None = None, step_floor: float = 0.0, keep_step: bool = False,
                inputs: bool = True):
    """Evolve the output layer y ~ s * tanh(W [feats] + b); returns raw rows (out, F+1) and the search result.

    `share`: search only the principal directions holding that share of the features' variance.
    `step`: step sizes (out, d) a previous search of this readout ended with, to resume from (kept between
    `step_floor` times the usual start and the start; ignored when the number of directions changed);
    `keep_step`: the result carries the step sizes this search ended with.
    `inputs=False`: the readout reads every feature block but the first (the inputs), whose columns come back zero.
    """
    skipped = 0
    if not inputs:
        skipped = feats[0].shape[1]
        feats, feats_val = feats[1:], feats_val[1:]
        init_raw = None if init_raw is None else init_raw[:, skipped:]
    u = torch.cat(feats, dim=1)  # (N, F)
    wh = Whitener.fit(u)
    k = wh.principal_dims(share)
    z, zv = wh(u)[:, -k:], wh(torch.cat(feats_val, dim=1))[:, -k:]  # (N, k): whitening sorts the top ones last
    d = k + 1
    # Whitened inputs have unit variance, so sigma * sqrt(d) is the spread of the
    # candidates' pre-activations: start it at the spread the targets need, or a
    # large out_scale makes every early candidate overshoot and the mean wander off.
    spread = target_spread(data.y, out_scale) / math.sqrt(d)
    if init_raw is None:
        mean0, sigma0 = torch.zeros(data.y.shape[1], d, device=z.device), spread
    else:
        mean0, sigma0 = wh.from_raw(init_raw)[:, -d:], 0.2 * spread  # its weights on the dropped directions go
    if step is not None and tuple(step.shape) == tuple(mean0.shape):
        sigma0 = step.clamp(min=step_floor * sigma0, max=sigma0)
    y, yv = data.y, data.y_val
    shard = shard_rows(strategy, y.shape[1])
    if shard is not None:  # this rank scores only its output neurons
        y, yv = y[:, shard.rows], yv[:, shard.rows]

    def batch_loss(theta):
        i = data.batch_index()
        return mse_loss(theta, z[i], y[i], out_scale)

    def val_loss(theta):
        return chunked(lambda t: mse_loss(t, zv, yv, out_scale), theta, zv.shape[0])

    res = run_search(strategy, batch_loss, val_loss, mean0, sigma0, budget, data.generator,
                     progress=progress, desc="readout", shard=shard, keep_step=keep_step, shared_loss=True)
    raw = wh.to_raw(wh.pad(res.theta))  # (out, F' + 1)
    return torch.cat([raw.new_zeros(raw.shape[0], skipped), raw], dim=1), res


def target_spread(y: torch.Tensor, out_scale: float) -> float:
    """Typical std of the pre-activations that would produce y: std of atanh(y / out_scale)."""
    pre = torch.atanh((spread_rows(y, 65536) / out_scale).clamp(-0.95, 0.95))
    return float(pre.std(dim=0).mean().clamp(0.05, 2.0))


def chunked(fn, theta: torch.Tensor, n_rows: int, max_elems: int = 2**26) -> torch.Tensor:
    """fn over candidates theta (K, R, d) in chunks, so (K, n_rows, R) never exceeds max_elems."""
    K, R = theta.shape[:2]
    step = max(1, max_elems // max(1, n_rows * R))
    return torch.cat([fn(theta[i:i + step]) for i in range(0, K, step)])
