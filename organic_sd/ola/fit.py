"""`ola.fit`: clone a mapping x -> y into an OLA module by evolution, without gradients."""

from __future__ import annotations

import dataclasses
import time
import warnings

import torch

from organic_sd import dist
from organic_sd.devices import resolve_device
from organic_sd.ola import cascade
from organic_sd.ola.checks import as_matrix, check_pair
from organic_sd.ola.module import OLAConfig, OLAModule
from organic_sd.ola.population import Subspace
from organic_sd.ola.readout import Data, fit_readout
from organic_sd.ola.refine import Refine, random_units
from organic_sd.ola.refine import refine as refine_units
from organic_sd.ola.search import Budget
from organic_sd.ola.strategies import AUTO, make_strategy

DEFAULT_GENERATIONS = 2000  # when neither max_seconds nor generations is given
MAX_HELDOUT = 10_000  # rows split off for selection when no x_val is given
JUDGE_AFTER = 100  # generations after which a fresh fit no better than predicting zero is an error, not bad luck
# Rows per generation when batch_size is not given. On a GPU a generation of 32,768 rows costs ~2.2x one of 4,096 and
# took the staged O-Decoder 0.18 dB further in the same 8.4 minutes (docs/BENCHMARKS.md, "Rows per generation on
# the GPU"); wide outputs or hidden layers make the (P, B, width) scratch large, so the default shrinks to keep it
# under CUDA_SCRATCH elements (and a small card's share), never below CUDA_MIN_BATCH.
CPU_BATCH, CUDA_BATCH, CUDA_MIN_BATCH, CUDA_SCRATCH = 1024, 32768, 4096, 2**29


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C while a fit grew hidden units; `.module` holds the units grown so far (pass it as `init` to go on)."""

    def __init__(self, module: OLAModule):
        super().__init__("fit interrupted while growing hidden units")
        self.module = module


class FitDidNotLearn(RuntimeError):
    """A fresh fit whose kept module is no better on held-out rows than predicting zero; `.module` holds it."""

    def __init__(self, message: str, module: OLAModule):
        super().__init__(message)
        self.module = module


class BudgetWarning(RuntimeWarning):
    """A fit whose time budget ended before it grew every hidden unit asked for (the module holds those grown)."""


class NoProgressWarning(RuntimeWarning):
    """A fit continued from `init` whose kept module is no better on held-out rows than `init` was."""


def fit(x, y, *, hidden=(), strategy="auto", population=40, out_scale=1.0,
        max_seconds=None, generations=None, batch_size=None,
        x_val=None, y_val=None, device="cpu", seed=0, progress=False, init=None,
        subspace: Subspace = Subspace(), units_per_round: int = cascade.UNITS_PER_ROUND,
        refine: Refine = Refine()) -> OLAModule:
    """Evolve an OLA module y ~ out_scale * tanh(...) on x (N, in), y (N, out); returns the best by held-out loss.

    `init`, a module from an earlier fit of the same shape, continues that search: its
    hidden units are kept and its readout is the starting point (resumable training). A module
    whose growth was cut short goes on growing from where it stopped: Ctrl-C during the
    cascade raises FitInterrupted, a KeyboardInterrupt that carries the units grown so far.
    `subspace` (population.Subspace) lets units and readout search only the principal directions
    holding a share of their inputs' variance; the default searches every direction.
    `units_per_round`: hidden units grown side by side before the readout is re-fitted (cascade.py).
    `refine` (refine.Refine): the share of the budget, after growing, that moves the last hidden layer's
    units together (Jacobi Gauss-Newton rounds, refine.py); a continued fit of a grown module spends
    that share there instead of on the readout alone. The default, share 0, grows units only;
    `Refine(start="random")` starts one hidden layer from random units instead of growing it.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    x, y = as_matrix("x", x, dev), as_matrix("y", y, dev)
    check_pair(x, y)
    hidden = tuple(int(h) for h in ((hidden,) if isinstance(hidden, int) else hidden))
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {hidden}")
    if units_per_round < 1:
        raise ValueError(f"units_per_round must be at least 1, got {units_per_round}")
    if out_scale <= 0:
        raise ValueError(f"out_scale must be positive, got {out_scale}")
    if generations is not None and generations < 1:
        raise ValueError(f"generations must be at least 1, got {generations}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    outside = float((y.abs() >= out_scale).float().mean())
    if outside > 0.10:
        warnings.warn(f"{outside:.1%} of y lies outside (-out_scale, out_scale) = (-{out_scale}, {out_scale}); "
                      "tanh cannot reach it: raise out_scale", stacklevel=2)

    if init is not None:
        _check_init(init, x.shape[1], y.shape[1], hidden, out_scale)
        if not refine.readout_inputs and bool(init.readout.weight[:, :init.config.in_dim].any()):
            raise ValueError("init's readout reads the inputs; Refine(readout_inputs=False) would drop those columns: "
                             "continue it with readout_inputs=True")
    gen = torch.Generator(device=dev).manual_seed(seed)
    x, y, x_val, y_val = _split(x, y, x_val, y_val, dev, seed)
    if generations is None and max_seconds is None:
        generations = DEFAULT_GENERATIONS
    if batch_size is None:
        batch_size = default_batch_size(dev, max(population, refine.population or 0), max((y.shape[1], *hidden)))
        if dev.type == "cuda" and dist.world_size() > 1:  # every rank draws the same rows: the smallest card decides
            batch_size = min(dist.all_gather_object(batch_size))
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    budget = Budget(max_seconds, generations, start=t0)
    data = Data(x, y, x_val, y_val, min(batch_size, x.shape[0]), gen)
    name = AUTO if strategy == "auto" else strategy
    make = lambda: make_strategy(name, population)  # noqa: E731  (fresh strategy per search)
    make()  # fail fast on a bad name
    refine_name = name if refine.strategy is None else refine.strategy
    make_refine = lambda: make_strategy(refine_name, refine.population or population)  # noqa: E731

    interrupted = False
    with torch.no_grad():
        start = None if init is None else ([(l.weight.to(dev), l.bias.to(dev)) for l in init.hidden],
                                           torch.cat([init.readout.weight, init.readout.bias[:, None]], dim=1).to(dev))
        if hidden and (init is None or tuple(init.config.hidden) != hidden):  # grow, or go on growing
            first = budget.share(1.0 - refine.share) if refine.share else budget
            if refine.start == "random" and init is None:
                layers, readout, curve, gens, interrupted = random_units(
                    data, hidden, out_scale, make_refine, first, progress, subspace.spread, subspace.readout,
                    refine.readout_inputs)
            else:
                layers, readout, curve, gens, interrupted = cascade.grow(
                    data, hidden, out_scale=out_scale, make_strategy=make, budget=first, progress=progress,
                    subspace=subspace, units_per_round=units_per_round, start=start)
            if refine.share and not interrupted and layers:  # (a budget that grew no unit leaves nothing to move)
                layers, readout, more, more_gens, interrupted = refine_units(data, layers, readout, out_scale,
                                                                              make_refine, budget, refine, progress)
                # the refinement counts its own generations from 0: its curve continues the growth's count
                curve = curve + [(t, gens + g, v) for t, g, v in more[1:]]
                gens += more_gens
        elif init is not None and hidden and refine.share:
            layers, readout, curve, gens, interrupted = refine_units(data, start[0], start[1], out_scale,
                                                                      make_refine, budget, refine, progress,
                                                                      warm=True)
        elif init is not None:
            layers = start[0]
            feats, feats_val = cascade.layer_features(x, layers), cascade.layer_features(x_val, layers)
            readout, res = fit_readout(data, feats, feats_val, out_scale, make(), budget, start[1], progress,
                                       subspace.readout)
            curve, gens = res.curve, res.generations
        else:
            readout, res = fit_readout(data, [x], [x_val], out_scale, make(), budget, None, progress, subspace.readout)
            layers, curve, gens = [], res.curve, res.generations
        grown = tuple(w.shape[0] for w, _ in layers)  # == hidden unless Ctrl-C or the time budget cut growth short
        module = OLAModule(OLAConfig(x.shape[1], y.shape[1], grown, out_scale))
        module.to(dev)
        for layer, (w, b) in zip(module.hidden, layers):
            layer.weight.copy_(w), layer.bias.copy_(b)
        module.readout.weight.copy_(readout[:, :-1]), module.readout.bias.copy_(readout[:, -1])
        val_mse = float((module(x_val) - y_val).square().mean())
        # where the search started: the zero readout predicts 0; a continued fit starts at `init`
        start_pred = 0.0 if init is None else cascade.predict(cascade.layer_features(x_val, start[0]), start[1], out_scale)
        start_mse = float((start_pred - y_val).square().mean())
    module.training_summary = {
        "strategy": name, "population": population, "hidden": list(hidden), "units_per_round": units_per_round,
        "generations": gens,
        "seconds": round(time.perf_counter() - t0, 3), "batch_size": data.batch_size, "device": str(dev),
        "seed": seed, "n_train": x.shape[0], "n_val": x_val.shape[0], "val_mse": val_mse,
        "refine": dataclasses.asdict(refine),
        "subspace": {"units": subspace.units, "readout": subspace.readout, "hessian": subspace.hessian,
                     "deflate": subspace.deflate, "spread": subspace.spread},
        "curve": [[round(s, 3), g, v] for s, g, v in _thin(curve, 200)],
    }
    if interrupted:
        raise FitInterrupted(module)
    if grown != hidden:
        warnings.warn(f"the time budget ended after growing {grown or 'no'} of hidden={hidden} units: pass this "
                      "module as init to grow the rest", BudgetWarning, stacklevel=2)
    _check_progress(module, val_mse, start_mse, fresh=init is None)
    return module


def _check_progress(module, val_mse, start_mse, fresh):
    """Never hand back a module that learned nothing as if it were a result: raise or warn, and say so in its summary.

    A fresh fit that searched for JUDGE_AFTER generations or more and is no better than predicting
    zero is an error; one whose budget ended sooner, or a continued fit, gets a NoProgressWarning.
    """
    s = module.training_summary
    s["learned"] = start_mse == 0.0 or val_mse < start_mse * (1.0 - 1e-6)
    if s["learned"]:
        return
    facts = (f"held-out MSE {val_mse:.6g} vs {start_mse:.6g} at the start, after {s['generations']} generations "
             f"in {s['seconds']} s on {s['n_train']:,} rows")
    if fresh and s["generations"] >= JUDGE_AFTER:
        raise FitDidNotLearn(f"the fit learned nothing: {facts}. Look for inputs with wildly different scales or "
                             "constant columns, or targets that are noise; `.module` holds the result", module)
    hint = "; the budget ended before the search could start: give it more time" if s["generations"] == 0 else ""
    what = "the fit" if fresh else "continuing from init"
    warnings.warn(f"{what} improved nothing: {facts}{hint}", NoProgressWarning, stacklevel=3)


def default_batch_size(device: torch.device | str, population: int, width: int, memory: int | None = None) -> int:
    """Rows per generation for a fit on `device` whose widest layer has `width` neurons (see CUDA_BATCH).

    `memory`: the card's bytes (default: asked of CUDA); one (P, B, width) float32 tensor stays within a sixteenth of
    them too (a few are alive at once), so a small card gets fewer rows, not an out-of-memory error.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH
    if memory is None:
        memory = torch.cuda.get_device_properties(device).total_memory
    scratch = min(CUDA_SCRATCH, memory // 16 // 4)  # float32 elements
    return max(CUDA_MIN_BATCH, min(CUDA_BATCH, scratch // max(1, population * width)))


def _check_init(init, in_dim, out_dim, hidden, out_scale):
    """Raise a ValueError unless `init` is a module this fit can continue."""
    if not isinstance(init, OLAModule):
        raise ValueError(f"init must be an OLAModule (from ola.fit or ola.load), got {type(init).__name__}")
    c = init.config
    if (c.in_dim, c.out_dim) != (in_dim, out_dim):
        raise ValueError(f"init maps {c.in_dim} -> {c.out_dim} but the data is {in_dim} -> {out_dim}")
    if tuple(c.hidden) != tuple(hidden) and not grown_part_of(tuple(c.hidden), tuple(hidden)):
        raise ValueError(f"init has hidden={tuple(c.hidden)} but hidden={tuple(hidden)} was asked for")
    if c.out_scale != out_scale:
        raise ValueError(f"init has out_scale={c.out_scale} but out_scale={out_scale} was asked for")


def grown_part_of(have: tuple, hidden: tuple) -> bool:
    """True if layers `have` are where growing `hidden` (layer by layer) can stop: none yet, full layers, one partial."""
    if not have:  # stopped before the first round ended: the linear readout, from which growth starts
        return len(hidden) > 0
    return (len(have) <= len(hidden) and have[:-1] == hidden[:len(have) - 1]
            and 0 < have[-1] <= hidden[len(have) - 1])


def _split(x, y, x_val, y_val, dev, seed):
    """Held-out rows: the given ones, else a seeded random slice of the training rows."""
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val, or neither")
    if x_val is not None:
        x_val, y_val = as_matrix("x_val", x_val, dev), as_matrix("y_val", y_val, dev)
        check_pair(x_val, y_val, "x_val", "y_val")
        if x_val.shape[1] != x.shape[1]:
            raise ValueError(f"x_val has {x_val.shape[1]} columns but x has {x.shape[1]}")
        if y_val.shape[1] != y.shape[1]:
            raise ValueError(f"y_val has {y_val.shape[1]} columns but y has {y.shape[1]}")
        return x, y, x_val, y_val
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 samples to hold one out, got {n}")
    n_val = min(MAX_HELDOUT, max(1, n // 10))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev)
    v, t = perm[:n_val], perm[n_val:]
    return x[t], y[t], x[v], y[v]


def _thin(curve, n):
    """At most n points of a curve, keeping the first and the last."""
    if len(curve) <= n:
        return curve
    idx = sorted({round(i * (len(curve) - 1) / (n - 1)) for i in range(n)})
    return [curve[i] for i in idx]
