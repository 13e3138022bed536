"""The text adapter: an OLA module from a teacher's text embedding to the O-UNet's small cond vector.

    pooled   the embedding averaged over tokens: (B, L, D) -> (B, D); (B, D) as it is
    cond     out_scale * tanh(W pooled + b)                              (B, cond_dim)

No gradients: the adapter starts as a PCA projection of the stored prompts' pooled embeddings
(computed from the embeddings alone, like ola.population.Whitener), and `evolve_adapter`
then searches its weights with the O-UNet's stack frozen, by the stack's eps error, with the
OLA engine's strategies. The search runs in the prompts' principal coordinates: a store of P
prompts only varies along P - 1 directions of D, and no loss can steer the others.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from organic_sd.ola import Budget, OLAConfig, OLAModule, Whitener, affine, make_strategy, run_search
from organic_sd.ounet.features import features

FORMAT = "organic_sd.text_adapter/1"
OUT_SCALE = 2.0  # cond values in (-2, 2): the size of the O-UNet's other inputs
GAIN = 0.5  # pre-activation std of the initial PCA rows: tanh is nearly linear there
MAX_COMPONENTS = 32  # principal directions searched at most


@dataclass
class AdapterConfig:
    """The adapter's input (the teacher's per-prompt embedding shape) and its output size."""

    cond_shape: tuple[int, ...]  # (L, D) token states, or (D,) a pooled embedding
    cond_dim: int
    pool: str = "mean"
    format: str = FORMAT

    def __post_init__(self):
        self.cond_shape = tuple(int(s) for s in self.cond_shape)
        if len(self.cond_shape) not in (1, 2) or min(self.cond_shape) < 1:
            raise ValueError(f"cond_shape must be (L, D) or (D,), got {self.cond_shape}")
        if self.cond_dim < 1:
            raise ValueError(f"cond_dim must be >= 1, got {self.cond_dim}")
        if self.pool != "mean":
            raise ValueError(f"pool must be 'mean', got {self.pool!r}")

    @property
    def text_dim(self) -> int:
        return self.cond_shape[-1]


def pool(cfg: AdapterConfig, emb: torch.Tensor) -> torch.Tensor:
    """(B, L, D) token states or (B, D) pooled embedding -> (B, D) float32; a ValueError on other shapes."""
    if not isinstance(emb, torch.Tensor):
        raise TypeError(f"cond must be a torch.Tensor text embedding, got {type(emb).__name__}")
    D = cfg.text_dim
    if emb.ndim == 3 and emb.shape[2] == D:
        return emb.float().mean(1)
    if emb.ndim == 2 and emb.shape[1] == D:
        return emb.float()
    want = f"(B, {cfg.cond_shape[0]}, {D}) or (B, {D})" if len(cfg.cond_shape) == 2 else f"(B, {D})"
    raise ValueError(f"cond must be the teacher's text embedding {want}, got {tuple(emb.shape)}")


class TextAdapter(nn.Module):
    """Teacher text embedding (B, L, D) or (B, D) -> (B, cond_dim) conditioning vector; frozen, no autograd."""

    def __init__(self, config: AdapterConfig, module: OLAModule):
        super().__init__()
        if (module.in_dim, module.out_dim) != (config.text_dim, config.cond_dim):
            raise ValueError(f"adapter stack {module.in_dim} -> {module.out_dim} does not fit its config "
                             f"({config.text_dim} -> {config.cond_dim})")
        self.config, self.module = config, module
        self.requires_grad_(False)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.module.readout.weight.device

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, L, D) or (B, D) text embedding -> (B, cond_dim)."""
        return self.module(pool(self.config, emb).to(self.device))

    @classmethod
    def from_embeddings(cls, table, cond_dim: int, cond_shape=None) -> TextAdapter:
        """The initial adapter: the first cond_dim principal components of the prompts' pooled embeddings.

        `table` (P, L, D) or (P, D), one row per prompt (a store's cond_table). Directions the
        prompts do not span get zero weights (a constant cond value).
        """
        t = torch.as_tensor(np.asarray(table, np.float32))
        cfg = AdapterConfig(tuple(cond_shape or t.shape[1:]), cond_dim)
        z_wh = _pca(pool(cfg, t))
        k = z_wh.A.shape[1]
        theta = torch.zeros(cond_dim, k + 1)  # (R, k+1) rows in principal coordinates
        n = min(k, cond_dim)
        theta[torch.arange(n), torch.arange(n)] = GAIN
        module = OLAModule(OLAConfig(cfg.text_dim, cond_dim, (), OUT_SCALE),
                           {"init": "pca", "components": k, "prompts": int(t.shape[0])})
        _set_rows(module, z_wh.to_raw(theta))
        return cls(cfg, module)

    def config_dict(self) -> dict:
        """Everything `from_state` needs besides the tensors (JSON-ready)."""
        return {"adapter": asdict(self.config), "ola_config": asdict(self.module.config),
                "training": self.module.training_summary}

    @classmethod
    def from_state(cls, doc: dict, state: dict[str, torch.Tensor]) -> TextAdapter:
        """Rebuild from `config_dict()` and the module's state dict; a ValueError if they disagree."""
        acfg = dict(doc["adapter"])
        if acfg.get("format") != FORMAT:
            raise ValueError(f"text adapter format {acfg.get('format')!r}, expected {FORMAT!r}")
        cfg = AdapterConfig(**acfg)
        module = OLAModule(OLAConfig(**doc["ola_config"]), doc.get("training") or {})
        try:
            module.load_state_dict(state)  # strict: a missing or extra tensor is a broken file
        except RuntimeError as e:
            raise ValueError(f"text adapter tensors do not match its config ({str(e).splitlines()[0]})") from None
        return cls(cfg, module)


