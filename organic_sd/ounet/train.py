"""`osd train denoiser`: evolve an O-UNet from a denoiser store, tick by tick (the O-VAE trainer's loop: runs.py).

    setup: open the store, fix the held-out records, resume RUN_DIR if it holds a run
    each tick (runs.run_ticks): fresh random pixel rows from random train records, ola.fit (init = the
               kept stack), eps error on the held-out records, keep or not, log
    text adapter (stores with prompts, --cond-dim): starts as a PCA of the prompts' pooled embeddings;
               every --adapter-every ticks its weights are searched with the new stack frozen
               (ounet.adapter.evolve_adapter) before the held-out score decides what is kept
Files in RUN_DIR: config.json, model.safetensors (an O-UNet file), state.json, log.jsonl, plot.png.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from organic_sd import dist, ola
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.devices import resolve_device
from organic_sd.ounet.adapter import TextAdapter, evolve_adapter
from organic_sd.ounet.config import ADDED_FIELDS, RUN_FIELDS, DenoiserTrainConfig
from organic_sd.ounet.features import OUNetConfig, features
from organic_sd.ounet.model import WEIGHTS_NAME, OUNet
from organic_sd.ounet.stage import stage_map
from organic_sd.ounet.targets import draw_records, from_eps, record_weights
from organic_sd.ounet.train_stage import train_stage
from organic_sd.runs import (
    open_run,
    out_scale_for,
    read_log,
    resume_state,
    run_ticks,
    typical_largest,
    write_record,
)

LOAD_CHUNK = 64  # records read and turned into rows at a time (bounds peak memory)
# the O-VAE's rounds of 8 did worse here at CPU budgets: each round needs its search time
# (bench/ounet.py hidden32-auto; docs/BENCHMARKS.md)
DENOISER_UNITS_PER_ROUND = 16


def record_rows(cfg: OUNetConfig, schedule: torch.Tensor, store: DenoiserStore, idx: np.ndarray,
                dev: torch.device, adapter: TextAdapter | None = None,
                stage: ola.OLAModule | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Records idx -> rows x (n HW, in), y (n HW, C): the O-UNet's inputs and the teacher's target
    (eps, x0 or v: cfg.target) per pixel; `stage`: the frozen coarse stage of a multi-scale O-UNet."""
    x_t = torch.from_numpy(store.x_t[idx]).to(dev)  # (n, C, H, W)
    t = torch.from_numpy(store.t[idx]).to(dev).round().long()  # (n,)
    eps = torch.from_numpy(store.eps[idx]).to(dev)  # (n, C, H, W)
    cond = torch.from_numpy(store.cond[idx]).to(dev) if cfg.cond_dim else None  # (n, L, D)
    if adapter is not None:
        cond = adapter(cond)  # (n, cond_dim)
    coarse = None if stage is None else stage_map(cfg, stage, schedule, x_t, t, cond)  # (n, C, H, W)
    x = features(cfg, schedule, x_t, t, cond, coarse).flatten(0, 1)
    target = from_eps(cfg.target, eps, x_t, schedule.to(dev)[t].float())
    y = target.flatten(2).transpose(1, 2).flatten(0, 1)
    return x, y


def draw_rows(cfg, schedule, store, pool: np.ndarray, max_rows: int, rng: np.random.Generator, dev, adapter=None,
              stage=None, p: np.ndarray | None = None):
    """At most max_rows random pixel rows (x_t window features -> teacher target) from records of `pool`
    (drawn with probabilities p, one per record of pool; None: uniformly)."""
    return sample_rows(cfg, pool, max_rows, rng, lambda j: record_rows(cfg, schedule, store, j, dev, adapter, stage),
                       p)


def pool_weights(cfg: DenoiserTrainConfig, target: str, schedule: torch.Tensor, store: DenoiserStore,
                 pool: np.ndarray) -> np.ndarray | None:
    """Probabilities of drawing each record of `pool` under --t-weight (None: uniform)."""
    return record_weights(cfg.t_weight, target, schedule, store.t[pool], cfg.weight_steps)


