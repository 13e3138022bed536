"""A staged O-Decoder's last training step: its global shift (organic_sd.global_shift), evolved on the store's
training split, no gradients.

    per source of latents the decoder serves (the teacher's; with --latents mix:RUN an O-Encoder's too), over the
        training split's images: the statistics of latent and decoder output, and the mean error per colour channel
        (target - output; the target: the stages' own for the teacher's latents, the image for an O-Encoder's)
    -> ola.fit of one linear map per source and, with two sources, of a probe (toward +0.5 for the teacher's latents,
       -0.5 for the O-Encoder's) whose sign picks the map; --shift-seconds shared out between them
    -> kept only if the run's held-out images score better with it (their MSE, weighted over the sources as the rows
       are): RUN_DIR/model.safetensors is then written again with the shift after the stages.
RUN_DIR/shift/state.json records the outcome, so a resumed run does not fit it twice.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from organic_sd import dist, ola
from organic_sd.files import atomic_json
from organic_sd.global_shift import GlobalShift, ShiftConfig, global_stats
from organic_sd.metrics.pixels import psnr_of_mse
from organic_sd.ovae.rows import PartRows
from organic_sd.runs import out_scale_for, typical_largest
from organic_sd.stages import Stack

POPULATION = 40  # what bench/global_shift.py measured with (about a thousand images, one row each)
MAX_IMAGES = 4096  # training images the statistics are taken from, at most (one row each)
PROBE_SHARE = 0.2  # of --shift-seconds, with two sources; the maps share the rest
CHUNK = 16


def shift_state(run: Path) -> dict | None:
    """The shift step's recorded outcome in RUN_DIR/shift/state.json, or None if it has not finished."""
    path = run / "shift" / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _collect(stack: Stack, rows: PartRows, idx: np.ndarray,
             progress: bool = False) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per source of latents: statistics (n, F), mean error per channel (n, O) and squared error (n, O) of samples
    idx, on the host. The teacher's latents are judged against the stages' target, an O-Encoder's against the image:
    they only ever reach the decoder in the full O-VAE, whose output is compared with the original."""
    store, part = rows.store, rows.part
    out = None
    with torch.no_grad():
        for i in tqdm(range(0, len(idx), CHUNK), desc="global shift: statistics", unit="chunk", disable=not progress,
                      leave=False):
            chunk = idx[i:i + CHUNK]
            images = torch.from_numpy(store.images[chunk]).to(rows.device)
            decodes = images if part.target == "image" else torch.from_numpy(store.decodes[chunk]).to(rows.device)
            sets = rows.latent_sets(chunk, images)
            out = out or [([], [], []) for _ in sets]
            for k, ((stats, err, sq), z) in enumerate(zip(out, sets)):
                y = stack(z.float())  # (n, 3, H, W)
                d = (images if k else decodes).float() - y
                stats.append(global_stats(z.float(), y).cpu())
                err.append(d.mean((2, 3)).cpu())
                sq.append(d.square().mean((2, 3)).cpu())
    return [tuple(torch.cat(t) for t in kind) for kind in out]


def _heldout(shift: GlobalShift | None, held: list, weights: list[float]) -> dict:
    """Weighted held-out MSE and PSNR per source, with `shift` applied (None: as the stages leave it). A per-channel
    shift s changes an image's channel MSE from E[d^2] to E[d^2] - 2 s E[d] + s^2; the clamp to [-1, 1] is ignored
    (it can only lower the error)."""
    mses = []
    for stats, err, sq in held:
        if shift is None:
            mses.append(float(sq.mean()))
            continue
        with torch.no_grad():
            s = shift.shifts_of(shift.standardise(stats)).cpu()  # (n, O)
        mses.append(float((sq - 2 * s * err + s.square()).mean()))
    out = {"heldout_mse": sum(w * m for w, m in zip(weights, mses))}
    for k, m in enumerate(mses):
        out["psnr" if k == 0 else "psnr_oenc"] = psnr_of_mse(m)
    return out


def fit_shift(stack: Stack, rows: PartRows, train_idx: np.ndarray, held_idx: np.ndarray, seconds: float, seed: int,
              device: torch.device, log_to, progress: bool = False) -> tuple[GlobalShift | None, dict]:
    """Evolve the shift of `stack` (its stages trained) on train_idx, judge it on held_idx: (the shift if it is kept,
    else None; a summary with the held-out scores before and after). `progress`: bars for the statistics and fits."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed + 7)
    pick = np.sort(rng.choice(train_idx, min(len(train_idx), MAX_IMAGES), replace=False))
    print(f"global shift: statistics of {len(pick)} training and {len(held_idx)} held-out images, then {seconds:g} s "
          "of evolution", file=log_to)
    train, held = _collect(stack, rows, pick, progress), _collect(stack, rows, held_idx, progress)
    stats = torch.cat([t[0] for t in train])  # (n * sources, F)
    mean, scale = stats.mean(0), stats.std(0) + 1e-6  # one standardisation for every map and the probe
    std = [((t[0] - mean) / scale, t[1]) for t in train]
    n_src = len(train)
    map_seconds = seconds * (1 - PROBE_SHARE) / n_src if n_src > 1 else seconds
    maps = []
    for k, (x, d) in enumerate(std):
        maps.append(ola.fit(x, d, population=POPULATION, out_scale=out_scale_for(typical_largest(d)),
                            max_seconds=map_seconds, device=device, seed=seed + k, progress=progress))
    probe = None
    if n_src > 1:  # positive: the teacher's latents (latent_sets' first), negative: the O-Encoder's
        x = torch.cat([s for s, _ in std])
        # +-0.5: inside what tanh reaches; only the sign is read
        label = torch.cat([torch.full((len(s), 1), 0.5 - k) for k, (s, _) in enumerate(std)])
        probe = ola.fit(x, label, population=POPULATION, out_scale=1.0, max_seconds=seconds * PROBE_SHARE,
                        device=device, seed=seed + n_src, progress=progress)
    shift = GlobalShift(ShiftConfig(stack.in_channels, stack.out_channels, n_src), maps, probe, mean, scale).to(device)
    w = rows.mix_teacher if n_src > 1 else 1.0
    before, after = _heldout(None, held, [w, 1 - w]), _heldout(shift, held, [w, 1 - w])
    kept = after["heldout_mse"] < before["heldout_mse"]
    summary = {"kept": kept, "before": before, "after": after, "seconds": round(time.perf_counter() - t0, 1),
               "train_images": len(pick), "heldout_images": len(held_idx), "sources": n_src}
    if probe is not None:
        with torch.no_grad():  # share of each source's held-out images the probe sends to that source's map
            summary["probe_heldout_accuracy"] = [
                float(((probe(shift.standardise(h[0])) > 0).cpu() == (k == 0)).double().mean())
                for k, h in enumerate(held)]
    shift.training_summary = {"strategy": "ola.fit (evolution)", "population": POPULATION,
                              "seconds": summary["seconds"], "device": str(device), "n_train": len(pick),
                              "heldout": after}
    fmt = lambda s: f"{s['psnr']:.2f} dB" + (  # noqa: E731
        f" / {s['psnr_oenc']:.2f} dB (O-Encoder's, against the image)" if "psnr_oenc" in s else "")
    print(f"global shift: held-out {fmt(before)} -> {fmt(after)}: " + ("kept" if kept else "not kept (no better)"),
          file=log_to)
    return (shift if kept else None), summary


def record(run: Path, summary: dict) -> None:
    """RUN_DIR/shift/state.json: the step is done (kept or not)."""
    if dist.is_main():
        atomic_json(run / "shift" / "state.json", {"status": "done", **summary})
