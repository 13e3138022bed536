"""`osd eval denoiser`: an O-UNet against its denoiser teacher, by its eps error, samples and speed:

    eps error   MSE / variance of the teacher's eps on fresh teacher samples (DDIM from seed S, never in
                a store) re-noised at each t in `ts`
    samples     few-step DDIM (4, 8, 20 steps) of clone and teacher from the same noise (seed S + 1),
                PSNR between the two image sets on [0, 1], and one PNG: rows = step counts, clone | teacher
    speed       CPU time of one eps call on one batch (median of repeats, fixed torch threads, this
                process) for clone and teacher, and their ratio
    size        parameters of both
    distribution  (samples > 0) KID x1000 and precision / recall of the teacher's and the clone's 8-step DDIM
                samples against the teacher's 50-step samples, all from the same noise (seed S + 2), in a
                pooled shape space (organic_sd.ounet.distribution), and distribution.png of the three sets
Writes report.json, report.md and samples.png (and distribution.png) into the output folder.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from organic_sd.ounet import distribution as dist
from organic_sd.ounet import generate as gen
from organic_sd.ounet.model import OUNet
from organic_sd.teachers.denoiser import ddim_sample

STEPS = (4, 8, 20)
TS = (10, 50, 100, 250, 500)


class _Bound:
    """A denoiser with one conditioning fixed for every sample, so the unconditional helpers can run it."""

    def __init__(self, model, cond: torch.Tensor | None):
        self.model, self.cond = model, cond
        self.alphas_cumprod = model.alphas_cumprod
        self.schedule = torch.as_tensor(model.alphas_cumprod, dtype=torch.float64)
        self.sample_shape = tuple(model.sample_shape)
        self.device = model.device
        self.pixel_range = getattr(model, "pixel_range", None) or getattr(getattr(model, "config", None),
                                                                          "pixel_range", None)

    def _cond(self, B: int):
        if self.cond is None:
            return None
        return self.cond.to(self.device)[None].expand(B, *self.cond.shape)  # (B, *cond_shape)

    def eps(self, x_t, t, cond=None):
        return self.model.eps(x_t, t, self._cond(x_t.shape[0]))

    __call__ = eps


def check_pair(u, teacher) -> None:
    """Raise a ValueError unless `teacher` can be the reference of `u`: same sample shape and schedule."""
    if tuple(teacher.sample_shape) != tuple(u.sample_shape):
        raise ValueError(f"the teacher samples {tuple(teacher.sample_shape)} but the O-UNet {tuple(u.sample_shape)}: "
                         "not the teacher it was trained on")
    a = torch.as_tensor(teacher.alphas_cumprod, dtype=torch.float64).cpu()  # (T,)
    b = torch.as_tensor(u.schedule, dtype=torch.float64).cpu()  # (T,)
    if a.shape != b.shape:
        raise ValueError(f"the teacher's schedule has {a.numel()} steps but the O-UNet's {b.numel()}: "
                         "not the teacher it was trained on")
    if not torch.allclose(a, b, rtol=1e-5, atol=1e-7):
        raise ValueError(f"the teacher's alpha-bar schedule differs from the O-UNet's (largest gap "
                         f"{float((a - b).abs().max()):.3g}): not the teacher it was trained on")


def teacher_parameters(teacher) -> int | None:
    """Numbers in the teacher's network (its eps net when it says which), or None if it holds no nn.Module."""
    for name in ("net", "unet", "module"):
        m = getattr(teacher, name, None)
        if isinstance(m, torch.nn.Module):
            return sum(p.numel() for p in m.parameters())
    if isinstance(teacher, torch.nn.Module):
        return sum(p.numel() for p in teacher.parameters())
    return None


