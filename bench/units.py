"""Do a cascade round's units stay distinct? One round evolved against a least-squares model's residual.

    python bench/units.py --store stores/taef2-256 --part decoder --window 3 --units 8 --generations 1000
    python bench/units.py --run runs/odec            # the units of a trained O-VAE part, on its store rows
    python bench/units.py --store S --window 5 --hessian 24 --val-store SET14_STORE   # held-out photos instead

Reports, on the store's held-out rows: the median of each unit's largest |cosine| with another
unit's weights, the effective rank (participation ratio) of the units' nonlinear parts (each
unit's output minus its least-squares fit from the inputs, which a readout already has), and the
share of the held-out residual that least squares on [inputs, units] removes, and the held-out PSNR
of that least-squares readout (decoder; pooled over rows) beside the linear one's. A round whose units
are copies of one another (docs/BENCHMARKS.md: rank ~1 for 8 units) explains little for its size.
`--hessian m` gives each unit m search directions of its own (ola.Subspace.hessian).
The least-squares fits here are measurements only; the units come from the engine's own search.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from organic_sd.data import Store
from organic_sd.metrics.pixels import psnr_of_mse
from organic_sd.ola import cascade
from organic_sd.ola.readout import Data
from organic_sd.ola.search import Budget
from organic_sd.ola.strategies import make_strategy
from organic_sd.ovae.model import read_parts
from organic_sd.ovae.config import TrainConfig
from organic_sd.ovae.rows import PartRows, part_config
from organic_sd.ovae.train import SUBSPACE


def with_ones(x: torch.Tensor) -> torch.Tensor:
    """(N, in) -> (N, in+1) with a constant column."""
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)


def diversity(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> dict:
    """Weight cosines and the effective rank of the nonlinear parts of units (U, in), (U,) on rows x (N, in)."""
    wn = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (wn @ wn.T).abs().fill_diagonal_(0)
    h = torch.tanh(x @ w.T + b).double()
    q, _ = torch.linalg.qr(with_ones(x).double())
    hr = h - q @ (q.T @ h)  # (N, U): what a linear readout of x cannot make
    sv = torch.linalg.svdvals(hr / hr.norm(dim=0).clamp_min(1e-12))
    return {"units": w.shape[0], "median_max_weight_cosine": float(cos.max(1).values.median()),
            "rank_nonlinear": float(sv.square().sum() ** 2 / sv.pow(4).sum())}


def explained(w, b, x, r, xv, rv) -> tuple[float, float]:
    """(share of the held-out residual rv that least squares on [x, units] (fitted on x, r) removes, its MSE after)."""
    def feats(rows):  # (N, in + U + 1)
        return with_ones(torch.cat([rows, torch.tanh(rows @ w.T + b)], 1)).double()

    f, fv = feats(x), feats(xv)
    sol = torch.linalg.solve(f.T @ f + 1e-6 * len(f) * torch.eye(f.shape[1], dtype=f.dtype), f.T @ r.double())
    mse = float((rv.double() - fv @ sol).square().mean())
    return 1 - mse / float(rv.double().square().mean()), mse


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="an O-VAE store (osd precompute frames)")
    p.add_argument("--run", help="score the first hidden layer of this trained part instead of evolving one")
    p.add_argument("--part", choices=["encoder", "decoder"], default="decoder")
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--units", type=int, default=8)
    p.add_argument("--generations", type=int, default=1000)
    p.add_argument("--hessian", type=int, default=0, help="search directions of each unit's own (0: all)")
    p.add_argument("--deflate", action="store_true", help="unit r counts only beyond units 0..r-1 (ola.Subspace.deflate)")
    p.add_argument("--val-store", help="score on every row of this store (e.g. held-out photos) instead of --store's val")
    p.add_argument("--population", type=int, default=40)
    p.add_argument("--rows", type=int, default=60_000, help="training rows drawn from the store")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    if args.run:
        part = read_parts(args.run)  # an O-VAE file holds both parts: --part picks
        kind = args.part if part[args.part] is not None else ("encoder" if part["encoder"] is not None else "decoder")
        module, pcfg = part[kind].module, part[kind].config
        if not args.store:
            p.error("--run needs --store to draw rows from")
        args.part, args.window = kind, pcfg.window
    elif not args.store:
        p.error("give --store")
    store = Store.open(args.store)
    rows = PartRows(store, part_config(TrainConfig(args.part, args.store, "-", window=args.window), store), cpu, None)
    x, y = rows.draw(store.indices("train"), args.rows, np.random.default_rng(args.seed))
    if args.val_store:
        val = Store.open(args.val_store)
        vrows = PartRows(val, part_config(TrainConfig(args.part, args.val_store, "-", window=args.window), val), cpu, None)
        xv, yv = vrows.draw(val.indices("all"), 10 ** 9, np.random.default_rng(args.seed + 1))
    else:
        xv, yv = rows.draw(store.indices("val"), max(1000, args.rows // 8), np.random.default_rng(args.seed + 1))
    lin = torch.linalg.lstsq(with_ones(x), y).solution  # the linear model whose residual the round explains
    r, rv = y - with_ones(x) @ lin, yv - with_ones(xv) @ lin

    t0 = time.perf_counter()
    if args.run:
        w, b = module.hidden[0].weight, module.hidden[0].bias
    else:
        data = Data(x, y, xv, yv, 1024, torch.Generator().manual_seed(args.seed))
        found, _ = cascade._evolve_units(data, x, xv, resid=r, resid_val=rv, n_units=args.units,
                                         make_strategy=lambda: make_strategy("auto", args.population),
                                         budget=Budget(None, args.generations), progress=False, desc="units",
                                         share=SUBSPACE.units, hessian=args.hessian, deflate=args.deflate)
        w, b = found[:, :-1], found[:, -1]
    share, mse = explained(w, b, x, r, xv, rv)
    out = {"store": args.store, "val_store": args.val_store, "part": args.part, "window": args.window, "run": args.run,
           "generations": None if args.run else args.generations, "hessian": args.hessian, "deflate": args.deflate,
           "population": args.population, "seed": args.seed, **diversity(w, b, xv), "heldout_residual_explained": share,
           "seconds": round(time.perf_counter() - t0, 1)}
    if args.part == "decoder":  # pixels in [-1, 1]: PSNR on [0, 1]
        out["heldout_psnr_linear"] = psnr_of_mse(float(rv.double().square().mean()))
        out["heldout_psnr_with_units"] = psnr_of_mse(mse)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
