"""Which DDIM steps break an O-UNet's samples: the clone for some steps of the path, the teacher for the rest.

    python bench/ounet_hybrid.py --ounet mnist --teacher ddpm-mnist:PATH [--steps 8] [--n 64] [--seed 5000] \
        [--png hybrid.png] [--json hybrid.json] [--x0-png x0.png]

From the same noise, for m = 0, 2, 4, 6 ... steps: the clone takes the first m steps and the teacher the rest
("clone first m"), and the reverse ("teacher first m"). Each path's samples are compared with the teacher's
own path by PSNR (pixel range -> [0, 1]). A clone whose samples turn good once the teacher finishes them
chose the right digit and fails at low noise; one that ruins the teacher's start fails at the end.
The PNG stacks one row of samples per path, the teacher's own on top.

Along the clone's own path (--x0-png, and "clone_path" in the JSON), at every step: the teacher's x0 estimate
from the clone's state, the clone's, and the teacher's finish from that state. Where the clone's x0 leaves the
teacher's, and from which state the teacher can no longer finish the digit it would have drawn, is where the
clone loses it.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from organic_sd.ounet import generate as gen
from organic_sd.ounet.model import OUNet
from organic_sd.teachers.ddim import ddim_step, ddim_timesteps, seeded_noise


def run_steps(model, x: torch.Tensor, ab: torch.Tensor, ts: list[int], ks) -> torch.Tensor:
    """x after the DDIM steps ts[k], k in ks, all taken by `model` (ab: the alpha-bar schedule)."""
    with torch.no_grad():
        for k in ks:
            e = model.eps(x, torch.full((x.shape[0],), ts[k], dtype=torch.int64)).to(x.device)
            x = ddim_step(x, e, float(ab[ts[k]]), float(ab[ts[k + 1]]) if k + 1 < len(ts) else 1.0)
    return x


def mixed_path(first, rest, m: int, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """(N, C, H, W) noise -> samples of a `steps`-step DDIM path whose first m steps `first` takes, the rest `rest`."""
    ab = first.alphas_cumprod
    ts = ddim_timesteps(len(ab), steps)
    return run_steps(rest, run_steps(first, noise, ab, ts, range(m)), ab, ts, range(m, len(ts)))


def along_clone_path(u, teacher, noise: torch.Tensor, steps: int) -> list[dict]:
    """At each step of u's own DDIM path: {t, teacher_x0, clone_x0, teacher_finish} (N, C, H, W) each, from
    u's state at that step (the teacher finishes with the path's remaining steps)."""
    ab = u.alphas_cumprod
    ts = ddim_timesteps(len(ab), steps)
    x, out = noise, []
    with torch.no_grad():
        for k, t in enumerate(ts):
            a, a_next = float(ab[t]), float(ab[ts[k + 1]]) if k + 1 < len(ts) else 1.0
            tt = torch.full((x.shape[0],), t, dtype=torch.int64)
            e_u, e_t = u.eps(x, tt).to(x.device), teacher.eps(x, tt).to(x.device)
            finish = run_steps(teacher, ddim_step(x, e_t, a, a_next), ab, ts, range(k + 1, len(ts)))
            out.append({"t": t, "teacher_x0": (x - (1 - a) ** 0.5 * e_t) / a ** 0.5,
                        "clone_x0": (x - (1 - a) ** 0.5 * e_u) / a ** 0.5, "teacher_finish": finish})
            x = ddim_step(x, e_u, a, a_next)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ounet", default="mnist", help="O-UNet file, run folder or shipped name (unconditional)")
    p.add_argument("--teacher", required=True, help="its teacher, e.g. ddpm-mnist:PATH")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=5000, help="noise seed (a dev seed: this is a diagnosis)")
    p.add_argument("--show", type=int, default=12, help="samples per row of the PNG")
    p.add_argument("--png", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--x0-png", default=None, help="along the clone's path: per step, the teacher's x0 estimate, the "
                                                  "clone's, and the teacher's finish from the clone's state")
    args = p.parse_args(argv)

    from organic_sd.teachers import load_denoiser

    u = OUNet.load(args.ounet)
    if u.config.cond_dim:
        raise SystemExit(f"{args.ounet} is conditional: this diagnosis runs unconditional O-UNets")
    teacher = load_denoiser(args.teacher)
    noise = seeded_noise(u.sample_shape, args.n, args.seed)
    pr = u.config.pixel_range
    ref = gen.to_unit(mixed_path(teacher, teacher, 0, noise, args.steps), pr)
    path = along_clone_path(u, teacher, noise, args.steps)
    rows, results = [("teacher", ref)], []
    for who, first, rest in (("clone first", u, teacher), ("teacher first", teacher, u)):
        for m in range(2, args.steps + 1, 2) if who == "clone first" else range(2, args.steps, 2):
            if who == "clone first":  # the clone's path, the teacher finishing from step m (at the end: its sample)
                x = path[m]["teacher_finish"] if m < args.steps else path[-1]["clone_x0"]
            else:
                x = mixed_path(first, rest, m, noise, args.steps)
            x = gen.to_unit(x, pr)
            clone_steps = m if who == "clone first" else args.steps - m
            name = f"{who} {m}" if 0 < m < args.steps else ("clone alone" if clone_steps else "teacher alone")
            psnr = gen.psnr_unit(x, ref)
            results.append({"path": name, "clone_steps": clone_steps, "psnr_db": psnr})
            rows.append((name, x))
            print(f"{name:>16}: clone takes {clone_steps} of {args.steps} steps, PSNR vs teacher {psnr:.2f} dB")
    lo, hi = pr
    along = []
    for k, st in enumerate(path):
        # the clone's x0 against the teacher's from the same state, in the clean range, relative to its power
        tx0, cx0 = st["teacher_x0"].clamp(lo, hi), st["clone_x0"].clamp(lo, hi)
        rel = float((cx0 - tx0).square().mean() / (tx0 - tx0.mean()).square().mean().clamp_min(1e-12))
        fin = gen.psnr_unit(gen.to_unit(st["teacher_finish"], pr), ref)
        along.append({"step": k + 1, "t": st["t"], "clone_x0_rel_err": rel, "teacher_finish_psnr_db": fin})
        print(f"clone's own path, step {k + 1} (t = {st['t']}): its x0 vs the teacher's from the same state, relative "
              f"error {rel:.3f}; the teacher finishing from here: PSNR vs teacher {fin:.2f} dB", flush=True)
    if args.x0_png:
        from PIL import Image

        bands = [gen.grid_image(torch.cat([gen.to_unit(st[k][:args.show], pr)
                                           for k in ("teacher_x0", "clone_x0", "teacher_finish")]), args.show)
                 for st in path]
        gap = np.full((3, bands[0].shape[1], 3), 255, np.uint8)  # white between steps
        img = np.concatenate([part for b in bands for part in (b, gap)][:-1])
        Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(args.x0_png)
    if args.png:
        from PIL import Image

        bands = [gen.grid_image(x[:args.show], args.show) for _, x in rows]
        img = np.concatenate(bands, 0)
        Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(args.png)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "paths": results, "clone_path": along}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
