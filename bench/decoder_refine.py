"""Depth at full resolution: one evolved refinement stage on a frozen patch O-Decoder (issue 24).

    python bench/decoder_refine.py --store STORE [--ovae FILE] [--minutes 10] [--hidden 16] [--window 3] \
        [--latent 1] [--carry 1] [--max-rows 200000] [--seed 1] [--out refined.safetensors] [--json OUT]

A patch decoder writes each 8x8 block from its latent window alone, so block seams and the texture inside a
block are decided without the neighbouring blocks' pixels (the pictures show an 8-pixel block texture). Its
file is exactly stage 1 of a stack (`organic_sd.stages`: the same unfold order and pixel-shuffle blocks), so a
second stage with up = 1 can read a WINDOW x WINDOW window of its RGB across the seams, the latent cell
(--latent, 0: not) and the base decoder's own hidden units at that cell (--carry, 0: not), and write the pixel
again. The stage is evolved by one `ola.fit` (gradient-free) toward the teacher's decode, the base frozen; its
rows come from the store's training samples and its held-out rows from the store's held-out ones. Reported:
PSNR / SSIM / MS-SSIM on the store's held-out split, base against base + stage, on the teacher's latents
against the teacher's decode (the set that chooses; Set14 stays for the report, `osd eval pipeline` on --out).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from organic_sd import ola
from organic_sd.data.store import Store
from organic_sd.metrics.pixels import image_metrics
from organic_sd.ovae.model import DEFAULT_PATH, OVAE, Part, read_parts
from organic_sd.stages import Stack, Stage, StageConfig, repeat_up, stage_rows

MIN_IMAGES = 64


def base_stage(part) -> Stage:
    """A patch-mode decoder Part as stage 1 of a stack: latent window -> RGB block, the same numbers."""
    c = part.config
    if c.mode != "patch" or c.kind != "decoder":
        raise ValueError(f"the base must be a patch-mode decoder, got a {c.mode}-mode {c.kind}")
    return Stage(StageConfig(c.latent_channels, 3, window=c.window, up=c.downscale, pad=c.pad), part.module)


def stage_inputs(base: Stage, scfg: StageConfig, z: torch.Tensor):
    """Latents (n, C, h, w) -> the refinement stage's (RGB map, latent repeated up, carried hidden) at full size."""
    with torch.no_grad():
        rgb, hidden = base.fast(z, with_hidden=True)  # (n, 3, H, W), (n, hidden, h, w)
        size = rgb.shape[-2:]
        extra = repeat_up(z, size) if scfg.extra_channels else None
        carry = repeat_up(hidden, size) if scfg.carry_channels else None
    return rgb, extra, carry


def draw_rows(store: Store, base: Stage, scfg: StageConfig, pool: np.ndarray, max_rows: int,
              rng: np.random.Generator):
    """At most max_rows (row, target pixel) pairs, thinned evenly over at least MIN_IMAGES samples of pool."""
    H, W = store.decodes.shape[-2:]
    n = min(len(pool), max(MIN_IMAGES, math.ceil(max_rows / (H * W))))
    idx = np.sort(rng.choice(pool, n, replace=False))
    per = min(H * W, math.ceil(max_rows / n))  # pixels drawn per sample
    xs, ys = [], []
    for i in range(0, n, 16):
        chunk = idx[i:i + 16]
        rgb, extra, carry = stage_inputs(base, scfg, torch.from_numpy(store.latents[chunk]))
        rows = stage_rows(scfg, rgb, extra, carry)  # (m*H*W, in_dim)
        y = torch.from_numpy(store.decodes[chunk]).permute(0, 2, 3, 1).reshape(-1, 3)  # (m*H*W, 3)
        keep = torch.from_numpy(np.concatenate([j * H * W + rng.choice(H * W, per, replace=False)
                                                for j in range(len(chunk))]))
        xs.append(rows[keep]), ys.append(y[keep])
    return torch.cat(xs)[:max_rows], torch.cat(ys)[:max_rows]


def heldout(store: Store, decode, idx: np.ndarray) -> dict:
    """Mean PSNR / SSIM / MS-SSIM of decode(z) against the teacher's decode over store samples idx."""
    rows = []
    for i in range(0, len(idx), 16):
        chunk = idx[i:i + 16]
        with torch.no_grad():
            y = decode(torch.from_numpy(store.latents[chunk])).clamp(-1, 1)
        ref = torch.from_numpy(store.decodes[chunk])
        rows += [image_metrics(a[None], b[None]) for a, b in zip(y, ref)]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="`osd precompute frames` store of the decoder's teacher")
    ap.add_argument("--ovae", default=None, help="O-VAE file or run with a patch decoder (default: the shipped one)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--window", type=int, default=3, help="RGB window of the refinement stage (odd)")
    ap.add_argument("--latent", type=int, default=1, help="latent window (odd; 0: none)")
    ap.add_argument("--carry", type=int, default=1, help="window of the base decoder's hidden units (odd; 0: none)")
    ap.add_argument("--max-rows", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None, help="write the O-VAE with the two-stage decoder here")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    store = Store.open(args.store)
    parts = read_parts(args.ovae or DEFAULT_PATH, "cpu")
    dec = parts["decoder"]
    base = base_stage(dec)
    C = dec.config.latent_channels
    scfg = StageConfig(3, 3, window=args.window, up=1, extra_channels=C if args.latent else 0,
                       extra_window=args.latent or 1, carry_channels=base.hidden_width if args.carry else 0,
                       carry_window=args.carry or 1, pad=dec.config.pad)
    rng = np.random.default_rng(args.seed)
    train_idx, val_idx = store.indices("train"), store.indices("val")
    t0 = time.perf_counter()
    x, y = draw_rows(store, base, scfg, train_idx, args.max_rows, rng)
    xv, yv = draw_rows(store, base, scfg, val_idx, max(20_000, args.max_rows // 10), rng)
    print(f"rows: {tuple(x.shape)} train, {tuple(xv.shape)} held out ({time.perf_counter() - t0:.0f} s); stage "
          f"{scfg}", flush=True)
    module = ola.fit(x, y, hidden=(args.hidden,) if args.hidden else (), out_scale=1.0,
                     max_seconds=60 * args.minutes, x_val=xv, y_val=yv, seed=args.seed)
    stack = Stack([base, Stage(scfg, module)])
    report = {"args": vars(args), "stage": scfg.__dict__, "parameters": {"base": dec.num_parameters(),
              "stage": module.num_parameters()}, "fit": module.training_summary.get("val_mse"),
              "heldout_split": {"samples": len(val_idx), "base": heldout(store, base, val_idx),
                                "base + stage": heldout(store, stack, val_idx)}}
    for name, r in report["heldout_split"].items():
        if isinstance(r, dict):
            print(f"{name:>13}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}, MS-SSIM {r['ms_ssim']:.4f}")
    if args.out:
        part = Part(replace(dec.config, mode="staged"), stack)
        OVAE(encoder=parts["encoder"], decoder=part, meta={"refined_from": str(args.ovae or "shipped")}).save(args.out)
        print(f"wrote {args.out}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
