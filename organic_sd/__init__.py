"""organic-sd: tiny gradient-free clones of Stable Diffusion parts."""

__all__ = ["OVAE", "OUNet", "ola"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # ola, OVAE and OUNet are imported on first use, so `import organic_sd` (and `osd --help`) needs no torch
    if name == "ola":
        import importlib

        return importlib.import_module("organic_sd.ola")
    if name == "OVAE":
        from organic_sd.ovae.model import OVAE

        return OVAE
    if name == "OUNet":
        from organic_sd.ounet.model import OUNet

        return OUNet
    raise AttributeError(f"module 'organic_sd' has no attribute {name!r}")
