"""Throwaway probe (issue 23): the last steps rendered by a stack of per-pixel OLA stages whose targets are the
teacher's own block features (PCA'd), mirroring the teacher (four 7x7 conv blocks at full resolution):
  stage 1: Q's low-stack rows (7x7 x_t window, coarse map, time...) -> teacher block-1 features (F ch)
  stage k (2, 3): the kxk window of stage k-1's predicted features + noise levels + x_t pixel -> block-k features
  last:   the kxk window of stage 3's features + levels + x_t pixel -> x0
Each stage: ola.fit on its frozen predecessors' outputs. Used at t < below; Q elsewhere."""
import argparse, json, time, sys
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from organic_sd import ola
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.features import features
from organic_sd.ounet.stage import stage_map
from organic_sd.ounet.targets import draw_records, record_weights, from_eps, to_eps, X0_HEADROOM
from organic_sd.ounet.train import store_schedule
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ounet.distribution import measure, write_grid
from organic_sd.teachers import load_denoiser
from organic_sd.runs import out_scale_for, typical_largest

p = argparse.ArgumentParser()
p.add_argument("--store", required=True); p.add_argument("--teacher", required=True)
p.add_argument("--below", type=int, default=300); p.add_argument("--feat", type=int, default=6)
p.add_argument("--k", type=int, default=5); p.add_argument("--hidden", type=int, default=16)
p.add_argument("--blocks", default="0,1,2", help="teacher blocks whose features stages 1.. predict")
p.add_argument("--seconds", type=float, default=120); p.add_argument("--records", type=int, default=3000)
p.add_argument("--rows", type=int, default=600000); p.add_argument("--n", type=int, default=500)
p.add_argument("--seed", type=int, default=7002); p.add_argument("--threads", type=int, default=2)
p.add_argument("--device", default="cpu"); p.add_argument("--out", required=True)
a = p.parse_args()
torch.set_num_threads(a.threads)
dev = torch.device(a.device)
q = OUNet.load("mnist", device=dev)
teacher = load_denoiser(a.teacher, device=dev)
store = DenoiserStore.open(a.store)
sched = store_schedule(q, store).to(dev)
cfg = q.config
rng = np.random.default_rng(0)
blocks = [int(b) for b in a.blocks.split(",")]

def draw(pool, n):
    w = record_weights("update", "x0", q.schedule, store.t[pool], 8) * (np.asarray(store.t[pool]).round() < a.below)
    return np.sort(draw_records(rng, pool, n, w / w.sum()))

def load(idx):
    x_t = torch.from_numpy(store.x_t[idx]).to(dev).float()
    t = torch.from_numpy(store.t[idx]).to(dev).round().long()
    x0 = from_eps("x0", torch.from_numpy(store.eps[idx]).to(dev).float(), x_t, sched[t].float())
    return x_t, t, x0

def teacher_feats(x_t, t):
    """(B, C_b, H, W) block outputs of the teacher's EpsNet, for the chosen blocks."""
    net, tau = teacher.net, t.float() / 1000
    out, h = {}, None
    with torch.no_grad():
        h = net.blocks[0](x_t) + net.time_embed(net.time_features(tau))[:, :, None, None]
        out[0] = h
        for i, blk in enumerate(net.blocks[1:-1], 1):
            h = blk(h); out[i] = h
    return [out[b] for b in blocks]

def levels(x_t, t):
    ab = sched[t].float()[:, None, None, None].expand(-1, 1, *x_t.shape[2:])
    return torch.cat([ab.sqrt(), (1 - ab).sqrt(), x_t], 1)  # (B, 3, H, W)

