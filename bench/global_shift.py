"""A global colour shift for a staged O-Decoder: how much of its error one number per colour channel and image is.

    python bench/global_shift.py --store st6 --ovae pmL7.safetensors [--encoder es8] [--hidden 0 16] \
        [--seconds 60] [--json shift.json]

The stages see a few latent cells around each pixel; the teacher's decoder sees far more, and part of what the
stages miss is a colour cast over the whole image. Per image, this takes global statistics (each latent channel's
mean and std, and each channel's mean and std of the decoder's own output: 2 C + 6 numbers) and fits the per-channel
mean of the error (target - output) on the store's training split, then scores the held-out split with each image
shifted by the prediction (clamped to [-1, 1]):
    oracle   the held-out images' own mean error (the most a per-channel shift can buy)
    ridge    least squares, ridge 1 on standardised statistics: a closed-form reference, never a product path
    ola-H    `ola.fit` (evolution, H hidden units, --seconds): the gradient-free map a decoder would ship
Target: the teacher's decode from teacher latents; with --encoder also the original image from that encoder's
latents (the full O-VAE), each map fitted on either kind of latents or on both at once (what one decoder file serving
both would hold). The held-out split is the one that chooses; it reports PSNR on [0, 1], the mean over images.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from organic_sd import ola
from organic_sd.data.store import Store
from organic_sd.metrics.pixels import psnr_of_mse
from organic_sd.ovae.model import read_parts
from organic_sd.runs import out_scale_for, typical_largest

RIDGE = 1.0


def collect(decoder, store: Store, idx: np.ndarray, encoder=None, images: bool = True) -> tuple[torch.Tensor, ...]:
    """-> statistics (n, 2C+6), mean error per channel (n, 3), outputs (n, 3, H, W), targets (n, 3, H, W); without
    `images` the last two are empty (a training split's pictures are not needed, and 780 of them are 1.2 GB)."""
    stats, shift, outs, refs = [], [], [], []
    with torch.inference_mode():
        for i in range(0, len(idx), 16):
            chunk = idx[i:i + 16]
            if encoder is None:
                z, ref = (torch.from_numpy(a[chunk]).float() for a in (store.latents, store.decodes))
            else:
                ref = torch.from_numpy(store.images[chunk]).float()
                z = encoder(ref)  # (n, C, h, w)
            y = decoder(z).clamp(-1, 1)  # (n, 3, H, W)
            stats.append(torch.cat([z.mean((2, 3)), z.std((2, 3)), y.mean((2, 3)), y.std((2, 3))], 1))
            shift.append((ref - y).mean((2, 3)))
            if images:
                outs.append(y)
                refs.append(ref)
    empty = torch.empty(0)
    return (torch.cat(stats), torch.cat(shift), torch.cat(outs) if images else empty,
            torch.cat(refs) if images else empty)


def mean_psnr(y: torch.Tensor, ref: torch.Tensor, shift: torch.Tensor | None = None) -> float:
    """Mean per-image PSNR on [0, 1] of y (shifted per image and channel by `shift` (n, 3), clamped) against ref."""
    if shift is not None:
        y = (y + shift[:, :, None, None].to(y.dtype)).clamp(-1, 1)
    mse = (y - ref).square().mean((1, 2, 3))  # on [-1, 1]: psnr_of_mse reads it so
    return float(np.mean([psnr_of_mse(float(m)) for m in mse]))


def fit_maps(x: torch.Tensor, d: torch.Tensor, hidden: list[int], seconds: float, seed: int) -> dict:
    """Statistics (n, F) standardised -> mean error (n, 3): {name: function of (m, F) statistics}."""
    X = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    W = torch.linalg.solve(X.T @ X + RIDGE * torch.eye(X.shape[1], dtype=X.dtype), X.T @ d.double())  # (F+1, 3)
    maps = {"ridge": lambda s: (torch.cat([s, torch.ones(len(s), 1)], 1).double() @ W).float()}
    scale = out_scale_for(typical_largest(d))
    for h in hidden:
        # its own selection rows are a tenth of the training split's: the held-out split stays unseen until scored
        m = ola.fit(x, d, hidden=(h,) if h else (), population=40, out_scale=scale, max_seconds=seconds, seed=seed)
        maps[f"ola-{h}"] = lambda s, m=m: m(s).detach()
    return maps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True)
    p.add_argument("--ovae", required=True, help="O-VAE file or run holding the (staged) decoder")
    p.add_argument("--encoder", default="", help="O-VAE file or run holding an encoder: the full O-VAE too, and one "
                                                 "map fitted on both kinds of latents")
    p.add_argument("--hidden", type=int, nargs="+", default=[0, 16], help="hidden units of each evolved map")
    p.add_argument("--seconds", type=float, default=60.0, help="ola.fit seconds per map")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    store = Store.open(a.store)
    decoder = read_parts(a.ovae, "cpu")["decoder"]
    encoder = read_parts(a.encoder, "cpu")["encoder"] if a.encoder else None
    if decoder is None or (a.encoder and encoder is None):
        raise SystemExit(f"{a.ovae} holds no decoder" if decoder is None else f"{a.encoder} holds no encoder")
    tr, va = store.indices("train"), store.indices("val")
    if len(tr) == 0 or len(va) == 0:
        raise SystemExit(f"store {a.store} needs training and held-out samples")
    kinds = {"teacher": None, **({"full": encoder} if encoder is not None else {})}  # whose latents
    train = {k: collect(decoder, store, tr, e, images=False) for k, e in kinds.items()}
    held = {k: collect(decoder, store, va, e) for k, e in kinds.items()}
    s_all = torch.cat([train[k][0] for k in kinds])
    mu, sd = s_all.mean(0), s_all.std(0) + 1e-6  # (F,): one standardisation for every map
    std = lambda s: (s - mu) / sd  # noqa: E731

    rows = [("-", "as is", {k: mean_psnr(h[2], h[3]) for k, h in held.items()}),
            ("-", "oracle", {k: mean_psnr(h[2], h[3], h[1]) for k, h in held.items()})]
    sources = {k: [k] for k in kinds} | ({"both": list(kinds)} if len(kinds) > 1 else {})
    for src, ks in sources.items():
        x = torch.cat([std(train[k][0]) for k in ks])
        d = torch.cat([train[k][1] for k in ks])
        for name, f in fit_maps(x, d, a.hidden, a.seconds, a.seed).items():
            rows.append((src, name, {k: mean_psnr(h[2], h[3], f(std(h[0]))) for k, h in held.items()}))
    names = {"teacher": "decoder on teacher latents vs the teacher", "full": "full O-VAE vs the original"}
    print(f"{a.ovae}: held-out PSNR ({len(va)} views) with each image shifted per channel by a map of its global "
          f"statistics fitted on {len(tr)} training views")
    print("| fitted on | map | " + " | ".join(names[k] for k in kinds) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in kinds) + " |")
    for src, name, got in rows:
        print(f"| {src} | {name} | " + " | ".join(f"{got[k]:.2f} dB ({got[k] - rows[0][2][k]:+.2f})" for k in kinds)
              + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"store": a.store, "ovae": a.ovae, "encoder": a.encoder, "seconds": a.seconds,
                       "train_views": len(tr), "heldout_views": len(va),
                       "rows": [{"fitted_on": s_, "map": n, "psnr": g} for s_, n, g in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
