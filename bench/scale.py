"""Scaling benchmark: throughput of each distributed part at 1, 2, 4, 8 ranks under torchrun.

Each part runs once per rank count, in its own `torchrun --standalone` launch, on the same
work; efficiency is rate(N) / (N * rate(1)). Rank counts the machine cannot host (GPUs for
`--device cuda`, cores / `--threads` for CPU) are reported as not run.

    python bench/scale.py [--part precompute] [--ranks 1 2 4 8] [--teacher fake|SPEC] [--device auto]
                          [--frames 96] [--size 128] [--md docs/bench_scale.md]
    python bench/scale.py --part training [--seconds 10] [--rows 20000] [--inputs 36] [--outputs 192]
                          [--hidden ...] [--population 40] [--md docs/bench_scale_training.md]

training: generations/s and the held-out MSE reached after a fixed time; ola.fit splits the
rows (output neurons, cascade units) across ranks, so a rank's generation covers fewer rows.

Parts live in PARTS (name -> worker function run on every rank, returning rank 0's
measurement); a new part only adds a worker there and is selected with `--part NAME`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from organic_sd import dist
from organic_sd.data.precompute import precompute, run_teacher
from organic_sd.devices import resolve_device

REPO = Path(__file__).resolve().parents[1]
RESULT = "SCALE_RESULT "  # prefix of the worker's result line on stdout


class FakeTeacher(nn.Module):
    """A fixed random conv encoder/decoder (3 -> 4 channels, /8): costs compute like a small VAE, loads nothing."""

    id = "fake-conv8-c4"
    latent_channels = 4
    downscale = 8

    def __init__(self, device: str = "cpu", width: int = 64):
        super().__init__()
        torch.manual_seed(0)
        c = width
        self.enc = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.SiLU(), nn.Conv2d(c, c, 3, 2, 1), nn.SiLU(),
                                 nn.Conv2d(c, c, 3, 2, 1), nn.SiLU(), nn.Conv2d(c, 4, 3, 1, 1))
        self.dec = nn.Sequential(nn.Conv2d(4, c, 3, 1, 1), nn.SiLU(), nn.Upsample(scale_factor=2),
                                 nn.Conv2d(c, c, 3, 1, 1), nn.SiLU(), nn.Upsample(scale_factor=2),
                                 nn.Conv2d(c, c, 3, 1, 1), nn.SiLU(), nn.Upsample(scale_factor=2),
                                 nn.Conv2d(c, 3, 3, 1, 1), nn.Tanh())
        self.device = torch.device(device)
        self.to(self.device).eval()

    def encode(self, x):
        return self.enc(x)  # (B, 3, H, W) -> (B, 4, H/8, W/8)

    def decode(self, z):
        return self.dec(z)  # (B, 4, h, w) -> (B, 3, 8h, 8w) in [-1, 1]


def make_teacher(spec: str, device: str):
    """The fake conv teacher for 'fake', else organic_sd's load_teacher(spec)."""
    if spec == "fake":
        return FakeTeacher(device)
    from organic_sd.teachers import load_teacher

    return load_teacher(spec, device=device)


def make_images(folder: Path, n: int, size: int) -> str:
    """n random RGB PNGs of size x size in folder: a frame source that needs no download."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"frame{i:05d}.png")
    return str(folder)


def precompute_worker(args: argparse.Namespace) -> dict:
    """Precompute args.frames frames into a fresh store with this rank's share; rank 0 reports frames/s."""
    device = dist.local_device(str(resolve_device(args.device)))
    teacher = make_teacher(args.teacher, device)
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, 3, args.size, args.size)).astype(np.float32)
    run_teacher(teacher, x)  # warm-up: kernel choice and allocation stay out of the timing
    out = Path(args.tmp) / f"store-n{dist.world_size()}"
    cpu0 = time.process_time()
    rep = precompute(args.sources, teacher, out, args.size, max_frames=args.frames, batch=args.batch,
                     shard_size=args.shard_size, progress=False)
    # CPU seconds all ranks got: on a shared machine, wall time far above them means waiting for a core
    cpu = sum(dist.all_gather_object(time.process_time() - cpu0))
    # rep.seconds runs from the first frame to rank 0's commit of meta.json, so it waits for the slowest rank
    return {"items": rep.written, "seconds": rep.seconds, "rate": rep.written / rep.seconds, "unit": "frames/s",
            "cpu_seconds": cpu, "device": device,
            "work": f"{rep.written} frames at {args.size}x{args.size}, batch {args.batch}, teacher {teacher.id}"}


