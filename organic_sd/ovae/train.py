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
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from organic_sd import dist, ola
from organic_sd.data.store import Store
from organic_sd.files import atomic_json
from organic_sd.metrics.pixels import cosine_rows, psnr_of_mse
from organic_sd.ola.cascade import UNITS_PER_ROUND
from organic_sd.plots import training_plot
from organic_sd.runs import check_resume, fit_tick, growing, keeps, resume_state
from organic_sd.ovae import patches
from organic_sd.devices import resolve_device
from organic_sd.ola.fit import grown_part_of
from organic_sd.ovae.model import OVAE, WEIGHTS_NAME, Part, PartConfig, part_rows, read_parts

# fields that define a run: a resume with other values would silently mix two experiments
# seed and eval_images pick the held-out images that decide which tick is kept: a resume must score the same ones
RUN_FIELDS = ("kind", "mode", "window", "hidden", "latents", "mix_teacher", "target", "pad", "grid", "retina_dim",
              "global_size", "seed", "eval_images")
ENCODER_UNITS_PER_ROUND = 16  # TrainConfig.units_per_round's encoder default
LOAD_CHUNK = 64  # store images read and windowed at a time (bounds peak memory while drawing rows)
# Image windows are redundant (16x16x3 pixels: 99% of the variance in 99 of 768 directions) and
# their flat directions hold pixel noise, which whitening blows up to unit variance: units and
# readout searched there fit the training photos and explode on others. Searching only the top
# directions took the encoder's Set14 cosine from 0.48 to 0.67 (docs/BENCHMARKS.md). Latent
# windows (the decoder's inputs) are nearly full-rank, so they keep nearly every direction.
SUBSPACE = ola.Subspace(units=0.99, readout=0.9995)


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
    # Units of a round count only beyond the round's earlier ones (ola.Subspace.deflate). None: on for the
    # decoder (shipped recipe +0.09 dB on teacher latents, +0.06 dB full, two seeds each), off for the
    # encoder (its latents come closer to the teacher's, +0.005 cosine, but decode worse: the teacher's
    # decoder -0.29 dB on them, O-Decoders -0.06 dB); docs/BENCHMARKS.md.
    deflate: bool | None = None
    # hidden units grown side by side before the readout is re-fitted. None: per part, the engine's 8 for the
    # decoder, 16 for the encoder, whose latents then decode better at the same cosine (linear decoder +0.5-1.3
    # dB, full O-VAE +0.2-0.55 dB with the same decoders; CPU, two seeds); both shipped encoders were grown so.
    units_per_round: int | None = None
    max_minutes: float | None = None
    ticks: int | None = None
    tick_seconds: float = 30.0
    first_tick_seconds: float | None = None  # the tick that grows hidden units (later ticks only refine)
    generations: int | None = None  # per tick, instead of (or besides) tick_seconds: reproducible runs
    save_minutes: float = 0.0  # 0: checkpoint after every tick
    device: str = "cpu"
    latents: str = "teacher"  # decoder inputs: "teacher", "oenc:RUN", or "mix:RUN" (both)
    # mix: the share of rows whose inputs are the teacher's latents (the rest are the O-Encoder's). Half each
    # trades the decoder on teacher latents for the full O-VAE (docs/BENCHMARKS.md, 2026-11-27).
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
    extra: dict = field(default_factory=dict)

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
            self.units_per_round = ENCODER_UNITS_PER_ROUND if self.kind == "encoder" else UNITS_PER_ROUND
        if self.hessian < 0:
            raise ValueError(f"--hessian must be >= 0, got {self.hessian}")
        for name in ("tick_seconds", "max_rows", "eval_images", "population", "units_per_round"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


# -- data --------------------------------------------------------------------------------------

class Rows:
    """Turns store samples into (module input rows, target rows) for one part."""

    def __init__(self, store: Store, part: PartConfig, device: torch.device, source: Part | None,
                 mix_teacher: float = 0.5):
        self.store, self.part, self.device, self.source = store, part, device, source
        self.mix_teacher = mix_teacher

    def latents(self, idx: np.ndarray, images: torch.Tensor | None) -> torch.Tensor:
        """The first set of decoder inputs for samples idx: the O-Encoder's for oenc, else the teacher's."""
        if self.source is None or self.mix:
            return torch.from_numpy(self.store.latents[idx]).to(self.device)
        return self.source(images)

    def latent_sets(self, idx: np.ndarray, images: torch.Tensor | None) -> list[torch.Tensor]:
        """Every set of decoder inputs for samples idx: [teacher], [O-Encoder] or, for mix, [teacher, O-Encoder]."""
        z = self.latents(idx, images)
        return [z, self.source(images)] if self.mix else [z]  # Rows.draw relies on this order

    @property
    def mix(self) -> bool:
        return self.part.latents.startswith("mix:")

    def _set_shares(self) -> list[float]:
        """Per set of decoder inputs (latent_sets' order), the share of its rows kept: mix_teacher of all rows
        drawn come from the teacher's latents, and the larger set is never thinned for the balance."""
        if not self.mix:
            return [1.0]
        w = self.mix_teacher
        return [1.0, (1 - w) / w] if w >= 0.5 else [w / (1 - w), 1.0]

    def pairs(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples idx -> rows x (N, in), y (N, out) on the device."""
        p, s = self.part, self.store
        images = torch.from_numpy(s.images[idx]).to(self.device)  # (n, 3, H, W)
        if p.kind == "encoder":
            z = torch.from_numpy(s.latents[idx]).to(self.device)  # (n, C, h, w)
            if p.mode == "patch":
                return patches.pixel_windows(images, p.downscale, p.window, p.pad), patches.grid_to_rows(z)
            return part_rows(p, images), F.adaptive_avg_pool2d(z, p.grid).flatten(1)
        target = images if p.target == "image" else torch.from_numpy(s.decodes[idx]).to(self.device)
        zs = self.latent_sets(idx, images)  # mix: the same targets behind two sets of inputs
        if p.mode == "patch":
            x, y = [patches.latent_windows(z, p.window, p.pad) for z in zs], patches.blocks(target, p.downscale)
        else:
            x = [F.adaptive_avg_pool2d(z, p.grid).flatten(1) for z in zs]
            y = F.interpolate(target, size=(p.global_size,) * 2, mode="area").flatten(1)  # (n, 3 * S * S)
        return torch.cat(x), y.repeat(len(zs), 1)

    def draw(self, pool: np.ndarray, max_rows: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh random sample of at most max_rows rows from randomly chosen samples of `pool`."""
        if len(pool) == 0:
            raise ValueError(f"store {self.store.path} has no samples in this split to draw rows from")
        p = self.part
        per_image = (p.image_size // p.downscale) ** 2 if p.mode == "patch" else 1
        shares = self._set_shares()
        per_image *= sum(shares)  # mix: each image gives rows from both sets of inputs
        n = min(len(pool), max(1, math.ceil(max_rows / per_image)))
        idx = np.sort(rng.choice(pool, n, replace=False))  # sorted: sequential shard reads
        share = min(1.0, max_rows / (n * per_image))  # thin each chunk now, so the full set never exists
        xs, ys = [], []
        for i in range(0, n, LOAD_CHUNK):
            x, y = self.pairs(idx[i:i + LOAD_CHUNK])
            for x_set, y_set, f in zip(x.chunk(len(shares)), y.chunk(len(shares)), shares):
                if share * f < 1.0:
                    m = x_set.shape[0]
                    keep = torch.from_numpy(rng.permutation(m)[:math.ceil(share * f * m)]).to(x.device)
                    x_set, y_set = x_set[keep], y_set[keep]
                xs.append(x_set), ys.append(y_set)
        x, y = torch.cat(xs), torch.cat(ys)
        if x.shape[0] > max_rows:
            keep = torch.from_numpy(rng.permutation(x.shape[0])[:max_rows]).to(x.device)
            x, y = x[keep], y[keep]
        return x, y


class HeldOut:
    """A fixed set of held-out samples, scored whole-image through the part (as inference runs)."""

    def __init__(self, store: Store, part: PartConfig, rows: Rows, n: int, seed: int):
        val = store.indices("val")
        if len(val) == 0:
            raise ValueError(f"store {store.path} has no held-out samples (val split is empty); "
                             "re-run precompute with --val-fraction > 0")
        rng = np.random.default_rng(seed + 1)
        self.idx = np.sort(rng.choice(val, min(n, len(val)), replace=False))
        self.part, self.rows, self.store = part, rows, store
        # decoder inputs per chunk, made once: the O-Encoder behind oenc:/mix: is fixed, so are its latents
        self._inputs: dict[int, list[torch.Tensor]] = {}

    def score(self, part: Part) -> dict:
        """Held-out MSE (the freeze and keep metric), plus PSNR (decoder, on [0, 1]) or mean cosine (encoder).

        A mix: decoder is scored on both sets of inputs, weighted as its rows are (--mix-teacher): its MSE
        is the objective it was trained on; `psnr` is on the teacher's latents, `psnr_oenc` on the O-Encoder's.
        """
        p, s, dev = self.part, self.store, self.rows.device
        se, n, cos_sum, cos_n = [0.0, 0.0], 0, 0.0, 0
        for i in range(0, len(self.idx), 16):
            idx = self.idx[i:i + 16]
            images = torch.from_numpy(s.images[idx]).to(dev)
            if p.kind == "encoder":
                z = torch.from_numpy(s.latents[idx]).to(dev)
                if p.mode == "global":
                    z = F.adaptive_avg_pool2d(z, p.grid)
                pred = part(images)
                a, b = patches.grid_to_rows(pred), patches.grid_to_rows(z)
                cos_sum += float(cosine_rows(a, b).sum())
                cos_n += a.shape[0]
                preds = [pred]
            else:
                z = images if p.target == "image" else torch.from_numpy(s.decodes[idx]).to(dev)
                if i not in self._inputs:
                    self._inputs[i] = self.rows.latent_sets(idx, images)
                preds = [part(zk).clamp(-1, 1) for zk in self._inputs[i]]
            for k, pred in enumerate(preds):
                se[k] += float((pred - z).double().square().sum())
            n += z.numel()
        mse = se[0] / n
        out = {"heldout_mse": mse}
        if p.kind == "decoder":
            out["psnr"] = psnr_of_mse(mse)
            if self.rows.mix:
                w = self.rows.mix_teacher
                out["heldout_mse"] = w * mse + (1 - w) * se[1] / n
                out["psnr_oenc"] = psnr_of_mse(se[1] / n)
        else:
            out["cosine"] = cos_sum / cos_n
        return out


# -- run folder --------------------------------------------------------------------------------

def _part_config(cfg: TrainConfig, store: Store) -> PartConfig:
    m = store.meta
    C, h, _ = m["shapes"]["latents"]
    size = int(m["size"])
    return PartConfig(kind=cfg.kind, mode=cfg.mode, teacher=m["teacher"], latent_channels=int(C),
                      downscale=size // int(h), image_size=size, window=cfg.window, pad=cfg.pad,
                      retina_dim=cfg.retina_dim, retina_seed=cfg.seed, grid=cfg.grid, global_size=cfg.global_size,
                      latents=cfg.latents if cfg.kind == "decoder" else "teacher",
                      target=cfg.target if cfg.kind == "decoder" else "decode", preprocess=m["preprocess"])


def _run_record(cfg: TrainConfig, part: PartConfig, store: Store) -> dict:
    rec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    rec.update(window=part.window, teacher=store.meta["teacher"], image_size=part.image_size,
               latent_channels=part.latent_channels)
    return rec


def _source_encoder(spec: str, store: Store, device: torch.device) -> Part | None:
    if spec == "teacher":
        return None
    enc = read_parts(spec.split(":", 1)[1], device)["encoder"]
    if enc is None:
        raise ValueError(f"--latents {spec}: that run/file holds no encoder")
    if enc.config.teacher != store.meta["teacher"]:
        raise ValueError(f"--latents {spec}: the encoder clones teacher {enc.config.teacher!r} but the store holds "
                         f"{store.meta['teacher']!r}")
    return enc


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
    if have != cfg.hidden and not grown_part_of(have, cfg.hidden):
        diff.append(f"hidden: it has {have}, this run asks {cfg.hidden} (it may only grow)")
    if diff:
        raise ValueError(f"--init {spec} cannot start this run: {'; '.join(diff)}")
    return init.module


def _out_scale(cfg: TrainConfig, store: Store, rng: np.random.Generator) -> float:
    """Decoder: 1 (pixels in [-1, 1]); encoder: 1.2 x the largest |latent| in a sample, rounded up to 0.5."""
    if cfg.kind == "decoder":
        return 1.0
    idx = rng.choice(store.indices("train"), min(64, len(store.indices("train"))), replace=False)
    return math.ceil(1.2 * float(np.abs(store.latents[np.sort(idx)]).max()) * 2) / 2


# -- the loop ----------------------------------------------------------------------------------

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
    part_cfg = _part_config(cfg, store)
    run = Path(cfg.out)
    rec = _run_record(cfg, part_cfg, store)
    old = check_resume(run, rec, (*RUN_FIELDS, "teacher", "image_size", "latent_channels"),
                       added={"mix_teacher": 0.5})  # runs from before --mix-teacher drew half each
    run.mkdir(parents=True, exist_ok=True)
    train_idx = store.indices("train")
    if len(train_idx) == 0:
        raise ValueError(f"store {store.path} has no training samples")
    rows = Rows(store, part_cfg, dev, _source_encoder(cfg.latents, store, dev), cfg.mix_teacher)
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
        rec["out_scale"] = old["out_scale"] if old else _out_scale(cfg, store, np.random.default_rng(cfg.seed))
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
