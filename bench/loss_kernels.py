"""The searches' losses through the logistic (`ola.population.squash`) against the tanh forms they replaced.

    python bench/loss_kernels.py --threads 2 --repeats 30 [--device cpu] [--json out.json]

Every generation of a search scores P candidates of R rows on a batch of B rows: one (P, B, R) tensor, the
largest in training, and a few passes over it. The engine computes tanh as 2 sigmoid(2a) - 1 (the 2 and the bias
folded into one batched GEMM), because torch's CPU tanh is several times slower than its logistic. This times
each loss both ways, alternating in one process (so the machine's load falls on both alike), and checks they
agree. Shapes: the `two` problem of bench/peers.py (units: R 64 over 96 inputs; readout: R 48 over 161 features;
a cascade round: 16 units) and the O-Decoder's rows (R 192 over 288 features), at the engine's defaults
(population 40, batch 1024 on the CPU, 4096 on a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

import torch

from organic_sd.ola.population import explained_loss, mse_loss, squash, wide_affine


def tanh_mse(theta, z, y, scale):
    """The readout's loss as computed before `squash`: tanh of the affine map, bias added as its own pass."""
    w, b = theta[..., :-1], theta[..., -1]
    err = (torch.matmul(z, w.transpose(1, 2)) + b[:, None, :]).tanh_().sub_(y / scale)
    return torch.linalg.vector_norm(err, dim=1).square_().mul_(scale * scale / z.shape[0])


def tanh_gain(theta, z, h, c, q):
    """The refinement's per-unit loss change as computed before `squash`."""
    w, b = theta[..., :-1], theta[..., -1]
    d = (torch.matmul(z, w.transpose(1, 2)) + b[:, None, :]).tanh_().sub_(h)
    return ((q * d).sub_(2 * c) * d).mean(1)


def squash_gain(theta, z, h, c, q):
    """The refinement's loss as the engine computes it (ola/refine.py)."""
    v = squash(theta, z).sub_((1 + h) / 2)
    return ((q * v).sub_(c) * v).mean(1).mul_(4)


def tanh_explained(theta, z, resid, basis):
    """Cascade-correlation's objective with tanh units (the energy is the same for (1 + tanh) / 2)."""
    B = z.shape[0]
    h = wide_affine(theta, z).tanh_()
    P, R = h.shape[1:]
    h = h.view(B, P * R)
    h = h - basis @ (basis.T @ h)
    var = h.square().mean(dim=0)
    cov = ((resid - resid.mean(0)).T @ h) / B
    return -(cov.square().sum(0) / var.clamp_min(1e-12)).view(P, R)


def cases(P, B, dev, g):
    """(name, tanh form, squash form, arguments) of each loss at the bench's shapes."""
    def rnd(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g).to(dev)

    out = []
    for name, R, k in (("two: readout", 48, 160), ("decoder: readout", 192, 288)):
        theta, z, y = rnd(P, R, k + 1, scale=0.1), rnd(B, k), (0.8 * torch.rand(B, R, generator=g)).to(dev)
        out.append((name, tanh_mse, mse_loss, (theta, z, y, 1.0)))
    theta, z = rnd(P, 64, 97, scale=0.1), rnd(B, 96)
    h, c, q = (2 * torch.rand(B, 64, generator=g) - 1).to(dev), rnd(B, 64, scale=0.1), rnd(B, 64).abs()
    out.append(("two: refine units", tanh_gain, squash_gain, (theta, z, h, c, q)))
    theta, z, resid = rnd(P, 16, 97, scale=0.1), rnd(B, 96), rnd(B, 48)
    basis, _ = torch.linalg.qr(torch.cat([z, torch.ones(B, 1, device=dev)], dim=1))
    out.append(("two: cascade round", tanh_explained, lambda *a: explained_loss(*a), (theta, z, resid, basis)))
    return out


def timed(fn, args, dev):
    """Seconds for one call of fn(*args)."""
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn(*args)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--batch", type=int, default=None, help="rows per batch (default: the engine's, 1024 / 4096)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    batch = args.batch or (4096 if dev.type == "cuda" else 1024)
    g = torch.Generator().manual_seed(0)
    rows = []
    print(f"{dev}, {args.threads} threads, population {args.population}, batch {batch}: ms per batch (median)")
    for name, old, new, a in cases(args.population, batch, dev, g):
        ref, got = old(*a), new(*a)
        rel = float((got - ref).abs().max() / ref.abs().max())
        t_old, t_new = [], []
        for _ in range(args.repeats):  # alternating, so load falls on both
            t_old.append(timed(old, a, dev))
            t_new.append(timed(new, a, dev))
        mo, mn = sorted(t_old)[len(t_old) // 2] * 1e3, sorted(t_new)[len(t_new) // 2] * 1e3
        rows.append({"loss": name, "tanh_ms": round(mo, 3), "squash_ms": round(mn, 3), "speedup": round(mo / mn, 2),
                     "max_rel_diff": rel})
        print(f"  {name:20s} tanh {mo:7.2f}  squash {mn:7.2f}  x{mo / mn:.2f}  (max rel. difference {rel:.1e})")
    if args.json:
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                "device": str(dev), "threads": args.threads, "population": args.population, "batch": batch}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
