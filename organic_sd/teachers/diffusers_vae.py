"""The SD-VAE teacher: a diffusers `AutoencoderKL` from a hub id, a folder or a single file.

Latents are the posterior mean in the diffusion model's space:
`(mean - shift_factor) * scaling_factor`, both read from the VAE's config.
diffusers is imported lazily: it is an optional dependency and slow to import.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path
from typing import Mapping

import torch

from organic_sd.teachers.common import (
    TeacherError,
    check_images,
    check_latents,
    dtype_suffix,
    load_exact,
    read_weights,
    state_digest,
)
from organic_sd.teachers import hub

log = logging.getLogger(__name__)

LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")  # VAE keys inside full SD checkpoints
LDM_DEFAULT_SCALING = 0.18215  # SD 1.x/2.x; files carry no config, so this is the only safe default
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
LOCAL_HINT = (
    "pass a local path instead: a diffusers folder (config.json + diffusion_pytorch_model.safetensors), "
    "a single .safetensors/.ckpt VAE file, or TAESD weights (e.g. --teacher ../shared/data/teachers/taef2); "
    "on a machine with network, `hf download {repo} --local-dir DIR` fetches the folder"
)


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise TeacherError(
            "SD-VAE teachers need the diffusers package: pip install 'organic-sd[diffusers]'"
        ) from None
    return diffusers


def _low_cpu_mem_usage() -> bool:
    # Without accelerate diffusers cannot use meta init anyway, and says so in a warning per load.
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return False
    return True


class VAETeacher:
    """An AutoencoderKL teacher. encode: [-1, 1] images -> scaled posterior mean; decode: back to [-1, 1]."""

    def __init__(self, vae, id: str, device: torch.device, dtype: torch.dtype):
        cfg = vae.config
        self.vae = vae.to(device, dtype).eval().requires_grad_(False)
        self.id = id
        self.device = device
        self.dtype = dtype
        self.latent_channels = int(cfg.latent_channels)
        self.downscale = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)

    def __repr__(self) -> str:
        return (f"VAETeacher(id={self.id!r}, latent_channels={self.latent_channels}, "
                f"scaling_factor={self.scaling_factor}, device={self.device})")

    # no_grad rather than inference_mode: inference tensors would break in-place ops downstream.
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f) = (posterior mean - shift) * scale, float32."""
        check_images(images, self.downscale)
        mean = self.vae.encode(images.to(self.device, self.dtype)).latent_dist.mean  # (B, C, H/f, W/f)
        return ((mean - self.shift_factor) * self.scaling_factor).to(images.device, torch.float32)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) scaled latents -> (B, 3, h*f, w*f) in [-1, 1] (clamped), float32."""
        check_latents(latents, self.latent_channels)
        z = latents.to(self.device, self.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.clamp(-1, 1).to(latents.device, torch.float32)


def _teacher(vae, id_base: str | None, device, dtype) -> VAETeacher:
    if id_base is None:
        cfg = vae.config
        extra = f"scaling={float(cfg.scaling_factor)!r};shift={float(getattr(cfg, 'shift_factor', None) or 0.0)!r}"
        id_base = "autoencoderkl:" + state_digest(vae.state_dict(), extra)
    return VAETeacher(vae, id_base + dtype_suffix(dtype), device, dtype)


# ---- local diffusers folders


def read_config(path: Path) -> dict | None:
    """A diffusers config.json as a dict, or None if there is none or it is not JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_folder(folder: Path, device: torch.device, dtype: torch.dtype, id_base: str | None = None) -> VAETeacher:
    """A diffusers AutoencoderKL folder (config.json + weights); `id_base` None -> hash of the weights."""
    AutoencoderKL = _diffusers().AutoencoderKL
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), low_cpu_mem_usage=_low_cpu_mem_usage())
    except (OSError, ValueError, RuntimeError) as e:
        raise TeacherError(f"could not load the AutoencoderKL in {str(folder)!r}: {str(e).splitlines()[0]}") from None
    return _teacher(vae, id_base, device, dtype)


# ---- single files


