"""`osd demo`: the shipped O-VAE on sample photos, or with a teacher the whole path in one command."""

from __future__ import annotations

import os
from pathlib import Path

from organic_sd.ovae.evaluate import pipeline
from organic_sd.ovae.export import export
from organic_sd.ovae.model import OVAE


def demo(out: str | os.PathLike, teacher_spec: str | None = None, seconds: float = 20.0, device: str = "cpu",
         images: int = 6, size: int = 128) -> dict:
    """No teacher: evaluate the shipped O-VAE on scikit-image's photos. With one: precompute, train, export, eval."""
    out = Path(out)
    photos = ["sample:skimage"]
    if teacher_spec is None:
        v = OVAE.load(device=device)
        print(f"shipped O-VAE: clones {v.meta['teacher']}, {v.num_parameters():,} parameters")
        rep = pipeline(photos, v, out, max_images=images)
        return rep
    from organic_sd.data import precompute
    from organic_sd.ovae.config import TrainConfig
    from organic_sd.ovae.train import train
    from organic_sd.teachers import load_teacher

    teacher = load_teacher(teacher_spec, device=device)
    store = out / "store"
    # train on frames of the sample videos, evaluate on the sample photos: never the same pictures
    print(f"1/4 precompute: sample videos through {teacher.id} into {store}")
    precompute(["sample:videos"], teacher, store, size=size, stride=10, max_frames=16, val_fraction=0.2)
    print(f"2/4 train the O-Encoder ({seconds:.0f} s)")
    enc = train(TrainConfig("encoder", str(store), str(out / "encoder"), max_minutes=seconds / 60,
                            tick_seconds=seconds / 2, max_rows=50_000, device=device))
    print(f"3/4 train the O-Decoder ({seconds:.0f} s)")
    dec = train(TrainConfig("decoder", str(store), str(out / "decoder"), max_minutes=seconds / 60,
                            tick_seconds=seconds / 2, max_rows=50_000, device=device))
    v = export(out / "encoder", out / "decoder", out / "ovae.safetensors")
    print(f"4/4 evaluate {out / 'ovae.safetensors'} on the sample photos (never trained on)")
    rep = pipeline(photos, v, out / "eval", teacher=teacher, size=size, max_images=images)
    rep["training"] = {"encoder": enc, "decoder": dec}
    return rep
