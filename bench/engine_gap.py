"""Where the engine's hidden-layer gap on `two` comes from: gradient references and exact-solve rounds, from the
engine's own random start (issue 27; references only, none of this is in `ola.fit`).

    python bench/engine_gap.py --seed 3 --seconds 60 --threads 2 \
        --methods adam,adam-b0,sgd:0.3,sgd:3,jacobi:0,jacobi:1,ola-carry --out docs/peers/gap-seed3.json

Every method starts from the very units `ola.Refine(start="random")` draws for fit seed 0 (random raw directions,
pre-activation std 1, biases N(0, 0.25)) on bench/peers.py's `two` rows (its train / validation / test split), and
fits the same OLAModule (hidden=(64,)):
  adam        autograd + Adam (lr 2e-3), 256-row minibatches, readout from 0: a gradient reference
  adam-b0     the same without momentum (betas 0, 0.999): what per-parameter step scaling alone gives
  sgd:LR      plain minibatch SGD at learning rate LR: steps scaled by the gradient, not per parameter
  jacobi:MU   the refinement's rounds (ola/refine.py) with each round's problems solved exactly (closed form, a
              reference): every unit fitted to its Gauss-Newton target h + c / (q + MU mean(q)) weighted by
              q + MU mean(q) (MU = 0: the Jacobi move the engine's unit searches aim at), then the readout by
              Gauss-Newton; how far the rounds themselves go when their searches are perfect
  ola-carry   the engine: ola.fit(hidden=(64,), refine=ola.Refine.measured(0.9, "random")) in this process
Reports test MSE / noise floor of the solution with the best validation MSE, and the validation curve.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import peers  # noqa: E402

from organic_sd import ola  # noqa: E402
from organic_sd.ola.readout import Data  # noqa: E402
from organic_sd.ola.refine import random_units  # noqa: E402
from organic_sd.ola.search import Budget  # noqa: E402
from organic_sd.ola.strategies import make_strategy  # noqa: E402

UNITS = 64
CHECKPOINTS = (5, 10, 20, 40, 60, 120)


def start_units(case, seed: int = 0):
    """The units `ola.fit(..., refine=Refine(start="random"), seed=seed)` starts from: W (H, in), b (H,), raw."""
    data = Data(case.x, case.y, case.x_val, case.y_val, 1024, torch.Generator().manual_seed(seed))
    (w, b), = random_units(data, (UNITS,), case.out_scale, lambda: make_strategy("auto", 2), Budget(generations=1))[0]
    return w.clone(), b.clone()


def features(x, w, b):
    """The readout's inputs [x, tanh(W x + b), 1]: (N, in + H + 1)."""
    return torch.cat([x, torch.tanh(x @ w.T + b), torch.ones(x.shape[0], 1)], dim=1)


class Tracker:
    """Validation curve and the test MSE of the best-on-validation solution, both over the noise floor."""

    def __init__(self, case, seconds):
        self.case, self.seconds, self.t0 = case, seconds, time.perf_counter()
        self.curve, self.best, self.test = [], math.inf, math.nan

    def elapsed(self):
        return time.perf_counter() - self.t0

    def done(self):
        return self.elapsed() >= self.seconds

    def score(self, predict):
        """predict(x) -> y for the current solution; records it if it is the best on validation so far."""
        c = self.case
        val = float((predict(c.x_val) - c.y_val).square().mean()) / c.scale
        if val < self.best:
            self.best, self.test = val, float((predict(c.x_test) - c.y_test).square().mean()) / c.scale
        self.curve.append((round(self.elapsed(), 2), round(self.best, 3)))


