"""A global shift after a stack: per image and output channel one number added to the stack's output, predicted
from global statistics of the stack's input and output.

A stage sees a few cells around each position; the teacher's decoder sees far more, and part of what the stages
miss is a cast over the whole image (docs/BENCHMARKS.md, "A global colour shift: what the stages cannot see"):

    input z (B, C, h, w), output y (B, O, H, W)
        -> statistics (B, 4C + 3O): per input channel its mean, std, mean |horizontal| and |vertical difference|;
           per output channel its mean, std, mean |horizontal difference|; standardised by the training split's
        -> map (an OLA module, F -> O) -> y + shift (B, O, 1, 1)

A decoder that serves latents of two sources (the teacher's and an O-Encoder's) errs differently on each, and one map
fitted on both serves neither well; the statistics tell the sources apart (neighbour differences especially), so
with two maps a probe (an OLA module F -> 1) picks, by the sign of its output, which map shifts each image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from organic_sd.ola.module import OLAConfig, OLAModule


@dataclass
class ShiftConfig:
    """The stack's input and output channels, and how many maps (1, or 2 chosen between by a probe)."""

    in_channels: int
    out_channels: int
    maps: int = 1

    def __post_init__(self):
        if self.in_channels < 1 or self.out_channels < 1 or self.maps not in (1, 2):
            raise ValueError(f"a global shift needs channels >= 1 and 1 or 2 maps, got {self}")

    @property
    def n_stats(self) -> int:
        """F: statistics per image."""
        return 4 * self.in_channels + 3 * self.out_channels


def _spread(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Per image and channel the standard deviation (B, C) of x (B, C, h, w) about its mean (B, C)."""
    return (x - mean[:, :, None, None]).square().mean((2, 3)).sqrt()


def _step(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Per image and channel the mean |difference| (B, C) of neighbours along dim of x (B, C, h, w); 0 on a side of
    one cell, which has no neighbours."""
    n = x.shape[dim]
    if n < 2:
        return x.new_zeros(x.shape[:2])
    return (x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)).abs().mean((2, 3))


def global_stats(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Input z (B, C, h, w) and output y (B, O, H, W) -> (B, 4C + 3O) statistics, unstandardised."""
    zm, ym = z.mean((2, 3)), y.mean((2, 3))
    return torch.cat([zm, _spread(z, zm), _step(z, 3), _step(z, 2), ym, _spread(y, ym), _step(y, 3)], 1)


class GlobalShift(nn.Module):
    """(z, y) -> y + a per-image, per-channel shift; `maps` OLA modules F -> O, with two of them a `probe` F -> 1."""

    def __init__(self, config: ShiftConfig, maps: list[OLAModule], probe: OLAModule | None,
                 mean: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        F_, O = config.n_stats, config.out_channels
        if len(maps) != config.maps or any((m.in_dim, m.out_dim) != (F_, O) for m in maps):
            raise ValueError(f"a global shift {config} needs {config.maps} map(s) {F_} -> {O}, got "
                             f"{[(m.in_dim, m.out_dim) for m in maps]}")
        if (probe is None) != (config.maps == 1) or (probe is not None and (probe.in_dim, probe.out_dim) != (F_, 1)):
            raise ValueError(f"a global shift with {config.maps} map(s) needs "
                             + ("no probe" if config.maps == 1 else f"a probe {F_} -> 1"))
        if mean.shape != (F_,) or scale.shape != (F_,):
            raise ValueError(f"a global shift standardises {F_} statistics, got mean {tuple(mean.shape)}, "
                             f"scale {tuple(scale.shape)}")
        self.config = config
        self.maps = nn.ModuleList(maps)
        self.probe = probe
        self.register_buffer("mean", mean.float())  # (F,)
        self.register_buffer("scale", scale.float())  # (F,)
        self.training_summary: dict = {}

    def standardise(self, stats: torch.Tensor) -> torch.Tensor:
        """Statistics (B, F) as global_stats gives them -> the maps' and probe's input (B, F)."""
        return (stats.to(self.mean) - self.mean) / self.scale

    def features(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The maps' and probe's input (B, F) for the stack's input z and output y."""
        return self.standardise(global_stats(z.to(self.mean.dtype), y.to(self.mean.dtype)))

    def shifts_of(self, s: torch.Tensor) -> torch.Tensor:
        """Standardised statistics (B, F) -> each image's channel shifts (B, O)."""
        if self.probe is None:
            return self.maps[0](s)
        first = self.probe(s) > 0  # (B, 1): the source the first map was fitted on
        return torch.where(first, self.maps[0](s), self.maps[1](s))

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The stack's input z (B, C, h, w) and output y (B, O, H, W) -> y shifted (B, O, H, W)."""
        return y + self.shifts_of(self.features(z, y)).to(y.dtype)[:, :, None, None]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> dict:
        """JSON-able: the config, each module's config, the training summary."""
        return {"shift": asdict(self.config), "maps": [asdict(m.config) for m in self.maps],
                "probe": None if self.probe is None else asdict(self.probe.config), "training": self.training_summary}

    @classmethod
    def skeleton(cls, d: dict) -> "GlobalShift":
        """An untrained shift of describe()'s shape (zero mean, unit scale), for weights to be loaded into."""
        config = ShiftConfig(**d["shift"])
        maps = [OLAModule(OLAConfig(**c)) for c in d["maps"]]
        probe = None if d.get("probe") is None else OLAModule(OLAConfig(**d["probe"]))
        out = cls(config, maps, probe, torch.zeros(config.n_stats), torch.ones(config.n_stats))
        out.training_summary = dict(d.get("training", {}))
        return out

    @classmethod
    def from_description(cls, d: dict, tensors: dict, where: str) -> "GlobalShift":
        """Rebuild from describe()'s dict and its state_dict's tensors (names without the `shift.` prefix)."""
        out = cls.skeleton(d)
        expected = {k: tuple(v.shape) for k, v in out.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if expected != found:
            raise ValueError(f"{where}: global shift weights do not match its config; mismatched entries: "
                             f"{sorted(set(expected.items()) ^ set(found.items()))}")
        out.load_state_dict(tensors)
        return out
