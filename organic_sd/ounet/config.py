"""What `osd train denoiser` takes: DenoiserTrainConfig (each field is also its --flag) and the fields a
resumed run must keep. Reading this file needs no torch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from organic_sd import strategy_names
from organic_sd.flags import flag

# fields that define a run: resuming with other values would silently mix two experiments
# seed and eval_records pick the held-out records that decide which tick is kept: a resume must score the same ones
RUN_FIELDS = ("window", "hidden", "grid", "freqs", "modulate", "gain", "coarse", "teacher", "seed", "eval_records")


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
    batch_size: int | None = flag(None, "rows per generation (engine default if unset)")
    eval_records: int = flag(64, "held-out records scored per tick")
    device: str = flag("cpu", "cpu, cuda, cuda:1 ...")
    seed: int = flag(0, "seed of the rows drawn, the searches and the held-out records")
    progress: bool = flag(False, "show the search's progress bars")

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in ((self.hidden,) if isinstance(self.hidden, int) else self.hidden))
        if (self.cond_dim is not None and self.cond_dim < 0) or self.adapter_every < 0:
            raise ValueError(f"--cond-dim and --adapter-every must be >= 0, got {self.cond_dim}, {self.adapter_every}")
        for name in ("tick_seconds", "max_rows", "eval_records", "population"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
