"""What `osd train denoiser` takes: DenoiserTrainConfig (each field is also its --flag) and the fields a
resumed run must keep. Reading this file needs no torch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from organic_sd import strategy_names
from organic_sd.flags import BATCH_SIZE_HELP, flag

# fields that define a run: resuming with other values would silently mix two experiments
# seed and eval_records pick the held-out records that decide which tick is kept: a resume must score the same ones
RUN_FIELDS = ("window", "hidden", "grid", "freqs", "modulate", "gain", "coarse", "teacher", "seed", "eval_records",
              "stage_grid", "stage_buckets", "stage_copies", "stage_window", "stage_hidden", "target", "t_weight",
              "weight_steps")
# fields newer than some runs, with the value those runs used before the field existed
ADDED_FIELDS = {"stage_grid": 0, "stage_buckets": 0, "stage_window": 5, "stage_hidden": [128], "target": "eps",
                "t_weight": "uniform", "weight_steps": 8, "stage_copies": "both"}
T_WEIGHTS = ("uniform", "update")  # ounet/targets.py (kept here too: this file reads without torch)
STAGE_COPY_CHOICES = ("both", "noise", "signal", "none")  # ounet/features.py STAGE_COPIES
REFINE_STARTS = ("cascade", "random")  # ola.Refine.start


@dataclass
class DenoiserTrainConfig:
    """Everything `osd train denoiser` takes."""

    store: str = flag(help="denoiser store written by `osd precompute denoiser`")
    out: str = flag(help="run folder (created, or resumed if it holds the same run)")
    window: int = flag(9, "noisy-input window k x k around each pixel (odd)")
    hidden: tuple[int, ...] = flag((32,), "hidden tanh widths (cascade), e.g. 32")
    grid: int = flag(4, "global context: x_t average-pooled to GRID x GRID")
    freqs: int = flag(4, "sin/cos frequencies of t/T in the timestep features")
    coarse: int = flag(0, "context beyond the window: x_t pooled by S, the 3 x 3 pooled cells around each pixel "
                          "(S divides the sample's side; 0: none)")
    gain: int = flag(0, "inner N x N window divided by the noise level as extra inputs (odd; 0: none)")
    modulate: int = flag(5, "inner window m (odd, <= --window; 0: none) whose values, and the global context, are "
                            "also inputs multiplied by sqrt(alpha-bar) and sqrt(1 - alpha-bar)")
    stage_grid: int = flag(0, "multi-scale: a coarse stage sees x_t pooled to G x G (and time) and predicts the "
                              "target pooled to G x G; the per-pixel stack reads a window of it, upsampled. Trained "
                              "first, in RUN_DIR/coarse, then frozen (G divides the sample's side; 0: single-scale)")
    stage_buckets: int = flag(0, "soft time buckets whose products with the pooled image are coarse-stage inputs: "
                                 "a linear map of its own per noise level (0: none)")
    stage_copies: str = flag("both", "noise-scaled copies of the pooled image the coarse stage also reads: both "
                                     "(times sqrt(alpha-bar) and times sqrt(1 - alpha-bar)), noise, signal or none; "
                                     "each costs C G G readout columns per output (38 k parameters at 14x14)",
                             choices=STAGE_COPY_CHOICES)
    stage_window: int = flag(5, "window of the upsampled coarse prediction in the per-pixel rows (odd)")
    stage_hidden: tuple[int, ...] = flag((128,), "hidden tanh widths of the coarse stage")
    stage_minutes: float = flag(2.0, "search minutes of the coarse stage (the whole run's, not per call)")
    stage_rows: int = flag(200_000, "records (one row each) drawn per tick of the coarse stage")
    stage_refine: float = flag(0.5, "share of each coarse-stage tick spent moving its units together (ola.Refine)")
    stage_refine_start: str = flag("cascade", "where the coarse stage's units start: grown by the cascade, or random "
                                              "(one hidden layer, moved by --stage-refine > 0; ola.Refine.measured)",
                                   choices=REFINE_STARTS)
    refine: float = flag(0.0, "share of each per-pixel tick spent moving the last hidden layer's units together "
                              "(ola.Refine)")
    refine_start: str = flag("cascade", "where the per-pixel stack's units start: grown by the cascade, or random (one "
                                        "hidden layer, moved by --refine > 0, e.g. 0.9; ola.Refine.measured)",
                             choices=REFINE_STARTS)
    target: str = flag("eps", "what the stacks predict: eps, x0 or v (v = sqrt(ab) eps - sqrt(1-ab) x0 keeps the "
                              "error reaching DDIM's x0 estimate small at high noise)", choices=("eps", "x0", "v"))
    t_weight: str = flag("uniform", "how rows count by noise level: uniform, or update (each record drawn and scored "
                                    "by how much its error moves a --weight-steps DDIM update: the low-noise steps "
                                    "that draw the strokes count most)", choices=T_WEIGHTS)
    weight_steps: int = flag(8, "DDIM steps whose update --t-weight update weighs by")
    cond_dim: int | None = flag(None, "text adapter size: the teacher's text embedding -> this many cond inputs "
                                      "(default 8 for a store with prompts; 0: ignore the prompts)")
    adapter_every: int = flag(2, "ticks between text adapter searches with the stack frozen (0: keep the PCA start)")
    strategy: str = flag("auto", strategy_names.HELP, choices=strategy_names.CHOICES)
    population: int = flag(40, "candidates per row")
    deflate: bool = flag(False, "each hidden unit of a round counts only for what the round's earlier units do not "
                                "already make", action=argparse.BooleanOptionalAction)
    max_minutes: float | None = flag(None, "stop after this many minutes of this call")
    ticks: int | None = flag(None, "stop after this many ticks of this call")
    tick_seconds: float = flag(30.0, "search time per tick (one fresh sample)")
    first_tick_seconds: float | None = flag(None, "search time of the first tick, which grows the hidden units; "
                                                  "default --tick-seconds")
    generations: int | None = flag(None, "search generations per tick (reproducible runs)")
    save_minutes: float = flag(0.0, "checkpoint interval (0: every tick)")
    freeze_loss: float | None = flag(None, "stop once the held-out eps MSE is at or below this")
    max_rows: int = flag(100_000, "pixel rows drawn per tick")
    batch_size: int | None = flag(None, BATCH_SIZE_HELP)
    eval_records: int = flag(64, "held-out records scored per tick")
    device: str = flag("cpu", "cpu, cuda, cuda:1 ...")
    seed: int = flag(0, "seed of the rows drawn, the searches and the held-out records")
    progress: bool | None = flag(None, "show the search's progress bars (default: on when stderr is a terminal)")

    def __post_init__(self):
        if self.progress is None:  # the command line decides from the terminal; called from Python: quiet
            self.progress = False
        self.hidden = tuple(int(h) for h in ((self.hidden,) if isinstance(self.hidden, int) else self.hidden))
        self.stage_hidden = tuple(int(h) for h in ((self.stage_hidden,) if isinstance(self.stage_hidden, int)
                                                   else self.stage_hidden))
        if not (0 <= self.refine < 1 and 0 <= self.stage_refine < 1):
            raise ValueError(f"--refine and --stage-refine are shares in [0, 1), got {self.refine}, {self.stage_refine}")
        for start, share, hidden, flags in ((self.refine_start, self.refine, self.hidden, "--refine"),
                                            (self.stage_refine_start, self.stage_refine, self.stage_hidden,
                                             "--stage-refine")):
            if start not in REFINE_STARTS:
                raise ValueError(f"{flags}-start must be one of {REFINE_STARTS}, got {start!r}")
            if start == "random" and (share == 0 or len(hidden) != 1):
                raise ValueError(f"{flags}-start random starts one hidden layer of random units and needs {flags} > 0 "
                                 f"to move them (got {flags} {share}, hidden {' '.join(map(str, hidden)) or 'none'})")
        if self.stage_minutes < 0 or self.stage_rows <= 0:
            raise ValueError(f"--stage-minutes must be >= 0 and --stage-rows positive, got {self.stage_minutes}, "
                             f"{self.stage_rows}")
        if (self.cond_dim is not None and self.cond_dim < 0) or self.adapter_every < 0:
            raise ValueError(f"--cond-dim and --adapter-every must be >= 0, got {self.cond_dim}, {self.adapter_every}")
        if self.weight_steps < 1:
            raise ValueError(f"--weight-steps must be positive, got {self.weight_steps}")
        for name in ("tick_seconds", "max_rows", "eval_records", "population"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
