"""A class-conditional O-UNet against its teacher: class fidelity by class and by held-out prompt, PSNR, speed.

    python bench/ounet_cond.py --ounet RUN_OR_FILE --teacher dit-mnist-cond:PATH --per-class 50 --seed 7 \
        --json runs/cond.json --grid runs/cond.png

Samples: 8-step DDIM of the clone and of the teacher from the same seeded noise and the same class,
`--per-class` of each class (noise seed --seed; use seeds that chose nothing). Class fidelity
(organic_sd/metrics/class_fidelity.py): the teacher, used as a classifier, names the class of
every sample; the share named as the class asked for. With a prompt adapter in the O-UNet and the
text extra installed, the same is measured through the held-out phrasings (organic_sd/text/phrasings.py):
each phrasing's class as the adapter reads it, then samples of that class. Speed: one eps call,
batch 64, one CPU thread, the clone's time against the teacher's in the same process (median of 7).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from organic_sd.metrics.class_fidelity import class_fidelity
from organic_sd.ounet import OUNet
from organic_sd.ounet.evaluate import cpu_ms_per_step
from organic_sd.ounet.generate import grid_image, psnr_unit, to_unit
from organic_sd.teachers import load_denoiser
from organic_sd.teachers.ddim import ddim_sample


def paired_samples(u, teacher, classes: torch.Tensor, steps: int, seed: int):
    """(N,) class indices -> the clone's and the teacher's (N, C, H, W) samples from the same noise, clamped."""
    noise = torch.randn((len(classes), *u.sample_shape), generator=torch.Generator().manual_seed(seed))
    rows = torch.nn.functional.one_hot(classes, len(u.config.classes)).float()  # (N, K)
    lo, hi = u.config.pixel_range
    with torch.no_grad():
        mine = ddim_sample(u, noise, steps, rows).cpu().clamp(lo, hi)
        theirs = ddim_sample(teacher, noise, steps, rows).cpu().clamp(lo, hi)
    return mine, theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ounet", default="mnist-cond", help="class-conditional O-UNet (file, run, shipped name)")
    ap.add_argument("--teacher", required=True, help="its teacher, e.g. dit-mnist-cond:PATH")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=7, help="noise seed of the samples")
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default=None, help="PNG: the clone's samples (one column per class) above the teacher's")
    a = ap.parse_args()
    u = OUNet.load(a.ounet)
    te = load_denoiser(a.teacher)
    if not u.config.classes:
        raise SystemExit(f"{a.ounet} is not class-conditional")
    K = len(u.config.classes)
    t0 = time.perf_counter()
    asked = torch.arange(K).repeat(a.per_class)  # (N,) 0..K-1, 0..K-1, ...
    mine, theirs = paired_samples(u, te, asked, a.steps, a.seed)
    fid_u, fid_t = class_fidelity(te, mine, asked), class_fidelity(te, theirs, asked)
    pr = u.config.pixel_range
    report = {"ounet": str(a.ounet), "teacher": te.id, "steps": a.steps, "per_class": a.per_class, "seed": a.seed,
              "parameters": u.num_parameters(), "clone": fid_u.to_dict(), "teacher_fidelity": fid_t.to_dict(),
              "psnr_same_noise": psnr_unit(to_unit(mine, pr), to_unit(theirs, pr))}
    print(f"class fidelity, {a.steps}-step DDIM, {len(asked)} samples (seed {a.seed}): clone {fid_u.summary()}")
    print(f"  teacher {fid_t.summary()}")
    print(f"same-noise PSNR clone vs teacher: {report['psnr_same_noise']:.2f} dB; {u.num_parameters():,} parameters")
    if u.prompts is not None:
        try:
            from organic_sd.text.phrasings import phrasing_set

            held, held_k = phrasing_set("held-out")
            read = torch.tensor([c for c, _, _ in u.prompts.classify(held)])  # (P,) the class each phrasing asks for
            reps = max(1, a.per_class * K // len(held))
            want = torch.tensor(held_k).repeat(reps)
            got_cls = read.repeat(reps)
            mine_p, _ = paired_samples(u, te, got_cls, a.steps, a.seed + 1)
            fid_p = class_fidelity(te, mine_p, want)  # judged against the class the prompt meant
            report["prompts"] = {"held_out_read_right": float((read == torch.tensor(held_k)).float().mean()),
                                 "clone": fid_p.to_dict()}
            print(f"held-out prompts: read as the class meant {report['prompts']['held_out_read_right']:.3f}; "
                  f"clone's samples {fid_p.summary()}")
        except ImportError as e:
            print(f"prompts skipped: {e}")
    row = torch.nn.functional.one_hot(torch.tensor([0]), K).float()  # (1, K): one class for the whole batch
    ms_t = cpu_ms_per_step(te, 64, 1, cond=row)
    ms_u = cpu_ms_per_step(u, 64, 1, cond=row)
    report["cpu_ms_per_step"] = {"teacher": ms_t, "clone": ms_u, "x_faster": ms_t / ms_u, "batch": 64, "threads": 1}
    print(f"CPU per step, batch 64, 1 thread: clone {ms_u:.1f} ms, teacher {ms_t:.1f} ms ({ms_t / ms_u:.2f}x faster)")
    report["seconds"] = time.perf_counter() - t0
    if a.grid:
        from PIL import Image

        n = min(len(asked), 4 * K)
        Path(a.grid).parent.mkdir(parents=True, exist_ok=True)
        both = torch.cat([to_unit(mine[:n], pr), to_unit(theirs[:n], pr)])
        Image.fromarray(grid_image(both, K)).save(a.grid)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
