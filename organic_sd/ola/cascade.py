"""Hidden layers without gradients: grow tanh units in rounds (a cascade).

Evolving a whole network at once is slow (notes/calibration.md). Instead, each round:
  1. take the residual of the current model on the training rows, and its top principal
     directions in output space (data statistics, no gradient);
  2. evolve U new tanh units side by side, unit k maximising the squared correlation of its
     output with the residual projected on direction k: U independent searches in one tensor;
  3. re-evolve the readout per output neuron on [inputs, all units so far].
Layer l+1 grows on the outputs of layer l once layer l is complete.
"""

from __future__ import annotations

import math

import torch

from organic_sd.ola.population import Whitener, corr_loss

UNITS_PER_ROUND = 16
READOUT_SHARE = 0.5  # of each round's time, the rest goes to the unit search


def grow(data, hidden, out_scale, make_strategy, budget, progress):
    """Grow `hidden` layers and fit the readout; returns ([(W, b)], readout (out, F+1), curve, generations)."""
    from organic_sd.ola.fit import chunked, fit_readout

    rounds = [(l, min(UNITS_PER_ROUND, w - s)) for l, w in enumerate(hidden) for s in range(0, w, UNITS_PER_ROUND)]
    first = budget.share(1.0 / (2 * len(rounds) + 1))
    readout, res = fit_readout(data, [data.x], [data.x_val], out_scale, make_strategy(), first, None, progress)
    curve, gens = list(res.curve), res.generations
    units = [[] for _ in hidden]  # per layer: list of (U, in_l + 1) raw rows

    for r, (layer, n_units) in enumerate(rounds):
        feats, feats_val = _features(data.x, units), _features(data.x_val, units)
        inp, inp_val = (feats[layer], feats_val[layer])  # this layer's input: x, or the previous layer
        resid = data.y - _predict(feats, readout, out_scale)
        resid_val = data.y_val - _predict(feats_val, readout, out_scale)
        dirs = _residual_directions(resid, n_units)  # (out, U)
        t, t_val = resid @ dirs, resid_val @ dirs  # (N, U), (N_val, U)

        wh = Whitener.fit(inp)
        z, zv = wh(inp), wh(inp_val)
        d = z.shape[1] + 1

        def batch_loss(theta, z=z, t=t):
            i = data.batch_index()
            return corr_loss(theta, z[i], t[i], _basis(z[i]))

        basis_val = _basis(zv)

        def val_loss(theta, zv=zv, t_val=t_val):
            return chunked(lambda th: corr_loss(th, zv, t_val, basis_val), theta, zv.shape[0])

        from organic_sd.ola.search import run_search

        left = len(rounds) - r
        share = budget.share(1.0 / left)
        unit_budget = share.share(1.0 - READOUT_SHARE)
        mean0 = torch.zeros(n_units, d, device=z.device)
        found = run_search(make_strategy(), batch_loss, val_loss, mean0, 1.0 / math.sqrt(d), unit_budget,
                           data.generator, progress=progress, desc=f"units L{layer + 1} r{r + 1}")
        units[layer].append(wh.to_raw(found.theta))
        gens += found.generations

        # Readout over [x, every unit]; the old readout is the warm start, new units begin at 0.
        feats, feats_val = _features(data.x, units), _features(data.x_val, units)
        n_old = readout.shape[1] - 1
        init = torch.zeros(readout.shape[0], sum(f.shape[1] for f in _readout_inputs(feats)) + 1, device=readout.device)
        init[:, :n_old], init[:, -1] = readout[:, :-1], readout[:, -1]
        init = _reorder_for_readout(init, units, layer, n_units)
        rb = budget.share(1.0 / left) if r < len(rounds) - 1 else budget.share(1.0)
        readout, res = fit_readout(data, _readout_inputs(feats), _readout_inputs(feats_val), out_scale,
                                   make_strategy(), rb, init, progress)
        gens += res.generations
        curve.append((budget.elapsed(), gens, res.curve[-1][2]))

    layers = [_stack(u) for u in units]
    return layers, readout, curve, gens


def _stack(rows):
    """Rounds of raw unit rows -> one layer's (W (H, in), b (H,))."""
    allr = torch.cat(rows)
    return allr[:, :-1], allr[:, -1]


def _features(x, units):
    """[x, h_1, ..., h_L] for the layers grown so far (a layer with no units yet ends the list)."""
    feats = [x]
    for rows in units:
        if not rows:
            break
        w, b = _stack(rows)
        feats.append(torch.tanh(feats[-1] @ w.T + b))
    return feats


def _readout_inputs(feats):
    return feats


def _reorder_for_readout(init, units, layer, n_units):
    """Move the zero columns of the new units to where that layer's units sit in [x, h_1, ..., h_L]."""
    widths = [units_w for units_w in (sum(r.shape[0] for r in rows) for rows in units)]
    in_dim = init.shape[1] - 1 - sum(widths)
    # the old readout covered x and every unit except the n_units just added to `layer`
    old_cols = list(range(in_dim))
    pos = in_dim
    for l, w in enumerate(widths):
        keep = w - n_units if l == layer else w
        old_cols += list(range(pos, pos + keep))
        pos += w
    out = torch.zeros_like(init)
    out[:, old_cols] = init[:, :len(old_cols)]
    out[:, -1] = init[:, -1]
    return out


def _basis(z):
    """Orthonormal columns (B, k) spanning the centred inputs of a batch."""
    q, _ = torch.linalg.qr(z - z.mean(0))
    return q


def _predict(feats, readout, out_scale):
    u = torch.cat(feats, dim=1)
    return out_scale * torch.tanh(u @ readout[:, :-1].T + readout[:, -1])


def _residual_directions(resid, k):
    """Top principal directions of the residual in output space (out, k), cycled if k > out."""
    rc = resid[:65536] - resid[:65536].mean(0)
    _, _, vh = torch.linalg.svd(rc, full_matrices=False)  # vh (min(N, out), out)
    idx = torch.arange(k, device=resid.device) % vh.shape[0]
    return vh[idx].T
