"""Benchmark O-VAE configurations on held-out photos: quality, size and CPU speed against the teacher.

    python bench/ovae.py --store STORE --teacher TEACHER [--val DIR] [--seconds 60] [--device cuda]

For each configuration (global mode as in the research; patch linear; patch with hidden layers;
each strategy) an encoder and a decoder are trained with `osd train`'s loop for --seconds each,
then measured on --val (default $OSD_SHARED_DATA/images/val/cset14, never trained on; each photo
preprocessed to 256x256 by organic_sd.data.preprocess):
  - O-Decoder on teacher latents vs the teacher's decode (PSNR, SSIM)
  - full O-VAE (O-Encoder -> O-Decoder) vs the original (PSNR, SSIM)
  - mean cosine of O-Encoder vs teacher latent vectors
  - parameters, and CPU encode+decode time of one 512x512 image as a ratio to the teacher's, both timed in
    this process on the same threads, in turn in each round (the median of the same-round ratios, as
    bench/ovae_speed.py; global mode: both at 256x256)
Two kinds of reference are listed beside the evolved rows, and live here only (never in `osd
train` or `ola.fit`): closed-form least-squares fits of the linear architectures (no tanh),
the single-layer optimum; and the hidden-layer architectures themselves (the same OLAModule:
tanh layers, readout over [inputs, hidden], out_scale * tanh) trained by Adam on the same
rows for --gradient-seconds per part: how far evolution is from a gradient fit.
Writes results.json and results.md to --out, merged with earlier calls' results there (so the
configurations can be split over several calls with --configs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from ovae_speed import interleaved_times  # bench/ovae_speed.py: the pair's rounds, the teacher in each

from organic_sd.data import Store
from organic_sd.ola.module import OLAConfig, OLAModule
from organic_sd.ovae.evaluate import pipeline
from organic_sd.ovae.model import OVAE, Part, read_parts
from organic_sd.ovae.config import TrainConfig
from organic_sd.ovae.rows import PartRows, out_scale, part_config, source_encoder
from organic_sd.ovae.train import train

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OSD_SHARED_DATA", REPO.parent / "shared" / "data"))

OWN_MIX = "mix:own-encoder"  # stands for the configuration's own encoder run
# name -> (encoder settings, decoder settings); strategy and hidden layers per part
CONFIGS = {
    "global-retina512-1x1": ({"mode": "global", "retina_dim": 512, "grid": 1},
                             {"mode": "global", "grid": 1, "global_size": 64}),
    "patch-linear-snes": ({"window": 16}, {"window": 3}),
    "patch-linear-trust": ({"window": 16, "strategy": "trust"}, {"window": 3, "strategy": "trust"}),
    "patch-linear-trust-neuron": ({"window": 16, "strategy": "trust-neuron"},
                                  {"window": 3, "strategy": "trust-neuron"}),
    "patch-linear-dec5x5": ({"window": 16}, {"window": 5}),
    "patch-hidden": ({"window": 16, "hidden": (128,)}, {"window": 3, "hidden": (64,)}),
    "patch-hidden-dec5x5": ({"window": 16, "hidden": (256,)}, {"window": 5}),
    "patch-hidden-dec32": ({"window": 16, "hidden": (192,)}, {"window": 5, "hidden": (32,)}),
    "patch-hidden-dec32-mix": ({"window": 16, "hidden": (192,)}, {"window": 5, "hidden": (32,), "latents": OWN_MIX}),
    # the recipe shipped until 2026-11-27: the decoder also learns from this configuration's own encoder's
    # latents (`--latents mix:RUN`)
    "patch-hidden-shipped": ({"window": 16, "hidden": (192,)}, {"window": 5, "hidden": (64,), "latents": OWN_MIX}),
    # shipped 2026-11-27: a smaller, more decodable encoder (rounds of 16, the encoder default), a wider decoder
    "patch-shipped-1127": ({"window": 16, "hidden": (64,)}, {"window": 5, "hidden": (120,), "latents": OWN_MIX}),
    # shipped 2026-11-27 06:00: decoder units grown on teacher-heavy rows (0.8), then (`osd train --init`) the
    # readout alone re-fitted on rows weighted towards the O-Encoder's (0.45); each stage gets --seconds
    "patch-shipped-1127b": ({"window": 16, "hidden": (64,)},
                            {"window": 5, "hidden": (168,), "latents": OWN_MIX, "mix_teacher": 0.8,
                             "readout_mix_teacher": 0.45}),
    # shipped 2026-11-27 07:25: the same two stages, readout at 0.55 (units of another seed, chosen among four by
    # bench/readout_probe.py); the first O-VAE to meet every floor of the issue on Set14
    "patch-shipped-1127c": ({"window": 16, "hidden": (64,)},
                            {"window": 5, "hidden": (168,), "latents": OWN_MIX, "mix_teacher": 0.8,
                             "readout_mix_teacher": 0.55}),
}
# least-squares references: name -> (encoder settings, decoder settings), linear, no tanh
REFERENCES = {
    "LS global-retina512-1x1": CONFIGS["global-retina512-1x1"],
    "LS patch-linear (enc 16x16, dec 3x3)": ({"window": 16}, {"window": 3}),
    "LS patch-linear (enc 16x16, dec 5x5)": ({"window": 16}, {"window": 5}),
}

# gradient references: name -> (encoder settings, decoder settings) with hidden layers, trained by Adam
GRADIENT_REFERENCES = {
    "Adam patch-hidden (enc 16x16+192, dec 5x5+32)": ({"window": 16, "hidden": (192,)}, {"window": 5, "hidden": (32,)}),
    "Adam patch-hidden (enc 16x16+192, dec 5x5+48)": ({"window": 16, "hidden": (192,)}, {"window": 5, "hidden": (48,)}),
    "Adam patch-hidden (enc 16x16+192, dec 5x5+64)": ({"window": 16, "hidden": (192,)}, {"window": 5, "hidden": (64,)}),
    # the shipped recipe's shapes and rows: the decoder also learns from the (Adam) encoder's latents
    "Adam patch-hidden-shipped (dec 5x5+64 on mixed latents)": ({"window": 16, "hidden": (192,)},
                                                                 {"window": 5, "hidden": (64,), "latents": OWN_MIX}),
}


class LinearRef(torch.nn.Module):
    """y = W x + b fitted in closed form (a reference, never produced by evolution)."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(w, requires_grad=False), torch.nn.Parameter(b, requires_grad=False)
        self.out_dim, self.in_dim = w.shape

    def forward(self, x):
        return x @ self.weight.T + self.bias


