"""Denoiser teachers: `load_denoiser(spec)` gives eps(x_t, t, cond) plus its noise schedule (the protocol:
teachers/denoiser_base.py; the sampler: teachers/ddim.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from organic_sd.teachers.common import WEIGHT_SUFFIXES, TeacherError, read_weights, resolve_device
# names callers found here before the protocol and the sampler had files of their own
from organic_sd.teachers.ddim import ddim_sample, ddim_step, ddim_timesteps  # noqa: F401
from organic_sd.teachers.denoiser_base import Denoiser, check_eps_inputs  # noqa: F401

_MNIST = re.compile(r"^ddpm-mnist(?::(.*))?$", re.S)
_DIT = re.compile(r"^dit-mnist-cond(?::(.*))?$", re.S)


def load_denoiser(spec: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a denoiser teacher from `spec`:

    - `ddpm-mnist` (the shipped file under $OSD_SHARED_DATA) or `ddpm-mnist:PATH`, or the path of
      that .pth file or of the folder holding it: the MNIST DDPM, loaded exactly;
    - `dit-mnist-cond` (the file under $OSD_SHARED_DATA) or `dit-mnist-cond:PATH`, or the path of that .pth
      file or of the folder holding it: the class-conditional MNIST DiT (cond: the class; see dit_mnist.py);
    - a Stable Diffusion pipeline: a local diffusers folder (model_index.json, unet/, scheduler/,
      text_encoder/, tokenizer/) or a hub id `owner/name[@revision]` (from the local cache unless
      the hub is reachable; an uncached id offline fails at once with what to do).

    `device` must exist here (a TeacherError names it otherwise).
    """
    from organic_sd.teachers import ddpm_mnist, dit_mnist

    dev = resolve_device(device)
    text = os.fspath(spec)
    for pattern, module in ((_MNIST, ddpm_mnist), (_DIT, dit_mnist)):
        m = pattern.match(text)
        if m and not Path(text).exists():
            return module.load(m.group(1) or None, dev)
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet").is_dir():
            from organic_sd.teachers import sd_pipeline

            return sd_pipeline.load_folder(path, dev)
        if (path / ddpm_mnist.FILE_NAME).is_file():
            return ddpm_mnist.load(path, dev)
        if (path / dit_mnist.FILE_NAME).is_file():
            return dit_mnist.load(path, dev)
        raise TeacherError(f"{str(path)!r} is neither a diffusers Stable Diffusion pipeline folder "
                           f"(model_index.json, unet/, ...) nor a folder holding {ddpm_mnist.FILE_NAME} "
                           f"or {dit_mnist.FILE_NAME}")
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise TeacherError(f"denoiser file {str(path)!r}: expected one of {WEIGHT_SUFFIXES}, got {path.suffix!r}")
        state = read_weights(path)
        if ddpm_mnist.looks_like_ddpm_mnist(state):
            return ddpm_mnist.load(path, dev)
        if dit_mnist.looks_like_dit_mnist(state):
            return dit_mnist.load(path, dev)
        raise TeacherError(
            f"{str(path)!r} is not a denoiser this package reads: not the MNIST DDPM (beta_t, alpha_t, gt.*) nor "
            f"the MNIST DiT (patch_pos_emb, label_emb, dits.*); "
            f"a Stable Diffusion teacher is a diffusers pipeline folder. It holds {len(state)} tensors, "
            f"e.g. {sorted(state)[:5]}"
        )
    from organic_sd.teachers import diffusers_vae

    if diffusers_vae.is_hub_id(text):
        from organic_sd.teachers import sd_pipeline

        folder, id_base = sd_pipeline.resolve_hub(text)
        return sd_pipeline.load_folder(folder, dev, id_base)
    raise FileNotFoundError(f"denoiser {text!r}: no such file or folder (and not 'ddpm-mnist[:PATH]', "
                            "'dit-mnist-cond[:PATH]' or a hub id of the form owner/name)")
