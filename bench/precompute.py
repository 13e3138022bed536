"""Benchmark the precompute data path: store write, store random read, and the teacher itself.

The store must never be the bottleneck: random reads of batches of 256 samples should run
at >= 10x the teacher's own encode+decode rate on the same CPU.

    python bench/precompute.py [--teacher PATH] [--size 256] [--frames 512] [--md docs/bench_precompute.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from organic_sd.data import Store, StoreWriter, describe_preprocess, iter_frames, open_sources, preprocess
from organic_sd.data.precompute import run_teacher

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OSD_SHARED_DATA", REPO.parent / "shared" / "data"))


class FakeTeacher:
    """Avg-pool by 8 to 4 channels, nearest upsample back: the stand-in when no real teacher loads."""

    id = "fake-avgpool8-c4"
    latent_channels = 4
    downscale = 8
    device = torch.device("cpu")

    def encode(self, x):
        z = F.avg_pool2d(x, 8)  # (B, 3, H/8, W/8)
        return torch.cat([z, z.mean(1, keepdim=True)], 1)

    def decode(self, z):
        return F.interpolate(z[:, :3], scale_factor=8, mode="nearest")


def get_teacher(spec: str):
    """(teacher, description): the requested teacher, or the fake one if it cannot be loaded."""
    try:
        from organic_sd.teachers import load_teacher

        t = load_teacher(spec, device="cpu")
        return t, f"{t.id} (loaded from {spec})"
    except Exception as e:  # the bench still measures the store without a real teacher
        return FakeTeacher(), f"FAKE avg-pool teacher ({spec} unavailable: {type(e).__name__}: {e})"


def evict(path: Path) -> None:
    # drop the store's pages from the OS cache so that reads hit the disk (per file, no root needed)
    for f in path.glob("*.f16"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    """Run the benchmark and print (and optionally write) a markdown summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(SHARED / "teachers" / "taef2"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=512, help="samples written for the store benchmarks")
    ap.add_argument("--shard-size", type=int, default=256)
    ap.add_argument("--read-batch", type=int, default=256)
    ap.add_argument("--reads", type=int, default=8, help="random batches read per measurement")
    ap.add_argument("--teacher-frames", type=int, default=8)
    ap.add_argument("--teacher-batch", type=int, default=4)
    ap.add_argument("--dir", default=None, help="where to write the temporary store (default: a temp dir)")
    ap.add_argument("--md", default=None, help="also write the markdown summary to this file")
    ap.add_argument("--machine", default=f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})")
    args = ap.parse_args()
    S = args.size

    teacher, tdesc = get_teacher(args.teacher)
    f = teacher.downscale
    lat_shape = (teacher.latent_channels, S // f, S // f)
    rng = np.random.default_rng(0)
    rows = []

    # teacher encode+decode on the same CPU, at the same size
    x = np.stack([rng.uniform(-1, 1, (3, S, S)).astype(np.float32) for _ in range(args.teacher_batch)])
    run_teacher(teacher, x)  # warm-up: first calls allocate and pick kernels
    t0, n = time.perf_counter(), 0
    while n < args.teacher_frames:
        run_teacher(teacher, x)
        n += len(x)
    teacher_fps = n / (time.perf_counter() - t0)
    rows.append(("teacher encode+decode", f"batch {args.teacher_batch}, {n} frames", teacher_fps))

    # sources + preprocessing: decode 720p video frames and bring them to size x size
    t0, n = time.perf_counter(), 0
    for fr in iter_frames(open_sources("sample:bigbuckbunny", max_frames=64)):
        preprocess(fr.image, S)
        n += 1
    fps = n / (time.perf_counter() - t0)
    rows.append(("video decode + preprocess", f"bigbuckbunny 1280x720 -> {S}, {n} frames", fps))

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "store"
        header = {"teacher": teacher.id, "size": S, "preprocess": describe_preprocess(S), "val_fraction": 0.05,
                  "dtype": "float16", "shapes": {"images": [3, S, S], "latents": list(lat_shape), "decodes": [3, S, S]}}
        B = 16  # the write path gets teacher-sized batches, as in precompute
        imgs = rng.uniform(-1, 1, (B, 3, S, S)).astype(np.float32)
        lats = rng.normal(0, 1, (B, *lat_shape)).astype(np.float32)
        t0 = time.perf_counter()
        w = StoreWriter(path, header, args.shard_size)
        for i in range(0, args.frames, B):
            keys = [f"bench#{j}" for j in range(i, min(i + B, args.frames))]
            w.add(keys, keys, imgs[: len(keys)], lats[: len(keys)], imgs[: len(keys)])
        w.close()  # includes fsync + sha256 of every shard
        write_fps = args.frames / (time.perf_counter() - t0)
        nbytes = sum(p.stat().st_size for p in path.glob("*.f16"))
        work = f"{args.frames} samples, {nbytes / 2**20:.0f} MiB, shards of {args.shard_size}"
        rows.append(("store write (fsync, sha256)", work, write_fps))

        s = Store.open(path)

        def read_fps() -> float:
            t0 = time.perf_counter()
            for _ in range(args.reads):
                idx = rng.integers(0, len(s), args.read_batch)
                s.images[idx], s.latents[idx], s.decodes[idx]  # what a trainer batch pulls
            return args.reads * args.read_batch / (time.perf_counter() - t0)

        evict(path)
        cold = read_fps()
        warm = read_fps()
        rows.append(("store random read, cold cache", f"{args.reads} batches of {args.read_batch}, all 3 arrays", cold))
        rows.append(("store random read, warm cache", f"{args.reads} batches of {args.read_batch}, all 3 arrays", warm))

    lines = [
        "## Precompute data path",
        "",
        f"Command: `python bench/precompute.py --size {S} --frames {args.frames}`  ",
        f"Machine: {args.machine}; torch {torch.__version__}, {torch.get_num_threads()} threads  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Teacher: {tdesc}",
        "",
        "| path | workload | frames/s |",
        "| --- | --- | ---: |",
        *[f"| {a} | {b} | {fps:,.1f} |" for a, b, fps in rows],
        "",
        f"Random read / teacher: {cold / teacher_fps:,.0f}x cold, {warm / teacher_fps:,.0f}x warm (target >= 10x).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text)
        print(f"wrote {args.md}", file=sys.stderr)


if __name__ == "__main__":
    main()