def reference_rows(store: Store, cfg: TrainConfig, device, max_rows: int, rng: np.random.Generator):
    """(x (N, in), y (N, out), part config): the training rows `osd train` would draw for cfg, its --latents included."""
    part_cfg = part_config(cfg, store)
    dev = torch.device(device)
    rows = PartRows(store, part_cfg, dev, source_encoder(cfg.latents, store, dev))
    return (*rows.draw(store.indices("train"), max_rows, rng), part_cfg)


def ridge_solve(g: torch.Tensor, rhs: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Least squares from its normal equations g (F, F), rhs (F, out), with a ridge relative to g's mean diagonal."""
    eye = torch.eye(g.shape[0], device=g.device, dtype=g.dtype)
    return torch.linalg.solve(g + ridge * g.diagonal().mean() * eye, rhs)


def least_squares(store: Store, cfg: TrainConfig, device, max_rows: int, ridge: float = 1e-3) -> Part:
    """Ridge least squares on a draw of training rows, wrapped as a Part."""
    x, y, part_cfg = reference_rows(store, cfg, device, max_rows, np.random.default_rng(cfg.seed))
    xb = torch.cat([x, torch.ones(x.shape[0], 1, device=x.device)], 1).double()  # (N, in+1)
    sol = ridge_solve(xb.T @ xb, xb.T @ y.double(), ridge).float()  # (in+1, out)
    return Part(part_cfg, LinearRef(sol[:-1].T.contiguous(), sol[-1].contiguous()))


def adam_reference(store: Store, cfg: TrainConfig, device, max_rows: int, seconds: float,
                   batch: int = 4096, lr: float = 2e-3) -> Part:
    """The OLAModule of `cfg`'s shape trained by Adam on MSE for `seconds`, wrapped as a Part (a reference only)."""
    rng = np.random.default_rng(cfg.seed)
    x, y, part_cfg = reference_rows(store, cfg, device, max_rows, rng)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    xn = (x - mean) / std  # standardised inputs train far faster; folded back into the weights below
    net = OLAModule(OLAConfig(x.shape[1], y.shape[1], tuple(cfg.hidden), out_scale(cfg, store, rng))).to(device)
    net.requires_grad_(True)  # OLAModules are built frozen; this reference is the one place they are not
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed)
    with torch.enable_grad():
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        t0, step = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds:
            i = torch.randint(x.shape[0], (batch,), generator=gen, device=x.device)
            loss = (net(xn[i]) - y[i]).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 500 == 0:  # cosine-free decay by time: larger steps first, fine ones last
                for g in opt.param_groups:
                    g["lr"] = lr * max(0.05, 1 - (time.perf_counter() - t0) / seconds)
    with torch.no_grad():  # fold the standardisation into every layer that reads the raw inputs
        layers = [net.hidden[0]] if len(net.hidden) else []
        for layer in [*layers, net.readout]:
            w_x = layer.weight[:, :x.shape[1]]
            layer.bias -= (w_x * (mean / std)).sum(1)
            w_x /= std
    return Part(part_cfg, net.requires_grad_(False))


