"""`load_teacher`: one entry point from a spec string to a Teacher."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch

from organic_sd.teachers import diffusers_vae, hub, taesd
from organic_sd.teachers.base import Teacher
from organic_sd.teachers.common import WEIGHT_SUFFIXES, TeacherError, read_weights, resolve_device, resolve_dtype

_FORCED = re.compile(r"^(%s):(.+)$" % "|".join(sorted(taesd.VARIANTS, key=len, reverse=True)), re.S)

Spec = str | os.PathLike | Sequence[str | os.PathLike]


def load_teacher(spec: Spec, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> Teacher:
    """Load a VAE teacher from `spec`:

    - a hub id `owner/name[@revision]` (AutoencoderKL, from the local cache unless the hub is reachable);
    - a local diffusers folder (config.json + weights; a pipeline folder's vae/ is used);
    - a single .safetensors/.ckpt AutoencoderKL file (ldm or diffusers layout; a full SD checkpoint works);
    - TAESD-family weights: a folder, an `X_encoder.pth` (its `X_decoder.pth` is found beside it),
      a pair given as 'ENC,DEC' or a 2-sequence, or one combined .safetensors.
      The variant comes from file names and tensor shapes; force it with a prefix: 'taef2:PATH'.

    `device` must exist here (a TeacherError names it otherwise); `dtype` None means float32.
    """
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise TeacherError(f"a teacher given as a sequence must be (encoder, decoder) files, got {len(spec)} items")
        return taesd.load_taesd([Path(p) for p in spec], None, dev, dt)
    text = os.fspath(spec)
    forced = None
    m = _FORCED.match(text)
    if m and not Path(text).exists():
        forced, text = m.group(1), m.group(2)
    if "," in text and not Path(text).exists():
        parts = [Path(p.strip()).expanduser() for p in text.split(",")]
        if len(parts) != 2:
            raise TeacherError(f"teacher {text!r}: a file pair is 'ENCODER,DECODER', got {len(parts)} parts")
        return taesd.load_taesd(parts, forced, dev, dt)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_dir(path, forced, dev, dt)
    if path.is_file():
        return _load_file(path, forced, dev, dt)
    if forced is None and diffusers_vae.is_hub_id(text):
        folder, id_base = diffusers_vae.resolve_hub(text)
        return _load_dir(folder, None, dev, dt, id_base=id_base, names=[text.partition("@")[0]])
    if forced is None and text.partition("@")[0] in taesd.VARIANTS:  # a bare name: its author's hub repo
        name = text.partition("@")[0]
        folder, _ = resolve_taesd_name(text)
        return _load_dir(folder, name, dev, dt, names=[name])
    raise FileNotFoundError(
        f"teacher {os.fspath(spec)!r}: no such file or folder (and not a hub id of the form owner/name)"
    )


TAESD_HUB_OWNER = "madebyollin"  # taesd, taesdxl, taesd3, taef1, taef2: one hub repo each, of that name


def resolve_taesd_name(spec: str) -> tuple[Path, str]:
    """'taef2' (or 'taef2@REVISION') -> its hub snapshot (madebyollin/taef2), from the cache or downloaded; a
    TeacherError saying how to pass local files where the hub cannot be reached."""
    name, _, revision = spec.partition("@")
    repo = f"{TAESD_HUB_OWNER}/{name}" + (f"@{revision}" if revision else "")
    hint = (f"download the weights elsewhere (huggingface.co/{TAESD_HUB_OWNER}/{name}, or {name}_encoder.pth and "
            f"{name}_decoder.pth from github.com/madebyollin/taesd) and pass their folder as --teacher {name}:FOLDER")
    return hub.resolve(repo, "teacher", ["config.json", f"{name}.safetensors"],
                       [["config.json", "*.safetensors"]], hint,
                       f"holds neither config.json nor {name}.safetensors: not a TAESD-family repo")


def _load_dir(folder: Path, forced: str | None, dev: torch.device, dt: torch.dtype,
              id_base: str | None = None, names: Sequence[str] = ()) -> Teacher:
    for cfg_folder in (folder, folder / "vae"):
        cfg = diffusers_vae.read_config(cfg_folder / "config.json")
        if cfg is None:
            continue
        kind = cfg.get("_class_name")
        if kind == "AutoencoderTiny":
            # madebyollin's hub repos: diffusers layout, same weights as the upstream .pth files.
            files = taesd.find_files(cfg_folder, None)
            return taesd.load_taesd(files, forced, dev, dt, names=[*names, folder.name])
        if forced is None and kind in ("AutoencoderKL", None) and "latent_channels" in cfg:
            return diffusers_vae.load_folder(cfg_folder, dev, dt, id_base)
        if kind is not None and kind != "AutoencoderKL":
            raise TeacherError(f"{str(cfg_folder)!r} holds a {kind}, not a VAE (AutoencoderKL or AutoencoderTiny)")
    return taesd.load_taesd(taesd.find_files(folder, forced), forced, dev, dt)


def _load_file(path: Path, forced: str | None, dev: torch.device, dt: torch.dtype) -> Teacher:
    if path.suffix not in WEIGHT_SUFFIXES:
        raise TeacherError(f"teacher file {str(path)!r}: expected one of {WEIGHT_SUFFIXES}, got {path.suffix!r}")
    if path.stem.endswith(("_encoder", "_decoder")):
        return taesd.load_taesd(taesd.sibling_pair(path), forced, dev, dt)
    state = read_weights(path)
    if forced is not None or taesd.looks_like_taesd(state):
        return taesd.load_taesd([path], forced, dev, dt)
    if diffusers_vae.is_autoencoder_kl(diffusers_vae.strip_vae_prefix(state)):
        return diffusers_vae.load_single_file(path, dev, dt, state)
    raise TeacherError(
        f"{str(path)!r} is not a VAE: it is neither an AutoencoderKL (encoder/decoder conv_in, conv_out) nor "
        f"TAESD weights (numbered layers); it holds {len(state)} tensors, e.g. {sorted(state)[:5]}"
    )
