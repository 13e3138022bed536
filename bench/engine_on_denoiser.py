"""Which engine setting closes the gap to a gradient fit on the O-UNet's hardest rows: the low-noise steps.

    python bench/engine_on_denoiser.py --ounet mnist --store STORE --out DIR \
        --variant base --variant spread3:spread=3 --variant adam [--split 400] [--seconds 240] [--device cuda]

The shipped O-UNet's samples break in their last DDIM steps (bench/ounet_hybrid.py), and a per-pixel stack
fitted by Adam on the same rows makes 40% less error there than one evolved (bench/ounet_low_noise.py).
This fits fresh stacks of the O-UNet's per-pixel shape on update-weighted rows of records with t < --split
(the O-UNet's frozen coarse stage feeding them), one per --variant, each for --seconds, and prints their
held-out v MSE. A variant is NAME or NAME:key=value,...; keys: spread (ola.Subspace.spread), hessian,
units (Subspace.units share), deflate (0/1), refine (ola.Refine share), start (cascade or random:
ola.Refine.measured), pop (population), upr (units per round), hidden (e.g. 64 or 64-32), strategy.
NAME "adam" is the gradient reference (never a training path).
Every module is saved in --out (NAME.safetensors) with a JSON line in --out/results.jsonl, so variants can
run as parallel processes sharing --rows-cache, and bench/ounet_low_noise.py-style sampling can follow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from organic_sd import ola
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.metrics.denoising import denoising_error
from organic_sd.ounet import generate as gen
from organic_sd.ounet.low import below_split_weights
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.train import draw_rows
from organic_sd.teachers.ddim import seeded_noise

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ounet_hybrid import mixed_path  # noqa: E402
from ounet_low_noise import LowNoiseSplit  # noqa: E402
from ounet_reference import adam_fit  # noqa: E402

KEYS = {"spread": float, "hessian": int, "units": float, "deflate": int, "refine": float, "pop": int, "upr": int,
        "hidden": str, "strategy": str, "start": str}


def parse_variant(spec: str) -> tuple[str, dict]:
    """'spread3:spread=3,upr=8' -> ('spread3', {'spread': 3.0, 'upr': 8})."""
    name, _, rest = spec.partition(":")
    opts = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in KEYS:
            raise SystemExit(f"variant {spec!r}: {item!r} is not key=value with a key of {sorted(KEYS)}")
        opts[key] = KEYS[key](value)
    if not name:
        raise SystemExit(f"variant {spec!r} has no name")
    return name, opts


def fit_kwargs(opts: dict, hidden: tuple[int, ...]) -> dict:
    """A variant's options -> ola.fit keyword arguments (the trainer's per-pixel defaults otherwise)."""
    sub = ola.Subspace(units=opts.get("units", 1.0), hessian=opts.get("hessian", 0),
                       deflate=bool(opts.get("deflate", 0)), spread=opts.get("spread", 1.0))
    h = tuple(int(v) for v in opts["hidden"].split("-")) if "hidden" in opts else hidden
    refine = ola.Refine.measured(opts.get("refine", 0.0), opts.get("start", "cascade"))
    return {"hidden": h, "subspace": sub, "refine": refine,
            "population": opts.get("pop", 40), "units_per_round": opts.get("upr", 16),
            "strategy": opts.get("strategy", "auto")}


def low_noise_rows(u: OUNet, cfg, store: DenoiserStore, split: int, n_rows: int, dev: torch.device):
    """Update-weighted training and held-out rows (cfg.target) of records with t < split: ((x, y), (x_val, y_val))."""
    def probs(pool):
        return below_split_weights(cfg.target, u.schedule, store.t[pool], split)

    rng = np.random.default_rng(0)
    tr, va = store.indices("train"), store.indices("val")
    x, y = draw_rows(cfg, u.schedule, store, tr, n_rows, rng, dev, None, u.stage, probs(tr))
    xv, yv = draw_rows(cfg, u.schedule, store, va, 60_000, rng, dev, None, u.stage, probs(va))
    return (x, y), (xv, yv)


class SampleJudge:
    """Scores a denoiser's 8-step samples from the dev noise against the teacher's: low-noise error and PSNR."""

    def __init__(self, teacher: str, u: OUNet, n: int, dev: torch.device):
        from organic_sd.teachers import load_denoiser

        self.teacher = load_denoiser(teacher, device=dev)
        self.noise = seeded_noise(u.sample_shape, n, 5002).to(dev)
        self.pr = u.config.pixel_range
        self.ref = mixed_path(self.teacher, self.teacher, 0, self.noise, 8)
        self.ref_err = float(denoising_error(self.teacher, self.ref, self.pr).mean())

    def __call__(self, model) -> dict:
        x = mixed_path(model, model, 8, self.noise, 8)
        return {"low_noise_error": float(denoising_error(self.teacher, x, self.pr).mean()),
                "teacher_low_noise_error": self.ref_err,
                "psnr_8_steps": gen.psnr_unit(gen.to_unit(x, self.pr), gen.to_unit(self.ref, self.pr))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ounet", default="mnist", help="a multi-scale O-UNet (file, run or shipped name)")
    p.add_argument("--store", required=True, help="a denoiser store of its teacher")
    p.add_argument("--out", required=True, help="folder for the fitted stacks and results.jsonl")
    p.add_argument("--variant", action="append", default=[], help="NAME or NAME:key=value,... (repeatable; none: "
                                                                   "only build --rows-cache)")
    p.add_argument("--split", type=int, default=400, help="rows of records with t < split")
    p.add_argument("--rows", type=int, default=300_000)
    p.add_argument("--rows-cache", default=None, help="a .pt file of the rows: read if present, else written")
    p.add_argument("--seconds", type=float, default=240.0, help="search (or Adam) seconds per variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", choices=("eps", "x0", "v"), default=None,
                   help="what the specialists predict (default: the O-UNet's own); x0 gets a tanh bound just past "
                        "the pixel range, so a saturated unit draws clean background")
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher", default=None, help="with --samples: score each stack's 8-step samples")
    p.add_argument("--samples", type=int, default=0, help="8-step samples (noise 5002, the dev seed's) per stack: "
                                                          "the low-noise error and PSNR against the teacher")
    args = p.parse_args(argv)
    if args.samples and not args.teacher:
        raise SystemExit("--samples needs --teacher")
    variants = [parse_variant(v) for v in args.variant]
    dev = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    u = OUNet.load(args.ounet)
    if u.stage is None or u.config.cond_dim:
        raise SystemExit(f"{args.ounet}: this bench runs unconditional multi-scale O-UNets")
    u.to(dev)
    cfg = replace(u.config, target=args.target or u.config.target)
    cache = Path(args.rows_cache) if args.rows_cache else None
    if cache is not None and cache.is_file():
        (x, y), (xv, yv) = (tuple(t.to(dev) for t in pair) for pair in torch.load(cache, weights_only=True))
    else:
        (x, y), (xv, yv) = low_noise_rows(u, cfg, DenoiserStore.open(args.store), args.split, args.rows, dev)
        if cache is not None:
            tmp = cache.with_suffix(".tmp")
            torch.save(((x.cpu(), y.cpu()), (xv.cpu(), yv.cpu())), tmp)
            tmp.replace(cache)
    power = float(yv.square().mean())
    if cfg.target == u.config.target:
        out_scale = u.module.config.out_scale
        with torch.no_grad():
            shipped = float((u.module(xv) - yv).square().mean())
    else:  # the own stack predicts another quantity: no row-level comparison
        lo, hi = cfg.pixel_range
        out_scale, shipped = 1.05 * max(abs(lo), abs(hi)) if cfg.target == "x0" else float(y.abs().max()), None
    own = f"the O-UNet's own stack: held-out MSE {shipped:.5f}" if shipped is not None else \
        f"the O-UNet's own stack predicts {u.config.target}, not {cfg.target}: no row-level comparison"
    print(f"{x.shape[0]:,} training rows, {xv.shape[0]:,} held out, t < {args.split}, target {cfg.target}; {own}")
    judge = SampleJudge(args.teacher, u, args.samples, dev) if args.samples else None
    if judge is not None:
        print(json.dumps({"variant": "own stack", **judge(u)}))
    for name, opts in variants:
        t0 = time.perf_counter()
        if name == "adam":
            shape = ola.OLAModule(replace(u.module.config, out_scale=out_scale))
            module, _ = adam_fit(shape, x, y, xv, yv, args.seconds, batch=4096, seed=args.seed)
            kw = {"hidden": u.module.config.hidden}
        else:
            kw = fit_kwargs(opts, tuple(u.module.config.hidden))
            module = ola.fit(x, y, out_scale=out_scale, max_seconds=args.seconds, seed=args.seed,
                             device=dev, **kw)
        with torch.no_grad():
            mse = float((module(xv) - yv).square().mean())
        row = {"variant": name, "options": opts, "heldout_mse": mse, "relative": mse / power,
               "own_stack_mse": shipped, "seconds": round(time.perf_counter() - t0, 1),
               "generations": getattr(module, "training_summary", {}).get("generations"),
               "params": sum(p.numel() for p in module.parameters()), "device": str(dev), "rows": x.shape[0],
               "split": args.split, "hidden": list(kw["hidden"]), "target": cfg.target}
        if judge is not None:
            row.update(judge(LowNoiseSplit(u, module, args.split, cfg)))
        print(json.dumps(row), flush=True)
        module.save(out / f"{name}.safetensors")
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
