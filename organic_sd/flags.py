"""Command-line flags built from config dataclasses: each flag is declared once, as a field with its help.

    window: int = flag(0, "decoder: latent window k ...")          # --window, type int, default 0
    hidden: tuple[int, ...] = flag((), "hidden tanh layer widths")  # --hidden 64 32 (nargs *)
    deflate: bool | None = flag(None, "...")                        # --deflate / --no-deflate
    progress: bool = flag(False, "...")                             # --progress (store_true)
Extra argparse settings (choices, metavar) go in `flag(..., choices=...)`. Reading this file needs no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

# --batch-size's help, one text for every trainer (the numbers are organic_sd.ola.fit's defaults; this file reads no
# torch, so they are written out here)
BATCH_SIZE_HELP = ("rows per generation (unset: 1,024 on the CPU, 32,768 on a GPU, fewer for wide layers or a small "
                   "card)")


def flag(default: Any = dataclasses.MISSING, help: str = "", **argparse_kw) -> Any:
    """A dataclass field that is also a command-line flag: its default, its --help text, extra argparse settings."""
    meta = {"help": help, "argparse": argparse_kw}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _kind(annotation: str) -> tuple[str, bool]:
    """'int | None' -> ('int', True); 'tuple[int, ...]' -> ('tuple[int, ...]', False)."""
    parts = [p.strip() for p in annotation.split("|")]
    optional = "None" in parts
    return " | ".join(p for p in parts if p != "None"), optional


def add_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One --flag per field of the dataclass `cls` that has flag metadata (fields in `skip` left out)."""
    types = {"int": int, "float": float, "str": str}
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        kw = dict(f.metadata["argparse"])
        kw["help"] = f.metadata["help"]
        kind, _ = _kind(f.type if isinstance(f.type, str) else f.type.__name__)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        if kind == "bool":
            kw.setdefault("action", argparse.BooleanOptionalAction if default is None else "store_true")
        elif kind.startswith("tuple["):
            kw.setdefault("type", types[kind[6:].split(",")[0].strip()])
            kw.setdefault("nargs", "*")
            default = list(default) if default is not None else None
        else:
            kw.setdefault("type", types[kind])
        if required:
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument("--" + f.name.replace("_", "-"), **kw)


def from_args(cls, args: argparse.Namespace, **overrides):
    """An instance of `cls` from the parsed flags its fields declare (and `overrides`)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**given, **overrides})