def training_problem(rows: int, inputs: int, outputs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed smooth regression x (rows, inputs) -> y (rows, outputs) in (-1, 1), shaped like a patch decoder's."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, inputs, generator=g)
    w1, w2 = torch.randn(inputs, 32, generator=g), torch.randn(32, outputs, generator=g)
    return x, 0.9 * torch.tanh(torch.tanh(x @ w1 / inputs ** 0.5) @ w2 / 32 ** 0.5 + 0.2 * x @ w1[:, :1])


def training_worker(args: argparse.Namespace) -> dict:
    """ola.fit for args.seconds on every rank (rows split across ranks); rank 0 reports generations/s and held-out MSE."""
    from organic_sd import ola

    device = dist.local_device(str(resolve_device(args.device)))
    x, y = training_problem(args.rows, args.inputs, args.outputs)
    kw = dict(hidden=tuple(args.hidden), population=args.population, device=device, seed=0,
              batch_size=args.fit_batch)
    ola.fit(x[:2000], y[:2000], generations=5, **kw)  # warm-up: kernel choice and allocation stay out of the timing
    dist.barrier()
    cpu0 = time.process_time()
    m = ola.fit(x, y, max_seconds=args.seconds, **kw)
    cpu = sum(dist.all_gather_object(time.process_time() - cpu0))
    ts = m.training_summary
    # a time budget: each rank runs as many generations as it can; rank 0's count stands for all
    return {"items": ts["generations"], "seconds": ts["seconds"], "rate": ts["generations"] / ts["seconds"],
            "unit": "generations/s", "cpu_seconds": cpu, "device": device, "val_mse": ts["val_mse"],
            "work": f"ola.fit {args.inputs} -> {args.outputs}, hidden {tuple(args.hidden)}, {args.rows:,} rows, "
                    f"population {args.population}, batch {args.fit_batch or 'default'}, strategy {ts['strategy']}, "
                    f"{args.seconds:g} s"}


# name -> worker: runs on every rank under torchrun and returns the measurement (rank 0's is kept)
PARTS = {"precompute": precompute_worker, "training": training_worker}


def worker_main(args: argparse.Namespace) -> None:
    """Entry point on every rank: run the part, print rank 0's result as one JSON line."""
    dist.init()
    res = PARTS[args.part](args)
    if dist.is_main():
        print(RESULT + json.dumps(res), flush=True)
    dist.destroy()


def capacity(device: str, threads: int) -> tuple[int, str]:
    """(most ranks this machine hosts, in words): GPUs for CUDA, cores / threads per rank for CPU."""
    if device.startswith("cuda"):
        n = torch.cuda.device_count()
        return n, f"{n} GPU(s)"
    n = os.cpu_count() or 1
    return max(1, n // threads), f"{n} CPU cores, {threads} thread(s) per rank"


def launch(nproc: int, args: argparse.Namespace, tmp: str) -> dict:
    """One torchrun launch of the part at nproc ranks; returns rank 0's measurement."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), __file__,
           *sys.argv[1:], "--worker", "--tmp", tmp, "--sources", *args.sources]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith(RESULT)]
    if p.returncode or not lines:
        raise RuntimeError(f"{nproc} ranks failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def table(args: argparse.Namespace, results: dict[int, dict], skipped: list[int], most: int, cap: str) -> str:
    """Markdown: command, machine, date, then one row per rank count."""
    base = results.get(1)
    first = next(iter(results.values()))
    unit = first["unit"]
    items = unit.split("/")[0]
    loss = "val_mse" in first  # training: the held-out MSE reached in the same time
    rows = []
    for n, r in results.items():
        speedup = r["rate"] / base["rate"] if base else float("nan")
        rows.append(f"| {n} | {r['items']} | {r['seconds']:.2f} | {r['cpu_seconds'] / n:.2f} | {r['rate']:,.2f} | "
                    f"{speedup:.2f}x | {speedup / n:.0%} |" + (f" {r['val_mse']:.5g} |" if loss else ""))
    rows += [f"| {n} | not run: this machine hosts at most {most} ranks ({cap}) | | | | | |" + (" |" if loss else "")
             for n in skipped]
    return "\n".join([
        f"## Scaling: {args.part}",
        "",
        f"Command: `python bench/scale.py {shlex.join(sys.argv[1:])}`  ",
        f"Machine: {args.machine}; torch {torch.__version__}; {cap}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"Work: {first['work']} on {first['device']}; best of {args.repeat} round(s)",
        "",
        f"| ranks | {items} | seconds | CPU s per rank | {unit} | speedup | efficiency |" + (" held-out MSE |" if loss else ""),
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if loss else ""),
        *rows,
    ]) + "\n"


def main() -> None:
    """Parse arguments; as the driver launch every rank count, as a worker (--worker) measure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=sorted(PARTS), default="precompute", help="what to scale")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--teacher", default="fake", help="'fake' (a fixed random conv net) or a teacher spec")
    ap.add_argument("--device", default="auto", help="cpu or cuda (auto: cuda if available); a rank per GPU")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per rank (OMP_NUM_THREADS)")
    ap.add_argument("--repeat", type=int, default=1, help="rounds over all rank counts; the best rate is kept")
    ap.add_argument("--frames", type=int, default=96, help="frames precomputed per rank count")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0, help="training: ola.fit time budget per rank count")
    ap.add_argument("--rows", type=int, default=20_000, help="training: rows of the synthetic problem")
    ap.add_argument("--inputs", type=int, default=36, help="training: inputs (a 3x3 window of 4 latent channels)")
    ap.add_argument("--outputs", type=int, default=192, help="training: outputs (an 8x8 RGB pixel block)")
    ap.add_argument("--hidden", type=int, nargs="*", default=[], help="training: hidden widths")
    ap.add_argument("--population", type=int, default=40, help="training: candidates per row")
    ap.add_argument("--fit-batch", type=int, default=None, help="training: rows per generation (engine default)")
    ap.add_argument("--sources", nargs="*", default=None, help="frame sources (default: generated PNGs)")
    ap.add_argument("--dir", default=None, help="where the temporary stores go (default: a temp dir)")
    ap.add_argument("--md", default=None, help="also write the markdown table to this file")
    ap.add_argument("--machine", default=f"{platform.node() or 'this machine'} ({platform.machine()})")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker_main(args)
        return

    device = str(resolve_device(args.device))
    most, cap = capacity(device, args.threads)
    run = [n for n in args.ranks if n <= most]
    skipped = [n for n in args.ranks if n > most]
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        # made once here: ranks writing the same files at once would race
        if args.part == "precompute":
            args.sources = args.sources or [make_images(Path(tmp) / "frames", args.frames, args.size)]
        args.sources = args.sources or []
        # rounds interleave the rank counts, so that other load on a shared machine hits all of them alike
        for _ in range(args.repeat):
            for n in run:
                for old in Path(tmp).glob("store-*"):  # every launch starts from an empty store
                    for f in old.iterdir():
                        f.unlink()
                    old.rmdir()
                r = launch(n, args, tmp)
                print(f"{n} ranks: {r['items']} {r['unit'].split('/')[0]} in {r['seconds']:.2f} s "
                      f"({r['cpu_seconds']:.2f} CPU s) = {r['rate']:,.2f} {r['unit']}", file=sys.stderr)
                if n not in results or r["rate"] > results[n]["rate"]:
                    results[n] = r
    text = table(args, results, skipped, most, cap)
    print(text)
    if args.md:
        Path(args.md).parent.mkdir(parents=True, exist_ok=True)
        Path(args.md).write_text(text)
        print(f"wrote {args.md}", file=sys.stderr)


if __name__ == "__main__":
    main()
