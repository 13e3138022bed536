"""bench/stage_maps_speed.py: the latent cell and carry read at their own resolution give the old path's numbers."""

import sys
from dataclasses import replace
from pathlib import Path

import pytest
from test_ovae_model import _part
from test_stages import _stage

from organic_sd.ovae import OVAE
from organic_sd.ovae.model import Part
from organic_sd.stages import Stack, StageConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from stage_maps_speed import main  # noqa: E402


def _staged_file(tmp_path) -> Path:
    """A random two-stage decoder (latent -> 1/2 resolution -> full; stage 2 reads the latent cell and stage 1's
    hidden units), saved as an O-VAE file."""
    stack = Stack([_stage(StageConfig(4, 3, window=3, up=4), (5,), 0),
                   _stage(StageConfig(3, 3, window=3, up=2, extra_channels=4, carry_channels=5), (4,), 1)])
    base = _part("decoder")
    path = tmp_path / "staged.safetensors"
    OVAE(decoder=Part(replace(base.config, mode="staged"), stack)).save(path)
    return path


def test_both_ways_give_the_same_decode_and_a_row_per_thread_count(tmp_path, capsys):
    path = _staged_file(tmp_path)
    assert main(["--decoders", f"s={path}", "--threads", "1", "2", "--repeats", "2", "--size", "32"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| s |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[-1]) < 1e-5  # the same numbers to float rounding (channels-last convolutions)
        assert float(cells[2]) > 0 and float(cells[3]) > 0


def test_a_file_without_a_staged_decoder_is_refused(tmp_path):
    OVAE(decoder=_part("decoder")).save(tmp_path / "patch.safetensors")
    with pytest.raises(SystemExit, match="holds no staged decoder"):
        main(["--decoders", f"p={tmp_path / 'patch.safetensors'}", "--repeats", "1", "--size", "32"])
