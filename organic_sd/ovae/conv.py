"""A patch-mode O-Encoder or O-Decoder rewritten as plain convolutions (pad, conv, tanh, pixel shuffle).

The same numbers as `Part`, in ops every runtime has: the window of a patch part is a
convolution's receptive field (unfold's channel-major, row, column order is Conv2d's weight
layout), later hidden layers and the readout's hidden inputs are 1x1 convolutions, and the
decoder's (3, f, f) blocks in (c, a, b) order are exactly what PixelShuffle(f) unpacks. So the
graph has no reshape tied to the input size: ONNX export gets dynamic height and width for free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from organic_sd.ovae.model import Part


class ConvPart(nn.Module):
    """`Part` (patch mode) as convolutions: encoder (B, 3, H, W) -> (B, C, H/f, W/f); decoder the reverse."""

    def __init__(self, part: Part, clamp: bool | None = None):
        super().__init__()
        c = part.config
        if c.mode != "patch":
            raise ValueError(f"only patch-mode parts fold into convolutions, got a {c.mode}-mode {c.kind}")
        m = part.module
        self.kind, self.f, self.pad_mode = c.kind, c.downscale, c.pad
        self.out_scale = float(m.config.out_scale)
        # a decoder's images are clamped by OVAE.decode; keep that here so the graph matches it
        self.clamp = c.kind == "decoder" if clamp is None else clamp
        if c.kind == "decoder":
            k, stride, cin = c.window, 1, c.latent_channels
            self.pad = (k - 1) // 2
        else:
            k, stride, cin = c.window, c.downscale, 3
            self.pad = (c.window - c.downscale) // 2
        dev, dt = m.readout.weight.device, m.readout.weight.dtype
        widths = (m.in_dim, *m.config.hidden)
        self.hidden = nn.ModuleList()
        for i, layer in enumerate(m.hidden):  # the first layer sees the window, later ones the previous layer
            first = i == 0
            conv = nn.Conv2d(cin if first else widths[i], widths[i + 1], k if first else 1, stride if first else 1)
            conv.weight.data = layer.weight.data.reshape(conv.weight.shape).clone()
            conv.bias.data = layer.bias.data.clone()
            self.hidden.append(conv)
        W = m.readout.weight.data  # (out, in + sum(hidden)): the window's columns first, then each layer's
        self.read_x = nn.Conv2d(cin, m.out_dim, k, stride)
        self.read_x.weight.data = W[:, :m.in_dim].reshape(self.read_x.weight.shape).clone()
        self.read_x.bias.data = m.readout.bias.data.clone()
        self.read_h = nn.ModuleList()
        start = m.in_dim
        for h in m.config.hidden:
            conv = nn.Conv2d(h, m.out_dim, 1, bias=False)
            conv.weight.data = W[:, start:start + h].reshape(conv.weight.shape).clone()
            self.read_h.append(conv)
            start += h
        self.to(dev, dt).requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> latents (encoder) or latents -> images (decoder), as the wrapped `Part` computes them."""
        if self.pad:
            x = F.pad(x, (self.pad,) * 4, mode=self.pad_mode)
        y = self.read_x(x)
        h = x
        for layer, read in zip(self.hidden, self.read_h):
            h = torch.tanh(layer(h))
            y = y + read(h)
        y = self.out_scale * torch.tanh(y)
        if self.kind == "decoder":
            y = F.pixel_shuffle(y, self.f)  # (B, 3*f*f, h, w) -> (B, 3, h*f, w*f), the order fold_blocks uses
            if self.clamp:
                y = y.clamp(-1.0, 1.0)
        return y
