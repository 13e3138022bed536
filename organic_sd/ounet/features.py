"""The O-UNet's per-pixel inputs: its config (which inputs, how many columns) and the functions building them.

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
    stage    the coarse stage's prediction (ounet/stage.py) upsampled, its w x w window,  3 * C * w * w
             as it is and times sqrt(ab[t]), sqrt(1 - ab[t]) (stage_grid = 0: none)
    cond     the conditioning vector, when the teacher has one        cond_dim
             (the text adapter's output, ounet/adapter.py: u's cond argument is the teacher's text embedding)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from organic_sd.ounet.targets import TARGETS

# --stage-copies: the pooled image times sqrt(alpha-bar) ("signal") and times sqrt(1 - alpha-bar) ("noise"), the
# coarse stage's linear path to a noise-level-dependent map; at 14x14 the noise copy alone keeps most of it
# (least squares on teacher rows: relative error 0.369 both, 0.373 noise, 0.379 signal, 0.417 none)
STAGE_COPIES = {"both": ("signal", "noise"), "noise": ("noise",), "signal": ("signal",), "none": ()}

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
    stage_grid: int = 0  # g: side of the coarse stage's grid (ounet/stage.py; 0: single-scale)
    stage_buckets: int = 0  # K: soft time buckets whose products with the pooled image are coarse-stage inputs
    stage_window: int = 5  # w: window of the upsampled coarse prediction in the per-pixel rows (odd)
    # which noise-scaled copies of the pooled image the coarse stage also reads (STAGE_COPIES above):
    # each copy is C g g more readout columns per output, 38 k parameters at 14x14
    stage_copies: str = "both"
    target: str = "eps"  # what both stages predict: eps, x0 or v (ounet/targets.py); forward returns eps
    cond_dim: int = 0
    classes: tuple[str, ...] = ()  # a class-conditional teacher's class names: cond is a (B, K) class-weight row
    head_buckets: int = 0  # K: t buckets of the noise-level head (ounet/head.py; 0: none)
    # steps t < low_split use a second per-pixel stack of the same inputs, predicting low_target (ounet/low.py;
    # 0: none): the last DDIM steps draw the strokes, and there a bounded x0 leaves a clean background
    low_split: int = 0
    low_target: str = "x0"
    # k: the clean stage's window on the low stack's x0 (ounet/clean.py; 0: none): a second map over the low
    # stack's output, which sees whether a stroke pixel has neighbours beyond the stack's own window
    clean_window: int = 0
    teacher: str = ""
    pixel_range: tuple[float, float] = (-1.0, 1.0)  # the teacher's clean sample range (for images and PSNR)

    def __post_init__(self):
        self.sample_shape = tuple(int(s) for s in self.sample_shape)
        self.pixel_range = tuple(float(v) for v in self.pixel_range)
        self.classes = tuple(str(c) for c in self.classes)
        if self.classes and self.cond_dim != len(self.classes):
            raise ValueError(f"a class-conditional O-UNet takes one cond value per class: cond_dim must be "
                             f"{len(self.classes)}, got {self.cond_dim}")
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
        if self.stage_grid < 0 or (self.stage_grid and (self.sample_shape[1] % self.stage_grid
                                                        or self.sample_shape[2] % self.stage_grid)):
            raise ValueError(f"stage_grid must be 0 or divide the sample's height and width {self.sample_shape[1:]}, "
                             f"got {self.stage_grid}")
        if self.stage_buckets < 0 or self.stage_buckets == 1:
            raise ValueError(f"stage_buckets must be 0 or >= 2, got {self.stage_buckets}")
        if self.stage_copies not in STAGE_COPIES:
            raise ValueError(f"stage_copies must be one of {tuple(STAGE_COPIES)}, got {self.stage_copies!r}")
        if self.stage_window < 1 or self.stage_window % 2 == 0:
            raise ValueError(f"stage_window must be odd and positive, got {self.stage_window}")
        for name in ("target", "low_target"):
            if getattr(self, name) not in TARGETS:
                raise ValueError(f"{name} must be one of {TARGETS}, got {getattr(self, name)!r}")
        if not 0 <= self.low_split < self.num_steps:
            raise ValueError(f"low_split must be in [0, {self.num_steps}), got {self.low_split}")
        if self.clean_window < 0 or (self.clean_window and self.clean_window % 2 == 0):
            raise ValueError(f"clean_window must be 0 or odd, got {self.clean_window}")
        if self.clean_window and not (self.low_split and self.low_target == "x0"):
            raise ValueError("a clean stage reads the low-noise stack's x0: it needs low_split > 0 and low_target "
                             f"'x0', got {self.low_split} and {self.low_target!r}")
        if self.grid < 1 or self.freqs < 0 or self.cond_dim < 0 or self.num_steps < 2 or self.head_buckets < 0:
            raise ValueError(f"need grid >= 1, freqs >= 0, cond_dim >= 0, num_steps >= 2; got {self}")

    @property
    def in_dim(self) -> int:
        C = self.sample_shape[0]
        mod = 2 * C * (self.modulate ** 2 + self.grid ** 2) if self.modulate else 0
        return C * self.window ** 2 + 2 + 2 * self.freqs + C * self.grid ** 2 + 2 + mod + C * self.gain ** 2 \
            + (27 * C if self.coarse else 0) + (3 * C * self.stage_window ** 2 if self.stage_grid else 0) \
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
             cond: torch.Tensor | None = None, stage: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, H, W) x_t, (B,) int64 t, cond (B, D) or None, the upsampled coarse prediction `stage` (B, C, H, W)
    when cfg.stage_grid (ounet/stage.py: stage_map) -> (B, H * W, in_dim) per-pixel input rows."""
    B, C, H, W = x_t.shape
    if bool(cfg.stage_grid) != (stage is not None):
        raise ValueError(f"stage_grid {cfg.stage_grid}: the per-pixel rows need the coarse stage's map "
                         f"{'(stage=stage_map(...))' if cfg.stage_grid else 'only when stage_grid > 0'}")
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
    if cfg.stage_grid:
        w = cfg.stage_window
        sw = F.unfold(stage, w, padding=w // 2).transpose(1, 2)  # (B, HW, C w w), zero padded
        mod += [sw, sw * ab.sqrt()[:, None, None], sw * (1 - ab).sqrt()[:, None, None]]
    return torch.cat([win, per_image[..., :n_tg], pos, *mod, per_image[..., n_tg:]], 2)


def coarse_map(x_t: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): x_t average-pooled by s and repeated back to full size."""
    return F.avg_pool2d(x_t, s).repeat_interleave(s, 2).repeat_interleave(s, 3)


def coarse_window(x_t: torch.Tensor, s: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, HW, C 9): the pooled cells at offsets -s, 0, s around each pixel, zero outside."""
    return F.unfold(coarse_map(x_t, s), 3, dilation=s, padding=s).transpose(1, 2)
