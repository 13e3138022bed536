"""`osd train encoder|decoder`: evolve an O-Encoder or O-Decoder from a store, tick by tick (no gradients).

One readable loop, nanoGPT style:
    setup: open the store, fix the held-out images, resume RUN_DIR if it holds a run
    each tick: draw a fresh random sample of patch rows from the train split (streamed from the
               store's shards, never the whole store), continue the search with ola.fit for
               --tick-seconds, score the held-out split, keep the module if it is no worse,
               append a log line, redraw the plot, save a checkpoint atomically
    stop: --max-minutes spent, held-out MSE <= --freeze-loss, --ticks done, or Ctrl-C (saves first)
Files in RUN_DIR: config.json (the run), model.safetensors (an O-VAE file holding this part),
state.json (tick, time, best), log.jsonl (one line per tick), plot.png.
"""

from __future__ import annotations

import json
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
from organic_sd.files import atomic_json
from organic_sd.ovae.config import RUN_FIELDS, TrainConfig
from organic_sd.ovae.model import OVAE, WEIGHTS_NAME, Part, PartConfig, read_parts
from organic_sd.ovae.rows import HeldOut, PartRows, out_scale, part_config, source_encoder
from organic_sd.plots import training_plot
from organic_sd.runs import check_resume, fit_tick, growing, keeps, resume_state

# Image windows are redundant (16x16x3 pixels: 99% of the variance in 99 of 768 directions) and
# their flat directions hold pixel noise, which whitening blows up to unit variance: units and
# readout searched there fit the training photos and explode on others. Searching only the top
# directions took the encoder's Set14 cosine from 0.48 to 0.67 (docs/BENCHMARKS.md). Latent
# windows (the decoder's inputs) are nearly full-rank, so they keep nearly every direction.
SUBSPACE = ola.Subspace(units=0.99, readout=0.9995)



def _run_record(cfg: TrainConfig, part: PartConfig, store: Store) -> dict:
    rec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    rec.update(window=part.window, teacher=store.meta["teacher"], image_size=part.image_size,
               latent_channels=part.latent_channels)
    return rec


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