def cpu_ms_per_step(model, batch: int, threads: int, repeats: int = 7, seed: int = 0, cond=None) -> float:
    """Median milliseconds of one eps call of `model` (on the CPU) on `batch` samples at mid t, `threads` threads
    (`cond`: what a conditional model takes, e.g. one class row for all)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *model.sample_shape), generator=g)  # (B, C, H, W)
    t = torch.full((batch,), len(model.alphas_cumprod) // 2, dtype=torch.int64)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            model.eps(x, t, cond)  # warm-up: first-call allocations are not a step's cost
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model.eps(x, t, cond)
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return 1000 * statistics.median(times)


def _on_cpu(model):
    """`model` itself when it runs on the CPU, else a CPU copy (None when it cannot be moved)."""
    if torch.device(model.device).type == "cpu":
        return model
    if isinstance(model, torch.nn.Module):
        return copy.deepcopy(model).to("cpu")
    return None


def evaluate_denoiser(u: OUNet | str | os.PathLike, teacher, out_dir: str | os.PathLike | None, n: int = 64,
                      seed: int = 999, steps=STEPS, ts=TS, cond: torch.Tensor | None = None, threads: int = 1,
                      time_batch: int = 16, repeats: int = 7, cpu_teacher=None, show: int = 16,
                      scale: int = 4, samples: int = 0, sample_steps: int = dist.STEPS,
                      sample_cache: dict | None = None, last_t: int | None = None) -> dict:
    """Score an O-UNet (or its file / run folder) against `teacher`; write report.json, report.md, samples.png.

    `last_t`: the last step of every DDIM schedule drawn here, clone's and teacher's alike (ddim_timesteps;
    None: top / steps), except the 50-step reference's.
    `samples` > 0: also the distribution metrics on that many samples of `sample_steps` DDIM steps
    (`sample_cache`: a dict the caller keeps, so the teacher's sets are drawn once for several O-UNets).
    """
    if not isinstance(u, torch.nn.Module):
        u = OUNet.load(u)
    check_pair(u, teacher)
    if n < 1 or time_batch < 1 or repeats < 1 or threads < 1:
        raise ValueError(f"n, time_batch, repeats and threads must be >= 1, got {n}, {time_batch}, {repeats}, "
                         f"{threads}")
    if samples < 0 or samples == 1:
        raise ValueError(f"samples must be 0 (no distribution metrics) or >= 2, got {samples}")
    T = len(u.schedule)
    bad = [t for t in ts if not 0 <= int(t) < T]
    if bad:
        raise ValueError(f"timesteps {bad} are outside the schedule's 0..{T - 1}")
    steps = tuple(int(s) for s in steps)
    if u.config.cond_dim:
        want = tuple(u.cond_shape or (u.config.cond_dim,))  # the teacher's (L, D) when u has a text adapter
        if cond is None:
            raise ValueError(f"this O-UNet is conditional: pass cond, one conditioning of shape {want} used for "
                             "every sample (e.g. teacher.encode_text([prompt])[0])")
        cond = torch.as_tensor(cond, dtype=torch.float32)
        if tuple(cond.shape) != want:
            raise ValueError(f"cond must be one conditioning of shape {want}, got {tuple(cond.shape)}")
    elif cond is not None:
        raise ValueError("this O-UNet is unconditional: pass cond=None")
    if u.config.teacher and getattr(teacher, "id", None) and u.config.teacher != teacher.id:
        print(f"note: the O-UNet was trained on {u.config.teacher!r}, the reference is {teacher.id!r}",
              file=sys.stderr)
    bu, bt = _Bound(u, cond), _Bound(teacher, cond)

    eps_err = gen.eps_error_by_t(bu, bt, ts=tuple(int(t) for t in ts), n=n, seed=seed)
    noise = gen.seeded_noise(u.sample_shape, n, seed + 1)  # (n, C, H, W): not the eps samples' noise
    pr = u.config.pixel_range
    ddim, rows = {}, []
    with torch.no_grad():
        for k in steps:
            xu = gen.to_unit(ddim_sample(bu, noise, k, last=last_t).cpu(), pr)  # (n, C, H, W) on [0, 1]
            xt = gen.to_unit(ddim_sample(bt, noise, k, last=last_t).cpu(), pr)
            ddim[k] = {"psnr": gen.psnr_unit(xu, xt), "mse": float((xu.double() - xt.double()).square().mean())}
            rows.append((xu[:show], xt[:show]))
    sets = None
    if samples:
        distribution, sets = dist.measure(bu, bt, samples, seed + 2, pr, sample_steps, cond=cond, cache=sample_cache,
                                          last_t=last_t)

    cu, ct = _on_cpu(u), cpu_teacher or _on_cpu(teacher)
    if cond is not None:
        cu, ct = _Bound(cu, cond), None if ct is None else _Bound(ct, cond)
    u_ms = cpu_ms_per_step(cu, time_batch, threads, repeats)
    t_ms = None if ct is None else cpu_ms_per_step(ct, time_batch, threads, repeats)

    report = {
        "ounet_teacher": u.config.teacher, "teacher": getattr(teacher, "id", None),
        "sample_shape": list(u.sample_shape), "n": n, "seed": seed,
        "parameters": {"ounet": u.num_parameters(), "teacher": teacher_parameters(teacher)},
        "eps_error": {str(t): v for t, v in eps_err.items()},
        "ddim": {str(k): v for k, v in ddim.items()}, "last_t": last_t,
        **({"distribution": distribution} if samples else {}),
        "cpu": {"threads": threads, "batch": time_batch, "repeats": repeats, "ounet_ms_per_step": u_ms,
                "teacher_ms_per_step": t_ms, "speedup": None if t_ms is None else t_ms / u_ms},
        "meta": {k: v for k, v in getattr(u, "meta", {}).items() if k in ("training_run", "tick", "minutes")},
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        _write_grid(out / "samples.png", rows, scale)
        report["files"] = {name: str(out / name) for name in ("report.json", "report.md", "samples.png")}
        if sets is not None:
            dist.write_grid(out / "distribution.png", sets, scale=scale)
            report["files"]["distribution.png"] = str(out / "distribution.png")
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "report.md").write_text(markdown(report))
    return report


def _write_grid(path: Path, rows: list[tuple[torch.Tensor, torch.Tensor]], scale: int) -> None:
    """One band per step count: clone samples | teacher samples, bands stacked top to bottom."""
    from PIL import Image

    cols = min(8, rows[0][0].shape[0])
    bands = []
    for xu, xt in rows:
        a, b = gen.grid_image(xu, cols), gen.grid_image(xt, cols)  # (h, w, 3) uint8 each
        bands.append(np.concatenate([a, np.full((a.shape[0], 8, 3), 255, np.uint8), b], 1))
        bands.append(np.full((4, bands[-1].shape[1], 3), 255, np.uint8))
    img = np.concatenate(bands[:-1], 0)
    img = np.asarray(Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST))
    tmp = path.with_name(f".{path.stem}.tmp.png")
    Image.fromarray(img).save(tmp)
    os.replace(tmp, path)


def markdown(rep: dict) -> str:
    """report.md: one table of the report's numbers."""
    ts, ks = list(rep["eps_error"]), list(rep["ddim"])
    c, p = rep["cpu"], rep["parameters"]
    t_ms = "n/a" if c["teacher_ms_per_step"] is None else f"{c['teacher_ms_per_step']:.2f}"
    speed = "n/a" if c["speedup"] is None else f"{c['speedup']:.2f}x"
    tp = "n/a" if p["teacher"] is None else f"{p['teacher']:,}"
    lines = [f"# O-UNet vs teacher `{rep['teacher']}`", "",
             (f"{rep['n']} samples, seed {rep['seed']}; eps error = MSE / variance of the teacher's eps on fresh "
              f"teacher samples re-noised at t; PSNR between clone and teacher DDIM samples from the same noise "
              f"(pixel range 1.0); CPU time of one eps call on {c['batch']} samples, {c['threads']} thread(s), "
              f"median of {c['repeats']}."), "",
             "| metric | value |", "| --- | --- |",
             f"| parameters (O-UNet / teacher) | {p['ounet']:,} / {tp} |"]
    lines += [f"| eps error t = {t} | {rep['eps_error'][t]:.4f} |" for t in ts]
    lines += [f"| DDIM {k} steps PSNR vs teacher | {_db(rep['ddim'][k]['psnr'])} |" for k in ks]
    lines += [f"| CPU ms per step (O-UNet / teacher) | {c['ounet_ms_per_step']:.2f} / {t_ms} |",
              f"| x faster than the teacher per step | {speed} |", ""]
    if rep.get("distribution"):
        lines += dist.markdown(rep["distribution"])
    if rep.get("files"):
        lines += [f"Samples: `samples.png` (rows: {', '.join(ks)} steps; O-UNet left, teacher right).", ""]
        if "distribution.png" in rep["files"]:
            d = rep["distribution"]
            lines += [f"`distribution.png`: teacher {d['ref_steps']} steps (the reference) | teacher {d['steps']} "
                      f"steps | O-UNet {d['steps']} steps, same noise in the same place.", ""]
    return "\n".join(lines)


def _db(v: float) -> str:
    return f"{v:.2f} dB" if math.isfinite(v) else str(v)


def print_summary(rep: dict) -> None:
    """A few lines for the terminal, ending with where the files are."""
    eps = " / ".join(f"{v:.3f}" for v in rep["eps_error"].values())
    print(f"eps error at t = {' / '.join(rep['eps_error'])}: {eps}")
    print("DDIM PSNR vs teacher: " + ", ".join(f"{k} steps {_db(v['psnr'])}" for k, v in rep["ddim"].items()))
    c = rep["cpu"]
    speed = "" if c["speedup"] is None else f" (teacher {c['teacher_ms_per_step']:.2f} ms: {c['speedup']:.2f}x faster)"
    print(f"CPU per step on {c['batch']} samples, {c['threads']} thread(s): {c['ounet_ms_per_step']:.2f} ms{speed}; "
          f"{rep['parameters']['ounet']:,} parameters")
    d = rep.get("distribution")
    if d:
        print(f"vs the teacher's {d['ref_steps']}-step samples ({d['n']:,} each), {d['steps']} steps, "
              "KID x1000 / precision / recall: " + ", ".join(
                  f"{name} {d[key]['kid_x1000']:,.1f} / {d[key]['precision']:.3f} / {d[key]['recall']:.3f}"
                  for name, key in (("teacher", "teacher"), ("O-UNet", "ounet"))))
        if "denoise_err" in d["ounet"]:
            print(f"low-noise error (the teacher's eps error on the samples noised a little; fine structure): "
                  f"reference {d['reference_denoise_err']:.4f}, teacher {d['steps']} steps "
                  f"{d['teacher']['denoise_err']:.4f}, O-UNet {d['ounet']['denoise_err']:.4f}")
    if rep.get("files"):
        f = rep["files"]
        print(f"wrote {', '.join(v for k, v in f.items() if k != 'samples.png')} and {f['samples.png']}")


def run_cli(args) -> int:
    """`osd eval denoiser` with parsed arguments (ounet, teacher, out, n, seed, steps, ts, threads, device, samples,
    sample_steps, last_t)."""
    from organic_sd.teachers import load_denoiser

    u = OUNet.load(args.ounet, device=args.device)  # first: a missing run fails before the teacher loads
    if u.config.classes:
        raise ValueError(f"{args.ounet} is class-conditional: its samples are judged per class, by class fidelity "
                         "(python bench/ounet_cond.py --ounet ... --teacher ...), which this command does not compute")
    teacher = load_denoiser(args.teacher, device=args.device)
    cpu_teacher = teacher if torch.device(teacher.device).type == "cpu" else load_denoiser(args.teacher, device="cpu")
    rep = evaluate_denoiser(u, teacher, args.out, n=args.n, seed=args.seed, steps=args.steps, ts=args.ts,
                            threads=args.threads, cpu_teacher=cpu_teacher, samples=args.samples,
                            sample_steps=args.sample_steps, last_t=args.last_t)
    print_summary(rep)
    return 0
