"""States a clone visits on its own, labelled by the teacher, appended to a denoiser store.

A clone fitted on the teacher's trajectories only meets, when it samples alone, states the teacher never
visits: the small errors of its early steps put its late steps off their training distribution. Measured on
the MNIST O-UNet (docs/BENCHMARKS.md, "the clone's own states"): its first six of eight steps then the
teacher's last two draw digits, while its own last two from that same state draw tangles; from the teacher's
state its last two are fine. These records are every step of the clone's own DDIM path with the teacher's eps
at that state (the clone's eps only moves the path), so a refit learns to recover from its own errors (the
data aggregation of imitation learning).

Keys are `SSSSSSSS/sKKKK` (step K of the clone's path from sample S's noise) with S >= FIRST_SAMPLE, so
they never meet the teacher's own samples and split with their sample like every record. Resumable and
interruptible like `osd precompute denoiser`; meta.json lists each clone that drove records.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from organic_sd.data.denoiser_precompute import DenoiserPrecomputeReport, draw_noise, write_samples
from organic_sd.data.denoiser_store import HEADER_FIELDS, DenoiserStore, DenoiserStoreWriter, record_key
from organic_sd.data.store import StoreError
from organic_sd.teachers.ddim import ddim_sample

FIRST_SAMPLE = 10_000_000  # clone-driven sample numbers start here; the teacher's stay below
KIND = "s"


def _check_pair(store: DenoiserStore, teacher, student) -> None:
    """Clear errors before any sampling: the store, the teacher and the clone must belong together."""
    if store.meta.get("teacher") != teacher.id:
        raise StoreError(f"store {store.path} was written by teacher {store.meta.get('teacher')!r}, not {teacher.id!r}")
    ab_store = torch.as_tensor(np.asarray(store.alphas_cumprod, np.float64))
    for name, ab in (("teacher", teacher.alphas_cumprod), ("clone", student.alphas_cumprod)):
        ab = torch.as_tensor(ab, dtype=torch.float64).cpu()
        if ab.shape != ab_store.shape or not torch.allclose(ab, ab_store, atol=1e-6):
            raise ValueError(f"the {name}'s noise schedule differs from the one store {store.path} was written with")
    shape = tuple(store.meta["shapes"]["x_t"])
    if tuple(student.sample_shape) != shape:
        raise ValueError(f"the clone draws samples of shape {tuple(student.sample_shape)}, the store holds {shape}")
    if (store.meta["cond_shape"] is None) != (getattr(student, "cond_shape", None) is None):
        raise ValueError("the clone and the store disagree on conditioning: one takes cond, the other not")


def add_student_states(teacher, student, store_path: str | Path, samples: int, *, steps: int = 8, batch: int = 64,
                       seed: int = 0, student_id: str = "", progress: bool = True) -> DenoiserPrecomputeReport:
    """Append the `steps`-step DDIM paths of `student` from `samples` seeded noises, each state labelled by
    `teacher`'s eps, to the denoiser store at `store_path` (made by that teacher; resumable). `student_id`
    names the clone in the store's meta.json."""
    if samples < 1 or batch < 1:
        raise ValueError(f"samples and batch must be >= 1, got samples={samples}, batch={batch}")
    store_path = Path(store_path)
    if not (store_path / "meta.json").is_file():
        raise FileNotFoundError(f"no denoiser store at {store_path}: run `osd precompute denoiser` first")
    store = DenoiserStore.open(store_path)
    _check_pair(store, teacher, student)
    writer = DenoiserStoreWriter(store_path, {k: store.meta.get(k) for k in HEADER_FIELDS})
    table = store.cond_table  # (P, *cond_shape) fp16 values the teacher's records were made with, or None
    entry = {"clone": student_id, "samples": samples, "steps": steps, "seed": seed, "first_sample": FIRST_SAMPLE}
    same = ("clone", "steps", "seed")  # a resumed or extended run is listed once, with its latest count
    runs = [r for r in writer.meta.get("student_states", []) if any(r.get(k) != entry[k] for k in same)]
    writer.meta["student_states"] = runs + [entry]  # bookkeeping, written with the next shard
    ids = [FIRST_SAMPLE + i for i in range(samples)]
    keys_of = {s: [record_key(s, KIND, k) for k in range(steps)] for s in ids}
    todo = [s for s in ids if not all(k in writer.done for k in keys_of[s])]
    rep = DenoiserPrecomputeReport(store=store_path, samples_already=samples - len(todo))
    T = len(store.alphas_cumprod)

    def run_batch(chunk: list[int]):
        noise = torch.stack([draw_noise(student.sample_shape, T, 0, seed, s)[0] for s in chunk])  # (B, C, H, W)
        cond = None
        if table is not None:
            cond = torch.from_numpy(np.asarray(table[np.array(chunk) % len(table)], np.float32))  # (B, *cond_shape)
        xs, ts, es = [], [], []

        def on_step(k, t, x, _student_eps):
            tt = torch.full((len(chunk),), t, dtype=torch.int64)
            xs.append(x.float().cpu())
            ts.append(tt.float())
            es.append(teacher.eps(x.to(teacher.device), tt, None if cond is None else cond.to(teacher.device))
                      .float().cpu())

        with torch.inference_mode():
            ddim_sample(student, noise, steps, None if cond is None else cond.to(student.device), on_step)
        return torch.stack(xs, 1).numpy(), torch.stack(ts, 1).numpy(), torch.stack(es, 1).numpy()  # (B, K, ...)

    t0 = time.perf_counter()
    write_samples(writer, todo, keys_of, run_batch, batch, rep, progress, f"teacher {teacher.id}")
    rep.seconds = time.perf_counter() - t0
    rep.total = writer.meta["count"]
    return rep
