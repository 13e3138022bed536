"""What every teacher adapter shares: safe weight reading, device/dtype checks, ids."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Mapping

import torch

from organic_sd import devices

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


class TeacherError(ValueError):
    """A teacher spec, file or device that cannot be used; the message says why and what to do."""


def resolve_device(device: str | torch.device) -> torch.device:
    """organic_sd.devices.resolve_device, as a TeacherError, with a bare 'cuda' pinned to the current index."""
    try:
        dev = devices.resolve_device(device)
    except ValueError as e:
        raise TeacherError(str(e)) from None
    if dev.type == "cuda" and dev.index is None:  # so that `teacher.device == tensor.device` comparisons hold
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """None -> float32; accepts a torch floating dtype or a name such as 'fp16'."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise TeacherError(f"dtype={dtype} must be a floating point dtype")
        return dtype
    try:
        return _DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise TeacherError(f"dtype={dtype!r} is not one of {sorted(_DTYPES)}") from None


def dtype_suffix(dtype: torch.dtype) -> str:
    """Part of a teacher id: the same weights run in fp16 give other latents than in fp32."""
    return "" if dtype == torch.float32 else "+" + str(dtype).removeprefix("torch.")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors/.pth/.pt/.ckpt/.bin file, never running code stored in it.

    Pickle files are read with `torch.load(weights_only=True)`; one that needs any other
    global (a pickled module, a __reduce__ payload) is refused with a TeacherError.
    A Lightning-style {"state_dict": {...}} wrapper is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights {str(path)!r}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise TeacherError(f"{str(path)!r} is not a readable .safetensors file ({e})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            if "Unsupported global" in msg or "GLOBAL" in msg or "not an allowed global" in msg:
                first = next((ln.strip() for ln in msg.splitlines() if "global" in ln.lower()), msg)
                raise TeacherError(
                    f"refusing to load {str(path)!r}: it is not a plain tensor checkpoint and would need "
                    f"arbitrary unpickling, which can run code from the file ({first}). "
                    "Use a .safetensors file or a checkpoint saved with torch.save(model.state_dict())."
                ) from None
            raise TeacherError(f"{str(path)!r} is not a readable weights file ({msg.splitlines()[0]}); expected a "
                               "PyTorch checkpoint of tensors or a .safetensors file") from None
        except Exception as e:  # noqa: BLE001 -- a text or truncated file fails inside the unpickler in many ways
            # (KeyError: 101 for a text file): one line naming the file and what was expected, never a traceback
            why = (str(e).splitlines() or [""])[0] or type(e).__name__
            raise TeacherError(
                f"{str(path)!r} is not a readable weights file ({type(e).__name__}: {why}); expected a PyTorch "
                "checkpoint of tensors (torch.save(model.state_dict())) or a .safetensors file") from None
    while isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, Mapping) else {}
    if not tensors:
        raise TeacherError(f"{str(path)!r} holds no tensors (got {type(state).__name__}); it is not VAE weights")
    return tensors


def state_digest(state: Mapping[str, torch.Tensor], extra: str = "", n: int = 12) -> str:
    """Short sha256 over names, shapes and float32 values: the same weights give the same id
    whatever the file format or key layout they were read from."""
    h = hashlib.sha256(extra.encode())
    for name in sorted(state):
        v = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(v.shape)};".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()[:n]


def compare_state(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor]) -> list[str]:
    """Every key or shape difference between a module's state dict and loaded weights."""
    problems = [f"missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in got]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in got.items() if k not in expected]
    problems += [
        f"shape {k}: expected {tuple(v.shape)}, file has {tuple(got[k].shape)}"
        for k, v in expected.items()
        if k in got and tuple(got[k].shape) != tuple(v.shape)
    ]
    return problems


def load_exact(parts: Mapping[str, tuple[torch.nn.Module, Mapping[str, torch.Tensor]]], what: str) -> None:
    """load_state_dict for each named (module, weights) part; when anything misses, one error
    lists every missing, unexpected and mis-shaped tensor of all parts."""
    problems = []
    for name, (module, state) in parts.items():
        problems += [f"{name}{' ' if name else ''}{p}" for p in compare_state(module.state_dict(), state)]
    if problems:
        shown = "\n  ".join(problems[:60]) + (f"\n  ... and {len(problems) - 60} more" if len(problems) > 60 else "")
        raise TeacherError(f"{what}: weights do not fit the architecture ({len(problems)} mismatches):\n  {shown}")
    for module, state in parts.values():
        module.load_state_dict(state, strict=True)


def check_images(images: torch.Tensor, downscale: int) -> None:
    """Raise a ValueError naming the shape unless images is (B, 3, H, W) float with H, W % downscale == 0."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor (B, 3, H, W) in [-1, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [-1, 1], got dtype {images.dtype}")
    H, W = images.shape[-2:]
    if H % downscale or W % downscale:
        raise ValueError(f"images H and W must be multiples of {downscale}, got {tuple(images.shape)}")


def check_latents(latents: torch.Tensor, channels: int) -> None:
    """Raise a ValueError naming the shape unless latents is (B, channels, h, w) float."""
    if not isinstance(latents, torch.Tensor):
        raise ValueError(f"latents must be a torch.Tensor (B, {channels}, h, w), got {type(latents).__name__}")
    if latents.ndim != 4 or latents.shape[1] != channels:
        raise ValueError(f"latents must have shape (B, {channels}, h, w), got {tuple(latents.shape)}")
    if not latents.is_floating_point():
        raise ValueError(f"latents must be float, got dtype {latents.dtype}")
