"""Fitness shaping shared by the strategies."""

from __future__ import annotations

import math

import torch


def sanitize(loss: torch.Tensor) -> torch.Tensor:
    """NaN losses become +inf, so a broken candidate always ranks last."""
    return torch.nan_to_num(loss, nan=math.inf)


def nes_utilities(loss: torch.Tensor) -> torch.Tensor:
    """Rank-based NES utilities per row: loss (P, R) -> weights (P, R), best gets most, summing to 0."""
    P = loss.shape[0]
    ranks = sanitize(loss).argsort(dim=0).argsort(dim=0)  # 0 = lowest loss
    raw = torch.clamp(math.log(P / 2 + 1) - torch.log(ranks.float() + 1), min=0)
    return raw / raw.sum(dim=0, keepdim=True) - 1.0 / P
