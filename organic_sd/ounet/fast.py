"""The O-UNet's inference path: the same function as `features` + the OLA stack, without the per-pixel rows.

Most input columns of an O-UNet row are the same for every pixel of an image (timestep
features, global context, cond) or are the window times a number that depends only on t
(the modulated and gained windows). So the first layer (and the readout's input part)
splits into
    a convolution of x_t whose kernel, for one t, folds the window, modulated and gained
    weights together                                                       (O, C, k, k)
    a per-image bias from the image-wide columns                           (B, O)
    a fixed per-pixel bias from the position columns                       (O, H, W)
and per pixel only k * k * C multiply-adds per unit remain, instead of in_dim. Training
keeps the explicit rows (`features`): they are what the search scores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from organic_sd.ola.module import OLAModule
from organic_sd.ounet.features import GAIN_FLOOR, image_inputs


def _columns(cfg) -> dict[str, slice]:
    """Where each input group sits in a row of `features` (same order as there)."""
    C = cfg.sample_shape[0]
    k, g, m, n = cfg.window, cfg.grid, cfg.modulate, cfg.gain
    sizes = [("win", C * k * k), ("time", 2 + 2 * cfg.freqs), ("glob", C * g * g), ("pos", 2)]
    if m:
        sizes += [("inner_s", C * m * m), ("glob_s", C * g * g), ("inner_n", C * m * m), ("glob_n", C * g * g)]
    if n:
        sizes += [("gain", C * n * n)]
    if cfg.coarse:
        sizes += [("coarse", 9 * C), ("coarse_s", 9 * C), ("coarse_n", 9 * C)]
    if cfg.stage_grid:
        w2 = C * cfg.stage_window ** 2
        sizes += [("stage", w2), ("stage_s", w2), ("stage_n", w2)]
    sizes += [("cond", cfg.cond_dim)]
    out, i = {}, 0
    for name, size in sizes:
        out[name] = slice(i, i + size)
        i += size
    assert i == cfg.in_dim, (i, cfg.in_dim)
    return out


def _inner_to_window(w: torch.Tensor, C: int, side: int, k: int) -> torch.Tensor:
    """(O, C side side) weights of an inner window -> (O, C, k, k), zero outside the centre."""
    cut = (k - side) // 2
    out = w.new_zeros(w.shape[0], C, k, k)
    out[:, :, cut:cut + side, cut:cut + side] = w.reshape(-1, C, side, side)
    return out


def _pad_to(kern: torch.Tensor, side: int) -> torch.Tensor:
    """(O, C, s, s) kernel -> (O, C, side, side), zero around it (side >= s, both odd)."""
    cut = (side - kern.shape[-1]) // 2
    return F.pad(kern, (cut, cut, cut, cut))


def _first_layer(cfg, w: torch.Tensor, b: torch.Tensor, x_t, ab, image_cols, glob, pos, stage=None) -> torch.Tensor:
    """(O, in) weights on feature rows -> (B, O, H, W) pre-activations, computed as a convolution."""

    C, H, W = cfg.sample_shape
    k, col = cfg.window, _columns(cfg)
    base = w[:, col["win"]].reshape(-1, C, k, k)  # (O, C, k, k)
    bias = image_cols @ torch.cat([w[:, col["time"]], w[:, col["glob"]], w[:, col["cond"]]], 1).T + b  # (B, O)
    if cfg.modulate:
        bias = bias + ab.sqrt()[:, None] * (glob @ w[:, col["glob_s"]].T) \
            + (1 - ab).sqrt()[:, None] * (glob @ w[:, col["glob_n"]].T)
    # The upsampled coarse prediction's window is a second input channel of the same convolution (its kernel
    # zero-padded to the common side), not a convolution of its own added after: on a CPU the adds of these
    # (B, O, H, W) maps cost as much as the convolutions (bench/ounet_speed.py).
    side = max(k, cfg.stage_window) if cfg.stage_grid else k
    inp = torch.cat([x_t, stage], 1) if cfg.stage_grid else x_t  # (B, C or 2C, H, W)
    levels = ab.unique()
    out = None if len(levels) == 1 else torch.empty(x_t.shape[0], w.shape[0], H, W, dtype=x_t.dtype,
                                                     device=x_t.device)
    for a in levels:  # one kernel per noise level (a DDIM step has one)
        kern = base
        if cfg.modulate:
            kern = kern + _inner_to_window(a.sqrt() * w[:, col["inner_s"]] + (1 - a).sqrt() * w[:, col["inner_n"]],
                                           C, cfg.modulate, k)
        if cfg.gain:
            kern = kern + _inner_to_window(w[:, col["gain"]] / (1 - a + GAIN_FLOOR ** 2).sqrt(), C, cfg.gain, k)
        kern = _pad_to(kern, side)
        if cfg.stage_grid:
            sk = lambda name: w[:, col[name]].reshape(-1, C, cfg.stage_window, cfg.stage_window)  # noqa: E731
            kern = torch.cat([kern, _pad_to(sk("stage") + a.sqrt() * sk("stage_s") + (1 - a).sqrt() * sk("stage_n"),
                                            side)], 1)  # (O, 2C, side, side)
        if out is None:
            out = F.conv2d(inp, kern, padding=side // 2)  # (B, O, H, W)
        else:
            sel = ab == a
            out[sel] = F.conv2d(inp[sel], kern, padding=side // 2)
    if cfg.coarse:
        # the coarse map is constant on each s x s cell and the kernel steps by s, so its convolution is
        # one on the pooled grid, repeated over each cell; the per-image bias rides along on the small grid
        c, ck = cfg.coarse, lambda name: w[:, col[name]].reshape(-1, C, 3, 3)
        pooled = F.avg_pool2d(x_t, c)  # (B, C, H/s, W/s)
        small = pooled.new_empty(pooled.shape[0], w.shape[0], *pooled.shape[2:])  # (B, O, H/s, W/s)
        for a in levels:
            sel = ab == a
            small[sel] = F.conv2d(pooled[sel], ck("coarse") + a.sqrt() * ck("coarse_s") + (1 - a).sqrt() * ck("coarse_n"),
                                  padding=1)
        small.add_(bias[:, :, None, None])
        B, n_out = small.shape[:2]
        # widen each cell to its s pixels along a row first: a broadcast whose innermost run is s = 7 values
        # made this add cost 2.5x the one below (bench/ounet_speed.py); same sums, same order
        rows = small.repeat_interleave(c, 3)  # (B, O, H/s, W)
        out.view(B, n_out, H // c, c, W).add_(rows[:, :, :, None, :])
    else:
        out.add_(bias[:, :, None, None])
    # in place: these maps are the largest tensors of the whole step
    return out.add_((pos @ w[:, col["pos"]].T).T.reshape(1, -1, H, W))


def fast_eps(u, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None,
             stage: torch.Tensor | None = None, module: OLAModule | None = None) -> torch.Tensor:
    """(B, C, H, W) x_t, (B,) t, cond (B, cond_dim) or None, the upsampled coarse map or None -> (B, C, H, W):
    module(features(...)), as convolutions; module: u's stack (default) or another on the same rows (u.low)."""
    cfg, m = u.config, (u.module if module is None else module)
    if not isinstance(m, OLAModule):
        raise TypeError(f"the fast path needs an OLAModule stack, not {type(m).__name__}")
    C, H, W = cfg.sample_shape
    B = x_t.shape[0]
    ab, tf, glob, pos = image_inputs(cfg, u._schedule, x_t, t)  # the same numbers `features` uses
    parts = [tf, glob] + ([cond.to(x_t.device, torch.float32).reshape(B, -1)] if cfg.cond_dim else [])
    image_cols = torch.cat(parts, 1)  # (B, time + glob + cond)

    n_in = cfg.in_dim
    layers = list(m.hidden)
    ro_w, ro_b = m.readout.weight, m.readout.bias  # (C, in + sum hidden), (C,)
    # the first hidden layer and the readout's input part read the same rows: one convolution for both.
    # tanh(z) = 2 sigmoid(2z) - 1 exactly, and the CPU's sigmoid is ~3x faster than its tanh: the first
    # layer's rows are doubled here (z -> 2z inside the convolution) and the readout takes 2 W sigmoid - W 1
    first_w = torch.cat([2 * layers[0].weight, ro_w[:, :n_in]]) if layers else ro_w[:, :n_in]
    first_b = torch.cat([2 * layers[0].bias, torch.zeros_like(ro_b)]) if layers else torch.zeros_like(ro_b)
    pre = _first_layer(cfg, first_w.float(), first_b.float(), x_t, ab, image_cols, glob, pos, stage)  # (B, O, H, W)
    n_h = layers[0].out_features if layers else 0
    y = pre[:, n_h:] + ro_b[None, :, None, None]  # (B, C, H, W): readout so far
    start = n_in
    sig = None
    for layer in layers:
        if sig is not None:  # deeper layers read the previous one's tanh, 2 sig - 1, as a 1x1 convolution
            z = torch.matmul(4 * layer.weight, sig.flatten(2)) + 2 * (layer.bias - layer.weight.sum(1))[:, None]
            sig = torch.sigmoid(z).view(sig.shape[0], -1, *sig.shape[2:])
        else:
            sig = torch.sigmoid(pre[:, :n_h])
        wo = ro_w[:, start:start + sig.shape[1]]  # (C, width)
        # (C, width) @ (B, width, HW) reads the map where it lies; an einsum copied it to a matmul layout first
        y = y + (torch.matmul(2 * wo, sig.flatten(2)) - wo.sum(1)[:, None]).view_as(y)
        start += sig.shape[1]
    return m.config.out_scale * torch.tanh(y)
