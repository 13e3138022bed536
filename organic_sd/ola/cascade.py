"""Hidden layers without gradients: grow tanh units in rounds (a cascade).

Evolving a whole network at once is slow (measured: a whole-network SNES trailed a cascade by 2 dB
on the O-Decoder). Instead, each round:
  1. take the residual of the current model on the training rows (data statistics);
  2. evolve U new tanh units side by side, each maximising the residual energy it explains
     beyond a linear readout of its inputs (cascade-correlation), in the principal subspace the
     caller allows (population.Subspace; with Subspace.hessian, each unit in a few directions of its
     own where the residual bends, hessian_directions), with weights bounded so no unit saturates into a step;
     the units start from different random points, so they settle on different features:
     U searches, one tensor;
  3. re-evolve the readout per output neuron on [inputs, all units so far], warm-started.
Layer l+1 grows on the outputs of layer l once layer l is complete.
"""

from __future__ import annotations

import math

import torch

from organic_sd.ola.distributed import shard_rows
from organic_sd.ola.population import Subspace, Whitener, explained_loss, spread_rows
from organic_sd.ola.readout import fit_readout
from organic_sd.ola.search import run_search

# Units of one round chase the same residual and long searches make them near copies; smaller
# rounds refresh the residual more often (8 vs 16: O-Decoder Set14 +0.14 dB over two seeds, 2-layer
# bench better) but leave each round less search time (4 and 2 did worse; the denoiser keeps 16 at
# CPU budgets, ounet/train.py). docs/BENCHMARKS.md.
UNITS_PER_ROUND = 8
FIRST_READOUT_SHARE = 0.2  # of the whole budget, for the linear readout before any unit
UNIT_SHARE = 0.5  # of each round, the rest re-fits the readout
UNIT_BATCH_FACTOR = 4  # a unit's worth is a small correlation: it needs bigger batches than the readout
# A unit's weights, in whitened coordinates, have norm at most this: its pre-activation has at most
# this std over the training rows. Unbounded searches drive two thirds of the pre-activations past
# +-2, where a unit is a step function that fits the training rows and misplaces others' (2-layer
# bench: MSE/floor 8.57 -> 6.45; denoiser store error 0.029 -> 0.019; docs/BENCHMARKS.md).
UNIT_SPREAD = 1.0
HESSIAN_ROWS = 20_000  # rows that estimate each unit's principal Hessian directions


def grow(data, hidden, *, out_scale, make_strategy, budget, progress, subspace=Subspace(),
         units_per_round=UNITS_PER_ROUND, start=None):
    """Grow `hidden` layers, `units_per_round` units at a time, and fit the readout.

    `start` = ([(W, b)], readout) of a module whose growth stopped early (whole layers, then part of
    one) goes on growing from there.
    Ctrl-C stops growing at a consistent point: the units grown so far, with a readout over them.
    Returns ([(W, b)] of the layers grown, readout (out, F+1), curve, generations, interrupted).
    """
    have = [w.shape[0] for w, _ in (start[0] if start else [])]
    have += [0] * (len(hidden) - len(have))  # units each layer already has
    rounds = [(l, min(units_per_round, w - s)) for l, w in enumerate(hidden)
              for s in range(have[l], w, units_per_round)]
    units = [[] for _ in hidden]  # per layer: rounds of raw rows (U, in_l + 1)
    curve, gens, interrupted = [], 0, False
    try:
        if start is None:
            readout, res = fit_readout(data, [data.x], [data.x_val], out_scale, make_strategy(),
                                       budget.share(FIRST_READOUT_SHARE), None, progress, subspace.readout)
            curve, gens = list(res.curve), res.generations
        else:
            for layer, (w, b) in enumerate(start[0]):
                units[layer].append(torch.cat([w, b[:, None]], dim=1))
            readout = start[1]

        for r, (layer, n_units) in enumerate(rounds):
            if budget.seconds is not None and budget.elapsed() >= budget.seconds:
                # a round's setup (whitening, features) costs seconds even with no time left to search: stop
                # here, as Ctrl-C would, so the budget is kept; `init` = this module grows the rest
                break
            round_budget = budget.share(1.0 / (len(rounds) - r))
            feats, feats_val = features(data.x, units), features(data.x_val, units)
            new_rows, unit_gens = _evolve_units(
                data, feats[layer], feats_val[layer], resid=data.y - predict(feats, readout, out_scale),
                resid_val=data.y_val - predict(feats_val, readout, out_scale), n_units=n_units,
                make_strategy=make_strategy, budget=round_budget.share(UNIT_SHARE), progress=progress,
                desc=f"units L{layer + 1} r{r + 1}", share=subspace.units, hessian=subspace.hessian,
                deflate=subspace.deflate, spread=subspace.spread)
            # The old readout widened with zero columns for the new units: consistent with them (an
            # interrupt from here on keeps both) and the warm start of the re-fit.
            units[layer].append(new_rows)
            readout = _insert_zero_columns(readout, data.x.shape[1], units, layer, n_units)
            gens += unit_gens
            feats, feats_val = features(data.x, units), features(data.x_val, units)
            readout, res = fit_readout(data, feats, feats_val, out_scale, make_strategy(),
                                       round_budget.share(1.0), readout, progress, subspace.readout)
            gens += res.generations
            curve.append((budget.elapsed(), gens, res.curve[-1][2]))
    except KeyboardInterrupt:
        if start is None and not curve:  # not even the linear readout yet: nothing to keep
            raise
        interrupted = True

    return [stack(u) for u in units if u], readout, curve, gens, interrupted