def cpu_seconds(fn, x, repeats: int) -> float:
    """Median wall time of fn(x) over repeats, after one warm-up call."""
    with torch.inference_mode():
        return statistics.median(interleaved_times({"fn": fn}, x, repeats)["fn"])


def measure(name: str, v: OVAE, teacher, args, out: Path, cpu_teacher) -> dict:
    """Quality on the held-out photos and CPU speed of one encoder/decoder pair."""
    rep = pipeline([args.val], v, out / "eval" / name.replace(" ", "_").replace("/", "_"), teacher=teacher, size=256,
                   max_images=args.max_images)
    m = rep["mean"]
    cpu = OVAE(*[Part(p.config, p.module.to("cpu")) for p in (v.encoder, v.decoder)])
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    if v.encoder.config.mode == "global":
        x = torch.rand(1, 3, 256, 256) * 2 - 1  # global mode only runs at its training size
    with torch.inference_mode():  # the teacher in the same rounds: a slow spell slows both sides of each ratio
        times = interleaved_times({"teacher": lambda t: cpu_teacher.decode(cpu_teacher.encode(t)),
                                   "ovae": lambda t: cpu.decode(cpu.encode(t))}, x, 5)
    ovae_s = statistics.median(times["ovae"])
    return {
        "name": name, "params_encoder": v.encoder.num_parameters(), "params_decoder": v.decoder.num_parameters(),
        "params": v.num_parameters(),
        "odec_psnr": m["odec_vs_teacher"]["psnr"], "odec_ssim": m["odec_vs_teacher"]["ssim"],
        "ovae_psnr": m["ovae_vs_orig"]["psnr"], "ovae_ssim": m["ovae_vs_orig"]["ssim"],
        "latent_cosine": m.get("latent_cosine"), "teacher_psnr": m["teacher_vs_orig"]["psnr"],
        "cpu_ms": 1000 * ovae_s,
        "speedup_vs_teacher": statistics.median(t / o for t, o in zip(times["teacher"], times["ovae"])),
        "timed_at": "256x256 (global mode)" if v.encoder.config.mode == "global" else "512x512",
    }