def sample_rows(cfg, pool: np.ndarray, max_rows: int, rng: np.random.Generator, rows_of,
                p: np.ndarray | None = None) -> tuple:
    """At most max_rows of the pixel rows `rows_of(records) -> (x, y)` gives, spread over ~4x as many
    records as whole images would need (more records, fewer pixels each: less correlated rows);
    records drawn with probabilities p (one per record of pool; None: uniformly)."""
    per = cfg.sample_shape[1] * cfg.sample_shape[2]
    idx = draw_records(rng, pool, max(1, math.ceil(4 * max_rows / per)), p)
    n = len(idx)
    share = min(1.0, max_rows / (n * per))
    xs, ys = [], []
    for i in range(0, n, LOAD_CHUNK):
        x, y = rows_of(idx[i:i + LOAD_CHUNK])
        keep = torch.from_numpy(rng.permutation(x.shape[0])[:math.ceil(share * x.shape[0])]).to(x.device)
        xs.append(x[keep]), ys.append(y[keep])
    return torch.cat(xs)[:max_rows], torch.cat(ys)[:max_rows]


def store_schedule(u: OUNet, store: DenoiserStore) -> torch.Tensor:
    """The store's (T,) alpha-bar, checked to be u's teacher's: a store of another teacher is an error."""
    schedule = torch.from_numpy(store.alphas_cumprod)
    if len(schedule) != u.config.num_steps or not torch.allclose(schedule, u.schedule.to(schedule.dtype), atol=1e-6):
        raise ValueError(f"store {store.path} was made by another teacher's schedule than this O-UNet's")
    return schedule


def heldout_score(u: OUNet, store: DenoiserStore, idx: np.ndarray, w: np.ndarray | None = None) -> dict:
    """On records idx: the MSE of what the stacks predict (cfg.target: eps, x0 or v) against the teacher's, each
    record weighted by w (idx's --t-weight weights; None: equally), which decides what is kept; and the
    unweighted eps MSE relative to the teacher eps' power (rel_err)."""
    se, ss, n, se_target, w_sum = 0.0, 0.0, 0, 0.0, 0.0
    target = u.config.target
    w = np.ones(len(idx)) if w is None else np.asarray(w, dtype=np.float64)
    for i in range(0, len(idx), LOAD_CHUNK):
        j, wj = idx[i:i + LOAD_CHUNK], torch.from_numpy(w[i:i + LOAD_CHUNK])
        x_t = torch.from_numpy(store.x_t[j])
        t = torch.from_numpy(store.t[j]).round().long()
        eps = torch.from_numpy(store.eps[j]).to(u.device)
        cond = torch.from_numpy(store.cond[j]) if u.config.cond_dim else None  # (n, L, D): u's adapter pools it
        pred = u(x_t, t, cond)
        per = (pred - eps).double().square().flatten(1).sum(1).cpu()  # (n,) summed over pixels
        se += float(per.sum())
        ss += float(eps.double().square().sum())
        n += eps.numel()
        w_sum += float(wj.sum()) * eps[0].numel()
        if target == "eps":
            se_target += float((per * wj).sum())
        else:
            x = x_t.to(u.device)
            ab = u.schedule.to(u.device)[t.to(u.device)].float()
            d = (from_eps(target, pred, x, ab) - from_eps(target, eps, x, ab)).double().square().flatten(1).sum(1)
            se_target += float((d.cpu() * wj).sum())
    if target == "eps":
        return {"heldout_mse": se_target / w_sum, "rel_err": se / max(ss, 1e-12)}
    return {"heldout_mse": se_target / w_sum, "eps_mse": se / n, "rel_err": se / max(ss, 1e-12)}


