"""A staged O-Decoder's latent cell and carry read at their own resolution against repeated up first.

    python bench/stage_maps_speed.py --decoders pair=runs/pair.safetensors [--threads 1 2] [--repeats 15] [--size 512]

A stage that reads the latent (or the previous stage's hidden units) through a 1x1 window gets the same numbers
from convolving the coarse map and repeating the result up as from repeating the map up and convolving it; the
stack does the former since 2026-12-06. Per decoder and thread count, both ways on one random latent of a
SIZE x SIZE image in this process, interleaved (old, new, old, new ...) so both see the same machine; prints the
median milliseconds of each, their ratio and the largest difference between their outputs (float rounding:
exactly 0 until the fast path's convolutions went channels-last, ~1e-7 since).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from ovae_speed import interleaved_times  # bench/ovae_speed.py: the same rounds as the pair's speed benchmark

from organic_sd.ovae.model import read_parts
from organic_sd.stages import Stack, repeat_up


def repeated_first(stack: Stack, z: torch.Tensor) -> torch.Tensor:
    """The stack as it ran before: every extra and carry map repeated up to its stage's map, then convolved."""
    cur, hidden = z, None
    for s in stack.stages:
        extra = repeat_up(z, cur.shape[-2:]) if s.config.extra_channels else None
        carry = repeat_up(hidden, cur.shape[-2:]) if s.config.carry_channels else None
        cur, hidden = s.fast(cur, extra, carry, with_hidden=True)
    return cur


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoders", nargs="+", required=True, help="NAME=PATH: an O-VAE file or run, staged decoder")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--size", type=int, default=512)
    a = p.parse_args(argv)
    print("| decoder | threads | repeated first, ms | at their own resolution, ms | ratio | max difference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for spec in a.decoders:
        name, _, path = spec.partition("=")
        dec = read_parts(path)["decoder"]
        stack = next((m for m in dec.modules() if isinstance(m, Stack)), None)
        if stack is None:
            raise SystemExit(f"{name}: {path} holds no staged decoder")
        z = torch.randn(1, stack.in_channels, a.size // stack.up, a.size // stack.up)
        for threads in a.threads:
            torch.set_num_threads(threads)
            ways = {"old": lambda t: repeated_first(stack, t), "new": stack}
            with torch.no_grad():
                diff = float((ways["old"](z) - ways["new"](z)).abs().max())
                times = interleaved_times(ways, z, a.repeats)
            old, new = (statistics.median(times[k]) * 1000 for k in ("old", "new"))
            print(f"| {name} | {threads} | {old:.1f} | {new:.1f} | {old / new:.2f}x | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
