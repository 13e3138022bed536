"""Denoiser precompute: run a teacher's DDIM sampler from seeded noise and store what it saw.

For each sample S (noise seeded by (seed, S), drawn on the CPU, so a seed gives the same
records on every device): the K DDIM steps of its trajectory, (x_t, t, teacher eps), then R
re-noised copies of its final sample at uniform random t in 1..T-1,
x_t = sqrt(ab) x_0 + sqrt(1 - ab) noise, with the teacher's eps there (not the noise: the clone
learns the teacher). A class-conditional teacher (one with `classes`, e.g. the MNIST DiT) takes
its class names as prompts, by default all of them: sample S is of class S mod P, so the store
is balanced over the classes, and the store records the classes (DenoiserStore.label).
Re-running resumes at the first unfinished sample; the first Ctrl-C stops after the current
batch and commits, a second aborts losing only the open shard.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from organic_sd.data.denoiser_store import (
    DenoiserStore,
    DenoiserStoreWriter,
    record_key,
    sample_group,
)
from organic_sd.data.interrupt import catch_sigint
from organic_sd.data.store_writer import check_val_fraction

NOISE = "torch.randn on the CPU, torch.Generator seeded with SeedSequence([seed, sample]).generate_state(1)[0]: " \
        "noise (C, H, W), then renoise t (R,) by randint(1, T), then renoise noise (R, C, H, W)"


@dataclass
class DenoiserPrecomputeReport:
    """What one denoiser precompute call did."""

    store: Path
    samples_written: int = 0
    samples_already: int = 0  # found complete in the store (resume)
    records_written: int = 0
    total: int = 0  # records in the store afterwards
    interrupted: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        """A few human-readable lines."""
        rate = self.samples_written / self.seconds if self.seconds > 0 else 0.0
        s = (f"{'interrupted: ' if self.interrupted else ''}wrote {self.samples_written} samples "
             f"({self.records_written} records, {rate:.2f} samples/s), {self.samples_already} already stored; "
             f"{self.store} now holds {self.total} records")
        return s + ("\nre-run the same command to resume" if self.interrupted else "")


def sample_seed(seed: int, sample: int) -> int:
    """A 32-bit seed per (run seed, sample): independent streams, the same for every batch size."""
    return int(np.random.SeedSequence([seed, sample]).generate_state(1)[0])


def draw_noise(shape: Sequence[int], num_steps: int, renoise: int, seed: int, sample: int):
    """-> noise (C, H, W), renoise t (R,) int64 in 1..num_steps-1, renoise noise (R, C, H, W); float32 CPU."""
    import torch

    g = torch.Generator().manual_seed(sample_seed(seed, sample))
    noise = torch.randn(tuple(shape), generator=g)
    t_r = torch.randint(1, num_steps, (renoise,), generator=g)
    n_r = torch.randn((renoise, *shape), generator=g)
    return noise, t_r, n_r


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line of a UTF-8 text file; blank lines are skipped."""
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    prompts = [ln for ln in lines if ln]
    if not prompts:
        raise ValueError(f"prompts file {str(path)!r} holds no prompts (one per line)")
    return prompts


def _header(teacher, steps: int, renoise: int, seed: int, val_fraction: float, prompts: list[str],
            classes: list[str] | None) -> dict:
    from organic_sd.teachers.ddim import ddim_timesteps

    ab = np.asarray(teacher.alphas_cumprod, np.float64)  # (T,)
    shape = [int(s) for s in teacher.sample_shape]
    cond_shape = None if teacher.cond_shape is None else [int(s) for s in teacher.cond_shape]
    return {
        "teacher": teacher.id,
        "pixel_range": [float(v) for v in teacher.pixel_range],
        "shapes": {"x_t": shape, "t": [], "eps": shape},
        "val_fraction": val_fraction,
        "dtype": "float16",
        "schedule": {"num_steps": len(ab), "alphas_cumprod": ab.tolist()},
        "sampler": {"name": "ddim", "eta": 0.0, "steps": steps, "timesteps": ddim_timesteps(len(ab), steps),
                    "renoise": renoise, "renoise_t": [1, len(ab) - 1], "seed": seed, "noise": NOISE},
        "prompts": prompts,
        "cond_shape": cond_shape,
        "classes": classes,
    }


def _run_batch(teacher, chunk: list[int], steps: int, renoise: int, seed: int, table):
    """Samples `chunk` -> x_t (B, K+R, C, H, W), t (B, K+R), eps (B, K+R, C, H, W) float32 numpy."""
    import torch

    from organic_sd.teachers.ddim import ddim_sample

    ab = teacher.alphas_cumprod  # (T,) float64 CPU
    drawn = [draw_noise(teacher.sample_shape, len(ab), renoise, seed, i) for i in chunk]
    noise = torch.stack([d[0] for d in drawn])  # (B, C, H, W)
    cond = None
    if table is not None:
        rows = np.array(chunk) % len(table)
        cond = torch.from_numpy(np.asarray(table[rows], np.float32)).to(teacher.device)  # (B, L, D)
    xs, ts, es = [], [], []

    def on_step(k, t, x, e):
        xs.append(x.float().cpu())
        ts.append(torch.full((len(chunk),), t, dtype=torch.float32))
        es.append(e.float().cpu())

    x0 = ddim_sample(teacher, noise, steps, cond, on_step).float().cpu()  # (B, C, H, W)
    for j in range(renoise):
        t_j = torch.stack([d[1][j] for d in drawn])  # (B,)
        n_j = torch.stack([d[2][j] for d in drawn])  # (B, C, H, W)
        a = ab[t_j].float()[:, None, None, None]  # (B, 1, 1, 1)
        x_j = a.sqrt() * x0 + (1 - a).sqrt() * n_j
        xs.append(x_j)
        ts.append(t_j.float())
        es.append(teacher.eps(x_j.to(teacher.device), t_j, cond).float().cpu())
    # (K+R) lists of (B, ...) -> (B, K+R, ...): records of one sample stay together
    return (torch.stack(xs, 1).numpy(), torch.stack(ts, 1).numpy(), torch.stack(es, 1).numpy())


