"""`osd train encoder|decoder`: evolve an O-Encoder or O-Decoder from a store, tick by tick (no gradients).

    setup: open the store, fix the held-out images, resume RUN_DIR if it holds a run (or start from --init)
    each tick (runs.run_ticks): a fresh random sample of patch rows from the train split (streamed from
               the store's shards, never the whole store), ola.fit, the held-out score, keep or not, log
Files in RUN_DIR: config.json (the run), model.safetensors (an O-VAE file holding this part),
state.json (tick, time, best), log.jsonl (one line per tick), plot.png.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from organic_sd import dist, ola
from organic_sd.data.store import Store
from organic_sd.devices import resolve_device
from organic_sd.ovae.config import ADDED_FIELDS, RUN_FIELDS, TrainConfig
from organic_sd.ovae.model import OVAE, WEIGHTS_NAME, Part, PartConfig, read_parts
from organic_sd.ovae.rows import SUBSPACE, HeldOut, PartRows, out_scale, part_config, source_encoder
from organic_sd.runs import open_run, read_log, resume_state, run_ticks, write_record




def _run_record(cfg: TrainConfig, part: PartConfig, store: Store) -> dict:
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    record.update(window=part.window, teacher=store.meta["teacher"], image_size=part.image_size,
               latent_channels=part.latent_channels)
    return record


# what a module's weights mean: an --init part must agree on these with the run it starts; global mode's inputs
# also depend on the frame size and the retina (its projection is drawn from --seed), patch mode's on neither
INIT_FIELDS = ("kind", "mode", "teacher", "latent_channels", "downscale", "window", "pad")
GLOBAL_INIT_FIELDS = ("image_size", "grid", "retina_dim", "retina_seed", "global_size")


def _init_module(spec: str, cfg: TrainConfig, part: PartConfig, device: torch.device) -> ola.OLAModule:
    """The module of the --init run or file's part of this kind, checked against this run's part and --hidden."""
    init = read_parts(spec, device)[cfg.kind]
    if init is None:
        raise ValueError(f"--init {spec}: that run/file holds no {cfg.kind}")
    fields = INIT_FIELDS + (GLOBAL_INIT_FIELDS if part.mode == "global" else ())
    diff = [f"{k}: it has {getattr(init.config, k)!r}, this run {getattr(part, k)!r}"
            + (" (the retina is drawn from --seed)" if k == "retina_seed" else "")
            for k in fields if getattr(init.config, k) != getattr(part, k)]
    have = tuple(init.module.config.hidden)
    if have != cfg.hidden and not ola.grown_part_of(have, cfg.hidden):
        diff.append(f"hidden: it has {have}, this run asks {cfg.hidden} (it may only grow)")
    if diff:
        raise ValueError(f"--init {spec} cannot start this run: {'; '.join(diff)}")
    return init.module



class PartJob:
    """What runs.run_ticks needs of an O-VAE part run: its rows, held-out score and file."""

    noun = "module"

    def __init__(self, cfg: TrainConfig, part_cfg: PartConfig, rows: PartRows, heldout: HeldOut, train_idx,
                 run: Path, device: torch.device):
        self.cfg, self.part_cfg, self.rows, self.heldout, self.train_idx = cfg, part_cfg, rows, heldout, train_idx
        self.run, self.device = run, device
        self.fit_kwargs = {"subspace": replace(SUBSPACE, hessian=cfg.hessian, deflate=cfg.deflate),
                           "units_per_round": cfg.units_per_round,
                           "refine": ola.Refine.measured(cfg.refine, cfg.refine_start)}
        metrics = [("psnr", "PSNR (dB)")] if cfg.kind == "decoder" else [("cosine", "mean cosine")]
        if rows.mix:
            metrics.append(("psnr_oenc", "PSNR on O-Encoder latents (dB)"))
        self.plot = [("heldout_mse", "MSE", True), *[(*m, False) for m in metrics]]

    def draw(self, rng):
        return self.rows.draw(self.train_idx, self.cfg.max_rows, rng)

    def fit_share(self, tick: int) -> float:
        return 1

    def candidate(self, module, tick, interrupted, rng, tick_seconds):
        return Part(self.part_cfg, module), {}

    def module_of(self, kept: Part | None):
        return None if kept is None else kept.module

    def score(self, cand: Part) -> dict:
        return self.heldout.score(cand)

    def keep(self, cand: Part) -> None:
        pass

    def describe(self, scores: dict) -> str:
        metric = f"PSNR {scores['psnr']:.2f} dB" if "psnr" in scores else f"cosine {scores['cosine']:.4f}"
        if "psnr_oenc" in scores:
            metric += f" (teacher latents), {scores['psnr_oenc']:.2f} dB (O-Encoder's)"
        return f"held-out MSE {scores['heldout_mse']:.5g}, {metric}"

    def save(self, kept: Part, summary: dict) -> Path:
        kept.module.training_summary = {**kept.module.training_summary, "run": summary}
        return OVAE(**{self.cfg.kind: kept}, meta={"training_run": str(self.run)}).save(self.run / WEIGHTS_NAME)


def train(cfg: TrainConfig, log_to=None) -> dict:
    """Run (or resume) a training run; returns a summary dict (also when stopped by Ctrl-C).

    Under torchrun every rank draws the same rows and runs the same loop, ola.fit splits
    its searches across the ranks, and only rank 0 writes RUN_DIR and prints.
    """
    if cfg.stages:  # a staged decoder: its own loop over stages, each stage a run_ticks run
        from organic_sd.ovae.staged import train_staged

        return train_staged(cfg, log_to)
    log_to = (log_to or sys.stdout) if dist.is_main() else open(os.devnull, "w")
    t_wall = time.perf_counter()
    dev = resolve_device(cfg.device)
    store = Store.open(cfg.store)
    part_cfg = part_config(cfg, store)
    run = Path(cfg.out)
    record = _run_record(cfg, part_cfg, store)
    old = open_run(run, record, (*RUN_FIELDS, "teacher", "image_size", "latent_channels"),
                   added=ADDED_FIELDS)
    train_idx = store.indices("train")
    if len(train_idx) == 0:
        raise ValueError(f"store {store.path} has no training samples")
    rows = PartRows(store, part_cfg, dev, source_encoder(cfg.latents, store, dev), cfg.mix_teacher)
    heldout = HeldOut(store, part_cfg, rows, cfg.eval_images, cfg.seed)

    state = {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    part = None
    if old is not None and (run / WEIGHTS_NAME).is_file():
        part = read_parts(run, dev)[cfg.kind]
        state = resume_state(run, part.module.training_summary.get("run", {}))
        if rows.mix and "psnr_oenc" not in state["best"]:  # saved before a mix: score covered both inputs
            state["best"] = heldout.score(part)
        record["out_scale"] = old["out_scale"]
        print(f"resuming {run} at tick {state['tick']} ({state['time'] / 60:.1f} min trained, held-out MSE "
              f"{state['best']['heldout_mse']:.5g})" + (f"; --init {cfg.init} not used: the run goes on from its own "
                                                         "checkpoint" if cfg.init else ""), file=log_to)
    elif cfg.init:
        part = Part(part_cfg, _init_module(cfg.init, cfg, part_cfg, dev))
        record["out_scale"] = part.module.config.out_scale
        print(f"starting from --init {cfg.init}: {part.module.config.hidden} hidden units", file=log_to)
    else:
        record["out_scale"] = old["out_scale"] if old else out_scale(cfg, store, np.random.default_rng(cfg.seed))
    log = read_log(run, old)
    write_record(run, record, old)
    job = PartJob(cfg, part_cfg, rows, heldout, train_idx, run, dev)
    return run_ticks(cfg, job, run, record, state, part, log, t_wall, log_to)
