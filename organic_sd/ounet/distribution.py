"""Distribution metrics of an O-UNet's few-step samples (is the clone's output the same *kind* of image?),
for `osd eval denoiser` and bench/ounet.py.

From one set of seeded noise (never a training store's: those draw from SeedSequence([seed, sample])
streams) three sample sets are drawn by deterministic DDIM:
    reference   the teacher's many-step samples (50 steps)
    teacher     the teacher's few-step samples (8 steps): what the teacher itself loses by the short path
    ounet       the O-UNet's few-step samples (8 steps), the clone's result
Each few-step set is scored against the reference by organic_sd.metrics.samples (KID x1000, precision,
recall, k = 3) in the pooled shape space; the sets share their noise, so the measures leave each sample's
partner out (`paired`). The pooled space cannot see speckle or broken strokes, so every set (the reference
too) also gets the teacher's mean eps error on its samples noised a little (metrics/denoising.py): the fine
structure the teacher finds plausible. Same-noise PSNR stays as a secondary number. One PNG shows the three
side by side.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from organic_sd.metrics.denoising import denoising_error
from organic_sd.metrics.samples import distribution_report
from organic_sd.ounet import generate as gen
from organic_sd.teachers.denoiser import ddim_sample, ddim_timesteps

REF_STEPS, STEPS, SAMPLES, POOL, K = 50, 8, 2000, 4, 3
CHUNK = 500  # samples per DDIM call: bounds the teacher's activations on the CPU


def draw(model, noise: torch.Tensor, steps: int, last: int | None = None) -> torch.Tensor:
    """(N, C, H, W) noise -> (N, C, H, W) DDIM samples of `model` in teacher units, on the CPU, chunk by chunk."""
    with torch.no_grad():
        return torch.cat([ddim_sample(model, noise[i:i + CHUNK], steps, last=last).cpu()
                          for i in range(0, len(noise), CHUNK)])


def _key(teacher, n: int, seed: int, steps: int, ref_steps: int, cond, last) -> tuple:
    c = None if cond is None else hashlib.sha1(cond.detach().cpu().numpy().tobytes()).hexdigest()
    # evaluate wraps the teacher anew on every call (its conditioning bound): the wrapped model is the teacher
    return id(getattr(teacher, "model", teacher)), n, seed, steps, ref_steps, c, last


def measure(u, teacher, n: int, seed: int, pixel_range, steps: int = STEPS, ref_steps: int = REF_STEPS,
            pool: int = POOL, k: int = K, cond=None, cache: dict | None = None,
            last_t: int | None = None) -> tuple[dict, dict]:
    """Score u's and the teacher's `steps`-step samples against the teacher's `ref_steps`-step ones.

    `last_t`: the last step of the few-step schedule, the teacher's and u's alike (ddim_timesteps); the
    reference keeps its own.
    u, teacher: anything ddim_sample runs (conditioning already bound). `cache`: a dict kept by the caller
    so the teacher's two sets are drawn once for several O-UNets. -> (report dict, {set name: images}).
    """
    T = len(teacher.alphas_cumprod)
    ref_steps = min(ref_steps, T - 1)  # a schedule shorter than 51 entries: every step is the many-step path
    noise = gen.seeded_noise(u.sample_shape, n, seed)  # (n, C, H, W)
    key = _key(teacher, n, seed, steps, ref_steps, cond, last_t)
    ref_key = ("reference", *_key(teacher, n, seed, 0, ref_steps, cond, None))  # one reference for every schedule
    cached = cache is not None and key in cache
    if cached:
        ref, xt, t_sec = cache[key]  # t_sec: the seconds of the call that drew them
    else:
        t0 = time.perf_counter()
        ref = cache[ref_key] if cache is not None and ref_key in cache else draw(teacher, noise, ref_steps)
        xt = draw(teacher, noise, steps, last_t)
        t_sec = time.perf_counter() - t0
        if cache is not None:
            cache[key], cache[ref_key] = (ref, xt, t_sec), ref
    t0 = time.perf_counter()
    xu = draw(u, noise, steps, last_t)
    u_sec = time.perf_counter() - t0
    t0 = time.perf_counter()
    unit = {name: gen.to_unit(x, pixel_range) for name, x in (("reference", ref), ("teacher", xt), ("ounet", xu))}
    rep = {"reference": f"the teacher's {ref_steps}-step DDIM samples", "ref_steps": ref_steps, "steps": steps,
           "timesteps": ddim_timesteps(T, steps, last_t), "n": n, "seed": seed, "pool": pool, "k": k, "paired": True}
    for name, x in (("teacher", xt), ("ounet", xu)):
        r = distribution_report(ref, x, pixel_range, pool, k, paired=True)
        rep[name] = {m: r[m] for m in ("kid_x1000", "precision", "recall")}
        rep[name]["psnr_vs_reference"] = gen.psnr_unit(unit[name], unit["reference"])
    rep["dims"] = r["dims"]
    # the teacher's two sets score the same for every O-UNet measured against them: once per cache
    low_key = ("low-noise error", *key)
    if cache is not None and low_key in cache:
        ref_low, teacher_low = cache[low_key]
    else:
        ref_low, teacher_low = (float(denoising_error(teacher, x, pixel_range).mean()) for x in (ref, xt))
        if cache is not None:
            cache[low_key] = ref_low, teacher_low
    rep["reference_denoise_err"], rep["teacher"]["denoise_err"] = ref_low, teacher_low
    rep["ounet"]["denoise_err"] = float(denoising_error(teacher, xu, pixel_range).mean())
    rep["ounet"]["psnr_vs_teacher"] = gen.psnr_unit(unit["ounet"], unit["teacher"])  # same noise, same steps
    rep["seconds"] = {"teacher_sampling": t_sec, "teacher_cached": cached, "ounet_sampling": u_sec,
                      "metrics": time.perf_counter() - t0}
    return rep, unit


def write_grid(path: Path, unit: dict, show: int = 32, cols: int = 8, scale: int = 4) -> None:
    """PNG of the first `show` samples of each set side by side: reference | teacher few-step | O-UNet few-step."""
    from PIL import Image

    panels = []
    for name in ("reference", "teacher", "ounet"):
        panels += [gen.grid_image(unit[name][:show], cols), None]
    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    img = np.concatenate([p if p is not None else gap for p in panels[:-1]], 1)
    img = np.asarray(Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST))
    tmp = path.with_name(f".{path.stem}.tmp.png")
    Image.fromarray(img).save(tmp)
    os.replace(tmp, path)


def markdown(d: dict) -> list[str]:
    """report.md lines: one row per few-step set, and where the reference comes from."""
    lines = [f"Distribution of {d['n']:,} samples (noise seed {d['seed']}) against the reference, "
             f"{d['reference']}, from the same noise: pooled {d['pool']}x{d['pool']} shape space ({d['dims']} "
             f"numbers, centred and scaled by the reference), KID x1000 (cubic kernel, unbiased), precision / recall "
             f"with k = {d['k']}; same-noise partners left out of every comparison. Low-noise error: the teacher's "
             "mean eps error on the samples noised at 5 / 10 / 15% of its schedule (lower: fine structure the "
             "teacher finds plausible; the pooled space cannot see speckle).", "",
             "| samples | KID x1000 | precision | recall | low-noise error | PSNR vs reference | "
             "PSNR vs teacher, same steps |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    if "reference_denoise_err" in d:
        lines.append(f"| teacher, {d['ref_steps']} steps (the reference) | - | - | - | "
                     f"{d['reference_denoise_err']:.4f} | - | - |")
    for name, label in (("teacher", "teacher"), ("ounet", "O-UNet")):
        r = d[name]
        vs_t = f"{r['psnr_vs_teacher']:.2f} dB" if "psnr_vs_teacher" in r else "-"
        low = f"{r['denoise_err']:.4f}" if "denoise_err" in r else "-"
        lines.append(f"| {label}, {d['steps']} steps | {r['kid_x1000']:,.1f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {low} | {r['psnr_vs_reference']:.2f} dB | {vs_t} |")
    return lines + [""]
