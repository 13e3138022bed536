"""Check the distribution metrics on a real denoiser teacher: their floor, and what same-noise pairing does.

    python bench/sample_floor.py [--teacher ddpm-mnist] [--n 2000] [--out bench/out/sample_floor.json]

Draws, by deterministic DDIM, the teacher's many-step samples from two noise sets (seed --seed, the
one `osd eval denoiser` uses for its reference at its default seed, and --other-seed) and its few-step
samples from the first. Scores, in organic_sd.metrics.samples' pooled shape space against the first
many-step set (the reference):
    other seeds     the second many-step set: the floor, what the metrics give a perfect sampler at this n
    few-step        the few-step samples, partners left out (as `osd eval denoiser` reports them)
    few-step, all   the same without leaving the partners out: how much same-noise pairing flatters
    few-step, indep the few-step samples against the second many-step set: no shared noise at all
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from organic_sd.metrics.samples import distribution_report
from organic_sd.ounet import distribution as dist
from organic_sd.ounet.generate import seeded_noise

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="ddpm-mnist", help="denoiser teacher spec")
    p.add_argument("--n", type=int, default=2000, help="samples per set")
    p.add_argument("--seed", type=int, default=1001, help="noise seed of the reference (osd eval denoiser's: SEED+2)")
    p.add_argument("--other-seed", type=int, default=2002, help="noise seed of the second many-step set")
    p.add_argument("--ref-steps", type=int, default=dist.REF_STEPS, help="DDIM steps of the many-step sets")
    p.add_argument("--steps", type=int, default=dist.STEPS, help="DDIM steps of the few-step set")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "sample_floor.json"))
    args = p.parse_args(argv)
    from organic_sd.teachers import load_denoiser

    teacher = load_denoiser(args.teacher, device=args.device)
    pr = teacher.pixel_range
    t0 = time.perf_counter()
    noise = seeded_noise(teacher.sample_shape, args.n, args.seed)  # (n, C, H, W)
    ref, few = dist.draw(teacher, noise, args.ref_steps), dist.draw(teacher, noise, args.steps)
    other = dist.draw(teacher, seeded_noise(teacher.sample_shape, args.n, args.other_seed), args.ref_steps)
    seconds = time.perf_counter() - t0
    scores = {"other seeds": distribution_report(ref, other, pr),
              "few-step": distribution_report(ref, few, pr, paired=True),
              "few-step, all": distribution_report(ref, few, pr),
              "few-step, indep": distribution_report(other, few, pr)}
    rep = {"teacher": teacher.id, "args": vars(args), "sampling_seconds": seconds, "scores": scores}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rep, indent=1))
    print(f"{args.n:,} samples per set, reference: the teacher's {args.ref_steps}-step samples (seed {args.seed}); "
          f"sampling {seconds:.0f} s")
    for name, r in scores.items():
        print(f"{name:16s} KID x1000 {r['kid_x1000']:9.1f}  precision {r['precision']:.3f}  recall {r['recall']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
