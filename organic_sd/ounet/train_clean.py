"""`osd train denoiser-clean`: evolve the clean stage (ounet/clean.py) on a frozen O-UNet's low-noise stack.

Rows come from the store's records below the split (drawn by the x0 update weight, like the low stack's):
the frozen low stack's x0 on the record's x_t, windowed, against the teacher's x0 at that pixel. One
`ola.fit` (no gradients); the stage is kept only if the O-UNet's update-weighted held-out error on records
below the split falls.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np
import torch

from organic_sd import ola
from organic_sd.devices import resolve_device
from organic_sd.ounet.clean import clean_rows, x0_bound
from organic_sd.ounet.low import below_split_eval, below_split_weights, keep_decision
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.targets import from_eps
from organic_sd.ounet.train import sample_rows, store_schedule


def _without_clean(u: OUNet, dev) -> OUNet:
    return OUNet(replace(u.config, clean_window=0), u.module, u.schedule, dict(u.meta), adapter=u.adapter,
                 head=u.head, stage=u.stage, prompts=u.prompts, low=u.low).to(dev)


def fit_clean(u: OUNet, store, window: int = 5, hidden=(16,), max_seconds: float = 180.0, max_rows: int = 600_000,
              eval_records: int = 512, population: int = 100, device: str = "cpu", seed: int = 0,
              init: ola.OLAModule | None = None, generations: int | None = None, progress=False,
              log_to=None, refine: float = 0.0, refine_start: str = "cascade") -> tuple[OUNet, dict]:
    """Evolve a clean stage reading a `window` x `window` window of u's low-stack x0; returns (u with it if it
    beats u as given (with or without a clean stage), else u unchanged; report dict). `init`: a clean stage of
    the same shape to continue; `generations` instead of max_seconds: reproducible; `refine`: the share of the search
    spent moving the grown units together (ola.Refine); `refine_start` "random": from random units
    (ola.Refine.measured)."""
    log_to = log_to or sys.stdout
    refiner = ola.Refine.measured(refine, refine_start)  # a bad pair fails here, before any rows are drawn
    t0 = time.perf_counter()
    if u.low is None or u.config.low_target != "x0":
        raise ValueError("a clean stage reads the low-noise stack's x0: this O-UNet has none predicting x0 "
                         "(train one with `osd train denoiser-low`)")
    if u.adapter is not None:
        raise ValueError("a clean stage for a text-adapted O-UNet is not supported")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the clean stage's window must be odd and >= 1, got {window}")
    schedule = store_schedule(u, store)
    dev = resolve_device(device)
    base = _without_clean(u, dev)  # an earlier clean stage is replaced, not stacked on
    cfg = replace(base.config, clean_window=window)  # validates the window
    split = cfg.low_split
    train_idx, val_idx = store.indices("train"), store.indices("val")
    if len(val_idx) == 0:
        raise ValueError(f"store {store.path} has no held-out records: the clean stage could not be checked")
    sched_dev = schedule.to(dev)

    def rows_of(idx):
        x_t = torch.from_numpy(store.x_t[idx]).to(dev)  # (n, C, H, W)
        t = torch.from_numpy(store.t[idx]).to(dev).round().long()
        cond = torch.from_numpy(store.cond[idx]).to(dev) if cfg.cond_dim else None
        with torch.no_grad():
            x0_low = base.low_x0(x_t, t, cond)
        x = clean_rows(cfg, sched_dev, x_t, t, x0_low).flatten(0, 1)  # (n HW, in)
        x0 = from_eps("x0", torch.from_numpy(store.eps[idx]).to(dev), x_t, sched_dev[t].float())
        return x, x0.flatten(2).transpose(1, 2).flatten(0, 1)  # (n HW, C)

    rng = np.random.default_rng(seed)
    p_train = below_split_weights("x0", schedule, store.t[train_idx], split)
    p_val = below_split_weights("x0", schedule, store.t[val_idx], split)
    x, y = sample_rows(cfg, train_idx, max_rows, rng, rows_of, p_train)
    xv, yv = sample_rows(cfg, val_idx, max(10_000, max_rows // 10), rng, rows_of, p_val)
    hidden = tuple(hidden)
    budget = f"{generations:,} generations" if generations else f"up to {max_seconds / 60:.3g} minutes"
    print(f"clean stage: t < {split}, {window}x{window} window of the low stack's x0, hidden {hidden}, "
          f"{x.shape[0]:,} rows; evolving for {budget}" + ("" if progress else " (--progress shows the search)"),
          file=log_to, flush=True)
    clean = ola.fit(x, y, hidden=hidden, out_scale=x0_bound(cfg), population=population,
                    max_seconds=None if generations else max_seconds, generations=generations,
                    x_val=xv, y_val=yv, device=dev, seed=seed, init=init, progress=progress,
                    refine=refiner)
    del x, y, xv, yv
    eval_idx, w = below_split_eval(base.config.target, schedule, store, val_idx, split, eval_records, seed + 1)
    cand = OUNet(cfg, base.module, base.schedule, dict(base.meta), head=base.head, stage=base.stage,
                 prompts=base.prompts, low=base.low, clean=clean).to(dev)
    u = u.to(dev)  # the bar is u as given: a clean stage it already has is replaced only by a better one
    rep = keep_decision("clean stage", u, cand, clean, store, eval_idx, w, split, log_to,
                        {"window": window, "hidden": list(hidden), "refine": refine, "refine_start": refine_start,
                         "seconds": round(time.perf_counter() - t0, 1)})
    if not rep["kept"]:
        return u, rep
    cand.meta["clean"] = rep
    return cand, rep
