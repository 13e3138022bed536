"""The one preprocessing function: any picture -> (3, size, size) float32 in [-1, 1].

Precompute, training, evaluation and inference all call `preprocess`; the research's
costliest bug was two paths that resized differently. `describe_preprocess` is the
dict recorded in store meta and checkpoints, so that a mismatch is detected, not guessed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

# Bump when the pixels produced for the same input change; stores record it.
PREPROCESS_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


class FrameTooSmallError(ValueError):
    """A frame whose shorter side is below the requested size (we never upscale)."""


@dataclass(frozen=True)
class View:
    """One square crop of a picture: its box in source pixels and whether it is mirrored left-right."""

    left: float
    top: float
    side: float
    flip: bool = False


def views(width: int, height: int, size: int, n: int, key: str) -> list[View]:
    """n crops of a width x height picture: the centre square first, then seeded random squares, odd ones mirrored.

    The extra views are what a few hundred photos need to become a training set (the
    O-VAE's measured numbers were reached on crops and flips): side uniform in [size, min(W, H)]
    (never an upscale), position uniform, the draw seeded by the frame's key so a resumed or
    re-run precompute writes the same pixels.
    """
    if n < 1:
        raise ValueError(f"views: n must be >= 1, got {n}")
    s = min(width, height)
    out = [View((width - s) / 2.0, (height - s) / 2.0, float(s))]
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))
    for j in range(1, n):
        side = float(rng.uniform(size, s)) if s > size else float(s)
        out.append(View(float(rng.uniform(0, width - side)), float(rng.uniform(0, height - side)), side, j % 2 == 1))
    return out


def describe_preprocess(size: int, n_views: int = 1) -> dict:
    """The dict that identifies `preprocess(img, size)` (and the crops of `views`); equal dicts mean equal pixels."""
    d = {
        "name": "organic_sd.center_square_bicubic",
        "version": PREPROCESS_VERSION,
        "size": int(size),
        "resize": "central square of side min(H, W) resampled to size x size, PIL bicubic (antialiased)",
        "small": "error: frames with min(H, W) < size are rejected, never upscaled",
        "color": "RGB; grey replicated; alpha composited on white; EXIF orientation applied when loading files",
        "range": [-1.0, 1.0],
        "layout": "CHW float32",
    }
    if n_views > 1:
        d["views"] = {"n": int(n_views), "rule": "view 0 centre square; views 1.. seeded by frame key: square side "
                      "uniform in [size, min(H, W)], position uniform, odd views mirrored left-right"}
    return d


def load_image(path: str | Path) -> Image.Image:
    """Read an image file (first frame, EXIF-oriented) as an RGB PIL image; ValueError if it is not one."""
    try:
        with Image.open(path) as im:
            im.load()  # force the decode here so that a truncated file fails now, not later
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # how PIL reports corrupt or unknown data
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


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


def preprocess(img: Image.Image | np.ndarray, size: int, view: View | None = None) -> np.ndarray:
    """PIL image or (H, W[, C]) uint8 array -> (3, size, size) float32 in [-1, 1] (the centre square, or `view`)."""
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
    if view is not None:
        if view.side < size or view.left < 0 or view.top < 0 or view.left + view.side > W + 1e-6 \
                or view.top + view.side > H + 1e-6:
            raise ValueError(f"preprocess: view {view} does not fit a {W}x{H} frame at size {size}")
        left, top, s = view.left, view.top, view.side
    im = im.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + s, top + s))
    if view is not None and view.flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    x = np.asarray(im, dtype=np.float32)  # (size, size, 3) in [0, 255]
    return np.ascontiguousarray(x.transpose(2, 0, 1)) / np.float32(127.5) - np.float32(1.0)
