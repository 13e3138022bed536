"""The gradient-fitted reference of a staged O-VAE part at the trainer's exact shapes: how far evolution is from it.

    python bench/staged_reference.py decoder --store st6 --out ref --stages 5:96 3:64:1:1 3:48:1:1 \
        --stage-targets features --feature-channels 16 --teacher taef2 [--device cuda] [--adam-seconds 30] \
        [--evolved RUN] [--json ref.json]
    python bench/heldout_decoders.py --store st6 --decoders ref=ref evolved=RUN      # the whole held-out split

Takes `osd train decoder|encoder`'s own flags and builds what that command would train, stage by stage, greedily:
the same StageConfigs, the same rows (organic_sd.ovae.staged.StageRows: the frozen earlier stages' output, the
latent cell, the carried hidden units), the same teacher-feature basis (with --evolved, that run's own basis, so both
learn the very same targets) and the same held-out images per stage. Only the fit differs: each stage is fitted by
Adam to its OLA module's shape (tanh hidden layer, readout over inputs and units, scaled tanh out) and then copied
into an OLAModule. Adam is a reference here, never a product path: `osd train` stays gradient-free.

Writes OUT/model.safetensors (an O-VAE file: bench/heldout_decoders.py and bench/ovae_speed.py take it as they take a
run) and OUT/reference.json (or --json): per stage, the reference's held-out score and, with --evolved RUN, that
run's stage scored on the same held-out images through its own frozen stages.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from itertools import zip_longest
from pathlib import Path

import numpy as np
import torch
from torch import nn

from organic_sd import ola
from organic_sd.data.store import Store
from organic_sd.devices import resolve_device
from organic_sd.files import WEIGHTS_NAME
from organic_sd.flags import add_flags, from_args
from organic_sd.ovae.config import DECODER_ONLY, TrainConfig, stage_specs
from organic_sd.ovae.features import FEATURES_NAME, open_basis
from organic_sd.ovae.model import OVAE, Part, read_parts
from organic_sd.ovae.rows import PartRows, out_scale, part_config, source_encoder
from organic_sd.ovae.staged import StageHeldOut, StageRows, feature_targets, stage_configs
from organic_sd.stages import Stack, Stage


class Net(nn.Module):
    """An OLA module's shape with one (or no) hidden layer, as autograd trains it."""

    def __init__(self, n_in: int, hidden: int, n_out: int, out_scale: float):
        super().__init__()
        self.hidden = nn.Linear(n_in, hidden) if hidden else None
        self.out = nn.Linear(hidden, n_out, bias=False) if hidden else None
        self.skip, self.out_scale = nn.Linear(n_in, n_out), out_scale

    def forward(self, x):
        a = self.skip(x)
        if self.hidden is not None:
            a = a + self.out(torch.tanh(self.hidden(x)))
        return self.out_scale * torch.tanh(a)

    def to_module(self) -> ola.OLAModule:
        """The same function as an OLAModule (readout over [x, h]: the skip's columns, then the units')."""
        n_out, n_in = self.skip.weight.shape
        h = 0 if self.hidden is None else self.hidden.out_features
        m = ola.OLAModule(ola.OLAConfig(n_in, n_out, (h,) if h else (), self.out_scale)).to(self.skip.weight.device)
        with torch.no_grad():
            cols = [self.skip.weight] + ([] if self.hidden is None else [self.out.weight])
            m.readout.weight.copy_(torch.cat(cols, dim=1)), m.readout.bias.copy_(self.skip.bias)
            if self.hidden is not None:
                m.hidden[0].weight.copy_(self.hidden.weight), m.hidden[0].bias.copy_(self.hidden.bias)
        return m


