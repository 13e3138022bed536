"""Denoiser teachers (SPEC §6): `load_denoiser(spec)` gives eps(x_t, t, cond) plus its noise schedule.

A step t indexes `alphas_cumprod`: x_t = sqrt(ab[t]) x_0 + sqrt(1 - ab[t]) eps. Here also the
deterministic DDIM sampler shared by precompute, generation and evaluation.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch

from organic_sd.teachers.common import WEIGHT_SUFFIXES, TeacherError, read_weights, resolve_device

_MNIST = re.compile(r"^ddpm-mnist(?::(.*))?$", re.S)


class Denoiser(Protocol):
    """A denoiser teacher. x_t is (B, *sample_shape) in the teacher's own units (pixels or scaled latents)."""

    id: str  # stable identifier, recorded in store meta and checkpoints
    device: torch.device
    alphas_cumprod: torch.Tensor  # (T,) float64 on the CPU; valid steps are 0..T-1
    sample_shape: tuple[int, int, int]  # (C, H, W)
    cond_shape: tuple[int, ...] | None  # (L, D) of encode_text per prompt; None: unconditional

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) x_t, (B,) integer steps, cond (B, L, D) or None -> (B, C, H, W) predicted noise."""
        ...

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """P prompts -> (P, L, D) conditioning; a TeacherError for teachers without a text encoder."""
        ...


def check_eps_inputs(x_t, t, sample_shape: Sequence[int], num_steps: int) -> torch.Tensor:
    """Raise a ValueError naming the problem unless x_t is (B, *sample_shape) float and t fits; -> (B,) int64 t."""
    if not isinstance(x_t, torch.Tensor):
        raise ValueError(f"x_t must be a torch.Tensor (B, {', '.join(map(str, sample_shape))}), "
                         f"got {type(x_t).__name__}")
    if x_t.ndim != 1 + len(sample_shape) or tuple(x_t.shape[1:]) != tuple(sample_shape):
        raise ValueError(f"x_t must have shape (B, {', '.join(map(str, sample_shape))}), got {tuple(x_t.shape)}")
    if not x_t.is_floating_point():
        raise ValueError(f"x_t must be float, got dtype {x_t.dtype}")
    B = x_t.shape[0]
    tt = torch.as_tensor(t)
    if tt.is_floating_point() or tt.is_complex():
        if not torch.equal(tt, tt.round()):
            raise ValueError(f"t must hold integer steps 0..{num_steps - 1}, got non-integer values")
    tt = tt.to(torch.int64)
    if tt.ndim == 0:
        tt = tt.expand(B)
    if tuple(tt.shape) != (B,):
        raise ValueError(f"t must have shape ({B},) (one step per sample) or be a scalar, got {tuple(tt.shape)}")
    if B and (int(tt.min()) < 0 or int(tt.max()) >= num_steps):
        raise ValueError(f"t must be in 0..{num_steps - 1}, got values in {int(tt.min())}..{int(tt.max())}")
    return tt


# ---- DDIM (eta = 0): deterministic given the starting noise


def ddim_timesteps(num_steps: int, steps: int) -> list[int]:
    """`steps` integer steps from the top of a schedule of `num_steps` entries down (the last one > 0)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    top = num_steps - 1
    if steps > top:
        raise ValueError(f"steps must be <= {top} for a schedule of {num_steps} entries, got {steps}")
    return [int(round(top * (steps - k) / steps)) for k in range(steps)]  # e.g. 1000, 980, ..., 20


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, ab_t: float, ab_next: float) -> torch.Tensor:
    """One eta = 0 DDIM step from alpha-bar ab_t to ab_next (1.0: the clean estimate x_0)."""
    x0 = (x_t - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)
    return math.sqrt(ab_next) * x0 + math.sqrt(1 - ab_next) * eps


def ddim_sample(denoiser, noise: torch.Tensor, steps: int, cond: torch.Tensor | None = None,
                on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """(B, C, H, W) noise -> (B, C, H, W) samples in `steps` DDIM steps of `denoiser` (anything with eps()).

    `on_step(k, t, x_t, eps)` sees every step's input and the teacher's eps (for recording).
    """
    ab = denoiser.alphas_cumprod
    ts = ddim_timesteps(len(ab), steps)
    x = noise.to(denoiser.device, torch.float32)
    B = x.shape[0]
    for k, t in enumerate(ts):
        e = denoiser.eps(x, torch.full((B,), t, dtype=torch.int64), cond)
        if on_step is not None:
            on_step(k, t, x, e)
        ab_next = float(ab[ts[k + 1]]) if k + 1 < len(ts) else 1.0
        x = ddim_step(x, e, float(ab[t]), ab_next)
    return x


# ---- loading


def load_denoiser(spec: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a denoiser teacher from `spec`:

    - `ddpm-mnist` (the shipped file under $OSD_SHARED_DATA) or `ddpm-mnist:PATH`, or the path of
      that .pth file or of the folder holding it: the MNIST DDPM, loaded exactly;
    - a Stable Diffusion pipeline: a local diffusers folder (model_index.json, unet/, scheduler/,
      text_encoder/, tokenizer/) or a hub id `owner/name[@revision]` (from the local cache unless
      the hub is reachable; an uncached id offline fails at once with what to do).

    `device` must exist here (a TeacherError names it otherwise).
    """
    from organic_sd.teachers import ddpm_mnist

    dev = resolve_device(device)
    text = os.fspath(spec)
    m = _MNIST.match(text)
    if m and not Path(text).exists():
        return ddpm_mnist.load(m.group(1) or None, dev)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet").is_dir():
            from organic_sd.teachers import sd_pipeline

            return sd_pipeline.load_folder(path, dev)
        if (path / ddpm_mnist.FILE_NAME).is_file():
            return ddpm_mnist.load(path, dev)
        raise TeacherError(f"{str(path)!r} is neither a diffusers Stable Diffusion pipeline folder "
                           f"(model_index.json, unet/, ...) nor a folder holding {ddpm_mnist.FILE_NAME}")
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise TeacherError(f"denoiser file {str(path)!r}: expected one of {WEIGHT_SUFFIXES}, got {path.suffix!r}")
        state = read_weights(path)
        if ddpm_mnist.looks_like_ddpm_mnist(state):
            return ddpm_mnist.load(path, dev)
        raise TeacherError(
            f"{str(path)!r} is not a denoiser this package reads: not the MNIST DDPM (beta_t, alpha_t, gt.*); "
            f"a Stable Diffusion teacher is a diffusers pipeline folder. It holds {len(state)} tensors, "
            f"e.g. {sorted(state)[:5]}"
        )
    from organic_sd.teachers import diffusers_vae

    if diffusers_vae.is_hub_id(text):
        from organic_sd.teachers import sd_pipeline

        folder, id_base = sd_pipeline.resolve_hub(text)
        return sd_pipeline.load_folder(folder, dev, id_base)
    raise FileNotFoundError(f"denoiser {text!r}: no such file or folder (and not 'ddpm-mnist[:PATH]' "
                            "or a hub id of the form owner/name)")
