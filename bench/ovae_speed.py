"""CPU speed of O-VAE files against their teacher: encode+decode of one 512x512 image, same process.

    python bench/ovae_speed.py --teacher ../shared/data/teachers/taef2 \
        shipped=organic_sd/assets/ovae/ovae.safetensors new=runs/new.safetensors [--threads 1 2]

For each thread count, --repeats rounds after a warm-up; each round times the teacher once and then every
O-VAE once, so all of them see the machine as it is in that round. Printed: the medians of the times, and each
O-VAE's speed-up as the median over rounds of (the teacher's time / the O-VAE's) in the same round: a slow spell
of this shared machine slows both sides of a ratio (before 2026-12-06 each O-VAE was paired with its own separate
teacher timing, and two runs' ratios differed by up to 25%). The issue's floor is >= 20x (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from organic_sd import OVAE
from organic_sd.teachers import load_teacher


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ovae", nargs="+", help="NAME=PATH of an O-VAE file (`osd export`)")
    p.add_argument("--teacher", required=True, help="teacher spec the O-VAEs clone")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    teacher = load_teacher(args.teacher, device="cpu")
    vaes = {}
    for spec in args.ovae:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=PATH, got {spec!r}")
        vaes[name] = OVAE.load(path)
        if vaes[name].meta.get("teacher") not in (None, teacher.id):
            raise SystemExit(f"{path} clones {vaes[name].meta['teacher']!r}, not --teacher {teacher.id!r}")
    x = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1  # (1, 3, 512, 512)
    print("| O-VAE | parameters | threads | teacher ms | O-VAE ms | speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    fns = {"teacher": lambda t: teacher.decode(teacher.encode(t))}
    fns.update({name: (lambda t, v=v: v.decode(v.encode(t))) for name, v in vaes.items()})
    for threads in args.threads:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            times = interleaved_times(fns, x, args.repeats)
        teacher_ms = 1000 * statistics.median(times["teacher"])
        for name, v in vaes.items():
            ratio = statistics.median(t / o for t, o in zip(times["teacher"], times[name]))
            print(f"| {name} | {v.num_parameters():,} | {threads} | {teacher_ms:.0f} | "
                  f"{1000 * statistics.median(times[name]):.0f} | {ratio:.1f}x |", flush=True)
    return 0


def interleaved_times(fns: dict, x, repeats: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each fn(x) per round, `repeats` rounds after one warm-up call each; a round calls every fn once,
    in order, so that round i of every fn saw the same stretch of the machine's load."""
    for fn in fns.values():
        fn(x)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = clock()
            fn(x)
            times[name].append(clock() - t)
    return times


if __name__ == "__main__":
    raise SystemExit(main())
