"""The coarse stage of a multi-scale O-UNet run (ounet/stage.py), trained before the per-pixel stack.

It is a run of its own in RUN_DIR/coarse/ (config.json, model.safetensors, state.json, log.jsonl,
plot.png) driven by the same tick loop (runs.run_ticks): each tick draws fresh records, one row
each (the pooled image -> the pooled target), continues the search, scores held-out records and
keeps the better stage. Once its --stage-minutes are spent it is marked done and frozen; the
per-pixel run in RUN_DIR then reads its predictions. Ctrl-C saves it, and the same command resumes it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from organic_sd import ola
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.files import WEIGHTS_NAME
from organic_sd.ounet.features import OUNetConfig
from organic_sd.ounet.stage import pooled_target, stage_inputs
from organic_sd.ounet.targets import draw_records, from_eps, record_weights
from organic_sd.runs import (
    open_run,
    out_scale_for,
    read_log,
    resume_state,
    run_ticks,
    typical_largest,
    write_record,
)

STAGE_DIR = "coarse"
STAGE_FIELDS = ("stage_grid", "stage_buckets", "stage_copies", "stage_hidden", "target", "freqs", "teacher", "seed",
                "t_weight", "weight_steps")
# what stage runs older than those fields used
STAGE_ADDED = {"t_weight": "uniform", "weight_steps": 8, "stage_copies": "both"}
LOAD_CHUNK = 1024  # records turned into coarse rows at a time
HELDOUT_RECORDS = 4096  # one row per record: far more records than the per-pixel score needs


def stage_rows(cfg: OUNetConfig, schedule: torch.Tensor, store: DenoiserStore, idx: np.ndarray, dev: torch.device):
    """Records idx -> rows x (n, stage_in_dim), y (n, C g g): the pooled image and time -> the pooled target."""
    xs, ys = [], []
    for i in range(0, len(idx), LOAD_CHUNK):
        j = idx[i:i + LOAD_CHUNK]
        x_t = torch.from_numpy(store.x_t[j]).to(dev)  # (n, C, H, W)
        t = torch.from_numpy(store.t[j]).to(dev).round().long()  # (n,)
        eps = torch.from_numpy(store.eps[j]).to(dev)
        ab = schedule.to(dev)[t].float()
        cond = torch.from_numpy(store.cond[j]).to(dev) if cfg.cond_dim else None  # (n, K) class rows
        xs.append(stage_inputs(cfg, schedule, x_t, t, cond))
        ys.append(pooled_target(cfg, from_eps(cfg.target, eps, x_t, ab)))
    return torch.cat(xs), torch.cat(ys)


class StageJob:
    """What runs.run_ticks needs of the coarse stage: record rows, held-out pooled-target error, the module file."""

    noun = "coarse stage"
    plot = [("rel_err", "coarse-stage MSE / pooled target power", True)]

    def __init__(self, cfg, ucfg: OUNetConfig, schedule, store, train_idx, eval_idx, run: Path, device):
        self.cfg, self.ucfg, self.schedule, self.store, self.train_idx = cfg, ucfg, schedule, store, train_idx
        self.run, self.device = run, device
        self.x_eval, self.y_eval = stage_rows(ucfg, schedule, store, eval_idx, device)
        self.fit_kwargs = {"refine": ola.Refine.measured(cfg.stage_refine, cfg.stage_refine_start)}
        self.p_train = record_weights(cfg.t_weight, ucfg.target, schedule, store.t[train_idx], cfg.weight_steps)
        w = record_weights(cfg.t_weight, ucfg.target, schedule, store.t[eval_idx], cfg.weight_steps)
        self.w_eval = None if w is None else torch.from_numpy(w * len(eval_idx)).to(device)[:, None]  # (n, 1), mean 1

    def draw(self, rng):
        idx = draw_records(rng, self.train_idx, self.cfg.stage_rows, self.p_train)
        return stage_rows(self.ucfg, self.schedule, self.store, idx, self.device)

    def fit_share(self, tick: int) -> float:
        return 1.0

    def candidate(self, module, tick, interrupted, rng, tick_seconds):
        return module, {}

    def module_of(self, kept):
        return kept

    def score(self, cand) -> dict:
        with torch.no_grad():
            d = (cand(self.x_eval) - self.y_eval).double().square()  # (n, C g g)
        se = float(d.sum())
        rel = se / max(float(self.y_eval.double().square().sum()), 1e-12)
        if self.w_eval is not None:  # --t-weight update: what is kept is judged as the rows were drawn
            se = float((d * self.w_eval).sum())
        return {"heldout_mse": se / self.y_eval.numel(), "rel_err": rel}

    def keep(self, cand) -> None:
        pass

    def describe(self, scores: dict) -> str:
        return f"coarse held-out MSE {scores['heldout_mse']:.5g}, relative {scores['rel_err']:.4f}"

    def save(self, kept, summary: dict) -> Path:
        kept.training_summary = {**kept.training_summary, "stage_run": summary}
        return kept.save(self.run / WEIGHTS_NAME)


def train_stage(cfg, ucfg: OUNetConfig, schedule: torch.Tensor, store: DenoiserStore, train_idx: np.ndarray,
                val_idx: np.ndarray, run: Path, dev: torch.device, log_to=None) -> tuple:
    """Train (or resume, or load when done) the coarse stage in run/coarse -> (frozen OLAModule or None, status)."""
    log_to = log_to or sys.stdout
    sdir = run / STAGE_DIR
    record = {"kind": "denoiser-stage", "stage_grid": ucfg.stage_grid, "stage_buckets": ucfg.stage_buckets,
              "stage_copies": ucfg.stage_copies, "stage_hidden": list(cfg.stage_hidden),
              "target": ucfg.target, "freqs": ucfg.freqs, "teacher": ucfg.teacher, "seed": cfg.seed,
              "stage_minutes": cfg.stage_minutes, "stage_rows": cfg.stage_rows, "stage_refine": cfg.stage_refine,
              "stage_refine_start": cfg.stage_refine_start,
              "t_weight": cfg.t_weight, "weight_steps": cfg.weight_steps}
    old = open_run(sdir, record, STAGE_FIELDS, STAGE_ADDED)
    state = {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    kept = None
    if old is not None and (sdir / WEIGHTS_NAME).is_file():
        kept = ola.load(sdir / WEIGHTS_NAME, dev)
        state = resume_state(sdir, kept.training_summary.get("stage_run", {}))
        if state["status"] in ("done", "frozen"):
            print(f"coarse stage: done ({state['time'] / 60:.1f} min, held-out relative error "
                  f"{state['best']['rel_err']:.4f}), frozen", file=log_to)
            return kept, state["status"]
    if old is not None:
        record["out_scale"] = old["out_scale"]
    else:
        rng = np.random.default_rng(cfg.seed + 2)
        _, y = stage_rows(ucfg, schedule, store, np.sort(rng.choice(train_idx, min(len(train_idx), 4096),
                                                                      replace=False)), dev)
        record["out_scale"] = out_scale_for(typical_largest(y))
    log = read_log(sdir, old)
    write_record(sdir, record, old)
    rng_eval = np.random.default_rng(cfg.seed + 3)
    eval_idx = np.sort(rng_eval.choice(val_idx, min(len(val_idx), HELDOUT_RECORDS), replace=False))
    left = cfg.stage_minutes - state["time"] / 60  # the stage's budget is for the whole run, not per call
    print(f"coarse stage: {ucfg.stage_grid}x{ucfg.stage_grid} grid, hidden {tuple(cfg.stage_hidden)}, target "
          f"{ucfg.target}, {max(left, 0):.1f} of {cfg.stage_minutes} min left", file=log_to)
    loop = replace(cfg, hidden=tuple(cfg.stage_hidden), max_minutes=max(left, 0.0), ticks=None, freeze_loss=None)
    job = StageJob(cfg, ucfg, schedule, store, train_idx, eval_idx, sdir, dev)
    res = run_ticks(loop, job, sdir, record, state, kept, log, time.perf_counter(), log_to)
    if res["status"] == "interrupted" or not (sdir / WEIGHTS_NAME).is_file():
        return None, res["status"]
    return ola.load(sdir / WEIGHTS_NAME, dev), res["status"]
