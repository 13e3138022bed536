"""Reading the precompute store: (frame, teacher latent, teacher decode) triples in fp16 shards.

Layout of a store folder:
    meta.json                    teacher, size, preprocessing, shapes, split, shards
    shard-00000.images.f16       raw little-endian fp16, (n, 3, H, W)
    shard-00000.latents.f16      (n, C, h, w)
    shard-00000.decodes.f16      (n, 3, H, W)
    ...
A shard is committed by writing its files under a `.tmp` name, fsyncing, renaming, and
then atomically replacing meta.json, which lists only committed shards (with sha256 of
every file and the key of every sample). A crash at any point leaves the last committed
state readable, and a resumed precompute skips the keys already listed.

Reading maps the shard files per access (as nanoGPT reopens its memmap per batch), so a
store of tens of GB is never loaded into RAM. Writing is store_writer.py's job.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from organic_sd.files import file_sha256

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock, the rest still works
    fcntl = None

FORMAT = "organic_sd.store"
VERSION = 1
ARRAYS = ("images", "latents", "decodes")
DTYPE = np.dtype("<f2")
META = "meta.json"
# a rank of a multi-process precompute lists its committed shards in its own part file, so
# that ranks never write the same file; rank 0 merges the parts into META (also on resume)
PARTS = "meta.r*.json"
# fields that must match to append to an existing store (the rest is bookkeeping)
HEADER_FIELDS = ("teacher", "size", "preprocess", "shapes", "val_fraction", "dtype")


class StoreError(ValueError):
    """A store that cannot be opened, appended to or verified as asked."""


def check_val_fraction(val_fraction: float) -> None:
    """The held-out share a store is written with: in [0, 1), fixed at write time."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def lock_store(path: Path, create: bool = True):
    """The store's write lock (an open file; closing it releases the lock); StoreError if another process holds it."""
    if create:
        path.mkdir(parents=True, exist_ok=True)
    elif not (path / META).is_file():
        raise StoreError(f"{path} holds no store ({META} missing)")
    f = open(path / ".lock", "w")
    if fcntl is not None:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise StoreError(f"store {path} is being written by another process") from None
    return f


def split_is_val(group: str, val_fraction: float) -> bool:
    """Deterministic split: sha256(group) read as a number in [0, 1) below val_fraction."""
    h = int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return h < val_fraction


def _read_meta(path: Path) -> dict:
    mp = path / META
    if not mp.is_file():
        raise FileNotFoundError(f"no store at {path} ({META} missing)")
    try:
        meta = json.loads(mp.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{mp} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise StoreError(f"{mp} is not an organic_sd store (format={meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise StoreError(f"{mp} has store version {meta.get('version')}, this code reads version {VERSION}")
    return meta


class _Column(ABC):
    """One per-sample array of a store, indexed like a numpy array of shape (len(store), *sample_shape)."""

    def __init__(self, store: Store, sample_shape):
        self._store, self.sample_shape = store, tuple(sample_shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._store), *self.sample_shape)

    def __len__(self) -> int:
        return len(self._store)

    def __getitem__(self, idx) -> np.ndarray:
        """int -> (*sample_shape,) float32; slice or int array -> (B, *sample_shape) float32."""
        n = len(self._store)
        if isinstance(idx, (int, np.integer)):
            if not -n <= idx < n:
                raise IndexError(f"index {idx} out of range for a store of {n} samples")
            return self._gather(np.array([idx % n]))[0]
        if isinstance(idx, slice):
            rows = np.arange(n)[idx]
        else:
            rows = np.asarray(idx)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            if rows.ndim != 1 or not np.issubdtype(rows.dtype, np.integer):
                raise IndexError(f"index with an int, a slice or a 1-D int array, got {rows.dtype} {rows.shape}")
            if rows.size and (rows.min() < -n or rows.max() >= n):
                raise IndexError(f"indices out of range for a store of {n} samples")
            rows = rows % max(n, 1)
        return self._gather(rows)

    @abstractmethod
    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """(B,) sample indices in 0..n-1 -> (B, *sample_shape) float32; each kind of column reads its own way."""


class _Array(_Column):
    """One array of the store's shard files."""

    def __init__(self, store: Store, name: str):
        super().__init__(store, store.meta["shapes"][name])
        self.name = name

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        s = self._store
        out = np.empty((len(rows), *self.sample_shape), np.float32)
        shard = np.searchsorted(s._offsets, rows, side="right") - 1  # (B,) shard of each row
        for k in np.unique(shard):
            sel = np.flatnonzero(shard == k)
            local = rows[sel] - s._offsets[k]
            order = np.argsort(local, kind="stable")  # ascending reads: sequential when possible
            mm = np.memmap(s._file(k, self.name), DTYPE, "r", shape=(s._counts[k], *self.sample_shape))
            out[sel[order]] = mm[local[order]]
            del mm  # unmap now: resident pages are not kept around between batches
        return out



class Store:
    """Read access to a store folder; see the module docstring for the layout."""

    ARRAYS = ARRAYS

    def __init__(self, path: str | Path, meta: dict):
        self.path, self.meta = Path(path), meta
        self._counts = np.array([sh["count"] for sh in meta["shards"]], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)  # (S+1,)
        missing = [a for a in self.ARRAYS if a not in meta["shapes"]]
        if missing:
            raise StoreError(f"{self.path} is a {meta.get('kind') or 'frame'} store without arrays {missing}; "
                             f"open it with its own reader (e.g. DenoiserStore)")
        for a in self.ARRAYS:  # images, latents, decodes (a subclass may store other arrays)
            setattr(self, a, _Array(self, a))

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open a store folder for reading (only meta.json is read now)."""
        path = Path(path)
        return cls(path, _read_meta(path))

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        m = self.meta
        return (f"Store({str(self.path)!r}, {len(self)} samples in {len(m['shards'])} shards, "
                f"teacher={m['teacher']!r}, size={m['size']}, latents={tuple(m['shapes']['latents'])})")

    def _file(self, k: int, name: str) -> Path:
        return self.path / f"{self.meta['shards'][k]['name']}.{name}.f16"

    @property
    def keys(self) -> list[str]:
        """The key (source tag + frame number) of every sample, in store order."""
        return [key for sh in self.meta["shards"] for key in sh["keys"]]

    def indices(self, split: str) -> np.ndarray:
        """Sample indices of split "train", "val" or "all", as an int64 array."""
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        val = np.zeros(len(self), bool)
        for k, sh in enumerate(self.meta["shards"]):
            val[self._offsets[k] + np.asarray(sh["val"], np.int64)] = True
        if split == "all":
            return np.arange(len(self), dtype=np.int64)
        return np.flatnonzero(val if split == "val" else ~val).astype(np.int64)

    def verify(self) -> None:
        """Check every shard file's size and sha256 against meta; raise StoreError listing all bad files."""
        bad = []
        for k, sh in enumerate(self.meta["shards"]):
            for name in self.ARRAYS:
                f = self._file(k, name)
                want = sh["count"] * int(np.prod(self.meta["shapes"][name])) * DTYPE.itemsize
                if not f.is_file():
                    bad.append(f"{f.name}: missing")
                elif f.stat().st_size != want:
                    bad.append(f"{f.name}: {f.stat().st_size} bytes, expected {want}")
                elif file_sha256(f) != sh["sha256"][name]:
                    bad.append(f"{f.name}: sha256 mismatch")
        if bad:
            raise StoreError(f"store {self.path} failed verification: " + "; ".join(bad))


