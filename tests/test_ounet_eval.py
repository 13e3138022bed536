import json

import pytest
import torch

# the tiny random O-UNet; as a teacher it is the fake denoiser here
from conftest import T, schedule, tiny_ounet

import organic_sd.teachers
from organic_sd import cli, ola
from organic_sd.ounet import OUNet, OUNetConfig
from organic_sd.ounet.evaluate import evaluate_denoiser

FAST = {"n": 3, "steps": (2, 4), "ts": (1, 25, 49), "repeats": 2, "time_batch": 2}


def conditional(cond_dim=3) -> OUNet:
    cfg = OUNetConfig(sample_shape=(1, 8, 8), num_steps=T, window=3, grid=2, freqs=2, cond_dim=cond_dim)
    m = ola.OLAModule(ola.OLAConfig(cfg.in_dim, 1, (), out_scale=3.0))
    for p in m.parameters():
        p.copy_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(5)))
    return OUNet(cfg, m, schedule())


def test_report_fields_and_files(tmp_path):
    rep = evaluate_denoiser(tiny_ounet(seed=0), tiny_ounet(seed=1), tmp_path / "ev", **FAST)
    assert set(rep["eps_error"]) == {"1", "25", "49"} and set(rep["ddim"]) == {"2", "4"}
    assert all(v > 0 for v in rep["eps_error"].values())
    assert all(v["psnr"] < 100 for v in rep["ddim"].values())  # two different models draw different images
    c = rep["cpu"]
    assert c["threads"] == 1 and c["ounet_ms_per_step"] > 0 and c["speedup"] == pytest.approx(
        c["teacher_ms_per_step"] / c["ounet_ms_per_step"])
    assert rep["parameters"]["ounet"] == tiny_ounet().num_parameters() == rep["parameters"]["teacher"]
    saved = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert saved["eps_error"] == rep["eps_error"] and saved["ddim"] == rep["ddim"]
    assert "| eps error t = 25 |" in (tmp_path / "ev" / "report.md").read_text()
    from PIL import Image

    w, h = Image.open(tmp_path / "ev" / "samples.png").size
    assert w > h  # clone | teacher side by side, one band per step count


def test_model_against_itself_is_exact():
    u = tiny_ounet()
    rep = evaluate_denoiser(u, u, None, **FAST)
    assert all(v == 0 for v in rep["eps_error"].values())
    assert all(v["psnr"] >= 100 and v["mse"] == 0 for v in rep["ddim"].values())  # infinite PSNR is capped
    cu = conditional()
    rep = evaluate_denoiser(cu, cu, None, cond=torch.ones(3), **FAST)  # one conditioning for every sample
    assert all(v["psnr"] >= 100 for v in rep["ddim"].values())


def test_mismatched_teacher_is_refused():
    u = tiny_ounet()
    with pytest.raises(ValueError, match="samples"):
        evaluate_denoiser(u, tiny_ounet(shape=(1, 6, 6)), None, **FAST)
    short = OUNet(OUNetConfig(sample_shape=(1, 8, 8), num_steps=T - 10, window=3), u.module, schedule()[:-10])
    with pytest.raises(ValueError, match="steps"):
        evaluate_denoiser(u, short, None, **FAST)
    with pytest.raises(ValueError, match="schedule differs"):
        evaluate_denoiser(u, OUNet(u.config, u.module, schedule() * 0.9), None, **FAST)
    with pytest.raises(ValueError, match="outside"):
        evaluate_denoiser(u, u, None, **{**FAST, "ts": (T,)})
    with pytest.raises(ValueError, match="conditional"):
        evaluate_denoiser(conditional(), conditional(), None, **FAST)
    with pytest.raises(ValueError, match="unconditional"):
        evaluate_denoiser(u, u, None, cond=torch.ones(3), **FAST)


def test_cli_writes_report(tmp_path, monkeypatch, capsys):
    f = tiny_ounet().save(tmp_path / "u.safetensors")
    monkeypatch.setattr(organic_sd.teachers, "load_denoiser", lambda spec, device="cpu": tiny_ounet(seed=1))
    out = tmp_path / "ev"
    assert cli.main(["eval", "denoiser", "--ounet", str(f), "--teacher", "fake", "--out", str(out), "--n", "2",
                     "--steps", "2", "--t", "10", "40", "--samples", "0"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert set(rep["eps_error"]) == {"10", "40"} and set(rep["ddim"]) == {"2"}
    assert "distribution" not in rep and not (out / "distribution.png").exists()  # tests/test_ounet_distribution
    assert str(out / "report.json") in capsys.readouterr().out
    assert cli.main(["eval", "denoiser", "--ounet", str(tmp_path / "missing"), "--teacher", "fake",
                     "--out", str(out)]) == 2
    assert "no O-UNet" in capsys.readouterr().err
