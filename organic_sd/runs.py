"""A training run folder, as both trainers (`osd train` O-VAE parts, `osd train denoiser`) keep it.

RUN_DIR holds config.json (the run record), model.safetensors (the kept module, with a summary of
the run), state.json (tick, time, best held-out scores), log.jsonl and plot.png. The same command
on the same folder resumes; other settings are refused rather than mixed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from organic_sd import dist, ola


def check_resume(run: Path, rec: dict, fields: tuple[str, ...], added: dict | None = None) -> dict | None:
    """The saved run record if `run` holds a run whose `fields` (and kind) equal `rec`'s; None if `run` is new.
    `added`: fields newer than some runs, with the value those runs used before the field existed."""
    cfg_file = run / "config.json"
    if not cfg_file.is_file():
        if run.exists() and any(p.name not in ("log.jsonl", "plot.png") for p in run.iterdir()):
            raise ValueError(f"{run} exists and is not empty but holds no config.json: not a training run; "
                             "use another --out folder")
        return None
    old = json.loads(cfg_file.read_text())
    old = {**(added or {}), **old}
    diff = [f"{k}: run has {old.get(k)!r}, asked {rec[k]!r}" for k in fields if k != "kind" and old.get(k) != rec[k]]
    if old.get("kind") != rec["kind"]:
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
        return ola.fit(x, y, **kw), False
    except ola.FitInterrupted as stop:  # the next run's first tick goes on growing from this module
        if dist.world_size() > 1:  # ranks stop at different points: no collective may follow, so as before
            raise
        return stop.module, True


def out_scale_for(largest: float, step: float = 0.5) -> float:
    """The tanh readout's scale for targets whose largest magnitude is `largest`: 1.2 x that (headroom),
    rounded up to a multiple of `step`."""
    return math.ceil(1.2 * float(largest) / step) * step
