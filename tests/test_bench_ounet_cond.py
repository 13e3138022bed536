"""bench/ounet_cond.py: guidance reaches the clone's rows only; the teacher and its reference draw the class as trained."""

import sys
from pathlib import Path

import torch
from test_class_fidelity import TemplateDenoiser
from test_ounet_prompts import class_ounet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from ounet_cond import paired_samples  # noqa: E402


class Templates8(TemplateDenoiser):
    """The template teacher at the test O-UNet's sample shape and schedule length."""

    sample_shape = (1, 8, 8)

    def __init__(self, num_steps):
        super().__init__()
        self.templates = torch.rand((10, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.alphas_cumprod = torch.linspace(0.9999, 0.001, num_steps, dtype=torch.float64)


def test_guidance_changes_the_clone_and_never_the_teacher():
    u = class_ounet()
    te = Templates8(u.config.num_steps)
    classes = torch.tensor([3, 7, 3])
    mine1, theirs1, ref1 = paired_samples(u, te, classes, steps=2, seed=4, guidance=1.0, ref_steps=3)
    mine2, theirs2, ref2 = paired_samples(u, te, classes, steps=2, seed=4, guidance=2.0, ref_steps=3)
    assert not torch.allclose(mine1, mine2)  # the clone is guided
    assert torch.equal(theirs1, theirs2) and torch.equal(ref1, ref2)  # the teacher and the reference are not
    assert mine1.shape == theirs1.shape == ref1.shape == (3, 1, 8, 8)
    assert paired_samples(u, te, classes, steps=2, seed=4)[2] is None  # no reference asked, none drawn
