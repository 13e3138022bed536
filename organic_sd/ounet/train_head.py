"""`osd train denoiser-head`: evolve the noise-level head (ounet/head.py) on a frozen O-UNet's residual.

Each bucket's linear map is evolved by its own `ola.fit` on the residual of the frozen stack in that
bucket (boosting, no gradients): the residual is tiny at high t, and one search over all buckets at
once cannot see it there. The head is kept only if it lowers the held-out eps MSE.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np
import torch

from organic_sd import ola
from organic_sd.devices import resolve_device
from organic_sd.ounet.head import head_rows
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.train import heldout_score, sample_rows, store_schedule
from organic_sd.runs import out_scale_for


def fit_head(u, store, buckets: int = 8, max_seconds: float = 300.0, max_rows: int = 200_000,
             eval_records: int = 256, strategy: str = "auto", population: int = 40, device: str = "cpu",
             seed: int = 0, log_to=None, generations: int | None = None):
    """Evolve a noise-level head on the frozen O-UNet u's residual; returns (u with the head, report dict).

    The head is kept only if it lowers the eps MSE on the store's held-out records. `generations`: per bucket,
    instead of max_seconds shared among the buckets (reproducible runs).
    """
    log_to = log_to or sys.stdout
    t0 = time.perf_counter()
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if u.config.cond_dim:
        raise ValueError("the noise-level head is for unconditional O-UNets")
    store_schedule(u, store)  # a store of another teacher is an error
    dev = resolve_device(device)
    # a head is fitted on the stack's residual alone: an earlier head is dropped, not stacked on
    u = OUNet(replace(u.config, head_buckets=0), u.module, u.schedule, dict(u.meta), adapter=u.adapter,
              stage=u.stage, prompts=u.prompts, low=u.low, clean=u.clean).to(dev)
    cfg = replace(u.config, head_buckets=buckets)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = store.indices("train"), store.indices("val")
    if len(val_idx) == 0:
        raise ValueError(f"store {store.path} has no held-out records: the head could not be checked")

    def residual_rows(j):  # records j -> head rows, and what the stack misses there
        x_t = torch.from_numpy(store.x_t[j]).to(dev)
        t = torch.from_numpy(store.t[j]).to(dev).round().long()
        res = torch.from_numpy(store.eps[j]).to(dev) - u(x_t, t)  # (n, C, H, W)
        return head_rows(cfg, x_t, t).flatten(0, 1), res.flatten(2).transpose(1, 2).flatten(0, 1)

    with torch.no_grad():
        x, y = sample_rows(cfg, train_idx, max_rows, rng, residual_rows)
    out_scale = out_scale_for(y.abs().max(), step=0.25)
    C, d = cfg.sample_shape[0], x.shape[1] // buckets  # d = C k k + 1 columns per bucket
    print(f"head: {buckets} buckets x {cfg.window}x{cfg.window} window, {x.shape[0]:,} rows, residual MSE "
          f"{float(y.square().mean()):.5g}", file=log_to, flush=True)
    weight = torch.zeros(C, buckets, d, device=dev)  # (C, K, d): one linear map per bucket
    for j in range(buckets):
        blk = x[:, j * d:(j + 1) * d]  # (N, d)
        rows = blk[:, -1] > 0  # the rows of bucket j carry its 1
        if int(rows.sum()) < 4 * d:
            continue  # too few rows to fit here: this bucket keeps no correction
        left = max_seconds - (time.perf_counter() - t0)
        try:
            m = ola.fit(blk[rows, :-1], y[rows], strategy=strategy, population=population, out_scale=out_scale,
                        max_seconds=None if generations else max(1.0, left / (buckets - j)), generations=generations,
                        device=dev, seed=seed + j)
        except ola.FitDidNotLearn:
            continue  # nothing linear left to correct in this bucket (the stack's residual there is noise): none
        weight[:, j, :-1], weight[:, j, -1] = m.readout.weight, m.readout.bias
    head = ola.OLAModule(ola.OLAConfig(x.shape[1], C, (), out_scale=out_scale),
                         {"strategy": strategy, "buckets": buckets, "seconds": round(time.perf_counter() - t0, 1)}).to(dev)
    head.readout.weight.copy_(weight.reshape(C, -1))
    head.readout.bias.zero_()
    del x, y
    eval_idx = np.sort(np.random.default_rng(seed + 1).choice(val_idx, min(eval_records, len(val_idx)),
                                                               replace=False))
    before = heldout_score(u, store, eval_idx)
    cand = OUNet(cfg, u.module, u.schedule, dict(u.meta), adapter=u.adapter, head=head, stage=u.stage,
                 prompts=u.prompts, low=u.low, clean=u.clean)
    after = heldout_score(cand, store, eval_idx)
    kept = after["heldout_mse"] < before["heldout_mse"]
    rep = {"buckets": buckets, "seconds": round(time.perf_counter() - t0, 1), "before": before, "after": after,
           "kept": kept, "head_parameters": head.num_parameters()}
    print(f"head: held-out eps MSE {before['heldout_mse']:.5g} -> {after['heldout_mse']:.5g} "
          f"({'kept' if kept else 'worse: not kept'})", file=log_to, flush=True)
    if not kept:
        return u, rep
    cand.meta["head"] = rep
    return cand, rep
