"""Windows around latent positions, and patches folded back into images: a few reshapes and one unfold.

Patch mode applies one OLA module at every latent position, like a convolution:
    decoder: latent window (C, k, k) centred on cell (i, j)       -> pixel block (3, f, f) of cell (i, j)
    encoder: pixel window (3, s, s) centred on the f x f block    -> latent vector (C,) of cell (i, j)
Borders are padded (replicate by default), so any size works and the output size is the
input size divided (encoder) or multiplied (decoder) by f. Rows are ordered (b, i, j).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD_MODES = ("replicate", "reflect")


def _check_pad(pad: str) -> None:
    if pad not in PAD_MODES:
        raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")


def latent_windows(z: torch.Tensor, k: int, pad: str = "replicate") -> torch.Tensor:
    """z (B, C, h, w) -> rows (B*h*w, C*k*k): the k x k window centred on each latent cell."""
    if k < 1 or k % 2 == 0:
        raise ValueError(f"latent window must be odd and positive, got {k}")
    _check_pad(pad)
    B, C, h, w = z.shape
    r = k // 2
    if r:
        if pad == "reflect" and min(h, w) <= r:
            pad = "replicate"  # reflect needs more cells than the radius; replicate works on any size
        z = F.pad(z, (r, r, r, r), mode=pad)
    cols = F.unfold(z, k)  # (B, C*k*k, h*w), channel-major then window row, window column
    return cols.transpose(1, 2).reshape(B * h * w, C * k * k)


def pixel_windows(x: torch.Tensor, f: int, s: int, pad: str = "replicate") -> torch.Tensor:
    """x (B, 3, H, W) -> rows (B*h*w, 3*s*s): the s x s window centred on each f x f block, h = H/f."""
    B, C, H, W = x.shape
    if H % f or W % f:
        raise ValueError(f"image size {H}x{W} is not a multiple of the downscale factor {f}")
    if s < f or (s - f) % 2:
        raise ValueError(f"pixel window {s} must be >= f = {f} and differ from it by an even number")
    _check_pad(pad)
    p = (s - f) // 2  # border around each block
    if p:
        if pad == "reflect" and min(H, W) <= p:
            pad = "replicate"
        x = F.pad(x, (p, p, p, p), mode=pad)
    cols = F.unfold(x, s, stride=f)  # (B, 3*s*s, h*w)
    h, w = H // f, W // f
    return cols.transpose(1, 2).reshape(B * h * w, C * s * s)


def blocks(x: torch.Tensor, f: int) -> torch.Tensor:
    """x (B, 3, H, W) -> rows (B*h*w, 3*f*f): each cell's own f x f pixel block (decoder targets)."""
    B, C, H, W = x.shape
    if H % f or W % f:
        raise ValueError(f"image size {H}x{W} is not a multiple of the downscale factor {f}")
    h, w = H // f, W // f
    x = x.reshape(B, C, h, f, w, f).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, f, f)
    return x.reshape(B * h * w, C * f * f)


def fold_blocks(rows: torch.Tensor, B: int, h: int, w: int, f: int) -> torch.Tensor:
    """rows (B*h*w, 3*f*f) -> image (B, 3, h*f, w*f): the inverse of `blocks`."""
    if rows.shape[0] != B * h * w or rows.shape[1] % (f * f):
        raise ValueError(f"cannot fold rows of shape {tuple(rows.shape)} into {B} images of {h}x{w} cells of {f}x{f}")
    C = rows.shape[1] // (f * f)
    x = rows.reshape(B, h, w, C, f, f).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, f, w, f)
    return x.reshape(B, C, h * f, w * f)


def rows_to_grid(rows: torch.Tensor, B: int, h: int, w: int) -> torch.Tensor:
    """rows (B*h*w, C) -> (B, C, h, w)."""
    return rows.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()


def grid_to_rows(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> rows (B*h*w, C), in the (b, i, j) order of the windows."""
    B, C, h, w = z.shape
    return z.permute(0, 2, 3, 1).reshape(B * h * w, C)


def retina(x: torch.Tensor, dim: int, seed: int, chunk: int = 16384) -> torch.Tensor:
    """x (B, D) -> (B, dim): x @ R.T with R (dim, D) ~ N(0, 1/D) regenerated from `seed` chunk by chunk.

    R is never stored, and only a (dim, chunk) slice of it exists at a time (the research's
    196,608 x 512 matrix would be 400 MB). Each chunk's generator is seeded from (seed, chunk
    index), so the result depends only on (seed, D, dim), not on the device or the batch.
    """
    B, D = x.shape
    out = torch.zeros(B, dim, dtype=torch.float32, device=x.device)
    scale = D ** -0.5
    for j, start in enumerate(range(0, D, chunk)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + j)
        r = torch.randn(dim, min(chunk, D - start), generator=g)  # CPU generator: same numbers everywhere
        out += x[:, start:start + r.shape[1]].float() @ r.to(x.device).T
    return out * scale
