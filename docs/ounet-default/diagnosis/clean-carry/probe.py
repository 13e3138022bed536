"""Throwaway probe, kept as it ran (docs/BENCHMARKS.md, "The last two steps redraw the strokes"): a clean stage on the
shipped O-UNet's low stack whose rows add, beside the k x k window of the low stack's x0, that x0 average-pooled 2x2 and
4x4 (--scales 1,2,4: a k x k window around the pixel's cell) and/or the low stack's hidden units (--carry 1 or 3: their
window), against the plain window; same store, rows and budget. Fitted by ola.fit; scored on 8-step samples."""
import argparse, json, sys, time
from dataclasses import replace
import numpy as np, torch, torch.nn.functional as F
from organic_sd import ola
import organic_sd.ounet.model as M
from organic_sd.ounet import clean as C
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.train_clean import _without_clean
from organic_sd.ounet.low import below_split_weights, below_split_eval, heldout_score
from organic_sd.ounet.train import sample_rows, store_schedule
from organic_sd.ounet.targets import from_eps
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ounet.distribution import measure, write_grid
from organic_sd.teachers import load_denoiser

p = argparse.ArgumentParser()
p.add_argument("--scales", default="1")
p.add_argument("--carry", type=int, default=0, help="window of the low stack hidden units read (0 none)")
p.add_argument("--window", type=int, default=5)
p.add_argument("--hidden", type=int, default=16)
p.add_argument("--seconds", type=float, default=180)
p.add_argument("--rows", type=int, default=600000)
p.add_argument("--store", default="/tmp/dn/dn4k")
p.add_argument("--n", type=int, default=500)
p.add_argument("--seed", type=int, default=7002)
p.add_argument("--out", required=True)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--device", default="cpu")
p.add_argument("--teacher", required=True, help="ddpm-mnist:PATH")
a = p.parse_args()
torch.set_num_threads(a.threads)
SC = tuple(int(s) for s in a.scales.split(","))
orig_rows, orig_in = C.clean_rows, C.clean_in_dim

def in_dim(cfg):
    return orig_in(cfg) + (len(SC) - 1) * cfg.sample_shape[0] * cfg.clean_window ** 2 + (48 * a.carry ** 2)

def rows(cfg, sched, x_t, t, x0):
    B, Ch, H, W = x_t.shape
    k, b = cfg.clean_window, C.x0_bound(cfg)
    out = [orig_rows(cfg, sched, x_t, t, x0)]
    for s in SC[1:]:
        pooled = F.avg_pool2d(x0.clamp(-b, b), s)
        win = F.unfold(F.pad(pooled, (k // 2,) * 4, value=cfg.pixel_range[0]), k)  # (B, Ckk, HW/s^2)
        win = win.view(B, -1, H // s, W // s).repeat_interleave(s, 2).repeat_interleave(s, 3)
        out.append(win.flatten(2).transpose(1, 2))
    if a.carry:
        from organic_sd.ounet.features import features
        from organic_sd.ounet.stage import stage_map
        xx, tt = x_t.float(), t
        coarse = stage_map(BASE.config, BASE.stage, BASE._schedule, xx, tt, None)
        with torch.no_grad():
            h = torch.tanh(BASE.low.hidden[0](features(BASE.config, BASE._schedule, xx, tt, None, coarse)))  # (B, HW, U)
        U, kc = h.shape[2], a.carry
        hm = h.transpose(1, 2).reshape(B, U, H, W)
        win = F.unfold(F.pad(hm, (kc // 2,) * 4), kc).transpose(1, 2)  # (B, HW, U kc kc)
        out.append(win)
    return torch.cat(out, 2)

def x0_fn(cfg, module, sched, x_t, t, x0):
    B, Ch, H, W = x_t.shape
    r = rows(cfg, sched, x_t, t, x0)
    with torch.no_grad():
        y = module(r.flatten(0, 1))
    return y.view(B, H * W, Ch).transpose(1, 2).reshape(B, Ch, H, W)

q = OUNet.load("mnist")
q_shipped = OUNet.load("mnist")
M.clean_in_dim, M.clean_x0 = in_dim, x0_fn
store = DenoiserStore.open(a.store)
schedule = store_schedule(q, store)
DEV = a.device
base = _without_clean(q, DEV)
BASE = base
cfg = replace(base.config, clean_window=a.window)
split = cfg.low_split
tr, va = store.indices("train"), store.indices("val")

def rows_of(idx):
    x_t = torch.from_numpy(store.x_t[idx]).to(DEV).float(); t = torch.from_numpy(store.t[idx]).to(DEV).round().long()
    with torch.no_grad():
        x0_low = base.low_x0(x_t, t, None)
    x = rows(cfg, schedule.to(DEV), x_t, t, x0_low).flatten(0, 1)
    x0 = from_eps("x0", torch.from_numpy(store.eps[idx]).to(DEV).float(), x_t, schedule.to(DEV)[t].float())
    return x, x0.flatten(2).transpose(1, 2).flatten(0, 1)

rng = np.random.default_rng(0)
x, y = sample_rows(cfg, tr, a.rows, rng, rows_of, below_split_weights("x0", schedule, store.t[tr], split))
xv, yv = sample_rows(cfg, va, 60000, rng, rows_of, below_split_weights("x0", schedule, store.t[va], split))
print("rows", x.shape, flush=True)
t0 = time.time()
clean = ola.fit(x, y, hidden=(a.hidden,), out_scale=C.x0_bound(cfg), population=100, max_seconds=a.seconds,
                x_val=xv, y_val=yv, device=DEV, seed=0)
fit_s = time.time() - t0
with torch.no_grad():
    row_mse = float(((clean(xv) - yv) ** 2).mean())
clean = clean.cpu(); base = _without_clean(q, "cpu"); BASE = base; DEV = "cpu"
u = OUNet(cfg, base.module, base.schedule, dict(base.meta), head=base.head, stage=base.stage, low=base.low, clean=clean)
eval_idx, w = below_split_eval(base.config.target, schedule, store, va, split, 512, 1)
hs = heldout_score(u, store, eval_idx, w)["heldout_mse"]
M.clean_in_dim, M.clean_x0 = orig_in, C.clean_x0
hq = heldout_score(q_shipped, store, eval_idx, w)["heldout_mse"]
M.clean_in_dim, M.clean_x0 = in_dim, x0_fn
teacher = load_denoiser(a.teacher)
rep, unit = measure(u, teacher, a.n, a.seed, cfg.pixel_range, 8)
res = {"scales": SC, "window": a.window, "hidden": a.hidden, "fit_s": fit_s, "rows": a.rows, "row_x0_mse": row_mse,
       "heldout_update_weighted": hs, "shipped_heldout": hq, "ounet": rep["ounet"], "teacher": rep["teacher"],
       "params": clean.num_parameters()}
print(json.dumps(res, indent=1, default=str))
json.dump(res, open(a.out + ".json", "w"), indent=1, default=str)
from pathlib import Path
write_grid(Path(a.out + ".png"), unit, show=64, cols=8)
torch.save(clean.state_dict(), a.out + ".pt")
