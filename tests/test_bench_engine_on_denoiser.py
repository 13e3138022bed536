"""bench/engine_on_denoiser.py: a variant string becomes exactly the ola.fit settings it names."""

import sys
from pathlib import Path

import pytest

from organic_sd import ola

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from engine_on_denoiser import fit_kwargs, parse_variant  # noqa: E402


def test_a_variant_names_its_settings_and_the_rest_stay_the_trainers():
    name, opts = parse_variant("wide:spread=2,pop=100,hidden=64-32,deflate=1")
    assert name == "wide" and opts == {"spread": 2.0, "pop": 100, "hidden": "64-32", "deflate": 1}
    kw = fit_kwargs(opts, (64,))
    assert kw["hidden"] == (64, 32) and kw["population"] == 100 and kw["units_per_round"] == 16
    assert kw["subspace"] == ola.Subspace(spread=2.0, deflate=True) and kw["refine"] == ola.Refine()
    assert fit_kwargs(parse_variant("base")[1], (64,))["hidden"] == (64,)
    carry = fit_kwargs(parse_variant("carry:start=random,refine=0.9")[1], (64,))["refine"]
    assert carry == ola.Refine.measured(0.9, "random") and carry.carry_steps and carry.unit_generations == 20


@pytest.mark.parametrize("bad", ["x:speed=2", "x:spread", ":pop=3"])
def test_a_bad_variant_is_refused_with_its_text(bad):
    with pytest.raises(SystemExit, match="variant"):
        parse_variant(bad)