def _evolve_units(data, inp, inp_val, *, resid, resid_val, n_units, make_strategy, budget, progress, desc, share,
                  hessian=0, deflate=False, spread=UNIT_SPREAD):
    """Evolve n_units tanh units on inputs (N, in) against the residual (N, out) -> (raw rows (U, in+1), generations)."""
    wh = Whitener.fit(inp)
    z, zv = wh(inp), wh(inp_val)
    basis_val = _basis(zv)
    k = wh.principal_dims(share)
    zs, zvs = z[:, -k:], zv[:, -k:]  # (N, k): the top principal coordinates (whitening sorts them last)
    strategy = make_strategy()
    # a unit's objective uses the whole residual but only its own row: units split across ranks as they are.
    # Deflated, unit r also needs units 0..r-1 every generation: the round runs whole on every rank.
    shard = None if deflate else shard_rows(strategy, n_units)
    dirs = hessian_directions(zs, resid, n_units, min(hessian, k)) if hessian else None  # (U, k, m)
    local = dirs if dirs is None or shard is None else dirs[shard.rows]
    d = (k if dirs is None else dirs.shape[2]) + 1

    def rows(theta, basis):
        """Searched rows (P, R, d) -> unit rows (P, R, k+1) over the top principal coordinates."""
        if basis is None:
            return theta
        return torch.cat([torch.einsum("prm,rkm->prk", theta[..., :-1], basis), theta[..., -1:]], dim=-1)

    def batch_loss(theta):
        i = data.batch_index(UNIT_BATCH_FACTOR * data.batch_size)
        return explained_loss(bounded(rows(theta, local), spread), zs[i], resid[i], _basis(z[i]), deflate)

    def val_loss(theta):
        return explained_loss(bounded(rows(theta, local), spread), zvs, resid_val, basis_val, deflate)

    # Random starts (all-zero starts would make every unit chase the same feature), at twice the
    # bound: the search's mean moves freely past it, only the scored rows are scaled back.
    mean0 = 2.0 * spread * torch.randn(n_units, d, generator=data.generator, device=z.device) / math.sqrt(d)
    # No held-out fall-back here: a unit's explained energy is a small, noisy number and the
    # restarts stalled the unit searches (2-layer bench, 1600 generations: 8.26x with, 7.55x without).
    found = run_search(strategy, batch_loss, val_loss, mean0, spread / math.sqrt(d), budget,
                       data.generator, progress=progress, desc=desc, shard=shard, fallback_tolerance=math.inf)
    theta = bounded(rows(found.theta[None], dirs), spread)[0]  # (U, k+1)
    return wh.to_raw(wh.pad(theta)), found.generations  # zero weight on the dropped coordinates


