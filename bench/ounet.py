"""Benchmark O-UNet configurations on the MNIST DDPM teacher: eps error, few-step DDIM, size and CPU speed.

    python bench/ounet.py [--store STORE] [--teacher ddpm-mnist] [--seconds 60] [--out bench/out/ounet]

For each configuration (linear stack with each search strategy; a stack with hidden units) an
O-UNet is evolved with `osd train denoiser`'s loop for --seconds, then scored by
`osd eval denoiser` (organic_sd.ounet.evaluate) against the teacher:
  - eps error (MSE / variance of the teacher's eps) at t = 10 / 50 / 100 / 250 / 500 on fresh teacher
    samples re-noised at t (never in the store)
  - PSNR between the clone's and the teacher's DDIM samples from the same noise, 4 / 8 / 20 steps
  - parameters, and CPU time of one eps call (one batch) as a ratio to the teacher's, in this process
  - KID x1000, precision and recall of the clone's 8-step DDIM samples (--samples of them, noise seed
    --seed + 2) against the teacher's 50-step samples from the same noise (the reference), beside the
    teacher's own 8-step samples' (organic_sd.ounet.distribution; the teacher's sets are drawn once per call)
The reference row is the calibration note's per-timestep patch linear clone: one least-squares map per
bucket of t (16 buckets over the schedule), 7x7 window of x_t -> eps at the centre pixel. It is the
single-layer optimum evolution is measured against, and lives here only (never used for training).
Without --store a small store is built (or resumed) in OUT/store by `osd precompute denoiser`'s code.
Writes results.json and results.md to --out, merged with earlier calls' results there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ola.strategies import STRATEGIES
from organic_sd.ounet.evaluate import STEPS, TS, evaluate_denoiser, teacher_parameters
from organic_sd.ounet.model import OUNet, OUNetConfig
from organic_sd.ounet.train import DenoiserTrainConfig, train
from organic_sd.teachers.denoiser import check_eps_inputs

REPO = Path(__file__).resolve().parents[1]

# name -> DenoiserTrainConfig settings (the rest: its defaults, window 9, modulated 5x5, 4x4 context)
CONFIGS = {**{f"linear-{s}": {"hidden": (), "strategy": s} for s in STRATEGIES},
           "hidden32-auto": {"hidden": (32,), "strategy": "auto"},
           "hidden32-deflate": {"hidden": (32,), "strategy": "auto", "deflate": True}}
REFERENCE = "LS patch linear 7x7, 16 t-buckets"
BUCKETS, REF_WINDOW = 16, 7


class BucketLinear(nn.Module):
    """eps at each pixel = W_b . (k x k window of x_t) + c_b, b the bucket of t: the closed-form reference clone."""

    def __init__(self, config: OUNetConfig, schedule: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.config, self.meta = config, {"reference": "least squares per t bucket"}
        self.weight = nn.Parameter(weight, requires_grad=False)  # (K, C, C k k)
        self.bias = nn.Parameter(bias, requires_grad=False)  # (K, C)
        self.register_buffer("_schedule", torch.as_tensor(schedule, dtype=torch.float64), persistent=False)

    schedule = property(lambda self: self._schedule.cpu())
    alphas_cumprod = schedule
    sample_shape = property(lambda self: self.config.sample_shape)
    device = property(lambda self: self.weight.device)

    def num_parameters(self) -> int:
        """Weights and biases of every bucket."""
        return self.weight.numel() + self.bias.numel()

    def eps(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """(B, C, H, W) x_t, (B,) t -> (B, C, H, W) eps."""
        cfg = self.config
        tt = check_eps_inputs(x_t, t, cfg.sample_shape, cfg.num_steps)
        B, C, H, W = x_t.shape
        win = F.unfold(x_t.to(self.device, torch.float32), cfg.window, padding=cfg.window // 2)  # (B, C k k, HW)
        b = bucket(tt, cfg.num_steps).to(self.device)  # (B,)
        out = torch.einsum("bcd,bdp->bcp", self.weight[b], win) + self.bias[b][:, :, None]  # (B, C, HW)
        return out.reshape(B, C, H, W)

    forward = eps


def bucket(t: torch.Tensor, num_steps: int) -> torch.Tensor:
    """(B,) steps -> (B,) bucket index in 0..BUCKETS-1, equal shares of the schedule."""
    return (t.long() * BUCKETS // num_steps).clamp(max=BUCKETS - 1)


def least_squares_reference(store: DenoiserStore, ridge: float = 1e-6, chunk: int = 64) -> BucketLinear:
    """Fit one ridge least-squares map per t bucket on every training record of the store."""
    m = store.meta
    schedule = torch.from_numpy(store.alphas_cumprod)  # (T,)
    C = m["shapes"]["x_t"][0]
    cfg = OUNetConfig(sample_shape=tuple(m["shapes"]["x_t"]), num_steps=len(schedule), window=REF_WINDOW,
                      teacher=m["teacher"], pixel_range=store.pixel_range)
    d = C * REF_WINDOW ** 2 + 1
    gram = torch.zeros(BUCKETS, d, d, dtype=torch.float64)  # normal equations, summed chunk by chunk
    rhs = torch.zeros(BUCKETS, d, C, dtype=torch.float64)
    idx = store.indices("train")
    for i in range(0, len(idx), chunk):
        j = idx[i:i + chunk]
        x_t = torch.from_numpy(store.x_t[j]).float()  # (n, C, H, W)
        b = bucket(torch.from_numpy(store.t[j]).round().long(), cfg.num_steps)  # (n,)
        eps = torch.from_numpy(store.eps[j]).double().flatten(2)  # (n, C, HW)
        win = F.unfold(x_t, REF_WINDOW, padding=REF_WINDOW // 2).double()  # (n, C k k, HW)
        x = torch.cat([win, torch.ones_like(win[:, :1])], 1)  # (n, d, HW)
        for k in b.unique().tolist():
            sel = b == k
            xs = x[sel].transpose(1, 2).reshape(-1, d)  # (rows, d)
            gram[k] += xs.T @ xs
            rhs[k] += xs.T @ eps[sel].transpose(1, 2).reshape(-1, C)
    seen = [k for k in range(BUCKETS) if gram[k, -1, -1] > 0]
    if not seen:
        raise ValueError(f"store {store.path} has no training records to fit the reference on")
    sol = torch.zeros(BUCKETS, d, C, dtype=torch.float64)
    for k in seen:
        g = gram[k] + ridge * gram[k].diagonal().mean() * torch.eye(d, dtype=torch.float64)
        sol[k] = torch.linalg.solve(g, rhs[k])
    for k in range(BUCKETS):  # a bucket the store never visited borrows its nearest visited neighbour's map
        if k not in seen:
            sol[k] = sol[min(seen, key=lambda s: abs(s - k))]
    w = sol[:, :-1].transpose(1, 2).float().contiguous()  # (K, C, C k k)
    return BucketLinear(cfg, schedule, w, sol[:, -1].float().contiguous())


def row(name: str, rep: dict) -> dict:
    """One results row from an evaluation report."""
    d = rep.get("distribution")
    return {"name": name, "params": rep["parameters"]["ounet"], "eps_error": rep["eps_error"],
            "psnr": {k: v["psnr"] for k, v in rep["ddim"].items()}, "cpu_ms": rep["cpu"]["ounet_ms_per_step"],
            "teacher_cpu_ms": rep["cpu"]["teacher_ms_per_step"], "speedup": rep["cpu"]["speedup"],
            "training": rep.get("training"),
            "distribution": d and {k: d[k] for k in ("reference", "ref_steps", "steps", "n", "seed", "ounet",
                                                     "teacher") if k in d}}


def _dist(r: dict | None) -> str:
    """KID x1000 / precision / recall / low-noise error cell, '-' for rows scored without distribution metrics."""
    if not r:
        return "-"
    low = f" / {r['denoise_err']:.4f}" if "denoise_err" in r else ""
    return f"{r['kid_x1000']:,.1f} / {r['precision']:.3f} / {r['recall']:.3f}{low}"


def markdown(rows: list[dict], args, teacher_id: str, teacher_params) -> str:
    """The results table, with a line saying how it was measured."""
    ts = list(rows[0]["eps_error"]) if rows else [str(t) for t in TS]
    ks = list(rows[0]["psnr"]) if rows else [str(k) for k in STEPS]
    t_ms = rows[-1]["teacher_cpu_ms"] if rows else None
    tp = "?" if teacher_params is None else f"{teacher_params:,}"
    lines = [f"O-UNet benchmark: teacher `{teacher_id}` ({tp} parameters), store `{args.store}`, "
             f"{args.seconds:g} s of evolution per configuration on {args.device}; {args.n} fresh samples "
             f"(seed {args.seed}); CPU time of one eps call on {args.time_batch} samples, {args.threads} thread(s)"
             + (f", teacher {t_ms:.2f} ms." if t_ms else "."), "",
             (f"| configuration | params | eps error t = {' / '.join(ts)} | DDIM PSNR vs teacher, "
              f"{' / '.join(ks)} steps (dB) | KID x1000 / P / R / low-noise error | CPU ms / step | x faster than teacher |"),
             "| --- | ---: | --- | --- | --- | ---: | ---: |"]
    for r in rows:
        eps = " / ".join(f"{r['eps_error'][t]:.3f}" for t in ts)
        psnr = " / ".join(f"{r['psnr'][k]:.2f}" for k in ks)
        sp = "" if r["speedup"] is None else f"{r['speedup']:.1f}"
        kid = _dist((r.get("distribution") or {}).get("ounet"))
        lines.append(f"| {r['name']} | {r['params']:,} | {eps} | {psnr} | {kid} | {r['cpu_ms']:.2f} | {sp} |")
    d = next((r["distribution"] for r in reversed(rows) if r.get("distribution")), None)
    if d:
        lines += ["", (f"KID x1000 / P / R: {d['steps']}-step DDIM samples ({d['n']:,}, noise seed {d['seed']}) "
                       f"against the reference, {d['reference']} from the same noise (pooled 4x4 shape space, k = 3, "
                       f"partners left out); low-noise error: the teacher's eps error on the samples noised a little "
                       f"(metrics/denoising.py); the teacher's own {d['steps']}-step samples: {_dist(d['teacher'])}.")]
    lines += ["", ("LS row: closed-form least squares (one linear map per t bucket), a reference, not evolution. "
                   "Speed ratios of different rows were measured at different moments of one process.")]
    return "\n".join(lines) + "\n"


def open_or_build_store(args, teacher) -> DenoiserStore:
    """--store, or a small store built (resumed when already there) in OUT/store."""
    if args.store is None:
        from organic_sd.data.denoiser_precompute import precompute_denoiser

        args.store = str(Path(args.out) / "store")
        print(f"no --store: building {args.store} ({args.store_samples} samples x ({args.store_steps} DDIM steps + "
              f"{args.store_renoise} re-noised))", flush=True)
        rep = precompute_denoiser(teacher, args.store, args.store_samples, steps=args.store_steps,
                                  renoise=args.store_renoise, val_fraction=0.1, seed=0, progress=False)
        print(rep.summary(), flush=True)
    store = DenoiserStore.open(args.store)
    if store.meta["teacher"] != teacher.id:
        raise SystemExit(f"the store holds teacher {store.meta['teacher']!r} but --teacher is {teacher.id!r}")
    return store


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=None, help="denoiser store of the teacher (default: build one in OUT/store)")
    p.add_argument("--teacher", default="ddpm-mnist", help="denoiser teacher spec (the store's teacher)")
    p.add_argument("--seconds", type=float, default=60.0, help="evolution seconds per configuration")
    p.add_argument("--tick-seconds", type=float, default=None, help="default: a third of --seconds")
    p.add_argument("--max-rows", type=int, default=60_000, help="pixel rows drawn per tick")
    p.add_argument("--eval-records", type=int, default=64, help="held-out store records scored per tick")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    p.add_argument("--no-reference", action="store_true", help="skip the least-squares reference")
    p.add_argument("--ounet", nargs="*", default=[], metavar="NAME=PATH",
                   help="also score O-UNets trained elsewhere (e.g. on a GPU), as rows named NAME")
    p.add_argument("--n", type=int, default=64, help="fresh samples for the eps error and the DDIM comparison")
    p.add_argument("--seed", type=int, default=999, help="noise seed of the evaluation")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS), help="DDIM step counts")
    p.add_argument("--samples", type=int, default=2000,
                   help="samples per set for KID / precision / recall against the teacher's 50-step samples (0: skip)")
    p.add_argument("--samples-steps", type=int, default=8, help="DDIM steps of the sets scored by those metrics")
    p.add_argument("--time-batch", type=int, default=16, help="samples in the timed eps call")
    p.add_argument("--threads", type=int, default=1, help="torch threads for everything (timing included)")
    p.add_argument("--store-samples", type=int, default=64, help="without --store: trajectories in the built store")
    p.add_argument("--store-steps", type=int, default=20, help="without --store: DDIM steps per trajectory")
    p.add_argument("--store-renoise", type=int, default=8, help="without --store: re-noised copies per sample")
    p.add_argument("--device", default="cpu", help="training and sampling device (timing is always on the CPU)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "ounet"), help="folder for results.json/.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)  # the machine is shared: the whole run stays on --threads
    from organic_sd.teachers import load_denoiser

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_denoiser(args.teacher, device=args.device)
    cpu_teacher = teacher if teacher.device.type == "cpu" else load_denoiser(args.teacher, device="cpu")
    store = open_or_build_store(args, teacher)
    names = [n for n in args.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations {unknown}; known: {list(CONFIGS)}")
    ev = {"n": args.n, "seed": args.seed, "steps": args.steps, "threads": args.threads,
          "time_batch": args.time_batch, "cpu_teacher": cpu_teacher, "samples": args.samples,
          "sample_steps": args.samples_steps, "sample_cache": {}}  # the teacher's sample sets: drawn once
    results = []
    if not args.no_reference:
        print(f"== {REFERENCE}", flush=True)
        ref = least_squares_reference(store).to(args.device)
        results.append(row(REFERENCE, evaluate_denoiser(ref, teacher, out / "eval" / "ls-reference", **ev)))
        print(json.dumps(results[-1]), flush=True)
    for spec in args.ounet:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).stem
        print(f"== {name}", flush=True)
        results.append(row(name, evaluate_denoiser(OUNet.load(path, args.device), teacher, out / "eval" / name, **ev)))
        print(json.dumps(results[-1]), flush=True)
    tick = args.tick_seconds or args.seconds / 3
    for name in names:
        kw = CONFIGS[name]
        run = out / "runs" / name
        shutil.rmtree(run, ignore_errors=True)  # a fresh run: resuming would give it more than --seconds
        print(f"== {name}", flush=True)
        cfg = DenoiserTrainConfig(store=args.store, out=str(run), max_minutes=args.seconds / 60, tick_seconds=tick,
                                  first_tick_seconds=0.6 * args.seconds if kw["hidden"] else None,
                                  max_rows=args.max_rows, eval_records=args.eval_records, device=args.device, **kw)
        res = train(cfg)
        rep = evaluate_denoiser(OUNet.load(run, args.device), teacher, out / "eval" / name, **ev)
        rep["training"] = {"ticks": res["tick"], "minutes": round(res["minutes"], 3), "store_rel_err": res.get("rel_err")}
        results.append(row(name, rep))
        print(json.dumps(results[-1]), flush=True)
    # results of earlier calls with the same --out are kept (configs can be run in separate calls)
    f = out / "results.json"
    old = json.loads(f.read_text())["results"] if f.is_file() else []
    done = {r["name"] for r in results}
    results = [r for r in old if r["name"] not in done] + results
    order = {n: i for i, n in enumerate([REFERENCE, *CONFIGS])}
    results.sort(key=lambda r: order.get(r["name"], len(order)))
    tp = teacher_parameters(teacher)
    f.write_text(json.dumps({"teacher": teacher.id, "teacher_parameters": tp, "args": vars(args), "results": results},
                            indent=1, default=str))
    md = markdown(results, args, teacher.id, tp)
    (out / "results.md").write_text(md)
    print(md)
    print(f"wrote {f} and {out / 'results.md'}; samples per configuration in {out / 'eval'}/*/samples.png"
          + (" and distribution.png" if args.samples else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
