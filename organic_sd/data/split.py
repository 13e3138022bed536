"""The train/held-out split of a frames store: drawn per group (a photo, or a chunk of video frames), never empty.

Each group is held out when sha256(group) falls below val_fraction (store.split_is_val), so a frame's side does
not depend on the rest of the store. On a small store that rule can pick no group at all (36 photos at 0.05:
none held out, 16% of the time); then the max(1, round(val_fraction * groups)) groups of smallest hash are held
out instead, and listed in meta.json's "held_out_groups" so that later appends keep them held out.
`resplit` redraws the split of a written store from its keys alone: the teacher is not run again.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from organic_sd.data.sources import SPLIT_CHUNK, split_name
from organic_sd.data.store import META, StoreError, _read_meta, check_val_fraction, lock_store, split_is_val
from organic_sd.files import atomic_json


def key_groups(keys: list[str]) -> list[str]:
    """Frame keys ("SOURCE#POS", views "SOURCE#POS@viewJ") -> their split groups, as precompute drew them (Frame.group).

    A source with a frame past position 0 is a video, split per SPLIT_CHUNK frames; any other is a still image. A
    group names the source by its folder and file (sources.split_name), not its absolute path."""
    parsed = [key.split("@view")[0].rsplit("#", 1) for key in keys]
    if any(len(p) != 2 or not p[1].isdigit() for p in parsed):
        bad = next(k for k, p in zip(keys, parsed) if len(p) != 2 or not p[1].isdigit())
        raise StoreError(f"key {bad!r} is not a frame key (SOURCE#POS): only frames stores can be re-split")
    videos = {src for src, pos in parsed if int(pos) > 0}
    return [f"{split_name(src)}#{int(pos) // SPLIT_CHUNK}" if src in videos else split_name(src)
            for src, pos in parsed]


def _hash(group: str) -> int:
    return int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big")


def forced_groups(groups: list[str], val_fraction: float) -> list[str]:
    """The groups held out beyond split_is_val's: none unless it picks none while val_fraction > 0 and 2+ groups exist."""
    distinct = sorted(set(groups))
    if val_fraction <= 0 or len(distinct) < 2 or any(split_is_val(g, val_fraction) for g in distinct):
        return []
    n = min(len(distinct) - 1, max(1, round(val_fraction * len(distinct))))  # at least one group stays for training
    return sorted(sorted(distinct, key=_hash)[:n])


def with_split(meta: dict, val_fraction: float, forced: list[str]) -> dict:
    """meta with every shard's "val" list, the counts, val_fraction and held_out_groups redrawn from the keys."""
    forced_set = set(forced)
    shards, nval = [], 0
    for sh, groups in _shard_groups(meta):
        val = [i for i, g in enumerate(groups) if g in forced_set or split_is_val(g, val_fraction)]
        shards.append({**sh, "val": val})
        nval += len(val)
    return {**meta, "shards": shards, "val_fraction": val_fraction, "held_out_groups": sorted(forced_set),
            "counts": {"train": meta["count"] - nval, "val": nval}}


def ensure_held_out(meta: dict) -> dict:
    """meta, holding out a few groups if its split holds out none (groups forced earlier stay held out)."""
    before = meta.get("held_out_groups", [])
    if before:  # groups forced earlier still hold out: an append must not force more (a new one may hash lower)
        return meta
    groups = [g for _, gs in _shard_groups(meta) for g in gs]
    forced = sorted(forced_groups(groups, meta["val_fraction"]))
    return meta if forced == before else with_split(meta, meta["val_fraction"], forced)


def split_line(meta: dict) -> str:
    """The split of a store in one line, e.g. "split: 34 training samples, 2 held out (1 of 36 groups, ...)"."""
    held, every = set(), set()
    for sh, groups in _shard_groups(meta):
        every.update(groups)
        held.update(groups[i] for i in sh["val"])
    return (f"split: {meta['counts']['train']} training samples, {meta['counts']['val']} held out "
            f"({len(held)} of {len(every)} photos or video chunks; val_fraction {meta['val_fraction']})")


def _shard_groups(meta: dict):
    """(shard, its keys' groups) per shard; groups drawn over the whole store, where a video's frames show."""
    groups = key_groups([k for sh in meta["shards"] for k in sh["keys"]])
    i = 0
    for sh in meta["shards"]:
        yield sh, groups[i:i + len(sh["keys"])]
        i += len(sh["keys"])


def resplit(path: str | Path, val_fraction: float) -> dict:
    """Redraw the held-out split of the frames store at `path` (its keys only; no teacher); -> the new meta."""
    check_val_fraction(val_fraction)
    path = Path(path)
    lock = lock_store(path, create=False)
    try:
        meta = _read_meta(path)
        if meta.get("kind") is not None:  # denoiser stores carry a kind; their keys are not frames
            raise StoreError(f"{path} is a {meta['kind']} store: only frames stores (`osd precompute frames`) can "
                             "be re-split")
        groups = [g for _, gs in _shard_groups(meta) for g in gs]
        meta = with_split(meta, val_fraction, forced_groups(groups, val_fraction))
        atomic_json(path / META, meta)
    finally:
        lock.close()  # closing releases the flock
    return meta