def _pca(pooled: torch.Tensor) -> Whitener:
    """Whitener over the top principal directions of (P, D) pooled embeddings; A is (D, k), k >= 1."""
    pooled = pooled.double()
    mean = pooled.mean(0)
    xc = pooled - mean
    # SVD of the (P, D) table: eigh of a D x D covariance is wasteful for D = 768 and few prompts
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)  # s (r,), vt (r, D)
    std = s / math.sqrt(max(1, pooled.shape[0] - 1))
    keep = int((std > 1e-6 * max(float(std.max()) if std.numel() else 0.0, 1e-12)).sum())
    keep = max(1, min(keep, MAX_COMPONENTS))
    if std.numel() == 0 or float(std[0]) <= 0:
        # one prompt (or identical ones): nothing varies; any unit direction keeps the shapes valid
        vt = torch.zeros(1, pooled.shape[1], dtype=torch.float64)
        vt[0, 0] = 1.0
        std = torch.ones(1, dtype=torch.float64)
    v, sd = vt[:keep].T, std[:keep]  # (D, k), (k,)
    return Whitener(mean.float(), (v / sd).float(), (v * sd).T.float())


def _set_rows(module: OLAModule, rows: torch.Tensor) -> None:
    """Write raw rows (out, in+1) into a hidden-free OLA module's readout."""
    module.readout.weight.copy_(rows[:, :-1].to(module.readout.weight))
    module.readout.bias.copy_(rows[:, -1].to(module.readout.bias))


def cond_columns(features_fn, cfg, schedule) -> slice:
    """Where `features_fn(cfg, schedule, x_t, t, cond)` copies cond into the per-pixel rows, as a slice.

    Found by probing rather than assumed, so the adapter search keeps working if the row layout
    changes; a layout that no longer copies cond verbatim into adjacent columns is a RuntimeError.
    """
    C, H, W = cfg.sample_shape
    x = torch.zeros(1, C, H, W)
    t = torch.zeros(1, dtype=torch.int64)
    probe = torch.arange(1, cfg.cond_dim + 1, dtype=torch.float32)[None] * 0.37  # (1, cond_dim), distinct
    a = features_fn(cfg, schedule, x, t, torch.zeros_like(probe))[0, 0]
    b = features_fn(cfg, schedule, x, t, probe)[0, 0]
    cols = torch.nonzero(a != b).flatten()
    if len(cols) == cfg.cond_dim:
        sl = slice(int(cols[0]), int(cols[0]) + cfg.cond_dim)
        if torch.equal(b[sl] - a[sl], probe[0]):
            return sl
    raise RuntimeError("the O-UNet's input rows no longer hold cond verbatim in cond_dim adjacent columns; "
                       "the text adapter search (ounet.adapter.evolve_adapter) needs updating")