def markdown(rows: list[dict], args, teacher_id: str, teacher_ms: float) -> str:
    lines = [f"O-VAE benchmark: teacher `{teacher_id}`, store `{args.store}`, held-out photos `{args.val}` (256x256), "
             f"{args.seconds:.0f} s of evolution per part (Adam references: {args.gradient_seconds:.0f} s) on {args.device}; CPU times on {torch.get_num_threads()} "
             f"threads, teacher encode+decode of 512x512: {teacher_ms:.0f} ms.", "",
             "| configuration | params (enc + dec) | O-Dec on teacher z vs teacher PSNR / SSIM | O-VAE vs original "
             "PSNR / SSIM | latent cosine | CPU ms (512x512) | x faster than teacher |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        cos = "" if r["latent_cosine"] is None else f"{r['latent_cosine']:.3f}"
        lines.append(f"| {r['name']} | {r['params']:,} ({r['params_encoder']:,} + {r['params_decoder']:,}) | "
                     f"{r['odec_psnr']:.2f} / {r['odec_ssim']:.3f} | {r['ovae_psnr']:.2f} / {r['ovae_ssim']:.3f} | "
                     f"{cos} | {r['cpu_ms']:.1f}{'*' if r['timed_at'] != '512x512' else ''} | "
                     f"{r['speedup_vs_teacher']:.1f} |")
    if rows:
        lines += ["", f"Teacher vs original on the same photos: {rows[0]['teacher_psnr']:.2f} dB PSNR. "
                      "Global mode compares its pooled latent with the teacher's latent pooled the same way; "
                      "* timed at 256x256, the teacher too (global mode runs at its training size only). "
                      "LS rows are closed-form least-squares references (no tanh), Adam rows the same hidden-layer "
                      "architecture trained by gradient descent; neither is evolution."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="store written by `osd precompute frames` with the same teacher")
    p.add_argument("--teacher", required=True, help="teacher spec (the store's teacher)")
    p.add_argument("--val", default=str(SHARED / "images" / "val" / "cset14"), help="held-out photos folder")
    p.add_argument("--seconds", type=float, default=60.0, help="training seconds per part per configuration")
    p.add_argument("--tick-seconds", type=float, default=None, help="default: a third of --seconds")
    p.add_argument("--max-rows", type=int, default=200_000)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {list(CONFIGS)}")
    p.add_argument("--max-images", type=int, default=None, help="evaluate on the first N photos only (smoke runs)")
    p.add_argument("--no-references", action="store_true", help="skip the least-squares and Adam references")
    p.add_argument("--gradient-seconds", type=float, default=60.0, help="Adam reference training seconds per part")
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "ovae"))
    args = p.parse_args(argv)
    from organic_sd.teachers import load_teacher

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = Store.open(args.store)
    teacher = load_teacher(args.teacher, device=args.device)
    if teacher.id != store.meta["teacher"]:
        raise SystemExit(f"the store holds teacher {store.meta['teacher']!r} but --teacher is {teacher.id!r}")
    cpu_teacher = load_teacher(args.teacher, device="cpu")
    x512 = torch.rand(1, 3, 512, 512) * 2 - 1
    teacher_s = cpu_seconds(lambda t: cpu_teacher.decode(cpu_teacher.encode(t)), x512, 3)
    print(f"teacher {teacher.id}: CPU encode+decode of 512x512 {1000 * teacher_s:.0f} ms", flush=True)
    tick = args.tick_seconds or args.seconds / 3
    results = []
    names = [n for n in args.configs.split(",") if n]
    for name in names:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; known: {list(CONFIGS)}")
        enc_kw, dec_kw = CONFIGS[name]
        parts = {}
        for kind, kw in (("encoder", enc_kw), ("decoder", dec_kw)):
            run = out / "runs" / f"{name}-{kind}"
            if kw.get("latents") == OWN_MIX:
                kw = {**kw, "latents": f"mix:{out / 'runs' / f'{name}-encoder'}"}
            readout_mix = kw.pop("readout_mix_teacher", None)
            hidden = bool(kw.get("hidden"))
            cfg = TrainConfig(kind, args.store, str(run), max_minutes=args.seconds / 60, tick_seconds=tick,
                              first_tick_seconds=0.6 * args.seconds if hidden else None, max_rows=args.max_rows,
                              device=args.device, **kw)
            print(f"== {name}: {kind}", flush=True)
            shutil.rmtree(run, ignore_errors=True)  # a fresh run: resuming would give it more than --seconds
            if train(cfg)["status"] == "no-result":  # the trainer said why (too few seconds); no run to measure
                raise SystemExit(f"{name}: the {kind} learned nothing in --seconds {args.seconds:g}: give more")
            if readout_mix is not None:  # a second stage: the same units, the readout re-fitted on other rows
                print(f"== {name}: {kind} readout, mix {readout_mix}", flush=True)
                run = out / "runs" / f"{name}-{kind}-readout"
                shutil.rmtree(run, ignore_errors=True)
                train(replace(cfg, out=str(run), init=str(cfg.out), mix_teacher=readout_mix, first_tick_seconds=None))
            parts[kind] = read_parts(run, args.device)[kind]
        results.append(measure(name, OVAE(parts["encoder"], parts["decoder"]), teacher, args, out, cpu_teacher))
        print(json.dumps(results[-1]), flush=True)
    if not args.no_references:
        for name, (enc_kw, dec_kw) in REFERENCES.items():
            enc = least_squares(store, TrainConfig("encoder", args.store, "-", **enc_kw), args.device, args.max_rows)
            dec = least_squares(store, TrainConfig("decoder", args.store, "-", **dec_kw), args.device, args.max_rows)
            results.append(measure(name, OVAE(enc, dec), teacher, args, out, cpu_teacher))
            print(json.dumps(results[-1]), flush=True)
        for name, (enc_kw, dec_kw) in GRADIENT_REFERENCES.items():
            print(f"== {name}", flush=True)
            enc = adam_reference(store, TrainConfig("encoder", args.store, "-", **enc_kw), args.device, args.max_rows,
                                 args.gradient_seconds)
            if dec_kw.get("latents") == OWN_MIX:  # the decoder's O-Encoder rows come from this reference's encoder
                enc_file = out / "runs" / f"{name}-encoder.safetensors"
                enc_file.parent.mkdir(parents=True, exist_ok=True)
                OVAE(encoder=enc).save(enc_file)
                dec_kw = {**dec_kw, "latents": f"mix:{enc_file}"}
            dec = adam_reference(store, TrainConfig("decoder", args.store, "-", **dec_kw), args.device, args.max_rows,
                                 args.gradient_seconds)
            results.append(measure(name, OVAE(enc, dec), teacher, args, out, cpu_teacher))
            print(json.dumps(results[-1]), flush=True)
    # results of earlier calls with the same --out are kept (configs can be run in separate calls)
    old = json.loads((out / "results.json").read_text())["results"] if (out / "results.json").is_file() else []
    done = {r["name"] for r in results}
    results = [r for r in old if r["name"] not in done] + results
    order = {n: i for i, n in enumerate([*CONFIGS, *REFERENCES, *GRADIENT_REFERENCES])}
    results.sort(key=lambda r: order.get(r["name"], len(order)))
    (out / "results.json").write_text(json.dumps({"teacher": teacher.id, "teacher_cpu_ms": 1000 * teacher_s,
                                                  "args": vars(args), "results": results}, indent=1))
    md = markdown(results, args, teacher.id, 1000 * teacher_s)
    (out / "results.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
