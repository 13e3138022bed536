"""Would the O-Encoder gain from stages that learn the teacher encoder's own activations? (issue 24 item 3)

    python bench/encoder_features.py --store STORE --teacher TEACHER [--seconds 240] [--adam-seconds 60] \
        [--decoder organic_sd/assets/ovae/ovae.safetensors] [--out encoder_features.json]

Fine to coarse, the mirror of `--stage-targets features` for the decoder: each stage pixel-unshuffles its input map
by 2 and maps a WINDOW x WINDOW window of it to K channels at the new resolution, stage 1 and 2 toward the teacher
encoder's activations at 1/2 and 1/4 resolution (K standardised principal components, organic_sd.ovae.features),
stage 3 toward the teacher's latent. Against the single-stage patch encoder of the shipped shape (16 x 16 pixel
window -> hidden tanh units -> the latent cell), given the same evolution time in all (`ola.fit`, gradient-free;
the staged time shared 0.5 / 0.25 / 0.25). Adam references of both shapes (references only). Scored on the store's
held-out split: mean latent cosine per cell (as `osd train encoder` scores it) and, with --decoder, the full
O-VAE through that decoder against the original (mean PSNR over images).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F
from staged_features import adam_stage, keep_some, shuffled_head  # bench/staged_features.py: the decoder's twin

from organic_sd import ola
from organic_sd.data.store import Store
from organic_sd.metrics.pixels import cosine_rows, psnr_of_mse
from organic_sd.ovae.features import FeatureTargets, encoder_taps
from organic_sd.ovae.model import read_parts
from organic_sd.ovae.patches import grid_to_rows, pixel_windows
from organic_sd.ovae.rows import SUBSPACE
from organic_sd.runs import out_scale_for
from organic_sd.stages import windows
from organic_sd.teachers import load_teacher


class Encoder:
    """A map of images (B, 3, H, W) in [-1, 1] -> latents (B, C, H/8, W/8), from per-position row maps."""

    def __init__(self, staged: bool, window: int, modules: list):
        self.staged, self.window, self.modules = staged, window, modules

    def stage_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """A stage's rows from its input map x (B, C, h, w): the unshuffled map's windows; and (B, h/2, w/2)."""
        m = F.pixel_unshuffle(x, 2)  # (B, 4C, h/2, w/2)
        return windows(m, self.window), (m.shape[0], *m.shape[2:])

    def __call__(self, images: torch.Tensor, upto: int | None = None) -> torch.Tensor:
        with torch.no_grad():
            if not self.staged:
                B, _, H, W = images.shape
                out = self.modules[0](pixel_windows(images, 8, self.window))  # (B*h*w, C)
                return out.reshape(B, H // 8, W // 8, -1).permute(0, 3, 1, 2)
            x = images
            for module in self.modules[:upto]:
                rows, (B, h, w) = self.stage_input(x)
                x = module(rows).reshape(B, h, w, -1).permute(0, 3, 1, 2)
            return x


def load(store: Store, idx: np.ndarray, dev) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.asarray(store.images[idx], np.float32)).to(dev)  # (n, 3, H, W) in [-1, 1]
    return x, torch.from_numpy(np.asarray(store.latents[idx], np.float32)).to(dev)


def score(enc: Encoder, store: Store, idx: np.ndarray, dev, decoder=None) -> dict:
    """Mean latent cosine per cell on samples idx; with a decoder, the full O-VAE's mean PSNR against the original."""
    cos, psnr = [], []
    for i in range(0, len(idx), 16):
        x, z = load(store, idx[i:i + 16], dev)
        zo = enc(x)
        cos.append(cosine_rows(grid_to_rows(zo), grid_to_rows(z)))
        if decoder is not None:
            with torch.no_grad():
                err = (decoder(zo.cpu()).clamp(-1, 1) - x.cpu()).square().mean((1, 2, 3))
            psnr += [psnr_of_mse(float(e)) for e in err]
    out = {"cosine": float(torch.cat(cos).mean())}
    if psnr:
        out["ovae_psnr"] = float(np.mean(psnr))
    return out


def rows_of(enc: Encoder, stage: int, targets: FeatureTargets | None, store: Store, idx: np.ndarray, n_rows: int,
            gen: torch.Generator, dev) -> tuple[torch.Tensor, torch.Tensor]:
    """Training rows of one stage (or of the single-stage encoder): inputs from the frozen earlier stages."""
    per_image = n_rows // len(idx) + 1
    xs, ys = [], []
    for j in range(0, len(idx), 16):
        x, z = load(store, idx[j:j + 16], dev)
        if not enc.staged:
            rows, y = pixel_windows(x, 8, enc.window), grid_to_rows(z)
        else:
            rows, _ = enc.stage_input(enc(x, upto=stage))
            t = z if stage == 2 else targets((x + 1) / 2, stage)  # the teacher encoder reads [0, 1] images
            y = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
        keep_some(rows, y, per_image * len(x), gen, xs, ys)
    return shuffled_head(xs, ys, n_rows, gen)


