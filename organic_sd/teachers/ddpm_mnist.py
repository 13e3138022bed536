"""The MNIST DDPM teacher: a real pretrained pixel-space eps-prediction network.

Architecture written from the facts in `data/teachers/ddpm-mnist/README.md` (weights from
Yichizz/hot_vs_cold_diffusion, MIT): four [7x7 conv -> LayerNorm(C, 28, 28) -> GELU] blocks,
1 -> 16 -> 32 -> 32 -> 16 channels, a 3x3 conv back to 1 channel, and a timestep MLP whose
16 outputs are added to block 0's output. Images are 1 x 28 x 28 in [-0.5, 0.5]; integer
steps t run 0..1000 with alpha-bar `alpha_t[t]` (beta linear 1e-4 -> 0.02, T = 1000), and the
network sees t / T.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn as nn

from organic_sd.teachers.common import TeacherError, load_exact, read_weights, state_digest
from organic_sd.teachers.denoiser_base import check_eps_inputs

T = 1000  # training steps; the schedule tables have T + 1 entries (steps 0..T)
SHAPE = (1, 28, 28)
DATA_RANGE = (-0.5, 0.5)
CHANNELS = (16, 32, 32, 16)
N_FREQ = 16
FILE_NAME = "ddpm_mnist_starter.pth"
# the state dict keys that say "this is the MNIST DDPM" (a subset, for format sniffing)
SIGNATURE = ("beta_t", "alpha_t", "gt.frequencies", "gt.time_embed.0.weight", "gt.blocks.4.weight")


class ConvBlock(nn.Module):
    """7x7 conv -> LayerNorm over (C, 28, 28) with per-pixel affine -> GELU."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(n_in, n_out, 7, padding=3), nn.LayerNorm((n_out, *SHAPE[1:])), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class EpsNet(nn.Module):
    """(B, 1, 28, 28) noisy image, (B,) t / T in [0, 1] -> (B, 1, 28, 28) predicted noise."""

    def __init__(self):
        super().__init__()
        chans = (SHAPE[0], *CHANNELS)
        self.blocks = nn.ModuleList([ConvBlock(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.blocks.append(nn.Conv2d(CHANNELS[-1], SHAPE[0], 3, padding=1))
        self.time_embed = nn.Sequential(
            nn.Linear(2 * N_FREQ, 128), nn.GELU(), nn.Linear(128, 128), nn.GELU(),
            nn.Linear(128, 128), nn.GELU(), nn.Linear(128, CHANNELS[0]),
        )
        freqs = [0.0] + [2 * math.pi * 1.5**k for k in range(N_FREQ - 1)]
        self.register_buffer("frequencies", torch.tensor(freqs, dtype=torch.float32))

    def time_features(self, tau: torch.Tensor) -> torch.Tensor:
        """(B,) t / T -> (B, 32): [sin(tau f), cos(tau f) - 1] (the -1 makes tau = 0 all zeros)."""
        ph = tau[:, None] * self.frequencies[None, :]  # (B, 16)
        return torch.cat([torch.sin(ph), torch.cos(ph) - 1], dim=1)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        h = self.blocks[0](x)  # (B, 16, 28, 28)
        h = h + self.time_embed(self.time_features(tau))[:, :, None, None]  # time added, broadcast over H, W
        for block in self.blocks[1:]:
            h = block(h)
        return h


class DDPMMnistModule(nn.Module):
    """The file's layout: the eps network under `gt.` and the schedule buffers beside it."""

    def __init__(self):
        super().__init__()
        self.gt = EpsNet()
        beta = 1e-4 + (0.02 - 1e-4) * torch.arange(T + 1, dtype=torch.float64) / T  # (T+1,)
        self.register_buffer("beta_t", beta.float())
        self.register_buffer("alpha_t", torch.cumprod(1 - beta, 0).float())  # alpha-bar


def looks_like_ddpm_mnist(state) -> bool:
    """True when a state dict has the MNIST DDPM's schedule buffers and eps-network keys."""
    return all(k in state for k in SIGNATURE)


class MNISTDenoiser:
    """The MNIST DDPM as a Denoiser: eps(x_t (B, 1, 28, 28) in [-0.5, 0.5] units, t (B,) in 0..1000)."""

    sample_shape = SHAPE
    data_range = DATA_RANGE
    pixel_range = DATA_RANGE  # clean samples in [-0.5, 0.5]
    cond_shape = None  # unconditional
    prediction_type = "epsilon"

    def __init__(self, module: DDPMMnistModule, id: str, device: torch.device):
        self.module = module.to(device).eval().requires_grad_(False)
        self.net = self.module.gt
        self.id = id
        self.device = device
        # float64 on the CPU: sampler coefficients are computed from it per step
        self.alphas_cumprod = module.alpha_t.detach().to("cpu", torch.float64)  # (T+1,)
        self.betas = module.beta_t.detach().to("cpu", torch.float64)  # (T+1,)
        self.num_train_timesteps = T

    def __repr__(self) -> str:
        return f"MNISTDenoiser(id={self.id!r}, device={self.device})"

    def eps(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """(B, 1, 28, 28) x_t, (B,) integer steps -> (B, 1, 28, 28) predicted noise, float32 on x_t's device."""
        if cond is not None:
            raise ValueError(f"teacher {self.id} is unconditional: pass cond=None, got {type(cond).__name__}")
        tt = check_eps_inputs(x_t, t, self.sample_shape, len(self.alphas_cumprod))  # (B,) int64
        with torch.no_grad():
            tau = tt.to(self.device, torch.float32) / T
            out = self.net(x_t.to(self.device, torch.float32), tau)
        return out.to(x_t.device)

    def encode_text(self, prompts):
        """Always an error: this teacher has no text encoder."""
        raise TeacherError(f"teacher {self.id} is an unconditional MNIST DDPM: it has no text encoder, "
                           "so it takes no prompts")


def default_path() -> Path:
    """The shipped teacher file: $OSD_SHARED_DATA/teachers/ddpm-mnist (default <repo>/../shared/data)."""
    root = os.environ.get("OSD_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data"
    return Path(root) / "teachers" / "ddpm-mnist" / FILE_NAME


def load(path: str | os.PathLike | None, device: torch.device) -> MNISTDenoiser:
    """The MNIST DDPM from its .pth (or a folder holding it; None -> default_path()), loaded exactly."""
    path = default_path() if path is None else Path(path).expanduser()
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"MNIST DDPM weights {str(path)!r}: no such file (set OSD_SHARED_DATA or pass "
                                f"ddpm-mnist:PATH to the {FILE_NAME} file)")
    state = read_weights(path)
    if not looks_like_ddpm_mnist(state):
        raise TeacherError(f"{str(path)!r} is not the MNIST DDPM: it lacks "
                           f"{[k for k in SIGNATURE if k not in state]} (first keys: {sorted(state)[:5]})")
    module = DDPMMnistModule()
    load_exact({"": (module, state)}, f"MNIST DDPM {str(path)!r}")
    return MNISTDenoiser(module, "ddpm-mnist:" + state_digest(state), device)