class DenoiserJob:
    """What runs.run_ticks needs of an O-UNet run: its pixel rows, held-out eps score, text adapter and file."""

    noun = "O-UNet"
    plot = [("rel_err", "eps MSE / teacher eps power", True)]

    def __init__(self, cfg: DenoiserTrainConfig, ucfg: OUNetConfig, schedule: torch.Tensor, store: DenoiserStore,
                 train_idx: np.ndarray, eval_idx: np.ndarray, adapter: TextAdapter | None, run: Path,
                 device: torch.device, stage: ola.OLAModule | None = None):
        self.cfg, self.ucfg, self.schedule, self.store, self.stage = cfg, ucfg, schedule, store, stage
        self.train_idx, self.eval_idx, self.adapter, self.run, self.device = train_idx, eval_idx, adapter, run, device
        self.fit_kwargs = {"units_per_round": DENOISER_UNITS_PER_ROUND, "subspace": ola.Subspace(deflate=cfg.deflate),
                           "refine": ola.Refine.measured(cfg.refine, cfg.refine_start)}
        self.adapter_tick = False
        self.p_train = pool_weights(cfg, ucfg.target, schedule, store, train_idx)  # (N,) or None: uniform
        p_eval = pool_weights(cfg, ucfg.target, schedule, store, eval_idx)
        self.w_eval = None if p_eval is None else p_eval * len(eval_idx)  # mean 1: MSE keeps its scale

    def draw(self, rng):
        return draw_rows(self.ucfg, self.schedule, self.store, self.train_idx, self.cfg.max_rows, rng, self.device,
                         self.adapter, self.stage, self.p_train)  # (N, in), (N, C)

    def fit_share(self, tick: int) -> float:
        every = self.cfg.adapter_every
        self.adapter_tick = bool(self.adapter is not None and every and (tick + 1) % every == 0)
        return 0.75 if self.adapter_tick else 1  # an adapter tick leaves a quarter to the adapter's search

    def candidate(self, module, tick, interrupted, rng, tick_seconds):
        cand = OUNet(self.ucfg, module, self.schedule, adapter=self.adapter, stage=self.stage)
        if not self.adapter_tick or interrupted:
            return cand, {}
        # the stack frozen, the adapter searched by the stack's eps error
        cfg = self.cfg
        pick = np.sort(rng.choice(self.train_idx, min(len(self.train_idx), 128), replace=False))
        new_adapter, summary = evolve_adapter(
            cand, self.store, pick, strategy=cfg.strategy, population=16, generations=cfg.generations,
            max_seconds=max(0.5, 0.25 * tick_seconds), max_rows=min(cfg.max_rows, 20_000), seed=cfg.seed + tick)
        return (OUNet(self.ucfg, module, self.schedule, adapter=new_adapter, stage=self.stage),
                {"adapter": summary} if summary else {})

    def module_of(self, kept: OUNet | None):
        return None if kept is None else kept.module

    def score(self, cand: OUNet) -> dict:
        return heldout_score(cand, self.store, self.eval_idx, self.w_eval)

    def keep(self, cand: OUNet) -> None:
        self.adapter = cand.adapter

    def describe(self, scores: dict) -> str:
        if "eps_mse" in scores:
            weighted = " (update-weighted)" if self.w_eval is not None else ""
            return (f"held-out {self.ucfg.target} MSE{weighted} {scores['heldout_mse']:.5g}, "
                    f"eps MSE {scores['eps_mse']:.5g}, relative {scores['rel_err']:.4f}")
        return f"held-out eps MSE {scores['heldout_mse']:.5g}, relative {scores['rel_err']:.4f}"

    def save(self, kept: OUNet, summary: dict) -> Path:
        kept.meta = {"training_run": str(self.run), **summary}
        return kept.save(self.run / WEIGHTS_NAME)