def train(staged: bool, fit, store: Store, train_idx, val_idx, targets, scales, hidden, window, seconds, n_rows,
          gen, dev) -> Encoder:
    """The single-stage encoder, or three stages greedily, each by `fit(x, y, hidden, out_scale, seconds, xv, yv)`."""
    enc = Encoder(staged, window, [])
    shares = [0.5, 0.25, 0.25] if staged else [1.0]
    for i, share in enumerate(shares):
        x, y = rows_of(enc, i, targets, store, train_idx, n_rows, gen, dev)
        xv, yv = rows_of(enc, i, targets, store, val_idx, 20_000, gen, dev)
        enc.modules.append(fit(x, y, hidden[i], scales[i], share * seconds, xv, yv))
    return enc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--teacher", required=True, help="the store's teacher (TAESD family)")
    ap.add_argument("--decoder", default="", help="an O-VAE file whose decoder scores the full O-VAE ('': none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--k", type=int, default=16, help="feature channels handed between stages")
    ap.add_argument("--window", type=int, default=3, help="each stage's window on its unshuffled input")
    ap.add_argument("--hidden", type=int, nargs=3, default=[32, 32, 48], help="units of the three stages")
    ap.add_argument("--single-hidden", type=int, default=64, help="units of the single-stage encoder (shipped: 64)")
    ap.add_argument("--seconds", type=float, default=240.0, help="evolution time of each encoder, all stages together")
    ap.add_argument("--generations", type=int, default=0, help="each fit's search in generations instead of "
                                                                "--seconds (reproducible; 0: by time)")
    ap.add_argument("--adam-seconds", type=float, default=0.0,
                    help="Adam references, 3x this per encoder shared as the evolution time is (0: none)")
    ap.add_argument("--rows", type=int, default=100_000, help="training rows per stage")
    ap.add_argument("--images", type=int, default=96, help="training images the rows come from (the teacher "
                                                            "encoder runs on each, for every stage)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    gen = torch.Generator().manual_seed(a.seed)
    store = Store.open(a.store)
    train_idx, val_idx = store.indices("train"), store.indices("val")
    rng = np.random.default_rng(a.seed)
    train_idx = np.sort(rng.choice(train_idx, min(a.images, len(train_idx)), replace=False))
    teacher = load_teacher(a.teacher, dev)
    layers = encoder_taps(teacher.encoder)[1:3]  # the last activations at 1/2 and 1/4 resolution
    fit_idx = np.sort(np.random.default_rng(a.seed).choice(train_idx, min(64, len(train_idx)), replace=False))
    targets = FeatureTargets(teacher.encoder, layers, a.k, teacher.id).fit((load(store, fit_idx, dev)[0] + 1) / 2,
                                                                            a.seed)
    latent_scale = out_scale_for(np.abs(np.asarray(store.latents[fit_idx], np.float32)).max())
    decoder = read_parts(a.decoder)["decoder"] if a.decoder else None
    report = {"store": a.store, "train": len(train_idx), "held_out": len(val_idx), "k": a.k, "window": a.window,
              "hidden": a.hidden, "single_hidden": a.single_hidden, "seconds": a.seconds,
              "set": "the store's held-out split: mean latent cosine per cell; full O-VAE PSNR vs the original"}

    def evolve(x, y, hidden, out_scale, seconds, xv, yv):
        budget = {"generations": a.generations} if a.generations else {"max_seconds": seconds}
        return ola.fit(x, y, hidden=(hidden,), out_scale=out_scale, **budget, x_val=xv, y_val=yv,
                       device=dev, seed=1, subspace=SUBSPACE, units_per_round=16)

    def reference(x, y, hidden, out_scale, seconds, xv, yv):
        return adam_stage(x, y, hidden, out_scale, seconds, dev)

    for staged_now in (False, True):
        name = "staged_features" if staged_now else "single_stage"
        scales = [*targets.scale, latent_scale] if staged_now else [latent_scale]
        hidden = a.hidden if staged_now else [a.single_hidden]
        window = a.window if staged_now else 16
        enc = train(staged_now, evolve, store, train_idx, val_idx, targets, scales, hidden, window, a.seconds,
                    a.rows, gen, dev)
        report[f"evolved_{name}"] = {**score(enc, store, val_idx, dev, decoder),
                                     "parameters": sum(m.num_parameters() for m in enc.modules)}
        print(f"evolved {name}: {report[f'evolved_{name}']}", flush=True)
        if a.adam_seconds > 0:
            ref = train(staged_now, reference, store, train_idx, val_idx, targets, scales, hidden, window,
                        3 * a.adam_seconds, a.rows, gen, dev)
            report[f"adam_{name}"] = score(ref, store, val_idx, dev, decoder)
            print(f"Adam reference {name}: {report[f'adam_{name}']}", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
