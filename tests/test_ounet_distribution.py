import json

import pytest
import torch

import organic_sd.teachers
from organic_sd import cli, ola
from organic_sd.ounet import OUNet, OUNetConfig
from organic_sd.ounet import distribution as dist
from organic_sd.ounet.evaluate import evaluate_denoiser

T = 22  # a short schedule (eps error samples take 20 steps): the many-step reference is every step (21)
FAST = {"n": 2, "steps": (2,), "ts": (5,), "repeats": 1, "time_batch": 2}


def short(seed=0) -> OUNet:
    """test_ounet's tiny random O-UNet on a 22-step schedule; as a teacher it is the fake denoiser here."""
    cfg = OUNetConfig(sample_shape=(1, 8, 8), num_steps=T, window=3, grid=2, freqs=2, modulate=1, teacher="fake",
                      pixel_range=(-0.5, 0.5))
    m = ola.OLAModule(ola.OLAConfig(cfg.in_dim, 1, (3,), out_scale=3.0))
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return OUNet(cfg, m, torch.linspace(0.999, 0.01, T, dtype=torch.float64))


def test_report_holds_both_sets_against_the_reference(tmp_path):
    rep = evaluate_denoiser(short(0), short(1), tmp_path / "ev", samples=24, sample_steps=4, **FAST)
    d = rep["distribution"]
    assert d["ref_steps"] == T - 1 and d["steps"] == 4 and d["n"] == 24 and d["seed"] == 999 + 2
    assert d["reference"] == "the teacher's 21-step DDIM samples" and d["dims"] == 4  # 8x8 pooled 4x4
    for name in ("teacher", "ounet"):
        assert set(d[name]) >= {"kid_x1000", "precision", "recall", "psnr_vs_reference", "denoise_err"}
        assert 0 <= d[name]["precision"] <= 1 and 0 <= d[name]["recall"] <= 1
        assert d[name]["denoise_err"] > 0
    assert d["reference_denoise_err"] > 0
    assert d["ounet"]["kid_x1000"] != d["teacher"]["kid_x1000"]  # two different models
    assert d["ounet"]["denoise_err"] != d["teacher"]["denoise_err"]
    md = (tmp_path / "ev" / "report.md").read_text()
    assert "the teacher's 21-step DDIM samples" in md and "| O-UNet, 4 steps |" in md
    assert "low-noise error" in md and "| teacher, 21 steps (the reference) |" in md
    from PIL import Image

    w, h = Image.open(tmp_path / "ev" / "distribution.png").size
    assert w > 2 * h  # reference | teacher | O-UNet


def test_clone_equal_to_teacher_scores_as_the_teacher():
    u = short()
    d = evaluate_denoiser(u, u, None, samples=16, sample_steps=4, **FAST)["distribution"]
    assert d["ounet"]["kid_x1000"] == d["teacher"]["kid_x1000"]
    assert d["ounet"]["denoise_err"] == d["teacher"]["denoise_err"]
    assert d["ounet"]["psnr_vs_teacher"] >= 100  # identical samples: PSNR capped
    with pytest.raises(ValueError, match="samples"):
        evaluate_denoiser(u, u, None, samples=1, **FAST)


def test_teacher_sets_drawn_once_per_cache(monkeypatch):
    calls = []
    real = dist.draw
    monkeypatch.setattr(dist, "draw", lambda model, noise, steps, last=None: calls.append(steps) or
                        real(model, noise, steps, last))
    teacher, cache = short(1), {}  # as bench/ounet.py scores several O-UNets against one teacher
    a = evaluate_denoiser(short(0), teacher, None, samples=12, sample_steps=3, sample_cache=cache, **FAST)
    b = evaluate_denoiser(short(2), teacher, None, samples=12, sample_steps=3, sample_cache=cache, **FAST)
    a, b = a["distribution"], b["distribution"]
    assert calls == [T - 1, 3, 3, 3]  # reference and teacher once, each O-UNet once
    assert a["teacher"] == b["teacher"] and b["seconds"]["teacher_cached"] and not a["seconds"]["teacher_cached"]
    assert a["ounet"] != b["ounet"]
    c = evaluate_denoiser(short(0), teacher, None, samples=12, sample_steps=3, sample_cache=cache, last_t=4, **FAST)
    assert calls == [T - 1, 3, 3, 3, 3, 3]  # another schedule: the teacher's few-step set again, not the reference
    assert c["distribution"]["timesteps"] == [21, 12, 4] and a["timesteps"] == [21, 14, 7]
    assert c["distribution"]["teacher"] != a["teacher"] and c["last_t"] == 4


def test_a_lower_last_step_changes_the_samples_and_stays_seeded():
    u = short()
    a, b = u.sample(4, steps=4, seed=1), u.sample(4, steps=4, seed=1, last_t=2)
    assert a.shape == b.shape == (4, 1, 8, 8) and not torch.equal(a, b)
    assert torch.equal(b, u.sample(4, steps=4, seed=1, last_t=2))
    assert torch.equal(a, u.sample(4, steps=4, seed=1, last_t=5))  # the default schedule ends at 21 / 4 -> 5
    with pytest.raises(ValueError, match="last step must be in 1..18"):
        u.sample(1, steps=4, last_t=19)


def test_chunked_sampling_matches_one_batch(monkeypatch):
    noise = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    whole = dist.draw(short(1), noise, 4)
    monkeypatch.setattr(dist, "CHUNK", 5)
    assert torch.allclose(dist.draw(short(1), noise, 4), whole, rtol=1e-5, atol=1e-5)


def test_cli_reports_the_distribution(tmp_path, monkeypatch, capsys):
    f = short().save(tmp_path / "u.safetensors")
    monkeypatch.setattr(organic_sd.teachers, "load_denoiser", lambda spec, device="cpu": short(1))
    out = tmp_path / "ev"
    assert cli.main(["eval", "denoiser", "--ounet", str(f), "--teacher", "fake", "--out", str(out), "--n", "2",
                     "--steps", "2", "--t", "5", "--samples", "10", "--samples-steps", "3"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["distribution"]["n"] == 10 and rep["distribution"]["steps"] == 3
    assert rep["files"]["distribution.png"] == str(out / "distribution.png")
    assert "KID x1000 / precision / recall" in capsys.readouterr().out
    assert cli.main(["eval", "denoiser", "--ounet", str(f), "--teacher", "fake", "--out", str(out), "--n", "2",
                     "--steps", "2", "--t", "5", "--samples", "10", "--samples-steps", "3", "--last-t", "3"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["last_t"] == 3 and rep["distribution"]["timesteps"] == [21, 12, 3]