def write_samples(writer, todo: list[int], keys_of: dict, run_batch, batch: int, rep: DenoiserPrecomputeReport,
                  progress: bool, who: str) -> None:
    """Run `run_batch(chunk) -> (x_t, t, eps)`, each (B, K, ...), over `todo` in chunks of `batch` samples and append
    the records `keys_of[sample]` not yet in `writer`'s store; the first Ctrl-C commits after the current batch."""
    stop, restore_sigint = catch_sigint()
    bar = tqdm(total=rep.samples_already + len(todo), initial=rep.samples_already, unit="sample",
               disable=not progress, dynamic_ncols=True)
    try:
        for b0 in range(0, len(todo), batch):
            if stop["requested"]:
                rep.interrupted = True
                break
            chunk = todo[b0:b0 + batch]
            x, t, e = run_batch(chunk)
            if not (np.isfinite(x.astype(np.float16)).all() and np.isfinite(e.astype(np.float16)).all()):
                raise RuntimeError(f"{who} produced NaN/inf (or values beyond fp16) for sample {chunk[0]}...")
            # a sample cut by a crash mid-shard has some records committed: add only the missing ones
            keep = np.array([[k not in writer.done for k in keys_of[i]] for i in chunk])  # (B, K)
            keys = [k for i in chunk for k in keys_of[i] if k not in writer.done]
            groups = [sample_group(i) for i in chunk for k in keys_of[i] if k not in writer.done]
            writer.add_arrays(keys, groups, {"x_t": x[keep], "t": t[keep], "eps": e[keep]})
            rep.samples_written += len(chunk)
            rep.records_written += len(keys)
            bar.set_postfix(records=writer.count, refresh=False)
            bar.update(len(chunk))
        writer.close()  # commits the partial shard
    except BaseException as exc:
        writer.fail(exc)
        raise
    finally:
        bar.close()
        restore_sigint()


def precompute_denoiser(
    teacher,
    out: str | Path,
    samples: int = 256,
    *,
    steps: int = 50,
    renoise: int = 4,
    prompts: Sequence[str] | None = None,
    batch: int = 16,
    seed: int = 0,
    val_fraction: float = 0.05,
    shard_size: int = 4096,
    progress: bool = True,
) -> DenoiserPrecomputeReport:
    """Record `samples` DDIM trajectories of `teacher` (any Denoiser) plus re-noised copies into `out` (resumable)."""
    if samples < 1 or batch < 1 or renoise < 0:
        raise ValueError(f"samples and batch must be >= 1 and renoise >= 0, got samples={samples}, batch={batch}, "
                         f"renoise={renoise}")
    check_val_fraction(val_fraction)
    prompts = [str(p) for p in (prompts or [])]
    classes = getattr(teacher, "classes", None)
    classes = None if classes is None else [str(c) for c in classes]
    if teacher.cond_shape is None and prompts:
        raise ValueError(f"teacher {teacher.id} is unconditional: it takes no prompts (got {len(prompts)})")
    if classes is not None:
        bad = [p for p in prompts if p not in classes]
        if bad:
            raise ValueError(f"teacher {teacher.id} is class-conditional: prompts must be class names {classes}, "
                             f"got {bad[:5]}")
        prompts = prompts or classes  # every class in turn: a store balanced over the classes
    elif teacher.cond_shape is not None and not prompts:
        prompts = [""]  # a conditional teacher sampled unconditionally: the empty prompt, as in CFG
    header = _header(teacher, steps, renoise, seed, val_fraction, prompts, classes)  # checks steps

    def make_table() -> np.ndarray:
        # (P, L, D), in chunks: a text encoder over thousands of prompts at once would not fit
        parts = [teacher.encode_text(prompts[i:i + 64]).float().cpu().numpy() for i in range(0, len(prompts), 64)]
        return np.concatenate(parts)

    out = Path(out)
    writer = DenoiserStoreWriter(out, header, make_table if prompts else None, shard_size)
    writer.meta["teacher_info"] = {
        "repr": repr(teacher), "data_range": list(getattr(teacher, "data_range", None) or []) or None,
        "prediction_type": getattr(teacher, "prediction_type", None), "vae": getattr(teacher, "vae_spec", None),
    }  # bookkeeping only, written with the next shard
    table = DenoiserStore(out, writer.meta).cond_table if prompts else None  # the stored fp16 values, also on resume
    K = steps
    kinds = [("d", k) for k in range(K)] + [("r", j) for j in range(renoise)]
    keys_of = {i: [record_key(i, a, j) for a, j in kinds] for i in range(samples)}
    todo = [i for i in range(samples) if not all(k in writer.done for k in keys_of[i])]
    rep = DenoiserPrecomputeReport(store=out, samples_already=samples - len(todo))
    t0 = time.perf_counter()
    write_samples(writer, todo, keys_of, lambda chunk: _run_batch(teacher, chunk, steps, renoise, seed, table),
                  batch, rep, progress, f"teacher {teacher.id}")
    rep.seconds = time.perf_counter() - t0
    rep.total = writer.meta["count"]
    return rep

