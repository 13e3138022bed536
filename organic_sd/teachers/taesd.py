"""The TAESD family of tiny autoencoders (taesd, taesdxl, taesd3, taef1, taef2).

Architecture after madebyollin/taesd, written here so that the published weights load
without the upstream package. Images are [0, 1] inside these networks; `TAESDTeacher`
converts from and to the package's [-1, 1]. Latents are raw (the diffusion model's own
latent space, no extra scaling).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from organic_sd.teachers.common import (
    WEIGHT_SUFFIXES,
    TeacherError,
    check_images,
    check_latents,
    dtype_suffix,
    load_exact,
    read_weights,
    state_digest,
)


@dataclass(frozen=True)
class Variant:
    latent_channels: int
    midblock_gn: bool  # flux_2 arch: a GroupNorm "pool" branch in the lowest-resolution blocks


VARIANTS: dict[str, Variant] = {
    "taesd": Variant(4, False),
    "taesdxl": Variant(4, False),
    "taesd3": Variant(16, False),
    "taef1": Variant(16, False),
    "taef2": Variant(32, True),
}
DOWNSCALE = 8  # three stride-2 convs


def conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp to (-3, 3): latents outside the trained range would otherwise blow up the decoder."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual block: three 3x3 convs plus a skip, fused by ReLU.

    With `midblock_gn` (flux_2) the input first gets a residual 1x1 -> GroupNorm -> 1x1 branch
    at 4x width; the norm lets the block see per-image statistics that plain convs cannot.
    """

    def __init__(self, n_in: int, n_out: int, midblock_gn: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()
        self.pool = None
        if midblock_gn:
            n_wide = 4 * n_in
            self.pool = nn.Sequential(
                nn.Conv2d(n_in, n_wide, 1, bias=False),
                nn.GroupNorm(4, n_wide),
                nn.ReLU(),
                nn.Conv2d(n_wide, n_in, 1, bias=False),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(latent_channels: int = 4, midblock_gn: bool = False) -> nn.Sequential:
    """(B, 3, H, W) in [0, 1] -> (B, latent_channels, H/8, W/8) raw latents."""
    gn = midblock_gn
    return nn.Sequential(
        conv(3, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64), Block(64, 64), Block(64, 64),
        conv(64, 64, stride=2, bias=False), Block(64, 64, gn), Block(64, 64, gn), Block(64, 64, gn),
        conv(64, latent_channels),
    )


def build_decoder(latent_channels: int = 4, midblock_gn: bool = False) -> nn.Sequential:
    """(B, latent_channels, h, w) raw latents -> (B, 3, 8h, 8w), roughly [0, 1]."""
    gn = midblock_gn
    return nn.Sequential(
        Clamp(), conv(latent_channels, 64), nn.ReLU(),
        Block(64, 64, gn), Block(64, 64, gn), Block(64, 64, gn), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), Block(64, 64), Block(64, 64), nn.Upsample(scale_factor=2), conv(64, 64, bias=False),
        Block(64, 64), conv(64, 3),
    )


# ---- weights: key layouts, variant detection, files

_LAYER = re.compile(r"^(?:layers\.)?(\d+)\.(.+)$")


def _renumber(state: Mapping[str, torch.Tensor], shift: int) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        m = _LAYER.match(k)
        out[f"{int(m.group(1)) + shift}.{m.group(2)}" if m else k] = v
    return out


def normalise_encoder(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream (`0.weight`) and diffusers (`layers.0.weight`) encoder keys -> upstream keys."""
    return _renumber(state, 0)


def normalise_decoder(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream and diffusers decoder keys -> upstream keys.

    Upstream layer 0 is the parameter-free Clamp, so a `0.weight` key can only come from
    diffusers' DecoderTiny, which applies the clamp in forward and numbers layers from the conv.
    """
    plain = _renumber(state, 0)
    return _renumber(state, 1) if "0.weight" in plain else plain


def split_combined(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """One file holding both halves (`encoder.*`, `decoder.*`, e.g. taef2.safetensors) -> (enc, dec)."""
    enc = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    dec = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
    return enc, dec


def looks_like_taesd(state: Mapping[str, torch.Tensor]) -> bool:
    """True for either half or a combined file of a TAESD-family checkpoint."""
    keys = [k.removeprefix("encoder.").removeprefix("decoder.") for k in state]
    return bool(keys) and all(_LAYER.match(k) for k in keys) and any(k.endswith("conv.0.weight") for k in keys)


def shape_variant(enc: Mapping[str, torch.Tensor], dec: Mapping[str, torch.Tensor]) -> Variant:
    """What the tensors themselves say: latent channels and whether the GroupNorm branch exists."""
    channels = set()
    if "14.weight" in enc:
        channels.add(int(enc["14.weight"].shape[0]))
    if "1.weight" in dec and dec["1.weight"].ndim == 4:
        channels.add(int(dec["1.weight"].shape[1]))
    if len(channels) != 1:
        raise TeacherError(
            "TAESD weights: cannot read the latent channel count (encoder layer 14 out / decoder layer 1 in), "
            f"got {sorted(channels) or 'none'}; these do not look like taesd-family encoder/decoder weights"
        )
    gn = any(".pool." in k for k in (*enc, *dec))
    return Variant(channels.pop(), gn)


def name_variant(names: Sequence[str]) -> str | None:
    """Variant named in file or folder names; longest name first since 'taesd' is in 'taesdxl'."""
    for name in sorted(VARIANTS, key=len, reverse=True):
        if any(name in Path(n).name.lower() for n in names):
            return name
    return None


def detect_variant(
    enc: Mapping[str, torch.Tensor], dec: Mapping[str, torch.Tensor], names: Sequence[str], forced: str | None
) -> str:
    """The variant: forced by a prefix, else named by the files and confirmed by the shapes, else by shapes alone."""
    if forced is not None:
        if forced not in VARIANTS:
            raise TeacherError(f"unknown TAESD variant {forced!r}; choose from {sorted(VARIANTS)}")
        return forced  # shapes are still checked, key by key, when the weights load
    seen = shape_variant(enc, dec)
    named = name_variant(names)
    if named is not None:
        if VARIANTS[named] != seen:
            raise TeacherError(
                f"file names say {named} ({VARIANTS[named].latent_channels} latent channels, "
                f"midblock GroupNorm={VARIANTS[named].midblock_gn}) but the weights have "
                f"{seen.latent_channels} latent channels, midblock GroupNorm={seen.midblock_gn}; "
                "force the variant with a prefix such as 'taef2:PATH' if the names are wrong"
            )
        return named
    fits = [name for name, v in VARIANTS.items() if v == seen]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise TeacherError(
            f"TAESD weights with {seen.latent_channels} latent channels, midblock GroupNorm={seen.midblock_gn} "
            f"match no known variant {sorted(VARIANTS)}"
        )
    raise TeacherError(
        f"TAESD weights with {seen.latent_channels} latent channels fit {' and '.join(fits)}, "
        f"which share an architecture but not a latent space; name it with a prefix, e.g. '{fits[0]}:PATH'"
    )


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def find_files(folder: Path, variant: str | None) -> list[Path]:
    """The weights in a TAESD folder: an `*_encoder`/`*_decoder` pair or one combined file.

    A folder with several variants (the upstream repo) needs the variant prefix to choose.
    """
    files = _weight_files(folder)
    if variant is not None:
        # Exact stem match first so that 'taesd:' does not pick taesdxl files.
        named = [p for p in files if p.stem.lower().split("_")[0] == variant] or [
            p for p in files if name_variant([p.name]) == variant
        ]
        files = named or files  # a prefix may also force a variant onto unnamed files
    # Prefer .safetensors, then .pth, for the same stem.
    by_stem: dict[str, Path] = {}
    for p in sorted(files, key=lambda p: WEIGHT_SUFFIXES.index(p.suffix)):
        by_stem.setdefault(p.stem, p)
    encoders = [p for s, p in by_stem.items() if s.endswith("_encoder")]
    if encoders:
        pairs = [(e, by_stem.get(e.stem[: -len("_encoder")] + "_decoder")) for e in encoders]
        pairs = [list(pair) for pair in pairs if pair[1] is not None]
        if len(pairs) == 1:
            return pairs[0]
        if len(pairs) > 1:
            raise TeacherError(
                f"{str(folder)!r} holds several TAESD pairs ({', '.join(p[0].name for p in pairs)}); "
                f"choose one with a prefix such as '{name_variant([pairs[0][0].name]) or 'taesd'}:{folder}'"
            )
        raise TeacherError(f"{str(folder)!r}: found {encoders[0].name} but no matching *_decoder weights")
    if len(by_stem) == 1:
        return list(by_stem.values())
    if by_stem:
        raise TeacherError(
            f"{str(folder)!r}: cannot tell which weights to use among {sorted(p.name for p in by_stem.values())}; "
            "pass the encoder/decoder files as 'ENC,DEC' or one combined file"
        )
    raise TeacherError(f"{str(folder)!r} holds no TAESD weights (*_encoder.pth + *_decoder.pth or one .safetensors)")


def sibling_pair(path: Path) -> list[Path]:
    """taef2_encoder.pth -> [taef2_encoder.pth, taef2_decoder.pth] (either half may be given)."""
    stem = path.stem
    for half, other in (("_encoder", "_decoder"), ("_decoder", "_encoder")):
        if stem.endswith(half):
            twin = path.with_name(stem[: -len(half)] + other + path.suffix)
            if not twin.is_file():
                candidates = [path.with_name(twin.stem + s) for s in WEIGHT_SUFFIXES]
                twin = next((c for c in candidates if c.is_file()), twin)
            if not twin.is_file():
                raise FileNotFoundError(f"TAESD {half[1:]} weights {str(path)!r} given but {twin.name} is missing")
            return [path, twin] if half == "_encoder" else [twin, path]
    return [path]


def read_taesd(files: Sequence[Path]) -> tuple[dict, dict]:
    """(encoder state, decoder state) in upstream key layout from a pair or one combined file."""
    if len(files) == 2:
        enc, dec = read_weights(files[0]), read_weights(files[1])
        if any(k.startswith(("encoder.", "decoder.")) for k in (*enc, *dec)):
            enc, dec = split_combined(enc)[0] or enc, split_combined(dec)[1] or dec
    elif len(files) == 1:
        enc, dec = split_combined(read_weights(files[0]))
        if not enc or not dec:
            raise TeacherError(
                f"{str(files[0])!r} is not a combined TAESD file (needs both encoder.* and decoder.* tensors); "
                "pass the encoder and decoder files as a pair"
            )
    else:
        raise TeacherError(f"TAESD weights are one combined file or an encoder/decoder pair, got {len(files)} files")
    for name, half in (("encoder", enc), ("decoder", dec)):
        if not looks_like_taesd(half):
            raise TeacherError(f"TAESD {name} weights from {[str(f) for f in files]} do not look like a TAESD {name}")
    return normalise_encoder(enc), normalise_decoder(dec)


class TAESDTeacher:
    """A TAESD-family teacher. encode: [-1, 1] images -> raw latents; decode: raw latents -> [-1, 1]."""

    downscale = DOWNSCALE

    def __init__(self, variant: str, encoder: nn.Module, decoder: nn.Module, id: str,
                 device: torch.device, dtype: torch.dtype):
        self.variant = variant
        self.latent_channels = VARIANTS[variant].latent_channels
        self.encoder = encoder.to(device, dtype).eval().requires_grad_(False)
        self.decoder = decoder.to(device, dtype).eval().requires_grad_(False)
        self.id = id
        self.device = device
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"TAESDTeacher(id={self.id!r}, latent_channels={self.latent_channels}, device={self.device})"

    # no_grad rather than inference_mode: inference tensors would break in-place ops downstream.
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, C, H/8, W/8) raw latents, float32 on the input's device."""
        check_images(images, self.downscale)
        return self.encoder(self.encoder_input(images)).to(images.device, torch.float32)

    def encoder_input(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> what the encoder's first layer reads: [0, 1], on the teacher's device and dtype
        (one mapping for encode and for the activations a staged O-Encoder learns)."""
        return images.to(self.device, self.dtype).add(1).div(2)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) raw latents -> (B, 3, 8h, 8w) in [-1, 1] (clamped), float32 on the input's device."""
        check_latents(latents, self.latent_channels)
        y = self.decoder(latents.to(self.device, self.dtype))  # (B, 3, 8h, 8w), about [0, 1]
        return y.mul(2).sub(1).clamp(-1, 1).to(latents.device, torch.float32)


def load_taesd(files: Sequence[str | Path], variant: str | None, device: torch.device,
               dtype: torch.dtype, names: Sequence[str] = ()) -> TAESDTeacher:
    """Build a TAESDTeacher from a pair or one combined file; `variant` None -> detect it
    from the file names, their folder, `names` (e.g. the hub repo) and the tensor shapes."""
    files = [Path(f) for f in files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"TAESD weights {str(f)!r}: no such file")
    enc_state, dec_state = read_taesd(files)
    names = [*names, *(str(f) for f in files), *(f.parent.name for f in files)]
    variant = detect_variant(enc_state, dec_state, names, variant)
    v = VARIANTS[variant]
    encoder, decoder = build_encoder(v.latent_channels, v.midblock_gn), build_decoder(v.latent_channels, v.midblock_gn)
    load_exact({"encoder": (encoder, enc_state), "decoder": (decoder, dec_state)},
               f"{variant} weights {[str(f) for f in files]}")
    digest = state_digest({**{"encoder." + k: t for k, t in encoder.state_dict().items()},
                           **{"decoder." + k: t for k, t in decoder.state_dict().items()}})
    return TAESDTeacher(variant, encoder, decoder, f"{variant}:{digest}{dtype_suffix(dtype)}", device, dtype)
