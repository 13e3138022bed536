"""The `osd` command line: one subcommand per step of the data flow.

Each subcommand lives in a `_cmd_*` function that imports its module lazily, so that
`osd --help` starts fast and optional extras are only needed by the commands that use them.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    from organic_sd import ola

    m = ola.load(args.checkpoint)
    print(m.describe())
    return 0


def _cmd_precompute(args: argparse.Namespace) -> int:
    from organic_sd.data.precompute import precompute, resolve_device

    device = resolve_device(args.device)  # before loading anything: no CUDA is a clear error
    from organic_sd.teachers import load_teacher

    teacher = load_teacher(args.teacher, device=device)
    try:
        rep = precompute(
            args.sources, teacher, args.out, args.size, stride=args.stride, start=args.start,
            max_frames=args.max_frames, batch=args.batch, val_fraction=args.val_fraction, shard_size=args.shard_size,
        )
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        # e.g. a read-only --out: report it like the other errors instead of a traceback
        raise RuntimeError(f"precompute: {e}") from e
    print(rep.summary())
    return 130 if rep.interrupted else 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `osd`."""
    p = argparse.ArgumentParser(prog="osd", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="describe a saved OLA module or checkpoint")
    info.add_argument("checkpoint", help="folder or .safetensors file saved by organic_sd")
    info.set_defaults(func=_cmd_info)

    pre = sub.add_parser("precompute", help="run a teacher over frames into a store of (frame, latent, decode)")
    pre.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="video file, image file, image folder (recursive), or sample:videos / sample:skimage / "
                          "sample:bigbuckbunny ...")
    pre.add_argument("--teacher", required=True, help="teacher spec, e.g. a taef2 folder or a diffusers VAE")
    pre.add_argument("--out", required=True, help="store folder (created, or resumed if it exists)")
    pre.add_argument("--size", type=int, default=256, help="frame side in pixels after preprocessing")
    pre.add_argument("--stride", type=int, default=1, help="keep every N-th video frame")
    pre.add_argument("--start", type=int, default=0, help="first video frame to keep")
    pre.add_argument("--max-frames", type=int, default=None, help="at most N frames per source")
    pre.add_argument("--batch", type=int, default=16, help="frames per teacher call")
    pre.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (auto: cuda if available)")
    pre.add_argument("--val-fraction", type=float, default=0.05, help="held-out share, fixed at write time")
    pre.add_argument("--shard-size", type=int, default=1024, help="samples per shard file")
    pre.set_defaults(func=_cmd_precompute)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `osd` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"osd: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
