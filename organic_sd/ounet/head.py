"""The noise-level head: a per-t-bucket linear correction of an O-UNet's eps, evolved on its residual.

    rows     the k x k window of x_t and a 1, placed in the block of t's bucket (K buckets over the
             schedule), zeros elsewhere                                        (N, K * (C * k * k + 1))
    eps      stack(x_t, t) + s * tanh(W rows + b)

Where the stack's shared hidden units leave a residual that is linear in the window but different
at each noise level (high t, where one linear map per timestep already does well), one linear map
per bucket takes it (ounet/train_head.py evolves them). At inference the bucket's map is one more
kernel of the convolution path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bucket_of(t: torch.Tensor, buckets: int, num_steps: int) -> torch.Tensor:
    """(B,) integer steps -> (B,) bucket index in 0..buckets-1, equal shares of the schedule."""
    return (t.long() * buckets // num_steps).clamp(0, buckets - 1)


def head_rows(cfg, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x_t, (B,) t -> (B, HW, K (C k k + 1)): the window and a 1 in its bucket's block."""
    B, C, H, W = x_t.shape
    k, K = cfg.window, cfg.head_buckets
    win = F.unfold(x_t, k, padding=k // 2).transpose(1, 2)  # (B, HW, C k k), zero padded like `features`
    win = torch.cat([win, win.new_ones(B, H * W, 1)], 2)  # (B, HW, C k k + 1)
    out = win.new_zeros(B, H * W, K, C * k * k + 1)
    out[torch.arange(B, device=x_t.device), :, bucket_of(t, K, cfg.num_steps).to(x_t.device)] = win
    return out.flatten(2)


def head_conv(u, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H, W): the head's output computed as one convolution per bucket present."""
    cfg, head = u.config, u.head
    C, k = cfg.sample_shape[0], cfg.window
    b = bucket_of(t, cfg.head_buckets, cfg.num_steps).to(x_t.device)
    w = head.readout.weight.reshape(C, cfg.head_buckets, C * k * k + 1)  # (C_out, K, C k k + 1)
    pre = torch.empty_like(x_t)
    for j in b.unique():
        sel = b == j
        kern = w[:, j, :-1].reshape(C, C, k, k)
        pre[sel] = F.conv2d(x_t[sel], kern, w[:, j, -1], padding=k // 2)
    return head.config.out_scale * torch.tanh(pre + head.readout.bias[None, :, None, None])
