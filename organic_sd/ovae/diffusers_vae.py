"""The O-VAE as a diffusers model with AutoencoderTiny's interface, to drop into a pipeline as its VAE.

    pipe.vae = OVAEDiffusers.from_ovae(OVAE.load())   # or StableDiffusionPipeline(..., vae=...)
    pipe.vae.save_pretrained("my-ovae"); OVAEDiffusers.from_pretrained("my-ovae")

O-VAE latents are already the diffusion model's latents (the teacher adapter applied the
teacher's scaling and shift when the store was made), as TAESD's are. So, like AutoencoderTiny,
the config says scaling_factor 1.0 and shift_factor 0.0: a pipeline's `latents / scaling_factor
+ shift_factor` then hands the O-VAE exactly what `OVAE.decode` expects, and its pixels are the
O-VAE's own. Needs diffusers (the `diffusers` extra); the rest of the package does not.
"""

from __future__ import annotations

import math

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

from organic_sd.ola.module import OLAConfig, OLAModule
from organic_sd.ovae.model import KINDS, OVAE, Part, PartConfig


def _empty_part(described: dict) -> Part:
    """A Part of the described shape with untrained weights (from_pretrained fills them in)."""
    if "stages" in described:  # a staged part: one empty OLA module per stage (and its global shift's)
        from organic_sd.global_shift import GlobalShift
        from organic_sd.stages import Stack, Stage, StageConfig

        shift = GlobalShift.skeleton(described["shift"]) if "shift" in described else None
        stack = Stack([Stage(StageConfig(**d["stage"]), OLAModule(OLAConfig(**d["ola"]), d.get("training", {})))
                       for d in described["stages"]], shift)
        return Part(PartConfig(**described["part"]), stack)
    module = OLAModule(OLAConfig(**described["ola"]), described.get("training", {}))
    return Part(PartConfig(**described["part"]), module)


class OVAEDiffusers(ModelMixin, ConfigMixin):
    """An O-VAE behind AutoencoderTiny's methods: encode -> .latents, decode -> .sample, config, save/load."""

    @register_to_config
    def __init__(self, parts: dict | None = None, meta: dict | None = None, latent_channels: int = 4,
                 downscale: int = 8, teacher: str = "", scaling_factor: float = 1.0, shift_factor: float = 0.0,
                 force_upcast: bool = False, block_out_channels: tuple[int, ...] = (64, 64, 64, 64)):
        super().__init__()
        if not parts or set(parts) - set(KINDS):
            raise ValueError(f"parts must map some of {KINDS} to Part.describe() dicts, got {sorted(parts or {})}")
        self.ovae = OVAE(**{k: _empty_part(d) for k, d in parts.items()}, meta=meta)
        self.use_slicing = self.use_tiling = False  # pipelines may read them; the O-VAE needs neither

    @classmethod
    def from_ovae(cls, ovae: OVAE) -> "OVAEDiffusers":
        """The same weights and outputs as `ovae`, on its device."""
        any_part = next(iter(ovae.parts().values())).config
        f = any_part.downscale
        if 2 ** round(math.log2(f)) != f:
            raise ValueError(f"diffusers pipelines need a power-of-two downscale, this O-VAE has {f}")
        # pipelines derive their VAE scale factor as 2 ** (len(block_out_channels) - 1): one entry per halving, plus one
        m = cls(parts={k: p.describe() for k, p in ovae.parts().items()}, meta=ovae.extra,
                latent_channels=any_part.latent_channels, downscale=f, teacher=any_part.teacher,
                block_out_channels=(64,) * (round(math.log2(f)) + 1))
        m.ovae.load_state_dict(ovae.state_dict())
        return m.to(ovae.device)

    def to_ovae(self) -> OVAE:
        """The wrapped O-VAE (shares the weights)."""
        return self.ovae

    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """Images (B, 3, H, W) in [-1, 1] -> `.latents` (B, C, H/f, W/f), or a 1-tuple with return_dict=False."""
        z = self.ovae.encode(x).to(x.dtype)
        return AutoencoderTinyOutput(latents=z) if return_dict else (z,)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None, return_dict: bool = True):
        """Latents (B, C, h, w) -> `.sample` images (B, 3, h*f, w*f) in [-1, 1], or a 1-tuple with return_dict=False."""
        x = self.ovae.decode(z).to(z.dtype)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True):
        """Reconstruct: decode(encode(sample))."""
        return self.decode(self.encode(sample, return_dict=False)[0], return_dict=return_dict)
