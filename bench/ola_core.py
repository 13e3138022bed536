"""Benchmark the OLA engine against known optima: held-out MSE / noise floor, per strategy.

    python bench/ola_core.py --suite cpu                 # the 2-core CPU targets (40 s fits)
    python bench/ola_core.py --suite gpu --device cuda   # O-Decoder scale on an H100

Prints one row per (problem, strategy): held-out MSE on a fresh test set divided by the
teacher's own test MSE (1.00 = the optimum), generations, wall time, and the curve of
selection-set MSE / floor against seconds. `--json` keeps everything for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from problems import linear_tanh, two_layer  # noqa: E402

from organic_sd import ola  # noqa: E402

SUITES = {
    # name: [(problem factory, hidden, strategies, seconds)]
    "cpu": [
        (lambda: linear_tanh(96, 48, 20_000), (), ["snes", "trust", "trust-neuron"], 40),
        (lambda: two_layer(96, 64, 48, 20_000), (), ["snes"], 120),
        (lambda: two_layer(96, 64, 48, 20_000), (64,), ["snes"], 120),
    ],
    "gpu": [
        (lambda: linear_tanh(288, 192, 200_000, 20_000), (), ["snes", "trust"], 60),
        (lambda: linear_tanh(800, 192, 200_000, 20_000), (), ["snes"], 120),
        (lambda: two_layer(96, 64, 48, 200_000, 20_000), (), ["snes"], 60),
        (lambda: two_layer(96, 64, 48, 200_000, 20_000), (64,), ["snes"], 60),
    ],
    "smoke": [(lambda: linear_tanh(16, 8, 2_000, 1_000), (), ["snes", "trust"], 2)],
}


def run(suite: str, device: str, seconds_scale: float, batch_size: int | None) -> list[dict]:
    """Fit every (problem, strategy) of a suite; one result dict each."""
    rows = []
    for make, hidden, strategies, seconds in SUITES[suite]:
        p = make()
        for strategy in strategies:
            secs = seconds * seconds_scale
            t0 = time.perf_counter()
            m = ola.fit(p.x, p.y, hidden=hidden, strategy=strategy, max_seconds=secs,
                        batch_size=batch_size, device=device, seed=0)
            wall = time.perf_counter() - t0
            with torch.no_grad():
                mse = float((m(p.x_test.to(device)).cpu() - p.y_test).square().mean())
            s = m.training_summary
            out_dim = p.y.shape[1]
            row = {
                "problem": p.name, "hidden": list(hidden), "strategy": strategy, "device": device,
                "budget_s": secs, "wall_s": round(wall, 1), "generations": s["generations"],
                "test_mse": mse, "floor": p.floor, "ratio": mse / p.floor,
                "curve": [[t, v / out_dim / p.floor] for t, _, v in s["curve"]],
            }
            rows.append(row)
            print(f"{p.name:28s} hidden={str(hidden):6s} {strategy:13s} {device:5s} "
                  f"ratio={row['ratio']:8.3f}  gens={s['generations']:6d}  wall={wall:6.1f}s", flush=True)
    return rows


def curve_at(curve, seconds):
    """The curve's ratio at the last point not after `seconds`."""
    pts = [v for t, v in curve if t <= seconds]
    return pts[-1] if pts else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", choices=sorted(SUITES), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seconds-scale", type=float, default=1.0, help="multiply every time budget")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="write all results (curves too) here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# bench/ola_core.py --suite {args.suite} on {machine}, torch {torch.__version__}")
    rows = run(args.suite, args.device, args.seconds_scale, args.batch_size)
    print("\ncurves (selection-set MSE / floor at t seconds):")
    for r in rows:
        marks = [t for t in (5, 10, 20, 40, 60, 120) if t <= r["budget_s"]]
        print(f"  {r['problem']:28s} {str(r['hidden']):5s} {r['strategy']:13s} "
              + "  ".join(f"{t}s:{curve_at(r['curve'], t):.3f}" for t in marks))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "suite": args.suite, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
