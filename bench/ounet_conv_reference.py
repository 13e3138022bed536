"""Does spatial depth give an O-UNet's samples the teacher's fine structure? A small conv net by Adam, a reference.

    python bench/ounet_conv_reference.py --ounet mnist --store STORE --teacher ddpm-mnist:PATH [--seconds 360] \
        [--channels 32] [--n 1000] [--seed 5002] [--device cpu] [--below T] [--png conv.png] [--json OUT]

Every per-pixel stack, and a 14x14 mid stage beside one, leaves most of the fine-structure gap (low-noise
error 0.067-0.073 by Adam against the teacher's 0.051; docs/BENCHMARKS.md). This fits, with Adam only (a
reference of another architecture, never reachable from `fit` or the trainers), three 5x5 tanh convolutions
and a 1x1 readout on the O-UNet's own frozen coarse map: inputs x_t, the upsampled coarse prediction,
sqrt(ab) and sqrt(1 - ab) as four channels, output the O-UNet's target (v), on update-weighted store records.
Three stacked layers see 13x13 pixels through nonlinear features of nonlinear features, the depth the
per-pixel stacks lack. Reported: held-out target MSE, and on --n 8-step samples from noise --seed the
low-noise error (metrics/denoising.py, the teacher judging) and KID / precision / recall against the
teacher's 50-step samples. The default seed is the dev seed's noise: a diagnosis, which chooses nothing.

--below T: the net is fitted on records with t < T only and samples with it at those steps, the O-UNet at the
others (the last two of 8 DDIM steps are t = 250 and 125: --below 300 asks whether depth at those two steps alone
draws the O-UNet's shapes as the teacher's last two steps do). The PNG then shows 64 samples: the teacher's 8
steps | the O-UNet alone | the O-UNet with the net below T.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ounet_split_paths import SplitPath  # bench/ounet_split_paths.py: the net below --below, the O-UNet above
from torch import nn

from organic_sd.files import atomic_json
from organic_sd.metrics.denoising import denoising_error
from organic_sd.metrics.samples import distribution_report
from organic_sd.ounet import distribution as dist
from organic_sd.ounet import generate as gen
from organic_sd.ounet.model import OUNet
from organic_sd.ounet.stage import stage_map
from organic_sd.ounet.targets import draw_records, from_eps, record_weights, to_eps


class ConvReference(nn.Module):
    """x_t and the O-UNet's frozen coarse map -> its target, by three 5x5 tanh convolutions: a Denoiser for ddim."""

    def __init__(self, u: OUNet, channels: int = 32):
        super().__init__()
        C = u.config.sample_shape[0]
        self.u = u
        self.layers = nn.ModuleList([nn.Conv2d(2 * C + 2, channels, 5, padding=2),
                                     nn.Conv2d(channels, channels, 5, padding=2),
                                     nn.Conv2d(channels, channels, 5, padding=2)])
        self.readout = nn.Conv2d(channels, C, 1)
        self.alphas_cumprod, self.sample_shape = u.alphas_cumprod, u.sample_shape

    @property
    def device(self) -> torch.device:
        return self.readout.weight.device

    def inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) x_t, (B,) t -> (B, 2 C + 2, H, W): x_t, the coarse prediction, sqrt(ab), sqrt(1 - ab)."""
        u = self.u
        with torch.no_grad():
            coarse = stage_map(u.config, u.stage, u._schedule.to(x_t.device), x_t, t)
        ab = u._schedule.to(x_t.device)[t].float()[:, None, None, None].expand(-1, 1, *x_t.shape[2:])
        return torch.cat([x_t, coarse, ab.sqrt(), (1 - ab).sqrt()], 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            z = torch.tanh(layer(z))
        return self.readout(z)

    def eps(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        t = torch.as_tensor(t, device=x_t.device).reshape(-1).expand(x_t.shape[0])
        with torch.no_grad():
            out = self(self.inputs(x_t, t))
            return to_eps(self.u.config.target, out, x_t, self.u._schedule.to(x_t.device)[t].float())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ounet", default="mnist")
    p.add_argument("--store", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--seconds", type=float, default=360.0)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--batch", type=int, default=64, help="records per Adam step (every pixel of each)")
    p.add_argument("--records", type=int, default=20_000, help="update-weighted training records, loaded once")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=5002)
    p.add_argument("--device", default="cpu")
    p.add_argument("--below", type=int, default=0, help="fit and use the net only at steps t < BELOW (0: every step)")
    p.add_argument("--png", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from organic_sd.data.denoiser_store import DenoiserStore
    from organic_sd.teachers import load_denoiser

    dev = torch.device(args.device)
    u = OUNet.load(args.ounet, device=dev)
    if u.stage is None or u.config.cond_dim:
        raise SystemExit(f"{args.ounet}: this reference runs unconditional multi-scale O-UNets")
    store = DenoiserStore.open(args.store)
    torch.manual_seed(0)
    net = ConvReference(u, args.channels).to(dev)
    rng = np.random.default_rng(0)
    tr, va = store.indices("train"), store.indices("val")

    def load(pool, n):
        """n update-weighted records of pool, on the device: inputs (n, 2C+2, H, W), targets (n, C, H, W)."""
        w = record_weights("update", u.config.target, u.schedule, store.t[pool], 8)
        if args.below:
            w = w * (np.asarray(store.t[pool]).round() < args.below)
            if w.sum() == 0:
                raise SystemExit(f"--below {args.below}: the store holds no records below that step")
            w = w / w.sum()
        idx = np.sort(draw_records(rng, pool, n, w))
        zs, ys = [], []
        for i in range(0, len(idx), 4096):
            j = idx[i:i + 4096]
            x_t = torch.from_numpy(store.x_t[j]).to(dev)
            t = torch.from_numpy(store.t[j]).round().long().to(dev)
            ys.append(from_eps(u.config.target, torch.from_numpy(store.eps[j]).to(dev), x_t,
                               u._schedule.to(dev)[t].float()))
            zs.append(net.inputs(x_t, t))
        return torch.cat(zs), torch.cat(ys)

    # every record loaded once: reading a memmapped store per step left a GPU at 725 steps in 300 s
    z_all, y_all = load(tr, args.records)
    zv, yv = load(va, 512)
    gen_idx = torch.Generator(device=dev).manual_seed(0)

    def batch():
        i = torch.randint(0, z_all.shape[0], (args.batch,), device=dev, generator=gen_idx)
        return z_all[i], y_all[i]
    own = [p for name, p in net.named_parameters() if not name.startswith("u.")]  # the O-UNet stays frozen
    opt = torch.optim.Adam(own, lr=2e-3)
    t0, steps, best, state = time.perf_counter(), 0, math.inf, None
    while (el := time.perf_counter() - t0) < args.seconds:
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * min(1.0, el / args.seconds)))
        z, y = batch()
        loss = F.mse_loss(net(z), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if steps % 200 == 0:
            with torch.no_grad():
                v = float(F.mse_loss(net(zv), yv))
            if v < best:
                best, state = v, {k: x.detach().clone() for k, x in net.state_dict().items()}
    if state is not None:
        net.load_state_dict(state)
    net.requires_grad_(False).eval()
    params = sum(p.numel() for p in own)
    print(f"{params:,} parameters, {steps} Adam steps in {args.seconds:g} s, held-out target MSE {best:.5f}")

    teacher = load_denoiser(args.teacher, device=dev)
    pr = u.config.pixel_range
    noise = gen.seeded_noise(u.sample_shape, args.n, args.seed).to(dev)
    ref, few = dist.draw(teacher, noise, dist.REF_STEPS), dist.draw(teacher, noise, dist.STEPS)
    res = {"args": vars(args), "parameters": params, "adam_steps": steps, "heldout_mse": best, "samples": {}}
    print("| 8-step samples | low-noise error | KID x1000 / P / R |\n| --- | ---: | --- |")
    mine = SplitPath(u, net, args.below) if args.below else net  # the net below T, the O-UNet from T on
    label = f"O-UNet, conv net (Adam) below t = {args.below}" if args.below else "conv net (Adam)"
    drawn = {}
    for name, model in (("teacher", teacher), ("O-UNet (evolved)", u), (label, mine)):
        x = drawn[name] = few if model is teacher else dist.draw(model, noise, dist.STEPS)
        d = distribution_report(ref, x, pr, paired=True)
        r = {"denoise_err": float(denoising_error(teacher, x, pr).mean()),
             **{k: d[k] for k in ("kid_x1000", "precision", "recall")}}
        res["samples"][name] = r
        print(f"| {name} | {r['denoise_err']:.4f} | {r['kid_x1000']:.1f} / {r['precision']:.3f} / {r['recall']:.3f} |")
        if args.png and model is mine and not args.below:
            from PIL import Image

            img = gen.grid_image(gen.to_unit(x[:32], pr), 8)
            Image.fromarray(img).resize((img.shape[1] * 4, img.shape[0] * 4), Image.NEAREST).save(args.png)
    if args.png and args.below:
        unit = {k: gen.to_unit(drawn[n], pr) for k, n in (("reference", "teacher"), ("teacher", "O-UNet (evolved)"),
                                                          ("ounet", label))}
        dist.write_grid(Path(args.png), unit, show=64)
    if args.json:
        atomic_json(Path(args.json), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
