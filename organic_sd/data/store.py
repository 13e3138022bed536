"""The precompute store: (frame, teacher latent, teacher decode) triples in fp16 shards.

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
store of tens of GB is never loaded into RAM.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from organic_sd.files import atomic_json, fsync_dir

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


class DiskFullError(RuntimeError):
    """The disk filled up while writing a shard (committed shards are intact)."""


def split_is_val(group: str, val_fraction: float) -> bool:
    """Deterministic split: sha256(group) read as a number in [0, 1) below val_fraction."""
    h = int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big") / 2.0**64
    return h < val_fraction


def _write_bytes(f, data: bytes) -> None:
    # one place for all shard writes, so that a full disk can be simulated in tests
    f.write(data)


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


class _Array:
    """One array of a store, indexed like a numpy array of shape (len(store), *sample_shape)."""

    def __init__(self, store: Store, name: str):
        self._store, self.name = store, name
        self.sample_shape = tuple(store.meta["shapes"][name])

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
                elif _sha256_file(f) != sh["sha256"][name]:
                    bad.append(f"{f.name}: sha256 mismatch")
        if bad:
            raise StoreError(f"store {self.path} failed verification: " + "; ".join(bad))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _part_file(rank: int) -> str:
    return f"meta.r{rank:03d}.json"


class StoreWriter:
    """Appends samples to a store (created if absent), committing one shard at a time."""

    ARRAYS = ARRAYS  # a subclass may store other arrays under other header fields
    HEADER_FIELDS = HEADER_FIELDS

    def __init__(self, path: str | Path, header: dict, shard_size: int = 1024, rank: int | None = None):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        # with `rank` set this is one of several processes: its shards are named after the rank and
        # listed in the rank's part file; rank 0 opens first (lock, create, clean up), later `merge`s
        self.path, self.shard_size, self.rank = Path(path), shard_size, rank
        header = {k: header[k] for k in self.HEADER_FIELDS}
        if rank not in (None, 0):
            self._open_as_rank(header)
            return
        self._lock()
        if (self.path / META).exists():
            try:
                self.meta = _read_meta(self.path)
            except Exception:
                self.release()
                raise
            diff = [f"{k}: store has {self.meta.get(k)!r}, asked {header[k]!r}"
                    for k in self.HEADER_FIELDS if _norm(self.meta.get(k)) != _norm(header[k])]
            if diff:
                self.release()
                raise StoreError(f"cannot append to store {self.path}, it was written with other settings: "
                                 + "; ".join(diff) + ". Use another --out folder.")
        else:
            if self.path.exists() and any(self.path.iterdir()) and not self._only_lock():
                self.release()
                raise StoreError(f"{self.path} exists, is not empty and holds no {META}; "
                                 "refusing to write a store there")
            now = _now()
            self.meta = {"format": FORMAT, "version": VERSION, **header, "count": 0,
                         "counts": {"train": 0, "val": 0}, "sources": [], "created": now, "updated": now,
                         "shards": []}
            atomic_json(self.path / META, self.meta)
        for stray in self.path.glob("*.tmp"):  # left by a crash mid-shard; never listed in meta
            stray.unlink()
        try:
            self._merge_leftover_parts()
        except Exception:
            self.release()
            raise
        self._start()

    def _start(self) -> None:
        self.done = {key for sh in self.meta["shards"] for key in sh["keys"]}
        self._files = None  # name -> open tmp file of the shard being written
        self._hash: dict = {}
        self._keys: list[str] = []
        self._val: list[int] = []
        self.parts: list[dict] = []  # shards a rank committed to its part file (meta.json not yet listing them)

    def _open_as_rank(self, header: dict) -> None:
        # rank 0 holds the lock and has created or cleaned the store already
        self._lockf = None
        self.meta = _read_meta(self.path)
        diff = [k for k in self.HEADER_FIELDS if _norm(self.meta.get(k)) != _norm(header[k])]
        if diff:
            raise StoreError(f"rank {self.rank}: store {self.path} differs from rank 0's settings in {diff}")
        self._start()

    def _merge_leftover_parts(self) -> None:
        # part files outlive meta.json only when a multi-process run was killed before rank 0 merged them
        parts = sorted(self.path.glob(PARTS))
        shards = []
        for f in parts:
            try:
                shards += json.loads(f.read_text())["shards"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError) as e:
                raise StoreError(f"{f} is not a valid part file ({e}); its shards cannot be listed") from None
        self._list(shards)
        for f in parts:
            f.unlink()

    def _list(self, shards: list[dict]) -> list[dict]:
        # idempotent: a crash between writing meta.json and deleting the part files lists nothing twice
        listed = {sh["name"] for sh in self.meta["shards"]}
        new = [sh for sh in shards if sh["name"] not in listed]
        if new:
            meta = _with_shards(self.meta, new)
            atomic_json(self.path / META, meta)
            self.meta = meta
        return new

    def merge(self, shards: list[dict]) -> None:
        """Rank 0: list every rank's committed shards (their `parts`) in meta.json at once, then drop the part files."""
        for sh in self._list(shards):
            self.done.update(sh["keys"])
        self.parts = []
        for f in self.path.glob(PARTS):
            f.unlink()

    def _lock(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._lockf = open(self.path / ".lock", "w")
        if fcntl is not None:
            try:
                fcntl.flock(self._lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lockf.close()
                raise StoreError(f"store {self.path} is being written by another process") from None

    def release(self) -> None:
        """Release the store's write lock without committing (close() commits, then releases)."""
        if self._lockf is not None:
            self._lockf.close()  # closing releases the flock

    def _only_lock(self) -> bool:
        return [p.name for p in self.path.iterdir()] == [".lock"]

    @property
    def count(self) -> int:
        """Committed samples plus those in the open shard."""
        return self.meta["count"] + sum(sh["count"] for sh in self.parts) + len(self._keys)

    def note_sources(self, specs: list[str]) -> None:
        """Record source specs in meta (written with the next shard)."""
        for s in specs:
            if s not in self.meta["sources"]:
                self.meta["sources"].append(s)

    def _name(self) -> str:
        k = len(self.meta["shards"])
        if self.rank is None:
            return f"shard-{k:05d}"
        # every rank read the same meta.json: names differ by rank, and from earlier runs' by k
        return f"shard-{k:05d}-r{self.rank:03d}-{len(self.parts):05d}"

    def _tmp(self, name: str) -> Path:
        return self.path / f"{self._name()}.{name}.f16.tmp"

    def add(self, keys: list[str], groups: list[str], images: np.ndarray, latents: np.ndarray,
            decodes: np.ndarray) -> None:
        """Append B samples: images/decodes (B, 3, H, W), latents (B, C, h, w); commits full shards."""
        self.add_arrays(keys, groups, {"images": images, "latents": latents, "decodes": decodes})

    def add_arrays(self, keys: list[str], groups: list[str], arrays: dict[str, np.ndarray]) -> None:
        """Append B samples given as {name: (B, *shape)} for every name in ARRAYS; commits full shards."""
        if sorted(arrays) != sorted(self.ARRAYS):
            raise ValueError(f"arrays must be exactly {list(self.ARRAYS)}, got {sorted(arrays)}")
        B = len(keys)
        for name, a in arrays.items():
            want = (B, *self.meta["shapes"][name])
            if tuple(a.shape) != want:
                raise ValueError(f"{name} must have shape {want}, got {tuple(a.shape)}")
        i = 0
        while i < B:
            if self._files is None:
                self._files = {n: open(self._tmp(n), "wb") for n in self.ARRAYS}
                self._hash = {n: hashlib.sha256() for n in self.ARRAYS}
            j = min(B, i + self.shard_size - len(self._keys))
            for name, a in arrays.items():
                data = np.ascontiguousarray(a[i:j], DTYPE).tobytes()
                try:
                    _write_bytes(self._files[name], data)
                except OSError as e:
                    self.abort()
                    raise self._write_error(e) from e
                self._hash[name].update(data)
            for k in range(i, j):
                if split_is_val(groups[k], self.meta["val_fraction"]):
                    self._val.append(len(self._keys))
                self._keys.append(keys[k])
            i = j
            if len(self._keys) == self.shard_size:
                self.commit()

    def _write_error(self, e: OSError) -> Exception:
        kept = (f"the {self.meta['count']} samples in {len(self.meta['shards'])} committed shards "
                f"of {self.path} are intact")
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFullError(f"disk full while writing a shard ({e}); {kept}; free space and re-run to resume")
        return RuntimeError(f"writing a shard failed ({e}); {kept}")

    def commit(self) -> None:
        """Make the open shard durable and list it in meta (no-op when it is empty)."""
        if self._files is None:
            return
        if not self._keys:
            self.abort()
            return
        name = self._name()
        try:
            for f in self._files.values():
                f.flush()
                os.fsync(f.fileno())
                f.close()
            for n in self.ARRAYS:
                os.replace(self._tmp(n), self.path / f"{name}.{n}.f16")
            fsync_dir(self.path)
            shard = {"name": name, "count": len(self._keys),
                     "sha256": {n: h.hexdigest() for n, h in self._hash.items()}, "keys": self._keys, "val": self._val}
            if self.rank is None:
                meta = _with_shards(self.meta, [shard])
                atomic_json(self.path / META, meta)  # the commit point
            else:
                meta = self.meta
                atomic_json(self.path / _part_file(self.rank), {"shards": [*self.parts, shard]})
                self.parts.append(shard)
        except OSError as e:
            # meta.json still lists the previous shards; renamed files of this one are unlisted orphans
            self.abort()
            raise self._write_error(e) from e
        self.meta = meta
        self.done.update(self._keys)
        self._files, self._keys, self._val = None, [], []

    def fail(self, exc: BaseException) -> None:
        """After `exc` stopped a writing loop: keep the rows already added unless the write path itself failed."""
        if isinstance(exc, Exception) and not isinstance(exc, (DiskFullError, OSError)):
            try:
                self.commit()
            except Exception:
                self.abort()
        else:
            self.abort()
        self.release()

    def abort(self) -> None:
        """Drop the open shard (its samples were never committed)."""
        if self._files is not None:
            for n, f in self._files.items():
                f.close()
                self._tmp(n).unlink(missing_ok=True)
        self._files, self._keys, self._val = None, [], []

    def close(self) -> None:
        """Commit the partial shard, then release the store."""
        try:
            self.commit()
        finally:
            self.release()


def _with_shards(meta: dict, shards: list[dict]) -> dict:
    # a new meta dict listing `shards` after the existing ones, with the counts updated
    n = sum(sh["count"] for sh in shards)
    nval = meta["counts"]["val"] + sum(len(sh["val"]) for sh in shards)
    count = meta["count"] + n
    return dict(meta, shards=[*meta["shards"], *shards], count=count, counts={"train": count - nval, "val": nval},
                updated=_now())


def _norm(v):
    # JSON turns tuples into lists: compare through a JSON round trip
    return json.loads(json.dumps(v))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
