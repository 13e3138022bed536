"""The O-VAE: O-Encoder and O-Decoder applied patch-wise (or globally), trained from a store by evolution."""

from organic_sd.ovae.model import OVAE, Part, PartConfig

__all__ = ["OVAE", "Part", "PartConfig"]
