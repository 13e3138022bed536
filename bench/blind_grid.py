"""A blind legibility grid: the teacher's samples and an O-UNet's shuffled into one picture, the key kept apart.

    python bench/blind_grid.py --teacher ddpm-mnist:PATH [--ounet mnist] [--n 48] [--teacher-steps 8] \
        [--teacher-seed 7004] [--ounet-seed 7005] [--shuffle-seed 99] --out OUT
    # look at OUT.png, write down the cells (row-major) that name a digit, then:
    python bench/blind_grid.py --count OUT --named 0 4 8 ...

No metric in this project sees whether strokes make a digit (docs/BENCHMARKS.md: pooled KID, the low-noise error and
a nearest-labelled-digit share can all be fooled), so legibility is read by a person. Read with the labels shown, a
reader favours the teacher; here --n samples of each, from different noise so no pair can be matched, are shuffled
into one grid (OUT.png, 12 cells a row) and whose cell is whose goes to OUT_key.json, to be opened only after the
cells that name a digit are written down. `--count` then says how many of each were named.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from organic_sd.ounet import generate as gen
from organic_sd.ounet.distribution import draw
from organic_sd.ounet.model import OUNet
from organic_sd.teachers import load_denoiser
from organic_sd.teachers.ddim import seeded_noise

COLS = 12


def blind_grid(teacher, u: OUNet, n: int, teacher_steps: int, teacher_seed: int, ounet_seed: int,
               shuffle_seed: int, steps: int = 8) -> tuple[np.ndarray, list[str]]:
    """(grid image (H, W) uint8, who drew each cell, row-major): n teacher samples and n O-UNet samples, shuffled."""
    with torch.no_grad():
        x = torch.cat([draw(teacher, seeded_noise(u.sample_shape, n, teacher_seed), teacher_steps),
                       draw(u, seeded_noise(u.sample_shape, n, ounet_seed), steps)])  # (2n, C, H, W)
    who = np.array(["teacher"] * n + ["ounet"] * n)
    perm = np.random.default_rng(shuffle_seed).permutation(2 * n)
    return gen.grid_image(gen.to_unit(x[perm], u.config.pixel_range), COLS), who[perm].tolist()


def count(key: list[str], named: list[int]) -> dict:
    """How many cells of each source were named, out of how many."""
    if any(not 0 <= i < len(key) for i in named):
        raise SystemExit(f"--named: cells are 0 to {len(key) - 1}, row-major")
    total, hits = Counter(key), Counter(key[i] for i in set(named))
    return {k: {"named": hits[k], "of": total[k]} for k in sorted(total)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="denoiser teacher spec, e.g. ddpm-mnist:PATH")
    ap.add_argument("--ounet", default="mnist", help="O-UNet file, run or shipped name")
    ap.add_argument("--n", type=int, default=48, help="samples of each")
    ap.add_argument("--teacher-steps", type=int, default=8, help="the teacher's DDIM steps (the O-UNet takes 8)")
    ap.add_argument("--teacher-seed", type=int, default=7004)
    ap.add_argument("--ounet-seed", type=int, default=7005)
    ap.add_argument("--shuffle-seed", type=int, default=99)
    ap.add_argument("--scale", type=int, default=3, help="pixels per sample pixel in the PNG")
    ap.add_argument("--out", help="writes OUT.png and OUT_key.json")
    ap.add_argument("--count", metavar="OUT", help="count the named cells of the grid OUT against its key")
    ap.add_argument("--named", type=int, nargs="*", default=[], help="with --count: the cells that name a digit")
    a = ap.parse_args(argv)
    if a.count:
        print(json.dumps(count(json.loads(Path(a.count + "_key.json").read_text()), a.named)))
        return 0
    if not (a.teacher and a.out):
        raise SystemExit("give --teacher and --out (or --count OUT --named ...)")
    u = OUNet.load(a.ounet)
    grid, key = blind_grid(load_denoiser(a.teacher), u, a.n, a.teacher_steps, a.teacher_seed, a.ounet_seed,
                           a.shuffle_seed)
    im = Image.fromarray(grid)
    im.resize((im.width * a.scale, im.height * a.scale), Image.NEAREST).save(a.out + ".png")
    Path(a.out + "_key.json").write_text(json.dumps(key))
    print(f"{a.out}.png: {2 * a.n} cells, {COLS} a row; the key is {a.out}_key.json: open it after counting")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
