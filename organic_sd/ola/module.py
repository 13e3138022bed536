"""The frozen OLA module: a plain torch.nn.Module, saved as safetensors + a JSON config.

Architecture (TAESD-style: the whole model in one short class):
    h_1 = tanh(W_1 x + b_1), h_l = tanh(W_l h_{l-1} + b_l)    hidden layers (may be none)
    y   = s * tanh(W_o [x, h_1, ..., h_L] + b_o)              readout, s = out_scale
The readout sees the inputs too, because hidden units are grown as corrections to a linear
readout (see cascade.py); a fit with `Refine(readout_inputs=False)` stores those columns as zeros
(the plain net). Loading needs only torch and safetensors.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from organic_sd.files import WEIGHTS_NAME, atomic_write, read_safetensors
from organic_sd.ola.checks import check_input

FORMAT = "organic_sd.ola/1"
CONFIG_NAME = "config.json"


@dataclass
class OLAConfig:
    """Everything needed to rebuild an OLA module's shape."""

    in_dim: int
    out_dim: int
    hidden: tuple[int, ...] = ()
    out_scale: float = 1.0
    format: str = FORMAT

    def __post_init__(self):
        self.hidden = tuple(int(h) for h in self.hidden)


class OLAModule(nn.Module):
    """An OLA stack frozen for inference: (..., in_dim) -> (..., out_dim)."""

    def __init__(self, config: OLAConfig, training: dict | None = None):
        super().__init__()
        self.config = config
        self.training_summary = dict(training or {})
        widths = (config.in_dim, *config.hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.readout = nn.Linear(config.in_dim + sum(config.hidden), config.out_dim)
        self.requires_grad_(False)
        self.eval()

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> what the readout sees, [x, h_1, ..., h_L] (..., in_dim + sum(hidden))."""
        check_input(x, self.config.in_dim, self.readout.weight.device)
        x = x.to(self.readout.weight.dtype)
        feats, h = [x], x
        for layer in self.hidden:
            h = torch.tanh(layer(h))
            feats.append(h)
        return torch.cat(feats, dim=-1) if len(feats) > 1 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        return self.config.out_scale * torch.tanh(self.readout(self.features(x)))

    def num_parameters(self) -> int:
        """Number of stored numbers (weights and biases)."""
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> str:
        """A short human-readable summary."""
        c = self.config
        arch = " -> ".join(str(w) for w in (c.in_dim, *c.hidden, c.out_dim))
        lines = [f"OLA module {arch} (tanh, out_scale={c.out_scale}), {self.num_parameters():,} parameters"]
        for k, v in self.training_summary.items():
            if not isinstance(v, (list, dict)):
                lines.append(f"  {k}: {v}")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> Path:
        """Save to a folder (model.safetensors + config.json) or to a single .safetensors file."""
        path = Path(path)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"config": json.dumps(asdict(self.config)), "training": json.dumps(self.training_summary)}
        if path.suffix == ".safetensors":
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
            return path
        path.mkdir(parents=True, exist_ok=True)
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata=meta))
        doc = {"config": asdict(self.config), "training": self.training_summary}
        atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2)))
        return path


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> OLAModule:
    """Load a module saved by `OLAModule.save` (folder or .safetensors file)."""
    file, tensors, meta = read_safetensors(path, "OLA module")
    try:
        cfg = json.loads(meta["config"])
        training = json.loads(meta.get("training", "{}"))
    except (KeyError, json.JSONDecodeError):
        other = meta.get("format", "")
        if other.startswith("organic_sd."):  # an O-VAE / O-UNet file or run: it wraps OLA modules, it is not one
            raise ValueError(f"{file} holds a {other!r} file, not a bare OLA module: load it with "
                             "organic_sd.OVAE.load or organic_sd.OUNet.load (an O-VAE run: "
                             "organic_sd.ovae.model.read_parts)") from None
        raise ValueError(f"{file} has no organic_sd OLA config in its metadata: not an OLA module of ours") from None
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{file} holds format {cfg.get('format')!r}, expected {FORMAT!r}: not an OLA module of ours")
    return load_weights(OLAModule(OLAConfig(**cfg), training), tensors, str(file)).to(device)


def load_weights(module: OLAModule, tensors: dict, where: str) -> OLAModule:
    """Copy `tensors` into `module` once every name and shape matches; else a ValueError naming `where`."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        diff = sorted(set(expected.items()) ^ set(found.items()))
        raise ValueError(f"{where}: weights do not match its config; mismatched entries: {diff}")
    module.load_state_dict(tensors)
    return module
