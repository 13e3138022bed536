"""Which encoder goes with which decoder? Every pairing of trained O-VAE parts, scored on held-out photos.

    python bench/pairs.py --teacher ../shared/data/teachers/taef2 --images ../shared/data/images/val/cset14 \
        --encoders shipped=organic_sd/assets/ovae/ovae.safetensors new=runs/oenc \
        --decoders shipped=organic_sd/assets/ovae/ovae.safetensors new=runs/odec --out pairs.md

Per encoder: mean cosine and L2 against the teacher's latents, and the teacher's own decoder on the
O-Encoder's latents (what an SD pipeline's VAE makes of them) against the original. Per pair: the full
O-VAE's PSNR against the original. Per decoder: PSNR on the teacher's latents against the teacher's
decode. An encoder's cosine alone does not pick its partner: docs/BENCHMARKS.md (2026-11-27) has two
encoders of higher cosine that every decoder reconstructs worse than the shipped one.
Each argument is NAME=PATH, PATH an O-VAE file or an `osd train` run folder; PSNR is the mean over images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from organic_sd.data import FrameTooSmallError, iter_frames, open_sources, preprocess
from organic_sd.metrics.pixels import cosine_rows, mean_image_psnr
from organic_sd.ovae.model import read_parts
from organic_sd.teachers import load_teacher


def named(specs: list[str], kind: str) -> dict:
    """NAME=PATH arguments -> {name: the run's or file's encoder or decoder Part}."""
    out = {}
    for s in specs:
        name, sep, path = s.partition("=")
        if not sep:
            raise SystemExit(f"--{kind}s takes NAME=PATH, got {s!r}")
        part = read_parts(path)[kind]
        if part is None:
            raise SystemExit(f"{path} holds no {kind}")
        out[name] = part
    return out


def photos(folder: str, size: int) -> torch.Tensor:
    """(N, 3, size, size) in [-1, 1]: every photo of the folder large enough for `size`."""
    xs = []
    for fr in iter_frames(open_sources([folder])):
        try:
            xs.append(torch.from_numpy(preprocess(fr.image, size)))
        except FrameTooSmallError:
            continue
    if not xs:
        raise SystemExit(f"no photos of at least {size}x{size} in {folder}")
    return torch.stack(xs)


@torch.inference_mode()
def score(encoders: dict, decoders: dict, teacher, x: torch.Tensor) -> dict:
    """The table's numbers: per encoder, per decoder and per pair."""
    zt = torch.cat([teacher.encode(xi[None]).float() for xi in x])  # (N, C, h, w)
    xt = torch.cat([teacher.decode(z[None]).float().clamp(-1, 1) for z in zt])
    res = {"images": len(x), "encoders": {}, "decoders": {}}
    for kd, d in decoders.items():
        res["decoders"][kd] = {"odec_vs_teacher_psnr": mean_image_psnr(d(zt).clamp(-1, 1), xt)}
    for ke, e in encoders.items():
        zo = e(x)
        if zo.shape != zt.shape:
            raise SystemExit(f"encoder {ke} makes latents {tuple(zo.shape[1:])}, the teacher {tuple(zt.shape[1:])}")
        a, b = zo.permute(0, 2, 3, 1).flatten(0, 2), zt.permute(0, 2, 3, 1).flatten(0, 2)
        xe = torch.cat([teacher.decode(z[None]).float().clamp(-1, 1) for z in zo])
        res["encoders"][ke] = {
            "cosine": float(cosine_rows(a, b).mean()), "l2": float((a - b).square().mean()),
            "tdec_vs_orig_psnr": mean_image_psnr(xe, x),
            "full_psnr": {kd: mean_image_psnr(d(zo).clamp(-1, 1), x) for kd, d in decoders.items()}}
    return res


def markdown(res: dict, teacher_id: str, images: str) -> str:
    """The results as a markdown table: one row per encoder, one full-O-VAE column per decoder."""
    decs = list(res["decoders"])
    lines = [f"Teacher `{teacher_id}`, {res['images']} photos of `{images}`; PSNR against the original unless said.", "",
             "| encoder | cosine | L2 | teacher dec of its latents | " + " | ".join(f"full, dec {d}" for d in decs) + " |",
             "| --- | ---: | ---: | ---: |" + " ---: |" * len(decs)]
    for ke, r in res["encoders"].items():
        lines.append(f"| {ke} | {r['cosine']:.4f} | {r['l2']:.4f} | {r['tdec_vs_orig_psnr']:.2f} | "
                     + " | ".join(f"{r['full_psnr'][d]:.2f}" for d in decs) + " |")
    lines += ["", "| decoder | on teacher latents vs teacher decode |", "| --- | ---: |"]
    lines += [f"| {kd} | {r['odec_vs_teacher_psnr']:.2f} |" for kd, r in res["decoders"].items()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="the teacher the parts clone (a taef2 folder, ...)")
    p.add_argument("--images", required=True, help="held-out photos (a folder)")
    p.add_argument("--encoders", nargs="+", required=True, metavar="NAME=PATH")
    p.add_argument("--decoders", nargs="+", required=True, metavar="NAME=PATH")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", help="also write the table here (and the numbers beside it as .json)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load_teacher(args.teacher)
    res = score(named(args.encoders, "encoder"), named(args.decoders, "decoder"), teacher, photos(args.images, args.size))
    md = markdown(res, teacher.id, args.images)
    write_report(md, res, args.out)
    return 0


def write_report(md: str, res: dict, out: str | None) -> None:
    """Print a markdown table; with `out`, also write it there and the results beside it as .json."""
    print(md)
    if out:
        Path(out).write_text(md)
        Path(out).with_suffix(".json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
