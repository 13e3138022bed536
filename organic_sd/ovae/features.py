"""The teacher's activations as targets for the earlier stages of a staged O-Decoder (`--stage-targets features`)
or O-Encoder.

A greedy stage fitted to the decode at 1/4 resolution keeps only what 1/4-resolution RGB needs, and the next stage
cannot get back what it dropped (each upsampling stage lost ~1.3 dB, docs/BENCHMARKS.md). The teacher's own
activations at that resolution hold what its later layers use, so a stage that learns them hands the next one
features instead of pixels: layer-wise cloning. Each feature stage learns the top K principal components of the
teacher's channels at its output resolution, standardised; the basis is fitted once per run on training latents and
saved in the run folder (FEATURES_NAME), so every later stage and a resumed run read the same one. The shipped
decoder needs none of this: its stages only ever read their own predictions.

Taps: in a TAESD-family decoder (an nn.Sequential with nn.Upsample between resolutions) the output of the layer
just before each Upsample, the last activation at that resolution; in its encoder, the layer before each stride-2
conv, what a staged O-Encoder's stages learn fine to coarse (its basis fitted on training images).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from organic_sd.files import atomic_write
from organic_sd.runs import out_scale_for, typical_largest

FEATURES_NAME = "features.safetensors"
FIT_SAMPLES = 64  # training latents the basis is fitted on
FIT_ROWS = 1_000_000  # positions (of all the samples' maps) in the covariance, at most
SCALE_SHARE = 0.9995  # the out_scale covers this quantile of |component| (rarer values saturate the tanh)


def taps(decoder: nn.Module) -> list[int]:
    """Layer indices whose outputs are the last activations at 1, 2, 4 ... x the latent resolution."""
    if not isinstance(decoder, nn.Sequential) or not any(isinstance(m, nn.Upsample) for m in decoder):
        raise ValueError("--stage-targets features reads the teacher decoder's layers between its upsamplings, which "
                         "needs a TAESD-family teacher (an nn.Sequential with nn.Upsample); got "
                         f"{type(decoder).__name__}")
    return [i - 1 for i, m in enumerate(decoder) if isinstance(m, nn.Upsample)]


def encoder_taps(encoder: nn.Module) -> list[int]:
    """Layer indices whose outputs are the last activations at 1, 1/2, 1/4 ... x the image resolution."""
    strided = [i for i, m in enumerate(encoder) if isinstance(m, nn.Conv2d) and m.stride != (1, 1)] \
        if isinstance(encoder, nn.Sequential) else []
    if not strided:
        raise ValueError("the teacher encoder's activations are read between its stride-2 convs, which needs a "
                         f"TAESD-family teacher (an nn.Sequential); got {type(encoder).__name__}")
    return [i - 1 for i in strided]


class FeatureTargets:
    """Per feature stage, the teacher network's activations at layer `layers[i]` projected on a standardised
    principal basis: input (B, C, h, w) -> (B, K, h', w') at that layer's resolution. `prep` maps the input to what
    the network reads (the teacher's own mapping, e.g. [-1, 1] images to its encoder's [0, 1]); None: as it is."""

    def __init__(self, net: nn.Sequential, layers: list[int], k: int, teacher_id: str, prep=None):
        self.net, self.layers, self.k, self.teacher_id = net, [int(i) for i in layers], int(k), teacher_id
        self.prep = prep
        self.mean: list[torch.Tensor] = []  # per stage (C,)
        self.proj: list[torch.Tensor] = []  # per stage (C, K): components divided by their standard deviation
        self.scale: list[float] = []  # per stage: the tanh readout's out_scale

    @classmethod
    def for_decoder(cls, decoder: nn.Sequential, ups: list[int], k: int, teacher_id: str) -> "FeatureTargets":
        """Targets of decoder stages whose outputs are ups[i] x the latent resolution (2, 4 ...)."""
        layer_of = taps(decoder)  # by factor 1, 2, 4 ...
        for u in ups:
            level = u.bit_length() - 1
            if u < 1 or u != 1 << level or level >= len(layer_of):
                raise ValueError(f"the teacher decoder has activations at x1..x{1 << (len(layer_of) - 1)} the latent "
                                 f"resolution; a stage asks for x{u}")
        return cls(decoder, [layer_of[u.bit_length() - 1] for u in ups], k, teacher_id)

    @classmethod
    def for_encoder(cls, teacher, downs: list[int], k: int) -> "FeatureTargets":
        """Targets of encoder stages whose outputs are 1/downs[i] of the image resolution (2, 4 ...), read from a
        TAESD-family teacher's encoder on [-1, 1] images (through the teacher's own input mapping)."""
        encoder = getattr(teacher, "encoder", None)
        layer_of = encoder_taps(encoder)  # by factor 1, 1/2, 1/4 ...
        for d in downs:
            level = d.bit_length() - 1
            if d < 2 or d != 1 << level or level >= len(layer_of):
                raise ValueError(f"the teacher encoder has activations at 1/1..1/{1 << (len(layer_of) - 1)} the image "
                                 f"resolution before its last stride; a stage asks for 1/{d}")
        return cls(encoder, [layer_of[d.bit_length() - 1] for d in downs], k, teacher.id, teacher.encoder_input)

    @torch.no_grad()
    def activations(self, z: torch.Tensor, stages: list[int]) -> list[torch.Tensor]:
        """The network's input (B, C, h, w) -> its activations at the layers of `stages`, each (B, C_t, h', w')."""
        p = next(self.net.parameters())
        h = z.to(p.device) if self.prep is None else self.prep(z.to(p.device))
        h, out, want = h.to(p.dtype), {}, {self.layers[s] for s in stages}
        for i, layer in enumerate(self.net):
            h = layer(h)
            if i in want:
                out[i] = h.float()
            if i >= max(want):
                break  # layers past the deepest tap are not needed
        return [out[self.layers[s]] for s in stages]

    def __call__(self, z: torch.Tensor, stage: int) -> torch.Tensor:
        """The network's input (B, C, h, w) -> feature stage `stage`'s target map (B, K, h', w'), on z's device."""
        if not self.proj:
            raise RuntimeError("FeatureTargets: fit() or load() the basis first")
        a, m, p = self.activations(z, [stage])[0], self.mean[stage], self.proj[stage]
        return torch.einsum("bchw,ck->bkhw", a - m[:, None, None], p).to(z.device)

    def fit(self, z: torch.Tensor, seed: int) -> "FeatureTargets":
        """Fit each stage's basis on the network's activations of inputs z (a sample of training inputs)."""
        gen = torch.Generator().manual_seed(seed)
        self.mean, self.proj, self.scale = [], [], []
        for a in self.activations(z, list(range(len(self.layers)))):
            rows = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]).double()  # (positions, C_t)
            if len(rows) > FIT_ROWS:
                rows = rows[torch.randperm(len(rows), generator=gen)[:FIT_ROWS].to(rows.device)]
            if self.k > rows.shape[1]:
                raise ValueError(f"--feature-channels {self.k}: the teacher has {rows.shape[1]} channels there")
            mean = rows.mean(0)
            var, vec = torch.linalg.eigh((rows - mean).T @ (rows - mean) / len(rows))  # ascending
            var, vec = var.flip(0)[:self.k].clamp_min(1e-12), vec.flip(1)[:, :self.k]
            proj = (vec / var.sqrt()).float()  # (C_t, K)
            self.mean.append(mean.float()), self.proj.append(proj)
            self.scale.append(out_scale_for(typical_largest((rows.float() - mean.float()) @ proj, SCALE_SHARE)))
        return self

    def save(self, path: str | Path) -> Path:
        """The basis as safetensors, its shape and teacher in the metadata."""
        from safetensors.torch import save_file

        tensors = {f"{name}.{i}": t.detach().cpu().contiguous()
                   for i, (m, p) in enumerate(zip(self.mean, self.proj)) for name, t in (("mean", m), ("proj", p))}
        meta = {"k": str(self.k), "scale": json.dumps(self.scale), "teacher": self.teacher_id,
                "layers": json.dumps(self.layers)}
        atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))
        return Path(path)

    def load(self, path: str | Path) -> "FeatureTargets":
        """Read a basis saved by save(); it must be for the same teacher, layers and K."""
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        have = (meta.get("teacher"), json.loads(meta.get("layers", "null")), int(meta.get("k", -1)))
        if have != (self.teacher_id, self.layers, self.k):
            raise ValueError(f"{path} holds a feature basis for teacher {have[0]}, layers {have[1]}, K {have[2]}; "
                             f"this run needs teacher {self.teacher_id}, layers {self.layers}, K {self.k}")
        dev = next(self.net.parameters()).device
        self.mean = [tensors[f"mean.{i}"].to(dev) for i in range(len(self.layers))]
        self.proj = [tensors[f"proj.{i}"].to(dev) for i in range(len(self.layers))]
        self.scale = [float(s) for s in json.loads(meta["scale"])]
        return self


def open_basis(targets: FeatureTargets, run: Path, inputs: np.ndarray, pool: np.ndarray, seed: int,
               device: torch.device, init_run: str = "") -> FeatureTargets:
    """The run's basis: read from RUN_DIR (a resume) or an --init run folder, else fitted on FIT_SAMPLES of `pool`
    (training sample indices into the store's `inputs`: its latents, or its images for an encoder) and saved to
    RUN_DIR."""
    path = run / FEATURES_NAME
    if path.is_file():
        return targets.load(path)
    if init_run:
        src = Path(init_run) / FEATURES_NAME
        if not src.is_file():
            raise ValueError(f"--init {init_run}: a staged part trained toward the teacher's features continues "
                             f"only from a run folder holding its {FEATURES_NAME} (its stages read that basis)")
        targets.load(src)
        atomic_write(path, lambda tmp: shutil.copyfile(src, tmp))  # the very basis the --init stages learned
        return targets
    idx = np.sort(np.random.default_rng(seed).choice(pool, min(FIT_SAMPLES, len(pool)), replace=False))
    targets.fit(torch.from_numpy(np.asarray(inputs[idx], np.float32)).to(device), seed)
    targets.save(path)
    return targets
