"""The O-UNet: a gradient-free clone of a denoiser teacher (a coarse stage and a per-pixel stack)."""

__all__ = ["OUNet", "OUNetConfig"]


def __getattr__(name: str):
    # imported on first use, so the command line can read ounet/config.py without torch
    if name in __all__:
        from organic_sd.ounet import model

        return getattr(model, name)
    raise AttributeError(f"module 'organic_sd.ounet' has no attribute {name!r}")
