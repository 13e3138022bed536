"""The low-noise stack: a second per-pixel stack for the last DDIM steps, evolved on a frozen O-UNet.

An O-UNet's first steps lead the teacher's path to a digit, and its last ones (t < ~400) break it into
speckle (bench/ounet_hybrid.py): there the one stack shared by every noise level predicts v, and its
error reaches the sample unbounded. The low-noise stack reads the same per-pixel rows (the frozen
coarse stage feeding them) but only for steps t < split, and predicts x0 by default: its tanh readout
bounds x0 just past the pixel range, so a background pixel can settle on black. It is evolved by one
`ola.fit` (no gradients) on rows drawn with the update weight of its own target, and kept only if the
O-UNet's update-weighted held-out error on records below the split falls. Inference costs nothing
extra: each step runs one of the two stacks.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np
import torch

from organic_sd import ola
from organic_sd.devices import resolve_device
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.targets import TARGETS, X0_HEADROOM, update_weight
from organic_sd.ounet.train import DENOISER_UNITS_PER_ROUND, draw_rows, heldout_score, store_schedule
from organic_sd.runs import out_scale_for, typical_largest


def below_split_weights(target: str, schedule: torch.Tensor, t: np.ndarray, split: int) -> np.ndarray:
    """Records' steps t (N,) -> probabilities (N,) proportional to `target`'s 8-step update weight, 0 from split on."""
    tt = torch.as_tensor(np.asarray(t)).round().long()
    w = update_weight(target, schedule, tt, 8).double() * (tt < split)
    if float(w.sum()) == 0.0:
        raise ValueError(f"no record has t < {split}: the store holds nothing for a low-noise stack")
    return (w / w.sum()).numpy()


def below_split_eval(target: str, schedule: torch.Tensor, store, val_idx: np.ndarray, split: int, n: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The keep decision's records: up to n held-out records below the split (sorted), and each one's weight,
    how far an error in `target` (the main stack's) moves its update (mean 1)."""
    below = val_idx[np.asarray(store.t[val_idx]).round() < split]
    eval_idx = np.sort(np.random.default_rng(seed).choice(below, min(n, len(below)), replace=False))
    t_eval = torch.as_tensor(np.asarray(store.t[eval_idx])).round().long()
    w = update_weight(target, schedule, t_eval, 8).double().numpy()
    return eval_idx, w / w.mean()


def prune_units(u: OUNet, split: int, target: str, x: torch.Tensor, keep: int, log_to=None,
                rows: int = 200_000) -> ola.OLAModule:
    """u's one-layer low stack cut to the `keep` units that move its output most on rows x (N, in):
    |readout weight| times the spread of the unit's activation. The readout keeps its columns."""
    low = u.low
    if low is None or (u.config.low_split, u.config.low_target) != (split, target):
        raise ValueError(f"--prune cuts the O-UNet's own low-noise stack: it needs one for t < {split} predicting "
                         f"{target}, got {'none' if low is None else (u.config.low_split, u.config.low_target)}")
    if len(low.config.hidden) != 1 or not 0 < keep < low.config.hidden[0]:
        raise ValueError(f"--prune keeps 1 to {low.config.hidden[0] - 1 if low.config.hidden else 0} units of a "
                         f"one-layer stack, got {keep} of {tuple(low.config.hidden)}")
    col = low.config.in_dim  # the readout's first unit column
    with torch.no_grad():
        h = torch.tanh(low.hidden[0](x[:rows].to(low.readout.weight.device)))  # (N, H)
        score = low.readout.weight[:, col:].abs().sum(0) * h.std(0)  # (H,)
    kept = torch.sort(torch.argsort(score, descending=True)[:keep]).values
    cut = ola.OLAModule(ola.OLAConfig(low.config.in_dim, low.config.out_dim, (keep,), low.config.out_scale))
    with torch.no_grad():
        cut.hidden[0].weight.copy_(low.hidden[0].weight[kept]), cut.hidden[0].bias.copy_(low.hidden[0].bias[kept])
        cut.readout.weight.copy_(torch.cat([low.readout.weight[:, :col], low.readout.weight[:, col + kept]], 1))
        cut.readout.bias.copy_(low.readout.bias)
    print(f"low-noise stack: kept {keep} of {low.config.hidden[0]} units ({float(score[kept].sum() / score.sum()):.1%} "
          "of their summed use); re-evolving the readout", file=log_to or sys.stdout, flush=True)
    return cut.to(x.device)


def low_out_scale(cfg, y: torch.Tensor) -> float:
    """The low stack's tanh scale: just past the pixel range for x0 (saturated units draw clean black), else
    from the targets' typical largest magnitude."""
    if cfg.low_target == "x0":
        return X0_HEADROOM * max(abs(v) for v in cfg.pixel_range)
    return out_scale_for(typical_largest(y))


