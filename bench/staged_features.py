"""What the staged O-Decoder's earlier stages should learn: the decode in RGB, or the teacher decoder's activations.

    python bench/staged_features.py --store STORE --teacher TEACHER [--device cuda] [--minutes 2.3 1.3 1.3] \
        [--adam-seconds 20 | --adam-steps N] [--w2 3] [--out staged_features.json]

Three stages (latent W1xW1 -> 1/4 -> 1/2 -> full, then 3x3 windows, x2 per stage; by default 96 / 64 / 48 units, the
shapes of the `fs` run in docs/BENCHMARKS.md), trained greedily
on the store's training split, each stage on its predecessor's *predicted* map; scored on the store's held-out split
(teacher latents vs the teacher's decode, mean PSNR over images), beside the shipped decoder in the same process:
  - Adam references (gradient fits, references only) of the same stage shapes, the earlier stages toward the decode
    area-downsampled (RGB) and toward the teacher's activations (K standardised principal components,
    organic_sd.ovae.features), plus the last feature stage on the teacher's own activations (its ceiling);
  - the evolved feature stack: one `ola.fit` per stage (gradient-free; random start, refine 0.9, as
    `osd train decoder --stage-targets features --refine 0.9 --refine-start random` does per tick).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from staged_reference import Net  # the OLA module's shape as autograd trains it (a reference)
from torch import nn

from organic_sd import ola
from organic_sd.data.store import Store
from organic_sd.metrics.pixels import psnr_of_mse
from organic_sd.ovae.features import FeatureTargets
from organic_sd.ovae.model import read_parts
from organic_sd.ovae.rows import SUBSPACE
from organic_sd.stages import Stack, Stage, StageConfig, stage_rows, to_blocks
from organic_sd.teachers import load_teacher


def held_out_psnr(decode, store: Store, idx: np.ndarray, dev) -> float:
    """Mean over images of the PSNR of decode(teacher latents) against the teacher's decode."""
    psnrs = []
    with torch.no_grad():
        for i in range(0, len(idx), 16):
            z = torch.from_numpy(np.asarray(store.latents[idx[i:i + 16]], np.float32)).to(dev)
            ref = torch.from_numpy(np.asarray(store.decodes[idx[i:i + 16]], np.float32)).to(dev)
            err = (decode(z).clamp(-1, 1) - ref).square().mean((1, 2, 3))
            psnrs += [psnr_of_mse(float(e)) for e in err]
    return float(np.mean(psnrs))


class Targets:
    """Per stage, the map it learns from a batch of teacher latents: RGB (decode pooled) or the teacher's features."""

    def __init__(self, store: Store, features: FeatureTargets | None, dev):
        self.store, self.features, self.dev = store, features, dev

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = torch.from_numpy(np.asarray(self.store.latents[idx], np.float32)).to(self.dev)
        y = torch.from_numpy(np.asarray(self.store.decodes[idx], np.float32)).to(self.dev)
        if self.features is None:
            return z, [F.avg_pool2d(y, 4), F.avg_pool2d(y, 2), y]
        return z, [self.features(z, 0), self.features(z, 1), y]


