"""bench/encoder_features.py: a staged O-Encoder toward the teacher encoder's activations against the single stage."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from encoder_features import Encoder, main  # noqa: E402


def test_both_encoders_are_fitted_and_scored_like_the_trainer(taesd_store, tmp_path):
    store, teacher = taesd_store
    out = tmp_path / "r.json"
    assert main(["--store", str(store), "--teacher", str(teacher), "--k", "4", "--hidden", "3", "3", "3",
                 "--single-hidden", "3", "--generations", "60", "--adam-seconds", "0.5", "--rows", "2000",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for name in ("evolved_single_stage", "evolved_staged_features"):
        assert 0.5 < r[name]["cosine"] <= 1.0, (name, r)  # each learned the latents' direction, not noise
    for name in ("adam_single_stage", "adam_staged_features"):  # a second of Adam steps: scored, not judged
        assert -1.0 <= r[name]["cosine"] <= 1.0, (name, r)
    assert r["evolved_staged_features"]["parameters"] > 0


def test_a_staged_encoder_halves_the_resolution_per_stage():
    stages = [torch.nn.Linear(12 * 9, 5), torch.nn.Linear(20 * 9, 6), torch.nn.Linear(24 * 9, 4)]
    enc = Encoder(True, 3, stages)
    x = torch.randn(2, 3, 32, 16)
    assert enc(x, upto=1).shape == (2, 5, 16, 8) and enc(x).shape == (2, 4, 4, 2)