def train(cfg: DenoiserTrainConfig, log_to=None) -> dict:
    """Run (or resume) an O-UNet training run; returns a summary dict (also when stopped by Ctrl-C)."""
    log_to = (log_to or sys.stdout) if dist.is_main() else open(os.devnull, "w")
    t_wall = time.perf_counter()
    dev = resolve_device(cfg.device)
    store = DenoiserStore.open(cfg.store)
    m = store.meta
    schedule = torch.from_numpy(store.alphas_cumprod)  # (T,)
    if cfg.cond_dim and not m["cond_shape"]:
        raise ValueError(f"--cond-dim {cfg.cond_dim}: store {store.path} is unconditional (its teacher takes no text)")
    classes = tuple(store.classes or ())  # a class-conditional teacher: cond is the class row itself, no adapter
    if classes and cfg.cond_dim not in (None, len(classes)):
        raise ValueError(f"--cond-dim {cfg.cond_dim}: store {store.path} holds a class-conditional teacher's records; "
                         f"its cond is one value per class ({len(classes)}): leave --cond-dim out")
    cond_dim = len(classes) if classes else (8 if cfg.cond_dim is None else cfg.cond_dim) if m["cond_shape"] else 0
    ucfg = OUNetConfig(sample_shape=tuple(m["shapes"]["x_t"]), num_steps=len(schedule), window=cfg.window,
                       grid=cfg.grid, freqs=cfg.freqs, modulate=cfg.modulate, gain=cfg.gain, coarse=cfg.coarse,
                       stage_grid=cfg.stage_grid, stage_buckets=cfg.stage_buckets, stage_copies=cfg.stage_copies,
                       stage_window=cfg.stage_window, target=cfg.target, cond_dim=cond_dim,
                       classes=classes, teacher=m["teacher"], pixel_range=store.pixel_range)
    if cfg.stage_grid and cond_dim and not classes:
        raise ValueError(f"--stage-grid with a text-conditioned store ({store.path}) is not supported yet: the text "
                         "adapter's search reads the per-pixel rows only; train without --stage-grid")
    run = Path(cfg.out)
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    record.update(kind="denoiser", teacher=m["teacher"], cond_dim=cond_dim)
    old = open_run(run, record, RUN_FIELDS, ADDED_FIELDS)
    if old is not None and old.get("cond_dim", 0) != cond_dim:
        raise ValueError(f"cannot resume {run}: its text adapter gives cond_dim {old.get('cond_dim', 0)}, asked "
                         f"{cond_dim}. Use another --out folder, or the same --cond-dim to continue it.")
    train_idx, val_idx = store.indices("train"), store.indices("val")
    if len(train_idx) == 0:
        raise ValueError(f"store {store.path} has no training records")
    rng_eval = np.random.default_rng(cfg.seed + 1)
    if len(val_idx) == 0:
        print("the store has no held-out records (val split empty): scoring on training records", file=log_to)
        val_idx = train_idx
    eval_idx = np.sort(rng_eval.choice(val_idx, min(cfg.eval_records, len(val_idx)), replace=False))

    state = {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    u = None
    if old is not None and (run / WEIGHTS_NAME).is_file():
        u = OUNet.load(run, dev)
        state = resume_state(run, u.meta)
        record["out_scale"] = old["out_scale"]
        print(f"resuming {run} at tick {state['tick']} ({state['time'] / 60:.1f} min trained, held-out eps error "
              f"{state['best']['rel_err']:.4f})", file=log_to)
    elif old is not None:
        record["out_scale"] = old["out_scale"]
    else:
        pick = np.sort(rng_eval.choice(train_idx, min(256, len(train_idx)), replace=False))
        x_t, eps = torch.from_numpy(store.x_t[pick]), torch.from_numpy(store.eps[pick])
        ab = schedule[torch.from_numpy(store.t[pick]).round().long()].float()
        record["out_scale"] = out_scale_for(typical_largest(from_eps(ucfg.target, eps, x_t, ab)))
    log = read_log(run, old)
    write_record(run, record, old)
    adapter = u.adapter if u is not None else None
    if cond_dim and adapter is None and not classes:  # from the prompts' embeddings alone: PCA, no targets
        adapter = TextAdapter.from_embeddings(store.cond_table, cond_dim, m["cond_shape"]).to(dev)
    stage = u.stage if u is not None else None
    if cfg.stage_grid and stage is None:  # the coarse stage first (its own run in RUN_DIR/coarse), then frozen
        stage, status = train_stage(cfg, ucfg, schedule, store, train_idx, val_idx, run, dev, log_to)
        if stage is None:
            return {"run": str(run), "status": status, "tick": 0, "minutes": 0.0, "stage": "coarse"}
    job = DenoiserJob(cfg, ucfg, schedule, store, train_idx, eval_idx, adapter, run, dev, stage)
    return run_ticks(cfg, job, run, record, state, u, log, t_wall, log_to)

