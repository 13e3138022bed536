"""The clean stage: one more per-pixel map after the low-noise stack, reading a k x k window of its x0.

The low-noise stack draws each pixel of x0 from a 7x7 window of x_t and the coarse map, so an isolated bright
pixel or a gap in a stroke looks, from inside that window, like any other; its errors are what a person sees
as speckle and broken strokes. The clean stage reads the stack's x0 over a wider window and redraws it:

    rows   the k x k window of the low stack's x0 (clamped to its bound, padded with the background),
           sqrt(ab), sqrt(1 - ab) and the pixel's x_t                                   (B, HW, C k k + 2 + C)
    x0     s * tanh(W_o [rows, h] + b_o), h = tanh(W rows + b)                          (B, C, H, W)

It runs only where the low stack does (t < low_split), is evolved on the frozen O-UNet by
ounet/train_clean.py, and costs one small matrix product per low-noise step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from organic_sd.ounet.targets import X0_HEADROOM


def clean_in_dim(cfg) -> int:
    """Columns of a clean-stage row: the x0 window of every channel, two noise levels, the pixel's x_t."""
    C, k = cfg.sample_shape[0], cfg.clean_window
    return C * k * k + 2 + C


def x0_bound(cfg) -> float:
    """The largest magnitude an x0 map draws (its tanh scale): just past the pixel range."""
    return X0_HEADROOM * max(abs(v) for v in cfg.pixel_range)


def clean_rows(cfg, schedule: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x_t, (B,) steps, (B, C, H, W) the low stack's x0 -> (B, HW, clean_in_dim) rows."""
    B, C, H, W = x_t.shape
    k = cfg.clean_window
    bound = x0_bound(cfg)
    # outside the image is background, not zero (zero is mid-grey in a [-1, 1] range)
    padded = F.pad(x0.clamp(-bound, bound), (k // 2,) * 4, value=cfg.pixel_range[0])
    win = F.unfold(padded, k).transpose(1, 2)  # (B, HW, C k k)
    ab = schedule.to(x_t.device)[t.to(x_t.device)].float().view(B, 1, 1)
    levels = torch.cat([ab.sqrt(), (1 - ab).sqrt()], 2).expand(B, H * W, 2)  # (B, HW, 2)
    return torch.cat([win, levels, x_t.flatten(2).transpose(1, 2)], 2)


def clean_x0(cfg, module, schedule: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The clean stage on the low stack's x0: (B, C, H, W) -> (B, C, H, W) redrawn x0.

    The same function as module(clean_rows(...)) (tests/test_ounet_clean.py checks it), computed as convolutions:
    every map that reads the rows (the first hidden layer and the readout's row columns) is one k x k convolution
    of the padded x0, a per-sample bias from the noise levels and a 1x1 convolution of x_t; deeper layers and the
    readout's hidden columns are 1x1 convolutions. Rows would be 25x the x0 map's size.
    """
    B, C, H, W = x_t.shape
    k, Ckk, in_dim = cfg.clean_window, C * cfg.clean_window ** 2, clean_in_dim(cfg)
    bound = x0_bound(cfg)
    padded = F.pad(x0.clamp(-bound, bound), (k // 2,) * 4, value=cfg.pixel_range[0])  # (B, C, H+k-1, W+k-1)
    ab = schedule.to(x_t.device)[t.to(x_t.device)].float()[:, None]
    levels = torch.cat([ab.sqrt(), (1 - ab).sqrt()], 1)  # (B, 2)
    layers, readout = list(module.hidden), module.readout
    w = torch.cat([*(layer.weight for layer in layers[:1]), readout.weight[:, :in_dim]])  # (H1 + C, in)
    b = torch.cat([*(layer.bias for layer in layers[:1]), readout.bias])  # (H1 + C,)
    O = w.shape[0]
    pre = F.conv2d(padded, w[:, :Ckk].reshape(O, C, k, k))  # (B, O, H, W)
    pre += (levels @ w[:, Ckk:Ckk + 2].T + b)[:, :, None, None]
    for c in range(C):  # the pixel's own x_t: a multiply-add per channel is cheaper than a 1x1 convolution
        pre.addcmul_(w[None, :, Ckk + 2 + c, None, None], x_t[:, c:c + 1])
    n1 = O - C
    pre = pre.flatten(2)  # (B, O, HW): the per-pixel maps below are matrix products over channels
    out, col, h = pre[:, n1:], in_dim, None
    for i, layer in enumerate(layers):
        wo = readout.weight[:, col:col + layer.out_features]  # (C, units): the readout's columns of this layer
        col += layer.out_features
        if i == 0:  # tanh(z) = 2 sigmoid(2z) - 1: sigmoid is the cheaper kernel on the CPU (as in ounet/fast.py)
            s = torch.sigmoid(2 * pre[:, :n1])  # (B, units, HW)
            out = out + (2 * wo) @ s - wo.sum(1)[:, None]
            h = 2 * s - 1 if len(layers) > 1 else None
        else:
            h = torch.tanh(layer.weight @ h + layer.bias[:, None])  # (B, units, HW)
            out = out + wo @ h
    return (module.config.out_scale * out.tanh_()).reshape(B, C, H, W)
