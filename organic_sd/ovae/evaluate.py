"""`osd eval pipeline` and `osd reconstruct`: the O-VAE (and a teacher) on images, with pictures and a report.

Measures (organic_sd.metrics.pixels) between two images in [-1, 1] (the package boundary):
    l2      mean squared error on [-1, 1] (the research's "L2")
    cosine  cosine between the two images flattened to vectors
    psnr    10 log10(1 / MSE) on [0, 1], over all pixels of the image
    ssim    gaussian-window SSIM (11 x 11, sigma 1.5, valid positions) on [0, 1], mean over channels
    ms_ssim multi-scale SSIM (5 scales at 176+ pixels, Wang et al. 2003 weights) on [0, 1], mean over channels
Report means are means over images of these per-image values.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from organic_sd.metrics.pixels import cosine_rows, image_metrics
from organic_sd.ovae.pictures import side_by_side, to_pil


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
    per_image = []
    for name, im in _frames(specs):
        if max_images is not None and len(per_image) >= max_images:
            break
        try:
            x = torch.from_numpy(preprocess(im, S))[None].to(dev)  # (1, 3, S, S) in [-1, 1]
        except FrameTooSmallError as e:
            print(f"skipped {name}: {e}", file=sys.stderr)
            continue
        d = out / name
        d.mkdir(exist_ok=True)
        scores = {"image": name}
        panels = [("original", x)]
        to_pil(x).save(d / "orig.png")
        if teacher is not None:
            with torch.inference_mode():
                zt = teacher.encode(x.to(teacher.device)).float()
                xt = teacher.decode(zt).float().clamp(-1, 1).to(dev)
            zt = zt.to(dev)
            to_pil(xt).save(d / "teacher_recon.png")
            scores["teacher_vs_orig"] = image_metrics(xt, x)
            panels.append((f"teacher {scores['teacher_vs_orig']['psnr']:.1f} dB", xt))
        if v.encoder is not None and v.decoder is not None:
            zo = v.encode(x)
            xo = v.decode(zo)
            to_pil(xo).save(d / "o_recon.png")
            scores["ovae_vs_orig"] = image_metrics(xo, x)
            panels.append((f"O-VAE {scores['ovae_vs_orig']['psnr']:.1f} dB", xo))
            if teacher is not None:
                zr = zt if zo.shape == zt.shape else F.adaptive_avg_pool2d(zt, zo.shape[-2:])  # global: pooled
                a, b = zo.permute(0, 2, 3, 1).flatten(0, 2), zr.permute(0, 2, 3, 1).flatten(0, 2)
                scores["latent_cosine"] = float(cosine_rows(a, b).mean())
                scores["latent_l2"] = float((a - b).double().square().mean())
                if zo.shape == zt.shape:
                    # what an SD pipeline's own VAE decoder makes of the O-Encoder's latents: cosine weighs every
                    # latent error alike, this weighs them as the teacher's decoder does
                    with torch.inference_mode():
                        xe = teacher.decode(zo.to(teacher.device)).float().clamp(-1, 1).to(dev)
                    to_pil(xe).save(d / "teacher_decode_of_o_latents.png")
                    scores["tdec_oenc_vs_orig"] = image_metrics(xe, x)
                    panels.append((f"teacher dec(O-Enc z) {scores['tdec_oenc_vs_orig']['psnr']:.1f} dB", xe))
        if teacher is not None and v.decoder is not None:
            xd = v.decode(zt)
            to_pil(xd).save(d / "o_decoder_on_teacher_latents.png")
            scores["odec_vs_teacher"] = image_metrics(xd, xt)
            scores["odec_vs_orig"] = image_metrics(xd, x)
            panels.append((f"O-Dec(teacher z) {scores['odec_vs_teacher']['psnr']:.1f} dB vs teacher", xd))
        side_by_side(panels).save(d / "side_by_side.png")
        per_image.append(scores)
    if not per_image:
        raise ValueError(f"no usable images in {specs} at size {S}")
    report = {"size": S, "ovae": {k: v.meta[k] for k in ("teacher", "parameters")},
              "teacher": None if teacher is None else teacher.id, "notes": notes,
              "mean": _means(per_image), "images": per_image}
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
             "PSNR, SSIM and MS-SSIM on [0, 1]; L2 = mean squared error on [-1, 1]; cosine of flattened images.", "",
             "| comparison | L2 | cosine | PSNR (dB) | SSIM | MS-SSIM |", "| --- | --- | --- | --- | --- | --- |"]
    for key, label in COMPARISONS.items():
        m = rep["mean"].get(key)
        if m:
            ms = f"{m['ms_ssim']:.4f}" if "ms_ssim" in m else "-"  # reports written before MS-SSIM have none
            lines.append(f"| {label} | {m['l2']:.5f} | {m['cosine']:.4f} | {m['psnr']:.2f} | {m['ssim']:.4f} | {ms} |")
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


def check_size(size: int | None, downscale: int = 8) -> None:
    """--size: None (the image's own size) or a positive multiple of the downscale; said before any image is read."""
    if size is not None and (not isinstance(size, int) or size <= 0 or size % downscale):
        raise ValueError(f"--size must be a positive multiple of {downscale} (got {size})")


def reconstruct(image: str, v, out: str | os.PathLike | None = None, size: int | None = None) -> tuple[Path, dict]:
    """O-VAE round trip of one image (no teacher); returns the written path and metrics vs the input.

    Without `size` the whole image is reconstructed at its own size: padded (edge pixels repeated) to a
    multiple of the downscale and cropped back; a global-mode encoder, which takes its training size only,
    gets the centre square at that size. With `size` (a multiple of the downscale): the centre square
    resized to size x size, as `osd eval pipeline` does. The output goes to `out`, or IMAGE_ovae.png in the
    current folder (never beside the input, where a later `osd eval pipeline` of that folder would read it).
    """
    from organic_sd.data import load_image, preprocess

    f = int(v.meta.get("downscale", 8))
    check_size(size, f)
    im = load_image(image)
    enc = v.encoder
    if size is None and enc is not None and enc.config.mode == "global":
        size = _size(v, None)
    if size is not None:
        x = torch.from_numpy(preprocess(im, size))[None].to(v.device)
        y = v(x)
    else:
        a = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / np.float32(127.5) - np.float32(1.0)
        x = torch.from_numpy(np.ascontiguousarray(a))[None].to(v.device)
        H, W = x.shape[-2:]
        ph, pw = -H % f, -W % f
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        y = v(xp)[..., :H, :W]
    out = Path(out) if out else Path.cwd() / (Path(image).stem + "_ovae.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    to_pil(y).save(out)
    return out, image_metrics(y, x)


def print_report(rep: dict, out) -> None:
    """The pipeline report's summary lines, and where the pictures are."""
    for key, label in COMPARISONS.items():
        m = rep["mean"].get(key)
        if m:
            print(f"{label:48s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.4f}  MS-SSIM {m.get('ms_ssim', float('nan')):.4f}"
                  f"  L2 {m['l2']:.5f}  cos {m['cosine']:.4f}")
    if "latent_cosine" in rep["mean"]:
        print(f"{'O-Encoder vs teacher latents':48s} cosine {rep['mean']['latent_cosine']:.4f}")
    print(f"pictures: {Path(out).resolve()}/<image>/side_by_side.png ({len(rep['images'])} images); "
          f"report: {Path(out).resolve() / 'report.md'}")
