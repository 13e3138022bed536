"""Refine grown hidden units together: Jacobi Gauss-Newton rounds, every weight still found by evolution.

The cascade grows each unit against the residual of the units before it and never revisits it,
so units grown early are what was best alone, not what is best beside the others. A refinement
round moves every unit of the last hidden layer at once:
  1. linearise the output loss around the current module (data statistics, no gradients): for
     row n and unit j, moving h_nj by d changes the squared error by about q_nj d^2 - 2 c_nj d,
     with c = (e * g) @ V_j and q = g^2 @ V_j^2, where e is the residual, g = s (1 - tanh^2) the
     readout's slope and V_j the unit's readout column;
  2. evolve each unit's weights (one row per unit, the per-row search the readout uses) to
     minimise that change, each unit assuming the others stay where they are (Jacobi);
  3. re-evolve the readout over the moved units, warm-started.
The module kept is the best on held-out rows over all rounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from organic_sd.ola.cascade import layer_features, predict
from organic_sd.ola.population import Whitener, squash
from organic_sd.ola.readout import Data, chunked, fit_readout
from organic_sd.ola.search import Budget, run_search
from organic_sd.strategy_names import STRATEGY_NAMES


@dataclass(frozen=True)
class Refine:
    """How a refinement spends its share of a fit's budget."""

    share: float = 0.0  # of the fit's budget; 0 grows units only (the cascade alone)
    unit_generations: int = 300  # per round, for the units' search
    readout_generations: int = 200  # per round, for the readout's re-fit
    damping: float = 1.0  # scales each unit's linearised gain: < 1 when the Jacobi moves overshoot
    step: float = 0.5  # the units' search step (whitened weights, divided by sqrt(in + 1))
    # where the units start: "cascade" grows them greedily first; "random" draws them (one hidden layer) and
    # spends the rest of the budget on a readout over them. A greedy start can leave the units where no move of
    # theirs helps (a 6-4-3 teacher, 16 units: cascade then refine 4.2-4.4x the noise floor, random then refine
    # 1.4-2.1x, Adam 1.06x; docs/BENCHMARKS.md)
    start: str = "cascade"
    # each round's searches resume from the step sizes the last round's ended with (between `step_floor` x and 1 x
    # the start) instead of starting over, so short rounds still move (docs/BENCHMARKS.md, "carried steps")
    carry_steps: bool = False
    # carried steps never fall below this fraction of the start: on minibatch losses the searches' step sizes shrink
    # round after round (start random, rounds of 20: 1/250 of the start after 40 rounds, and the refinement stalls;
    # `two` at 5,000 generations, teacher seeds 3 and 6: floor 0.1 93x, 0.3 47x, 0.5 75x)
    step_floor: float = 0.3
    floor_decay: float = 1.0  # a round that beats no earlier one multiplies the floor by this (1: a fixed floor)
    # candidates per row of the refinement's searches (and of a random start's readout); None: the fit's own
    population: int | None = None
    # the refinement's search strategy (and a random start's readout's); None: the fit's own
    strategy: str | None = None
    # False: the readout reads the hidden units only (the inputs' columns stay zero), the plain two-layer net. A
    # random start's readout then searches 65 numbers a row instead of 161 on `two` of bench/peers.py, 3x lower
    # error at 60 s; on O-Decoder rows, whose targets lean on the latent window itself, 25% higher (docs/BENCHMARKS.md)
    readout_inputs: bool = True

    @classmethod
    def measured(cls, share: float, start: str = "cascade", readout_inputs: bool = True) -> "Refine":
        """The rounds measured best for `start`: random units refine in short rounds with carried steps whose floor
        halves after a round that gains nothing (`two`, 15,000 generations: 21.4x against 23.0x with a fixed floor).

        (`two` of bench/peers.py, 60 s, start random: rounds of 20 / 20 with carried steps 35-53x the noise floor on
        2 CPU threads and 11-17x on one H200, rounds of 100 / 100 started over 108x / 34x; docs/BENCHMARKS.md)
        `readout_inputs=False`: the readout over the hidden units only, with the population measured for it.
        """
        if start == "random":
            # 64 candidates per row, not the fit's 40 (`two`, 60 s, 2 CPU threads, teacher seeds 3 + 6: 20 -> 144x,
            # 40 -> 41.7x, 64 -> 34.0x, 96 -> 49.2x, 128 -> 73.5x; the cascade does not gain from 64), drawn along
            # directions every row shares (SharedSNES: seeds 3 + 6, 127.1x -> 73.9x on a slow day; docs/BENCHMARKS.md).
            # A readout over the units only searches 65 numbers a row, not 161, and 32 candidates do (same seeds:
            # 16 -> 23.3x, 32 -> 1.47x, 64 -> 9.21x, 128 -> 48.9x)
            return cls(share=share, start=start, unit_generations=20, readout_generations=20, carry_steps=True,
                       floor_decay=0.5, population=64 if readout_inputs else 32, strategy="snes-shared",
                       readout_inputs=readout_inputs)
        return cls(share=share, start=start, readout_inputs=readout_inputs)  # __post_init__ refuses False here

    def __post_init__(self):
        if not 0.0 <= self.share < 1.0:
            raise ValueError(f"Refine.share must be in [0, 1), got {self.share}")
        if self.start not in ("cascade", "random"):
            raise ValueError(f"Refine.start must be 'cascade' or 'random', got {self.start!r}")
        if self.start == "random" and self.share == 0.0:
            raise ValueError("Refine(start='random') needs a share > 0: random units that never move are not a fit")
        for name in ("unit_generations", "readout_generations"):
            if getattr(self, name) < 1:
                raise ValueError(f"Refine.{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.step_floor <= 1.0:
            raise ValueError(f"Refine.step_floor must be in [0, 1], got {self.step_floor}")
        if not 0.0 < self.floor_decay <= 1.0:
            raise ValueError(f"Refine.floor_decay must be in (0, 1], got {self.floor_decay}")
        if self.strategy is not None and self.strategy not in ("auto", *STRATEGY_NAMES):
            raise ValueError(f"Refine.strategy must be one of {('auto', *STRATEGY_NAMES)} or None, "
                             f"got {self.strategy!r}")
        if not self.readout_inputs and self.start != "random":
            raise ValueError("Refine(readout_inputs=False) needs start='random': the cascade grows its units as "
                             "corrections to a readout over the inputs")
        if self.population is not None and self.population < 2:
            raise ValueError(f"Refine.population must be at least 2 (or None: the fit's), got {self.population}")
        if self.damping <= 0 or self.step <= 0:
            raise ValueError(f"Refine.damping and Refine.step must be positive, got {self.damping}, {self.step}")


def random_units(data: Data, hidden, out_scale, make_strategy, budget: Budget, progress=False, spread: float = 1.0,
                 readout_share: float = 1.0, readout_inputs: bool = True):
    """One hidden layer of random tanh units and the readout evolved over them: refinement's other starting point.

    Each unit is a random direction of the raw inputs, so it follows their principal directions as they vary
    (drawn evenly in whitened coordinates instead, most units read the many faint directions: `two` of
    bench/peers.py at 60 s, teacher seed 6, 191x the floor against 87.5x), scaled to pre-activation std `spread`
    over the rows (the cascade's bound); drawn from the fit's seeded generator, so every rank draws the same.
    `readout_inputs=False`: the readout reads the units only. Returns (layers, readout, curve, generations,
    interrupted) like cascade.grow.
    """
    if len(hidden) != 1:
        raise ValueError(f"Refine(start='random') starts one hidden layer (the one refinement moves), got {hidden}")
    wh = Whitener.fit(data.x)
    k = data.x.shape[1]
    theta = torch.randn(hidden[0], k + 1, generator=data.generator, device=data.x.device)  # (H, k+1) whitened
    w = theta[:, :-1] * wh.variance.to(theta.device).sqrt()  # a raw random direction, in whitened coordinates
    theta[:, :-1] = spread * w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)  # whitened norm = pre-activation std
    theta[:, -1] *= 0.5 * spread
    rows = wh.to_raw(theta)
    layers = [(rows[:, :-1], rows[:, -1])]
    # Ctrl-C here propagates, as before the cascade's first readout: random units with no readout are nothing to keep
    readout, res = fit_readout(data, layer_features(data.x, layers), layer_features(data.x_val, layers), out_scale,
                               make_strategy(), budget, None, progress, readout_share, inputs=readout_inputs)
    return layers, readout, list(res.curve), res.generations, False


