"""The O-UNet: one OLA stack applied per pixel, cloning a denoiser teacher's eps (SPEC §6, no gradients).

For every pixel the stack sees:
    window   the noisy image k x k around it, zero padded             C * k * k
    time     sqrt(ab[t]), sqrt(1 - ab[t]), sin/cos(pi 2^j t / T)      2 + 2 * freqs
    global   the whole noisy image average-pooled to g x g            C * g * g
    position the pixel's (row, column) scaled to [-1, 1]              2
    modulated  the inner m x m window and the global context, each times  2 * C * (m * m + g * g)
             sqrt(ab[t]) and sqrt(1 - ab[t]) (m = 0: none)
    gained   the inner n x n window over the noise level sqrt(1 - ab[t] + s0^2)    C * n * n
    coarse   x_t average-pooled by s, the 3 x 3 pooled cells around the pixel,   3 * C * 9
             as they are and times sqrt(ab[t]), sqrt(1 - ab[t]) (s = 0: none)
    cond     the conditioning vector, when the teacher has one        cond_dim
             (the text adapter's output, ounet/adapter.py: u's cond argument is the teacher's text embedding)
and writes the C channels of eps at that pixel. One file (.safetensors) holds the stack, the
text adapter if any, the teacher's alpha-bar schedule and the config, so loading needs nothing else.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from organic_sd.ola.module import FORMAT as OLA_FORMAT
from organic_sd.files import WEIGHTS_NAME, atomic_write, read_safetensors
from organic_sd.ola.module import OLAConfig, OLAModule, load_weights
from organic_sd.ounet.adapter import TextAdapter

FORMAT = "organic_sd.ounet/1"
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "assets" / "ounet" / "ounet.safetensors"
GAIN_FLOOR = 0.05  # s0 of the gained window: 1 / sigma is capped at 20


@dataclass
class OUNetConfig:
    """The shape of an O-UNet's inputs; with the stack's own config it rebuilds the model."""

    sample_shape: tuple[int, int, int]  # (C, H, W) of the teacher's x_t
    num_steps: int  # T: valid t are 0..T-1
    window: int = 7
    grid: int = 4
    freqs: int = 4
    modulate: int = 0  # m: side of the inner window whose products with the noise level are inputs (0: none)
    gain: int = 0  # n: side of the inner window divided by the noise level, the 1/sigma eps needs (0: none)
    coarse: int = 0  # s: pooling factor of the coarse 3 x 3 neighbourhood (0: none); divides H and W
    cond_dim: int = 0
    head_buckets: int = 0  # K: t buckets of the noise-level head (ounet/head.py; 0: none)
    teacher: str = ""
    pixel_range: tuple[float, float] = (-1.0, 1.0)  # the teacher's clean sample range (for images and PSNR)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.sample_shape = tuple(int(s) for s in self.sample_shape)
        self.pixel_range = tuple(float(v) for v in self.pixel_range)
        if len(self.sample_shape) != 3:
            raise ValueError(f"sample_shape must be (C, H, W), got {self.sample_shape}")
        if self.window < 1 or self.window % 2 == 0:
            raise ValueError(f"window must be odd and positive, got {self.window}")
        for name in ("modulate", "gain"):
            m = getattr(self, name)
            if m < 0 or m > self.window or (m and m % 2 == 0):
                raise ValueError(f"{name} must be 0 or odd and <= window ({self.window}), got {m}")
        if self.coarse < 0 or (self.coarse and (self.sample_shape[1] % self.coarse or self.sample_shape[2] % self.coarse)):
            raise ValueError(f"coarse must be 0 or divide the sample's height and width {self.sample_shape[1:]}, "
                             f"got {self.coarse}")
        if self.grid < 1 or self.freqs < 0 or self.cond_dim < 0 or self.num_steps < 2 or self.head_buckets < 0:
            raise ValueError(f"need grid >= 1, freqs >= 0, cond_dim >= 0, num_steps >= 2; got {self}")

    @property
    def in_dim(self) -> int:
        C = self.sample_shape[0]
        mod = 2 * C * (self.modulate ** 2 + self.grid ** 2) if self.modulate else 0
        return C * self.window ** 2 + 2 + 2 * self.freqs + C * self.grid ** 2 + 2 + mod + C * self.gain ** 2 \
            + (27 * C if self.coarse else 0) \
            + self.cond_dim

    def centre_index(self, channel: int = 0) -> int:
        """Input column holding x_t itself at the pixel, for `channel`."""
        k = self.window
        return channel * k * k + (k // 2) * k + k // 2


def image_inputs(cfg: OUNetConfig, schedule: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
    """The inputs shared by every pixel of an image, and the positions: ab (B,), time (B, 2 + 2F),
    global context (B, C g g), pixel positions (HW, 2) in [-1, 1]. Used by `features` and ounet/fast.py."""
    H, W = x_t.shape[2:]
    ab = schedule.to(x_t.device, torch.float64)[t].float()  # (B,)
    tau = t.to(x_t.device, torch.float32) / (cfg.num_steps - 1)  # (B,) in [0, 1]
    freqs = math.pi * 2.0 ** torch.arange(cfg.freqs, device=x_t.device, dtype=torch.float32)  # (F,)
    ang = tau[:, None] * freqs  # (B, F)
    tf = torch.cat([ab.sqrt()[:, None], (1 - ab).sqrt()[:, None], ang.sin(), ang.cos()], 1)  # (B, 2 + 2F)
    glob = F.adaptive_avg_pool2d(x_t, cfg.grid).flatten(1)  # (B, C g g)
    ry = torch.linspace(-1, 1, H, device=x_t.device)
    rx = torch.linspace(-1, 1, W, device=x_t.device)
    pos = torch.stack(torch.meshgrid(ry, rx, indexing="ij"), -1).reshape(H * W, 2)  # (HW, 2)
    return ab, tf, glob, pos


def features(cfg: OUNetConfig, schedule: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
             cond: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) x_t, (B,) int64 t, cond (B, D) or None -> (B, H * W, in_dim) per-pixel input rows."""
    B, C, H, W = x_t.shape
    k = cfg.window
    win = F.unfold(x_t, k, padding=k // 2).transpose(1, 2)  # (B, HW, C k k), zero padded
    ab, tf, glob, pos = image_inputs(cfg, schedule, x_t, t)
    pos = pos[None].expand(B, -1, -1)  # (B, HW, 2)
    parts = [tf, glob] + ([cond.to(x_t.device, torch.float32).reshape(B, -1)] if cfg.cond_dim else [])
    per_image = torch.cat(parts, 1)[:, None, :].expand(-1, H * W, -1)  # (B, HW, time + global + cond)
    n_tg = tf.shape[1] + glob.shape[1]
    mod = []
    if cfg.modulate:
        # a linear readout of x_t alone cannot weigh it by the noise level (the per-timestep linear
        # clones need one map per t bucket); products with sqrt(ab), sqrt(1 - ab) give it that
        m, C = cfg.modulate, x_t.shape[1]
        cut = (k - m) // 2
        inner = win.reshape(B, H * W, C, k, k)[..., cut:cut + m, cut:cut + m].reshape(B, H * W, C * m * m)
        local = torch.cat([inner, per_image[..., tf.shape[1]:n_tg]], 2)  # (B, HW, C m m + C g g)
        mod = [local * ab.sqrt()[:, None, None], local * (1 - ab).sqrt()[:, None, None]]
    if cfg.gain:
        # at low noise eps = (x_t - sqrt(ab) x0) / sigma: the window needs a gain of 1 / sigma that no
        # product above supplies; s0 bounds it at the first steps (sigma ~ 0.01)
        n, C = cfg.gain, x_t.shape[1]
        cut = (k - n) // 2
        inner = win.reshape(B, H * W, C, k, k)[..., cut:cut + n, cut:cut + n].reshape(B, H * W, C * n * n)
        mod.append(inner / (1 - ab + GAIN_FLOOR ** 2).sqrt()[:, None, None])
    if cfg.coarse:
        # what decides the digit at high noise is context beyond the window; the pooled cells around the
        # pixel give it translation-equivariantly (a global grid would tie it to absolute position)
        co = coarse_window(x_t, cfg.coarse)  # (B, HW, C 9)
        mod += [co, co * ab.sqrt()[:, None, None], co * (1 - ab).sqrt()[:, None, None]]
    return torch.cat([win, per_image[..., :n_tg], pos, *mod, per_image[..., n_tg:]], 2)


def coarse_map(x_t: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): x_t average-pooled by s and repeated back to full size."""
    return F.avg_pool2d(x_t, s).repeat_interleave(s, 2).repeat_interleave(s, 3)


def coarse_window(x_t: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, HW, C 9): the pooled cells at offsets -s, 0, s around each pixel, zero outside."""
    return F.unfold(coarse_map(x_t, s), 3, dilation=s, padding=s).transpose(1, 2)


class OUNet(nn.Module):
    """A gradient-free clone of a denoiser: u(x_t, t, cond=None) -> eps (B, C, H, W), in teacher units."""

    def __init__(self, config: OUNetConfig, module: nn.Module, schedule: torch.Tensor, meta: dict | None = None,
                 adapter: TextAdapter | None = None, head: OLAModule | None = None):
        """`adapter`: the text adapter from the teacher's embedding to cond (its cond_dim must be config's);
        `head`: the noise-level head (ounet/head.py), an OLAModule K (C k k + 1) -> C, when config.head_buckets > 0."""
        super().__init__()
        schedule = torch.as_tensor(schedule, dtype=torch.float64).cpu()
        if schedule.ndim != 1 or schedule.numel() != config.num_steps:
            raise ValueError(f"schedule must be ({config.num_steps},) alpha-bar values, got {tuple(schedule.shape)}")
        if adapter is not None and adapter.config.cond_dim != config.cond_dim:
            raise ValueError(f"the text adapter gives {adapter.config.cond_dim} cond values, the O-UNet takes "
                             f"{config.cond_dim}")
        self.config, self.module, self.meta = config, module, dict(meta or {})
        self.adapter = adapter
        C, k, K = config.sample_shape[0], config.window, config.head_buckets
        if (head is None) != (K == 0) or (head is not None and (head.in_dim, head.out_dim, head.config.hidden)
                                          != (K * (C * k * k + 1), C, ())):
            raise ValueError(f"head_buckets {K} needs a linear head {K * (C * k * k + 1)} -> {C}, got "
                             f"{None if head is None else (head.in_dim, head.out_dim, head.config.hidden)}")
        self.head = head
        self.register_buffer("_schedule", schedule, persistent=False)
        self.requires_grad_(False)
        self.eval()

    # -- the Denoiser interface (so teachers.denoiser.ddim_sample runs an O-UNet as it runs a teacher)

    @property
    def schedule(self) -> torch.Tensor:
        """(T,) float64 alpha-bar of the teacher's schedule, indexed by t."""
        return self._schedule.cpu()

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.schedule

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.config.sample_shape

    @property
    def cond_shape(self) -> tuple[int, ...] | None:
        """What cond is: the teacher's text embedding shape with an adapter, else (cond_dim,); None: unconditional."""
        if self.adapter is not None:
            return self.adapter.config.cond_shape
        return (self.config.cond_dim,) if self.config.cond_dim else None

    @property
    def id(self) -> str:
        return f"ounet:{self.config.teacher}"

    @property
    def device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def eps(self, x_t: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Same as calling the model."""
        return self(x_t, t, cond)

    def forward(self, x_t: torch.Tensor, t, cond: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) x_t, (B,) integer steps (or one int), cond or None -> (B, C, H, W) eps.

        cond: with a text adapter, the teacher's text embedding (B or 1, L, D) or pooled (B or 1, D);
        without one, the cond vectors themselves (B, cond_dim).
        """
        from organic_sd.teachers.denoiser import check_eps_inputs

        cfg = self.config
        tt = check_eps_inputs(x_t, t, cfg.sample_shape, cfg.num_steps)
        B = x_t.shape[0]
        if cfg.cond_dim == 0 and cond is not None:
            raise ValueError("this O-UNet is unconditional: pass cond=None")
        if self.adapter is not None:
            if cond is None:
                raise ValueError("this O-UNet is conditional: pass the teacher's text embedding as cond "
                                 "(teacher.encode_text([prompt]); the empty prompt for unconditional samples)")
            if cond.shape[0] not in (1, B):
                raise ValueError(f"cond must hold 1 or {B} text embeddings, got {tuple(cond.shape)}")
            cond = self.adapter(cond).expand(B, -1)  # (B, cond_dim)
        if cfg.cond_dim and (cond is None or cond.reshape(B, -1).shape[1] != cfg.cond_dim):
            got = None if cond is None else tuple(cond.shape)
            raise ValueError(f"cond must be (B, {cfg.cond_dim}) for this O-UNet, got {got}")
        x = x_t.to(self.device, torch.float32)
        if isinstance(self.module, OLAModule):  # the same function as below, as convolutions (ounet/fast.py)
            from organic_sd.ounet.fast import fast_eps

            out = fast_eps(self, x, tt.to(x.device), cond)
        else:
            rows = features(cfg, self._schedule, x, tt.to(x.device), cond)  # (B, HW, in)
            out = self.module(rows).transpose(1, 2).reshape(x.shape)  # (B, C, H, W)
        if self.head is not None:
            from organic_sd.ounet.head import head_conv

            out = out + head_conv(self, x, tt.to(x.device))
        return out

    def num_parameters(self) -> int:
        """Number of stored numbers of the stack, the text adapter and the noise-level head (weights and biases)."""
        return sum(p.numel() for p in self.parameters())

    # -- files

    def save(self, path: str | os.PathLike) -> Path:
        """Write one .safetensors file (a folder gets model.safetensors inside); atomic."""
        from safetensors.torch import save_file

        if not isinstance(self.module, OLAModule):
            raise TypeError(f"only an O-UNet whose stack is an OLAModule can be saved, not {type(self.module).__name__}")
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / WEIGHTS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        tensors["schedule"] = self.schedule.contiguous()
        md = {"format": FORMAT, "config": json.dumps(asdict(self.config)),
              "ola_config": json.dumps(asdict(self.module.config)),
              "training": json.dumps(self.module.training_summary, default=str),
              "meta": json.dumps(self.meta, default=str)}
        if self.adapter is not None:  # same file: an O-UNet is never separated from its adapter
            tensors.update({f"adapter.{k}": v.detach().cpu().contiguous()
                            for k, v in self.adapter.module.state_dict().items()})
            md["adapter"] = json.dumps(self.adapter.config_dict(), default=str)
        if self.head is not None:
            tensors.update({f"head.{k}": v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()})
            md["head_config"] = json.dumps(asdict(self.head.config))
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=md))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> OUNet:
        """Load an O-UNet file or run folder; no path: the default one shipped in the package."""
        if path is None:
            if not DEFAULT_PATH.is_file():
                raise FileNotFoundError(f"no default O-UNet shipped at {DEFAULT_PATH}; train one with "
                                        "`osd train denoiser` and pass its run folder")
            path = DEFAULT_PATH
        file, tensors, md = read_safetensors(path, "O-UNet")
        if md.get("format") != FORMAT:
            raise ValueError(f"{file} is not an O-UNet (format {md.get('format')!r}, expected {FORMAT!r})")
        cfg = OUNetConfig(**json.loads(md["config"]))
        ocfg = json.loads(md["ola_config"])
        if ocfg.get("format") != OLA_FORMAT:
            raise ValueError(f"{file}: its stack has format {ocfg.get('format')!r}, expected {OLA_FORMAT!r}")
        state = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        module = load_weights(OLAModule(OLAConfig(**ocfg), json.loads(md.get("training", "{}"))), state,
                              f"{file}: stack")
        if module.in_dim != cfg.in_dim or module.out_dim != cfg.sample_shape[0]:
            raise ValueError(f"{file}: stack {module.in_dim} -> {module.out_dim} does not fit the config "
                             f"({cfg.in_dim} -> {cfg.sample_shape[0]})")
        head = None
        if cfg.head_buckets:
            if "head_config" not in md:
                raise ValueError(f"{file}: its config names a {cfg.head_buckets}-bucket head but the file holds none")
            head = load_weights(OLAModule(OLAConfig(**json.loads(md["head_config"]))),
                                {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}, f"{file}: head")
        try:
            u = cls(cfg, module, tensors["schedule"], json.loads(md.get("meta", "{}")),
                    _load_adapter(file, md, tensors), head)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from None
        return u.to(device)


def _load_adapter(file: Path, md: dict, tensors: dict) -> TextAdapter | None:
    """The text adapter stored beside the stack (tensors `adapter.*`, metadata `adapter`), or None if there is none."""
    state = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
    if "adapter" not in md:
        if state:
            raise ValueError(f"{file}: holds text adapter tensors ({sorted(state)}) but no adapter config: a broken "
                             "O-UNet file")
        return None
    if not state:
        raise ValueError(f"{file}: its metadata names a text adapter but the file holds no adapter tensors: a broken "
                         "O-UNet file")
    try:
        return TextAdapter.from_state(json.loads(md["adapter"]), state)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{file}: bad text adapter ({e})") from None