def train(cfg: TrainConfig, log_to=None) -> dict:
    """Run (or resume) a training run; returns a summary dict (also when stopped by Ctrl-C).

    Under torchrun every rank draws the same rows and runs the same loop, ola.fit splits
    its searches across the ranks, and only rank 0 writes RUN_DIR and prints.
    """
    main = dist.is_main()
    log_to = (log_to or sys.stdout) if main else open(os.devnull, "w")
    t_wall = time.perf_counter()
    dev = resolve_device(cfg.device)
    store = Store.open(cfg.store)
    part_cfg = part_config(cfg, store)
    run = Path(cfg.out)
    rec = _run_record(cfg, part_cfg, store)
    old = check_resume(run, rec, (*RUN_FIELDS, "teacher", "image_size", "latent_channels"),
                       added={"mix_teacher": 0.5})  # runs from before --mix-teacher drew half each
    run.mkdir(parents=True, exist_ok=True)
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
        rec["out_scale"] = old["out_scale"]
        print(f"resuming {run} at tick {state['tick']} ({state['time'] / 60:.1f} min trained, held-out MSE "
              f"{state['best']['heldout_mse']:.5g})" + (f"; --init {cfg.init} not used: the run goes on from its own "
                                                         "checkpoint" if cfg.init else ""), file=log_to)
    elif cfg.init:
        part = Part(part_cfg, _init_module(cfg.init, cfg, part_cfg, dev))
        rec["out_scale"] = part.module.config.out_scale
        print(f"starting from --init {cfg.init}: {part.module.config.hidden} hidden units", file=log_to)
    else:
        rec["out_scale"] = old["out_scale"] if old else out_scale(cfg, store, np.random.default_rng(cfg.seed))
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] \
        if old is not None and (run / "log.jsonl").is_file() else []
    dist.barrier()  # every rank has read RUN_DIR before rank 0 writes to it
    if main:
        atomic_json(run / "config.json", rec)
        if old is None:
            (run / "log.jsonl").unlink(missing_ok=True)  # a log without a run (crash before config) starts over
    rng = np.random.default_rng([cfg.seed, state["tick"]])  # resumed runs draw new samples, not the same ones
    budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    if budget is None and cfg.ticks is None and cfg.freeze_loss is None:
        print("no --max-minutes, --ticks or --freeze-loss: training until Ctrl-C", file=log_to)
    last_save = time.perf_counter()

    def save(status: str) -> None:
        if part is None or not main:
            return
        state["status"] = status
        summary = {"run": rec, "tick": state["tick"], "minutes": round(state["time"] / 60, 3), **(state["best"] or {})}
        part.module.training_summary = {**part.module.training_summary, "run": summary}
        OVAE(**{cfg.kind: part}, meta={"training_run": str(run)}).save(run / WEIGHTS_NAME)
        atomic_json(run / "state.json", state)

    ticks_done = 0
    try:
        while True:
            left = None if budget is None else budget - (time.perf_counter() - t_wall)
            grow = growing(None if part is None else part.module, cfg.hidden)
            want = cfg.first_tick_seconds if grow and cfg.first_tick_seconds else cfg.tick_seconds
            # a tick much shorter than asked would be mostly setup: stop instead
            out_of_time = left is not None and left < max(1.0, 0.2 * want)
            # rank 0's clock decides for all: a rank left out of a tick would wait in ola.fit's gathers forever
            if dist.all_gather_object(out_of_time or (cfg.ticks is not None and ticks_done >= cfg.ticks))[0]:
                state["status"] = "done"
                break
            tick_s = want if left is None else min(want, left)
            t0 = time.perf_counter()
            x, y = rows.draw(train_idx, cfg.max_rows, rng)  # (N, in), (N, out)
            t_data = time.perf_counter() - t0
            module, interrupted = fit_tick(
                x, y, hidden=cfg.hidden, strategy=cfg.strategy, population=cfg.population,
                out_scale=rec["out_scale"], max_seconds=max(0.5, tick_s - t_data), generations=cfg.generations,
                batch_size=cfg.batch_size, device=dev, seed=cfg.seed + state["tick"], progress=cfg.progress,
                init=None if part is None else part.module,
                subspace=replace(SUBSPACE, hessian=cfg.hessian, deflate=cfg.deflate),
                units_per_round=cfg.units_per_round)
            del x, y
            cand = Part(part_cfg, module)
            # rank 0's scores for all: keep / freeze must be decided alike on every rank
            scores = dist.all_gather_object(heldout.score(cand))[0]
            kept = keeps(module, None if part is None else part.module, scores["heldout_mse"], state["best"])
            if kept:
                part, state["best"] = cand, scores
            state["tick"] += 1
            ticks_done += 1
            state["time"] += time.perf_counter() - t0
            ts = module.training_summary
            line = {"tick": state["tick"], "time": round(state["time"], 3),
                    "rows": ts.get("n_train", 0) + ts.get("n_val", 0),
                    "data_seconds": round(t_data, 3), "fit_seconds": ts.get("seconds"),
                    "generations": ts.get("generations"), "fit_val_mse": ts.get("val_mse"), **scores, "kept": kept,
                    "best_heldout_mse": state["best"]["heldout_mse"], "curve": ts.get("curve", [])}
            log.append(line)
            if main:
                with open(run / "log.jsonl", "a") as fh:
                    fh.write(json.dumps(line) + "\n")
                metrics = [("psnr", "PSNR (dB)")] if cfg.kind == "decoder" else [("cosine", "mean cosine")]
                if rows.mix:
                    metrics.append(("psnr_oenc", "PSNR on O-Encoder latents (dB)"))
                training_plot(run, log, [("heldout_mse", "MSE", True), *[(*m, False) for m in metrics]])
            metric = f"PSNR {scores['psnr']:.2f} dB" if "psnr" in scores else f"cosine {scores['cosine']:.4f}"
            if "psnr_oenc" in scores:
                metric += f" (teacher latents), {scores['psnr_oenc']:.2f} dB (O-Encoder's)"
            print(f"tick {state['tick']:4d} | {state['time'] / 60:6.2f} min | {line['rows']:,} rows | "
                  f"held-out MSE {scores['heldout_mse']:.5g}, {metric}{'' if kept else ' (worse: kept previous)'}",
                  file=log_to, flush=True)
            if interrupted:
                raise KeyboardInterrupt
            if time.perf_counter() - last_save >= 60.0 * cfg.save_minutes:
                save("running")
                last_save = time.perf_counter()
            if cfg.freeze_loss is not None and state["best"]["heldout_mse"] <= cfg.freeze_loss:
                print(f"held-out MSE {state['best']['heldout_mse']:.5g} <= --freeze-loss {cfg.freeze_loss}: frozen",
                      file=log_to)
                state["status"] = "frozen"
                break
    except KeyboardInterrupt:
        state["status"] = "interrupted"
        print("interrupted: saving the last kept module", file=log_to)
    save(state["status"])
    result = {"run": str(run), "status": state["status"], "tick": state["tick"], "minutes": state["time"] / 60,
              **(state["best"] or {}), "parameters": None if part is None else part.num_parameters()}
    if part is not None:
        print(f"{state['status']}: {run / WEIGHTS_NAME} ({result['parameters']:,} parameters)", file=log_to)
    return result
