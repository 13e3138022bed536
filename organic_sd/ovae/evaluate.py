"""Evaluation: image metrics, `osd eval latents`, `osd eval pipeline`, `osd reconstruct` and `osd demo`.

Metrics between two images in [-1, 1] (the package boundary):
    l2      mean squared error on [-1, 1] (the research's "L2")
    cosine  cosine between the two images flattened to vectors
    psnr    10 log10(1 / MSE) on [0, 1], over all pixels
    ssim    gaussian-window SSIM (11 x 11, sigma 1.5, valid positions) on [0, 1], mean over channels
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PANEL_GAP = 4  # pixels between pictures in side_by_side.png


# -- metrics ---------------------------------------------------------------------------------

def psnr(mse_pm1: torch.Tensor) -> torch.Tensor:
    """PSNR in dB on [0, 1] from an MSE measured on [-1, 1] (the range is twice as wide: MSE / 4)."""
    return 10.0 * torch.log10(4.0 / torch.as_tensor(mse_pm1, dtype=torch.float64).clamp_min(1e-12))


def cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between matching rows of a, b (N, D) -> (N,)."""
    return F.cosine_similarity(a.double(), b.double(), dim=1, eps=1e-12)


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-t.square() / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of images a, b (B, C, H, W) in [-1, 1] -> (B,), computed on [0, 1] (Wang et al. 2004 constants)."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x, y = (a.double() + 1) / 2, (b.double() + 1) / 2
    C = x.shape[1]
    size = min(11, x.shape[-1], x.shape[-2])
    g = _gauss(size).to(x.device)
    win = (g[:, None] * g[None, :]).expand(C, 1, size, size)  # (C, 1, k, k) depthwise
    blur = lambda t: F.conv2d(t, win, groups=C)  # noqa: E731  ("valid": no padding artefacts at borders)
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))


def image_metrics(pred: torch.Tensor, ref: torch.Tensor) -> dict:
    """l2, cosine, psnr, ssim of one image pair (1, 3, H, W) in [-1, 1]."""
    p, r = pred.double().cpu(), ref.double().cpu()
    mse = float((p - r).square().mean())
    return {"l2": mse, "cosine": float(cosine_rows(p.flatten()[None], r.flatten()[None])[0]),
            "psnr": float(psnr(torch.tensor(mse))), "ssim": float(ssim(p, r)[0])}


# -- pictures --------------------------------------------------------------------------------

