"""ola.fit under torchrun (gloo, 2 CPU processes): the same module as one process for the same seed.

The torchrun workers run this very file as a script (see the bottom); one launch fits every
case, so the test pays for starting the processes once.
"""

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_store
from launch import torchrun

from organic_sd import cli, dist, ola
from organic_sd.ovae import OVAE

CASES = {  # name -> ola.fit keywords; snes splits rows across ranks, trust runs whole on every rank
    "readout": dict(hidden=(), strategy="snes", generations=60),
    "cascade": dict(hidden=(4,), strategy="snes", generations=60),
    "cascade-hessian": dict(hidden=(4,), strategy="snes", generations=60, subspace=ola.Subspace(hessian=3)),
    "cascade-deflate": dict(hidden=(4,), strategy="snes", generations=60, subspace=ola.Subspace(deflate=True)),
    # the refinement's searches (units on their linearised loss, then the readout) split across ranks like the rest
    "cascade-refine": dict(hidden=(4,), strategy="snes", generations=120,
                           refine=ola.Refine(share=0.5, unit_generations=20, readout_generations=20)),
    # random units, their readout and one refinement round (past it, float-level differences in the summed losses
    # flip a selection now and then and the two runs part, 2% apart at 120 generations: measured, not hidden)
    "random-refine": dict(hidden=(4,), strategy="snes", generations=64,
                          refine=ola.Refine(share=0.8, start="random", unit_generations=20, readout_generations=20)),
    # the same with each round resuming from the last round's step sizes: the readout's, gathered over ranks
    "random-carry": dict(hidden=(4,), strategy="snes", generations=40,
                         refine=ola.Refine(share=0.8, start="random", unit_generations=8, readout_generations=8,
                                           carry_steps=True)),
    # the same with the readout over the hidden units only (its input columns zero on every rank)
    "random-carry-plain": dict(hidden=(4,), strategy="snes", generations=40,
                               refine=ola.Refine(share=0.8, start="random", unit_generations=8, readout_generations=8,
                                                 carry_steps=True, readout_inputs=False)),
    "trust": dict(hidden=(), strategy="trust", generations=30),
}


def problem():
    """A tiny smooth regression: x (600, 6) -> y (600, 4) inside (-1, 1)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 6, generator=g)
    w = torch.randn(6, 4, generator=g) / 2
    return x, 0.8 * torch.tanh(x @ w + 0.3 * torch.sin(2 * x[:, :4]))


def fit_case(name: str):
    x, y = problem()
    return ola.fit(x, y, population=16, batch_size=128, seed=3, **CASES[name])


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The folder where rank 0 of a 2-process torchrun saved each case's module."""
    out = tmp_path_factory.mktemp("two")
    p = torchrun(2, __file__, str(out))
    assert p.stdout.count("saved") == 1, p.stdout  # only rank 0 reports
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_ranks_give_the_same_module_as_one_process(name, two_ranks):
    one = fit_case(name)
    two = ola.load(two_ranks / name)
    assert two.training_summary["generations"] == one.training_summary["generations"]
    for k, v in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    assert two.training_summary["val_mse"] == pytest.approx(one.training_summary["val_mse"], rel=1e-4)
    curve1, curve2 = one.training_summary["curve"], two.training_summary["curve"]
    assert [c[1] for c in curve2] == [c[1] for c in curve1]  # summed over ranks, at the same generations
    assert [c[2] for c in curve2] == pytest.approx([c[2] for c in curve1], rel=1e-4)


def test_torchrun_osd_train_matches_one_process(tmp_path):
    store = make_store(tmp_path, n=12)
    args = ["train", "decoder", "--store", str(store), "--ticks", "2", "--generations", "5", "--eval-images", "3",
            "--max-rows", "1500", "--population", "8"]
    p = torchrun(2, "-m", "organic_sd.cli", *args, "--out", str(tmp_path / "two"))
    assert p.stdout.count("tick    2") == 1 and p.stdout.count("done:") == 1, p.stdout  # only rank 0 prints
    assert len((tmp_path / "two" / "log.jsonl").read_text().splitlines()) == 2
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0
    one, two = OVAE.load(tmp_path / "one").decoder.module, OVAE.load(tmp_path / "two").decoder.module
    for k, v in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)


def _worker() -> None:
    """A torchrun worker: fit every case; rank 0 saves the modules and says so."""
    out = Path(sys.argv[1])
    assert dist.init() and dist.world_size() == 2
    for name in CASES:
        m = fit_case(name)
        if dist.is_main():
            m.save(out / name)
    if dist.is_main():
        print(json.dumps({"saved": sorted(CASES)}))
    dist.destroy()


if __name__ == "__main__":
    _worker()
