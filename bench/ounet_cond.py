"""A class-conditional O-UNet against its teacher: class fidelity by class and by held-out prompt, PSNR, speed.

    python bench/ounet_cond.py --ounet RUN_OR_FILE --teacher dit-mnist-cond:PATH --per-class 50 --seed 7 \
        --json runs/cond.json --grid runs/cond.png [--guidance 2]

Samples: 8-step DDIM of the clone and of the teacher from the same seeded noise and the same class,
`--per-class` of each class (noise seed --seed; use seeds that chose nothing). Class fidelity
(organic_sd/metrics/class_fidelity.py): the teacher, used as a classifier, names the class of
every sample; the share named as the class asked for. With a prompt adapter in the O-UNet and the
text extra installed, the same is measured through the held-out phrasings (organic_sd/text/phrasings.py):
each phrasing's class as the adapter reads it, then samples of that class. Distribution: pooled KID /
precision / recall (metrics/samples.py) of the clone's and the teacher's samples against the teacher's
--ref-steps-step samples from the same noise and class, over all classes and per class. Speed: one eps call,
batch 64, one CPU thread, the clone's time against the teacher's in the same process (median of 7).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from organic_sd.metrics.class_fidelity import class_fidelity, per_class_distribution
from organic_sd.metrics.samples import distribution_report
from organic_sd.ounet import OUNet
from organic_sd.ounet.evaluate import cpu_ms_per_step
from organic_sd.ounet.generate import grid_image, psnr_unit, to_unit
from organic_sd.teachers import load_denoiser
from organic_sd.teachers.ddim import ddim_sample, seeded_noise


def paired_samples(u, teacher, classes: torch.Tensor, steps: int, seed: int, guidance: float = 1.0,
                   ref_steps: int = 0):
    """(N,) class indices -> the clone's and the teacher's (N, C, H, W) samples from the same noise, clamped
    (the clone's class rows guided by `guidance`, the teacher's one-hot), and with ref_steps > 0 the teacher's
    ref_steps-step samples from that noise too (else None)."""
    noise = seeded_noise(u.sample_shape, len(classes), seed)  # (N, C, H, W)
    rows = torch.nn.functional.one_hot(classes, len(u.config.classes)).float()  # (N, K)
    lo, hi = u.config.pixel_range
    with torch.no_grad():
        mine = ddim_sample(u, noise, steps, u.class_rows(classes, len(classes), guidance)).cpu().clamp(lo, hi)
        theirs = ddim_sample(teacher, noise, steps, rows).cpu().clamp(lo, hi)
        ref = ddim_sample(teacher, noise, ref_steps, rows).cpu().clamp(lo, hi) if ref_steps else None
    return mine, theirs, ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ounet", default="mnist-cond", help="class-conditional O-UNet (file, run, shipped name)")
    ap.add_argument("--teacher", required=True, help="its teacher, e.g. dit-mnist-cond:PATH")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=7, help="noise seed of the samples")
    ap.add_argument("--guidance", type=float, default=1.0, help="the clone's class-row guidance (OUNet.class_rows)")
    ap.add_argument("--ref-steps", type=int, default=50,
                    help="the teacher's DDIM steps for the distribution reference (0: no distribution measures)")
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
    mine, theirs, ref = paired_samples(u, te, asked, a.steps, a.seed, a.guidance, a.ref_steps)
    fid_u, fid_t = class_fidelity(te, mine, asked), class_fidelity(te, theirs, asked)
    pr = u.config.pixel_range
    report = {"ounet": str(a.ounet), "teacher": te.id, "steps": a.steps, "per_class": a.per_class, "seed": a.seed,
              "guidance": a.guidance, "parameters": u.num_parameters(), "clone": fid_u.to_dict(),
              "teacher_fidelity": fid_t.to_dict(), "psnr_same_noise": psnr_unit(to_unit(mine, pr), to_unit(theirs, pr))}
    print(f"class fidelity, {a.steps}-step DDIM, {len(asked)} samples (seed {a.seed}, guidance {a.guidance:g}): "
          f"clone {fid_u.summary()}")
    print(f"  teacher {fid_t.summary()}")
    if ref is not None:
        # against the teacher's many-step samples from the same noise and class: pooled shape space (O-UNet issue)
        report["distribution"] = dist = {"reference": f"teacher, {a.ref_steps} steps, same noise and class"}
        for name, x in (("teacher", theirs), ("clone", mine)):
            dist[name] = {"all": distribution_report(ref, x, pr, paired=True),
                          "per_class": per_class_distribution(ref, asked, x, asked, u.config.classes, pr, paired=True)}
            d = dist[name]["all"]
            print(f"  {name}, {a.steps} steps, against the teacher's {a.ref_steps}-step samples: KID x1000 "
                  f"{d['kid_x1000']:.1f}, precision {d['precision']:.3f}, recall {d['recall']:.3f}")
    print(f"same-noise PSNR clone vs teacher: {report['psnr_same_noise']:.2f} dB; {u.num_parameters():,} parameters")
    if u.prompts is not None:
        try:
            from organic_sd.text.phrasings import phrasing_set

            held, held_k = phrasing_set("held-out")
            read = torch.tensor([c for c, _, _ in u.prompts.classify(held)])  # (P,) the class each phrasing asks for
            reps = max(1, a.per_class * K // len(held))
            want = torch.tensor(held_k).repeat(reps)
            got_cls = read.repeat(reps)
            mine_p, _, _ = paired_samples(u, te, got_cls, a.steps, a.seed + 1, a.guidance)
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