def to_pil(x: torch.Tensor):
    """(1, 3, H, W) or (3, H, W) in [-1, 1] -> RGB PIL image."""
    from PIL import Image

    a = x.reshape(-1, *x.shape[-2:]).detach().float().cpu().clamp(-1, 1)
    a = ((a + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(a), "RGB")


def side_by_side(panels: list[tuple[str, torch.Tensor]]):
    """Pictures in a row, each with its label above it."""
    from PIL import Image, ImageDraw

    ims = [(label, to_pil(x)) for label, x in panels]
    H = max(im.height for _, im in ims)
    W = sum(im.width for _, im in ims) + PANEL_GAP * (len(ims) - 1)
    out = Image.new("RGB", (W, H + 14), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x0 = 0
    for label, im in ims:
        out.paste(im, (x0, 14))
        draw.text((x0 + 2, 1), label, fill=(0, 0, 0))
        x0 += im.width + PANEL_GAP
    return out


# -- osd eval pipeline / reconstruct / demo --------------------------------------------------

def _frames(specs: list[str]):
    """(name, PIL image) for every image of the specs (files, folders, sample:... sources)."""
    from organic_sd.data import iter_frames, open_sources

    names = {}
    for fr in iter_frames(open_sources(specs)):
        if fr.image is None:
            print(f"skipped {fr.key}: {fr.error}", file=sys.stderr)
            continue
        stem = Path(fr.source.split("/")[-1]).stem + (f"_f{fr.pos}" if fr.video else "")
        names[stem] = names.get(stem, 0) + 1
        yield (stem if names[stem] == 1 else f"{stem}_{names[stem]}"), fr.image


def _size(v, size: int | None) -> int:
    return int(size or v.meta["image_size"])


def pipeline(specs: list[str], v, out: str | os.PathLike, teacher=None, size: int | None = None,
             max_images: int | None = None) -> dict:
    """The research's test_ovae_pipeline.py over images: pictures per image, report.md and report.json in `out`."""
    from organic_sd.data import FrameTooSmallError, preprocess

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    S = _size(v, size)
    dev = v.device
    notes = []
    if teacher is not None and teacher.id != v.meta["teacher"]:
        notes.append(f"the O-VAE clones teacher {v.meta['teacher']!r} but the teacher given is {teacher.id!r}")
    dec = v.decoder.config if v.decoder is not None else None
    if teacher is not None and dec is not None and dec.latents.startswith("oenc:"):  # mix: includes teacher latents
        notes.append(f"the O-Decoder was trained on {dec.latents} latents, so 'O-Decoder on teacher latents' "
                     "measures it outside its training distribution")
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    rows = []
    for name, im in _frames(specs):
        if max_images is not None and len(rows) >= max_images:
            break
        try:
            x = torch.from_numpy(preprocess(im, S))[None].to(dev)  # (1, 3, S, S) in [-1, 1]
        except FrameTooSmallError as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
            continue
        d = out / name
        d.mkdir(exist_ok=True)
        rec = {"image": name}
        panels = [("original", x)]
        to_pil(x).save(d / "orig.png")
        if teacher is not None:
            with torch.inference_mode():
                zt = teacher.encode(x.to(teacher.device)).float()
                xt = teacher.decode(zt).float().clamp(-1, 1).to(dev)
            zt = zt.to(dev)
            to_pil(xt).save(d / "teacher_recon.png")
            rec["teacher_vs_orig"] = image_metrics(xt, x)
            panels.append((f"teacher {rec['teacher_vs_orig']['psnr']:.1f} dB", xt))
        if v.encoder is not None and v.decoder is not None:
            zo = v.encode(x)
            xo = v.decode(zo)
            to_pil(xo).save(d / "o_recon.png")
            rec["ovae_vs_orig"] = image_metrics(xo, x)
            panels.append((f"O-VAE {rec['ovae_vs_orig']['psnr']:.1f} dB", xo))
            if teacher is not None:
                zr = zt if zo.shape == zt.shape else F.adaptive_avg_pool2d(zt, zo.shape[-2:])  # global: pooled
                a, b = zo.permute(0, 2, 3, 1).flatten(0, 2), zr.permute(0, 2, 3, 1).flatten(0, 2)
                rec["latent_cosine"] = float(cosine_rows(a, b).mean())
                rec["latent_l2"] = float((a - b).double().square().mean())
                if zo.shape == zt.shape:
                    # what an SD pipeline's own VAE decoder makes of the O-Encoder's latents: cosine weighs every
                    # latent error alike, this weighs them as the teacher's decoder does
                    with torch.inference_mode():
                        xe = teacher.decode(zo.to(teacher.device)).float().clamp(-1, 1).to(dev)
                    to_pil(xe).save(d / "teacher_decode_of_o_latents.png")
                    rec["tdec_oenc_vs_orig"] = image_metrics(xe, x)
                    panels.append((f"teacher dec(O-Enc z) {rec['tdec_oenc_vs_orig']['psnr']:.1f} dB", xe))
        if teacher is not None and v.decoder is not None:
            xd = v.decode(zt)
            to_pil(xd).save(d / "o_decoder_on_teacher_latents.png")
            rec["odec_vs_teacher"] = image_metrics(xd, xt)
            rec["odec_vs_orig"] = image_metrics(xd, x)
            panels.append((f"O-Dec(teacher z) {rec['odec_vs_teacher']['psnr']:.1f} dB vs teacher", xd))
        side_by_side(panels).save(d / "side_by_side.png")
        rows.append(rec)
    if not rows:
        raise ValueError(f"no usable images in {specs} at size {S}")
    report = {"size": S, "ovae": {k: v.meta[k] for k in ("teacher", "parameters")},
              "teacher": None if teacher is None else teacher.id, "notes": notes,
              "mean": _means(rows), "images": rows}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(_markdown(report))
    return report


def _means(rows: list[dict]) -> dict:
    out = {}
    for key in COMPARISONS:
        have = [r[key] for r in rows if key in r]
        if have:
            out[key] = {m: float(np.mean([h[m] for h in have])) for m in have[0]}
    for key in ("latent_cosine", "latent_l2"):
        have = [r[key] for r in rows if key in r]
        if have:
            out[key] = float(np.mean(have))
    return out


COMPARISONS = {"teacher_vs_orig": "teacher recon vs original", "ovae_vs_orig": "O-VAE recon vs original",
               "odec_vs_teacher": "O-Decoder on teacher latents vs teacher decode",
               "odec_vs_orig": "O-Decoder on teacher latents vs original",
               "tdec_oenc_vs_orig": "teacher decoder on O-Encoder latents vs original"}


def _markdown(rep: dict) -> str:
    lines = ["# O-VAE pipeline report", "",
             f"O-VAE: teacher `{rep['ovae']['teacher']}`, {rep['ovae']['parameters']:,} parameters; "
             f"teacher given: `{rep['teacher']}`; {len(rep['images'])} images at {rep['size']}x{rep['size']} "
             "(organic_sd.data.preprocess).", "",
             "PSNR and SSIM on [0, 1]; L2 = mean squared error on [-1, 1]; cosine of flattened images.", "",
             "| comparison | L2 | cosine | PSNR (dB) | SSIM |", "| --- | --- | --- | --- | --- |"]
    for key, label in COMPARISONS.items():
        m = rep["mean"].get(key)
        if m:
            lines.append(f"| {label} | {m['l2']:.5f} | {m['cosine']:.4f} | {m['psnr']:.2f} | {m['ssim']:.4f} |")
    if "latent_cosine" in rep["mean"]:
        lines += ["", f"O-Encoder vs teacher latents: mean cosine {rep['mean']['latent_cosine']:.4f}, "
                      f"L2 {rep['mean']['latent_l2']:.4f}."]
    lines += ["", "| image | " + " | ".join(f"{COMPARISONS[k]} PSNR" for k in COMPARISONS if k in rep["mean"]) + " |",
              "| --- |" + " --- |" * sum(k in rep["mean"] for k in COMPARISONS)]
    for r in rep["images"]:
        cells = [f"{r[k]['psnr']:.2f}" for k in COMPARISONS if k in rep["mean"]]
        lines.append(f"| {r['image']} | " + " | ".join(cells) + " |")
    for n in rep["notes"]:
        lines += ["", f"Note: {n}."]
    return "\n".join(lines) + "\n"


def reconstruct(image: str, v, out: str | os.PathLike | None = None, size: int | None = None) -> tuple[Path, dict]:
    """O-VAE round trip of one image (no teacher); returns the written path and metrics vs the input."""
    from organic_sd.data import load_image, preprocess

    S = _size(v, size)
    x = torch.from_numpy(preprocess(load_image(image), S))[None].to(v.device)
    y = v(x)
    out = Path(out) if out else Path(image).with_name(Path(image).stem + "_ovae.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    to_pil(y).save(out)
    return out, image_metrics(y, x)


# -- osd eval latents ------------------------------------------------------------------------

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


def demo(out: str | os.PathLike, teacher_spec: str | None = None, seconds: float = 20.0, device: str = "cpu",
         images: int = 6, size: int = 128) -> dict:
    """No teacher: evaluate the shipped O-VAE on scikit-image's photos. With one: precompute, train, export, eval."""
    from organic_sd.ovae.model import OVAE

    out = Path(out)
    photos = ["sample:skimage"]
    if teacher_spec is None:
        v = OVAE.load(device=device)
        print(f"shipped O-VAE: clones {v.meta['teacher']}, {v.num_parameters():,} parameters")
        rep = pipeline(photos, v, out, max_images=images)
        return rep
    from organic_sd.data import precompute
    from organic_sd.ovae.train import TrainConfig, train
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


def export(encoder_run, decoder_run, out):
    """Bundle the encoder of one run and the decoder of another into one O-VAE file."""
    from organic_sd.ovae.model import OVAE, read_parts

    enc = read_parts(encoder_run)["encoder"]
    dec = read_parts(decoder_run)["decoder"]
    if enc is None:
        raise ValueError(f"{encoder_run} holds no encoder")
    if dec is None:
        raise ValueError(f"{decoder_run} holds no decoder")
    if enc.config.teacher != dec.config.teacher:
        raise ValueError(f"encoder clones {enc.config.teacher!r} but decoder {dec.config.teacher!r}")
    v = OVAE(enc, dec, meta={"encoder_run": str(encoder_run), "decoder_run": str(decoder_run)})
    v.save(out)
    return v


def print_report(rep: dict, out) -> None:
    """The pipeline report's summary lines, and where the pictures are."""
    for key, label in COMPARISONS.items():
        m = rep["mean"].get(key)
        if m:
            print(f"{label:48s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  L2 {m['l2']:.5f}  "
                  f"cos {m['cosine']:.4f}")
    if "latent_cosine" in rep["mean"]:
        print(f"{'O-Encoder vs teacher latents':48s} cosine {rep['mean']['latent_cosine']:.4f}")
    print(f"pictures: {Path(out).resolve()}/<image>/side_by_side.png ({len(rep['images'])} images); "
          f"report: {Path(out).resolve() / 'report.md'}")
