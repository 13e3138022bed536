"""torch.distributed for every command: one process group from torchrun's environment, or none.

`init()` reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins the default process group: NCCL when CUDA is available, gloo on
CPU. Without those variables it does nothing, and every helper here then behaves as a
single process (rank 0 of 1), so the same code runs with and without torchrun.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True when this process was started by torchrun (or anything setting its variables)."""
    return all(v in os.environ for v in ENV)


def init(backend: str | None = None) -> bool:
    """Join the process group torchrun describes (idempotent); False when not launched by torchrun."""
    if is_initialized():
        return True
    if not launched():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        # NCCL binds a rank to the current device: pick ours before the group exists
        torch.cuda.set_device(local_rank())
    tdist.init_process_group(backend=backend)
    return True


def is_initialized() -> bool:
    """True when a default process group exists."""
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return tdist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group (1 without a process group)."""
    return tdist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """Rank of this process on its own machine (LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    """True on rank 0, the process that prints and commits shared files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if world_size() > 1:
        tdist.barrier()


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank; [obj] on one process."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def local_device(device: str) -> str:
    """'cuda' -> 'cuda:LOCAL_RANK' under torchrun, so each process of a machine takes its own GPU."""
    if device == "cuda" and world_size() > 1:
        return f"cuda:{local_rank()}"
    return device


def destroy() -> None:
    """Leave the process group (no-op without one)."""
    if is_initialized():
        tdist.destroy_process_group()
