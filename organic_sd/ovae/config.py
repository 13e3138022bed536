"""What `osd train encoder|decoder` takes: TrainConfig, and the fields a resumed run must keep.

Reading this file needs no torch, so the command line can be built from it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

# fields that define a run: a resume with other values would silently mix two experiments
# seed and eval_images pick the held-out images that decide which tick is kept: a resume must score the same ones
RUN_FIELDS = ("kind", "mode", "window", "hidden", "latents", "mix_teacher", "target", "pad", "grid", "retina_dim",
              "global_size", "seed", "eval_images")
ENCODER_UNITS_PER_ROUND = 16  # TrainConfig.units_per_round's encoder default


@dataclass
class TrainConfig:
    """Everything `osd train` takes; RUN_FIELDS plus the store's teacher must match on resume."""

    kind: str  # "encoder" or "decoder"
    store: str
    out: str
    mode: str = "patch"
    window: int = 0  # 0: 3 (decoder, latent cells) or 2 * f (encoder, pixels)
    hidden: tuple[int, ...] = ()
    strategy: str = "auto"
    population: int = 40
    hessian: int = 0  # >0: each unit searches this many directions of its own (ola.Subspace.hessian)
    # units of a round count only beyond the round's earlier ones (ola.Subspace.deflate). None: on for the
    # decoder, off for the encoder, whose deflated latents come closer to the teacher's but decode worse
    # (docs/BENCHMARKS.md, the deflated encoder retrain)
    deflate: bool | None = None
    # hidden units grown side by side before the readout is re-fitted. None: the engine's 8 for the decoder,
    # 16 for the encoder, whose latents then decode better at the same cosine (docs/BENCHMARKS.md, rounds of 16)
    units_per_round: int | None = None
    max_minutes: float | None = None
    ticks: int | None = None
    tick_seconds: float = 30.0
    first_tick_seconds: float | None = None  # the tick that grows hidden units (later ticks only refine)
    generations: int | None = None  # per tick, instead of (or besides) tick_seconds: reproducible runs
    save_minutes: float = 0.0  # 0: checkpoint after every tick
    device: str = "cpu"
    latents: str = "teacher"  # decoder inputs: "teacher", "oenc:RUN", or "mix:RUN" (both)
    # mix: the share of rows whose inputs are the teacher's latents (the rest are the O-Encoder's): more favours
    # the decoder on teacher latents, less the full O-VAE (docs/BENCHMARKS.md)
    mix_teacher: float = 0.5
    # a run (or O-VAE file) whose part of this kind a new run starts from: its units and readout. With the same
    # --hidden only the readout is re-fitted on this run's rows: units grown on teacher latents (which set the
    # decoder on teacher latents) with a readout on mixed rows (which sets the full O-VAE); docs/BENCHMARKS.md.
    init: str = ""
    target: str = ""  # decoder targets: "decode" (teacher's decode) or "image"; "" picks by latents
    freeze_loss: float | None = None
    max_rows: int = 200_000
    batch_size: int | None = None
    eval_images: int = 32
    pad: str = "replicate"
    grid: int = 1
    retina_dim: int = 512
    global_size: int = 64
    seed: int = 0
    progress: bool = False

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in ((self.hidden,) if isinstance(self.hidden, int) else self.hidden))
        if self.kind not in ("encoder", "decoder"):
            raise ValueError(f"kind must be 'encoder' or 'decoder', got {self.kind!r}")
        if self.kind == "encoder" and self.latents != "teacher":
            raise ValueError("--latents only applies to the decoder (the encoder always learns the teacher's latents)")
        if self.latents != "teacher" and not self.latents.startswith(("oenc:", "mix:")):
            raise ValueError(f"--latents must be 'teacher', 'oenc:RUN' or 'mix:RUN', got {self.latents!r}")
        if not 0.0 < self.mix_teacher < 1.0:
            raise ValueError(f"--mix-teacher must be between 0 and 1 (exclusive), got {self.mix_teacher}")
        if self.mix_teacher != 0.5 and not self.latents.startswith("mix:"):
            raise ValueError("--mix-teacher only applies to --latents mix:RUN")
        if not self.target:
            self.target = "image" if self.latents.startswith("oenc:") else "decode"
        if self.target not in ("decode", "image"):
            raise ValueError(f"--target must be 'decode' or 'image', got {self.target!r}")
        if self.deflate is None:
            self.deflate = self.kind == "decoder"
        if self.units_per_round is None:
            from organic_sd.ola import UNITS_PER_ROUND  # here, so that reading the config needs no torch

            self.units_per_round = ENCODER_UNITS_PER_ROUND if self.kind == "encoder" else UNITS_PER_ROUND
        if self.hessian < 0:
            raise ValueError(f"--hessian must be >= 0, got {self.hessian}")
        for name in ("tick_seconds", "max_rows", "eval_images", "population", "units_per_round"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
