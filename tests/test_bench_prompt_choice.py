"""bench/prompt_choice.py: settings chosen on dev phrasings, by rules that can be checked without the text model."""

import sys
from pathlib import Path

import pytest
import torch

from organic_sd.ounet.prompts import READOUT_SHARE, fit_prompt_adapter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from prompt_choice import choose, guard, nearest_cosine, read_right  # noqa: E402


class ClassEncoder:
    """A stand-in sentence model: each prompt "k ..." embeds near a direction of its own class."""

    id = "fake-encoder"

    def __call__(self, prompts):
        g = torch.Generator().manual_seed(len(prompts))
        base = torch.eye(3, 16)  # (K, D) one direction per class
        k = torch.tensor([int(p.split()[0]) for p in prompts])
        return torch.nn.functional.normalize(base[k] + 0.15 * torch.randn(len(prompts), 16, generator=g), dim=1)


def test_choose_takes_the_best_mean_and_ties_keep_the_default():
    assert choose({0.9: [0.5, 0.7], 0.99: [0.6, 0.6], 1.0: [0.9, 0.8]}) == 1.0
    assert choose({0.9: [1.0, 1.0], READOUT_SHARE: [1.0, 1.0], 1.0: [0.1, 0.1]}) == READOUT_SHARE
    assert choose({0.9: [1.0], 0.95: [1.0], 1.0: [0.0]}, default=0.99) == 0.9


def test_guard_sits_halfway_between_digits_and_unrelated():
    assert guard(torch.tensor([0.6, 0.55, 0.9]), torch.tensor([0.1, 0.25])) == pytest.approx(0.4)


def test_an_adapter_fitted_with_a_share_and_guard_reads_its_classes_and_keeps_the_guard():
    enc = ClassEncoder()
    prompts = [f"{k} train {i}" for k in range(3) for i in range(6)]
    labels = [k for k in range(3) for _ in range(6)]
    a = fit_prompt_adapter(["0", "1", "2"], prompts, labels, enc, generations=150, share=0.95, min_cosine=0.33)
    assert a.config.min_cosine == 0.33 and a.module.training_summary["subspace"]["readout"] == 0.95
    dev = [f"{k} dev {i}" for k in range(3) for i in range(4)]
    emb = enc(dev)
    assert read_right(a, emb, [k for k in range(3) for _ in range(4)]) == 1.0
    assert read_right(a, emb, [(k + 1) % 3 for k in range(3) for _ in range(4)]) == 0.0
    assert float(nearest_cosine(a, emb).min()) > 0.5  # near their own class's centroid
