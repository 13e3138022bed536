"""`osd eval latents`: O-Encoder latents against a store's teacher latents (L2, cosine, R² per channel, a plot)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from organic_sd.metrics.pixels import cosine_rows


def latents(v, store_path: str | os.PathLike, out: str | os.PathLike | None = None, split: str = "val",
            max_images: int | None = None) -> dict:
    """O-Encoder latents vs the store's teacher latents: L2, mean cosine, per-channel R², a histogram plot."""
    from organic_sd.data import Store

    if v.encoder is None:
        raise ValueError("this O-VAE has no encoder to evaluate")
    store = Store.open(store_path)
    enc = v.encoder.config
    if store.meta["teacher"] != enc.teacher:
        raise ValueError(f"the store holds teacher {store.meta['teacher']!r} latents but the O-Encoder clones "
                         f"{enc.teacher!r}")
    idx = store.indices(split)[:max_images]
    if len(idx) == 0:
        raise ValueError(f"store {store.path} has no {split!r} samples")
    preds, refs = [], []
    for i in range(0, len(idx), 16):
        x = torch.from_numpy(store.images[idx[i:i + 16]]).to(v.device)
        z = torch.from_numpy(store.latents[idx[i:i + 16]])
        if enc.mode == "global":
            z = F.adaptive_avg_pool2d(z, enc.grid)
        preds.append(v.encode(x).cpu().permute(0, 2, 3, 1).flatten(0, 2))  # (n*h*w, C)
        refs.append(z.permute(0, 2, 3, 1).flatten(0, 2))
    p, r = torch.cat(preds).double(), torch.cat(refs).double()
    cos = cosine_rows(p, r)
    r2 = 1 - (p - r).square().sum(0) / (r - r.mean(0)).square().sum(0).clamp_min(1e-12)  # (C,)
    res = {"store": str(store.path), "split": split, "images": len(idx), "positions": int(p.shape[0]),
           "l2": float((p - r).square().mean()), "cosine": float(cos.mean()), "cosine_median": float(cos.median()),
           "r2_mean": float(r2.mean()), "r2_per_channel": [round(float(t), 4) for t in r2]}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "latents.json").write_text(json.dumps(res, indent=1))
        _latent_plot(out / "latents.png", p, r, cos, r2)
    return res


def _latent_plot(path: Path, p, r, cos, r2) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install organic-sd[plots]): no histogram written", file=sys.stderr)
        return
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    lim = float(r.abs().max())
    bins = np.linspace(-lim, lim, 80)
    ax[0].hist(r.flatten().numpy(), bins, alpha=0.6, label="teacher", density=True)
    ax[0].hist(p.flatten().numpy(), bins, alpha=0.6, label="O-Encoder", density=True)
    ax[0].set(title="latent values", xlabel="value"), ax[0].legend()
    ax[1].hist(cos.numpy(), np.linspace(-1, 1, 81))
    ax[1].set(title=f"cosine per position (mean {float(cos.mean()):.3f})", xlabel="cosine")
    ax[2].bar(np.arange(len(r2)), r2.numpy())
    ax[2].set(title="R² per latent channel", xlabel="channel", ylim=(min(0.0, float(r2.min())), 1))
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
