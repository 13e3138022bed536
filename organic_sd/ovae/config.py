"""What `osd train encoder|decoder` takes: TrainConfig (each field is also its --flag), and the fields a resumed
run must keep. Reading this file needs no torch, so the command line is built from it cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from organic_sd import strategy_names
from organic_sd.flags import BATCH_SIZE_HELP, flag

# fields that define a run: a resume with other values would silently mix two experiments
# seed and eval_images pick the held-out images that decide which tick is kept: a resume must score the same ones
# refine_start: where the units came from (its default changed on 2026-12-05: a run resumed under the new default
# is refused instead of refined in another way than it grew)
RUN_FIELDS = ("kind", "mode", "window", "hidden", "latents", "mix_teacher", "target", "pad", "grid", "retina_dim",
              "global_size", "seed", "eval_images", "stages", "stage_shares", "refine_start", "stage_targets",
              "feature_channels", "init_frozen", "shift_seconds")
# the values runs from before a field existed used
ADDED_FIELDS = {"mix_teacher": 0.5, "stages": [], "stage_shares": [], "refine_start": "cascade",
                "stage_targets": "decode", "feature_channels": 16, "init_frozen": 0, "shift_seconds": 0.0}
ENCODER_UNITS_PER_ROUND = 16  # TrainConfig.units_per_round's encoder default
# flags of the decoder alone: the encoder always learns the teacher's latents as they are
DECODER_ONLY = ("latents", "mix_teacher", "target", "stage_targets")  # a staged encoder's stages learn features


@dataclass
class TrainConfig:
    """Everything `osd train encoder|decoder` takes (each field but kind is also its --flag); RUN_FIELDS plus the
    store's teacher must match on resume."""

    kind: str  # "encoder" or "decoder": the subcommand
    store: str = flag(help="store folder written by `osd precompute frames`")
    out: str = flag(help="run folder (created, or resumed if it holds the same run)")
    mode: str = flag("patch", "patch: per latent position (default); global: whole frame (the research's setup)",
                     choices=("patch", "global"))
    window: int = flag(0, "decoder: latent window k (odd, default 3); encoder: pixel window (default 2*f = 16)")
    hidden: tuple[int, ...] = flag((), "hidden tanh layer widths, e.g. --hidden 64")
    strategy: str = flag("auto", strategy_names.HELP, choices=strategy_names.CHOICES)
    population: int = flag(40, "candidates per row")
    hessian: int = flag(0, "each hidden unit searches only this many input directions of its own, where one principal "
                           "direction of the residual bends most (0: every unit searches all); helps short CPU runs, "
                           "loses on long GPU runs (docs/BENCHMARKS.md)")
    deflate: bool | None = flag(None, "each hidden unit of a round counts only for what the round's earlier units do "
                                      "not already make, so a round grows different features instead of near copies "
                                      "(default: on for the decoder, off for the encoder; docs/BENCHMARKS.md)")
    units_per_round: int | None = flag(None, "hidden units grown side by side before the readout is re-fitted "
                                             "(default: 16 for the encoder, whose latents then decode better, 8 for "
                                             "the decoder; docs/BENCHMARKS.md)")
    refine: float | None = flag(None, "share of a tick that grows units spent moving them together afterwards, and of "
                                      "every later tick instead of re-fitting the readout alone (ola.Refine; 0: off; "
                                      "default 0.9 where the units start random, else 0)")
    refine_start: str | None = flag(None, "where the units start: grown by the cascade, or random (one hidden layer, "
                                          "of the part or of each stage; needs --refine > 0; ola.Refine.measured). "
                                          "Default: random for a fresh single-stage decoder with one hidden layer "
                                          "(measured better at the shipped shape, docs/BENCHMARKS.md), else cascade",
                                  choices=("cascade", "random"))
    max_minutes: float | None = flag(None, "stop after this many minutes of this call")
    ticks: int | None = flag(None, "stop after this many ticks of this call")
    tick_seconds: float = flag(30.0, "search time per tick (one fresh sample)")
    first_tick_seconds: float | None = flag(None, "search time of the first tick, which grows the hidden units "
                                                  "(later ticks keep them and refine the readout); default "
                                                  "--tick-seconds")
    generations: int | None = flag(None, "search generations per tick (ends a tick early; reproducible runs)")
    save_minutes: float = flag(0.0, "checkpoint interval (0: every tick)")
    device: str = flag("cpu", "cpu, cuda, cuda:1 ...")
    latents: str = flag("teacher", "'teacher' (stored latents), 'oenc:RUN' (an O-Encoder's), or 'mix:RUN' (both, "
                                   "--mix-teacher sets the share, toward the teacher's decode: a decoder that also "
                                   "tolerates the O-Encoder's error)")
    mix_teacher: float = flag(0.5, "with mix:RUN, the share of rows whose inputs are the teacher's latents (default "
                                   "0.5); more favours the decoder on teacher latents, less the full O-VAE")
    init: str = flag("", "start a new run from this run's (or O-VAE file's) part: its hidden units and readout. With "
                         "the same --hidden only the readout is re-fitted, on this run's rows (e.g. units grown on "
                         "teacher latents, readout on --latents mix:); with a larger --hidden its units are kept and "
                         "the missing ones grow on them")
    init_frozen: int = flag(0, "with --stages and --init: the first N stages are --init's as they are, never trained "
                               "again (the later stages share all of --max-minutes); a later stage may then differ "
                               "from --init's in shape, and starts fresh")
    target: str = flag("", "train toward the teacher's decode (default with teacher latents) or the original image "
                           "(default with oenc latents)", choices=("decode", "image"))
    freeze_loss: float | None = flag(None, "stop once held-out MSE is at or below this")
    max_rows: int = flag(200_000, "patch rows drawn per tick")
    batch_size: int | None = flag(None, BATCH_SIZE_HELP)
    eval_images: int = flag(32, "held-out images scored per tick")
    pad: str = flag("replicate", "border padding", choices=("replicate", "reflect"))
    grid: int = flag(1, "global mode: latent pooled to GRID x GRID")
    retina_dim: int = flag(512, "global encoder: random projection size (0: none)")
    global_size: int = flag(64, "global decoder: output side before upsampling")
    seed: int = flag(0, "seed of the rows drawn, the searches, the held-out images and a global encoder's retina")
    progress: bool | None = flag(None, "show the search's progress bars (default: on when stderr is a terminal)")
    stages: tuple[str, ...] = flag((), "a staged decoder, coarse to fine, one WINDOW:HIDDEN[:LATENT[:CARRY]] per "
                                       "stage, e.g. --stages 5:96 3:64:0 3:48:0 (latent -> 1/4 -> 1/2 -> full "
                                       "resolution): stage 1 maps a WINDOW x WINDOW latent window to a block, each "
                                       "later stage a WINDOW x WINDOW window of the previous stage's map plus a "
                                       "LATENT x LATENT window of the latent (default 1; 0: none) and a CARRY x CARRY "
                                       "window of the previous stage's hidden units (default 0: none) to a 2x2 block; "
                                       "trained greedily, stage by stage, the last toward the teacher's decode, the "
                                       "others as --stage-targets says. --max-minutes and --ticks then count per whole "
                                       "run and per stage (not per call); --window and --hidden do not apply. "
                                       "Encoder: fine to coarse, one WINDOW:HIDDEN per stage, e.g. --stages 3:64 3:64 "
                                       "3:96 (pixels -> 1/2 -> 1/4 -> latent): each stage maps a WINDOW x WINDOW "
                                       "window of 2x2 cells of the previous map to one position, every stage but the "
                                       "last toward the teacher encoder's activations (needs --teacher)")
    stage_shares: tuple[float, ...] = flag((), "with --stages: each stage's share of --max-minutes (default equal)")
    stage_patience: int = flag(0, "with --stages: a stage ends when this many ticks in a row score no better on its "
                                  "held-out images, and the later stages share the minutes it left (0: every stage "
                                  "spends its share)")
    stage_targets: str = flag("decode", "with --stages: what every stage but the last learns: 'decode', the teacher's "
                                        "decode area-downsampled to its resolution (RGB between stages), or "
                                        "'features', the teacher decoder's own activations there (their top "
                                        "--feature-channels principal components, standardised; needs --teacher; "
                                        "measured far better, docs/BENCHMARKS.md)", choices=("decode", "features"))
    feature_channels: int = flag(16, "with --stage-targets features: the components each earlier stage learns and "
                                     "hands to the next")
    shift_seconds: float = flag(0.0, "with --stages, decoder: after the last stage, evolve for this many seconds a "
                                     "global shift (per image, one number per colour channel from 73 global statistics "
                                     "of latent and output; with --latents mix: one map per source of latents and a "
                                     "probe that tells them apart), kept if the held-out images score better; 0: none. "
                                     "Measured +0.4 dB on teacher latents (docs/BENCHMARKS.md). With --init RUN "
                                     "--init-frozen N (all of RUN's stages) it adds a shift to a finished run")
    teacher: str = flag("", "the store's teacher (path, TAESD-family), for --stage-targets features and a staged "
                            "encoder: it computes the activations the earlier stages learn")

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
        if self.progress is None:  # the command line decides from the terminal; called from Python: quiet
            self.progress = False
        if self.deflate is None:
            self.deflate = self.kind == "decoder"
        if self.units_per_round is None:
            from organic_sd.ola import UNITS_PER_ROUND  # here, so that reading the config needs no torch

            self.units_per_round = ENCODER_UNITS_PER_ROUND if self.kind == "encoder" else UNITS_PER_ROUND
        if self.hessian < 0:
            raise ValueError(f"--hessian must be >= 0, got {self.hessian}")
        if self.refine_start is None:
            # one GPU, the shipped decoder's shape, 4 min: random 23.16 dB against the cascade's 22.35 on the held-out
            # split; the encoder (a 768-number window) loses with it, the staged stages tie (docs/BENCHMARKS.md)
            fresh_decoder = self.kind == "decoder" and len(self.hidden) == 1 and not self.stages and not self.init
            self.refine_start = "random" if fresh_decoder and self.refine != 0.0 else "cascade"
        if self.refine is None:
            self.refine = 0.9 if self.refine_start == "random" else 0.0
        if not 0.0 <= self.refine < 1.0:
            raise ValueError(f"--refine is a share of each tick in [0, 1), got {self.refine}")
        if self.refine_start not in ("cascade", "random"):
            raise ValueError(f"--refine-start must be 'cascade' or 'random', got {self.refine_start!r}")
        self.stages = tuple(str(s) for s in self.stages)
        # (a malformed --stages spec fails here, before any data is read)
        units = [h for _, h, _, _ in stage_specs(self.stages)] if self.stages else list(self.hidden)
        if self.refine_start == "random" and (self.refine == 0.0 or (len(units) != 1 and not self.stages)
                                              or not all(units)):
            raise ValueError("--refine-start random starts one hidden layer (of a part, or of every stage) and needs "
                             f"--refine > 0 to move it (got {'--stages' if self.stages else '--hidden'} "
                             f"{' '.join(self.stages) or ' '.join(map(str, self.hidden)) or 'none'}, --refine "
                             f"{self.refine})")
        self.stage_shares = tuple(float(s) for s in self.stage_shares)
        if self.init_frozen < 0:
            raise ValueError(f"--init-frozen counts stages: 0 or more, got {self.init_frozen}")
        if self.stages and self.kind == "encoder":  # its earlier stages can only learn the teacher's activations
            if any(len(spec.split(":")) != 2 for spec in self.stages):
                raise ValueError(f"a staged encoder's stages are WINDOW:HIDDEN each (no LATENT or CARRY part), got "
                                 f"{' '.join(self.stages)}")
            self.stage_targets = "features"
        if self.stages:
            if self.mode != "patch":
                raise ValueError("--stages builds a patch-mode part (no --mode global)")
            if self.hidden or self.window:
                raise ValueError("--stages sets each stage's window and hidden units: leave --window and --hidden out")
            if self.max_minutes is None and self.ticks is None and self.freeze_loss is None:
                raise ValueError("--stages needs --max-minutes or --ticks (shared out over the stages)")
            if self.stage_shares and (len(self.stage_shares) != len(self.stages) or min(self.stage_shares) <= 0):
                raise ValueError(f"--stage-shares needs one positive share per stage ({len(self.stages)}), "
                                 f"got {list(self.stage_shares)}")
            if self.stage_targets == "features" and (len(self.stages) < 2 or not self.teacher):
                raise ValueError(("a staged encoder" if self.kind == "encoder" else "--stage-targets features")
                                 + " needs at least two --stages (the last one writes "
                                 + ("the latent" if self.kind == "encoder" else "RGB") + ") and --teacher (the "
                                 "store's teacher, whose activations the earlier stages learn)")
            most = len(self.stages) if self.shift_seconds else len(self.stages) - 1  # something must be trained
            if self.init_frozen and not (self.init and 0 < self.init_frozen <= most):
                raise ValueError(f"--init-frozen {self.init_frozen} needs --init and at most {most} of the "
                                 f"{len(self.stages)} --stages (the stages after it are the ones trained"
                                 + (")" if self.shift_seconds else "; all of them with --shift-seconds)"))
        elif self.stage_shares or self.stage_patience or self.init_frozen:
            raise ValueError("--stage-shares, --stage-patience and --init-frozen only apply with --stages")
        if self.shift_seconds < 0:
            raise ValueError(f"--shift-seconds must be 0 (none) or more, got {self.shift_seconds}")
        if self.shift_seconds and not (self.stages and self.kind == "decoder"):
            raise ValueError("--shift-seconds applies to a staged decoder (--stages) only")
        if self.stage_patience < 0:
            raise ValueError(f"--stage-patience must be 0 (off) or more ticks, got {self.stage_patience}")
        if self.stage_targets not in ("decode", "features"):
            raise ValueError(f"--stage-targets must be 'decode' or 'features', got {self.stage_targets!r}")
        if not self.stages and (self.stage_targets != "decode" or self.teacher):
            raise ValueError("--stage-targets and --teacher only apply with --stages")
        if self.feature_channels < 1:
            raise ValueError(f"--feature-channels must be positive, got {self.feature_channels}")
        for name in ("tick_seconds", "max_rows", "eval_images", "population", "units_per_round"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


def stage_specs(specs: tuple[str, ...]) -> list[tuple[int, int, int, int]]:
    """--stages 'WINDOW:HIDDEN[:LATENT[:CARRY]]' strings -> (window, hidden, latent window, carry window) per
    stage (stage 1: latent 0 and carry 0; later stages: latent 1 and carry 0 unless given)."""
    out = []
    for i, spec in enumerate(specs):
        parts = spec.split(":")
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            nums = []
        if len(nums) not in (2, 3, 4):
            raise ValueError(f"--stages: each stage is WINDOW:HIDDEN[:LATENT[:CARRY]], e.g. 3:64, 3:48:1 or 3:48:0:1; "
                             f"got {spec!r}")
        k, h = nums[:2]
        z = nums[2] if len(nums) >= 3 else (0 if i == 0 else 1)
        c = nums[3] if len(nums) == 4 else 0
        if k < 1 or k % 2 == 0 or h < 0 or z < 0 or (z and z % 2 == 0) or c < 0 or (c and c % 2 == 0):
            raise ValueError(f"--stages {spec!r}: WINDOW, LATENT and CARRY must be odd (LATENT and CARRY may be 0), "
                             "HIDDEN >= 0")
        if i == 0 and (z or c):
            raise ValueError(f"--stages {spec!r}: stage 1 reads the latent already and has no stage before it to "
                             "carry from (no LATENT or CARRY part)")
        if c and not out[-1][1]:
            raise ValueError(f"--stages {spec!r}: CARRY reads the previous stage's hidden units, and it has none")
        out.append((k, h, z, c))
    return out
