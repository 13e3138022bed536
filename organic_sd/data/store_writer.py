"""Writing the precompute store (layout: store.py): append samples, commit one shard at a time, atomically."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from organic_sd.data.store import (ARRAYS, DTYPE, FORMAT, HEADER_FIELDS, META, PARTS, VERSION, StoreError, _read_meta,
                                   check_val_fraction, lock_store, split_is_val)
from organic_sd.data.split import ensure_held_out
from organic_sd.files import atomic_json, fsync_dir

class DiskFullError(RuntimeError):
    """The disk filled up while writing a shard (committed shards are intact)."""


def _write_bytes(f, data: bytes) -> None:
    # one place for all shard writes, so that a full disk can be simulated in tests
    f.write(data)


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
        self._forced = set(self.meta.get("held_out_groups", ()))  # held out beyond the hash rule (data/split.py)

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
        self._lockf = lock_store(self.path)

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
                if split_is_val(groups[k], self.meta["val_fraction"]) or groups[k] in self._forced:
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

    def ensure_held_out(self) -> None:
        """Frames stores, once all is listed: hold out a few groups if the split holds out none (data/split.py)."""
        meta = ensure_held_out(self.meta)
        if meta is not self.meta:
            atomic_json(self.path / META, meta)
            self.meta, self._forced = meta, set(meta["held_out_groups"])

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