def adam_fit(rows: StageRows, pool: np.ndarray, n_rows: int, hidden: int, scale: float, seconds: float,
             redraw_seconds: float, rng: np.random.Generator, device: torch.device, log=print) -> tuple[Net, int]:
    """Adam (batch 4096, lr 2e-3 falling linearly to 2e-4) for `seconds`, on a fresh draw of n_rows rows every
    redraw_seconds (the trainer's ticks draw fresh rows too) -> (the net, its steps)."""
    x, y = rows.draw(pool, n_rows, rng)  # (N, in), (N, out)
    net = Net(x.shape[1], hidden, y.shape[1], scale).to(device)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    t0 = last_draw = time.perf_counter()
    steps = 0
    while (elapsed := time.perf_counter() - t0) < seconds:
        if time.perf_counter() - last_draw >= redraw_seconds:
            x, y = rows.draw(pool, n_rows, rng)
            last_draw = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = 2e-3 * (1 - 0.9 * elapsed / seconds)
        b = torch.randint(0, len(x), (4096,), device=x.device)
        loss = (net(x[b]) - y[b]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    loss = loss.detach()
    log(f"  Adam: {steps:,} steps in {seconds:.0f} s, last batch MSE {loss.item():.5g}")
    return net.requires_grad_(False), steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    for kind in ("decoder", "encoder"):
        p = sub.add_parser(kind, help=f"the reference of what `osd train {kind} --stages ...` trains")
        add_flags(p, TrainConfig, skip=("kind",) if kind == "decoder" else ("kind", *DECODER_ONLY))
        p.add_argument("--adam-seconds", type=float, default=30.0, help="Adam per stage")
        p.add_argument("--redraw-seconds", type=float, default=10.0, help="a fresh draw of rows this often")
        p.add_argument("--evolved", default="", help="an `osd train` run of the same flags: its basis is used, and "
                                                     "its stages are scored beside the reference's")
        p.add_argument("--json", default="", help="the report (default OUT/reference.json)")
    a = ap.parse_args(argv)
    # the trainer's budget flags mean nothing to the reference (--adam-seconds is its budget), but one must be set
    cfg = from_args(TrainConfig, a, kind=a.part, ticks=a.ticks or (None if a.max_minutes else 1))
    if not cfg.stages:
        raise SystemExit("--stages is required: the reference is of a staged part")
    dev = resolve_device(cfg.device)
    store = Store.open(cfg.store)
    part_cfg = replace(part_config(cfg, store), mode="staged")
    configs = stage_configs(cfg, part_cfg)
    hidden = [spec[1] for spec in stage_specs(cfg.stages)]
    evolved = list(read_parts(a.evolved, dev)[a.part].module.stages) if a.evolved else None
    if evolved is not None:  # before any fit: a run of other shapes is no comparison
        for i, (got, made) in enumerate(zip_longest([asdict(s.config) for s in evolved], map(asdict, configs))):
            if got != made:
                raise SystemExit(f"--evolved {a.evolved}: its stage {i + 1} is {got}, these flags make {made}")
    # a staged encoder's earlier stages always learn features (TrainConfig sets stage_targets so)
    features = feature_targets(cfg, store, configs, dev) if cfg.stage_targets == "features" else None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    train_idx = store.indices("train")
    if features is not None:
        inputs = store.images if a.part == "encoder" else store.latents
        if a.evolved:  # that run's basis, even where OUT holds one from an earlier call
            (out / FEATURES_NAME).unlink(missing_ok=True)
        open_basis(features, out, inputs, train_idx, cfg.seed, dev, a.evolved)
    last_scale = out_scale(cfg, store, np.random.default_rng(cfg.seed))
    part_rows = PartRows(store, part_cfg, dev, source_encoder(cfg.latents, store, dev), cfg.mix_teacher)
    rng = np.random.default_rng(cfg.seed)
    # the flags that make the shapes, rows and targets (the trainer's budget flags play no part here)
    report = {"flags": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()
                        if k not in ("max_minutes", "ticks", "tick_seconds", "first_tick_seconds", "generations")},
              "adam_seconds": a.adam_seconds, "redraw_seconds": a.redraw_seconds, "evolved_run": a.evolved,
              "device": str(dev), "stages": []}
    ref: list[Stage] = []
    for i, (scfg, h) in enumerate(zip(configs, hidden)):
        learns = features if features is not None and i < len(configs) - 1 else None
        scale = last_scale if learns is None else learns.scale[i]
        rows = StageRows(part_rows, list(ref), scfg, learns)  # a copy: ref grows below
        print(f"stage {i + 1} of {len(configs)}: {scfg.in_channels} channels in, {h} tanh, "
              f"{rows.metric} at 1/{rows.factor} resolution", flush=True)
        net, steps = adam_fit(rows, train_idx, cfg.max_rows, h, scale, a.adam_seconds, a.redraw_seconds, rng, dev)
        ref.append(Stage(scfg, net.to_module()))
        line = {"stage": i + 1, "adam_steps": steps,
                "reference": StageHeldOut(rows, cfg.eval_images, cfg.seed).score(ref[-1])}
        if evolved is not None:
            own = StageRows(part_rows, evolved[:i], scfg, learns)
            line["evolved"] = StageHeldOut(own, cfg.eval_images, cfg.seed).score(evolved[i])
        print("  " + json.dumps(line), flush=True)
        report["stages"].append(line)
    stack = Stack(ref)
    stack.training_summary = {"reference": "Adam, bench/staged_reference.py", "adam_seconds": a.adam_seconds}
    OVAE(**{a.part: Part(part_cfg, stack)}, meta={"training_run": str(out)}).save(out / WEIGHTS_NAME)
    report["parameters"] = stack.num_parameters()
    path = Path(a.json or out / "reference.json")
    path.write_text(json.dumps(report, indent=1))
    print(f"reference: {out / WEIGHTS_NAME} ({report['parameters']:,} parameters); report {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