def fit_low(u: OUNet, store, split: int = 400, target: str = "x0", hidden=None, max_seconds: float = 300.0,
            max_rows: int = 600_000, eval_records: int = 512, population: int = 100, device: str = "cpu",
            seed: int = 0, init: ola.OLAModule | None = None, generations: int | None = None, progress=False,
            log_to=None, prune: int | None = None, refine: float = 0.0,
            refine_start: str = "cascade") -> tuple[OUNet, dict]:
    """Evolve a low-noise stack for u's steps t < split; returns (u with it if it helps, else u; report dict).

    `hidden`: its widths (default: u's stack's); `init`: a low stack of the same shape to continue (an
    interrupted fit's: ola.FitInterrupted carries it). `generations` instead of max_seconds: reproducible.
    `prune`: start from u's own low stack cut to its `prune` most used units (prune_units) and re-evolve
    its readout: a cheaper stack per step, its units as evolution found them. `refine`: the share of the search
    spent moving the grown units together (ola.Refine); with `init` or `prune`, all of it moves the given units.
    `refine_start` "random": a fresh stack starts from random units instead of the cascade (ola.Refine.measured).
    """
    log_to = log_to or sys.stdout
    refiner = ola.Refine.measured(refine, refine_start)  # a bad pair fails here, before any rows are drawn
    t0 = time.perf_counter()
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if u.adapter is not None:
        raise ValueError("a low-noise stack for a text-adapted O-UNet is not supported (its adapter is searched "
                         "on the main stack's rows)")
    schedule = store_schedule(u, store)
    dev = resolve_device(device)
    # an earlier low stack (and the clean stage that read it) is replaced, not stacked on
    if u.clean is not None:
        print("low-noise stack: the O-UNet's clean stage read the stack being replaced; it is dropped (train a new "
              "one with `osd train denoiser-clean`)", file=log_to, flush=True)
    base = OUNet(replace(u.config, low_split=0, clean_window=0), u.module, u.schedule, dict(u.meta), head=u.head,
                 stage=u.stage, prompts=u.prompts).to(dev)
    cfg = replace(base.config, low_split=split, low_target=target)
    train_idx, val_idx = store.indices("train"), store.indices("val")
    if len(val_idx) == 0:
        raise ValueError(f"store {store.path} has no held-out records: the low-noise stack could not be checked")
    rng = np.random.default_rng(seed)
    rows_cfg = replace(base.config, target=target)  # the rows' y: the low stack's own target
    p_train = below_split_weights(target, schedule, store.t[train_idx], split)
    p_val = below_split_weights(target, schedule, store.t[val_idx], split)
    x, y = draw_rows(rows_cfg, schedule, store, train_idx, max_rows, rng, dev, None, base.stage, p_train)
    xv, yv = draw_rows(rows_cfg, schedule, store, val_idx, max(10_000, max_rows // 10), rng, dev, None, base.stage,
                       p_val)
    out_scale = low_out_scale(cfg, y)
    if prune is not None:
        if init is None:  # (a resumed run continues its own pruned stack)
            init = prune_units(u, split, target, x, prune, log_to)
        hidden, out_scale = tuple(init.config.hidden), init.config.out_scale  # the stack's own bound stays
    hidden = tuple(base.module.config.hidden) if hidden is None else tuple(hidden)
    budget = f"{generations:,} generations" if generations else f"up to {max_seconds / 60:.3g} minutes"
    print(f"low-noise stack: t < {split}, target {target}, hidden {hidden}, {x.shape[0]:,} rows, out_scale "
          f"{out_scale:g}; evolving for {budget}" + ("" if progress else " (--progress shows the search)"),
          file=log_to, flush=True)
    low = ola.fit(x, y, hidden=hidden, out_scale=out_scale, population=population,
                  max_seconds=None if generations else max_seconds, generations=generations,
                  x_val=xv, y_val=yv, device=dev, seed=seed, init=init, progress=progress,
                  units_per_round=DENOISER_UNITS_PER_ROUND, refine=refiner)
    del x, y, xv, yv
    eval_idx, w = below_split_eval(base.config.target, schedule, store, val_idx, split, eval_records, seed + 1)
    cand = OUNet(cfg, base.module, base.schedule, dict(base.meta), head=base.head, stage=base.stage,
                 prompts=base.prompts, low=low).to(dev)
    rep = keep_decision("low-noise stack", base, cand, low, store, eval_idx, w, split, log_to,
                        {"split": split, "target": target, "hidden": list(hidden), "refine": refine,
                         "refine_start": refine_start,
                         "seconds": round(time.perf_counter() - t0, 1)})
    if not rep["kept"]:
        return base, rep
    cand.meta["low"] = rep
    return cand, rep


def keep_decision(what: str, before_u: OUNet, cand: OUNet, part: ola.OLAModule, store, eval_idx: np.ndarray,
                  w: np.ndarray, split: int, log_to, rep: dict) -> dict:
    """Score before_u and cand on the keep decision's records, say so, and return `rep` with the verdict: a part
    evolved below the split is kept only if the update-weighted held-out error falls."""
    before, after = heldout_score(before_u, store, eval_idx, w), heldout_score(cand, store, eval_idx, w)
    kept = after["heldout_mse"] < before["heldout_mse"]
    print(f"{what}: held-out update-weighted {before_u.config.target} MSE below t = {split}: "
          f"{before['heldout_mse']:.5g} -> {after['heldout_mse']:.5g} ({'kept' if kept else 'worse: not kept'})",
          file=log_to, flush=True)
    return {**rep, "before": before, "after": after, "kept": kept, "parameters": part.num_parameters(),
            "fit": {k: part.training_summary.get(k) for k in ("generations", "val_mse", "n_train", "device")}}

