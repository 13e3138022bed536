"""Which sample measures see fine structure? Pooled KID / P / R at several poolings and the low-noise error.

    python bench/fine_structure.py --teacher ddpm-mnist:PATH [--ounet mnist RUN ...] [--n 2000] [--seed 5002] \
        [--pools 4 2 1] [--json bench/out/fine_structure.json]

From one seeded noise set: the teacher's 50-step samples (the reference), its 8-step samples, three damaged
copies as controls (8-step samples with 2% of the pixels set to full ink; the reference with its pixels
shuffled; uniform noise over the pixel range) and each O-UNet's 8-step samples. Every set gets the low-noise
error (organic_sd/metrics/denoising.py, the teacher judging) and KID x1000 / precision / recall against the
reference pooled by each of --pools (partners left out where a set shares the reference's noise).
The default seed 5002 is the noise `osd eval denoiser --seed 5000` (the dev seed) draws its distribution from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from organic_sd.files import atomic_json
from organic_sd.metrics.denoising import denoising_error
from organic_sd.metrics.samples import distribution_report
from organic_sd.ounet import distribution as dist
from organic_sd.ounet.generate import seeded_noise


def controls(few: torch.Tensor, ref: torch.Tensor, pixel_range, seed: int = 0) -> dict[str, torch.Tensor]:
    """Damaged sets whose fine structure is known to be wrong: speckled, shuffled, noise."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = pixel_range
    speckled = few.clone()
    speckled[torch.rand(few.shape, generator=g) < 0.02] = hi
    flat = ref.flatten(1)
    shuffled = flat[:, torch.randperm(flat.shape[1], generator=g)].reshape(ref.shape)
    noise = lo + (hi - lo) * torch.rand(ref.shape, generator=g)
    return {"teacher few-step + 2% speckle": speckled, "reference, pixels shuffled": shuffled,
            "uniform noise": noise}


def score(teacher, ref: torch.Tensor, sets: dict, pixel_range, pools, paired: set) -> dict:
    """Per set: the low-noise error (mean) and, per pooling, KID x1000 / precision / recall against ref."""
    out = {}
    for name, x in sets.items():
        r = {"denoise_err": float(denoising_error(teacher, x, pixel_range).mean())}
        if name != "reference":
            for p in pools:
                d = distribution_report(ref, x, pixel_range, p, paired=name in paired)
                r[f"pool{p}"] = {k: d[k] for k in ("kid_x1000", "precision", "recall")}
        out[name] = r
    return out


def markdown(res: dict, pools) -> str:
    """One row per set."""
    head = " | ".join(f"pool {p}: KID / P / R" for p in pools)
    lines = [f"| samples (noise seed {res['seed']}, {res['n']:,} each) | low-noise error | {head} |",
             "| --- | ---: |" + " --- |" * len(pools)]
    for name, r in res["sets"].items():
        cells = [f"{r[f'pool{p}']['kid_x1000']:.1f} / {r[f'pool{p}']['precision']:.3f} / "
                 f"{r[f'pool{p}']['recall']:.3f}" if f"pool{p}" in r else "-" for p in pools]
        lines.append(f"| {name} | {r['denoise_err']:.4f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="denoiser teacher spec")
    p.add_argument("--ounet", nargs="*", default=[], help="O-UNet files, runs or shipped names")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=5002)
    p.add_argument("--steps", type=int, default=dist.STEPS)
    p.add_argument("--ref-steps", type=int, default=dist.REF_STEPS)
    p.add_argument("--pools", type=int, nargs="+", default=[4, 2, 1])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from organic_sd.ounet.model import OUNet
    from organic_sd.teachers import load_denoiser

    teacher = load_denoiser(args.teacher)
    pr = teacher.pixel_range
    noise = seeded_noise(teacher.sample_shape, args.n, args.seed)
    ref_steps = min(args.ref_steps, len(teacher.alphas_cumprod) - 1)
    ref, few = dist.draw(teacher, noise, ref_steps), dist.draw(teacher, noise, args.steps)
    sets = {"reference": ref, f"teacher, {args.steps} steps": few, **controls(few, ref, pr)}
    for spec in args.ounet:
        sets[f"O-UNet {spec}, {args.steps} steps"] = dist.draw(OUNet.load(spec), noise, args.steps)
    paired = {name for name in sets if "steps" in name or "speckle" in name}  # drawn from the reference's noise
    res = {"teacher": teacher.id, "n": args.n, "seed": args.seed, "steps": args.steps, "ref_steps": ref_steps,
           "sets": score(teacher, ref, sets, pr, args.pools, paired)}
    print(markdown(res, args.pools))
    if args.json:
        atomic_json(Path(args.json), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