class StackWithCond:
    """u's stack on fixed per-pixel rows (N, in) whose cond columns `sl` are left open: self(c) = module(rows, cond c).

    Everything that does not depend on cond is computed once; only the first hidden layer and
    the readout see the inputs (module.py), so a candidate costs O(N (hidden + out) cond_dim).
    """

    def __init__(self, module: OLAModule, rows: torch.Tensor, sl: slice):
        keep = torch.ones(rows.shape[1], dtype=torch.bool, device=rows.device)
        keep[sl] = False
        xb = rows[:, keep]  # (N, in - cond_dim)
        self.s, self.hidden = module.config.out_scale, list(module.hidden)
        self.a1 = self.w1c = None
        if self.hidden:
            w1 = self.hidden[0].weight
            self.a1, self.w1c = xb @ w1[:, keep].T + self.hidden[0].bias, w1[:, sl]  # (N, H1), (H1, cond_dim)
        wx, self.wh = module.readout.weight[:, :module.in_dim], module.readout.weight[:, module.in_dim:]
        self.r0, self.wc = xb @ wx[:, keep].T + module.readout.bias, wx[:, sl]  # (N, out), (out, cond_dim)

    def __call__(self, c: torch.Tensor, pick: torch.Tensor | None = None) -> torch.Tensor:
        """c (P, N', cond_dim) for the rows `pick` (N',) (None: all N) -> (P, N', out) stack outputs."""
        r0 = self.r0 if pick is None else self.r0[pick]
        pre = r0 + c @ self.wc.T  # (P, N', out)
        if self.hidden:
            a1 = self.a1 if pick is None else self.a1[pick]
            h = torch.tanh(a1 + c @ self.w1c.T)  # (P, N', H1)
            hs = [h]
            for layer in self.hidden[1:]:
                h = torch.tanh(layer(h))
                hs.append(h)
            pre = pre + torch.cat(hs, -1) @ self.wh.T
        return self.s * torch.tanh(pre)


@dataclass
class _Rows:
    """Per-pixel rows of some records, cond left open (stack), the teacher's eps y, and each row's record."""

    stack: StackWithCond
    y: torch.Tensor  # (N, C) teacher eps per row
    rec: torch.Tensor  # (N,) record of each row, indexing z
    z: torch.Tensor  # (n, k) the records' pooled embeddings in principal coordinates

    def loss(self, theta: torch.Tensor, s: float, pick: torch.Tensor | None = None) -> torch.Tensor:
        """Adapter candidates theta (P, R, k+1) -> eps MSE (P, R): one genome, so every row shares its loss."""
        c = s * torch.tanh(affine(theta, self.z))  # (P, n, cond_dim)
        rec, y = (self.rec, self.y) if pick is None else (self.rec[pick], self.y[pick])
        err = (self.stack(c[:, rec], pick) - y).square().mean((1, 2))  # (P,)
        return err[:, None].expand(-1, theta.shape[1])


