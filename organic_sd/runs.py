"""A training run: its folder and the tick loop both trainers share (`osd train encoder|decoder`, `osd train denoiser`).

RUN_DIR holds config.json (the run record), model.safetensors (the kept module, with a summary of
the run), state.json (tick, time, best held-out scores), log.jsonl and plot.png. The same command
on the same folder resumes; other settings are refused rather than mixed.

The loop (run_ticks), nanoGPT style; a trainer supplies a Job (its rows, held-out scorer, module, file):
    start:     a run started from --init scores that module first: a tick must be no worse to replace it
    each tick: draw fresh training rows, continue the search with ola.fit (init = the kept module) for
               --tick-seconds less the draw (at least half of it: search_seconds), score the held-out set,
               keep the module if it is no worse, append a log
               line, redraw the plot, save a checkpoint atomically (every tick, or every --save-minutes)
    stop: --max-minutes spent, --ticks done, held-out MSE <= --freeze-loss, `patience` ticks in a row no better
          (a staged run's --stage-patience), or Ctrl-C (saves first)
    never a result: a tick whose search ran no generation; a run that kept nothing ends "no-result" and
               leaves no folder behind; a --max-minutes that cannot fit the first tick is refused up front, and
               STARVED_TICKS whole ticks in a row with no search, or a fresh search that never beat
               predicting zero (ola.FitDidNotLearn), stop the run with what to change
Under torchrun every rank draws the same rows and runs the same loop, ola.fit splits its searches
across the ranks, rank 0's clock and scores decide for all, and only rank 0 writes RUN_DIR and prints.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from organic_sd import dist, ola
from organic_sd.files import WEIGHTS_NAME, atomic_json
from organic_sd.plots import training_plot

try:
    import fcntl
except ImportError:  # Windows: no lock, as for stores
    fcntl = None

LOCK_NAME = ".lock"  # held by the process training a run folder

MIN_SEARCH_SHARE = 0.5  # of a tick's search time kept when drawing its rows takes longer than the rest
STARVED_TICKS = 3  # whole ticks in a row that kept nothing before a run stops to say its settings cannot search


def check_resume(run: Path, record: dict, fields: tuple[str, ...], added: dict | None = None) -> dict | None:
    """The saved run record if `run` holds a run whose `fields` (and kind) equal `record`'s; None if `run` is new.
    `added`: fields newer than some runs, with the value those runs used before the field existed."""
    cfg_file = run / "config.json"
    if not cfg_file.is_file():
        if run.exists() and any(p.name not in ("log.jsonl", "plot.png", LOCK_NAME) for p in run.iterdir()):
            raise ValueError(f"{run} exists and is not empty but holds no config.json: not a training run; "
                             "use another --out folder")
        return None
    old = json.loads(cfg_file.read_text())
    old = {**(added or {}), **old}
    diff = [f"{k}: run has {old.get(k)!r}, asked {record[k]!r}" for k in fields if k != "kind" and old.get(k) != record[k]]
    if old.get("kind") != record["kind"]:
        diff.insert(0, f"kind: {run} holds a run of kind {old.get('kind')!r}")
    if diff:
        raise ValueError(f"cannot resume {run}: it was started with other settings ({'; '.join(diff)}). "
                         "Use another --out folder, or the same settings to continue it.")
    return old


def resume_state(run: Path, summary: dict) -> dict:
    """tick, time and best of a run being resumed: state.json, unless the checkpoint's own summary
    (`summary`, written with it) is newer or state.json is missing (a crash between the two writes)."""
    from_model = {"tick": summary.get("tick", 0), "time": 60.0 * summary.get("minutes", 0.0), "status": "running",
                  "best": {k: v for k, v in summary.items() if k not in ("run", "tick", "minutes", "training_run")}}
    f = run / "state.json"
    saved = json.loads(f.read_text()) if f.is_file() else None
    return saved if saved is not None and saved["tick"] >= from_model["tick"] else from_model


def growing(kept: ola.OLAModule | None, hidden: tuple[int, ...]) -> bool:
    """True while the kept module (None before the first tick) has fewer hidden units than asked for."""
    return kept is None or tuple(kept.config.hidden) != tuple(hidden)


def keeps(new: ola.OLAModule, kept: ola.OLAModule | None, new_mse: float, best: dict | None) -> bool:
    """Whether a tick's module replaces the kept one: the first, one with more grown units (a cut-short
    growth is kept only until it is finished), or one no worse on held-out data."""
    return (best is None or sum(new.config.hidden) > sum(kept.config.hidden)
            or new_mse <= best["heldout_mse"])


def fit_tick(x, y, **kw) -> tuple[ola.OLAModule, bool]:
    """ola.fit for one tick -> (module, interrupted): Ctrl-C while units grow keeps the units grown so far."""
    try:
        with warnings.catch_warnings():  # growth cut short by the tick's time goes on next tick: the tick line says so
            warnings.simplefilter("ignore", ola.BudgetWarning)
            return ola.fit(x, y, **kw), False
    except ola.FitInterrupted as stop:  # the next run's first tick goes on growing from this module
        if dist.world_size() > 1:  # ranks stop at different points: no collective may follow, so as before
            raise
        return stop.module, True


def out_scale_for(largest: float, step: float = 0.5) -> float:
    """The tanh readout's scale for targets whose largest magnitude is `largest`: 1.2 x that (headroom),
    rounded up to a multiple of `step`."""
    return math.ceil(1.2 * float(largest) / step) * step


def typical_largest(y: torch.Tensor, share: float = 0.9999) -> float:
    """The `share` quantile of |y|: the largest magnitude a readout must reach, without the rare wild values
    (an x0 or v target at the top step divides the teacher's eps error by sqrt(alpha-bar) ~ 0.006)."""
    a = y.abs().flatten().float()
    k = max(1, min(a.numel(), math.ceil(share * a.numel())))
    return float(a.kthvalue(k).values)


# -- the run folder --------------------------------------------------------------------------------

def open_run(run: Path, record: dict, fields: tuple[str, ...], added: dict | None = None) -> dict | None:
    """check_resume, then make the folder: the saved run record of a run being resumed, None for a new one."""
    old = check_resume(run, record, fields, added)
    run.mkdir(parents=True, exist_ok=True)
    return old


def read_log(run: Path, old: dict | None) -> list[dict]:
    """The log lines of a run being resumed; [] for a new run."""
    f = run / "log.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if old is not None and f.is_file() else []


def write_record(run: Path, record: dict, old: dict | None) -> None:
    """Write config.json once every rank has read RUN_DIR; a new run drops a log left without a run."""
    dist.barrier()
    if dist.is_main():
        atomic_json(run / "config.json", record)
        if old is None:
            (run / "log.jsonl").unlink(missing_ok=True)  # a crash before config.json: the log starts over


def _too_short(cfg, what: str, setup: float, want: float) -> str:
    """Why --max-minutes cannot fit one tick of search (`what` happened), and what to give instead. A staged run's
    stage (cfg.stage_share set) gets a share of the run's --max-minutes, so the advice is in the run's terms."""
    share = getattr(cfg, "stage_share", None)  # a staged run's stage
    need = math.ceil((setup + want) / 60 / (share or 1.0) * 10) / 10
    budget, more = f"--max-minutes {cfg.max_minutes:g}", ""
    if share:
        budget = (f"stage {cfg.stage_number}'s share of --max-minutes {cfg.run_minutes:g} ({cfg.max_minutes:.1f} min "
                  "left to it)")
        more = ", or this stage a larger --stage-shares"
    return (f"{budget} is too short to learn anything: {what}. Give --max-minutes {need:g} or more{more}, or ask less "
            "of the first tick (--first-tick-seconds, fewer --max-rows).")


def discard_unstarted(run: Path) -> None:
    """Remove a run folder that holds no kept module yet (config.json, log, plot): a run left with only its record
    looks like a run but holds nothing to resume, and an empty --out folder is clutter."""
    if (run / WEIGHTS_NAME).exists() or not run.is_dir():
        return
    for name in ("config.json", "log.jsonl", "plot.png", "state.json", LOCK_NAME):
        (run / name).unlink(missing_ok=True)
    if not any(run.iterdir()):
        run.rmdir()


# -- the tick loop ---------------------------------------------------------------------------------

class Job(Protocol):
    """What a trainer supplies to run_ticks. `kept` is its module wrapper (an O-VAE Part, an O-UNet), or None."""

    noun: str  # what is kept, for messages ("module", "O-UNet")
    device: torch.device
    fit_kwargs: dict  # ola.fit arguments of this trainer (units_per_round, subspace)
    plot: list[tuple[str, str, bool]]  # plot.png's series: (log key, label, log scale)

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A tick's fresh training rows x (N, in), y (N, out)."""
        ...

    def fit_share(self, tick: int) -> float:
        """The share of the tick's seconds that ola.fit gets (the rest goes to what `candidate` adds)."""
        ...

    def candidate(self, module: ola.OLAModule, tick: int, interrupted: bool, rng: np.random.Generator,
                  tick_seconds: float) -> tuple[Any, dict]:
        """The tick's fitted module as a kept-able wrapper, and extra fields for its log line."""
        ...

    def module_of(self, kept: Any) -> ola.OLAModule | None:
        ...

    def score(self, cand: Any) -> dict:
        """Held-out scores; "heldout_mse" decides what is kept (and --freeze-loss)."""
        ...

    def keep(self, cand: Any) -> None:
        """Told when `cand` becomes the kept one."""
        ...

    def describe(self, scores: dict) -> str:
        """The scores as the tick's console line shows them."""
        ...

    def save(self, kept: Any, summary: dict) -> Path:
        """Write the kept module with the run `summary` into RUN_DIR; -> the file."""
        ...


@contextmanager
def run_lock(run: Path):
    """Hold RUN_DIR/.lock while a run trains: a second trainer on the same folder stops at once with a clear error
    instead of both writing its checkpoints (under torchrun only rank 0 writes, so only rank 0 locks)."""
    if fcntl is None or not dist.is_main():
        yield
        return
    run.mkdir(parents=True, exist_ok=True)
    f = open(run / LOCK_NAME, "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f"{run} is being trained by another process right now (it holds {run / LOCK_NAME}): let "
                         "that one finish or stop it with Ctrl-C, or give another --out folder") from None
    try:
        yield
    finally:
        f.close()


def search_seconds(fit_s: float, t_data: float, left: float | None) -> float:
    """A tick's search time: its share `fit_s` less the time its rows took to draw, but never under
    MIN_SEARCH_SHARE of the share (a draw as slow as the tick, as a teacher pass on one CPU thread, left no search
    at all), nor past what --max-minutes has `left`."""
    s = max(fit_s - t_data, MIN_SEARCH_SHARE * fit_s)
    if left is not None:
        s = min(s, left - t_data)
    return max(0.5, s)


def run_ticks(cfg, job: Job, run: Path, record: dict, state: dict, kept: Any, log: list[dict], t_wall: float,
              log_to=None) -> dict:
    """Tick until a stop (see the module docstring); -> the run's summary. `cfg` holds the loop's flags (hidden,
    strategy, population, max_minutes, ticks, tick_seconds, first_tick_seconds, generations, save_minutes,
    freeze_loss, batch_size, seed, progress; optionally patience, and a staged run's stage_number, stage_share and
    run_minutes); `state` and `kept` are a resumed run's, or new. The run folder is locked meanwhile (run_lock)."""
    with run_lock(run):
        return _ticks(cfg, job, run, record, state, kept, log, t_wall, log_to)


def _ticks(cfg, job: Job, run: Path, record: dict, state: dict, kept: Any, log: list[dict], t_wall: float,
           log_to=None) -> dict:
    main = dist.is_main()
    log_to = (log_to or sys.stdout) if main else open(os.devnull, "w")
    rng = np.random.default_rng([cfg.seed, state["tick"]])  # resumed runs draw new samples, not the same ones
    budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    if budget is None and cfg.ticks is None and cfg.freeze_loss is None:
        print("no --max-minutes, --ticks or --freeze-loss: training until Ctrl-C", file=log_to)
    last_save = time.perf_counter()

    def save(status: str) -> None:
        if kept is None or not main:
            return
        state["status"] = status
        job.save(kept, {"run": record, "tick": state["tick"], "minutes": round(state["time"] / 60, 3),
                        **(state["best"] or {})})
        atomic_json(run / "state.json", state)

    if kept is not None and state["best"] is None:  # started from --init: a tick must beat where the run started
        state["best"] = dist.all_gather_object(job.score(kept))[0]
        print(f"tick    0 | as --init starts it: {job.describe(state['best'])}", file=log_to, flush=True)
    ticks_done = ticks_tried = 0  # ticks with a search; ticks started (a budget is judged before the first)
    starved = 0  # ticks in a row given all the time they asked for that still kept nothing
    misses = 0  # scored ticks in a row that were no better than the kept module (within this call)
    patience = getattr(cfg, "patience", 0)  # a staged run's --stage-patience: stop after so many
    try:
        while True:
            left = None if budget is None else budget - (time.perf_counter() - t_wall)
            grow = growing(job.module_of(kept), cfg.hidden)
            want = cfg.first_tick_seconds if grow and cfg.first_tick_seconds else cfg.tick_seconds
            if kept is None and ticks_tried == 0 and left is not None and left < 0.5 * want:
                raise ValueError(_too_short(cfg, f"after {budget - left:.0f} s of setup the first tick would get "
                                                 f"{left:.0f} s of the {want:.0f} s it asks for", budget - left, want))
            ticks_tried += 1
            # a tick much shorter than asked would be mostly setup: stop instead
            out_of_time = left is not None and left < max(1.0, 0.2 * want)
            # rank 0's clock decides for all: a rank left out of a tick would wait in ola.fit's gathers forever
            if dist.all_gather_object(out_of_time or (cfg.ticks is not None and ticks_done >= cfg.ticks))[0]:
                state["status"] = "done"
                break
            tick_s = want if left is None else min(want, left)
            t0 = time.perf_counter()
            x, y = job.draw(rng)  # (N, in), (N, out)
            t_data = time.perf_counter() - t0
            learned_nothing = False
            try:
                module, interrupted = fit_tick(
                    x, y, hidden=cfg.hidden, strategy=cfg.strategy, population=cfg.population,
                    out_scale=record["out_scale"],
                    max_seconds=search_seconds(job.fit_share(state["tick"]) * tick_s, t_data, left),
                    generations=cfg.generations, batch_size=cfg.batch_size, device=job.device,
                    seed=cfg.seed + state["tick"], progress=cfg.progress, init=job.module_of(kept), **job.fit_kwargs)
            except ola.FitDidNotLearn as e:  # a fresh search that never beat predicting zero in the tick's time
                module, interrupted, learned_nothing = e.module, False, True
            del x, y
            # the tick's time all went to setup, or its search never beat predicting zero: its module is where the
            # search would start, not a result (rank 0's count for all, as every decision a later collective depends on)
            searched = bool(module.training_summary.get("generations"))
            if dist.all_gather_object((not searched or learned_nothing) and not interrupted)[0]:
                state["time"] += time.perf_counter() - t0
                why = (f"went to setup ({t_data:.0f} s drawing rows) and ran 0 generations" if not searched else
                       f"ran {module.training_summary['generations']} generations that never beat predicting zero")
                print(f"nothing kept: the tick's {time.perf_counter() - t0:.0f} s {why}; not scored",
                      file=log_to, flush=True)
                starved = starved + 1 if tick_s >= want else 0
                if starved >= STARVED_TICKS:  # the settings, not bad luck: it would go on so until stopped
                    save("stopped")
                    flags = "--tick-seconds" + (" or --first-tick-seconds" if grow else "")
                    raise ValueError(f"{starved} ticks in a row kept nothing: each asked {want:g} s, and its search "
                                     f"never started or never beat predicting zero (drawing the rows took "
                                     f"{t_data:.0f} s). Give {flags} more, or fewer --max-rows; the same command goes "
                                     f"on from the last kept {job.noun}")
                continue
            starved = 0
            cand, extra = job.candidate(module, state["tick"], interrupted, rng, tick_s)
            # rank 0's scores for all: keep / freeze must be decided alike on every rank
            scores = dist.all_gather_object(job.score(cand))[0]
            is_kept = keeps(module, job.module_of(kept), scores["heldout_mse"], state["best"])
            if is_kept:
                kept, state["best"] = cand, scores
                job.keep(cand)
            misses = 0 if is_kept else misses + 1
            state["tick"] += 1
            ticks_done += 1
            state["time"] += time.perf_counter() - t0
            fitted = module.training_summary
            line = {"tick": state["tick"], "time": round(state["time"], 3),
                    "rows": fitted.get("n_train", 0) + fitted.get("n_val", 0), "data_seconds": round(t_data, 3),
                    "fit_seconds": fitted.get("seconds"), "generations": fitted.get("generations"),
                    "batch_size": fitted.get("batch_size"),  # rows per generation: the default depends on the device
                    "fit_val_mse": fitted.get("val_mse"), **scores, "kept": is_kept,
                    "best_heldout_mse": state["best"]["heldout_mse"], "curve": fitted.get("curve", []), **extra}
            log.append(line)
            if main:
                with open(run / "log.jsonl", "a") as fh:
                    fh.write(json.dumps(line) + "\n")
                training_plot(run, log, job.plot)
            units = ("" if not growing(module, cfg.hidden) else
                     f" | {sum(module.config.hidden)} of {sum(cfg.hidden)} hidden units, the next tick grows the rest")
            print(f"tick {state['tick']:4d} | {state['time'] / 60:6.2f} min | {line['rows']:,} rows | "
                  f"{job.describe(scores)}{'' if is_kept else ' (worse: kept previous)'}{units}", file=log_to,
                  flush=True)
            if interrupted:
                raise KeyboardInterrupt
            if time.perf_counter() - last_save >= 60.0 * cfg.save_minutes:
                save("running")
                last_save = time.perf_counter()
            if patience and misses >= patience:
                print(f"{misses} tick{'s' if misses > 1 else ''} in a row scored no better on the held-out set: "
                      f"done (patience {patience})", file=log_to)
                state["status"] = "done"
                break
            if cfg.freeze_loss is not None and state["best"]["heldout_mse"] <= cfg.freeze_loss:
                print(f"held-out MSE {state['best']['heldout_mse']:.5g} <= --freeze-loss {cfg.freeze_loss}: frozen",
                      file=log_to)
                state["status"] = "frozen"
                break
    except KeyboardInterrupt:
        state["status"] = "interrupted"
        print(f"interrupted: saving the last kept {job.noun}" if kept is not None else
              f"interrupted before a {job.noun} was kept: nothing to save; the same command starts the run again",
              file=log_to)
    except BaseException:  # an error before anything was kept leaves no run behind either
        if kept is None and main:
            discard_unstarted(run)
        raise
    if kept is None and state["status"] == "done" and ticks_done == 0 and budget is not None:
        state["status"] = "no-result"  # a run that learned nothing never says "done"
        spent = time.perf_counter() - t_wall
        print(_too_short(cfg, f"in {spent:.0f} s no tick ran a single generation of search", spent,
                         cfg.first_tick_seconds or cfg.tick_seconds) + " Nothing saved.", file=log_to)
    save(state["status"])
    if kept is None and main:
        discard_unstarted(run)
    result = {"run": str(run), "status": state["status"], "tick": state["tick"], "minutes": state["time"] / 60,
              **(state["best"] or {}), "parameters": None if kept is None else kept.num_parameters()}
    if kept is not None:
        print(f"{state['status']}: {run / WEIGHTS_NAME} ({result['parameters']:,} parameters)", file=log_to)
    return result
