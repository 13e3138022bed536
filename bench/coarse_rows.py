"""The O-UNet's coarse stage as an ola.fit problem: pooled x_t (and time) -> pooled teacher eps.

    python bench/coarse_rows.py --teacher ddpm-mnist:PATH --device cuda --out coarse.json

Rows are built in timestep order, as a store built step by step holds them: the first rows are all
low-noise steps. That order made `ola.fit` learn nothing on large row counts while its statistics
(whitening) came from the first 32,768 rows; `--first-rows` runs the fit with that old behaviour
beside the current one. Reported: held-out relative error (MSE / variance of the targets) on rows
drawn from the whole range, for single-layer and hidden-unit fits of the same budget.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F

from organic_sd import ola
from organic_sd.ola import cascade, population, readout
from organic_sd.teachers.denoiser import ddim_sample, load_denoiser


def time_features(t: torch.Tensor, n_steps: int, k: int = 4) -> torch.Tensor:
    """(N,) integer steps -> (N, 2k+1): t/T and sin/cos of it at k octaves."""
    tau = t.float()[:, None] / n_steps
    freqs = math.pi * 2.0 ** torch.arange(k, device=t.device)
    return torch.cat([tau, torch.sin(tau * freqs), torch.cos(tau * freqs)], dim=1)


def coarse_rows(teacher, x0: torch.Tensor, steps: torch.Tensor, gen: torch.Generator, pool: int):
    """Rows in timestep order: X = [pooled x_t, time features] (N, in), Y = pooled teacher eps (N, out)."""
    ab = teacher.alphas_cumprod.to(x0.device, torch.float32)
    xs, ys = [], []
    for t in steps.tolist():  # one block of rows per step: the store's order
        eps = torch.randn(x0.shape, generator=gen, device=x0.device)
        a = ab[t]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        tt = torch.full((x0.shape[0],), t, device=x0.device, dtype=torch.int64)
        e = torch.cat([teacher.eps(x_t[i:i + 4096], tt[i:i + 4096]) for i in range(0, x0.shape[0], 4096)])
        xs.append(torch.cat([F.avg_pool2d(x_t, pool).flatten(1), time_features(tt, len(ab))], dim=1))
        ys.append(F.avg_pool2d(e, pool).flatten(1))
    return torch.cat(xs), torch.cat(ys)


def first_rows(x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """The old row choice for statistics: the first max_rows rows."""
    return x[:max_rows]


def fit_and_score(x, y, xv, yv, out_scale, hidden, seconds, device, old, refine=0.0):
    """One ola.fit; -> (held-out relative error, generations, seconds)."""
    saved = population.spread_rows
    if old:
        for mod in (population, readout, cascade):
            mod.spread_rows = first_rows
    try:
        m = ola.fit(x, y, hidden=hidden, max_seconds=seconds, x_val=xv, y_val=yv, out_scale=out_scale, device=device,
                    refine=ola.Refine(share=refine))
    except ola.FitDidNotLearn as err:
        m = err.module
    finally:
        for mod in (population, readout, cascade):
            mod.spread_rows = saved
    rel = float((m(xv) - yv).square().mean() / yv.var(0).sum() * yv.shape[1])
    return rel, m.training_summary["generations"], m.training_summary["seconds"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="ddpm-mnist")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples", type=int, default=4096, help="teacher samples (x0) per step")
    ap.add_argument("--steps", type=int, default=64, help="timesteps, evenly spread over the schedule")
    ap.add_argument("--pool", type=int, default=4, help="average-pool factor (28 / 4 = 7x7)")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--hidden", default="0,64", help="comma-separated hidden widths to fit (0: none)")
    ap.add_argument("--refine", default="0", help="comma-separated ola.Refine shares for the hidden-unit fits")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    teacher = load_denoiser(args.teacher, dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    noise = torch.randn(args.samples, *teacher.sample_shape, generator=gen, device=dev)
    t0 = time.perf_counter()
    x0 = ddim_sample(teacher, noise, 50).clamp(-1, 1)
    n_steps = len(teacher.alphas_cumprod)
    steps = torch.linspace(1, n_steps - 1, args.steps).round().long()
    x, y = coarse_rows(teacher, x0, steps, gen, args.pool)
    # held-out rows: other samples (other noise), every step
    x0v = ddim_sample(teacher, torch.randn(1024, *teacher.sample_shape, generator=gen, device=dev), 50).clamp(-1, 1)
    xv, yv = coarse_rows(teacher, x0v, steps, gen, args.pool)
    out_scale = round(1.05 * float(y.abs().max()), 2)
    print(f"rows {tuple(x.shape)} -> {tuple(y.shape)}, held-out {tuple(xv.shape)}, out_scale {out_scale}, "
          f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    results = []
    for h in [int(v) for v in args.hidden.split(",")]:
        hidden = () if h == 0 else (h,)
        runs = [(True, 0.0), (False, 0.0)] if h == 0 else [(False, float(r)) for r in args.refine.split(",")]
        for old, refine in runs:
            rel, gens, secs = fit_and_score(x, y, xv, yv, out_scale, hidden, args.seconds, dev, old, refine)
            row = {"hidden": list(hidden), "statistics_from": "first rows" if old else "rows strided over all",
                   "refine": refine, "rel_error": rel, "generations": gens, "seconds": secs}
            print(json.dumps(row), flush=True)
            results.append(row)
    if args.out:
        doc = {"rows": list(x.shape), "held_out": list(xv.shape), "out_scale": out_scale, "args": vars(args),
               "machine": platform.node(), "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
               "results": results}
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
