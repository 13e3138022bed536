"""The OLA engine beside other gradient-free optimisers at equal wall time: test MSE / noise floor, and curves.

    python bench/peers.py --problems linear,two,three,decoder --methods ola,ola1,snes,pgpe,cem,sepcma,ngopt,adam \
        --seconds 60 --threads 2 --device cpu --out docs/peers/cpu.json --plot [--store STORE]

Every method fits the same architecture, the student's (organic_sd.ola.OLAModule):
    h_1 = tanh(W_1 x + b_1), ..., y = out_scale * tanh(W_o [x, h_1, ..., h_L] + b_o)
or with --no-skip the plain net y = out_scale * tanh(W_o [h_1, ..., h_L] + b_o), the engine's random starts with
ola.Refine(readout_inputs=False)
  ola     ola.fit(hidden=the problem's layers), the engine as it is in this checkout
  ola-refine  the same with ola.Refine(share=0.5): half the budget refines the grown units together
  ola-random  ola.Refine(share=0.9, start="random", rounds of 100 / 100 generations): one hidden layer of random
          units, a tenth of the budget on their readout, the rest refining them (no cascade)
  ola-carry   the same in rounds of 20 / 20 generations whose searches resume from the last round's step sizes
          (ola.Refine.measured: kept above a floor of 0.3 of the start, halved after a round that gains nothing)
  ola-h1  ola.fit(hidden=the first of the problem's layers): is a second hidden layer worth it
  ola1    ola.fit(hidden=()), the engine's single layer
  snes    EvoTorch SNES on the whole flat parameter vector
  pgpe    EvoTorch PGPE with the ClipUp optimiser (functional API)
  cem     EvoTorch cross-entropy method (functional API)
  sepcma  `cma`, separable (diagonal) CMA-ES
  ngopt   nevergrad NGOpt (it picks its own algorithm; the JSON names the one it picked)
  adam    torch autograd + Adam on the same net: a reference, gradient, not a peer
Peers evaluate a whole population in one batched forward on a fresh minibatch of training rows
each generation; their inputs are standardised per column (an affine map folded back into the
first layer's weights at the end, so the exported net is the same OLAModule). Every method keeps
the solution with the best MSE on a validation split of the training rows (the engine: its
held-out rows, given the same split); the test rows only report. Problems:
  linear  y = tanh(W x + b) + noise, 96 -> 48 (bench/problems.py), single layer
  two     2-layer teacher 96 -> 64 -> 48, student hidden=(64,)
  three   3-layer teacher 96 -> 64 -> 32 -> 48, student hidden=(64, 32)
  decoder O-Decoder rows of a store made by `osd precompute frames` (--store or $OSD_PEERS_STORE):
          latent window -> 8x8x3 pixel block, student hidden=(--decoder-hidden,)
The synthetic problems use --noise (default 0.02, issue 27's protocol) and report test MSE / noise
floor (1 = the optimum); the decoder's floor is unknown, so it reports test MSE / variance of y
(1 = predicting the mean). The curve is (seconds, best validation MSE / the same scale).
Peers are optional (`pip install organic-sd[bench]`): a missing library is skipped, not an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from problems import linear_tanh, three_layer, two_layer  # noqa: E402

from organic_sd import ola  # noqa: E402
from organic_sd.ola.module import OLAConfig, OLAModule  # noqa: E402

SIGMA = 0.02  # initial per-parameter search stdev of every peer (inputs are standardised, weights ~ 1/sqrt(in))
POPSIZE = {"snes": 200, "pgpe": 200, "cem": 200, "sepcma": 64, "ngopt": 64}
ADAM_LR = 2e-3
VAL_SHARE = 0.1  # of the training rows, for choosing the kept solution
CURVE_POINTS = 200


@dataclass
class Case:
    """One problem: raw rows for the engine, standardised rows (xs_*) for the peers, and the error scale."""

    name: str
    desc: str
    x: torch.Tensor  # (N, in) training rows
    y: torch.Tensor  # (N, out)
    x_val: torch.Tensor  # (V, in) validation split of the training rows
    y_val: torch.Tensor
    x_test: torch.Tensor  # (T, in) never used for choosing
    y_test: torch.Tensor
    hidden: tuple[int, ...]
    out_scale: float
    scale: float  # the noise floor, or the variance of y where no floor is known
    scale_name: str

    def standardised(self):
        """Per-column mean and std of the training inputs, and xs = (x - mean) / std for train / val / test."""
        mean, std = self.x.mean(0), self.x.std(0).clamp_min(1e-6)
        return mean, std, [(x - mean) / std for x in (self.x, self.x_val, self.x_test)]

    def to(self, dev):
        """Move every row tensor to dev (in place); returns self."""
        for k in ("x", "y", "x_val", "y_val", "x_test", "y_test"):
            setattr(self, k, getattr(self, k).to(dev))
        return self


def _split_val(x, y, seed):
    """(train, val) rows: a seeded VAL_SHARE of the rows held out for choosing."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(VAL_SHARE * x.shape[0]))
    v, t = perm[:n_val], perm[n_val:]
    return x[t], y[t], x[v], y[v]


