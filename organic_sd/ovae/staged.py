"""`osd train decoder|encoder --stages ...`: a staged O-Decoder evolved greedily, coarse to fine, or a staged
O-Encoder, fine to coarse (no gradients).

    setup: open the store, fix the held-out images, read RUN_DIR's config (resume) and --init; with
        --stage-targets features, load the teacher and fit (or read) the run's feature basis (features.py)
    each stage in turn, the earlier ones frozen: runs.run_ticks on this stage's rows (input: the frozen stages'
        output on the store's latents, plus the latent repeated up to it; target: the teacher's decode
        area-downsampled to this stage's resolution, or for every stage but the last with features the
        teacher's activations there), each tick kept by held-out MSE at that resolution. An encoder's stages read the
        images through the frozen stages instead and learn the teacher encoder's activations, the last its latent
    RUN_DIR/stageN/ holds stage N's config.json, model.safetensors (its OLA module), state.json, log.jsonl and
    plot.png; a finished stage (state "done" or "frozen") is never refitted, an interrupted one resumes where it
    stopped. RUN_DIR/model.safetensors, the O-VAE file of the whole decoder, appears once the last stage has a module.
--max-minutes is shared out over the stages by --stage-shares and counts over every call of the run (a resumed
run trains what is left of each stage's share); a stage ended early by --stage-patience leaves its minutes to the
later stages (stage_budget); --ticks counts per stage, also over calls. --init starts every stage from an
earlier run's; --init-frozen N takes its first N stages as they are (scored, saved, status "frozen", no minutes) and
trains the rest, which may then have other shapes: a finer stage re-fitted or reshaped on the frozen coarse ones.
A decoder with --shift-seconds ends with its global shift (train_shift.py), after the last stage.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from organic_sd import dist, ola
from organic_sd.data.store import Store
from organic_sd.devices import resolve_device
from organic_sd.files import atomic_json
from organic_sd.metrics.pixels import cosine_rows, psnr_of_mse
from organic_sd.ovae import train_shift
from organic_sd.ovae.config import ADDED_FIELDS, RUN_FIELDS, TrainConfig, stage_specs
from organic_sd.ovae.features import FeatureTargets, open_basis
from organic_sd.ovae.model import OVAE, WEIGHTS_NAME, Part, PartConfig, read_parts
from organic_sd.ovae.patches import grid_to_rows
from organic_sd.ovae.rows import (
    LOAD_CHUNK,
    SUBSPACE,
    PartRows,
    capped,
    out_scale,
    part_config,
    source_encoder,
    thin,
)
from organic_sd.runs import open_run, read_log, resume_state, run_ticks, write_record
from organic_sd.stages import (
    Stack,
    Stage,
    StageConfig,
    repeat_up,
    stage_rows,
    to_blocks,
)

MIN_IMAGES = 64  # a tick's rows come from at least this many images: fine stages have many positions per image
# the teacher's activations per sample, kept across ticks up to this many bytes (in host memory): on the CPU one
# tick's teacher pass over 64 images at 1/2 resolution takes about a minute, longer than a tick
TARGET_CACHE_BYTES = 2 << 30
DONE = ("done", "frozen")


def stage_configs(cfg: TrainConfig, part: PartConfig) -> list[StageConfig]:
    """The StageConfigs of --stages for this store. Decoder: stage 1 latent -> RGB (or K feature channels) at
    x(f / 2^(n-1)), then x2 per stage, the last one writing RGB. Encoder: stage 1 RGB in (f / 2^(n-1))-pixel cells
    -> K channels, then 2x2 cells per stage, the last one writing the latent."""
    specs = stage_specs(cfg.stages)
    n, f, C = len(specs), part.downscale, part.latent_channels
    if f % 2 ** (n - 1):
        raise ValueError(f"--stages: {n} stages need a downscale divisible by 2^{n - 1}, the store's is {f}")
    width = cfg.feature_channels if cfg.stage_targets == "features" else 3  # what stages before the last write
    if part.kind == "encoder":
        return [StageConfig(3 if i == 0 else width, C if i == n - 1 else width, window=k, up=1,
                            down=f // 2 ** (n - 1) if i == 0 else 2, pad=part.pad)
                for i, (k, _, _, _) in enumerate(specs)]
    out = []
    for i, (k, h, z, c) in enumerate(specs):
        c_out = 3 if i == n - 1 else width
        if i == 0:
            out.append(StageConfig(C, c_out, window=k, up=f // 2 ** (n - 1), pad=part.pad))
        else:
            out.append(StageConfig(width, c_out, window=k, up=2, extra_channels=C if z else 0, extra_window=z or 1,
                                   pad=part.pad, carry_channels=specs[i - 1][1] if c else 0, carry_window=c or 1))
    return out


def feature_targets(cfg: TrainConfig, store: Store, configs: list[StageConfig], device: torch.device) -> FeatureTargets:
    """The teacher's activation targets of every stage but the last (--stage-targets features; a staged encoder's
    always), no basis yet; checked before the run folder is touched."""
    from organic_sd.teachers.load import load_teacher

    teacher = load_teacher(cfg.teacher, device)
    if teacher.id != store.meta["teacher"]:
        raise ValueError(f"--teacher {cfg.teacher} is {teacher.id}, but store {store.path} was made with "
                         f"{store.meta['teacher']}: give the store's own teacher")
    ups, u = [], 1
    for scfg in configs[:-1]:
        u *= scfg.up * scfg.down  # a stack goes one way: all up (decoder) or all down (encoder)
        ups.append(u)
    if cfg.kind == "encoder":
        return FeatureTargets.for_encoder(teacher, ups, cfg.feature_channels)
    # a diffusers AutoencoderKL teacher has no layer list to tap: FeatureTargets says so
    return FeatureTargets.for_decoder(getattr(teacher, "decoder", None), ups, cfg.feature_channels, teacher.id)


def run_frozen(frozen: list[Stage], z: torch.Tensor, carry: bool = False) -> tuple[torch.Tensor, ...]:
    """The next stage's inputs for the stack's input z (latents (B, C, h, w); an encoder's images): the frozen
    stages' output map, z repeated up to it, and (`carry`) the last frozen stage's hidden units repeated up to it,
    else None."""
    if not frozen:
        return z, z, None
    maps, hidden = Stack(frozen).run(z)
    cur = maps[-1]  # (B, C_out, h*R, w*R); an encoder's (B, K, H/D, W/D)
    if frozen[-1].config.down > 1:  # an encoder: no extra or carry map
        return cur, None, None
    return cur, repeat_up(z, cur.shape[-2:]), (repeat_up(hidden, cur.shape[-2:]) if carry else None)


class StageRows:
    """Store samples -> (rows, targets) of one stage, the earlier stages frozen."""

    def __init__(self, rows: PartRows, frozen: list[Stage], scfg: StageConfig, features: FeatureTargets | None = None):
        self.rows, self.frozen, self.scfg = rows, frozen, scfg
        self.features, self.level = features, len(frozen)  # features: this stage learns the teacher's activations
        part = rows.part
        self.encoder = part.kind == "encoder"
        r_in = 1
        for s in frozen:
            r_in *= s.config.up * s.config.down  # all up (decoder) or all down (encoder)
        if self.encoder:
            self.side = part.image_size // r_in  # this stage's input map side
            self.factor = r_in * scfg.down  # its output is 1/factor of the image
        else:
            self.side = part.image_size // part.downscale * r_in
            self.factor = part.downscale // (r_in * scfg.up)  # target = the decode area-downsampled by this
        self.positions = (self.side // scfg.down) ** 2  # rows per input image
        # what a held-out score says: features' relative error, a decoder's PSNR, an encoder's latent cosine
        self.metric = "rel_error" if features is not None else ("cosine" if self.encoder else "psnr")
        self._cached: dict[int, torch.Tensor] = {}  # sample index -> its feature target (K, h', w'), on the host
        self._cached_bytes = 0

    def target(self, idx: np.ndarray, images: torch.Tensor) -> torch.Tensor:
        """The teacher's decode (or the image) of samples idx, area-downsampled to this stage's output resolution;
        with features, the teacher's activations there (B, K, ., .), from the store's teacher latents (an encoder's:
        from the images); an encoder's last stage: the teacher's latents."""
        s, p = self.rows.store, self.rows.part
        if self.features is not None:
            return self._feature_target(idx, images)
        if self.encoder:
            return self._teacher_latents(idx)
        t = images if p.target == "image" else torch.from_numpy(s.decodes[idx]).to(self.rows.device)
        return F.avg_pool2d(t, self.factor) if self.factor > 1 else t  # (n, 3, H/factor, W/factor)

    def _teacher_latents(self, idx: np.ndarray) -> torch.Tensor:
        """The store's teacher latents of samples idx (B, C, h, w), on the device."""
        return torch.from_numpy(np.asarray(self.rows.store.latents[idx], np.float32)).to(self.rows.device)

    def _feature_target(self, idx: np.ndarray, images: torch.Tensor) -> torch.Tensor:
        """The teacher's activations of samples idx at this stage (B, K, h', w'), each sample's computed once while
        the cache has room (the teacher network is fixed, so they never change)."""
        missing = [k for k, i in enumerate(idx) if int(i) not in self._cached]
        fresh = {}
        if missing:
            net_input = images[missing] if self.encoder else self._teacher_latents(idx[missing])
            for k, t in zip(missing, self.features(net_input, self.level)):
                fresh[k] = t
                if self._cached_bytes + t.nbytes <= TARGET_CACHE_BYTES:
                    self._cached[int(idx[k])] = t.cpu()
                    self._cached_bytes += t.nbytes
        dev = self.rows.device
        return torch.stack([fresh[k] if k in fresh else self._cached[int(i)].to(dev) for k, i in enumerate(idx)])

    def inputs(self, idx: np.ndarray, images: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per set of latents (teacher; O-Encoder; or both for mix), this stage's (input map, extra map, carry); an
        encoder's one set, from the images."""
        with torch.no_grad():
            sets = [images] if self.encoder else self.rows.latent_sets(idx, images)
            return [run_frozen(self.frozen, z, bool(self.scfg.carry_channels)) for z in sets]

    def draw(self, pool: np.ndarray, max_rows: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh random sample of at most max_rows rows, thinned evenly over at least MIN_IMAGES images."""
        store = self.rows.store
        if len(pool) == 0:
            raise ValueError(f"store {store.path} has no samples in this split to draw rows from")
        shares = self.rows._set_shares()
        per_image = self.positions * sum(shares)
        n = min(len(pool), max(MIN_IMAGES, math.ceil(max_rows / per_image)))
        idx = np.sort(rng.choice(pool, n, replace=False))  # sorted: sequential shard reads
        share = min(1.0, max_rows / (n * per_image))  # thin each chunk now, so the full set never exists
        xs, ys = [], []
        for i in range(0, n, LOAD_CHUNK):
            chunk = idx[i:i + LOAD_CHUNK]
            images = torch.from_numpy(store.images[chunk]).to(self.rows.device)
            y = to_blocks(self.target(chunk, images), self.scfg.up)  # (m, C_out*r*r)
            for (x_map, extra, carry), f in zip(self.inputs(chunk, images), shares):
                rows = stage_rows(self.scfg, x_map, extra if self.scfg.extra_channels else None, carry)
                x, y_set = thin(rows, y, share * f, rng)  # (m, in_dim), (m, C_out*r*r)
                xs.append(x), ys.append(y_set)
        return capped(xs, ys, max_rows, rng)


def heldout_indices(store: Store, n: int, seed: int) -> np.ndarray:
    """The run's n held-out samples (as rows.HeldOut chooses them): every stage and the shift are judged on them."""
    val = store.indices("val")
    if len(val) == 0:
        raise ValueError(f"store {store.path} has no held-out samples (val split is empty); "
                         "re-run precompute with --val-fraction > 0")
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(val, min(n, len(val)), replace=False))


class StageHeldOut:
    """Fixed held-out samples (heldout_indices), scored at this stage's resolution."""

    def __init__(self, rows: StageRows, n: int, seed: int):
        store = rows.rows.store
        self.idx = heldout_indices(store, n, seed)
        self.rows = rows
        self.chunks = []  # per chunk: target, [(input map, extra) per set of latents]; the frozen stages never change
        for i in range(0, len(self.idx), 16):
            idx = self.idx[i:i + 16]
            images = torch.from_numpy(store.images[idx]).to(rows.rows.device)
            self.chunks.append((rows.target(idx, images), rows.inputs(idx, images)))

    def score(self, stage: Stage) -> dict:
        """Held-out MSE at this resolution (mix: weighted as the rows are), PSNR on teacher latents (and psnr_oenc);
        a feature stage reports its MSE relative to the target's variance (rel_error, rel_error_oenc) instead, an
        encoder's last stage the mean latent cosine per cell (cosine)."""
        se, n, ss, cos = [0.0, 0.0], 0, 0.0, []
        name = self.rows.metric
        with torch.no_grad():
            for target, sets in self.chunks:
                for k, (x_map, extra, carry) in enumerate(sets):
                    pred = stage(x_map, extra if stage.config.extra_channels else None, carry)
                    pred = pred.clamp(-1, 1) if name == "psnr" else pred
                    se[k] += float((pred.double() - target.double()).square().sum())
                    if name == "cosine":
                        cos.append(cosine_rows(grid_to_rows(pred), grid_to_rows(target)))  # per latent cell
                n += target.numel()
                ss += float(target.double().square().sum())  # features are centred: this is their variance
        mse = se[0] / n
        if name == "cosine":
            return {"heldout_mse": mse, "cosine": float(torch.cat(cos).mean())}
        of_mse = psnr_of_mse if name == "psnr" else (lambda m: m / max(ss / n, 1e-12))
        out = {"heldout_mse": mse, name: of_mse(mse)}
        if self.rows.rows.mix:
            w = self.rows.rows.mix_teacher
            out["heldout_mse"] = w * mse + (1 - w) * se[1] / n
            out[f"{name}_oenc"] = of_mse(se[1] / n)
        return out


class StageJob:
    """What runs.run_ticks needs to train stage `index` on the frozen earlier stages; kept: a Stack so far."""

    noun = "stage"

    def __init__(self, cfg: TrainConfig, part_cfg: PartConfig, index: int, frozen: list[Stage], scfg: StageConfig,
                 rows: StageRows, heldout: StageHeldOut, train_idx, run: Path, stage_dir: Path, last: bool,
                 device: torch.device, kept: Stack | None):
        self.cfg, self.part_cfg, self.index, self.frozen, self.scfg = cfg, part_cfg, index, frozen, scfg
        self.rows, self.heldout, self.train_idx = rows, heldout, train_idx
        self.run, self.stage_dir, self.last, self.device = run, stage_dir, last, device
        self.kept = kept  # the kept stack, followed through keep(): what the next stage freezes
        self.fit_kwargs = {"subspace": replace(SUBSPACE, hessian=cfg.hessian, deflate=cfg.deflate),
                           "units_per_round": cfg.units_per_round,
                           "refine": ola.Refine.measured(cfg.refine, cfg.refine_start)}
        if rows.metric == "cosine":
            metrics = [("cosine", "mean latent cosine", False)]
        elif rows.metric == "psnr":
            metrics = [("psnr", "PSNR at this stage's resolution (dB)", False)]
            if rows.rows.mix:
                metrics.append(("psnr_oenc", "PSNR on O-Encoder latents (dB)", False))
        else:
            metrics = [("rel_error", "error / variance of the teacher's features", True)]
            if rows.rows.mix:
                metrics.append(("rel_error_oenc", "same, on O-Encoder latents", True))
        self.plot = [("heldout_mse", "MSE", True), *metrics]

    def draw(self, rng):
        return self.rows.draw(self.train_idx, self.cfg.max_rows, rng)

    def fit_share(self, tick: int) -> float:
        return 1

    def candidate(self, module, tick, interrupted, rng, tick_seconds):
        return Stack([*self.frozen, Stage(self.scfg, module)]), {"stage": self.index + 1}

    def module_of(self, kept: Stack | None):
        return None if kept is None else kept.stages[-1].module

    def score(self, cand: Stack) -> dict:
        return self.heldout.score(cand.stages[-1])

    def keep(self, cand: Stack) -> None:
        self.kept = cand

    def describe(self, scores: dict) -> str:
        if "cosine" in scores:
            metric = f"latent cosine {scores['cosine']:.4f}"
        elif "rel_error" in scores:
            metric = f"stage {self.index + 1} relative error {scores['rel_error']:.4f} on the teacher's features"
            if "rel_error_oenc" in scores:
                metric += f" (teacher latents), {scores['rel_error_oenc']:.4f} (O-Encoder's)"
        else:
            metric = f"stage {self.index + 1} PSNR {scores['psnr']:.2f} dB"
            if "psnr_oenc" in scores:
                metric += f" (teacher latents), {scores['psnr_oenc']:.2f} dB (O-Encoder's)"
        return f"held-out MSE {scores['heldout_mse']:.5g}, {metric}"

    def save(self, kept: Stack, summary: dict) -> Path:
        module = kept.stages[-1].module
        module.training_summary = {**module.training_summary, "run": summary}
        path = module.save(self.stage_dir / WEIGHTS_NAME)
        if self.last:  # the whole part exists: RUN_DIR/model.safetensors loads with OVAE.load(RUN_DIR)
            kept.training_summary = {"run": {**summary, "stage": self.index + 1}}
            save_part(self.run, self.part_cfg, kept)
        return path


def save_part(run: Path, part_cfg: PartConfig, stack: Stack) -> Path:
    """RUN_DIR/model.safetensors: the whole staged part so far (its stack's training_summary set by the caller)."""
    return OVAE(**{part_cfg.kind: Part(part_cfg, stack)}, meta={"training_run": str(run)}).save(run / WEIGHTS_NAME)


def _init_stages(spec: str, kind: str, configs: list[StageConfig], hidden: list[int], device,
                 frozen: int = 0) -> list[Stage | None]:
    """The stages of an --init staged part, checked against this run's: same shapes, hidden units may only grow.
    With `frozen` (--init-frozen) the first `frozen` stages must match exactly (they are not trained again) and a later
    stage that does not match is None: it starts fresh."""
    init = read_parts(spec, device)[kind]
    if init is None or init.config.mode != "staged":
        raise ValueError(f"--init {spec}: that run/file holds no staged {kind}")
    have = list(init.module.stages)
    if len(have) < frozen:
        raise ValueError(f"--init {spec} has {len(have)} stages: too few for --init-frozen {frozen}")
    out, diff = [], []
    if len(have) != len(configs) and not frozen:
        diff.append(f"it has {len(have)} stages, this run {len(configs)}")
    for i, (c, h) in enumerate(zip(configs, hidden)):
        s = have[i] if i < len(have) else None
        why = [] if s is None else _stage_mismatch(i, s, c, h, exact=i < frozen)
        if frozen and i >= frozen:  # a stage after the frozen ones: --init's if it fits, else fresh
            out.append(None if why else s)
        else:
            diff += why
            out.append(s)
    if diff:
        raise ValueError(f"--init {spec} cannot start this run: {'; '.join(diff)}")
    return out


def _stage_mismatch(i: int, s: Stage, c: StageConfig, h: int, exact: bool) -> list[str]:
    """Why --init's stage i cannot start this run's (shape c, h hidden units); [] if it can. Hidden units may grow,
    unless `exact` (a frozen stage is taken as it is)."""
    why = [] if s.config == c else [f"stage {i + 1}: it has {asdict(s.config)}, this run {asdict(c)}"]
    got, want = tuple(s.module.config.hidden), ((h,) if h else ())
    if got != want and (exact or not ola.grown_part_of(got, want)):
        why.append(f"stage {i + 1} hidden: it has {got}, this run asks {want} "
                   + ("(a frozen stage is taken as it is)" if exact else "(it may only grow)"))
    return why


def stage_budget(total: float, shares: np.ndarray, i: int, spent: list[float]) -> float:
    """Stage i's seconds of a run's `total`: its share, or more when the earlier stages (which trained `spent`
    seconds) left time over, as a stage ended early by --stage-patience does; the later stages share that time by
    their shares. Never less than its share: an earlier stage that overran its last tick takes nothing from it."""
    own = total * float(shares[i])
    left_over = (total - sum(spent[:i])) * float(shares[i]) / float(shares[i:].sum())
    return max(own, left_over)


def train_staged(cfg: TrainConfig, log_to=None) -> dict:
    """Run (or resume) a staged decoder or encoder run, stage by stage; returns a summary (also when stopped by
    Ctrl-C)."""
    log_to = (log_to or sys.stdout) if dist.is_main() else open(os.devnull, "w")
    dev = resolve_device(cfg.device)
    store = Store.open(cfg.store)
    part_cfg = replace(part_config(cfg, store), mode="staged")
    configs = stage_configs(cfg, part_cfg)
    hidden = [spec[1] for spec in stage_specs(cfg.stages)]
    features = feature_targets(cfg, store, configs, dev) if cfg.stage_targets == "features" else None
    run = Path(cfg.out)
    record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    # decoder pixels lie in [-1, 1]; an encoder's latents get headroom over the store's (its last stage's out_scale)
    last_scale = 1.0 if cfg.kind == "decoder" else out_scale(cfg, store, np.random.default_rng(cfg.seed))
    record.update(teacher_path=cfg.teacher, teacher=store.meta["teacher"], image_size=part_cfg.image_size,
                  latent_channels=part_cfg.latent_channels, out_scale=last_scale)
    old = open_run(run, record, (*RUN_FIELDS, "teacher", "image_size", "latent_channels"),
                   added=ADDED_FIELDS)
    write_record(run, record, old)
    train_idx = store.indices("train")
    if len(train_idx) == 0:
        raise ValueError(f"store {store.path} has no training samples")
    part_rows = PartRows(store, part_cfg, dev, source_encoder(cfg.latents, store, dev), cfg.mix_teacher)
    init = _init_stages(cfg.init, cfg.kind, configs, hidden, dev, cfg.init_frozen) if cfg.init else None
    if features is not None:  # the basis: read from the run (resume) or --init run, else fitted and saved there
        inputs = store.images if cfg.kind == "encoder" else store.latents
        open_basis(features, run, inputs, train_idx, cfg.seed, dev, cfg.init)
    shares = np.array(cfg.stage_shares or [1.0] * len(configs))
    shares = shares / shares.sum()

    frozen: list[Stage] = []
    results = []
    spent: list[float] = []  # seconds each finished stage trained, over every call
    for i, (scfg, h) in enumerate(zip(configs, hidden)):
        stage_dir = run / f"stage{i + 1}"
        learns = features if features is not None and i < len(configs) - 1 else None  # else the decode / latent
        srec = {"kind": f"{cfg.kind}-stage", "stage": i + 1, "of": len(configs), "stage_config": asdict(scfg),
                "hidden": [h] if h else [], "out_scale": last_scale if learns is None else learns.scale[i],
                "targets": "features" if learns is not None else ("latent" if cfg.kind == "encoder" else "decode")}
        s_old = open_run(stage_dir, srec, ("stage", "of", "stage_config", "hidden"))
        state = {"tick": 0, "time": 0.0, "best": None, "status": "running"}
        kept = None
        if s_old is not None and (stage_dir / WEIGHTS_NAME).is_file():
            module = ola.load(stage_dir, dev)
            state = resume_state(stage_dir, module.training_summary.get("run", {}))
            kept = Stack([*frozen, Stage(scfg, module)])
            if state["status"] in DONE:  # finished earlier: frozen as it is
                how = "taken from --init" if i < cfg.init_frozen else f"done earlier ({state['tick']} ticks"
                print(f"stage {i + 1}: {how}, held-out MSE {state['best']['heldout_mse']:.5g}"
                      + ("" if i < cfg.init_frozen else ")"), file=log_to)
                frozen.append(kept.stages[-1])
                results.append({"stage": i + 1, "status": state["status"], "tick": state["tick"], **state["best"]})
                spent.append(state["time"])
                continue
            print(f"stage {i + 1}: resuming at tick {state['tick']} ({state['time'] / 60:.1f} min trained)",
                  file=log_to)
        elif i < cfg.init_frozen:  # --init's stage as it is: scored once on this run's held-out images, saved
            write_record(stage_dir, srec, s_old)
            scores = StageHeldOut(StageRows(part_rows, frozen, scfg, learns), cfg.eval_images, cfg.seed).score(init[i])
            module = init[i].module
            module.training_summary = {**module.training_summary,
                                       "run": {"run": srec, "tick": 0, "minutes": 0.0, "init": cfg.init, **scores}}
            if dist.is_main():
                module.save(stage_dir / WEIGHTS_NAME)
                atomic_json(stage_dir / "state.json", {"tick": 0, "time": 0.0, "best": scores, "status": "frozen"})
            print(f"stage {i + 1}: taken from --init {cfg.init} and frozen, held-out MSE {scores['heldout_mse']:.5g}",
                  file=log_to)
            frozen.append(init[i])
            results.append({"stage": i + 1, "status": "frozen", "tick": 0, **scores})
            spent.append(0.0)  # its share of --max-minutes goes to the stages trained
            continue
        elif init is not None and init[i] is not None:
            kept = Stack([*frozen, init[i]])
            print(f"stage {i + 1}: starting from --init {cfg.init} ({tuple(init[i].module.config.hidden)} hidden "
                  "units)", file=log_to)
        elif init is not None:
            print(f"stage {i + 1}: fresh (--init {cfg.init} has no stage {i + 1} of this shape)", file=log_to)
        log = read_log(stage_dir, s_old)
        write_record(stage_dir, srec, s_old)
        t_wall = time.perf_counter()
        rows = StageRows(part_rows, frozen, scfg, learns)
        heldout = StageHeldOut(rows, cfg.eval_images, cfg.seed)
        budget = None if cfg.max_minutes is None else stage_budget(60.0 * cfg.max_minutes, shares, i, spent)
        left = None if budget is None else max(0.0, budget - state["time"])
        first = cfg.first_tick_seconds or (max(cfg.tick_seconds, 0.6 * budget) if budget else None)
        loop = SimpleNamespace(**{**asdict(cfg), "hidden": (h,) if h else (), "first_tick_seconds": first,
                                  "max_minutes": None if left is None else left / 60.0, "stage_number": i + 1,
                                  "stage_share": float(shares[i]), "run_minutes": cfg.max_minutes,
                                  "patience": cfg.stage_patience,
                                  "ticks": None if cfg.ticks is None else max(0, cfg.ticks - state["tick"])})
        print(f"stage {i + 1} of {len(configs)}: {scfg.in_channels}x{scfg.window}x{scfg.window}"
              + (f" + latent {scfg.extra_channels}x{scfg.extra_window}x{scfg.extra_window}"
                 if scfg.extra_channels else "")
              + (f" + carried hidden {scfg.carry_channels}x{scfg.carry_window}x{scfg.carry_window}"
                 if scfg.carry_channels else "")
              + (f" in {scfg.down}x{scfg.down} cells" if scfg.down > 1 else "")
              + f" -> {h} tanh -> {scfg.out_channels}x{scfg.up}x{scfg.up} (1/{rows.factor} resolution"
              + (", the teacher's features)" if learns is not None else ")"), file=log_to)
        job = StageJob(cfg, part_cfg, i, frozen, scfg, rows, heldout, train_idx, run, stage_dir,
                       i == len(configs) - 1, dev, kept)
        res = run_ticks(loop, job, stage_dir, srec, state, kept, log, t_wall, log_to)
        results.append({"stage": i + 1, **{k: v for k, v in res.items() if k not in ("run", "parameters")}})
        if res["status"] not in DONE or res["parameters"] is None:  # Ctrl-C, or no module: later stages wait
            if res["parameters"] is None and res["status"] != "interrupted":
                print(f"stage {i + 1}: its share of --max-minutes ended before a first tick; later stages wait "
                      "(give more minutes; the same command resumes)", file=log_to)
            break
        frozen.append(job.kept.stages[-1])
        spent.append(state["time"])
    done = len(frozen) == len(configs)
    status = "done" if done else ("interrupted" if results and results[-1]["status"] == "interrupted" else "stopped")
    if done and not (run / WEIGHTS_NAME).is_file() and dist.is_main():  # every stage frozen from --init
        stack = Stack(frozen)
        last = {k: v for k, v in results[-1].items() if k not in ("status", "tick")}  # its scores on this run's images
        stack.training_summary = {"run": {**last, "init": cfg.init}}
        save_part(run, part_cfg, stack)
    dist.barrier()  # under torchrun the other ranks read the file rank 0 wrote
    shift = None
    if done and cfg.shift_seconds:
        shift = _shift_step(cfg, run, store, part_rows, train_idx, dev, log_to)
        status = "interrupted" if shift is None else status
    params = read_parts(run, "cpu")[cfg.kind].num_parameters() if done else (
        Stack(frozen).num_parameters() if frozen else None)
    out = {"run": str(run), "status": status, "stages": results, "parameters": params}
    if shift is not None:
        out["shift"] = shift
    if done:
        out.update({k: v for k, v in results[-1].items() if k not in ("stage", "status")})
        print(f"done: {run / WEIGHTS_NAME} ({out['parameters']:,} parameters in {len(frozen)} stages"
              + (", and a global shift" if shift and shift.get("kept") else "") + ")", file=log_to)
    return out


def _shift_step(cfg: TrainConfig, run: Path, store: Store, part_rows: PartRows, train_idx: np.ndarray, dev,
                log_to) -> dict | None:
    """Fit the finished decoder's global shift once (train_shift.py), writing RUN_DIR/model.safetensors again with it
    if it is kept; its summary, or None when Ctrl-C stopped it (the same command fits it again)."""
    done = train_shift.shift_state(run)
    if done is not None:
        print(f"global shift: done earlier ({'kept' if done['kept'] else 'not kept'})", file=log_to)
        return done
    part = read_parts(run, dev)[cfg.kind]
    stages = list(part.module.stages)
    held = heldout_indices(store, cfg.eval_images, cfg.seed)
    try:
        shift, summary = train_shift.fit_shift(Stack(stages), part_rows, train_idx, held, cfg.shift_seconds, cfg.seed,
                                               dev, log_to, cfg.progress)
    except KeyboardInterrupt:
        print("global shift: interrupted (the stages are saved; the same command fits the shift again)", file=log_to)
        return None
    if shift is not None and dist.is_main():
        stack = Stack(stages, shift)
        stack.training_summary = part.module.training_summary
        save_part(run, part.config, stack)
    train_shift.record(run, summary)
    dist.barrier()
    return {"status": "done", **summary}

