"""Live previews while sampling: decode each step's x0 estimate with an O-Decoder and hand it over.

    from organic_sd.previews import DiffusersPreview
    preview = DiffusersPreview(OVAE.load(), on_image=lambda step, img: img.show(), gif="steps.gif")
    pipe(prompt, callback_on_step_end=preview)          # diffusers: one preview per step

`osd generate --preview steps.gif` (or a folder, one PNG per step) does the same for the O-UNet.
A preview costs one O-Decoder pass (milliseconds on a CPU; docs/BENCHMARKS.md), not a VAE decode.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from organic_sd.ovae.conv import ConvPart
from organic_sd.ovae.model import Part

Decode = Callable[[torch.Tensor], torch.Tensor]  # latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1]


def as_decode(decoder) -> Decode:
    """An OVAE / OVAEDiffusers (its O-Decoder) or a callable latents -> [-1, 1] images, as one callable."""
    if hasattr(decoder, "to_ovae"):  # the diffusers drop-in: its O-VAE, without the output wrapper
        decoder = decoder.to_ovae()
    part = getattr(decoder, "decoder", None)
    if isinstance(part, Part) and part.config.mode == "patch":
        return ConvPart(part)  # OVAE.decode's numbers (to ~1e-6), about twice as fast (docs/BENCHMARKS.md)
    fn = getattr(decoder, "decode", decoder)
    if not callable(fn):
        raise ValueError(f"decoder must be an OVAE or a callable latents -> images, got {type(decoder).__name__}")
    return fn


class Preview:
    """Decodes x0 estimates into preview images: gives each to `on_image(step, PIL image)`, writes PNGs / a GIF."""

    def __init__(self, decoder, on_image: Callable | None = None, png_dir: str | os.PathLike | None = None,
                 gif: str | os.PathLike | None = None, every: int = 1, scale: int = 1, gif_ms: int = 250):
        if every < 1 or scale < 1:
            raise ValueError(f"every and scale must be >= 1, got every={every}, scale={scale}")
        self.decode = as_decode(decoder)
        self.on_image, self.every, self.scale, self.gif_ms = on_image, every, scale, gif_ms
        self.png_dir = Path(png_dir) if png_dir is not None else None
        self.gif = Path(gif) if gif is not None else None
        self.frames: list = []  # PIL images kept for the GIF only

    def show(self, step: int, x0: torch.Tensor):
        """Decode x0 (B, C, h, w) -> one PIL image (a grid for B > 1), hand it over and write it; None if skipped."""
        if step % self.every:
            return None
        from PIL import Image

        from organic_sd.ounet.generate import grid_image

        with torch.no_grad():
            x = self.decode(x0)
        x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)  # (B, 3, H, W) on [0, 1]
        arr = grid_image(x, math.ceil(math.sqrt(x.shape[0]))) if x.shape[0] > 1 else _uint8(x[0])
        img = Image.fromarray(arr)
        if self.scale > 1:  # tiny samples (28 x 28 digits) are unreadable at their own size
            img = img.resize((img.width * self.scale, img.height * self.scale), Image.NEAREST)
        if self.on_image is not None:
            self.on_image(step, img)
        if self.png_dir is not None:
            self.png_dir.mkdir(parents=True, exist_ok=True)
            img.save(self.png_dir / f"step_{step:03d}.png")
        if self.gif is not None:
            self.frames.append(img)
        return img

    def save_gif(self) -> Path | None:
        """Write the frames so far as an animated GIF (the last frame held longer); None without `gif`."""
        if self.gif is None or not self.frames:
            return None
        self.gif.parent.mkdir(parents=True, exist_ok=True)
        durations = [self.gif_ms] * (len(self.frames) - 1) + [4 * self.gif_ms]
        self.frames[0].save(self.gif, save_all=True, append_images=self.frames[1:], duration=durations, loop=0)
        return self.gif

    def ddim_hook(self, alphas_cumprod) -> Callable:
        """An `on_step(k, t, x_t, eps)` for `ddim_sample`: previews x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
        def on_step(k, t, x_t, eps):
            ab = float(alphas_cumprod[t])
            self.show(k, (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab))
        return on_step


def _uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) on [0, 1], C = 1 or 3 -> (H, W, 3) uint8."""
    return (x.expand(3, -1, -1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


class DiffusersPreview(Preview):
    """A diffusers `callback_on_step_end`: previews the scheduler's x0 estimate at every step.

    The x0 estimate comes from the scheduler's own step output (`pred_original_sample`, which
    DDIM, DDPM, Euler, LMS and most others return): the callback wraps `pipe.scheduler.step`
    to keep it. `attach(pipe)` before the call wraps it in time for step 0; otherwise the first
    call wraps it and step 0 previews the latents as they are. A scheduler that returns no x0
    estimate (DPM-Solver) previews the current latents. O-VAE latents are the UNet's latents
    (scaling_factor 1.0), so x0 goes to the decoder unscaled.
    """

    def attach(self, pipe) -> "DiffusersPreview":
        """Wrap pipe.scheduler.step to keep each step's x0 estimate (again on a new scheduler; once per scheduler)."""
        sched = pipe.scheduler
        step = sched.__dict__.get("_osd_plain_step") or sched.step  # never wrap a wrapper
        sched._osd_plain_step = step

        def wrapped(*args, **kwargs):
            out = step(*args, **kwargs)
            x0 = out[1] if isinstance(out, tuple) and len(out) > 1 else getattr(out, "pred_original_sample", None)
            prev = out[0] if isinstance(out, tuple) else getattr(out, "prev_sample", None)
            ok = isinstance(x0, torch.Tensor) and isinstance(prev, torch.Tensor) and x0.shape == prev.shape
            sched._osd_x0 = x0 if ok else None  # a tuple's second item is x0 only where it has the latents' shape
            return out

        sched.step = wrapped
        sched._osd_x0 = None
        return self

    def __call__(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """diffusers calls this after every step; the latents go back unchanged."""
        if "_osd_plain_step" not in pipe.scheduler.__dict__:
            self.attach(pipe)
        latents = callback_kwargs["latents"]
        x0 = pipe.scheduler.__dict__.get("_osd_x0")
        pipe.scheduler._osd_x0 = None  # used once: a later step without an estimate never shows a stale one
        self.show(step, latents if x0 is None else x0)
        if self.gif is not None and step + 1 == getattr(pipe, "num_timesteps", -1):
            self.save_gif()
        return callback_kwargs


def preview_for_generate(target: str | os.PathLike, u, decode: Decode | None) -> Preview:
    """`osd generate --preview`: a GIF (a .gif path) or PNGs (a folder) of an O-UNet's x0 estimates."""
    scale = 1
    if decode is None:  # pixel samples (MNIST): drawn as they are, on the teacher's clean range
        from organic_sd.ounet.generate import to_unit

        def decode(x):
            return to_unit(x.cpu(), u.config.pixel_range) * 2 - 1
        scale = 4  # the grid PNG's magnification: 28 x 28 digits are unreadable at their own size
    target = Path(target)
    gif = target.suffix.lower() == ".gif"
    return Preview(decode, gif=target if gif else None, png_dir=None if gif else target, scale=scale)
