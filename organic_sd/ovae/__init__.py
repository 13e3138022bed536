"""The O-VAE: O-Encoder and O-Decoder applied patch-wise (or globally), trained from a store by evolution."""

__all__ = ["OVAE", "Part", "PartConfig"]


def __getattr__(name: str):
    # imported on first use, so the command line can read ovae/config.py without torch
    if name in __all__:
        from organic_sd.ovae import model

        return getattr(model, name)
    raise AttributeError(f"module 'organic_sd.ovae' has no attribute {name!r}")
