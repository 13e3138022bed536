"""Would a per-pixel stack of its own for the low-noise steps fix an O-UNet's last steps? Evolved and gradient.

    python bench/ounet_low_noise.py --ounet mnist --store STORE --teacher ddpm-mnist:PATH [--split 400] \
        [--evolve-seconds 600] [--adam-seconds 300] [--rows 300000] [--seed 5000] [--png low_noise.png]

The O-UNet's samples break in the last DDIM steps (bench/ounet_hybrid.py). This fits, on update-weighted
rows of records with t < --split only (the O-UNet's own frozen coarse stage feeding them), two fresh stacks of
the O-UNet's per-pixel shape: one by evolution (`ola.fit`, the trainer's engine) and one by Adam (a
reference only, never used for training). Each replaces the O-UNet's stack below --split; the table gives
the held-out v MSE on low-noise rows and the 8-step PSNR against the teacher of the clone alone and of the
teacher's first six steps followed by the clone's. The PNG rows: teacher; O-UNet alone; with the evolved
specialist; with the Adam specialist; then the teacher's first six steps followed by each of the three.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from organic_sd import ola
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ounet import generate as gen
from organic_sd.ounet.low import below_split_weights
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.train import draw_rows
from organic_sd.teachers.ddim import seeded_noise

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ounet_hybrid import mixed_path  # noqa: E402
from ounet_reference import adam_fit  # noqa: E402


class LowNoiseSplit(torch.nn.Module):
    """An O-UNet whose per-pixel stack is `low` for steps t < split: what ddim_sample needs of a denoiser."""

    def __init__(self, u: OUNet, low: ola.OLAModule, split: int, config=None):
        """`config`: the specialist's O-UNet config when it differs from u's (another target); default u's."""
        super().__init__()
        self.u, self.low, self.split = u, OUNet(config or u.config, low, u.schedule, stage=u.stage), split
        self.alphas_cumprod, self.sample_shape = u.alphas_cumprod, u.sample_shape

    @property
    def device(self):
        return self.u.device

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        out = self.u(x_t, t)
        below = t < self.split
        if below.any():
            out[below] = self.low(x_t[below], t[below])
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ounet", default="mnist", help="a multi-scale O-UNet (file, run or shipped name)")
    p.add_argument("--store", required=True, help="a denoiser store of its teacher")
    p.add_argument("--teacher", required=True)
    p.add_argument("--split", type=int, default=400, help="the specialists take the steps t < split")
    p.add_argument("--evolve-seconds", type=float, default=600.0)
    p.add_argument("--adam-seconds", type=float, default=300.0)
    p.add_argument("--rows", type=int, default=300_000, help="training rows of the specialists")
    p.add_argument("--n", type=int, default=64, help="samples of the PSNR comparison")
    p.add_argument("--seed", type=int, default=5000, help="noise seed (a dev seed: a diagnosis)")
    p.add_argument("--png", default=None)
    args = p.parse_args(argv)

    from organic_sd.teachers import load_denoiser

    u = OUNet.load(args.ounet)
    if u.stage is None or u.config.cond_dim:
        raise SystemExit(f"{args.ounet}: this diagnosis runs unconditional multi-scale O-UNets")
    store = DenoiserStore.open(args.store)
    cpu = torch.device("cpu")

    def probs(pool):  # update-weighted (the O-UNet's target, 8 steps), records below the split only
        return below_split_weights(u.config.target, u.schedule, store.t[pool], args.split)

    rng = np.random.default_rng(0)
    tr, va = store.indices("train"), store.indices("val")
    x, y = draw_rows(u.config, u.schedule, store, tr, args.rows, rng, cpu, None, u.stage, probs(tr))
    xv, yv = draw_rows(u.config, u.schedule, store, va, 60_000, rng, cpu, None, u.stage, probs(va))
    t0 = time.perf_counter()
    evolved = ola.fit(x, y, hidden=u.module.config.hidden, out_scale=u.module.config.out_scale,
                      max_seconds=args.evolve_seconds, units_per_round=16, seed=0)
    t_evolve = time.perf_counter() - t0
    adam, _ = adam_fit(u.module, x, y, xv, yv, args.adam_seconds, batch=4096)
    del x, y

    teacher = load_denoiser(args.teacher)
    noise = seeded_noise(u.sample_shape, args.n, args.seed)
    pr = u.config.pixel_range
    ref = mixed_path(teacher, teacher, 0, noise, 8)
    models = {"O-UNet alone": u, f"+ evolved specialist ({t_evolve:.0f} s)": LowNoiseSplit(u, evolved, args.split),
              f"+ Adam specialist ({args.adam_seconds:g} s)": LowNoiseSplit(u, adam, args.split)}
    stacks = [u.module, evolved, adam]
    print(f"| below t = {args.split} | held-out v MSE (low-noise rows) | clone alone, 8 steps | teacher 6 steps, "
          "then the clone |\n| --- | ---: | ---: | ---: |")
    alone, finish = [], []
    for (name, m), stack in zip(models.items(), stacks):
        with torch.no_grad():
            mse = float((stack(xv) - yv).square().mean())
        alone.append(mixed_path(m, m, 8, noise, 8))
        finish.append(mixed_path(teacher, m, 6, noise, 8))
        a, b = (gen.psnr_unit(gen.to_unit(s, pr), gen.to_unit(ref, pr)) for s in (alone[-1], finish[-1]))
        print(f"| {name} | {mse:.5f} | {a:.2f} dB | {b:.2f} dB |")
    if args.png:
        from PIL import Image

        show = min(12, args.n)
        img = np.concatenate([gen.grid_image(gen.to_unit(r[:show], pr), show) for r in [ref, *alone, *finish]], 0)
        Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
