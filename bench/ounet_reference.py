"""How far the evolved multi-scale O-UNet is from a gradient fit of the *same shapes* (a reference only).

    python bench/ounet_reference.py --ounet RUN_OR_FILE --store STORE --teacher ddpm-mnist:PATH \
        [--seconds 120] [--seed 5000] [--samples 2000] [--device cuda] [--out bench/out/ounet-reference] \
        [--t-weight update] [--fine-only] [--fine-hidden 128]

For a trained multi-scale O-UNet (coarse stage + per-pixel stack) this fits, with Adam on the same store
rows the trainer draws, modules of exactly the evolved ones' OLA shapes (same inputs, hidden widths,
tanh readout over [x, h] and out_scale):
    coarse   the coarse stage, on every training record's pooled rows
    fine     the per-pixel stack, on pixel rows whose stage columns come from the *evolved* coarse stage
    both     a per-pixel stack fitted on rows from the Adam coarse stage, paired with it
(`--fine-only`: the per-pixel stack on the evolved coarse stage only; `--fine-hidden`: that Adam stack wider or
deeper than the evolved one, a reference of a bigger shape; `--t-weight update`: the rows drawn as
`osd train denoiser --t-weight update` draws them, which the held-out errors then weigh the same way)
and scores four O-UNets (evolved; Adam coarse + evolved fine; evolved coarse + Adam fine; Adam both)
by their held-out target error on store records the evolution never trained on, and by `osd eval
denoiser`'s numbers: eps error by t, same-noise DDIM PSNR, and KID / precision / recall of 8-step
samples against the teacher's 50-step samples (noise seed --seed + 2).

Which stage limits the samples, and how much a better fit of the same shape would buy, is what the
table says. Gradients are used here only: nothing in this file is reachable from `fit` or the trainers.
Writes results.json and results.md to --out.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ola.module import OLAModule
from organic_sd.ounet.evaluate import evaluate_denoiser
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.targets import record_weights
from organic_sd.ounet.train import draw_rows
from organic_sd.ounet.train_stage import stage_rows

REPO = Path(__file__).resolve().parents[1]


def adam_fit(shape: OLAModule, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
             seconds: float, batch: int = 8192, lr: float = 2e-3, seed: int = 0) -> tuple[OLAModule, dict]:
    """A module of `shape`'s config fitted by Adam (cosine learning rate over `seconds`) on x (N, in), y (N, out);
    returns the copy with the best held-out MSE seen at the checkpoints, and a summary."""
    torch.manual_seed(seed)
    m = OLAModule(copy.deepcopy(shape.config)).to(x.device)  # fresh PyTorch init, not the evolved weights
    m.requires_grad_(True).train()
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    best, best_state, steps, t0 = math.inf, None, 0, time.perf_counter()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    while (el := time.perf_counter() - t0) < seconds:
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, el / seconds)))
        for _ in range(200):
            i = torch.randint(0, x.shape[0], (batch,), device=x.device, generator=gen)
            loss = (m(x[i]) - y[i]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        steps += 200
        val = heldout(m, x_val, y_val)
        if val["mse"] < best:
            best, best_state = val["mse"], {k: v.detach().clone() for k, v in m.state_dict().items()}
    m.load_state_dict(best_state)
    m.requires_grad_(False).eval()
    return m, {"adam_steps": steps, "seconds": seconds, "batch": batch, "lr": lr, "heldout_mse": best}


def heldout(m, x_val: torch.Tensor, y_val: torch.Tensor) -> dict:
    """MSE and MSE / target power of m on held-out rows."""
    with torch.no_grad():
        se = sum(float((m(x_val[i:i + 65536]) - y_val[i:i + 65536]).double().square().sum())
                 for i in range(0, len(x_val), 65536))
    return {"mse": se / y_val.numel(), "rel": se / max(float(y_val.double().square().sum()), 1e-12)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ounet", required=True, help="a multi-scale O-UNet file or run folder (its coarse stage is used)")
    p.add_argument("--store", required=True, help="the denoiser store it was trained on")
    p.add_argument("--teacher", required=True, help="denoiser teacher spec (the store's teacher)")
    p.add_argument("--seconds", type=float, default=120.0, help="Adam seconds per fitted module")
    p.add_argument("--fine-rows", type=int, default=2_000_000, help="pixel rows the per-pixel references train on")
    p.add_argument("--val-records", type=int, default=512, help="held-out store records scoring every fit")
    p.add_argument("--n", type=int, default=256, help="fresh samples for the eps error and same-noise PSNR")
    p.add_argument("--seed", type=int, default=5000, help="evaluation noise seed (a dev seed unless reporting)")
    p.add_argument("--samples", type=int, default=2000, help="samples for KID / precision / recall (0: none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--t-weight", default="uniform", choices=("uniform", "update"),
                   help="how records are drawn by noise level (as osd train denoiser's --t-weight)")
    p.add_argument("--fine-only", action="store_true", help="skip the coarse-stage references")
    p.add_argument("--fine-hidden", type=int, nargs="+", default=None,
                   help="hidden widths of the Adam per-pixel stack (default: the evolved stack's)")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "ounet-reference"))
    args = p.parse_args(argv)

    from organic_sd.teachers import load_denoiser

    dev = torch.device(args.device)
    u = OUNet.load(args.ounet, device=dev)
    if u.stage is None:
        raise SystemExit(f"{args.ounet} has no coarse stage: this reference is for multi-scale O-UNets")
    store = DenoiserStore.open(args.store)
    teacher = load_denoiser(args.teacher, device=dev)
    cfg, schedule = u.config, u.schedule
    rng = np.random.default_rng(0)
    train_idx, val_idx = store.indices("train"), store.indices("val")
    val_idx = np.sort(rng.choice(val_idx, min(len(val_idx), args.val_records), replace=False))
    rows = {}

    stage_adam = None
    if not args.fine_only:
        print("coarse rows ...", file=sys.stderr)
        xs, ys = stage_rows(cfg, schedule, store, train_idx, dev)
        xs_val, ys_val = stage_rows(cfg, schedule, store, val_idx, dev)
        rows["coarse evolved"] = heldout(u.stage, xs_val, ys_val)
        stage_adam, rows["coarse Adam"] = adam_fit(u.stage, xs, ys, xs_val, ys_val, args.seconds)
        rows["coarse Adam"].update(heldout(stage_adam, xs_val, ys_val))
        del xs, ys
    shape = u.module
    if args.fine_hidden:
        shape = OLAModule(dataclasses.replace(u.module.config, hidden=tuple(args.fine_hidden)))

    def fine_rows(stage, n, idx):
        p = record_weights(args.t_weight, cfg.target, schedule, store.t[idx], 8)
        return draw_rows(cfg, u.schedule, store, idx, n, np.random.default_rng(1), dev, None, stage, p)

    models = {"evolved": u}
    if stage_adam is not None:
        models["Adam coarse + evolved fine"] = OUNet(cfg, u.module, schedule, stage=stage_adam)
    for name, stage in (("fine Adam (evolved coarse)", u.stage), ("fine Adam (Adam coarse)", stage_adam)):
        if stage is None:
            continue
        print(f"{name} rows ...", file=sys.stderr)
        x, y = fine_rows(stage, args.fine_rows, train_idx)
        x_val, y_val = fine_rows(stage, 200_000, val_idx)
        if stage is u.stage:
            rows["fine evolved"] = heldout(u.module, x_val, y_val)
        fine, rows[name] = adam_fit(shape, x, y, x_val, y_val, args.seconds)
        rows[name].update(heldout(fine, x_val, y_val))
        label = "evolved coarse + Adam fine" if stage is u.stage else "Adam coarse + Adam fine"
        models[label] = OUNet(cfg, fine, schedule, stage=stage)
        del x, y

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache, reports = {}, {}
    for name, m in models.items():
        print(f"scoring {name} ...", file=sys.stderr)
        reports[name] = evaluate_denoiser(m, teacher, out / name.replace(" ", "-").replace("+", "and"), n=args.n,
                                          seed=args.seed, repeats=3, samples=args.samples, sample_cache=cache)
    res = {"args": vars(args), "fits": rows, "reports": reports}
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    (out / "results.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict) -> str:
    """Two tables: held-out fit errors per module, then each O-UNet's sampling numbers."""
    a = res["args"]
    lines = [f"Gradient references of `{a['ounet']}`'s shapes: Adam, {a['seconds']:g} s per module on {a['device']}, "
             f"store `{a['store']}` (held-out: {a['val_records']} val records; rows drawn {a.get('t_weight', 'uniform')}"
             f"{'; Adam per-pixel hidden ' + str(tuple(a['fine_hidden'])) if a.get('fine_hidden') else ''}). "
             f"Evaluation seed {a['seed']}.", "",
             "| module | held-out MSE | relative to target power |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {v['mse']:.5g} | {v['rel']:.4f} |" for k, v in res["fits"].items()]
    lines += ["", "| O-UNet | eps error t = 50 / 250 / 500 | 8-step PSNR vs teacher | KID x1000 / P / R / low-noise error (8 steps) |",
              "| --- | --- | ---: | --- |"]
    for name, r in res["reports"].items():
        e = r["eps_error"]
        d = r.get("distribution", {}).get("ounet")
        dd = "-" if not d else f"{d['kid_x1000']:,.1f} / {d['precision']:.3f} / {d['recall']:.3f}"
        dd += f" / {d['denoise_err']:.4f}" if d and "denoise_err" in d else ""
        lines.append(f"| {name} | {e.get('50', float('nan')):.4f} / {e.get('250', float('nan')):.4f} / "
                     f"{e.get('500', float('nan')):.4f} | {r['ddim']['8']['psnr']:.2f} dB | {dd} |")
    t = next((r["distribution"]["teacher"] for r in res["reports"].values() if r.get("distribution")), None)
    if t:
        lines += ["", f"The teacher's own 8-step samples: KID x1000 / P / R {t['kid_x1000']:,.1f} / "
                      f"{t['precision']:.3f} / {t['recall']:.3f}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
