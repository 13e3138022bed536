"""Score O-Decoders on a store's held-out split: the set that chooses, so that Set14 stays for the report.

    python bench/heldout_decoders.py --store stores/taef2-256 --decoders single=runs/single staged=runs/staged \
        [--encoder organic_sd/assets/ovae/ovae.safetensors] [--out heldout.json]

Per decoder, over every held-out sample of the store (the split fixed at precompute time, never trained on):
PSNR / SSIM / MS-SSIM of the decoder on the teacher's latents against the teacher's decode (mean over images),
and with --encoder the full O-VAE (that encoder, this decoder) against the original and the encoder's mean latent
cosine against the teacher's latents (per latent cell, as `osd train encoder` scores it); plus parameters and the
seconds per decode of the held-out batch on this machine's CPU threads. Each argument is NAME=PATH (an O-VAE
file or an `osd train` run folder).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from organic_sd.data.store import Store
from organic_sd.metrics.pixels import cosine_rows, image_metrics
from organic_sd.ovae.model import read_parts
from organic_sd.ovae.patches import grid_to_rows


def score(decoder, store: Store, idx: np.ndarray, encoder=None) -> dict:
    """Mean per-image metrics of `decoder` over store samples idx (teacher latents; with encoder, the O-VAE too)."""
    rows, full, cos, seconds = [], [], [], 0.0
    for i in range(0, len(idx), 16):
        chunk = idx[i:i + 16]
        z = torch.from_numpy(store.latents[chunk])  # (n, C, h, w)
        ref = torch.from_numpy(store.decodes[chunk])  # (n, 3, H, W) in [-1, 1]
        t0 = time.perf_counter()
        y = decoder(z).clamp(-1, 1)
        seconds += time.perf_counter() - t0
        rows += [image_metrics(a[None], b[None]) for a, b in zip(y, ref)]
        if encoder is not None:
            x = torch.from_numpy(store.images[chunk])
            zo = encoder(x)
            cos.append(cosine_rows(grid_to_rows(zo), grid_to_rows(z)))  # per latent cell, as `osd train encoder`'s
            yo = decoder(zo).clamp(-1, 1)
            full += [image_metrics(a[None], b[None]) for a, b in zip(yo, x)]
    mean = lambda rs: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]}  # noqa: E731
    out = {"images": len(idx), "odec_vs_teacher": mean(rows), "decode_seconds": seconds,
           "parameters": decoder.num_parameters()}
    if full:
        out["ovae_vs_orig"] = mean(full)
        out["encoder_cosine"] = float(torch.cat(cos).mean())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--decoders", nargs="+", required=True, help="NAME=PATH ...")
    ap.add_argument("--encoder", default=None, help="O-VAE file or run holding an encoder: also score the full O-VAE")
    ap.add_argument("--split", default="val", choices=("val", "train"))
    ap.add_argument("--out", default=None, help="write the scores as JSON here")
    a = ap.parse_args(argv)
    store = Store.open(a.store)
    idx = store.indices(a.split)
    enc = read_parts(a.encoder)["encoder"] if a.encoder else None
    report = {"store": a.store, "split": a.split, "decoders": {}}
    for spec in a.decoders:
        name, _, path = spec.partition("=")
        dec = read_parts(path)["decoder"]
        r = report["decoders"][name] = {"path": path, **score(dec, store, idx, enc)}
        m = r["odec_vs_teacher"]
        line = (f"{name:12s} {r['parameters']:8,d} params | teacher latents vs teacher decode: PSNR {m['psnr']:.2f} dB "
                f"SSIM {m['ssim']:.4f} MS-SSIM {m['ms_ssim']:.4f}")
        if "ovae_vs_orig" in r:
            o = r["ovae_vs_orig"]
            line += (f" | O-VAE vs original: PSNR {o['psnr']:.2f} dB MS-SSIM {o['ms_ssim']:.4f}, encoder latent cosine "
                     f"{r['encoder_cosine']:.4f}")
        print(line + f" | {r['decode_seconds']:.2f} s for {r['images']} images")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
