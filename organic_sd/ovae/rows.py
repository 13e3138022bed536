"""`osd train encoder|decoder`'s data: store samples -> (input rows, target rows) of one part, and the
held-out score that decides which tick is kept."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from organic_sd.data.store import Store
from organic_sd.metrics.pixels import cosine_rows, psnr_of_mse
from organic_sd.ola.population import Subspace
from organic_sd.ovae import patches
from organic_sd.ovae.config import TrainConfig
from organic_sd.ovae.model import Part, PartConfig, part_rows, read_parts
from organic_sd.runs import out_scale_for

# Image windows are redundant and their flat directions hold pixel noise, which whitening blows up
# to unit variance: units and readout searched there fit the training photos and explode on others,
# so only the top directions are searched (docs/BENCHMARKS.md). Latent windows (the decoder's
# inputs) are nearly full-rank, so they keep nearly every direction.
SUBSPACE = Subspace(units=0.99, readout=0.9995)
LOAD_CHUNK = 64  # store images read and windowed at a time (bounds peak memory while drawing rows)

class PartRows:
    """Turns store samples into (module input rows, target rows) for one part."""

    def __init__(self, store: Store, part: PartConfig, device: torch.device, source: Part | None,
                 mix_teacher: float = 0.5):
        self.store, self.part, self.device, self.source = store, part, device, source
        self.mix_teacher = mix_teacher

    def latents(self, idx: np.ndarray, images: torch.Tensor | None) -> torch.Tensor:
        """The first set of decoder inputs for samples idx: the O-Encoder's for oenc, else the teacher's."""
        if self.source is None or self.mix:
            return torch.from_numpy(self.store.latents[idx]).to(self.device)
        return self.source(images)

    def latent_sets(self, idx: np.ndarray, images: torch.Tensor | None) -> list[torch.Tensor]:
        """Every set of decoder inputs for samples idx: [teacher], [O-Encoder] or, for mix, [teacher, O-Encoder]."""
        z = self.latents(idx, images)
        return [z, self.source(images)] if self.mix else [z]  # PartRows.draw relies on this order

    @property
    def mix(self) -> bool:
        return self.part.latents.startswith("mix:")

    def _set_shares(self) -> list[float]:
        """Per set of decoder inputs (latent_sets' order), the share of its rows kept: mix_teacher of all rows
        drawn come from the teacher's latents, and the larger set is never thinned for the balance."""
        if not self.mix:
            return [1.0]
        w = self.mix_teacher
        return [1.0, (1 - w) / w] if w >= 0.5 else [w / (1 - w), 1.0]

    def pairs(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples idx -> rows x (N, in), y (N, out) on the device."""
        p, s = self.part, self.store
        images = torch.from_numpy(s.images[idx]).to(self.device)  # (n, 3, H, W)
        if p.kind == "encoder":
            z = torch.from_numpy(s.latents[idx]).to(self.device)  # (n, C, h, w)
            if p.mode == "patch":
                return patches.pixel_windows(images, p.downscale, p.window, p.pad), patches.grid_to_rows(z)
            return part_rows(p, images), F.adaptive_avg_pool2d(z, p.grid).flatten(1)
        target = images if p.target == "image" else torch.from_numpy(s.decodes[idx]).to(self.device)
        zs = self.latent_sets(idx, images)  # mix: the same targets behind two sets of inputs
        if p.mode == "patch":
            x, y = [patches.latent_windows(z, p.window, p.pad) for z in zs], patches.blocks(target, p.downscale)
        else:
            x = [F.adaptive_avg_pool2d(z, p.grid).flatten(1) for z in zs]
            y = F.interpolate(target, size=(p.global_size,) * 2, mode="area").flatten(1)  # (n, 3 * S * S)
        return torch.cat(x), y.repeat(len(zs), 1)

    def draw(self, pool: np.ndarray, max_rows: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh random sample of at most max_rows rows from randomly chosen samples of `pool`."""
        if len(pool) == 0:
            raise ValueError(f"store {self.store.path} has no samples in this split to draw rows from")
        p = self.part
        per_image = (p.image_size // p.downscale) ** 2 if p.mode == "patch" else 1
        shares = self._set_shares()
        per_image *= sum(shares)  # mix: each image gives rows from both sets of inputs
        n = min(len(pool), max(1, math.ceil(max_rows / per_image)))
        idx = np.sort(rng.choice(pool, n, replace=False))  # sorted: sequential shard reads
        share = min(1.0, max_rows / (n * per_image))  # thin each chunk now, so the full set never exists
        xs, ys = [], []
        for i in range(0, n, LOAD_CHUNK):
            x, y = self.pairs(idx[i:i + LOAD_CHUNK])
            for x_set, y_set, f in zip(x.chunk(len(shares)), y.chunk(len(shares)), shares):
                x_set, y_set = thin(x_set, y_set, share * f, rng)
                xs.append(x_set), ys.append(y_set)
        return capped(xs, ys, max_rows, rng)


def thin(x: torch.Tensor, y: torch.Tensor, share: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ceil(share * N) of the rows (N, .) of x and y; all of them, drawing nothing, when share >= 1."""
    if share >= 1.0:
        return x, y
    keep = torch.from_numpy(rng.permutation(x.shape[0])[:math.ceil(share * x.shape[0])]).to(x.device)
    return x[keep], y[keep]


def capped(xs: list, ys: list, max_rows: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The row blocks joined, then a random max_rows of them if there are more."""
    x, y = torch.cat(xs), torch.cat(ys)
    if x.shape[0] > max_rows:
        keep = torch.from_numpy(rng.permutation(x.shape[0])[:max_rows]).to(x.device)
        x, y = x[keep], y[keep]
    return x, y


class HeldOut:
    """A fixed set of held-out samples, scored whole-image through the part (as inference runs)."""

    def __init__(self, store: Store, part: PartConfig, rows: PartRows, n: int, seed: int):
        val = store.indices("val")
        if len(val) == 0:
            raise ValueError(f"store {store.path} has no held-out samples (val split is empty); re-split it without "
                             f"running the teacher again: osd store resplit {store.path} --val-fraction 0.1")
        rng = np.random.default_rng(seed + 1)
        self.idx = np.sort(rng.choice(val, min(n, len(val)), replace=False))
        self.part, self.rows, self.store = part, rows, store
        # decoder inputs per chunk, made once: the O-Encoder behind oenc:/mix: is fixed, so are its latents
        self._inputs: dict[int, list[torch.Tensor]] = {}

    def score(self, part: Part) -> dict:
        """Held-out MSE (the freeze and keep metric), plus PSNR (decoder, on [0, 1]) or mean cosine (encoder).

        A mix: decoder is scored on both sets of inputs, weighted as its rows are (--mix-teacher): its MSE
        is the objective it was trained on; `psnr` is on the teacher's latents, `psnr_oenc` on the O-Encoder's.
        """
        p, s, dev = self.part, self.store, self.rows.device
        se, n, cos_sum, cos_n = [0.0, 0.0], 0, 0.0, 0
        for i in range(0, len(self.idx), 16):
            idx = self.idx[i:i + 16]
            images = torch.from_numpy(s.images[idx]).to(dev)
            if p.kind == "encoder":
                z = torch.from_numpy(s.latents[idx]).to(dev)
                if p.mode == "global":
                    z = F.adaptive_avg_pool2d(z, p.grid)
                pred = part(images)
                a, b = patches.grid_to_rows(pred), patches.grid_to_rows(z)
                cos_sum += float(cosine_rows(a, b).sum())
                cos_n += a.shape[0]
                preds = [pred]
            else:
                z = images if p.target == "image" else torch.from_numpy(s.decodes[idx]).to(dev)
                if i not in self._inputs:
                    self._inputs[i] = self.rows.latent_sets(idx, images)
                preds = [part(zk).clamp(-1, 1) for zk in self._inputs[i]]
            for k, pred in enumerate(preds):
                se[k] += float((pred - z).double().square().sum())
            n += z.numel()
        mse = se[0] / n
        out = {"heldout_mse": mse}
        if p.kind == "decoder":
            out["psnr"] = psnr_of_mse(mse)
            if self.rows.mix:
                w = self.rows.mix_teacher
                out["heldout_mse"] = w * mse + (1 - w) * se[1] / n
                out["psnr_oenc"] = psnr_of_mse(se[1] / n)
        else:
            out["cosine"] = cos_sum / cos_n
        return out


def part_config(cfg: TrainConfig, store: Store) -> PartConfig:
    """The part a run trains: its settings from cfg, its teacher, sizes and preprocessing from the store."""
    m = store.meta
    C, h, _ = m["shapes"]["latents"]
    size = int(m["size"])
    return PartConfig(kind=cfg.kind, mode=cfg.mode, teacher=m["teacher"], latent_channels=int(C),
                      downscale=size // int(h), image_size=size, window=cfg.window, pad=cfg.pad,
                      retina_dim=cfg.retina_dim, retina_seed=cfg.seed, grid=cfg.grid, global_size=cfg.global_size,
                      latents=cfg.latents if cfg.kind == "decoder" else "teacher",
                      target=cfg.target if cfg.kind == "decoder" else "decode", preprocess=m["preprocess"])


def source_encoder(spec: str, store: Store, device: torch.device) -> Part | None:
    """The O-Encoder behind --latents oenc:RUN / mix:RUN, checked against the store's teacher; None for 'teacher'."""
    if spec == "teacher":
        return None
    enc = read_parts(spec.split(":", 1)[1], device)["encoder"]
    if enc is None:
        raise ValueError(f"--latents {spec}: that run/file holds no encoder")
    if enc.config.teacher != store.meta["teacher"]:
        raise ValueError(f"--latents {spec}: the encoder clones teacher {enc.config.teacher!r} but the store holds "
                         f"{store.meta['teacher']!r}")
    return enc


def out_scale(cfg: TrainConfig, store: Store, rng: np.random.Generator) -> float:
    """Decoder: 1 (pixels in [-1, 1]); encoder: headroom over the latents of 64 training samples (runs.out_scale_for)."""
    if cfg.kind == "decoder":
        return 1.0
    idx = rng.choice(store.indices("train"), min(64, len(store.indices("train"))), replace=False)
    return out_scale_for(np.abs(store.latents[np.sort(idx)]).max())