def stage_data(i: int, cfg: StageConfig, frozen: list, targets: Targets, idx: np.ndarray, n_rows: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (N, in) and targets (N, out) of stage i over samples idx; input: the frozen earlier stages' predictions."""
    per_image = n_rows // len(idx) + 1
    xs, ys = [], []
    with torch.no_grad():
        for j in range(0, len(idx), 32):
            z, maps = targets.batch(idx[j:j + 32])
            for s in frozen:
                z = s(z)
            keep_some(stage_rows(cfg, z), to_blocks(maps[i], cfg.up), per_image * len(maps[i]), gen, xs, ys)
    return shuffled_head(xs, ys, n_rows, gen)


def keep_some(x: torch.Tensor, y: torch.Tensor, n: int, gen: torch.Generator, xs: list, ys: list) -> None:
    """Append n random rows (with replacement) of x (N, in) and y (N, out) to xs and ys."""
    take = torch.randint(0, len(x), (min(len(x), n),), generator=gen).to(x.device)
    xs.append(x[take]), ys.append(y[take])


def shuffled_head(xs: list, ys: list, n_rows: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The collected rows, shuffled, at most n_rows."""
    x, y = torch.cat(xs), torch.cat(ys)
    keep = torch.randperm(len(x), generator=gen)[:n_rows].to(x.device)
    return x[keep], y[keep]


class AdamStage(nn.Module):
    def __init__(self, cfg: StageConfig, net: Net):
        super().__init__()
        self.cfg, self.net = cfg, net

    def forward(self, m):
        B, _, h, w = m.shape
        out = self.net(stage_rows(self.cfg, m))  # (B*h*w, C_out*r*r)
        return F.pixel_shuffle(out.reshape(B, h, w, -1).permute(0, 3, 1, 2), self.cfg.up)


def adam_stage(x, y, hidden: int, out_scale: float, seconds: float, dev, steps: int = 0) -> Net:
    """A reference: Adam on the rows for `seconds`, or for `steps` steps when given (batch 4096, lr 2e-3)."""
    net = Net(x.shape[1], hidden, y.shape[1], out_scale).to(dev)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    t0, step = time.perf_counter(), 0
    while (step < steps) if steps else (time.perf_counter() - t0 < seconds):
        step += 1
        b = torch.randint(0, len(x), (4096,), device=x.device)
        loss = (net(x[b]) - y[b]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.requires_grad_(False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--teacher", required=True, help="the store's teacher (TAESD family)")
    ap.add_argument("--shipped", default="organic_sd/assets/ovae/ovae.safetensors",
                    help="the decoder to compare with ('': none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=16, help="feature channels handed between stages")
    ap.add_argument("--w1", type=int, default=5, help="stage 1's latent window")
    ap.add_argument("--w2", type=int, default=3, help="stage 2's window of stage 1's map")
    ap.add_argument("--hidden", type=int, nargs=3, default=[96, 64, 48])
    ap.add_argument("--minutes", type=float, nargs=3, default=[140 / 60, 80 / 60, 80 / 60],
                    help="evolution per stage")
    ap.add_argument("--generations", type=int, default=0, help="each stage's search in generations instead of "
                                                                "--minutes (reproducible; 0: by time)")
    ap.add_argument("--adam-seconds", type=float, default=20.0, help="each Adam reference stage (0: skip them)")
    ap.add_argument("--adam-steps", type=int, default=0, help="each Adam reference stage in steps instead of "
                                                              "seconds (shapes of other sizes get the same steps)")
    ap.add_argument("--kinds", nargs="+", default=["rgb", "features"], choices=("rgb", "features"),
                    help="which Adam references")
    ap.add_argument("--rows", type=int, default=400_000, help="training rows per stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    gen = torch.Generator().manual_seed(a.seed)
    store = Store.open(a.store)
    train_idx, val_idx = store.indices("train"), store.indices("val")
    teacher = load_teacher(a.teacher, dev)
    C, K = store.meta["shapes"]["latents"][0], a.k
    fit_idx = np.sort(np.random.default_rng(a.seed).choice(train_idx, min(64, len(train_idx)), replace=False))
    features = FeatureTargets.for_decoder(teacher.decoder, [2, 4], K, teacher.id).fit(
        torch.from_numpy(np.asarray(store.latents[fit_idx], np.float32)).to(dev), a.seed)
    shapes = {"features": [StageConfig(C, K, a.w1), StageConfig(K, K, a.w2), StageConfig(K, 3, 3)],
              "rgb": [StageConfig(C, 3, a.w1), StageConfig(3, 3, 3), StageConfig(3, 3, 3)]}
    scales = {"features": [*features.scale, 1.0], "rgb": [1.0, 1.0, 1.0]}
    report = {"store": a.store, "train": len(train_idx), "held_out": len(val_idx), "k": K, "w1": a.w1, "w2": a.w2,
              "hidden": a.hidden, "set": "the store's held-out split (teacher latents vs teacher decode, mean PSNR)"}
    flat = lambda z: z.new_zeros(len(z), 3, 8 * z.shape[2], 8 * z.shape[3])  # noqa: E731 (a flat grey picture)
    report["zero"] = held_out_psnr(flat, store, val_idx, dev)  # the floor every decoder must beat
    if a.shipped:
        report["shipped"] = held_out_psnr(read_parts(a.shipped, dev)["decoder"], store, val_idx, dev)
        print(f"shipped decoder: {report['shipped']:.2f} dB", flush=True)

    for kind in a.kinds if a.adam_seconds > 0 or a.adam_steps > 0 else ():
        targets, frozen = Targets(store, features if kind == "features" else None, dev), []
        for i, cfg in enumerate(shapes[kind]):
            x, y = stage_data(i, cfg, frozen, targets, train_idx, a.rows, gen)
            frozen.append(AdamStage(cfg, adam_stage(x, y, a.hidden[i], scales[kind][i], a.adam_seconds, dev,
                                                    a.adam_steps)))
        report[f"adam_{kind}"] = held_out_psnr(nn.Sequential(*frozen), store, val_idx, dev)
        print(f"Adam reference, earlier stages toward {kind}: {report[f'adam_{kind}']:.2f} dB", flush=True)
        if kind == "features":  # the last stage on the teacher's own 1/2-resolution activations: its ceiling
            report["adam_last_stage_on_teacher_features"] = held_out_psnr(
                lambda z: frozen[2](features(z, 1)), store, val_idx, dev)

    if not a.generations and not any(a.minutes):  # references only
        return _write(report, a.out)
    targets, stages = Targets(store, features, dev), []
    for i, cfg in enumerate(shapes["features"]):
        x, y = stage_data(i, cfg, stages, targets, train_idx, a.rows, gen)
        xv, yv = stage_data(i, cfg, stages, targets, val_idx, 50_000, gen)
        budget = {"generations": a.generations} if a.generations else {"max_seconds": 60 * a.minutes[i]}
        module = ola.fit(x, y, hidden=(a.hidden[i],), out_scale=scales["features"][i], **budget,
                         x_val=xv, y_val=yv, device=dev, seed=1, population=160, subspace=SUBSPACE,
                         refine=ola.Refine.measured(0.9, "random"))
        with torch.no_grad():
            report[f"evolved_stage{i + 1}_relative_error"] = float((module(xv) - yv).square().mean() / yv.var())
        stages.append(Stage(cfg, module))
    stack = Stack(stages)
    report["evolved_features"], report["evolved_parameters"] = held_out_psnr(stack, store, val_idx, dev), \
        stack.num_parameters()
    print(f"evolved, earlier stages toward features: {report['evolved_features']:.2f} dB "
          f"({report['evolved_parameters']:,} parameters)", flush=True)
    return _write(report, a.out)


def _write(report: dict, out: str | None) -> int:
    if out:
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
