"""Class fidelity of a class-conditional teacher's own few-step DDIM samples (organic_sd/metrics/class_fidelity.py).

    python bench/class_fidelity.py --teacher dit-mnist-cond:../shared/data/teachers/dit-mnist-cond \
        --steps 8 --per-class 20 --seed 0 --json runs/fidelity-teacher.json --grid runs/fidelity-teacher.png

The samples' noise comes from --seed; the classifier's probes are fixed (seed 100 chose them: use others).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from organic_sd.metrics.class_fidelity import class_fidelity, teacher_samples
from organic_sd.teachers import load_denoiser


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="a class-conditional denoiser spec, e.g. dit-mnist-cond:PATH")
    ap.add_argument("--steps", type=int, default=8, help="DDIM steps of the samples")
    ap.add_argument("--per-class", type=int, default=20, help="samples per class")
    ap.add_argument("--seed", type=int, default=0, help="noise seed of the samples")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", default=None, help="write the report here")
    ap.add_argument("--grid", default=None, help="write the samples here as a PNG grid: one column per class")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    te = load_denoiser(a.teacher, device=a.device)
    t0 = time.perf_counter()
    images, asked = teacher_samples(te, a.per_class, a.steps, a.seed)
    rep = class_fidelity(te, images, asked)
    seconds = time.perf_counter() - t0
    print(f"{te.id}, {a.steps}-step DDIM, seed {a.seed}: {rep.summary()}\n({seconds:.0f} s)")
    if a.grid:
        from PIL import Image

        from organic_sd.ounet.generate import grid_image, to_unit

        # samples come class 0..K-1, then again: rows of the grid hold one sample of every class
        Path(a.grid).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid_image(to_unit(images, te.pixel_range), len(rep.classes))).save(a.grid)
    if a.json:
        out = {"teacher": te.id, "steps": a.steps, "per_class": a.per_class, "seed": a.seed, "seconds": seconds,
               **rep.to_dict()}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
