"""The class-conditional MNIST DiT teacher: a real pretrained pixel-space eps-prediction transformer.

Architecture written from the facts in `data/teachers/dit-mnist-cond/README.md` (weights from
Franfee/DM-DiT-DDPM-MNIST-class-cond-ImageGen, MIT): 4x4 patches -> 49 tokens of 64, three
adaLN-modulated transformer blocks conditioned on c = label embedding + time embedding, a
linear head back to 4x4 pixel blocks. Images are 1 x 28 x 28 in [-1, 1]; integer steps t run
0..999 (beta linear 1e-4 -> 0.02) and enter the network as those integers.

The condition is the class. `eps(x_t, t, cond)` takes cond as either
- a (B,) integer tensor of class indices 0..9, or
- a (B, 10) float tensor of class weights: a one-hot row is that class (what `encode_text` and
  `class_cond` give, and what a store's cond table holds); the label embedding is `cond @ label_emb`,
  so other rows mix the classes' embeddings, which the network never saw in training.
A leading dimension of 1 is broadcast over the batch. There is no null class: cond=None is an error.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from organic_sd.teachers.common import TeacherError, load_exact, read_weights, state_digest
from organic_sd.teachers.denoiser_base import check_eps_inputs

T = 1000  # schedule entries: steps 0..T-1
SHAPE = (1, 28, 28)
DATA_RANGE = (-1.0, 1.0)
PATCH = 4
GRID = SHAPE[1] // PATCH  # 7 x 7 tokens
TOKEN_IN = SHAPE[0] * PATCH * PATCH  # 16 numbers per patch
WIDTH = 64  # token and conditioning width
HEADS, HEAD_DIM = 4, 64
FF = 256
DEPTH = 3
NUM_CLASSES = 10
CLASSES = tuple(str(k) for k in range(NUM_CLASSES))  # class k's name is its digit: the prompts encode_text takes
FILE_NAME = "model-40000.pth"
# the state dict keys that say "this is the MNIST DiT" (a subset, for format sniffing)
SIGNATURE = ("patch_pos_emb", "time_emb.0.half_emb", "label_emb.weight", "dits.0.gamma1.weight", "linear.weight")
MODULATIONS = ("gamma1", "beta1", "alpha1", "gamma2", "beta2", "alpha2")


def half_frequencies() -> torch.Tensor:
    """(32,) exp(-k ln(10000) / 31): the sinusoid frequencies of the time embedding."""
    h = WIDTH // 2
    return torch.exp(-torch.arange(h, dtype=torch.float32) * math.log(10000) / (h - 1))


class TimeSinusoid(nn.Module):
    """(B,) integer steps (as floats, not divided by T) -> (B, 64) [sin(t f), cos(t f)]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("half_emb", half_frequencies())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        ph = t[:, None] * self.half_emb[None, :]  # (B, 32)
        return torch.cat([torch.sin(ph), torch.cos(ph)], dim=1)


class DiTBlock(nn.Module):
    """Tokens x (B, 49, 64), conditioning c (B, 64) -> x + a1 * attn(mod(ln1 x)) then + a2 * ff(mod(ln2 x))."""

    def __init__(self):
        super().__init__()
        for name in MODULATIONS:
            setattr(self, name, nn.Linear(WIDTH, WIDTH))
        self.ln1, self.ln2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.wq, self.wk, self.wv = (nn.Linear(WIDTH, HEADS * HEAD_DIM) for _ in range(3))
        self.lv = nn.Linear(HEADS * HEAD_DIM, WIDTH)
        self.ff = nn.Sequential(nn.Linear(WIDTH, FF), nn.ReLU(), nn.Linear(FF, WIDTH))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        g1, b1, a1, g2, b2, a2 = (getattr(self, n)(c)[:, None, :] for n in MODULATIONS)  # each (B, 1, 64)
        y = self.ln1(x) * (1 + g1) + b1
        # each (B, h, N, 64): 4 heads of 64
        q, k, v = (w(y).view(B, N, HEADS, HEAD_DIM).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        # scaled by sqrt(number of tokens), not sqrt(head width): what the weights were trained with
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(N), dim=-1)  # (B, h, N, N)
        y = (att @ v).transpose(1, 2).reshape(B, N, HEADS * HEAD_DIM)  # heads concatenated
        x = x + self.lv(y) * a1
        z = self.ln2(x) * (1 + g2) + b2
        return x + self.ff(z) * a2