def make_case(name: str, args) -> Case:
    """Build problem `name` (linear, two, three, decoder) with its student's hidden layers."""
    if name == "decoder":
        return decoder_case(args)
    make, hidden = {"linear": (linear_tanh, ()), "two": (two_layer, (64,)), "three": (three_layer, (64, 32))}[name]
    p = make(n=args.rows, noise=args.noise, seed=args.seed)
    x, y, xv, yv = _split_val(p.x, p.y, args.seed)
    return Case(name, f"{p.name}, noise {args.noise}", x, y, xv, yv, p.x_test, p.y_test, hidden, 1.0, p.floor,
                "noise floor")


def decoder_case(args) -> Case:
    """O-Decoder rows (latent window (C*k*k) -> pixel block (3*8*8)) of the store's train / held-out photos."""
    from organic_sd.data import Store
    from organic_sd.ovae.config import TrainConfig
    from organic_sd.ovae.rows import PartRows, part_config

    path = args.store or os.environ.get("OSD_PEERS_STORE")
    if not path:
        raise SystemExit("the decoder problem needs --store STORE (or $OSD_PEERS_STORE): a store of `osd precompute frames`")
    store = Store.open(path)
    part = part_config(TrainConfig("decoder", path, "-", window=args.decoder_window), store)
    rows, rng = PartRows(store, part, torch.device("cpu"), None), np.random.default_rng(args.seed)
    x, y = rows.draw(store.indices("train"), args.rows, rng)
    x_test, y_test = rows.draw(store.indices("val"), args.rows // 4, rng)  # the store's held-out photos
    x, y, xv, yv = _split_val(x.float(), y.float(), args.seed)
    var = float((y_test - y_test.mean(0)).square().mean())
    desc = (f"O-Decoder rows of {Path(path).name} ({store.meta['teacher']}): {part.window}x{part.window} latent "
            f"window {x.shape[1]} -> {y.shape[1]}")
    return Case("decoder", desc, x, y, xv, yv, x_test.float(), y_test.float(), (args.decoder_hidden,), 1.0, var,
                "variance of y")


class Net:
    """The OLAModule architecture over flat parameter vectors theta (P, D), evaluated for all P at once."""

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int, out_scale: float, skip: bool = True):
        self.n_in, self.hidden, self.n_out, self.out_scale, self.skip = n_in, tuple(hidden), n_out, out_scale, skip
        widths = (n_in, *hidden)
        reads = (n_in if skip else 0) + sum(hidden)  # skip=False: the readout reads the hidden units only
        self.shapes = [(b, a) for a, b in zip(widths[:-1], widths[1:])] + [(n_out, reads)]  # (out, in)
        self.dim = sum(o * (i + 1) for o, i in self.shapes)

    def layers(self, theta: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """theta (P, D) -> [(W (P, out, in), b (P, out))] per layer, readout last."""
        out, k = [], 0
        for o, i in self.shapes:
            out.append((theta[:, k:k + o * i].reshape(-1, o, i), theta[:, k + o * i:k + o * (i + 1)]))
            k += o * (i + 1)
        return out

    def forward(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """theta (P, D), x (B, in) -> (P, B, out)."""
        *hid, (wo, bo) = self.layers(theta)
        # in-place ops on fresh matmul outputs only (autograd-safe, for Adam): the elementwise passes dominate
        if self.skip:
            z = (x @ wo[:, :, :self.n_in].transpose(1, 2)).add_(bo[:, None, :])  # (P, B, out): readout's x columns
        else:
            z = bo[:, None, :].expand(-1, x.shape[0], -1).clone()
        h, col = x, self.n_in if self.skip else 0
        for w, b in hid:
            h = (h @ w.transpose(1, 2)).add_(b[:, None, :]).tanh_()  # (P, B, width)
            z = z.baddbmm_(h, wo[:, :, col:col + w.shape[1]].transpose(1, 2))  # this layer's readout columns
            col += w.shape[1]
        return self.out_scale * z.tanh_()

    def mse(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """theta (P, D), rows x (B, in), y (B, out) -> MSE per solution (P,)."""
        out = self.forward(theta, x)
        return torch.nn.functional.mse_loss(out, y.expand_as(out), reduction="none").mean((1, 2))

    def init(self, seed: int, device) -> torch.Tensor:
        """A start (D,): hidden W ~ N(0, 1/in), biases and readout zero (the start predicts 0)."""
        g = torch.Generator().manual_seed(seed)
        parts = []
        for o, i in self.shapes[:-1]:
            parts += [torch.randn(o * i, generator=g) / i ** 0.5, torch.zeros(o)]
        o, i = self.shapes[-1]
        return torch.cat([*parts, torch.zeros(o * (i + 1))]).to(device)

    def to_module(self, theta: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> OLAModule:
        """theta (D,) of standardised inputs -> the OLAModule on raw inputs (standardisation folded in)."""
        m = OLAModule(OLAConfig(self.n_in, self.n_out, self.hidden, self.out_scale)).to(theta.device)
        with torch.no_grad():
            for layer, (w, b) in zip([*m.hidden, m.readout], self.layers(theta[None])):
                layer.weight.zero_()  # without the skip, the readout's x columns stay zero
                layer.weight[:, layer.weight.shape[1] - w.shape[2]:].copy_(w[0]), layer.bias.copy_(b[0])
            for layer in [*m.hidden[:1], m.readout]:  # the layers that read x
                w_x = layer.weight[:, :self.n_in]
                layer.bias -= (w_x * (mean / std)).sum(1)
                w_x /= std
        return m


class Tracker:
    """Wall clock of one method; keeps the best solution by validation MSE and its curve."""

    def __init__(self, net: Net, xs_val, y_val, scale: float, seconds: float, generations: int | None = None):
        self.net, self.xs_val, self.y_val, self.scale, self.seconds = net, xs_val, y_val, scale, seconds
        self.max_generations = generations  # a count instead of the clock (the tests: independent of load)
        self.t0 = time.perf_counter()
        self.best, self.theta, self.curve, self.generations = math.inf, None, [], 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def done(self) -> bool:
        if self.max_generations is not None:
            return self.generations >= self.max_generations
        return self.elapsed() >= self.seconds

    def offer(self, theta: torch.Tensor) -> None:
        """A candidate (D,) after a generation: kept if its validation MSE is the best so far."""
        with torch.no_grad():
            v = float(self.net.mse(theta.reshape(1, -1).float(), self.xs_val, self.y_val)[0])
        if v < self.best:
            self.best, self.theta = v, theta.detach().reshape(-1).float().clone()
        self.curve.append((self.elapsed(), self.best / self.scale))


class Minibatches:
    """A fresh random minibatch of training rows per generation, drawn on the device."""

    def __init__(self, xs, y, batch: int, seed: int):
        self.xs, self.y, self.batch = xs, y, min(batch, xs.shape[0])
        self.gen = torch.Generator(device=xs.device).manual_seed(seed)

    def __call__(self):
        i = torch.randint(self.xs.shape[0], (self.batch,), generator=self.gen, device=self.xs.device)
        return self.xs[i], self.y[i]


# -- the peers: each runs until the tracker's time is up, offering its current solution per generation ---------

def run_snes(net, theta0, rows, tr, seed):
    from evotorch import Problem
    from evotorch.algorithms import SNES

    plain = lambda t: torch.Tensor.as_subclass(t, torch.Tensor)  # noqa: E731  (its ReadOnlyTensor forbids add_)
    prob = Problem("min", lambda th: net.mse(plain(th), *rows()), solution_length=net.dim, initial_bounds=(-1, 1),
                   vectorized=True, device=theta0.device, seed=seed)
    es = SNES(prob, stdev_init=SIGMA, popsize=POPSIZE["snes"], center_init=theta0)
    while not tr.done():
        es.step()
        tr.generations += 1
        tr.offer(plain(es.status["center"]))
    return {}


def run_pgpe(net, theta0, rows, tr, seed):
    from evotorch.algorithms.functional import pgpe, pgpe_ask, pgpe_tell

    torch.manual_seed(seed)  # the functional API samples from torch's global generator
    radius = SIGMA * net.dim ** 0.5
    max_speed = radius / 15  # ClipUp's rule of thumb: radius ~ 15x max speed, step = max speed / 2
    st = pgpe(center_init=theta0, center_learning_rate=max_speed / 2, stdev_learning_rate=0.1,
              objective_sense="min", optimizer="clipup", optimizer_config={"max_speed": max_speed},
              radius_init=radius, stdev_max_change=0.2)
    while not tr.done():
        pop = pgpe_ask(st, popsize=POPSIZE["pgpe"])  # (P, D)
        st = pgpe_tell(st, pop, net.mse(pop, *rows()))
        tr.generations += 1
        tr.offer(st.optimizer_state.center)
    return {"max_speed": max_speed}


def run_cem(net, theta0, rows, tr, seed):
    from evotorch.algorithms.functional import cem, cem_ask, cem_tell

    torch.manual_seed(seed)
    st = cem(center_init=theta0, parenthood_ratio=0.25, objective_sense="min", stdev_init=SIGMA,
             stdev_max_change=0.2)
    while not tr.done():
        pop = cem_ask(st, popsize=POPSIZE["cem"])
        st = cem_tell(st, pop, net.mse(pop, *rows()))
        tr.generations += 1
        tr.offer(st.center)
    return {}


def run_sepcma(net, theta0, rows, tr, seed):
    import cma

    es = cma.CMAEvolutionStrategy(theta0.double().cpu().numpy(), SIGMA,
                                  {"CMA_diagonal": True, "popsize": POPSIZE["sepcma"], "seed": seed + 1,
                                   "verbose": -9, "tolfun": 0, "tolfunhist": 0, "tolx": 0})
    while not tr.done() and not es.stop():
        sols = es.ask()  # P arrays (D,)
        pop = torch.as_tensor(np.stack(sols), dtype=torch.float32, device=theta0.device)
        es.tell(sols, net.mse(pop, *rows()).double().cpu().tolist())
        tr.generations += 1
        tr.offer(torch.as_tensor(es.mean, dtype=torch.float32, device=theta0.device))
    return {"stopped_by_cma": dict(es.stop())}


def run_ngopt(net, theta0, rows, tr, seed):
    import nevergrad as ng

    param = ng.p.Array(init=theta0.double().cpu().numpy()).set_mutation(sigma=SIGMA)
    param.random_state = np.random.RandomState(seed)
    pop_n = POPSIZE["ngopt"]
    # NGOpt picks its algorithm from dimension, budget (evaluations, not seconds) and workers: the budget is
    # the generations that fit if one generation costs what one batched evaluation of the start does
    t0 = time.perf_counter()
    net.mse(theta0.expand(pop_n, -1), *rows()).sum().item()
    gens = tr.max_generations or max(1, int(tr.seconds / (time.perf_counter() - t0)))
    opt = ng.optimizers.NGOpt(parametrization=param, budget=gens * pop_n, num_workers=pop_n)
    while not tr.done():
        cands = [opt.ask() for _ in range(pop_n)]
        pop = torch.as_tensor(np.stack([c.value for c in cands]), dtype=torch.float32, device=theta0.device)
        for c, v in zip(cands, net.mse(pop, *rows()).double().cpu().tolist()):
            opt.tell(c, v)
        tr.generations += 1
        tr.offer(torch.as_tensor(opt.recommend().value, dtype=torch.float32, device=theta0.device))
    return {"picked": type(getattr(opt, "optim", opt)).__name__, "budget": gens * pop_n}


def run_adam(net, theta0, rows, tr, seed):
    """Reference, gradient: autograd + Adam on the same net, its step size decayed linearly by time."""
    theta = theta0.clone()[None].requires_grad_(True)  # (1, D)
    opt = torch.optim.Adam([theta], lr=ADAM_LR)
    last = -math.inf
    with torch.enable_grad():
        while not tr.done():
            loss = net.mse(theta, *rows())[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tr.generations += 1
            if tr.elapsed() - last > 0.25:
                done = tr.generations / tr.max_generations if tr.max_generations else tr.elapsed() / tr.seconds
                opt.param_groups[0]["lr"] = ADAM_LR * max(0.05, 1 - done)
                tr.offer(theta.detach()[0])
                last = tr.elapsed()
    tr.offer(theta.detach()[0])
    return {"lr": ADAM_LR}


# name -> (label, runner, pip package or None)
PEERS = {
    "snes": ("EvoTorch SNES", run_snes, "evotorch"),
    "pgpe": ("EvoTorch PGPE + ClipUp", run_pgpe, "evotorch"),
    "cem": ("EvoTorch CEM", run_cem, "evotorch"),
    "sepcma": ("cma sep-CMA-ES", run_sepcma, "cma"),
    "ngopt": ("nevergrad NGOpt", run_ngopt, "nevergrad"),
    "adam": ("Adam (reference, gradient)", run_adam, None),
}
ENGINE = {"ola": "ola.fit (engine)", "ola-refine": "ola.fit refine share 0.5 (engine)",
          "ola-random": "ola.fit random units, refine share 0.9 (engine)",
          "ola-carry": "ola.fit random units, refine share 0.9, rounds 20/20, steps carried (engine)",
          "ola-h1": "ola.fit first hidden layer only (engine)", "ola1": "ola.fit hidden=() (engine)"}
METHODS = [*ENGINE, *PEERS]


def _thin(curve, n=CURVE_POINTS):
    """At most n points, first and last kept, rounded for the JSON."""
    idx = sorted({round(i * (len(curve) - 1) / (n - 1)) for i in range(n)}) if len(curve) > n else range(len(curve))
    return [[round(curve[i][0], 3), curve[i][1]] for i in idx]


def run_method(method: str, case: Case, seconds: float | None, device: str = "cpu", seed: int = 0,
               batch: int | None = None, generations: int | None = None, population: int | None = None,
               refine_strategy: str | None = None, skip: bool = True) -> dict:
    """Fit `case` with `method` for `seconds` (or `generations`); returns a row with test MSE / scale and the curve.

    `skip=False`: every method fits the net whose readout reads the hidden units only (the engine's random starts
    with ola.Refine(readout_inputs=False); the cascade methods need the inputs in the readout and refuse)."""
    dev = torch.device(device)
    case.to(dev)
    cuda = dev.type == "cuda"
    # rows per generation: the engine keeps its own default (1024 CPU / 4096 CUDA); the peers take a quarter,
    # which gave them more generations and a better fit in the same time (2-layer teacher, 30 s, SNES and sep-CMA)
    batch = batch or (None if method in ENGINE else 1024 if cuda else 256)
    n_in, n_out = case.x.shape[1], case.y.shape[1]
    net = Net(n_in, case.hidden, n_out, case.out_scale, skip)
    row = {"problem": case.name, "method": method, "label": ENGINE.get(method) or PEERS[method][0],
           "device": str(dev), "budget_s": seconds, "batch": batch, "skip": skip}
    if method in ENGINE:
        hidden = {"ola1": (), "ola-h1": case.hidden[:1]}.get(method, case.hidden)
        refine = {"ola-refine": ola.Refine(share=0.5),
                  "ola-random": ola.Refine(share=0.9, start="random", unit_generations=100, readout_generations=100),
                  "ola-carry": ola.Refine.measured(0.9, "random", readout_inputs=skip),  # the plain net's own rounds
                  }.get(method, ola.Refine())
        if not skip:  # Refine refuses it for the cascade methods
            refine = dataclasses.replace(refine, readout_inputs=False)
        if refine_strategy is not None and refine.share:  # --refine-strategy: the refinement's own searches
            refine = dataclasses.replace(refine, strategy=None if refine_strategy == "fit" else refine_strategy)
        if population is not None and refine.population is not None:  # --population sets every search's
            refine = dataclasses.replace(refine, population=population)
        t0 = time.perf_counter()
        try:
            m = ola.fit(case.x, case.y, hidden=hidden, max_seconds=None if generations else seconds,
                        generations=generations, batch_size=batch, x_val=case.x_val, y_val=case.y_val, device=dev,
                        out_scale=case.out_scale, seed=seed, refine=refine,
                        **({} if population is None else {"population": population}))
        except ola.FitDidNotLearn as err:  # reported as what it is: the starting point
            print(f"  {method}: {err}", flush=True)
            m = err.module
        s = m.training_summary
        # the engine's curve is (seconds, generation, held-out MSE summed over output units)
        curve = [[t, v / n_out / case.scale] for t, _, v in s["curve"]]
        searched = m.num_parameters() - (0 if skip else n_out * n_in)  # without the skip its x columns stay zero
        row.update(wall_s=round(time.perf_counter() - t0, 1), generations=s["generations"], hidden=list(hidden),
                   batch=s["batch_size"], population=s["population"], params=searched,
                   val_ratio=s["val_mse"] / case.scale, curve=curve, refine=s["refine"])
    else:
        _, runner, package = PEERS[method]
        try:
            if package:
                __import__(package)
        except ImportError:
            print(f"  {method}: skipped (pip install {package})", flush=True)
            return {**row, "status": f"skipped (pip install {package})"}
        if method == "adam":  # its first step imports torch._dynamo (seconds on a busy box): before the clock
            p = torch.zeros(1, requires_grad=True)
            p.sum().backward()
            torch.optim.Adam([p]).step()
        mean, std, (xs, xs_val, _) = case.standardised()
        tr = Tracker(net, xs_val, case.y_val, case.scale, seconds, generations)
        theta0 = net.init(seed, dev)
        with torch.no_grad():
            tr.offer(theta0)  # the start: the curve's first point, and a kept solution however short the budget
            info = runner(net, theta0, Minibatches(xs, case.y, batch, seed), tr, seed)
        m = net.to_module(tr.theta, mean, std)
        row.update(wall_s=round(tr.elapsed(), 1), generations=tr.generations, hidden=list(case.hidden),
                   params=net.dim, val_ratio=tr.best / case.scale, curve=_thin(tr.curve), info=info)
    with torch.no_grad():
        mse = float((m(case.x_test) - case.y_test).square().mean())
    row.update(status="ok", test_mse=mse, ratio=mse / case.scale,
               zero_ratio=float(case.y_test.square().mean()) / case.scale)  # predicting 0, for scale
    return row


def table(rows: list[dict], problems: dict) -> str:
    """Markdown: method x problem, test MSE / scale (the scale named per problem)."""
    names = list(problems)
    head = "| method | " + " | ".join(f"{n} ({problems[n]['scale_name']})" for n in names) + " |"
    lines = [head, "|" + " --- |" * (len(names) + 1)]
    for method in [m for m in METHODS if any(r["method"] == m for r in rows)]:
        cells = []
        for n in names:
            r = next((r for r in rows if r["method"] == method and r["problem"] == n), None)
            cells.append("-" if r is None else r["status"] if r["status"] != "ok" else f"{r['ratio']:.3g}")
        label = next(r["label"] for r in rows if r["method"] == method)
        lines.append(f"| {method}: {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_at(curve, seconds):
    """The curve's value at the last point not after `seconds`."""
    pts = [v for t, v in curve if t <= seconds]
    return pts[-1] if pts else float("nan")


def curves(rows: list[dict], marks=(5, 10, 20, 40, 60, 120)) -> str:
    """Markdown: per (problem, method), best validation MSE / scale at t seconds."""
    lines = ["| problem | method | " + " | ".join(f"{t} s" for t in marks) + " |", "|" + " --- |" * (len(marks) + 2)]
    for r in rows:
        if r["status"] == "ok":
            vals = [curve_at(r["curve"], t) if t <= r["budget_s"] else None for t in marks]
            cells = ["" if v is None else "-" if math.isnan(v) else f"{v:.3g}" for v in vals]  # "-": no point yet
            lines.append(f"| {r['problem']} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], problems: dict, path: Path) -> None:
    """One panel per problem: best validation MSE / scale against seconds, log scale; one colour per method."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped (pip install matplotlib)")
        return
    cols = min(2, len(problems))
    n_rows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(6 * cols, 4 * n_rows + 0.6), squeeze=False)
    colour = {m: f"C{i}" for i, m in enumerate(METHODS)}
    for ax, name in zip(axes.flat, problems):
        for r in rows:
            if r["problem"] == name and r["status"] == "ok" and r["curve"]:
                t, v = zip(*r["curve"])
                ax.plot(t, v, label=r["label"], color=colour[r["method"]], ls="--" if r["method"] == "adam" else "-")
        ax.set(title=textwrap.fill(f"{name}: {problems[name]['desc']}", 70), xlabel="seconds",
               ylabel=f"best val MSE / {problems[name]['scale_name']}", yscale="log")
        ax.title.set_fontsize(8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(problems):]:
        ax.axis("off")
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def report(rows: list[dict], problems: dict, png: Path | None) -> None:
    """Print the result table and the curves at fixed times; plot them to png if given."""
    print("\ntest MSE / scale (the kept solution chosen on the validation split):")
    print(table(rows, problems))
    print("\nbest validation MSE / scale at t seconds (the engine's hidden-layer fits record one point per round):")
    print(curves(rows))
    if png:
        plot(rows, problems, png)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default="linear,two,three")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seconds", type=float, default=60.0, help="wall time per method and problem")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="the one device of every method: cpu, cuda, cuda:1 ...")
    ap.add_argument("--batch", type=int, default=None, help="rows per generation of every method (default: ola.fit's "
                                                            "own for the engine, 256 CPU / 1024 CUDA for the rest)")
    ap.add_argument("--population", type=int, default=None, help="the engine's candidates per row in every search "
                                                                 "(default: ola.fit's and ola.Refine.measured's "
                                                                 "own); the peers keep theirs")
    ap.add_argument("--refine-strategy", default=None, help="strategy of the refinements' searches (ola-refine, "
                                                             "ola-random, ola-carry); 'fit' = the fit's own (default: "
                                                             "ola.Refine's)")
    ap.add_argument("--no-skip", action="store_true", help="every method fits the net whose readout reads the hidden "
                                                           "units only (the plain 2-layer net: 9,328 numbers on "
                                                           "two); engine: ola-random and ola-carry only")
    ap.add_argument("--rows", type=int, default=20_000, help="training rows, validation split included")
    ap.add_argument("--noise", type=float, default=0.02, help="teacher noise of the synthetic problems")
    ap.add_argument("--store", default=None, help="store of `osd precompute frames` for the decoder problem "
                                                  "(default $OSD_PEERS_STORE)")
    ap.add_argument("--decoder-window", type=int, default=3)
    ap.add_argument("--decoder-hidden", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("peers.json"))
    ap.add_argument("--plot", action="store_true", help="also write the curves to OUT with .png")
    ap.add_argument("--from-json", type=Path, default=None, help="run nothing: print the tables (and --plot) of "
                                                                 "an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.from_json:
        doc = json.loads(args.from_json.read_text())
        report(doc["rows"], doc["problems"], args.from_json.with_suffix(".png") if args.plot else None)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    methods, names = args.methods.split(","), args.problems.split(",")
    bad = [m for m in methods if m not in METHODS] + [p for p in names if p not in ("linear", "two", "three",
                                                                                        "decoder")]
    if bad:
        raise SystemExit(f"unknown method or problem {bad}; methods: {METHODS}, problems: linear,two,three,decoder")
    if args.no_skip and set(methods) & (set(ENGINE) - {"ola-random", "ola-carry"}):
        raise SystemExit("--no-skip: of the engine's methods only ola-random and ola-carry (random starts) fit the net "
                         "without the readout's input columns; the cascade grows units as corrections to them")
    if {"ola-random", "ola-carry"} & set(methods) and "three" in names:
        raise SystemExit("ola-random and ola-carry start one hidden layer (ola.Refine(start='random')): leave out the "
                         "problem three")
    machine = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith("cuda") else \
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()  # the dev box is shared: the 1/5/15-minute load beside the figures
    print(f"# bench/peers.py on {machine}, torch {torch.__version__}, {when}, load {load}", flush=True)
    rows, problems = [], {}
    for name in names:
        case = make_case(name, args)
        problems[name] = {"desc": case.desc, "hidden": list(case.hidden), "scale_name": case.scale_name,
                          "scale": case.scale, "n_train": case.x.shape[0], "n_val": case.x_val.shape[0],
                          "n_test": case.x_test.shape[0]}
        print(f"{name}: {case.desc}, hidden={case.hidden}, {case.scale_name} {case.scale:.4g}", flush=True)
        for method in methods:
            if method == "ola1" and not case.hidden:
                continue  # the same fit as ola
            r = run_method(method, case, args.seconds, args.device, args.seed, args.batch,
                           population=args.population, refine_strategy=args.refine_strategy, skip=not args.no_skip)
            rows.append(r)
            if r["status"] == "ok":
                print(f"  {method:7s} test/{case.scale_name} {r['ratio']:9.3f}  val {r['val_ratio']:9.3f}  "
                      f"gens {r['generations']:7d}  {r['wall_s']:6.1f}s  {r['params']:,} params", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)  # written after every problem: a long run keeps its rows
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "machine": machine, "when": when,
                                        "torch": torch.__version__, "threads": torch.get_num_threads(),
                                        "device": args.device, "seconds": args.seconds,
                                        "load_at_start": load, "load_now": os.getloadavg(), "problems": problems,
                                        "rows": rows}, indent=1))
    report(rows, problems, args.out.with_suffix(".png") if args.plot else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
