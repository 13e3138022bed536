"""The teacher protocol: what every VAE teacher adapter provides."""

from __future__ import annotations

from typing import Protocol

import torch


class Teacher(Protocol):
    """A VAE teacher. Images are (B, 3, H, W) float in [-1, 1] at this boundary."""

    id: str  # stable identifier, recorded in store meta and checkpoints
    latent_channels: int
    downscale: int  # pixels per latent cell along each axis (8 for SD-VAE / TAESD)
    device: torch.device

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f) latents in the teacher's diffusion space."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, h*f, w*f) images in [-1, 1]."""
        ...
