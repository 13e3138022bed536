"""The O-UNet: a gradient-free per-pixel clone of a denoiser teacher."""

from organic_sd.ounet.model import OUNet, OUNetConfig

__all__ = ["OUNet", "OUNetConfig"]
