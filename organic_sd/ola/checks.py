"""Input validation for OLA training and inference: clear errors, never deep torch ones."""

from __future__ import annotations

import numpy as np
import torch


def as_matrix(name: str, a, device: torch.device) -> torch.Tensor:
    """`a` as a finite float32 (N, D) tensor on `device`, or a ValueError naming `name`."""
    if isinstance(a, np.ndarray):
        a = torch.from_numpy(np.ascontiguousarray(a))
    if not isinstance(a, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(a).__name__}")
    if a.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got shape {tuple(a.shape)}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(a.shape)}")
    if not (a.is_floating_point() or a.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must hold numbers, got dtype {a.dtype}")
    a = a.detach().to(device=device, dtype=torch.float32)  # data on another device is moved, not refused
    bad = ~torch.isfinite(a)
    if bad.any():
        n_nan = int(torch.isnan(a).sum())
        n_inf = int(bad.sum()) - n_nan
        row = int(bad.any(dim=1).nonzero()[0])
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} inf values (first in row {row})")
    return a


def check_pair(x: torch.Tensor, y: torch.Tensor, xname: str = "x", yname: str = "y") -> None:
    """Raise a ValueError unless x and y have the same number of rows."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{xname} has {x.shape[0]} rows but {yname} has {y.shape[0]}: they must pair up sample by sample")


def check_input(x: torch.Tensor, in_dim: int, device: torch.device) -> None:
    """Raise a ValueError unless x fits a module with `in_dim` inputs on `device`."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"input must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != in_dim:
        raise ValueError(f"this module takes inputs of shape (..., {in_dim}), got shape {tuple(x.shape)}")
    if x.device.type != device.type or (device.index is not None and x.device != device):
        raise ValueError(f"input is on {x.device} but the module is on {device}: move one of them (x.to('{device}') or module.to('{x.device}'))")
