"""Stages: maps of OLA modules applied per position, coarse to fine (the staged O-Decoder's machinery).

A stage reads a k x k window of the previous stage's map (plus, optionally, a ke x ke window of an extra map
at the same resolution, e.g. the stack's input repeated up to it, and a kc x kc window of the previous stage's
hidden units repeated up to it, the carry) and writes C_out * r * r values per position, which pixel-shuffle into
an r-times larger map:

    map (B, C_in, h, w) [+ extra (B, C_e, h, w)] [+ carry (B, C_c, h, w)]
        -> rows (B*h*w, C_in*k*k [+ C_e*ke*ke] [+ C_c*kc*kc]) -> OLA module -> (B*h*w, C_out*r*r)
        -> (B, C_out, h*r, w*r)

A stage may instead read its map pixel-unshuffled by d (`down`, up 1): its position is then a d x d cell of the
map, and the stack goes fine to coarse (the staged O-Encoder: pixels -> 1/2 -> 1/4 -> latent):

    map (B, C_in, h, w) -> unshuffled (B, C_in*d*d, h/d, w/d) -> rows (B*h*w/d^2, C_in*d*d*k*k) -> (B, C_out, h/d, w/d)

The carry is why a greedy stack can pass more than pixels down: a stage fitted toward RGB at its resolution
keeps, in its hidden units, nonlinear features of its whole input window (for stage 1, of the latent), which
the next stage may read beside the RGB (the feature channels a gradient-trained decoder passes between stages).

Two paths give the same numbers. `rows` + the module is what training fits (ola.fit on rows); `fast`
folds the module into convolutions: unfold's channel-major, row, column order is Conv2d's weight layout, so
the first hidden layer and the readout's input columns are k x k convolutions of the padded map, later
hidden layers and the readout's hidden columns are 1x1 convolutions, and PixelShuffle(r) unpacks the
(c, a, b) blocks. A Stack runs stages in turn, each stage's extra being the stack's input repeated up to
that stage's resolution, and may end in a global shift (global_shift.py: per image and output channel, one number
predicted from global statistics of the stack's input and output). Files: safetensors with the stages' configs (and
the shift's) as JSON in the metadata.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from organic_sd.files import WEIGHTS_NAME, atomic_write, read_safetensors
from organic_sd.global_shift import GlobalShift
from organic_sd.ola.module import OLAConfig, OLAModule, load_weights

FORMAT = "organic_sd.stages/1"
PAD_MODES = ("replicate", "reflect", "zeros")
MAX_ROWS = 65536  # rows per module call on the row path, so a big map never builds one giant window matrix


@dataclass
class StageConfig:
    """One stage's shape: C_in x k x k window (+ C_e x ke x ke extra window) -> C_out x r x r block; with down d,
    the window is of the map pixel-unshuffled by d (C_in*d*d channels) and the output 1/d of the input's size."""

    in_channels: int
    out_channels: int
    window: int = 3  # k, odd: the window is centred on the position
    up: int = 2  # r: each position writes an r x r block
    extra_channels: int = 0  # C_e: channels of the extra map (0: none)
    extra_window: int = 1  # ke, odd
    pad: str = "replicate"
    carry_channels: int = 0  # C_c: hidden units of the previous stage read here (0: none)
    carry_window: int = 1  # kc, odd
    down: int = 1  # d: the input map is pixel-unshuffled by d first (a fine-to-coarse stage; then up is 1)

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "window", "up", "extra_window", "carry_window", "down"):
            if getattr(self, name) < 1:
                raise ValueError(f"stage {name} must be >= 1, got {getattr(self, name)}")
        if self.extra_channels < 0 or self.carry_channels < 0:
            raise ValueError(f"stage extra_channels and carry_channels must be >= 0, got {self.extra_channels}, "
                             f"{self.carry_channels}")
        if self.window % 2 == 0 or self.extra_window % 2 == 0 or self.carry_window % 2 == 0:
            raise ValueError(f"stage windows must be odd, got window {self.window}, extra_window {self.extra_window}, "
                             f"carry_window {self.carry_window}")
        if self.down > 1 and (self.up > 1 or self.extra_channels or self.carry_channels):
            raise ValueError(f"a stage that reads its map unshuffled (down {self.down}) writes at that resolution: "
                             f"up must be 1 and it takes no extra or carry map, got up {self.up}, extra_channels "
                             f"{self.extra_channels}, carry_channels {self.carry_channels}")
        if self.pad not in PAD_MODES:
            raise ValueError(f"stage pad must be one of {PAD_MODES}, got {self.pad!r}")

    def io_dims(self) -> tuple[int, int]:
        """(in_dim, out_dim) of the OLA module this stage wraps."""
        return (self.in_channels * self.down ** 2 * self.window ** 2 + self.extra_channels * self.extra_window ** 2
                + self.carry_channels * self.carry_window ** 2, self.out_channels * self.up ** 2)


