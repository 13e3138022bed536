"""A convolutional decoder by Adam at the O-VAE pair's budget: how far any small decoder gets on unseen photos.

    python bench/conv_decoder_reference.py --store st6 --teacher taef2 [--jitter 1] [--seconds 240] \
        [--device cuda] --score st6=st6:val sk=sk:all s14=s14:all [--compare shipped=PATH ...] [--json OUT]

Issue 24 asks the O-Decoder for 24.0 dB on unseen photos. The staged OLA family's own Adam reference stops at
24.6 dB on the store's held-out photos and 23.3 on Set14 (docs/BENCHMARKS.md), so this asks whether the budget
itself, not the family, is the limit: a plain conv decoder (3x3 convolutions, ReLU, nearest x2 upsampling,
latent -> 1/4 -> 1/2 -> full resolution; about 245 k parameters, so that with the shipped 134 k O-Encoder the pair
stays under issue 24's 400 k), fitted by Adam on the training split of --store. Its rows come from the teacher in
the loop: --crop (128) pixel crops of the store's training images (x2 flips), encoded and decoded by the teacher
on the fly, so that --jitter can also change their colours first (a channel permutation, saturation, gamma and a
per-channel gain, scaled by --jitter) and ask whether colour variety is the data lever unseen photos want. A
reference only: it is never a product path, and `osd train` stays gradient-free.

Each --score NAME=STORE:SPLIT (SPLIT val, train or all) reports the mean per-image PSNR / SSIM / MS-SSIM of the
decoder on the store's teacher latents against the teacher's decode (bench/heldout_decoders.score, as every decoder
in BENCHMARKS), and each --compare NAME=PATH (an O-VAE file or run) is scored on the same images for the same table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from heldout_decoders import score  # bench/heldout_decoders.py: the held-out metrics every decoder table uses
from torch import nn

from organic_sd.data.store import Store
from organic_sd.devices import resolve_device
from organic_sd.ovae.model import read_parts
from organic_sd.teachers import load_teacher

PERMUTATIONS = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]])


class ConvDecoder(nn.Module):
    """Latents (B, C, h, w) -> images (B, 3, 8h, 8w) in about [-1, 1]: 3x3 convs at 1/8, 1/4, 1/2 and full size."""

    def __init__(self, latent_channels: int, widths=(96, 64, 48, 32)):
        super().__init__()
        w8, w4, w2, w1 = widths
        self.body = nn.Sequential(
            nn.Conv2d(latent_channels, w8, 3, padding=1), nn.ReLU(), nn.Conv2d(w8, w8, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(w8, w4, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w4, w4, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(w4, w2, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(w2, w1, 3, padding=1), nn.ReLU(), nn.Conv2d(w1, 3, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)

    def num_parameters(self) -> int:
        """Weights and biases, as the O-VAE parts count theirs."""
        return sum(p.numel() for p in self.parameters())


class OnDevice:
    """The decoder as heldout_decoders.score calls one: CPU latents in, CPU images clamped to [-1, 1] out."""

    def __init__(self, net: ConvDecoder, device: torch.device):
        self.net, self.device = net, device

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.to(self.device)).clamp(-1, 1).cpu()

    def num_parameters(self) -> int:
        return self.net.num_parameters()


def jitter_colours(x: torch.Tensor, strength: float, gen: torch.Generator) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the same images with seeded random colours: a channel permutation (half of them),
    saturation x [1 - s/2, 1 + s/2], gamma exp(+-0.4 s) and a per-channel gain exp(+-0.15 s); 0 leaves x as it is."""
    if strength <= 0:
        return x
    B, dev = x.shape[0], x.device
    u = lambda *shape: torch.rand(*shape, generator=gen).to(dev)  # noqa: E731 - uniform [0, 1) draws, seeded on the CPU
    perm = PERMUTATIONS[torch.randint(len(PERMUTATIONS), (B,), generator=gen)]  # (B, 3)
    keep = torch.rand(B, generator=gen) < 0.5
    perm[keep] = torch.arange(3)
    y = x.add(1).div(2).gather(1, perm.to(dev)[:, :, None, None].expand_as(x))  # (B, 3, H, W) in [0, 1]
    grey = y.mean(1, keepdim=True)
    y = grey + (y - grey) * (1 + strength * (u(B, 1, 1, 1) - 0.5))
    y = y.clamp(0, 1).pow(torch.exp(0.8 * strength * (u(B, 1, 1, 1) - 0.5)))
    y = y * torch.exp(0.3 * strength * (u(B, 3, 1, 1) - 0.5))
    return y.clamp(0, 1).mul(2).sub(1)


def draw_batch(images: torch.Tensor, batch: int, crop: int, rng: np.random.Generator) -> torch.Tensor:
    """`batch` random crop x crop squares (B, 3, crop, crop) of images (N, 3, H, W), on the latent grid, half of
    them mirrored."""
    H, W = images.shape[-2:]
    out = []
    for i in rng.integers(0, len(images), batch):
        top, left = rng.integers(0, H - crop + 1) // 8 * 8, rng.integers(0, W - crop + 1) // 8 * 8
        x = images[i, :, top:top + crop, left:left + crop]
        out.append(x.flip(-1) if rng.random() < 0.5 else x)
    return torch.stack(out)


