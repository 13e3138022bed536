"""What a live preview costs: O-Decoder vs a linear latent-to-RGB map vs the teacher's decoder, on one CPU thread.

    python bench/previews.py --store stores/taef2-256 --teacher ../shared/data/teachers/taef2 \
        --images ../shared/data/images/val/cset14 --out previews.md

The linear map is the preview users have today (a fixed C x 3 matrix per latent cell, e.g. ComfyUI's
latent_rgb_factors): here least-squares fitted on the store's training rows, each latent cell against
the mean of its f x f block of the teacher's decode, and drawn at full size by bilinear upsampling.
Quality: PSNR against the teacher's decode of the teacher's latents of held-out photos (the ideal
final x0; no FLUX.2 denoiser runs here to make mid-sampling estimates). Speed: ms per 64 x 64 latent
(a 512 x 512 image), batch 1, the median of --repeats calls after a warm-up, all in one process.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ovae import cpu_seconds
from pairs import photos, write_report

from organic_sd.data.store import Store
from organic_sd.metrics.pixels import mean_image_psnr
from organic_sd.ovae import OVAE
from organic_sd.ovae.conv import ConvPart
from organic_sd.teachers import load_teacher


def fit_linear(store: Store, max_images: int = 2000) -> torch.Tensor:
    """(C + 1, 3) least-squares map: a latent cell (and 1) -> the mean RGB of its block of the teacher's decode."""
    idx = store.indices("train")[:max_images]
    z = torch.from_numpy(np.asarray(store.latents[idx], np.float32))  # (N, C, h, w)
    y = torch.from_numpy(np.asarray(store.decodes[idx], np.float32))  # (N, 3, H, W) in [-1, 1]
    y = F.avg_pool2d(y, y.shape[-1] // z.shape[-1])  # (N, 3, h, w): each cell's block mean
    X = torch.cat([z.permute(0, 2, 3, 1).flatten(0, 2), torch.ones(z[:, 0].numel(), 1)], 1).double()
    Y = y.permute(0, 2, 3, 1).flatten(0, 2).double()
    return torch.linalg.lstsq(X, Y).solution.float()  # (C + 1, 3)


def linear_preview(M: torch.Tensor, z: torch.Tensor, f: int) -> torch.Tensor:
    """Latents (B, C, h, w) -> (B, 3, h*f, w*f) in [-1, 1]: the linear map per cell, bilinear to full size."""
    rgb = torch.einsum("bchw,cd->bdhw", z, M[:-1]) + M[-1].reshape(1, 3, 1, 1)
    return F.interpolate(rgb, scale_factor=f, mode="bilinear", align_corners=False).clamp(-1, 1)


def ms_per_call(fn, x: torch.Tensor, repeats: int) -> float:
    """Median wall-clock ms of fn(x) over `repeats` calls, after one warm-up call (bench/ovae.py's timer)."""
    return 1e3 * cpu_seconds(fn, x, repeats)


def onnx_times(ovae: OVAE, side: int, threads: int, repeats: int) -> dict:
    """Per part: ms of OVAE, of its convolution form and of its ONNX export in onnxruntime, and their max difference."""
    import tempfile

    import onnxruntime as ort

    from organic_sd.ovae.onnx import example_input, export_onnx

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("encoder", "decoder"):
            path = export_onnx(ovae, Path(tmp) / f"{part}.onnx", part)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = threads
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            x = example_input(ovae, part, (side, side))
            feed = {sess.get_inputs()[0].name: x.numpy()}
            fn = ovae.encode if part == "encoder" else ovae.decode
            diff = float((torch.from_numpy(sess.run(None, feed)[0]) - fn(x)).abs().max())
            conv = conv_path(ovae.parts()[part])
            out[part] = {"torch": ms_per_call(fn, x, repeats), "conv": ms_per_call(conv, x, repeats),
                         "onnxruntime": ms_per_call(lambda _: sess.run(None, feed), x, repeats), "max_abs_diff": diff}
    return out


def conv_path(part):
    """A part as plain convolutions: a patch part through ConvPart; a staged part runs as convolutions already."""
    return ConvPart(part) if part.config.mode == "patch" else part


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="a store of the teacher (osd precompute frames), for the linear fit")
    p.add_argument("--teacher", required=True, help="the teacher the O-VAE clones (a taef2 folder, ...)")
    p.add_argument("--images", required=True, help="held-out photos (a folder) for PSNR")
    p.add_argument("--ovae", default=None, help="O-VAE file (default: the shipped one)")
    p.add_argument("--size", type=int, default=256, help="photo side for PSNR")
    p.add_argument("--latent", type=int, default=64, help="latent side for timing (64: a 512 x 512 image)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--onnx", action="store_true", help="also time both parts exported to ONNX in onnxruntime")
    p.add_argument("--out", help="also write the table here (and the numbers beside it as .json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher, ovae, store = load_teacher(args.teacher), OVAE.load(args.ovae), Store.open(args.store)
    if store.meta["teacher"] != teacher.id or ovae.meta["teacher"] != teacher.id:
        raise SystemExit(f"teacher {teacher.id}, store {store.meta['teacher']}, O-VAE {ovae.meta['teacher']}: "
                         "all three must be the same")
    f = ovae.decoder.config.downscale
    M = fit_linear(store)
    previews = {"O-Decoder (OVAE.decode)": ovae.decode}
    if ovae.decoder.config.mode == "patch":  # a staged decoder's OVAE.decode is its convolution pass already
        previews["O-Decoder as convolutions (the preview path)"] = conv_path(ovae.decoder)
    previews.update({"linear latent-to-RGB map": lambda z: linear_preview(M, z, f),
                     "teacher decoder (the reference)": lambda z: teacher.decode(z).float()})
    with torch.inference_mode():
        x = photos(args.images, args.size)
        zt = torch.cat([teacher.encode(xi[None]).float() for xi in x])  # (N, C, h, w)
        ref = torch.cat([teacher.decode(z[None]).float().clamp(-1, 1) for z in zt])
        psnr = {k: mean_image_psnr(torch.cat([fn(z[None]).float().clamp(-1, 1) for z in zt]), ref)
                for k, fn in previews.items()}
    n = args.latent
    reps = -(-n // zt.shape[-1])
    z64 = zt[:1].repeat(1, 1, reps, reps)[..., :n, :n].contiguous()  # a real latent tiled to n x n
    ms = {k: ms_per_call(fn, z64, args.repeats if not k.startswith("teacher") else max(3, args.repeats // 4))
          for k, fn in previews.items()}
    res = {"teacher": teacher.id, "images": len(x), "size": args.size, "latent": n, "threads": args.threads,
           "batch": 1, "store": str(args.store), "fit_images": int(min(len(store.indices("train")), 2000)),
           "machine": platform.machine(), "torch": torch.__version__, "psnr": psnr, "ms": ms}
    t = ms["teacher decoder (the reference)"]
    lines = [f"Teacher `{teacher.id}`; PSNR against the teacher's decode of its latents of {len(x)} held-out photos "
             f"({args.size}x{args.size}); ms per {n}x{n} latent ({n * f}x{n * f} image), batch 1, "
             f"{args.threads} CPU thread(s), median of {args.repeats} calls.", "",
             "| preview | PSNR vs teacher decode (dB) | ms per preview | vs teacher decoder |",
             "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {'-' if k.startswith('teacher') else f'{psnr[k]:.2f}'} | {ms[k]:.1f} | {t / ms[k]:.1f}x |"
              for k in previews]
    if args.onnx:
        res["onnx"] = onnx_times(ovae, n * f, args.threads, args.repeats)
        lines += ["", f"ONNX export (`osd export --onnx`), onnxruntime CPUExecutionProvider vs PyTorch, batch 1, "
                  f"{args.threads} thread(s), {n * f}x{n * f} image / {n}x{n} latent:", "",
                  "| part | PyTorch OVAE (ms) | PyTorch as convolutions (ms) | onnxruntime (ms) | max abs diff |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {k} | {r['torch']:.1f} | {r['conv']:.1f} | {r['onnxruntime']:.1f} | {r['max_abs_diff']:.1e} |"
                  for k, r in res["onnx"].items()]
    write_report("\n".join(lines) + "\n", res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