def padded(x: torch.Tensor, k: int, pad: str) -> torch.Tensor:
    """(B, C, h, w) padded by (k - 1) / 2 on every side, so a k x k window fits around each position."""
    r = (k - 1) // 2
    if r == 0:
        return x
    if pad == "zeros":
        return F.pad(x, (r,) * 4)
    if pad == "reflect" and min(x.shape[-2:]) <= r:
        pad = "replicate"  # reflect needs more cells than the radius; replicate works on any size
    return F.pad(x, (r,) * 4, mode=pad)


def windows(x: torch.Tensor, k: int, pad: str = "replicate") -> torch.Tensor:
    """(B, C, h, w) -> the k x k window around every position (B*h*w, C*k*k), channel-major then row, column."""
    B, C, h, w = x.shape
    cols = F.unfold(padded(x, k, pad), k)  # (B, C*k*k, h*w)
    return cols.transpose(1, 2).reshape(B * h * w, C * k * k)


def unshuffled(c: StageConfig, x: torch.Tensor) -> torch.Tensor:
    """The map a stage windows: x (B, C, h, w) itself, or with down d > 1 (B, C*d*d, h/d, w/d)."""
    return F.pixel_unshuffle(x, c.down) if c.down > 1 else x


def stage_rows(c: StageConfig, x: torch.Tensor, extra: torch.Tensor | None = None,
               carry: torch.Tensor | None = None) -> torch.Tensor:
    """A stage's input rows (B*h*w, in_dim): the map's k x k windows (of the map unshuffled, with down), then the
    extra's ke x ke windows, then the carry's kc x kc windows."""
    parts = [windows(unshuffled(c, x), c.window, c.pad)]
    if c.extra_channels:
        parts.append(windows(extra, c.extra_window, c.pad))
    if c.carry_channels:
        parts.append(windows(carry, c.carry_window, c.pad))
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def to_blocks(y: torch.Tensor, r: int) -> torch.Tensor:
    """(B, C, h*r, w*r) -> rows (B*h*w, C*r*r) in PixelShuffle's (c, a, b) order: a stage's targets."""
    B = y.shape[0]
    blocks = F.pixel_unshuffle(y, r)  # (B, C*r*r, h, w)
    return blocks.permute(0, 2, 3, 1).reshape(B * blocks.shape[2] * blocks.shape[3], blocks.shape[1])


def from_blocks(rows: torch.Tensor, B: int, h: int, w: int, r: int) -> torch.Tensor:
    """rows (B*h*w, C*r*r) -> (B, C, h*r, w*r): the inverse of to_blocks."""
    grid = rows.reshape(B, h, w, -1).permute(0, 3, 1, 2)  # (B, C*r*r, h, w)
    return F.pixel_shuffle(grid, r)


