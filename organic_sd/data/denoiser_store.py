"""The denoiser store: (x_t, t, cond, teacher eps) records in the sharded fp16 store of store.py.

Layout of a store folder (same shards, atomic commits, resume and meta.json as store.py):
    meta.json                 kind "denoiser", teacher, schedule, sampler settings and seeds, prompts, classes, shards
    cond.f16                  (P, *cond_shape) teacher embedding of each prompt (text: (L, D); a class-conditional
                              teacher: its one-hot row); absent when unconditional
    shard-00000.x_t.f16       (n, C, H, W) noisy inputs in teacher units
    shard-00000.t.f16         (n,) integer steps (exact in fp16 up to 2048)
    shard-00000.eps.f16       (n, C, H, W) teacher eps at (x_t, t, cond)
Record keys are `SSSSSSSS/dKKKK` (DDIM step K of sample S) and `SSSSSSSS/rJJJJ` (re-noised copy J
of its final sample); sample S uses prompt S mod P. For a class-conditional teacher meta "classes"
lists its class names and every prompt is one of them (by default all: sample S is of class S mod
P), so each record's class is known (`label`); "classes" is null otherwise. The split group is the
sample, so a trajectory is never split between train and val.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from organic_sd.data.store import DTYPE, Store, StoreError, _Column
from organic_sd.data.store_writer import StoreWriter
from organic_sd.files import atomic_json, fsync_dir

KIND = "denoiser"
ARRAYS = ("x_t", "t", "eps")
HEADER_FIELDS = ("kind", "teacher", "pixel_range", "shapes", "val_fraction", "dtype", "schedule", "sampler", "prompts",
                 "cond_shape", "classes")  # a store written before "classes" reads it as null: no classes
COND = "cond.f16"
MAX_T = 2048  # fp16 holds every integer up to here exactly


def record_key(sample: int, kind: str, j: int) -> str:
    """'00000012/d0003': step 3 of sample 12's DDIM trajectory ('r': re-noised copy)."""
    return f"{sample:08d}/{kind}{j:04d}"


def sample_group(sample: int) -> str:
    """The split group of every record of one sample."""
    return f"{sample:08d}"


class _Cond(_Column):
    """Per-record cond, indexed like the arrays: int -> (L, D), slice/ints -> (B, L, D); (0,) if unconditional."""

    def __init__(self, store: DenoiserStore):
        super().__init__(store, store.meta["cond_shape"] or (0,))

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        table = self._store.cond_table  # (P, L, D) or None
        if table is None:
            return np.zeros((len(rows), *self.sample_shape), np.float32)
        return table[self._store.prompt_index[rows]].astype(np.float32)