def strip_vae_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE part of a state dict: a full SD checkpoint keeps it under `first_stage_model.`."""
    for prefix in LDM_VAE_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def is_autoencoder_kl(state: Mapping[str, torch.Tensor]) -> bool:
    """Both halves of a KL VAE, in the original (ldm) or the diffusers key layout."""
    return all(f"{half}.conv_in.weight" in state and f"{half}.conv_out.weight" in state
               for half in ("encoder", "decoder"))


def ldm_config_from_shapes(state: Mapping[str, torch.Tensor]) -> dict:
    """An AutoencoderKL config read off an ldm-layout state dict.

    Shapes fix everything but the GroupNorm group count (32 in every published SD VAE) and
    the latent scaling factor (taken as SD 1.x/2.x's 0.18215).
    """
    levels = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
    if not levels or not blocks:
        raise TeacherError("ldm-layout VAE weights without encoder.down.N.block.M tensors; cannot infer a config")
    block_out = [int(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in levels]
    groups = 32
    if any(c % groups for c in block_out):
        raise TeacherError(
            f"cannot infer the GroupNorm size for block channels {block_out}; "
            "put the model's config.json beside the weights file"
        )
    return {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": block_out,
        "layers_per_block": len(blocks),
        "latent_channels": int(state["decoder.conv_in.weight"].shape[1]),
        "norm_num_groups": groups,
        "scaling_factor": LDM_DEFAULT_SCALING,
        "mid_block_add_attention": any(k.startswith("encoder.mid.attn_1.") for k in state),
        "use_quant_conv": "quant_conv.weight" in state,
        "use_post_quant_conv": "post_quant_conv.weight" in state,
    }


def sibling_config(path: Path) -> tuple[dict | None, Path | None]:
    """(config, folder usable as from_single_file's `config`) found beside a weights file, if any."""
    for cand in (path.with_suffix(".json"), path.parent / "config.json"):
        cfg = read_config(cand) if cand.is_file() else None
        if cfg and cfg.get("_class_name", "AutoencoderKL") == "AutoencoderKL" and "latent_channels" in cfg:
            return cfg, (cand.parent if cand.name == "config.json" else None)
    return None, None


def _matches(vae, expected: Mapping[str, torch.Tensor]) -> bool:
    got = vae.state_dict()
    if set(got) != set(expected):
        return False
    return all(not got[k].is_meta and torch.equal(got[k].float(), expected[k].float()) for k in expected)


def build_from_state(config: dict, state: Mapping[str, torch.Tensor], what: str):
    """AutoencoderKL from a config with exactly these diffusers-layout weights (no meta tensors involved)."""
    AutoencoderKL = _diffusers().AutoencoderKL
    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        vae = AutoencoderKL.from_config(cfg)
    except (TypeError, ValueError) as e:
        raise TeacherError(f"{what}: config does not build an AutoencoderKL ({e})") from None
    load_exact({"": (vae, state)}, what)
    return vae.eval()


def load_single_file(path: Path, device: torch.device, dtype: torch.dtype,
                     state: Mapping[str, torch.Tensor] | None = None) -> VAETeacher:
    """One .safetensors/.ckpt AutoencoderKL file (or a full SD checkpoint holding one).

    Tries diffusers' `from_single_file` first and keeps its model only if every tensor equals
    our own conversion; otherwise (no cached hub config offline, meta tensors left by a partial
    load, ...) builds the model from a config and loads the converted weights directly.
    """
    diffusers = _diffusers()
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    state = strip_vae_prefix(read_weights(path) if state is None else state)
    if not is_autoencoder_kl(state):
        raise TeacherError(
            f"{str(path)!r} is not a VAE: no encoder/decoder conv_in/conv_out tensors "
            f"(first keys: {sorted(state)[:5]})"
        )
    config, config_folder = sibling_config(path)
    what = f"AutoencoderKL {str(path)!r}"
    if any(".down_blocks." in k for k in state):
        if config is None:
            raise TeacherError(f"{what} is in diffusers layout; put its config.json beside it or pass the folder")
        expected = dict(state)
    else:
        if config is None:
            config = ldm_config_from_shapes(state)
            log.warning("%s: no config.json beside it; inferred %s with scaling_factor %s",
                        what, config["block_out_channels"], LDM_DEFAULT_SCALING)
        expected = convert_ldm_vae_checkpoint(dict(state), config)

    vae = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # diffusers' own deprecation noise from its hub lookups
            vae = diffusers.AutoencoderKL.from_single_file(
                dict(state), config=str(config_folder) if config_folder else None,
                local_files_only=True, low_cpu_mem_usage=_low_cpu_mem_usage(),
            )
        if not _matches(vae, expected):
            log.info("%s: from_single_file loaded other weights than the file's; using the direct load", what)
            vae = None
    except Exception as e:  # diffusers raises many kinds here (OSError, NotImplementedError on meta, KeyError)
        log.info("%s: from_single_file failed (%s: %s); using the direct load", what, type(e).__name__,
                 str(e).splitlines()[0] if str(e) else "")
    if vae is not None and config is not None and vae.config.scaling_factor != config.get("scaling_factor"):
        vae = None  # the hub default config it found is not this file's
    if vae is None:
        vae = build_from_state(config, expected, what)
    return _teacher(vae, None, device, dtype)


# ---- the hub


def is_hub_id(spec: str) -> bool:
    """`owner/name` or `owner/name@revision` (only checked once no local path of that name exists)."""
    return bool(HUB_ID.match(spec)) and not spec.startswith((".", "/", "~"))


def resolve_hub(spec: str) -> tuple[Path, str]:
    """A VAE's hub id (a VAE repo, or a pipeline with vae/) -> (local snapshot folder, id); see teachers/hub.py."""
    return hub.resolve(spec, "teacher", ["config.json", "vae/config.json"],
                       [[f"{sub}config.json", f"{sub}diffusion_pytorch_model.safetensors"] for sub in ("", "vae/")],
                       LOCAL_HINT, "has no config.json at its root or in vae/; it is not a diffusers VAE")
