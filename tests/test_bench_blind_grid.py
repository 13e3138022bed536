"""bench/blind_grid.py: the teacher's and an O-UNet's samples shuffled into one grid, the key kept apart."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_ounet

from organic_sd.ounet import generate as gen
from organic_sd.ounet.distribution import draw
from organic_sd.teachers.ddim import seeded_noise

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from blind_grid import COLS, blind_grid, count, main  # noqa: E402


def cell(grid: np.ndarray, i: int, H: int = 8, W: int = 8) -> np.ndarray:
    r, c = divmod(i, COLS)
    return grid[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W]


def test_every_cell_is_the_sample_its_key_names_and_the_order_is_shuffled():
    teacher, u = tiny_ounet(seed=0), tiny_ounet(seed=1)
    grid, key = blind_grid(teacher, u, 6, 4, teacher_seed=3, ounet_seed=4, shuffle_seed=5)
    assert sorted(key) == ["ounet"] * 6 + ["teacher"] * 6
    assert key != ["teacher"] * 6 + ["ounet"] * 6  # shuffled
    with torch.no_grad():
        x = torch.cat([draw(teacher, seeded_noise(u.sample_shape, 6, 3), 4),  # the teacher's 4 steps, then
                       draw(u, seeded_noise(u.sample_shape, 6, 4), 8)])  # the O-UNet's 8, from other noise
    assert not torch.allclose(x[:6], x[6:])
    perm = np.random.default_rng(5).permutation(12)
    for i, who in enumerate(key):
        assert who == ("teacher" if perm[i] < 6 else "ounet")
        sample = gen.grid_image(gen.to_unit(x[perm[i]:perm[i] + 1], u.config.pixel_range), 1)[1:9, 1:9]
        assert np.array_equal(cell(grid, i), sample)


def test_count_and_the_command_line(tmp_path, monkeypatch):
    key = ["teacher", "ounet", "ounet", "teacher"]
    assert count(key, [0, 1, 3, 3]) == {"ounet": {"named": 1, "of": 2}, "teacher": {"named": 2, "of": 2}}
    with pytest.raises(SystemExit, match="cells are 0 to 3"):
        count(key, [4])
    import blind_grid

    monkeypatch.setattr(blind_grid, "load_denoiser", lambda spec: tiny_ounet(seed=0))
    monkeypatch.setattr(blind_grid.OUNet, "load", classmethod(lambda cls, path=None: tiny_ounet(seed=1)))
    out = str(tmp_path / "g")
    assert main(["--teacher", "fake", "--n", "3", "--out", out, "--scale", "2"]) == 0
    assert len(json.loads(Path(out + "_key.json").read_text())) == 6
    from PIL import Image

    assert Image.open(out + ".png").size == (2 * (COLS * 9 + 1), 2 * (1 * 9 + 1))
