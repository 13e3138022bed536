"""Which of two O-UNets' steps make a sample's faults: one clone for the steps t >= split, another below it.

    python bench/ounet_split_paths.py --teacher ddpm-mnist:PATH --ounet A=FILE B=FILE ... \
        --pairs A:A B:B A:B B:A [--split 400] [--n 2000] [--seed 5002] [--threads 2] [--json out.json]

Each pair HIGH:LOW draws 8-step DDIM samples whose steps at t >= split run HIGH and the rest LOW (HIGH:HIGH is
HIGH alone), then scores them as `osd eval denoiser` does (ounet/distribution.py: KID x1000 / precision / recall
against the teacher's 50-step samples from the same noise, and the teacher's low-noise error for fine structure).
The teacher's sets are drawn once for all pairs. Noise seed 5002 is the dev seed's distribution noise (`osd eval
denoiser --seed 5000` draws from seed + 2): a diagnosis, not a report.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from organic_sd.ounet.distribution import measure
from organic_sd.ounet.model import OUNet


class SplitPath:
    """An eps model that runs `high` at steps t >= split and `low` below (what ddim_sample needs of a model); either
    may be any such model of the same teacher (an O-UNet, a reference net)."""

    def __init__(self, high, low, split: int):
        if len(high.alphas_cumprod) != len(low.alphas_cumprod) or tuple(high.sample_shape) != tuple(low.sample_shape):
            raise ValueError("the two O-UNets must clone the same teacher (schedule and sample shape differ)")
        self.high, self.low, self.split = high, low, split
        self.alphas_cumprod, self.sample_shape, self.device = high.alphas_cumprod, high.sample_shape, high.device

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        """(B, C, H, W) x_t, (B,) t (one step for the batch, as DDIM gives) -> eps of the model owning t."""
        if t.min() < self.split <= t.max():
            raise ValueError("a batch must not straddle the split")
        return (self.high if int(t[0]) >= self.split else self.low).eps(x_t, t, cond)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True, help="e.g. ddpm-mnist:PATH")
    p.add_argument("--ounet", nargs="+", required=True, help="NAME=FILE (O-UNet file, run folder or shipped name)")
    p.add_argument("--pairs", nargs="+", required=True, help="HIGH:LOW names; HIGH runs the steps t >= --split")
    p.add_argument("--split", type=int, default=400)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=5002, help="distribution noise seed (dev: 5002)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from organic_sd.teachers import load_denoiser

    torch.set_num_threads(args.threads)
    files = dict(item.split("=", 1) for item in args.ounet)
    us = {name: OUNet.load(f) for name, f in files.items()}
    pairs = [tuple(pair.split(":")) for pair in args.pairs]
    unknown = {n for pair in pairs for n in pair} - set(us)
    if unknown or any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--pairs must be HIGH:LOW of the --ounet names {sorted(us)}; unknown: {sorted(unknown)}")
    teacher = load_denoiser(args.teacher)
    pr = next(iter(us.values())).config.pixel_range
    cache, out = {}, {"args": vars(args), "pairs": {}}
    for high, low in pairs:
        model = us[high] if high == low else SplitPath(us[high], us[low], args.split)
        rep, _ = measure(model, teacher, args.n, args.seed, pr, args.steps, cache=cache)
        o, t = rep["ounet"], rep["teacher"]
        out["pairs"][f"{high}:{low}"] = rep
        print(f"{high:>8} (t >= {args.split}) then {low:<8}: KID x1000 {o['kid_x1000']:6.1f}  P {o['precision']:.3f}  "
              f"R {o['recall']:.3f}  low-noise {o['denoise_err']:.4f}   (teacher 8 steps: KID {t['kid_x1000']:.1f}, "
              f"low-noise {t['denoise_err']:.4f})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