class DenoiserStore(Store):
    """Read access to a denoiser store: s.x_t[i], s.t[i], s.eps[i], s.cond[i], s.indices('train'|'val')."""

    ARRAYS = ARRAYS

    def __init__(self, path: str | Path, meta: dict):
        if meta.get("kind") != KIND:
            raise StoreError(f"{path} is a {meta.get('kind') or 'frame'} store, not a denoiser store")
        super().__init__(path, meta)
        self.cond = _Cond(self)
        self._table: np.ndarray | None = None
        self._sample: np.ndarray | None = None

    def __repr__(self) -> str:
        m = self.meta
        return (f"DenoiserStore({str(self.path)!r}, {len(self)} records in {len(m['shards'])} shards, "
                f"teacher={m['teacher']!r}, x_t={tuple(m['shapes']['x_t'])}, prompts={len(self.prompts)})")

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """(T,) float64 alpha-bar of the teacher's schedule, indexed by t."""
        return np.asarray(self.meta["schedule"]["alphas_cumprod"], np.float64)

    @property
    def pixel_range(self) -> tuple[float, float]:
        """(lo, hi) of the teacher's clean images, as its teacher declared it when the store was written."""
        if self.meta.get("pixel_range") is None:
            raise StoreError(f"store {self.path} does not record its teacher's pixel range (it predates the "
                             "field): run `osd precompute denoiser` again into a new --out folder")
        lo, hi = self.meta["pixel_range"]
        return float(lo), float(hi)

    @property
    def prompts(self) -> list[str]:
        """The prompts, in cond table order (empty for an unconditional teacher)."""
        return list(self.meta["prompts"])

    @property
    def cond_table(self) -> np.ndarray | None:
        """(P, L, D) float16 text embedding per prompt, or None for an unconditional teacher."""
        if self.meta["cond_shape"] is None:
            return None
        if self._table is None:
            shape = (len(self.prompts), *self.meta["cond_shape"])
            self._table = np.memmap(self.path / COND, DTYPE, "r", shape=shape)  # never all in RAM
        return self._table

    @property
    def classes(self) -> list[str] | None:
        """The class names of a class-conditional teacher (class k is classes[k]); None for others."""
        c = self.meta.get("classes")
        return None if c is None else list(c)

    @property
    def label(self) -> np.ndarray:
        """(N,) int64 class of each record (an index into `classes`); a StoreError for other teachers' stores."""
        if self.classes is None:
            raise StoreError(f"store {self.path} holds no classes: its teacher {self.meta['teacher']!r} is not "
                             "class-conditional")
        prompt_class = np.array([self.classes.index(p) for p in self.prompts], np.int64)  # (P,)
        return prompt_class[self.prompt_index]

    @property
    def sample(self) -> np.ndarray:
        """(N,) int64 sample number of each record (parsed from the keys once)."""
        if self._sample is None:
            self._sample = np.array([int(k[:8]) for k in self.keys], np.int64)
        return self._sample

    @property
    def prompt_index(self) -> np.ndarray:
        """(N,) int64 row of cond_table used by each record."""
        return self.sample % max(1, len(self.prompts))

    @property
    def renoised(self) -> np.ndarray:
        """(N,) bool: True for re-noised copies of final samples, False for trajectory steps."""
        return np.array([k[9] == "r" for k in self.keys], bool)

    def verify(self) -> None:
        """Check shard files and the cond table against meta; raise StoreError listing what is wrong."""
        super().verify()
        if self.meta["cond_shape"] is not None:
            f = self.path / COND
            if not f.is_file() or _sha256(f.read_bytes()) != self.meta.get("cond_sha256"):
                raise StoreError(f"store {self.path} failed verification: {COND} missing or sha256 mismatch")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DenoiserStoreWriter(StoreWriter):
    """Appends (x_t, t, eps) records to a denoiser store, writing the (P, L, D) cond table once at creation."""

    ARRAYS = ARRAYS
    HEADER_FIELDS = HEADER_FIELDS

    def __init__(self, path: str | Path, header: dict, cond_table=None, shard_size: int = 4096):
        """`cond_table`: (P, L, D) array, or a function making it (called only when the store is new)."""
        if len(header["schedule"]["alphas_cumprod"]) > MAX_T + 1:
            raise ValueError(f"teacher schedules of more than {MAX_T + 1} steps do not fit the fp16 t array")
        super().__init__(path, dict(header, kind=KIND), shard_size)
        try:
            self._write_cond(cond_table)
        except BaseException:
            self.release()
            raise

    def _write_cond(self, table) -> None:
        shape = self.meta["cond_shape"]
        if shape is None:
            return
        f = self.path / COND
        if "cond_sha256" in self.meta:
            if not f.is_file():
                raise StoreError(f"store {self.path} lists {COND} in meta.json but the file is missing")
            return  # resume: the stored table is the one the shards were computed with
        want = (len(self.meta["prompts"]), *shape)
        if callable(table):
            table = table()
        if table is None or tuple(table.shape) != want:
            got = None if table is None else tuple(table.shape)
            raise ValueError(f"cond_table must have shape {want}, got {got}")
        data = np.ascontiguousarray(table, DTYPE).tobytes()
        tmp = f.with_name(COND + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, f)
        fsync_dir(self.path)
        meta = dict(self.meta, cond_sha256=_sha256(data))
        atomic_json(self.path / "meta.json", meta)  # from here on the table is part of the store
        self.meta = meta
