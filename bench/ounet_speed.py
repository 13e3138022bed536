"""O-UNet vs its teacher: CPU time of one eps call, as a ratio measured in one process (machines are noisy).

    python bench/ounet_speed.py --teacher ddpm-mnist:PATH [--ounet FILE ...] --batch 64 --threads 1 --rounds 5

Each round times the teacher, then every O-UNet (median of 7 calls each, after a warm-up call), so
slow phases of a busy machine hit all of them; reported: per O-UNet the median over rounds of
teacher ms / O-UNet ms, and the rounds' ms.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics

import torch

from organic_sd.ounet import OUNet
from organic_sd.ounet.evaluate import cpu_ms_per_step
from organic_sd.teachers import load_denoiser


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--ounet", nargs="+", default=["mnist"], help="O-UNet files, runs or shipped names")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    te = load_denoiser(a.teacher)
    us = {name: OUNet.load(name) for name in a.ounet}
    cond = None
    if te.cond_shape is not None:  # a class teacher: one class row for the whole batch
        cond = torch.nn.functional.one_hot(torch.tensor([0]), te.cond_shape[0]).float()
    rounds = []
    for _ in range(a.rounds):
        r = {"teacher": cpu_ms_per_step(te, a.batch, a.threads, cond=cond)}
        r.update({name: cpu_ms_per_step(u, a.batch, a.threads, cond=cond) for name, u in us.items()})
        rounds.append(r)
    out = {"machine": platform.processor() or platform.machine(), "batch": a.batch, "threads": a.threads,
           "rounds": rounds, "x_faster": {}}
    for name, u in us.items():
        ratio = statistics.median(r["teacher"] / r[name] for r in rounds)
        out["x_faster"][name] = ratio
        print(f"{name}: {u.num_parameters():,} parameters, median {statistics.median(r[name] for r in rounds):.2f} ms "
              f"vs teacher {statistics.median(r['teacher'] for r in rounds):.2f} ms per step: {ratio:.2f}x faster "
              f"(batch {a.batch}, {a.threads} thread(s), median of {a.rounds} rounds)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
