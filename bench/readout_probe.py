"""Which share of teacher rows should a decoder's readout see? Least-squares readouts over its evolved units.

    python bench/readout_probe.py --store STORE --encoder ENC --teacher ../shared/data/teachers/taef2 \
        --images ../shared/data/images/val/cset14 --decoders u80=runs/units u50=runs/odec --weights 0.3,0.5,0.8

For each decoder (patch mode), its hidden units are kept and a linear readout over [window, units] is
fitted in closed form on the store's training rows: rows from the teacher's latents weighted w, rows
from ENC's latents weighted 1 - w, both toward the teacher's decode (as `osd train --latents mix:`
draws them). Each readout is scored on the held-out photos: the decoder on the teacher's latents
against the teacher's decode, and the full O-VAE (ENC, then the decoder) against the original.
A measurement for choosing `--mix-teacher` of a readout stage (`osd train --init`), never a training
path: least squares has no tanh and sees other rows, so its figures sit a few tenths of a dB from an
evolved readout's at the same w (docs/BENCHMARKS.md, 2026-11-27 06:00), but it ranks units and shares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from organic_sd.data import Store
from organic_sd.metrics.pixels import mean_image_psnr
from organic_sd.ovae import patches
from organic_sd.ovae.model import read_parts
from organic_sd.teachers import load_teacher

sys.path.insert(0, str(Path(__file__).parent))
from ovae import ridge_solve  # noqa: E402  (bench/ovae.py: the least-squares references' solve)
from pairs import named, photos  # noqa: E402


def features(dec, z: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) -> [window, units of every layer, 1] rows (B*h*w, F) in float64."""
    u = dec.module.features(dec.rows(z))
    return torch.cat([u, torch.ones(u.shape[0], 1)], 1).double()


def gram(dec, enc, store: Store, idx: np.ndarray, chunk: int = 16):
    """Normal equations (F, F) and (F, out) of the store's rows, one pair per set of inputs (teacher, ENC)."""
    sums = None
    for i in range(0, len(idx), chunk):
        j = np.sort(idx[i:i + chunk])
        images = torch.from_numpy(store.images[j]).float()
        y = patches.blocks(torch.from_numpy(store.decodes[j]).float(), dec.config.downscale).double()
        parts = []
        for z in (torch.from_numpy(store.latents[j]).float(), enc(images)):
            f = features(dec, z)
            parts.append((f.T @ f, f.T @ y))
        sums = parts if sums is None else [(a + p, b + q) for (a, b), (p, q) in zip(sums, parts)]
    return sums


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True, help="store of the decoders' teacher; its training split is used")
    ap.add_argument("--encoder", required=True, help="O-Encoder run or O-VAE file whose latents the mix uses")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--images", required=True, help="held-out photos")
    ap.add_argument("--decoders", nargs="+", required=True, help="NAME=PATH (run folder or O-VAE file)")
    ap.add_argument("--weights", default="0.3,0.5,0.65,0.8,1.0", help="shares of teacher rows to fit at")
    ap.add_argument("--max-images", type=int, default=None, help="training images used (default: all)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = [float(w) for w in args.weights.split(",")]
    if any(not 0.0 <= w <= 1.0 for w in weights):
        raise SystemExit(f"--weights must lie in [0, 1], got {weights}")
    store, teacher = Store.open(args.store), load_teacher(args.teacher)
    enc = read_parts(args.encoder)["encoder"]
    if enc is None:
        raise SystemExit(f"{args.encoder} holds no encoder")
    for who, tid in (("the store", store.meta["teacher"]), ("the encoder", enc.config.teacher)):
        if tid != teacher.id:
            raise SystemExit(f"{who} clones teacher {tid!r} but --teacher is {teacher.id!r}")
    idx = store.indices("train")[:args.max_images]
    with torch.inference_mode():
        x = photos(args.images, store.meta["size"])
        zt = teacher.encode(x)
        dt, zo = teacher.decode(zt), enc(x)
        print("| decoder | w (teacher rows) | dec on teacher z vs teacher decode | full vs original |")
        print("| --- | ---: | ---: | ---: |")
        for name, dec in named(args.decoders, "decoder").items():
            if dec.config.mode != "patch":
                raise SystemExit(f"{name}: only patch-mode decoders have a window readout")
            (gt, ct), (go, co) = gram(dec, enc, store, idx)
            ft, fo = features(dec, zt), features(dec, zo)
            h, w_ = zt.shape[2:]
            for w in weights:
                a = ridge_solve(w * gt + (1 - w) * go, w * ct + (1 - w) * co)  # (F, out)
                pt = dec.assemble((ft @ a).float(), x.shape[0], h, w_).clamp(-1, 1)
                po = dec.assemble((fo @ a).float(), x.shape[0], h, w_).clamp(-1, 1)
                print(f"| {name} | {w:g} | {mean_image_psnr(pt, dt):.2f} dB | {mean_image_psnr(po, x):.2f} dB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
