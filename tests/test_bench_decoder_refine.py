"""bench/decoder_refine.py: a refinement stage on a frozen patch decoder, saved as a two-stage O-VAE decoder."""

import json
import sys
from pathlib import Path

import torch
from conftest import make_store
from test_ovae_model import _part

from organic_sd.ovae import OVAE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from decoder_refine import base_stage, main  # noqa: E402


def test_the_stage_learns_what_the_frozen_base_misses_and_the_file_decodes_as_base_then_stage(tmp_path):
    store = make_store(tmp_path)
    base = _part("decoder", hidden=(3,), window=3)  # random weights: a poor decoder of the fake teacher
    OVAE(decoder=base).save(tmp_path / "base.safetensors")
    out, js = tmp_path / "refined.safetensors", tmp_path / "r.json"
    assert main(["--store", str(store), "--ovae", str(tmp_path / "base.safetensors"), "--minutes", "0.1",
                 "--hidden", "4", "--max-rows", "4000", "--out", str(out), "--json", str(js)]) == 0
    rep = json.loads(js.read_text())["heldout_split"]
    # the fake teacher's decode is its latent cell's RGB, which the stage reads: it must beat the random base
    assert rep["base + stage"]["psnr"] > rep["base"]["psnr"] + 3, rep
    d = OVAE.load(out).decoder
    assert d.config.mode == "staged" and [s.config.up for s in d.module.stages] == [8, 1]
    assert d.module.stages[1].config.carry_channels == 3  # the base's hidden units, carried
    z = torch.randn(2, 4, 3, 2)
    first = d.module.stages[0](z)
    torch.testing.assert_close(first, base_stage(base)(z))  # stage 1 is the base decoder, unchanged
    torch.testing.assert_close(d.module(z), d.module.outputs(z, fast=False)[-1], atol=1e-5, rtol=1e-5)
