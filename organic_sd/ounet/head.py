"""The noise-level head: a per-t-bucket linear correction of an O-UNet's eps, evolved on its residual.

    rows     the k x k window of x_t and a 1, placed in the block of t's bucket (K buckets over the
             schedule), zeros elsewhere                                        (N, K * (C * k * k + 1))
    eps      stack(x_t, t) + s * tanh(W rows + b)

Where the stack's shared hidden units leave a residual that is linear in the window but
different at each noise level (high t, where the per-timestep linear clones of the
calibration note are near their best), one linear map per bucket takes it. Each bucket's map
is evolved by its own `ola.fit` on the residual of the frozen stack in that bucket (boosting,
no gradients): the residual is tiny at high t, and a search over all buckets at once cannot
see it there. At inference the bucket's map is one more kernel of the convolution path.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from organic_sd.devices import resolve_device


def bucket_of(t: torch.Tensor, buckets: int, num_steps: int) -> torch.Tensor:
    """(B,) integer steps -> (B,) bucket index in 0..buckets-1, equal shares of the schedule."""
    return (t.long() * buckets // num_steps).clamp(0, buckets - 1)


def head_rows(cfg, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x_t, (B,) t -> (B, HW, K (C k k + 1)): the window and a 1 in its bucket's block."""
    B, C, H, W = x_t.shape
    k, K = cfg.window, cfg.head_buckets
    win = F.unfold(x_t, k, padding=k // 2).transpose(1, 2)  # (B, HW, C k k), zero padded like `features`
    win = torch.cat([win, win.new_ones(B, H * W, 1)], 2)  # (B, HW, C k k + 1)
    out = win.new_zeros(B, H * W, K, C * k * k + 1)
    out[torch.arange(B, device=x_t.device), :, bucket_of(t, K, cfg.num_steps).to(x_t.device)] = win
    return out.flatten(2)


def head_conv(u, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): the head's output computed as one convolution per bucket present."""
    cfg, head = u.config, u.head
    C, k = cfg.sample_shape[0], cfg.window
    b = bucket_of(t, cfg.head_buckets, cfg.num_steps).to(x_t.device)
    w = head.readout.weight.reshape(C, cfg.head_buckets, C * k * k + 1)  # (C_out, K, C k k + 1)
    pre = torch.empty_like(x_t)
    for j in b.unique():
        sel = b == j
        kern = w[:, j, :-1].reshape(C, C, k, k)
        pre[sel] = F.conv2d(x_t[sel], kern, w[:, j, -1], padding=k // 2)
    return head.config.out_scale * torch.tanh(pre + head.readout.bias[None, :, None, None])


def fit_head(u, store, buckets: int = 8, max_seconds: float = 300.0, max_rows: int = 200_000,
             eval_records: int = 256, strategy: str = "auto", population: int = 40, device: str = "cpu",
             seed: int = 0, log_to=None):
    """Evolve a noise-level head on the frozen O-UNet u's residual; returns (u with the head, report dict).

    The head is kept only if it lowers the eps MSE on the store's held-out records.
    """
    from organic_sd import ola
    from organic_sd.ounet.model import OUNet
    from organic_sd.ounet.train import heldout_score, sample_rows

    log_to = log_to or sys.stdout
    t0 = time.perf_counter()
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if u.config.cond_dim:
        raise ValueError("the noise-level head is for unconditional O-UNets")
    schedule = torch.from_numpy(store.alphas_cumprod)
    if len(schedule) != u.config.num_steps or not torch.allclose(schedule, u.schedule.to(schedule.dtype), atol=1e-6):
        raise ValueError(f"store {store.path} was made by another teacher's schedule than this O-UNet's")
    dev = resolve_device(device)
    # a head is fitted on the stack's residual alone: an earlier head is dropped, not stacked on
    u = OUNet(replace(u.config, head_buckets=0), u.module, u.schedule, dict(u.meta), adapter=u.adapter).to(dev)
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
    out_scale = math.ceil(1.2 * float(y.abs().max()) * 4) / 4
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
        m = ola.fit(blk[rows, :-1], y[rows], strategy=strategy, population=population, out_scale=out_scale,
                    max_seconds=max(1.0, left / (buckets - j)), device=dev, seed=seed + j)
        weight[:, j, :-1], weight[:, j, -1] = m.readout.weight, m.readout.bias
    head = ola.OLAModule(ola.OLAConfig(x.shape[1], C, (), out_scale=out_scale),
                         {"strategy": strategy, "buckets": buckets, "seconds": round(time.perf_counter() - t0, 1)}).to(dev)
    head.readout.weight.copy_(weight.reshape(C, -1))
    head.readout.bias.zero_()
    del x, y
    eval_idx = np.sort(np.random.default_rng(seed + 1).choice(val_idx, min(eval_records, len(val_idx)),
                                                               replace=False))
    before = heldout_score(u, store, eval_idx)
    cand = OUNet(cfg, u.module, u.schedule, dict(u.meta), adapter=u.adapter, head=head)
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


def run_cli(args) -> int:
    """`osd train denoiser-head`: fit a head onto an O-UNet and save the result."""
    from organic_sd.data.denoiser_store import DenoiserStore
    from organic_sd.ounet.model import OUNet

    u = OUNet.load(args.ounet)
    store = DenoiserStore.open(args.store)
    u2, rep = fit_head(u, store, buckets=args.buckets, max_seconds=60.0 * args.max_minutes, max_rows=args.max_rows,
                       eval_records=args.eval_records, strategy=args.strategy, population=args.population,
                       device=args.device, seed=args.seed)
    path = u2.to("cpu").save(Path(args.out))
    print(f"wrote {path} ({u2.num_parameters():,} parameters{'' if rep['kept'] else ', without a head'})")
    return 0
