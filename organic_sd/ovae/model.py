"""The O-VAE: an O-Encoder and an O-Decoder (OLA modules applied patch-wise or globally), and its file format.

    from organic_sd import OVAE
    v = OVAE.load()                  # the default shipped in organic_sd/assets/ovae/
    z = v.encode(x)                  # x (B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f)   (patch mode)
    y = v.decode(z)                  # -> (B, 3, H, W) in [-1, 1]

File format: one .safetensors file. Tensors are the OLA modules' weights under `encoder.` and
`decoder.`; the metadata holds `format` and `parts` (JSON: per part its PartConfig, OLAConfig and
training summary). A training run folder holds one part in `model.safetensors`; `osd export`
bundles an encoder and a decoder into one file. Loading needs only torch and safetensors.
Images whose sides are not multiples of f are refused (crop or resize them first): padding
would change the output size and break the latent grid's alignment with the teacher's.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from organic_sd.files import WEIGHTS_NAME, atomic_write, read_safetensors
from organic_sd.ola.module import OLAConfig, OLAModule, load_weights
from organic_sd.ovae import patches
from organic_sd.stages import Stack

FORMAT = "organic_sd.ovae/1"
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "assets" / "ovae" / "ovae.safetensors"
MAX_ROWS = 65536  # rows per module call, so a huge image never builds one giant window matrix
KINDS = ("encoder", "decoder")
MODES = ("patch", "global", "staged")  # staged: a Stack of stages (organic_sd.stages), decoder coarse to fine,
# encoder fine to coarse


@dataclass
class PartConfig:
    """What an encoder or decoder needs besides its OLA weights to map images <-> latents."""

    kind: str  # "encoder" or "decoder"
    mode: str = "patch"  # "patch" (per latent position), "global" (whole frame) or "staged" (a Stack)
    teacher: str = ""  # id of the teacher whose latent space this part speaks
    latent_channels: int = 4
    downscale: int = 8  # f: pixels per latent cell along each side
    image_size: int = 256  # training frame side (global mode only works at this size)
    window: int = 0  # patch decoder: latent window k (odd); patch encoder: pixel window s
    pad: str = "replicate"
    retina_dim: int = 512  # global encoder: size of the fixed random projection (0: none)
    retina_seed: int = 0
    grid: int = 1  # global mode: latent pooled to grid x grid (1 = the research's "4-dim latent")
    global_size: int = 64  # global decoder: output side before upsampling to the frame
    latents: str = "teacher"  # decoder: the latents it was trained on ("teacher", "oenc:RUN" or "mix:RUN")
    target: str = "decode"  # decoder: trained to reproduce the teacher's "decode" or the original "image"
    preprocess: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.window == 0:
            self.window = 3 if self.kind == "decoder" else 2 * self.downscale
        if self.mode == "patch" and self.kind == "decoder" and self.window % 2 == 0:
            raise ValueError(f"decoder latent window must be odd, got {self.window}")
        if self.mode == "patch" and self.kind == "encoder" and (
                self.window < self.downscale or (self.window - self.downscale) % 2):
            raise ValueError(f"encoder pixel window must be >= downscale {self.downscale} and differ from it by an "
                             f"even number (e.g. {2 * self.downscale}), got {self.window}")

    def io_dims(self) -> tuple[int, int]:
        """(in_dim, out_dim) of the OLA module this part wraps."""
        C, f = self.latent_channels, self.downscale
        if self.mode == "patch":
            if self.kind == "decoder":
                return C * self.window ** 2, 3 * f * f
            return 3 * self.window ** 2, C
        g = C * self.grid ** 2
        if self.kind == "decoder":
            return g, 3 * self.global_size ** 2
        return (self.retina_dim or 3 * self.image_size ** 2), g


class Part(nn.Module):
    """An O-Encoder (images -> latents) or O-Decoder (latents -> images) around one OLA module."""

    def __init__(self, config: PartConfig, module: nn.Module):
        super().__init__()
        if config.mode == "staged":
            _check_stack(config, module)
            self.config, self.module = config, module
            return
        want = config.io_dims()
        have = (module.in_dim, module.out_dim)
        if want != have:
            raise ValueError(f"{config.kind} ({config.mode} mode) needs a module {want[0]} -> {want[1]}, "
                             f"got {have[0]} -> {have[1]}")
        self.config, self.module = config, module

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The module's input rows for images (encoder) or latents (decoder)."""
        return part_rows(self.config, x)

    def apply(self, rows: torch.Tensor) -> torch.Tensor:
        """Module over rows (N, in) -> (N, out), in chunks of MAX_ROWS."""
        return torch.cat([self.module(rows[i:i + MAX_ROWS]) for i in range(0, rows.shape[0], MAX_ROWS)])

    def assemble(self, out: torch.Tensor, B: int, h: int, w: int) -> torch.Tensor:
        """Module outputs -> latents (encoder) or images (decoder); h, w = the latent grid (patch) or frame cells."""
        c = self.config
        if c.mode == "patch":
            if c.kind == "decoder":
                return patches.fold_blocks(out, B, h, w, c.downscale)  # (B, 3, h*f, w*f)
            return patches.rows_to_grid(out, B, h, w)  # (B, C, h, w)
        if c.kind == "decoder":
            img = out.reshape(B, 3, c.global_size, c.global_size)
            return F.interpolate(img, size=(h * c.downscale, w * c.downscale), mode="bilinear", align_corners=False)
        return out.reshape(B, c.latent_channels, c.grid, c.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder (B, 3, H, W) -> (B, C, H/f, W/f) [global: (B, C, g, g)]; decoder (B, C, h, w) -> (B, 3, hf, wf)."""
        c = self.config
        if c.kind == "encoder":
            _check_tensor("images", x, 3, self.device, "3 (RGB)")
            B, _, H, W = x.shape
            if H % c.downscale or W % c.downscale:
                raise ValueError(f"image is {H}x{W}: both sides must be multiples of {c.downscale} "
                                 f"(crop or resize it; organic_sd.data.preprocess does)")
            if c.mode == "global" and (H, W) != (c.image_size, c.image_size):
                raise ValueError(f"a global-mode encoder takes {c.image_size}x{c.image_size} images only, got {H}x{W}")
            h, w = H // c.downscale, W // c.downscale
        else:
            _check_tensor("latents", x, c.latent_channels, self.device,
                          f"{c.latent_channels} (teacher {c.teacher or '?'})")
            B, _, h, w = x.shape
            if c.mode == "global" and (h, w) == (c.grid, c.grid) != (c.image_size // c.downscale,) * 2:
                h = w = c.image_size // c.downscale  # a pooled latent decodes to the training frame size
        if B == 0:  # an empty batch: the output's shape from one blank sample, none of its values
            return self.forward(x.new_zeros(1, *x.shape[1:]))[:0]
        if c.mode == "staged":  # the stages' convolution path: one pass, no window matrix
            with torch.no_grad():
                return self.module(x.float())
        with torch.no_grad():
            out = self.apply(self.rows(x.float()))
            return self.assemble(out, B, h, w)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def describe(self) -> dict:
        """The JSON-able description stored in files and shown in `meta`."""
        m = self.module
        if isinstance(m, Stack):
            shift = {} if m.shift is None else {"shift": m.shift.describe()}
            return {"part": asdict(self.config), "stages": m.describe(), **shift,
                    "parameters": self.num_parameters(), "training": getattr(m, "training_summary", {})}
        ola = asdict(m.config) if isinstance(m, OLAModule) else {"in_dim": m.in_dim, "out_dim": m.out_dim}
        return {"part": asdict(self.config), "ola": ola, "parameters": self.num_parameters(),
                "training": getattr(m, "training_summary", {})}


def _check_stack(c: PartConfig, stack) -> None:
    """A staged decoder's Stack must read the latent and write RGB c.downscale times larger; a staged encoder's,
    read RGB and write the latent c.downscale times smaller."""
    if not isinstance(stack, Stack):
        raise ValueError(f"a staged {c.kind} wraps an organic_sd.stages.Stack, got {type(stack).__name__}")
    have = (stack.in_channels, stack.out_channels, stack.up, stack.down)
    if c.kind == "decoder" and have != (c.latent_channels, 3, c.downscale, 1):
        raise ValueError(f"a staged decoder needs stages {c.latent_channels} channels -> 3 (RGB), x{c.downscale} in "
                         f"all; got {have[0]} -> {have[1]}, x{have[2]}" + (f" /{have[3]}" if have[3] > 1 else ""))
    if c.kind == "encoder" and have != (3, c.latent_channels, 1, c.downscale):
        raise ValueError(f"a staged encoder needs stages 3 (RGB) -> {c.latent_channels} channels, /{c.downscale} in "
                         f"all; got {have[0]} -> {have[1]}, /{have[3]}" + (f" x{have[2]}" if have[2] > 1 else ""))


def part_rows(c: PartConfig, x: torch.Tensor) -> torch.Tensor:
    """Images (encoder) or latents (decoder) -> the module's input rows (N, in); needs no weights."""
    if c.mode == "patch":
        if c.kind == "decoder":
            return patches.latent_windows(x, c.window, c.pad)  # (B*h*w, C*k*k)
        return patches.pixel_windows(x, c.downscale, c.window, c.pad)  # (B*h*w, 3*s*s)
    if c.kind == "decoder":
        return F.adaptive_avg_pool2d(x, c.grid).flatten(1)  # (B, C*g*g)
    flat = x.flatten(1)  # (B, 3*S*S)
    return patches.retina(flat, c.retina_dim, c.retina_seed) if c.retina_dim else flat


def _check_tensor(name: str, x, channels: int, device: torch.device, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {what} channels, got shape {tuple(x.shape)}")
    if x.device.type != device.type or (device.index is not None and x.device != device):
        raise ValueError(f"{name} are on {x.device} but the O-VAE is on {device}: "
                         f"move one of them (x.to('{device}') or ovae.to('{x.device}'))")


class OVAE(nn.Module):
    """An O-Encoder and/or O-Decoder pair; `load()` gives the shipped default."""

    def __init__(self, encoder: Part | None = None, decoder: Part | None = None, meta: dict | None = None):
        super().__init__()
        if encoder is None and decoder is None:
            raise ValueError("an O-VAE needs an encoder, a decoder or both")
        for want, p in (("encoder", encoder), ("decoder", decoder)):
            if p is not None and p.config.kind != want:
                raise ValueError(f"the {want} slot holds a {p.config.kind}")
        if encoder is not None and decoder is not None:
            e, d = encoder.config, decoder.config
            if (e.latent_channels, e.downscale) != (d.latent_channels, d.downscale):
                raise ValueError(f"encoder speaks {e.latent_channels} channels / f={e.downscale}, decoder "
                                 f"{d.latent_channels} / f={d.downscale}: they do not pair")
        self.encoder, self.decoder = encoder, decoder
        self.extra = dict(meta or {})

    # -- inference -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> latents (B, C, H/f, W/f) in the teacher's latent space."""
        if self.encoder is None:
            raise ValueError("this O-VAE has no encoder (a decoder-only checkpoint); bundle one with `osd export`")
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, h*f, w*f) in [-1, 1]."""
        if self.decoder is None:
            raise ValueError("this O-VAE has no decoder (an encoder-only checkpoint); bundle one with `osd export`")
        return self.decoder(z).clamp(-1.0, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruct: decode(encode(x))."""
        return self.decode(self.encode(x))

    def num_parameters(self) -> int:
        return sum(p.num_parameters() for p in self.parts().values())

    def parts(self) -> dict[str, Part]:
        return {k: p for k, p in (("encoder", self.encoder), ("decoder", self.decoder)) if p is not None}

    @property
    def device(self) -> torch.device:
        return next(iter(self.parts().values())).device

    @property
    def meta(self) -> dict:
        """Teacher id, per part its mode, window, size and training summary, plus export notes."""
        any_part = next(iter(self.parts().values())).config
        return {"teacher": any_part.teacher, "latent_channels": any_part.latent_channels,
                "downscale": any_part.downscale, "image_size": any_part.image_size,
                "parameters": self.num_parameters(), **self.extra,
                **{k: p.describe() for k, p in self.parts().items()}}

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write one .safetensors file (atomically); a folder gets `model.safetensors` inside."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / WEIGHTS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"{k}.{n}": t.detach().cpu().contiguous()
                   for k, p in self.parts().items() for n, t in p.module.state_dict().items()}
        meta = {"format": FORMAT, "parts": json.dumps({k: p.describe() for k, p in self.parts().items()}),
                "meta": json.dumps(self.extra)}
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))  # never half a checkpoint
        return path

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> "OVAE":
        """Load an O-VAE file or run folder; no path gives the default shipped with the package."""
        if path is None:
            if not DEFAULT_PATH.is_file():
                raise FileNotFoundError(
                    f"no default O-VAE is shipped in this install ({DEFAULT_PATH} is missing); pass a file saved by "
                    "`osd train` / `osd export`, e.g. OVAE.load('run/ovae.safetensors')")
            path = DEFAULT_PATH
        return cls(**read_parts(path, device))


def read_parts(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict:
    """{"encoder": Part|None, "decoder": Part|None, "meta": dict} from an O-VAE file or run folder."""
    file, tensors, meta = read_safetensors(path, "O-VAE")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file} holds format {meta.get('format')!r}, expected {FORMAT!r}: not an O-VAE "
                         "(an OLA module alone loads with organic_sd.ola.load)")
    try:
        described = json.loads(meta["parts"])
        extra = json.loads(meta.get("meta", "{}"))
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{file}: O-VAE metadata is damaged") from None
    out = {"encoder": None, "decoder": None, "meta": extra}
    for kind, d in described.items():
        own = {n[len(kind) + 1:]: t for n, t in tensors.items() if n.startswith(kind + ".")}
        if "stages" in d:  # a staged part
            stack = Stack.from_description(d["stages"], own, f"{file}: {kind}", d.get("shift"))
            stack.training_summary = d.get("training", {})
            out[kind] = Part(PartConfig(**d["part"]), stack.to(device))
            continue
        module = load_weights(OLAModule(OLAConfig(**d["ola"]), d.get("training", {})), own, f"{file}: {kind}")
        out[kind] = Part(PartConfig(**d["part"]), module.to(device))
    return out