class DiT(nn.Module):
    """The file's layout: (B, 1, 28, 28) x_t, (B,) float steps, (B, 10) class weights -> (B, 1, 28, 28) eps."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(SHAPE[0], TOKEN_IN, PATCH, stride=PATCH)
        self.patch_emb = nn.Linear(TOKEN_IN, WIDTH)
        self.patch_pos_emb = nn.Parameter(torch.zeros(1, GRID * GRID, WIDTH))
        self.time_emb = nn.Sequential(TimeSinusoid(), nn.Linear(WIDTH, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH))
        self.label_emb = nn.Embedding(NUM_CLASSES, WIDTH)
        self.dits = nn.ModuleList([DiTBlock() for _ in range(DEPTH)])
        self.ln = nn.LayerNorm(WIDTH)
        self.linear = nn.Linear(WIDTH, TOKEN_IN)

    def conditioning(self, t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(B,) float steps, (B, 10) class weights -> (B, 64) label embedding + time embedding."""
        return weights @ self.label_emb.weight + self.time_emb(t)

    def forward(self, x: torch.Tensor, t: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        p = self.conv(x).flatten(2).transpose(1, 2)  # (B, 16, 7, 7) -> (B, 49, 16), tokens row-major over 7 x 7
        h = self.patch_emb(p) + self.patch_pos_emb  # (B, 49, 64)
        c = self.conditioning(t, weights)  # (B, 64)
        for block in self.dits:
            h = block(h, c)
        out = self.linear(self.ln(h))  # (B, 49, 16): each token's 4 x 4 pixel block, row-major
        out = out.view(B, GRID, GRID, PATCH, PATCH).permute(0, 1, 3, 2, 4)  # (B, 7, 4, 7, 4): rows 4i.., cols 4j..
        return out.reshape(B, *SHAPE)


def looks_like_dit_mnist(state) -> bool:
    """True when a state dict has the MNIST DiT's embedding, block and head keys."""
    return all(k in state for k in SIGNATURE)


def class_cond(labels, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(B,) integer classes (a tensor or a sequence of ints) -> (B, num_classes) float32 one-hot."""
    lab = torch.as_tensor(labels)
    if lab.ndim != 1 or lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-d integer sequence of classes, got {lab.dtype} shape {tuple(lab.shape)}")
    if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got values in {int(lab.min())}..{int(lab.max())}")
    return torch.nn.functional.one_hot(lab.to(torch.int64), num_classes).float()


class DiTMnistDenoiser:
    """The MNIST DiT as a Denoiser: eps(x_t (B, 1, 28, 28) in [-1, 1] units, t (B,) in 0..999, cond: the class)."""

    sample_shape = SHAPE
    data_range = DATA_RANGE
    pixel_range = DATA_RANGE  # clean samples in [-1, 1]
    cond_shape = (NUM_CLASSES,)  # per prompt: a one-hot row over the classes
    classes = CLASSES  # class k is named (and prompted) by its digit
    prediction_type = "epsilon"

    def __init__(self, net: DiT, id: str, device: torch.device):
        self.net = net.to(device).eval().requires_grad_(False)
        self.id = id
        self.device = device
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
        self.betas = betas  # (T,) float64 CPU
        # float64 on the CPU: sampler coefficients are computed from it per step
        self.alphas_cumprod = torch.cumprod(1 - betas, 0)  # (T,)
        self.num_train_timesteps = T

    def __repr__(self) -> str:
        return f"DiTMnistDenoiser(id={self.id!r}, device={self.device})"

    def class_weights(self, cond, B: int) -> torch.Tensor:
        """cond (B,) or (1,) integer classes, or (B, 10) or (1, 10) float class weights -> (B, 10) float32 here."""
        if cond is None:
            raise ValueError(f"teacher {self.id} is class-conditional and has no unconditional mode: pass cond, "
                             f"(B,) class indices 0..{NUM_CLASSES - 1} or (B, {NUM_CLASSES}) one-hot rows "
                             "(class_cond(labels))")
        if not isinstance(cond, torch.Tensor):
            raise ValueError(f"cond must be a torch.Tensor, (B,) integer classes or (B, {NUM_CLASSES}) float class "
                             f"weights, got {type(cond).__name__}")
        if cond.ndim == 1 and not (cond.is_floating_point() or cond.is_complex() or cond.dtype == torch.bool):
            w = class_cond(cond.cpu())
        elif cond.ndim == 2 and cond.shape[1] == NUM_CLASSES and cond.is_floating_point():
            w = cond.float()
            if not torch.isfinite(w).all():
                raise ValueError("cond holds NaN or inf class weights")
        else:
            raise ValueError(f"cond must be (B,) integer classes or (B, {NUM_CLASSES}) float class weights, got "
                             f"{cond.dtype} shape {tuple(cond.shape)}")
        if w.shape[0] not in (1, B):
            raise ValueError(f"cond must have {B} rows (one per sample) or 1 (shared), got {w.shape[0]}")
        return w.to(self.device).expand(B, NUM_CLASSES)

    def eps(self, x_t: torch.Tensor, t, cond=None) -> torch.Tensor:
        """(B, 1, 28, 28) x_t, (B,) integer steps, cond (classes) -> (B, 1, 28, 28) predicted noise, on x_t's device."""
        tt = check_eps_inputs(x_t, t, self.sample_shape, T)  # (B,) int64
        w = self.class_weights(cond, x_t.shape[0])
        with torch.no_grad():
            out = self.net(x_t.to(self.device, torch.float32), tt.to(self.device, torch.float32), w)
        return out.to(x_t.device)

    def conditioning(self, t, cond) -> torch.Tensor:
        """(B,) integer steps, cond (as for eps) -> (B, 64) the network's conditioning: label + time embedding."""
        tt = torch.as_tensor(t).reshape(-1)
        if tt.is_floating_point() or (len(tt) and (int(tt.min()) < 0 or int(tt.max()) >= T)):
            raise ValueError(f"t must hold integer steps 0..{T - 1}, got {tt.tolist()[:5]}")
        with torch.no_grad():
            return self.net.conditioning(tt.to(self.device, torch.float32), self.class_weights(cond, len(tt)))

    @property
    def label_table(self) -> torch.Tensor:
        """(10, 64) the label embedding of each class (the class part of `conditioning`)."""
        return self.net.label_emb.weight.detach()

    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """P class names ('0'..'9') -> (P, 10) one-hot float32; any other prompt is a TeacherError."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        bad = [p for p in prompts if p.strip() not in CLASSES]
        if bad:
            raise TeacherError(f"teacher {self.id} takes a class, not free text: prompts must be one of {list(CLASSES)}"
                               f", got {bad[:5]} (organic_sd.text maps phrasings such as 'a handwritten seven' to "
                               "an embedding for an adapter)")
        return class_cond([CLASSES.index(p.strip()) for p in prompts])


def default_path() -> Path:
    """$OSD_SHARED_DATA/teachers/dit-mnist-cond/model-40000.pth; a TeacherError when OSD_SHARED_DATA is not set."""
    root = os.environ.get("OSD_SHARED_DATA")
    if not root:
        raise TeacherError("dit-mnist-cond without a path: set OSD_SHARED_DATA or pass dit-mnist-cond:PATH "
                           f"(the {FILE_NAME} file or its folder)")
    return Path(root) / "teachers" / "dit-mnist-cond" / FILE_NAME


def load(path: str | os.PathLike | None, device: torch.device) -> DiTMnistDenoiser:
    """The MNIST DiT from its .pth (or a folder holding it; None -> default_path()), every key checked."""
    path = default_path() if path is None else Path(path).expanduser()
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"MNIST DiT weights {str(path)!r}: no such file (pass dit-mnist-cond:PATH to the "
                                f"{FILE_NAME} file or its folder)")
    state = read_weights(path)  # torch.load(weights_only=True): no code from the file runs
    if not looks_like_dit_mnist(state):
        raise TeacherError(f"{str(path)!r} is not the MNIST DiT: it lacks "
                           f"{[k for k in SIGNATURE if k not in state]} (first keys: {sorted(state)[:5]})")
    net = DiT()
    load_exact({"": (net, state)}, f"MNIST DiT {str(path)!r}")
    # the time frequencies are a stored buffer: one that differs from the README's formula is another model
    if not torch.allclose(net.time_emb[0].half_emb, half_frequencies(), rtol=1e-5, atol=1e-7):
        raise TeacherError(f"{str(path)!r}: time_emb.0.half_emb is not exp(-k ln(10000) / 31), k = 0..31: "
                           "not the MNIST DiT this loader was written for")
    return DiTMnistDenoiser(net, "dit-mnist-cond:" + state_digest(state), device)