def win_rows(fmap, x_t, t):
    """(B, F, H, W) previous stage's features -> (B, HW, F k k + 3) rows."""
    k = a.k
    win = F.unfold(F.pad(fmap, (k // 2,) * 4), k).transpose(1, 2)
    return torch.cat([win, levels(x_t, t).flatten(2).transpose(1, 2)], 2)

def first_rows(x_t, t):
    coarse = stage_map(cfg, q.stage, q._schedule, x_t, t, None)
    return features(cfg, q._schedule, x_t, t, None, coarse)

tr, va = store.indices("train"), store.indices("val")
itr, iva = draw(tr, a.records), draw(va, 300)
Xt, Tt, X0 = load(itr); Xv, Tv, X0v = load(iva)
# PCA of each chosen block's per-pixel features on the training records
Ft, Fv, bases = [], [], []
with torch.no_grad():
    ft_all = [torch.cat(z) for z in zip(*[teacher_feats(Xt[i:i + 256], Tt[i:i + 256]) for i in range(0, len(Xt), 256)])]
    fv_all = [torch.cat(z) for z in zip(*[teacher_feats(Xv[i:i + 256], Tv[i:i + 256]) for i in range(0, len(Xv), 256)])]
for f, fv in zip(ft_all, fv_all):
    v = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
    mu = v.mean(0)
    ev, V = torch.linalg.eigh(torch.cov((v - mu).T))
    V, ev = V[:, -a.feat:].flip(1), ev[-a.feat:].flip(0)
    proj = lambda z: (((z.permute(0, 2, 3, 1) - mu) @ V) / ev.sqrt()).permute(0, 3, 1, 2)  # noqa
    Ft.append(proj(f)); Fv.append(proj(fv))
    print("block PCA kept share", float(ev.sum() / torch.linalg.eigvalsh(torch.cov((v - mu).T)).sum()), flush=True)

def subsample(x, y, n):
    keep = torch.from_numpy(rng.permutation(x.shape[0])[:n]).to(x.device)
    return x[keep], y[keep]

def fit_stage(rows_tr, y_tr, rows_va, y_va, scale):
    x, y = subsample(rows_tr.flatten(0, 1), y_tr.flatten(2).transpose(1, 2).flatten(0, 1), a.rows)
    xv, yv = subsample(rows_va.flatten(0, 1), y_va.flatten(2).transpose(1, 2).flatten(0, 1), 60000)
    m = ola.fit(x, y, hidden=(a.hidden,), out_scale=scale, population=100, max_seconds=a.seconds,
                x_val=xv, y_val=yv, device=dev, seed=0)
    return m

def apply(m, rows, shape):
    B, C, H, W = shape
    with torch.no_grad():
        out = torch.cat([m(rows[i:i + 64].flatten(0, 1)) for i in range(0, rows.shape[0], 64)])
    return out.view(rows.shape[0], H * W, -1).transpose(1, 2).reshape(rows.shape[0], -1, H, W)

def chunked(fn, *xs):
    return torch.cat([fn(*(x[i:i + 256] for x in xs)) for i in range(0, xs[0].shape[0], 256)])

stages, res = [], {"args": vars(a), "stages": []}
cur_tr = chunked(first_rows, Xt, Tt); cur_va = chunked(first_rows, Xv, Tv)
for s, (ft, fv) in enumerate(zip(Ft, Fv)):
    t0 = time.time()
    m = fit_stage(cur_tr, ft, cur_va, fv, out_scale_for(typical_largest(ft)))
    pt, pv = apply(m, cur_tr, ft.shape), apply(m, cur_va, fv.shape)
    rel = float(((pv - fv) ** 2).mean() / (fv ** 2).mean())
    print(f"stage {s + 1}: block {blocks[s]} features, held-out relative error {rel:.3f} ({time.time() - t0:.0f} s)", flush=True)
    res["stages"].append({"block": blocks[s], "rel": rel})
    stages.append(m)
    cur_tr, cur_va = win_rows(pt, Xt, Tt), win_rows(pv, Xv, Tv)
bound = X0_HEADROOM * 0.5
last = fit_stage(cur_tr, X0, cur_va, X0v, bound)
x0v = apply(last, cur_va, X0v.shape)
with torch.no_grad():
    q_x0 = chunked(lambda x, t: x - 0 if False else (x - (1 - sched[t].float()).sqrt()[:, None, None, None] * q.eps(x, t)) / sched[t].float().sqrt()[:, None, None, None], Xv, Tv)
res["heldout_x0_mse"] = float(((x0v - X0v) ** 2).mean())
res["q_heldout_x0_mse"] = float(((q_x0 - X0v) ** 2).mean())
res["params"] = sum(m.num_parameters() for m in stages + [last])
print("held-out x0 MSE below", a.below, ": staged", res["heldout_x0_mse"], " Q", res["q_heldout_x0_mse"], flush=True)

class Staged:
    def __init__(self):
        self.alphas_cumprod, self.sample_shape, self.device = q.alphas_cumprod, q.sample_shape, q.device
    def eps(self, x_t, t, cond=None):
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        if int(t[0]) >= a.below:
            return q.eps(x_t, t)
        x_t = x_t.float()
        rows = first_rows(x_t, t)
        for m in stages:
            rows = win_rows(apply(m, rows, (x_t.shape[0], a.feat, *x_t.shape[2:])), x_t, t)
        x0 = apply(last, rows, x_t.shape)
        return to_eps("x0", x0, x_t, sched[t].float())

rep, unit = measure(Staged(), teacher, a.n, a.seed, cfg.pixel_range, 8)
rq, uq = measure(q, teacher, a.n, a.seed, cfg.pixel_range, 8)
res["staged"], res["q"], res["teacher"] = rep["ounet"], rq["ounet"], rep["teacher"]
print(json.dumps({k: res[k] for k in ("staged", "q", "teacher")}, indent=1, default=str))
json.dump(res, open(a.out + ".json", "w"), indent=1, default=str)
write_grid(Path(a.out + ".png"), {"reference": unit["teacher"], "teacher": uq["ounet"], "ounet": unit["ounet"]}, show=64)
