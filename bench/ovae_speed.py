"""CPU speed of O-VAE files against their teacher: encode+decode of one 512x512 image, same process.

    python bench/ovae_speed.py --teacher ../shared/data/teachers/taef2 \
        shipped=organic_sd/assets/ovae/ovae.safetensors new=runs/new.safetensors [--threads 1 2]

For each thread count: the teacher's and every O-VAE's median time over --repeats (after a warm-up),
and each O-VAE's speed-up as a ratio to the teacher timed just before it, so that machine noise
between configurations does not enter the ratio. The issue's floor is >= 20x (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse

import torch
from ovae import cpu_seconds  # bench/ovae.py: the same timer as the configuration benchmark

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
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, v in vaes.items():
            teacher_s = cpu_seconds(lambda t: teacher.decode(teacher.encode(t)), x, max(1, args.repeats // 2))
            ovae_s = cpu_seconds(lambda t: v.decode(v.encode(t)), x, args.repeats)
            print(f"| {name} | {v.num_parameters():,} | {threads} | {1000 * teacher_s:.0f} | {1000 * ovae_s:.0f} | "
                  f"{teacher_s / ovae_s:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
