"""Precompute: run a teacher over frames once and store (frame, latent, decode) triples.

`precompute` takes a teacher object (anything following organic_sd.teachers.base.Teacher),
so tests pass a fake one and `osd precompute` passes `load_teacher(spec)`. Re-running the
same call resumes: frames whose key is already in the store are skipped, the rest appended.
The first Ctrl-C stops after the current batch and commits the partial shard; a second one
aborts at once, losing only the open shard.

Under torchrun (`organic_sd.dist.init()` called first) every rank runs the same call: frame
i goes to rank i % N, each rank writes its own shards, and rank 0 lists all of them in the
store's meta.json at once when every rank is done. Ctrl-C reaches every rank through
torchrun and stops them all as above; shards that a killed run committed are listed by the
next one, so a resume with any N still stores every frame exactly once.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from organic_sd import dist
from organic_sd.data.interrupt import catch_sigint
from organic_sd.data.preprocess import (
    describe_preprocess,
    preprocess,
    views,
)
from organic_sd.data.sources import (
    Frame,
    ImageFiles,
    VideoFile,
    iter_frames,
    open_sources,
)
from organic_sd.data.split import split_line
from organic_sd.data.store_writer import StoreWriter, check_val_fraction


@dataclass
class PrecomputeReport:
    """What one precompute call did."""

    store: Path
    written: int = 0  # new samples committed by this call
    already: int = 0  # frames found in the store already (resume)
    total: int = 0  # samples in the store afterwards
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (frame key, reason)
    interrupted: bool = False
    seconds: float = 0.0
    split: str = ""  # the store's train/held-out sizes afterwards (split.split_line)

    def summary(self) -> str:
        """A few human-readable lines."""
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{'interrupted: ' if self.interrupted else ''}wrote {self.written} new samples "
                 f"({rate:.2f} frames/s), {self.already} already stored; {self.store} now holds {self.total}"]
        if self.skipped:
            by_reason: dict[str, list[str]] = defaultdict(list)
            for key, reason in self.skipped:
                by_reason[reason].append(key)
            lines.append(f"skipped {len(self.skipped)} frames or whole videos:")
            for reason, keys in by_reason.items():
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                lines.append(f"  {len(keys)} x {reason}: {', '.join(keys[:3])}{more}")
        if self.split:
            lines.append(self.split)
        if self.interrupted:
            lines.append("re-run the same command to resume")
        return "\n".join(lines)


def run_teacher(teacher, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, 3, H, W) float32 in [-1, 1] -> latents (B, C, H/f, W/f), decodes (B, 3, H, W), float32."""
    import torch

    B, _, H, W = images.shape
    dtype = getattr(teacher, "dtype", None) or torch.float32
    with torch.inference_mode():
        x = torch.from_numpy(images).to(teacher.device, dtype=dtype)
        z = teacher.encode(x)
        d = teacher.decode(z)
    f = teacher.downscale
    if tuple(z.shape) != (B, teacher.latent_channels, H // f, W // f):
        raise RuntimeError(f"teacher {teacher.id} encoded {(B, 3, H, W)} to {tuple(z.shape)}, "
                           f"expected {(B, teacher.latent_channels, H // f, W // f)}")
    if tuple(d.shape) != (B, 3, H, W):
        raise RuntimeError(f"teacher {teacher.id} decoded to {tuple(d.shape)}, expected {(B, 3, H, W)}")
    return z.float().cpu().numpy(), d.float().cpu().numpy()


def _rank_frames(srcs: list, rank: int, world: int):
    """iter_frames, except that a still image owned by another rank (index % world != rank) is not decoded."""
    if world == 1:
        yield from iter_frames(srcs)
        return
    index = 0
    for src in srcs:
        if isinstance(src, ImageFiles):
            for path, tag in src.files:
                if index % world == rank:
                    for t, pos, image, error in ImageFiles([(path, tag)], src.name):
                        yield Frame(index, t, pos, image, error)
                else:
                    yield Frame(index, tag, 0, None)  # another rank's: only its key is needed here
                index += 1
        else:
            # a video decodes sequentially: every rank reads every frame and keeps its own
            for tag, pos, image, error in src:
                yield Frame(index, tag, pos, image, error, isinstance(src, VideoFile))
                index += 1


def _agree(fn):
    """Run fn on every rank; if it raised on any rank, raise on all (so that none waits for the others)."""
    result, err = None, None
    try:
        result = fn()
    except Exception as e:
        err = e
    errs = dist.all_gather_object(None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    failed = [(r, m) for r, m in enumerate(errs) if m is not None]
    if failed:
        r, m = failed[0]
        raise RuntimeError(f"precompute failed on rank {r}: {m}")
    return result


def _open_writer(out: Path, header: dict, shard_size: int, rank: int, world: int) -> StoreWriter:
    # rank 0 locks, creates or cleans the store and lists a killed run's shards before the others read it
    if world == 1:
        return StoreWriter(out, header, shard_size)
    writer = _agree(lambda: StoreWriter(out, header, shard_size, rank=0) if rank == 0 else None)
    try:
        mine = _agree(lambda: StoreWriter(out, header, shard_size, rank=rank) if rank else None)
    except BaseException:
        if writer is not None:
            writer.release()
        raise
    return writer or mine


def precompute(
    sources: str | list[str],
    teacher,
    out: str | Path,
    size: int = 256,
    *,
    stride: int = 1,
    start: int = 0,
    max_frames: int | None = None,
    batch: int = 16,
    val_fraction: float = 0.05,
    shard_size: int = 1024,
    n_views: int = 1,
    progress: bool = True,
) -> PrecomputeReport:
    """Encode and decode every frame of `sources` with `teacher` into the store at `out` (resumable, torchrun-aware)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if n_views < 1:
        raise ValueError(f"views must be >= 1, got {n_views}")
    check_val_fraction(val_fraction)
    f = int(teacher.downscale)
    if size < f or size % f:
        raise ValueError(f"size {size} is not a positive multiple of teacher {teacher.id}'s downscale {f}")
    specs = [sources] if isinstance(sources, (str, Path)) else [str(s) for s in sources]
    rank, world = dist.rank(), dist.world_size()
    # every input checked before the store is touched
    srcs = _agree(lambda: open_sources(specs, stride, start, max_frames))
    # a video smaller than `size` (sample:videos' 176x144 carphone at 256) would be decoded only to skip every frame
    small = [v for v in srcs if isinstance(v, VideoFile) and min(v.width, v.height) < size]
    srcs = [v for v in srcs if v not in small]
    h = size // f
    header = {
        "teacher": teacher.id,
        "size": size,
        "preprocess": describe_preprocess(size, n_views),
        "shapes": {"images": [3, size, size], "latents": [int(teacher.latent_channels), h, h],
                   "decodes": [3, size, size]},
        "val_fraction": val_fraction,
        "dtype": "float16",
    }
    out = Path(out)
    existed = out.exists()
    writer = _open_writer(out, header, shard_size, rank, world)
    writer.note_sources(specs)
    rep = PrecomputeReport(store=out)
    for v in small:
        rep.skipped.append((v.tag, f"a {v.width}x{v.height} video is smaller than size {size} (never upscaled): "
                                   "all its frames left out"))
    stop, restore_sigint = catch_sigint()
    t0 = time.perf_counter()
    est = sum(s.estimate() for s in srcs)
    bar = tqdm(total=(est - rank + world - 1) // world * n_views, unit="frame", disable=not progress or rank != 0,
               smoothing=0.1, dynamic_ncols=True)
    keys: list[str] = []
    groups: list[str] = []
    pixels: list[np.ndarray] = []
    seen: set[str] = set()  # keys met this run, on any rank: a source listed twice is stored once

    def flush() -> None:
        if not keys:
            return
        x = np.stack(pixels)  # (B, 3, size, size)
        z, d = run_teacher(teacher, x)
        if not (np.isfinite(z.astype(np.float16)).all() and np.isfinite(d.astype(np.float16)).all()):
            raise RuntimeError(f"teacher {teacher.id} produced NaN/inf (or values beyond fp16) for {keys[0]}...")
        writer.add(keys, groups, x, z, d)
        rep.written += len(keys)
        bar.set_postfix(new=rep.written, stored=writer.count, skipped=len(rep.skipped), refresh=False)
        bar.update(len(keys))
        keys.clear(), groups.clear(), pixels.clear()

    try:
        for fr in _rank_frames(srcs, rank, world):
            if stop["requested"]:
                rep.interrupted = True
                break
            mine = fr.index % world == rank
            # view 0 keeps the frame's own key, so a store made without --views reads the same
            vkeys = [fr.key] + [f"{fr.key}@view{j}" for j in range(1, n_views)]
            if all(k in writer.done for k in vkeys) or fr.key in seen:
                if mine:
                    rep.already += 1
                    bar.update(n_views)
                continue
            seen.add(fr.key)
            if not mine:
                continue
            if fr.image is None:
                rep.skipped.append((fr.key, fr.error))
                tqdm.write(f"skipped {fr.key}: {fr.error}", file=sys.stderr)
                bar.update(n_views)
                continue
            W, H = fr.image.size
            if min(W, H) < size:
                rep.skipped.append((fr.key, f"{W}x{H} is smaller than size {size} (never upscaled)"))
                bar.update(n_views)
                continue
            for k, v in zip(vkeys, views(W, H, size, n_views, fr.key)):
                if k in writer.done:
                    continue
                pixels.append(preprocess(fr.image, size, v if n_views > 1 else None))
                keys.append(k)
                groups.append(fr.group)  # every view of a frame on the same side of the split
                if len(keys) == batch:
                    flush()
        flush()  # the last partial batch, also when interrupted
        if world == 1:
            writer.commit()  # the partial shard
            writer.ensure_held_out()  # a small store still gets a held-out frame
            writer.release()
            rep.total, rep.split = writer.meta["count"], split_line(writer.meta)
        else:
            writer.commit()  # into this rank's part file
            _merge_ranks(writer, rep)
    except BaseException as e:
        writer.fail(e)
        raise
    finally:
        bar.close()
        restore_sigint()
    rep.seconds = time.perf_counter() - t0
    if rep.total == 0:
        if not existed and rank == 0:
            _remove_empty_store(out)
        reasons = "; ".join(sorted({r for _, r in rep.skipped})) or "the sources yielded no frames"
        raise ValueError(f"no usable frames in {', '.join(specs)} at size {size}: {reasons}")
    return rep


def _merge_ranks(writer: StoreWriter, rep: PrecomputeReport) -> None:
    # one gather carries every rank's shards and counts; rank 0 lists the shards, a second tells the total
    got = dist.all_gather_object((writer.parts, rep.written, rep.already, rep.skipped, rep.interrupted))
    total = None
    if writer.rank == 0:
        writer.merge([sh for parts, *_ in got for sh in parts])
        writer.ensure_held_out()
        total = (writer.meta["count"], split_line(writer.meta))
        writer.release()
    rep.total, rep.split = dist.all_gather_object(total)[0]  # also keeps the other ranks until meta.json is committed
    rep.written = sum(g[1] for g in got)
    rep.already = sum(g[2] for g in got)
    rep.skipped = [s for g in got for s in g[3]]
    rep.interrupted = any(g[4] for g in got)


def _remove_empty_store(out: Path) -> None:
    # a failed first run should not leave an empty store behind
    for name in ("meta.json", ".lock"):
        (out / name).unlink(missing_ok=True)
    try:
        out.rmdir()
    except OSError:
        pass