def run_optimizer(case, seconds, kind, lr, seed):
    """A gradient reference from the engine's start: Adam, Adam without momentum, or plain SGD."""
    w, b = start_units(case)
    readout = torch.zeros(case.y.shape[1], case.x.shape[1] + UNITS + 1)
    params = [w.requires_grad_(), b.requires_grad_(), readout.requires_grad_()]
    opt = {"adam": lambda: torch.optim.Adam(params, lr=lr),
           "adam-b0": lambda: torch.optim.Adam(params, lr=lr, betas=(0.0, 0.999)),
           "sgd": lambda: torch.optim.SGD(params, lr=lr)}[kind]()
    g = torch.Generator().manual_seed(seed)
    track, steps, every = Tracker(case, seconds), 0, 200

    def predict(x):
        with torch.no_grad():
            return torch.tanh(features(x, w, b) @ readout.T)

    while not track.done():
        i = torch.randint(0, case.x.shape[0], (256,), generator=g)
        loss = (torch.tanh(features(case.x[i], w, b) @ readout.T) - case.y[i]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        if steps % every == 0:
            track.score(predict)
    track.score(predict)
    return track, {"steps": steps}


def solve_tanh(u, target, weight, theta, iters, lam=1e-3):
    """min over each row r of sum_n weight (tanh(u theta_r) - target)^2 by Levenberg-Marquardt; u (N, d),
    target and weight (N, R), theta (R, d). A closed-form reference solver, never used by the engine."""
    eye = torch.eye(u.shape[1], dtype=torch.float64)
    for _ in range(iters):
        th = torch.tanh(u @ theta.T)
        slope = 1 - th * th
        a = torch.einsum("nr,nd,ne->rde", weight * slope * slope, u, u).double()
        a = 0.5 * (a + a.transpose(1, 2))
        a = a + (lam * torch.diagonal(a, dim1=1, dim2=2).mean(1)[:, None, None] + 1e-9) * eye
        rhs = torch.einsum("nr,nd->rd", weight * slope * (target - th), u).double()
        theta = theta + torch.cholesky_solve(rhs[..., None], torch.linalg.cholesky(a))[..., 0].float()
    return theta


def run_jacobi(case, seconds, mu):
    """The refinement's rounds with exact per-unit and readout solves (a reference of what the rounds can do)."""
    x, y = case.x, case.y
    n_in = x.shape[1]
    w, b = start_units(case)
    ones = torch.ones(x.shape[0], 1)
    z = torch.cat([x, ones], dim=1)
    target_y = y.clamp(-0.999, 0.999)
    readout = solve_tanh(features(x, w, b), target_y, torch.ones_like(y), torch.zeros(y.shape[1], n_in + UNITS + 1), 8)
    track, rounds = Tracker(case, seconds), 0

    def predict(xx):
        return torch.tanh(features(xx, w, b) @ readout.T)

    track.score(predict)
    while not track.done():
        u = features(x, w, b)
        th = torch.tanh(u @ readout.T)
        e, g = y - th, 1 - th * th
        v = readout[:, n_in:n_in + UNITS]  # (out, H): the units' readout columns
        c, q = (e * g) @ v, (g * g) @ v.square() + 1e-9  # (N, H): the Gauss-Newton terms of refine.py
        q = q + mu * q.mean(0, keepdim=True)  # a proximal term: MU = 0 is the plain Jacobi move
        h = u[:, n_in:n_in + UNITS]
        theta = solve_tanh(z, (h + c / q).clamp(-0.995, 0.995), q, torch.cat([w, b[:, None]], dim=1), 3)
        w, b = theta[:, :-1], theta[:, -1]
        readout = solve_tanh(features(x, w, b), target_y, torch.ones_like(y), readout, 2)
        rounds += 1
        track.score(predict)
    return track, {"rounds": rounds}


def run_engine(case, seconds, seed):
    """The engine's carried rounds from random units, in this process."""
    t0 = time.perf_counter()
    m = ola.fit(case.x, case.y, hidden=(UNITS,), max_seconds=seconds, x_val=case.x_val, y_val=case.y_val,
                refine=ola.Refine.measured(0.9, "random"), seed=seed)
    track = Tracker(case, seconds)
    track.t0 = t0
    with torch.no_grad():
        track.score(m)
    track.curve = [(s, round(v / case.y.shape[1] / case.scale, 3)) for s, _, v in m.training_summary["curve"]]
    return track, {"generations": m.training_summary["generations"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="adam,adam-b0,sgd:0.3,sgd:3,jacobi:0,jacobi:1,ola-carry")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=3, help="teacher seed (bench/peers.py's --seed)")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--noise", type=float, default=0.02)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    case = peers.make_case("two", argparse.Namespace(rows=args.rows, noise=args.noise, seed=args.seed, store=None))
    results = {}
    for method in args.methods.split(","):
        name, _, arg = method.partition(":")
        with torch.no_grad() if name in ("jacobi", "ola-carry") else torch.enable_grad():
            if name in ("adam", "adam-b0", "sgd"):
                track, extra = run_optimizer(case, args.seconds, name, float(arg or 2e-3), args.seed)
            elif name == "jacobi":
                track, extra = run_jacobi(case, args.seconds, float(arg or 0))
            elif name == "ola-carry":
                track, extra = run_engine(case, args.seconds, 0)
            else:
                raise SystemExit(f"unknown method {method!r}")
        at = {s: next((v for t, v in track.curve if t >= s), None) for s in CHECKPOINTS if s <= args.seconds}
        results[method] = {"test": track.test, "validation_at": at, "curve": track.curve, **extra}
        print(f"{method:10s} test {track.test:8.1f}x  validation " +
              " ".join(f"{s}s {v:.1f}" for s, v in at.items() if v is not None) + f"  {extra}", flush=True)
    if args.out:
        meta = {"seed": args.seed, "seconds": args.seconds, "threads": args.threads, "torch": torch.__version__,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
