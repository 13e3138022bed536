"""ONNX export of an O-Encoder or O-Decoder: a graph of plain ops (Pad, Conv, Tanh, DepthToSpace, Clip).

    from organic_sd.ovae.onnx import export_onnx, check_onnx
    export_onnx(OVAE.load(), "odec.onnx", "decoder")          # dynamic batch, height and width
    check_onnx("odec.onnx", OVAE.load(), "decoder", size=(48, 80))   # max |onnxruntime - PyTorch|

Writing needs `onnx` (and PyTorch's exporter); checking needs `onnxruntime`: the `onnx` extra.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from organic_sd.ovae.conv import ConvPart
from organic_sd.ovae.model import KINDS, OVAE

OPSET = 17
EXTRA_HINT = "pip install 'organic-sd[onnx]'"


def _part(ovae: OVAE, part: str):
    if part not in KINDS:
        raise ValueError(f"part must be one of {KINDS}, got {part!r}")
    p = ovae.parts().get(part)
    if p is None:
        raise ValueError(f"this O-VAE has no {part} (it holds {', '.join(ovae.parts())}); bundle one with `osd export`")
    return p


class _Staged(torch.nn.Module):
    """A staged part as the graph to export: its stages' convolution path; a decoder's clamped as OVAE.decode
    clamps."""

    def __init__(self, part):
        super().__init__()
        self.stack, self.clamp = part.module, part.config.kind == "decoder"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stack(x)
        return y.clamp(-1.0, 1.0) if self.clamp else y


def example_input(ovae: OVAE, part: str, size: tuple[int, int] = (64, 64), batch: int = 1) -> torch.Tensor:
    """A seeded input for `part` at image size (H, W): images in [-1, 1] (encoder) or latents ~ N(0, 1) (decoder)."""
    c = _part(ovae, part).config
    H, W = size
    if H % c.downscale or W % c.downscale:
        raise ValueError(f"size must be multiples of the downscale {c.downscale}, got {H}x{W}")
    g = torch.Generator().manual_seed(0)
    if part == "encoder":
        return torch.rand(batch, 3, H, W, generator=g) * 2 - 1
    return torch.randn(batch, c.latent_channels, H // c.downscale, W // c.downscale, generator=g)


def export_onnx(ovae: OVAE, path: str | os.PathLike, part: str = "decoder", size: tuple[int, int] = (64, 64),
                opset: int = OPSET) -> Path:
    """Write `part` of `ovae` as an ONNX graph with dynamic batch, height and width; returns the path."""
    try:
        import onnx  # noqa: F401  (the exporter needs it; say so before tracing)
    except ImportError:
        raise ImportError(f"ONNX export needs the onnx package: {EXTRA_HINT}") from None
    p = _part(ovae, part)
    model = (_Staged(p) if p.config.mode == "staged" else ConvPart(p)).cpu().float()
    x = example_input(ovae, part, size)
    names = ("images", "latents") if part == "encoder" else ("latents", "images")
    axes = {0: "batch", 2: "height", 3: "width"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the TorchScript exporter: one self-contained file of standard ops, no onnxscript needed
    with warnings.catch_warnings():  # F.pad's reversed pad list is a Slice it cannot fold: harmless, only noise
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        # a staged part's shape checks read sizes while tracing: they hold for every size, so the warning is noise
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(model, (x,), str(path), input_names=[names[0]], output_names=[names[1]],
                          dynamic_axes={names[0]: axes, names[1]: axes}, opset_version=opset, dynamo=False)
    return path


def run_onnx(path: str | os.PathLike, x: torch.Tensor, threads: int = 1):
    """Run the exported graph on `x` in onnxruntime (CPU, `threads` threads) -> numpy array."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"running an exported graph needs onnxruntime: {EXTRA_HINT}") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.detach().cpu().float().numpy()})[0]


def check_onnx(path: str | os.PathLike, ovae: OVAE, part: str, size: tuple[int, int] = (48, 80)) -> float:
    """Max |onnxruntime - PyTorch| of `part` at image size `size` (pick one the graph was not exported at)."""
    x = example_input(ovae, part, size, batch=2)
    want = (ovae.encode if part == "encoder" else ovae.decode)(x.to(ovae.device)).cpu()
    got = torch.from_numpy(run_onnx(path, x))
    if got.shape != want.shape:
        raise ValueError(f"{path}: onnxruntime gave shape {tuple(got.shape)}, PyTorch {tuple(want.shape)}")
    return float((got - want).abs().max())


def run_cli(args) -> int:
    """`osd export --onnx FILE --part P [--ovae SPEC]`: write the graph, then check it at another size."""
    ovae = OVAE.load(args.ovae)
    path = export_onnx(ovae, args.onnx, args.part, size=(64, 64))
    print(f"wrote {path}: the O-VAE's {args.part} ({ovae.meta['teacher']}), ONNX opset {OPSET}, "
          "dynamic batch/height/width, exported at 64x64 pixels")
    try:
        diff = check_onnx(path, ovae, args.part, size=(48, 80))
    except ImportError:
        print(f"not checked: onnxruntime is not installed ({EXTRA_HINT})")
        return 0
    print(f"onnxruntime vs PyTorch at 48x80 pixels, batch 2: max abs difference {diff:.2e}")
    if diff > 1e-3:
        raise RuntimeError(f"{path}: onnxruntime differs from PyTorch by {diff:.2e} (expected <= 1e-3)")
    return 0
