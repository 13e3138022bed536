"""`osd generate`: deterministic DDIM with an O-UNet, optionally beside the teacher's samples from the same noise."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from organic_sd.metrics.pixels import pooled_psnr
from organic_sd.ounet.model import OUNet
from organic_sd.teachers.ddim import ddim_sample, seeded_noise  # noqa: F401  (seeded_noise: generate's API)


def to_unit(x: torch.Tensor, pixel_range) -> torch.Tensor:
    """Samples in teacher units -> [0, 1], clamped to the teacher's clean range."""
    lo, hi = pixel_range
    return ((x.clamp(lo, hi) - lo) / (hi - lo)).float()


def psnr_unit(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two image sets on [0, 1], pooled over all their pixels."""
    return pooled_psnr(a, b, width=1.0)


def grid_image(images: torch.Tensor, cols: int) -> np.ndarray:
    """(n, C, H, W) on [0, 1] -> (rows (H+1)+1, cols (W+1)+1, 3) uint8 with 1-pixel gaps."""
    n, C, H, W = images.shape
    rows = math.ceil(n / cols)
    out = np.full((rows * (H + 1) + 1, cols * (W + 1) + 1, 3), 64, np.uint8)
    im = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    im = np.repeat(im, 3, 1) if C == 1 else im[:, :3]
    for i in range(n):
        r, c = divmod(i, cols)
        out[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = im[i].transpose(1, 2, 0)
    return out


def generate(u: OUNet, out: str | Path, steps: int = 8, seed: int = 0, n: int = 16, teacher=None,
             scale: int = 4, cond: torch.Tensor | None = None, decode=None, preview=None,
             teacher_cond: torch.Tensor | None = None) -> dict:
    """Sample n images in `steps` DDIM steps of u from seeded noise; write a grid PNG (clone | teacher).

    `cond`: the teacher's text embedding of the prompt, (1 or n, L, D), for an O-UNet with a text
    adapter (the teacher, if shown, gets the same, or `teacher_cond` where given: a guided class row is the
    clone's alone). `decode`: latents (n, C, h, w) -> images
    (n, 3, H, W) in [-1, 1] (a VAE decoder), for latent teachers; without it the samples are drawn as they are.
    `preview`: an `organic_sd.previews.Preview` shown the O-UNet's x0 estimate at every step.
    """
    from PIL import Image

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if u.config.cond_dim and cond is None:
        raise ValueError("this O-UNet is conditional: give a prompt (its text embedding from the teacher's text "
                         "encoder); the empty prompt \"\" draws unconditional samples")
    if not u.config.cond_dim and cond is not None:
        raise ValueError("this O-UNet is unconditional: it takes no prompt")
    noise = seeded_noise(u.sample_shape, n, seed)  # (n, C, H, W)

    def images(model, on_step=None, cond=cond) -> torch.Tensor:
        with torch.no_grad():
            x = ddim_sample(model, noise, steps, cond, on_step)  # (n, C, H, W) teacher units, on the model's device
            if decode is not None:  # an O-VAE decoder accepts only tensors on its own device
                return ((decode(x).float().cpu().clamp(-1, 1) + 1) / 2).float()  # (n, 3, H', W') on [0, 1]
        return to_unit(x.cpu(), u.config.pixel_range)

    x = images(u, None if preview is None else preview.ddim_hook(u.alphas_cumprod))
    if preview is not None:
        preview.save_gif()
    cols = math.ceil(math.sqrt(n))
    panels = [grid_image(x, cols)]
    res = {"out": str(out), "n": n, "steps": steps, "seed": seed, "samples": x}
    if teacher is not None:
        if tuple(teacher.sample_shape) != tuple(u.sample_shape):
            raise ValueError(f"teacher samples {tuple(teacher.sample_shape)} but the O-UNet {u.sample_shape}")
        xt = images(teacher, cond=cond if teacher_cond is None else teacher_cond)
        panels += [np.full((panels[0].shape[0], 8, 3), 255, np.uint8), grid_image(xt, cols)]
        res.update(teacher_samples=xt, psnr=psnr_unit(x, xt))
    img = np.concatenate(panels, 1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(out)
    return res


def eps_error_by_t(u: OUNet, teacher, ts=(10, 50, 100, 250, 500), n: int = 64, seed: int = 12345,
                   sample_steps: int = 20) -> dict[int, float]:
    """Held-out eps error: fresh teacher samples (DDIM from seed), re-noised at each t -> MSE / var(teacher eps)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, *u.sample_shape), generator=g)
    with torch.no_grad():
        x0 = ddim_sample(teacher, noise, sample_steps).cpu()  # (n, C, H, W) clean samples never trained on
        out = {}
        for t in ts:
            ab = float(u.schedule[t])
            z = torch.randn(x0.shape, generator=g)
            x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * z
            tt = torch.full((n,), t, dtype=torch.int64)
            e_t = teacher.eps(x_t.to(teacher.device), tt).cpu().double()
            e_u = u(x_t, tt).cpu().double()
            out[int(t)] = float((e_u - e_t).square().mean() / e_t.var())
    return out