def hessian_directions(z, resid, n_units, m, max_rows=HESSIAN_ROWS):
    """Per unit, m orthonormal directions (U, k, m) of whitened inputs z (N, k) along which the residual bends most.

    Unit u takes the u-th principal direction of the residual (N, out) and the eigenvectors of
    E[r_u z z^T] with the largest |eigenvalue| (principal Hessian directions, Li 1992): where r_u
    depends on the inputs in a way a linear readout cannot follow. Random directions of a
    whitened 800-d latent window are noise; these are not. A data statistic, like whitening:
    the unit's weights inside the subspace are still found by the search. With more units than
    residual directions, the extra units take the next m eigenvectors of the same direction.
    """
    z, resid = spread_rows(z, max_rows), spread_rows(resid, max_rows)
    rc = resid - resid.mean(0)
    _, _, vt = torch.linalg.svd(rc, full_matrices=False)  # (out, out): rows are principal directions
    n_dirs, k = vt.shape[0], z.shape[1]
    r = rc @ vt[:min(n_units, n_dirs)].T  # (N, D): the residual along each direction some unit takes
    ranked = []  # per direction: eigenvectors (k, k), largest |eigenvalue| first (one eigh per direction)
    for j in range(r.shape[1]):
        evals, evecs = torch.linalg.eigh(((z * r[:, j:j + 1]).T @ z / z.shape[0]).double())  # of (k, k)
        ranked.append(evecs[:, evals.abs().argsort(descending=True)].to(z.dtype))
    out = []
    for u in range(n_units):
        first = min((u // n_dirs) * m, k - m)  # this unit's band of eigenvectors
        out.append(ranked[u % n_dirs][:, first:first + m])
    return torch.stack(out)


def bounded(theta: torch.Tensor, spread: float = UNIT_SPREAD) -> torch.Tensor:
    """Unit rows (..., in+1) in whitened coordinates with their weights scaled down to norm <= spread."""
    w = theta[..., :-1]
    scale = (spread / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    return torch.cat([w * scale, theta[..., -1:]], dim=-1)


def stack(rounds):
    """Rounds of raw unit rows -> one layer's (W (H, in), b (H,))."""
    rows = torch.cat(rounds)
    return rows[:, :-1], rows[:, -1]


def features(x, units):
    """[x, h_1, ..., h_L] for the layers grown so far (a layer with no units yet ends the list)."""
    feats = [x]
    for rounds in units:
        if not rounds:
            break
        w, b = stack(rounds)
        feats.append(torch.tanh(feats[-1] @ w.T + b))
    return feats


def layer_features(x, layers):
    """[x, h_1, ..., h_L] through fixed layers [(W, b)]."""
    feats = [x]
    for w, b in layers:
        feats.append(torch.tanh(feats[-1] @ w.T + b))
    return feats


def predict(feats, readout, out_scale):
    """The readout s * tanh(W [feats] + b) on (N, F) features."""
    u = torch.cat(feats, dim=1)
    return out_scale * torch.tanh(u @ readout[:, :-1].T + readout[:, -1])


def _insert_zero_columns(readout, in_dim, units, layer, n_units):
    """The readout (out, F_old+1) widened with zero columns where `layer`'s n_units new units sit."""
    widths = [sum(r.shape[0] for r in rounds) for rounds in units]
    pos = in_dim + sum(widths[: layer + 1]) - n_units  # first column of the new units
    return torch.cat([readout[:, :pos], readout.new_zeros(readout.shape[0], n_units), readout[:, pos:]], dim=1)


def _basis(z):
    """Orthonormal columns (B, in+1) spanning a batch's inputs and the constant."""
    ones = torch.ones(z.shape[0], 1, device=z.device, dtype=z.dtype)
    q, _ = torch.linalg.qr(torch.cat([z, ones], dim=1))
    return q