def _rows(u, features_fn, sl, wh, store, idx, max_rows, g, dev) -> _Rows:
    cfg = u.config
    x_t = torch.from_numpy(store.x_t[idx]).to(dev)  # (n, C, H, W)
    t = torch.from_numpy(store.t[idx]).to(dev).round().long()  # (n,)
    eps = torch.from_numpy(store.eps[idx]).to(dev)  # (n, C, H, W)
    pooled = pool(u.adapter.config, torch.from_numpy(store.cond[idx]).to(dev))  # (n, D)
    n, HW = len(idx), cfg.sample_shape[1] * cfg.sample_shape[2]
    rows = features_fn(cfg, u._schedule, x_t, t, torch.zeros(n, cfg.cond_dim, device=dev)).flatten(0, 1)
    y = eps.flatten(2).transpose(1, 2).flatten(0, 1)  # (n HW, C)
    rec = torch.arange(n, device=dev).repeat_interleave(HW)
    if rows.shape[0] > max_rows:
        pick = torch.randperm(rows.shape[0], generator=g)[:max_rows].to(dev)
        rows, y, rec = rows[pick], y[pick], rec[pick]
    return _Rows(StackWithCond(u.module, rows, sl), y, rec, wh(pooled))


def evolve_adapter(u, store, idx: np.ndarray, *, features_fn=None, strategy: str = "auto", population: int = 16,
                   max_seconds: float | None = None, generations: int | None = None, max_rows: int = 20_000,
                   seed: int = 0) -> tuple[TextAdapter, dict]:
    """Search u.adapter's weights with u's stack frozen, by eps MSE on store records idx; -> (adapter, summary).

    Each generation scores its candidates on a fresh batch of pixel rows of half the records;
    the other half is the held-out set that picks the result, so the result is never worse
    there than the adapter it started from.
    """
    features_fn = features_fn or features
    if u.adapter is None:
        raise ValueError("this O-UNet has no text adapter to evolve")
    if len(idx) < 2:
        raise ValueError(f"the adapter search needs at least 2 records, got {len(idx)}")
    if generations is None and max_seconds is None:
        generations = 50
    dev = u.device
    g = torch.Generator().manual_seed(seed)
    perm = np.asarray(idx)[torch.randperm(len(idx), generator=g).numpy()]
    fit_idx, val_idx = np.sort(perm[:len(perm) // 2]), np.sort(perm[len(perm) // 2:])
    with torch.no_grad():
        wh = _pca(pool(u.adapter.config, torch.from_numpy(np.asarray(store.cond_table, np.float32))))
        wh = Whitener(wh.mean.to(dev), wh.A.to(dev), wh.A_inv.to(dev))
        sl = cond_columns(features_fn, u.config, u._schedule)
        tr = _rows(u, features_fn, sl, wh, store, fit_idx, 4 * max_rows, g, dev)
        va = _rows(u, features_fn, sl, wh, store, val_idx, max_rows, g, dev)
        s = u.adapter.module.config.out_scale
        batch = min(4096, tr.y.shape[0])

        def batch_loss(theta):
            return tr.loss(theta, s, torch.randint(tr.y.shape[0], (batch,), generator=g).to(dev))

        def val_loss(theta):
            return torch.cat([va.loss(theta[i:i + 4], s) for i in range(0, theta.shape[0], 4)])

        ad = u.adapter.module
        raw = torch.cat([ad.readout.weight, ad.readout.bias[:, None]], 1)  # (R, D+1)
        start = wh.from_raw(raw)  # (R, k+1)
        # the part of the weights outside the searched directions (beyond MAX_COMPONENTS) is kept as it was
        rest = raw - wh.to_raw(start)
        before = float(val_loss(start[None])[0, 0])
        res = run_search(make_strategy(strategy, population), batch_loss, val_loss, start, 0.2 * GAIN,
                         Budget(max_seconds, generations), torch.Generator(device=dev).manual_seed(seed))
        module = OLAModule(OLAConfig(**asdict(ad.config)))
        _set_rows(module, wh.to_raw(res.theta) + rest)
    summary = {"generations": res.generations, "seconds": round(res.seconds, 3), "val_mse_before": before,
               "val_mse_after": float(res.val_loss[0]), "records": len(idx), "strategy": strategy,
               "population": population}
    module.training_summary = dict(ad.training_summary, last_search=summary)
    return TextAdapter(u.adapter.config, module.to(dev)), summary
