"""organic-sd: tiny gradient-free clones of Stable Diffusion parts."""

from organic_sd import ola

__all__ = ["OVAE", "OUNet", "ola"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # OVAE and OUNet are imported on first use, so `import organic_sd` stays light
    if name == "OVAE":
        from organic_sd.ovae.model import OVAE

        return OVAE
    if name == "OUNet":
        from organic_sd.ounet.model import OUNet

        return OUNet
    raise AttributeError(f"module 'organic_sd' has no attribute {name!r}")