def repeat_up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, H, W) with every cell repeated (H, W multiples of h, w): the extra map of a stage."""
    H, W = size
    h, w = x.shape[-2:]
    if (h, w) == (H, W):
        return x
    if H % h or W % w:
        raise ValueError(f"cannot repeat a {h}x{w} map up to {H}x{W}: not a whole multiple")
    # nearest resizing by a whole factor repeats each cell exactly, and exports to ONNX as one Resize
    return F.interpolate(x, size=(H, W), mode="nearest")


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """tanh of a temporary, in place, as 2 sigmoid(2x) - 1: on the CPU torch's sigmoid takes a third of tanh's time
    (3.4 against 10.2 ms for 48 x 256 x 256 values, one thread; 1.8e-7 apart at most); torch.tanh under ONNX export."""
    if torch.onnx.is_in_onnx_export():
        return torch.tanh(x)
    return torch.sigmoid_(x.mul_(2)).mul_(2).sub_(1)


def add_repeated_(y: torch.Tensor, part: torch.Tensor) -> torch.Tensor:
    """y (B, O, H, W) += part (B, O, h, w) repeated up to H x W (sides whole multiples), in place: the repeated map
    is never built (under ONNX export it is, as one Resize)."""
    B, O, H, W = y.shape
    h, w = part.shape[-2:]
    if (h, w) == (H, W):
        return y.add_(part)
    if torch.onnx.is_in_onnx_export():
        return y + repeat_up(part, (H, W))
    if y.is_contiguous():
        y.view(B, O, h, H // h, w, W // w).add_(part[:, :, :, None, :, None])
    elif y.is_contiguous(memory_format=torch.channels_last):  # (B, H, W, O) in memory
        y.permute(0, 2, 3, 1).view(B, h, H // h, w, W // w, O).add_(part.permute(0, 2, 3, 1)[:, :, None, :, None])
    else:
        return y + repeat_up(part, (H, W))
    return y


class Stage(nn.Module):
    """One stage around one OLA module: map (B, C_in, h, w) [+ extra (B, C_e, h, w)] -> (B, C_out, h*r, w*r).

    Extra and carry maps may also come coarser, with sides that divide h and w: they are read repeated up to h x w."""

    def __init__(self, config: StageConfig, module: OLAModule):
        super().__init__()
        want, have = config.io_dims(), (module.in_dim, module.out_dim)
        if want != have:
            raise ValueError(f"stage {config} needs a module {want[0]} -> {want[1]}, got {have[0]} -> {have[1]}")
        self.config, self.module = config, module

    @property
    def hidden_width(self) -> int:
        """How many hidden units a position has (all layers): the channels a next stage's carry reads."""
        return sum(self.module.config.hidden)

    def _check(self, x: torch.Tensor, extra: torch.Tensor | None, carry: torch.Tensor | None = None) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"stage input must have shape (B, {c.in_channels}, h, w), got {tuple(x.shape)}")
        if x.shape[2] % c.down or x.shape[3] % c.down:
            raise ValueError(f"this stage reads its map in {c.down}x{c.down} cells: its sides must be multiples of "
                             f"{c.down}, got {x.shape[2]}x{x.shape[3]}")
        for name, m, channels in (("extra", extra, c.extra_channels), ("carry", carry, c.carry_channels)):
            if channels and (m is None or m.ndim != 4 or m.shape[1] != channels or m.shape[0] != x.shape[0]
                             or 0 in m.shape[-2:] or x.shape[2] % m.shape[2] or x.shape[3] % m.shape[3]):
                got = None if m is None else tuple(m.shape)
                raise ValueError(f"stage {name} must have shape ({x.shape[0]}, {channels}, {x.shape[2]}, "
                                 f"{x.shape[3]}) or a map those sides are whole multiples of (repeated up to "
                                 f"them), got {got}")
            if not channels and m is not None:
                raise ValueError(f"this stage takes no {name} map, got one")

    def rows(self, x: torch.Tensor, extra: torch.Tensor | None = None,
             carry: torch.Tensor | None = None) -> torch.Tensor:
        """The module's input rows (B*h*w, in_dim): the map's k x k windows, then the extra's, then the carry's."""
        self._check(x, extra, carry)
        size = x.shape[-2:]
        extra, carry = (None if m is None else repeat_up(m, size) for m in (extra, carry))
        return stage_rows(self.config, x, extra, carry)

    def row_forward(self, x: torch.Tensor, extra: torch.Tensor | None = None, carry: torch.Tensor | None = None,
                    with_hidden: bool = False):
        """The reference path: rows -> module -> blocks (what training fits), in chunks of MAX_ROWS rows.
        `with_hidden`: also the hidden units per position (B, hidden_width, h, w), what a next stage carries."""
        B, _, h, w = x.shape
        h, w = h // self.config.down, w // self.config.down  # the positions the rows are of
        dt = self.module.readout.weight.dtype
        rows = self.rows(*(None if m is None else m.to(dt) for m in (x, extra, carry)))
        outs, hids = [], []
        for i in range(0, rows.shape[0], MAX_ROWS):
            feats = self.module.features(rows[i:i + MAX_ROWS])  # (n, in_dim + hidden_width)
            outs.append(self.module.config.out_scale * torch.tanh(self.module.readout(feats)))
            hids.append(feats[:, self.module.in_dim:])
        y = from_blocks(torch.cat(outs), B, h, w, self.config.up)
        if not with_hidden:
            return y
        return y, torch.cat(hids).reshape(B, h, w, -1).permute(0, 3, 1, 2)

    def fast(self, x: torch.Tensor, extra: torch.Tensor | None = None, carry: torch.Tensor | None = None,
             with_hidden: bool = False):
        """The same numbers as row_forward (to float rounding), as convolutions (no window matrix is ever built)."""
        self._check(x, extra, carry)
        c, m = self.config, self.module
        dt = m.readout.weight.dtype
        # each input map with its window side and channels, in the rows' column order
        size = (x.shape[2] // c.down, x.shape[3] // c.down)  # the positions (extra / carry exist only at down 1)
        maps = [(padded(unshuffled(c, x.to(dt)), c.window, c.pad), c.in_channels * c.down ** 2, c.window)]
        for side, C, k in ((extra, c.extra_channels, c.extra_window), (carry, c.carry_channels, c.carry_window)):
            if C:
                # a coarser map read through a 1x1 window is convolved where it is and its result repeated up
                # (the same numbers, 1/f^2 of the work); a wider window reads the repeated map's neighbours
                side = side.to(dt) if k == 1 else repeat_up(side.to(dt), size)
                maps.append((padded(side, k, c.pad), C, k))

        # channels-last maps: this CPU's convolutions ran 2.8x faster on them (3x3, 16 -> 48 channels, 256 x 256, one
        # thread); what they write stays channels-last through the stage (add_repeated_ and tanh_ keep the layout)
        maps = [(mp.contiguous(memory_format=torch.channels_last), C, k) for mp, C, k in maps]

        def windowed(W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            # W (O, in_dim): each map's columns in unfold order are a (O, C, k, k) kernel
            O, start, y = W.shape[0], 0, None
            for mp, C, k in maps:  # the first is the stage's own map, at the positions' size
                part = F.conv2d(mp, W[:, start:start + C * k * k].reshape(O, C, k, k), b if y is None else None)
                y = repeat_up(part, size) if y is None else add_repeated_(y, part)
                start += C * k * k
            return y  # (B, O, h, w)

        Wr = m.readout.weight  # (out, in_dim + sum(hidden)): the window's columns first, then each layer's
        y = windowed(Wr[:, :m.in_dim], m.readout.bias)
        h, start, hids = None, m.in_dim, []
        for i, layer in enumerate(m.hidden):
            if i == 0:
                h = tanh_(windowed(layer.weight, layer.bias))
            else:
                h = tanh_(F.conv2d(h, layer.weight[:, :, None, None], layer.bias))
            width = layer.weight.shape[0]
            y = add_repeated_(y, F.conv2d(h, Wr[:, start:start + width, None, None]))
            start += width
            hids.append(h)
        y = F.pixel_shuffle(tanh_(y).mul_(m.config.out_scale), c.up)  # (B, C_out, h*r, w*r)
        if not with_hidden:
            return y
        hidden = (hids[0] if len(hids) == 1 else torch.cat(hids, 1)) if hids else x.new_zeros(
            x.shape[0], 0, x.shape[2] // c.down, x.shape[3] // c.down)
        return y, hidden  # hidden (B, hidden_width, h, w)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None,
                carry: torch.Tensor | None = None) -> torch.Tensor:
        """map (B, C_in, h, w) [+ extra] [+ carry] -> (B, C_out, h*r, w*r), by the fast path."""
        return self.fast(x, extra, carry)

    def describe(self) -> dict:
        """JSON-able: the stage's config, its module's config and training summary."""
        return {"stage": asdict(self.config), "ola": asdict(self.module.config),
                "training": self.module.training_summary}


class Stack(nn.Module):
    """Stages in turn: input (B, C, h, w) -> (B, C_last, h*R, w*R), R the product of the stages' r.

    Stage i reads stage i-1's output (stage 0 the input); a stage with extra channels also reads the
    stack's input repeated up to its own input's resolution, one with carry channels stage i-1's hidden units
    repeated up likewise. A `shift` (GlobalShift) then moves each image's output channels by one number each."""

    def __init__(self, stages: list[Stage], shift: GlobalShift | None = None):
        super().__init__()
        if not stages:
            raise ValueError("a stack needs at least one stage")
        for i, (a, b) in enumerate(zip(stages[:-1], stages[1:])):
            if b.config.in_channels != a.config.out_channels:
                raise ValueError(f"stage {i + 2} reads {b.config.in_channels} channels but stage {i + 1} "
                                 f"writes {a.config.out_channels}")
        first = stages[0].config.in_channels
        for i, s in enumerate(stages):
            if s.config.extra_channels not in (0, first):
                raise ValueError(f"stage {i + 1}'s extra map is the stack's input ({first} channels), "
                                 f"got extra_channels {s.config.extra_channels}")
            carried = 0 if i == 0 else stages[i - 1].hidden_width
            if s.config.carry_channels not in (0, carried) or (i == 0 and s.config.carry_channels):
                raise ValueError(f"stage {i + 1}'s carry is the previous stage's hidden units ({carried}), got "
                                 f"carry_channels {s.config.carry_channels}")
        self.stages = nn.ModuleList(stages)
        if shift is not None and (shift.config.in_channels, shift.config.out_channels) != (
                first, stages[-1].config.out_channels):
            raise ValueError(f"the global shift reads {shift.config.in_channels} input and {shift.config.out_channels} "
                             f"output channels, the stages {first} and {stages[-1].config.out_channels}")
        self.shift = shift

    @property
    def in_channels(self) -> int:
        return self.stages[0].config.in_channels

    @property
    def out_channels(self) -> int:
        return self.stages[-1].config.out_channels

    @property
    def up(self) -> int:
        """R: how much larger the output is than the input, along each side (stages with down count as 1)."""
        return math.prod(s.config.up for s in self.stages)

    @property
    def down(self) -> int:
        """D: how much smaller the output is than the input, along each side (a fine-to-coarse stack)."""
        return math.prod(s.config.down for s in self.stages)

    def outputs(self, x: torch.Tensor, fast: bool = True) -> list[torch.Tensor]:
        """Every stage's output map, coarse to fine; `fast=False` takes the row (reference) path."""
        return self.run(x, fast)[0]

    def run(self, x: torch.Tensor, fast: bool = True) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(every stage's output map, the last stage's hidden units (B, hidden_width, h, w) at its input's
        resolution: what a stage appended after it would carry, repeated up to its own input)."""
        maps, cur, hidden = [], x, None
        for s in self.stages:
            # at their own resolution: the stage repeats them up to its map (the fast path after a 1x1 window)
            extra = x if s.config.extra_channels else None
            carry = hidden if s.config.carry_channels else None
            cur, hidden = (s.fast if fast else s.row_forward)(cur, extra, carry, with_hidden=True)
            maps.append(cur)
        maps[-1] = maps[-1].contiguous()  # the stack's output in the usual layout (the fast path's is channels-last)
        if self.shift is not None:
            maps[-1] = self.shift(x, maps[-1])
        return maps, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> the last stage's map (B, C_last, h*R, w*R)."""
        return self.outputs(x)[-1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def describe(self) -> list[dict]:
        """Per stage its describe(): what a file stores beside the weights (the shift's: shift.describe())."""
        return [s.describe() for s in self.stages]

    @classmethod
    def from_description(cls, described: list[dict], tensors: dict, where: str,
                         shift: dict | None = None) -> "Stack":
        """Rebuild a stack from describe()'s list (and its shift's describe()) and its state_dict's tensors; errors
        name `where`."""
        stages = []
        for i, d in enumerate(described):
            own = {n[len(f"stages.{i}.module."):]: t for n, t in tensors.items()
                   if n.startswith(f"stages.{i}.module.")}
            module = load_weights(OLAModule(OLAConfig(**d["ola"]), d.get("training", {})), own, f"{where}: stage {i + 1}")
            stages.append(Stage(StageConfig(**d["stage"]), module))
        if shift is not None:
            shift = GlobalShift.from_description(
                shift, {n[len("shift."):]: t for n, t in tensors.items() if n.startswith("shift.")}, where)
        extra = {n for n in tensors if not any(n.startswith(f"stages.{i}.") for i in range(len(described)))
                 and not (shift is not None and n.startswith("shift."))}
        if extra:
            raise ValueError(f"{where}: tensors of no stage: {sorted(extra)}")
        return cls(stages, shift)

    def save(self, path: str | os.PathLike) -> Path:
        """Write one .safetensors file (a folder gets model.safetensors inside), atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            path = path / WEIGHTS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": FORMAT, "stages": json.dumps(self.describe())}
        if self.shift is not None:
            meta["shift"] = json.dumps(self.shift.describe())
        atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
        return path


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> Stack:
    """Load a stack saved by Stack.save (file or folder)."""
    file, tensors, meta = read_safetensors(path, "stage stack")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file} holds format {meta.get('format')!r}, expected {FORMAT!r}: not a stage stack")
    try:
        described = json.loads(meta["stages"])
        shift = json.loads(meta["shift"]) if "shift" in meta else None
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{file}: stage stack metadata is damaged") from None
    return Stack.from_description(described, tensors, str(file), shift).to(device)
