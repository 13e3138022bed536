"""The one preprocessing function: any picture -> (3, size, size) float32 in [-1, 1].

Precompute, training, evaluation and inference all call `preprocess`; the research's
costliest bug was two paths that resized differently. `describe_preprocess` is the
dict recorded in store meta and checkpoints, so that a mismatch is detected, not guessed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Bump when the pixels produced for the same input change; stores record it.
PREPROCESS_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


class FrameTooSmallError(ValueError):
    """A frame whose shorter side is below the requested size (we never upscale)."""


def describe_preprocess(size: int) -> dict:
    """The dict that identifies `preprocess(img, size)`; equal dicts mean equal pixels."""
    return {
        "name": "organic_sd.center_square_bicubic",
        "version": PREPROCESS_VERSION,
        "size": int(size),
        "resize": "central square of side min(H, W) resampled to size x size, PIL bicubic (antialiased)",
        "small": "error: frames with min(H, W) < size are rejected, never upscaled",
        "color": "RGB; grey replicated; alpha composited on white; EXIF orientation applied when loading files",
        "range": [-1.0, 1.0],
        "layout": "CHW float32",
    }


def load_image(path: str | Path) -> Image.Image:
    """Read an image file (first frame, EXIF-oriented) as an RGB PIL image."""
    with Image.open(path) as im:
        im.load()  # force the decode here so that a truncated file fails now, not later
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float greys: stretch to 8 bits by their own range, as viewers do
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.round().astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _from_array(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"preprocess: array dtype must be uint8 or float in [0, 1], got {a.dtype}")
        a = (np.clip(a, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return Image.fromarray(a, "L").convert("RGB")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return _to_rgb(Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[2] == 3 else "RGBA"))
    raise ValueError(f"preprocess: array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {a.shape}")


def preprocess(img: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """PIL image or (H, W[, C]) uint8 array -> (3, size, size) float32 in [-1, 1]."""
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise ValueError(f"preprocess: size must be a positive int, got {size!r}")
    im = _to_rgb(img) if isinstance(img, Image.Image) else _from_array(np.asarray(img))
    W, H = im.size
    s = min(W, H)
    if s < size:
        raise FrameTooSmallError(f"frame is {W}x{H}, its shorter side {s} is below size {size} (no upscaling)")
    # resize-shorter-side-then-centre-crop done in one antialiased pass via `box`,
    # with a fractional offset so the crop is centred exactly for odd margins
    left, top = (W - s) / 2.0, (H - s) / 2.0
    im = im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + s, top + s))
    x = np.asarray(im, dtype=np.float32)  # (size, size, 3) in [0, 255]
    return np.ascontiguousarray(x.transpose(2, 0, 1)) / np.float32(127.5) - np.float32(1.0)
