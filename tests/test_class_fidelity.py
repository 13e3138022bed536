"""Class fidelity: a class-conditional teacher as a classifier of its own samples."""

import math

import pytest
import torch

from conftest import DIT, needs_dit
from organic_sd.metrics.class_fidelity import FidelityReport, class_errors, class_fidelity, make_probes, \
    per_class_distribution, teacher_samples

K = 10


class TemplateDenoiser:
    """K class templates; eps given class k is exact for x0 = template k: (x_t - sqrt(ab) m_k) / sqrt(1 - ab)."""

    sample_shape = (1, 6, 6)
    pixel_range = (-1.0, 1.0)
    cond_shape = (K,)
    classes = tuple(str(k) for k in range(K))
    id = "templates"
    device = torch.device("cpu")

    def __init__(self):
        self.templates = torch.rand((K, *self.sample_shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.alphas_cumprod = torch.linspace(0.9999, 0.001, 1000, dtype=torch.float64)

    def encode_text(self, prompts):
        return torch.nn.functional.one_hot(torch.tensor([int(p) for p in prompts]), K).float()

    def eps(self, x_t, t, cond):
        a = self.alphas_cumprod[torch.as_tensor(t)].float()[:, None, None, None]  # (B, 1, 1, 1)
        m = torch.einsum("bk,kchw->bchw", cond, self.templates)  # the class's template
        return (x_t - a.sqrt() * m) / (1 - a).sqrt()


def test_a_classifier_of_templates():
    te = TemplateDenoiser()
    g = torch.Generator().manual_seed(1)
    asked = torch.arange(K).repeat(20)  # (200,)
    images = te.templates[asked] + 0.2 * torch.randn((len(asked), *te.sample_shape), generator=g)
    err = class_errors(te, images, batch=37)  # a batch size that does not divide N
    assert err.shape == (200, K) and err.dtype == torch.float64
    rep = class_fidelity(te, images, asked)
    assert rep.overall > 0.95 and rep.worst > 0.8 and rep.count == [20] * K
    assert rep.confusion.sum() == 200 and rep.confusion.diag().sum() == round(rep.overall * 200)
    # a sample's class does not depend on the batch it is scored in (the probes' noise is fixed)
    torch.testing.assert_close(class_errors(te, images[5:6]), err[5:6])
    # labels shuffled: the share is chance, 1 / K on average over permutations
    g = torch.Generator().manual_seed(2)
    shuffled = [FidelityReport(rep.classes, asked[torch.randperm(200, generator=g)], rep.got).overall
                for _ in range(200)]
    assert abs(sum(shuffled) / 200 - 0.1) < 0.02


def test_report_per_class_and_bad_inputs():
    rep = FidelityReport(["a", "b", "c"], torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    assert rep.per_class[:2] == [0.5, 1.0] and math.isnan(rep.per_class[2]) and rep.overall == 0.75
    assert rep.worst == 0.5 and rep.to_dict()["count"] == {"a": 2, "b": 2, "c": 0}
    assert "class fidelity 0.750 over 4 samples" in rep.summary()
    te = TemplateDenoiser()
    with pytest.raises(ValueError, match="one class per sample"):
        class_fidelity(te, te.templates, [0, 1])
    with pytest.raises(ValueError, match=r"in 0\.\.9"):
        class_fidelity(te, te.templates, list(range(1, 11)))
    with pytest.raises(ValueError, match=r"images must be \(N, 1, 6, 6\)"):
        class_errors(te, torch.zeros(2, 1, 5, 5))
    with pytest.raises(ValueError, match="not class-conditional"):
        class_errors(object(), te.templates)
    t, noise = make_probes((1, 6, 6), ts=(3, 9), noises=3)
    assert t.tolist() == [3, 3, 3, 9, 9, 9] and noise.shape == (6, 1, 6, 6)


def test_per_class_distribution():
    te = TemplateDenoiser()
    g = torch.Generator().manual_seed(4)
    ref_c, gen_c = torch.arange(3).repeat(30), torch.arange(3).repeat(30)  # 30 samples of classes 0, 1, 2 each

    def draw(c):
        return te.templates[c] + 0.3 * torch.randn((len(c), *te.sample_shape), generator=g)

    gen = draw(gen_c)
    gen[gen_c == 2] = draw(torch.full((30,), 5))  # class 2 asked, class 5 drawn
    rep = per_class_distribution(draw(ref_c), ref_c, gen, gen_c, te.classes, pool=2)
    assert sorted(rep) == ["0", "1", "2"] and rep["0"]["n_ref"] == rep["0"]["n_gen"] == 30
    assert rep["2"]["kid_x1000"] > 10 * max(rep["0"]["kid_x1000"], rep["1"]["kid_x1000"], 1e-3)
    assert rep["2"]["precision"] < 0.2 < rep["0"]["precision"]
    with pytest.raises(ValueError, match="one class per sample"):
        per_class_distribution(gen, ref_c[:5], gen, gen_c, te.classes)


@needs_dit
def test_the_dit_teachers_own_samples_score_high(one_thread):
    from organic_sd.teachers import load_denoiser

    te = load_denoiser(f"dit-mnist-cond:{DIT}")
    images, asked = teacher_samples(te, per_class=3, steps=8, seed=7)  # a seed not used to choose the probes
    assert images.shape == (30, 1, 28, 28) and asked.tolist() == list(range(10)) * 3
    rep = class_fidelity(te, images, asked)
    assert rep.overall >= 0.7, rep.summary()
    g = torch.Generator().manual_seed(3)
    shuffled = [FidelityReport(rep.classes, asked[torch.randperm(30, generator=g)], rep.got).overall
                for _ in range(200)]
    assert abs(sum(shuffled) / 200 - 0.1) < 0.03  # chance for 10 classes