def fit(net: ConvDecoder, teacher, images: torch.Tensor, seconds: float, batch: int, crop: int, jitter: float,
        seed: int) -> dict:
    """Adam on (teacher latents, teacher decode) pairs of fresh crops of images (N, 3, H, W) in [-1, 1], on the
    net's device, until `seconds` pass; lr 2e-3 falling to 2e-4 on a cosine."""
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    # the last 200 losses stay on the device: reading each one back would stall the GPU every step
    t0, steps, losses = time.perf_counter(), 0, deque(maxlen=200)
    while (elapsed := time.perf_counter() - t0) < seconds:
        for g in opt.param_groups:
            g["lr"] = 2e-4 + 0.5 * (2e-3 - 2e-4) * (1 + math.cos(math.pi * min(elapsed / seconds, 1.0)))
        x = jitter_colours(draw_batch(images, batch, crop, rng), jitter, gen)
        z = teacher.encode(x)  # (B, C, crop/8, crop/8)
        y = teacher.decode(z)  # (B, 3, crop, crop) in [-1, 1]
        loss = F.mse_loss(net(z), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        losses.append(loss.detach())
    return {"steps": steps, "seconds": time.perf_counter() - t0, "last_loss": float(torch.stack(list(losses)).mean())}


def indices(store: Store, split: str) -> np.ndarray:
    """The store's samples of one split, or all of them (a store of photos nothing was trained on)."""
    if split == "all":
        return np.sort(np.concatenate([store.indices("train"), store.indices("val")]))
    return store.indices(split)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="the O-VAE store whose training split it is fitted on")
    ap.add_argument("--teacher", required=True, help="the store's VAE teacher (encodes and decodes the crops)")
    ap.add_argument("--score", nargs="+", required=True, help="NAME=STORE:SPLIT (val, train or all) ...")
    ap.add_argument("--compare", nargs="*", default=[], help="NAME=PATH O-VAE decoders scored on the same images")
    ap.add_argument("--jitter", type=float, default=0.0, help="colour jitter strength (0: the crops as they are)")
    ap.add_argument("--seconds", type=float, default=240.0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", type=int, default=128, help="side of a training crop in pixels (a multiple of 8)")
    ap.add_argument("--widths", type=int, nargs=4, default=(96, 64, 48, 32))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="the report, rewritten after the fit and after every score")
    ap.add_argument("--save", default=None, help="write the fitted net's weights here (torch.save) before scoring")
    a = ap.parse_args(argv)
    if a.crop % 8 or a.crop < 8:
        raise SystemExit(f"--crop {a.crop}: give a positive multiple of 8 (the teacher's latent cell)")
    device = resolve_device(a.device)
    torch.manual_seed(a.seed)
    store = Store.open(a.store)
    teacher = load_teacher(a.teacher, device)
    net = ConvDecoder(teacher.latent_channels, a.widths).to(device)
    train_images = torch.from_numpy(np.asarray(store.images[store.indices("train")], np.float32)).to(device)
    if min(train_images.shape[-2:]) < a.crop:
        raise SystemExit(f"--crop {a.crop}: the store's images are {tuple(train_images.shape[-2:])}")
    print(f"conv decoder: {net.num_parameters():,d} parameters, jitter {a.jitter}, {a.seconds:.0f} s on {device}",
          flush=True)
    report = {"args": vars(a), "parameters": net.num_parameters(), "scores": {},
              "fit": fit(net, teacher, train_images, a.seconds, a.batch, a.crop, a.jitter, a.seed)}
    print(f"  {report['fit']['steps']} Adam steps, last loss {report['fit']['last_loss']:.5f}", flush=True)
    # a call cut while scoring (a device call's step limit) still leaves the fit and every score taken so far
    write = lambda: a.json and Path(a.json).write_text(json.dumps(report, indent=1, default=str))  # noqa: E731
    if a.save:
        torch.save(net.state_dict(), a.save)
    write()
    net.eval()
    decoders = {"conv": OnDevice(net, device)}
    decoders.update({n: read_parts(p)["decoder"] for n, _, p in (c.partition("=") for c in a.compare)})
    for spec in a.score:
        name, _, where = spec.partition("=")
        path, _, split = where.rpartition(":")
        if split not in ("val", "train", "all"):
            raise SystemExit(f"--score {spec}: give NAME=STORE:SPLIT with SPLIT val, train or all")
        s = Store.open(path)
        idx = indices(s, split)
        for d, dec in decoders.items():
            r = score(dec, s, idx)
            report["scores"].setdefault(name, {})[d] = r
            m = r["odec_vs_teacher"]
            print(f"{name:6s} {d:10s} {len(idx):4d} images: PSNR {m['psnr']:.2f} dB SSIM {m['ssim']:.4f} "
                  f"MS-SSIM {m['ms_ssim']:.4f}", flush=True)
            write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