def refine(data: Data, layers, readout, out_scale, make_strategy, budget: Budget, config: Refine,
           progress=False, warm: bool = False):
    """Refine the last hidden layer of `layers` [(W, b)] and `readout` (out, F+1) until `budget` is spent.

    `warm`: the layer is already fitted (a continued fit), so with carried steps the first round's unit searches
    start at the floor, not the full step: from the full step a fitted decoder's later ticks never beat their start
    (O-Decoder trainer, held-out split: 20.70 dB against 20.48; docs/BENCHMARKS.md).

    Returns (layers, readout, curve, generations, interrupted): the round with the lowest held-out
    MSE; Ctrl-C ends the refinement at the best round so far.
    """
    *below, (w, b) = layers
    inp, inp_val = layer_features(data.x, below)[-1], layer_features(data.x_val, below)[-1]  # what the layer reads
    wh = Whitener.fit(inp)
    z, z_val = wh(inp), wh(inp_val)
    first = data.x.shape[1] + sum(lw.shape[0] for lw, _ in below)  # readout column of the layer's first unit
    H = w.shape[0]
    rows = torch.cat([w, b[:, None]], dim=1)  # (H, in+1) raw

    def with_rows(r):
        return [*below, (r[:, :-1], r[:, -1])]

    def val_mse(r, ro):
        return float((predict(layer_features(data.x_val, with_rows(r)), ro, out_scale) - data.y_val).square().mean())

    best = {"mse": val_mse(rows, readout), "rows": rows, "readout": readout}
    unit_sigma = config.step / math.sqrt(rows.shape[1])
    unit_step = readout_step = None  # carried between rounds with config.carry_steps
    floor = config.step_floor
    if warm and config.carry_steps:
        unit_step = torch.full_like(rows, floor * unit_sigma)  # (H, in+1)
    out_dim = data.y.shape[1]  # the curve holds held-out MSE summed over outputs, like the searches' curves
    curve, gens, interrupted = [(budget.elapsed(), 0, best["mse"] * out_dim)], 0, False
    try:
        while not budget.done(0):
            if budget.generations is not None and budget.generations - budget.used < 2:
                break  # a round is a unit search and a readout re-fit: not one generation over the budget
            h, c, q = _linearise(layer_features(data.x, with_rows(rows)), data.y, readout, out_scale, first, H)
            h_val, c_val, q_val = _linearise(layer_features(data.x_val, with_rows(rows)), data.y_val, readout,
                                             out_scale, first, H)

            # a unit's move d = tanh(a) - h = 2 v with v = sigmoid(2a) - (1 + h) / 2 (`squash`, faster than tanh)
            mid, mid_val = (1 + h) / 2, (1 + h_val) / 2

            def gain(theta, zz, mm, cc, qq):
                v = squash(theta, zz).sub_(mm)  # (P, B, H): half of each unit's move
                # (q v - damping c) v in one new (P, B, H) tensor, the rest in place: q d^2 - 2 damping c d, (P, H)
                return torch.addcmul(cc * -config.damping, qq, v).mul_(v).mean(1).mul_(4)

            def batch_loss(theta):
                i = data.batch_index()
                return gain(theta, z[i], mid[i], c[i], q[i])

            def val_loss(theta):
                return chunked(lambda t: gain(t, z_val, mid_val, c_val, q_val), theta, z_val.shape[0])

            sigma0 = unit_sigma if unit_step is None else unit_step.clamp(floor * unit_sigma, unit_sigma)
            found = run_search(make_strategy(), batch_loss, val_loss, wh.from_raw(rows), sigma0,
                               _round(budget, config.unit_generations, keep=1), data.generator, progress=progress,
                               desc="refine units", keep_step=config.carry_steps, shared_loss=True)
            rows = wh.to_raw(found.theta)
            feats, feats_val = layer_features(data.x, with_rows(rows)), layer_features(data.x_val, with_rows(rows))
            readout, res = fit_readout(data, feats, feats_val, out_scale, make_strategy(),
                                       _round(budget, config.readout_generations), readout, progress,
                                       step=readout_step, step_floor=floor, keep_step=config.carry_steps,
                                       inputs=config.readout_inputs)
            if config.carry_steps:
                unit_step, readout_step = found.step, res.step
            gens += found.generations + res.generations
            mse = val_mse(rows, readout)
            curve.append((budget.elapsed(), gens, mse * out_dim))
            if mse < best["mse"]:
                best = {"mse": mse, "rows": rows, "readout": readout}
            else:
                floor *= config.floor_decay
    except KeyboardInterrupt:
        interrupted = True
    return with_rows(best["rows"]), best["readout"], curve, gens, interrupted


def _linearise(feats, y, readout, out_scale, first, H):
    """The current units h (N, H) and the Gauss-Newton terms c, q (N, H) of each unit's move."""
    u = torch.cat(feats, dim=1)
    th = torch.tanh(u @ readout[:, :-1].T + readout[:, -1])  # (N, out)
    e = y - out_scale * th
    g = out_scale * (1 - th * th)  # the readout's slope
    v = readout[:, first:first + H]  # (out, H): the units' readout columns
    return u[:, first:first + H], (e * g) @ v, (g * g) @ v.square()


def _round(budget: Budget, generations: int, keep: int = 0) -> Budget:
    """A round's budget: `generations`, or less where the parent budget has less left (`keep` of it for later)."""
    secs = None if budget.seconds is None else max(0.0, budget.seconds - budget.elapsed())
    if budget.generations is not None:
        generations = max(1, min(generations, budget.generations - budget.used - keep))
    return Budget(secs, generations, parent=budget)
