"""Our files on disk: atomic writes, and reading a safetensors checkpoint with clear errors.

Every checkpoint kind (OLA module, O-VAE, O-UNet) is one safetensors file, or a run folder
holding it as `model.safetensors`; they differ only in the metadata they check afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

WEIGHTS_NAME = "model.safetensors"  # the checkpoint inside a run folder


def atomic_write(dest: Path, write: Callable[[str], None]) -> None:
    """write(tmp_path), flush it to disk, then rename onto dest: a crash or power cut never leaves half a file."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it owner-only; a checkpoint should read like any file
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(dest.parent)  # the rename itself survives a power cut


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (new and renamed files) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_json(path: Path, obj) -> None:
    """Write obj as indented JSON to path (its folder made if missing), atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1)))


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[Path, dict, dict]:
    """(file, tensors, metadata) of a .safetensors file or a run folder holding one; `what` names it in errors.

    Raises FileNotFoundError for a missing path or a folder without WEIGHTS_NAME, and
    ValueError for a file that is not safetensors at all.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    file = path / WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} is a folder without {WEIGHTS_NAME}: no {what} inside")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{file} is not a safetensors file, so not an {what} ({e})") from None
    return file, tensors, meta


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in 16 MiB blocks (never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    return h.hexdigest()
