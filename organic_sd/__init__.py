"""organic-sd: tiny gradient-free clones of Stable Diffusion parts."""

from organic_sd import ola

__all__ = ["ola"]
__version__ = "0.1.0"
