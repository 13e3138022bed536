"""bench/fine_structure.py: its controls are damaged where the low-noise error looks, on an exact Gaussian judge."""

import sys
from pathlib import Path

import torch
from test_metrics_denoising import GaussianJudge
from test_metrics_samples import digits

from organic_sd.ounet import distribution as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from fine_structure import controls, markdown, score  # noqa: E402


def test_controls_score_worse_than_the_judges_own_samples():
    judge = GaussianJudge(digits(2000, seed=0))
    noise = torch.randn(24, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    ref, few = dist.draw(judge, noise, 12), dist.draw(judge, noise, 4)
    sets = {"reference": ref, "teacher, 4 steps": few, **controls(few, ref, judge.pixel_range)}
    res = score(judge, ref, sets, judge.pixel_range, (4, 1), paired={"teacher, 4 steps"})
    assert set(res["reference"]) == {"denoise_err"}  # the reference is not scored against itself
    own = res["teacher, 4 steps"]["denoise_err"]
    for name in ("teacher few-step + 2% speckle", "reference, pixels shuffled", "uniform noise"):
        assert res[name]["denoise_err"] > 1.3 * own, name
        assert set(res[name]) == {"denoise_err", "pool4", "pool1"}
    table = markdown({"seed": 1, "n": 24, "sets": res}, (4, 1))
    assert table.count("\n") == 2 + len(sets) and "| reference | " in table and "| - | - |" in table
