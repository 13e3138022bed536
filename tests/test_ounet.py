import json

import pytest
import torch
from torch import nn

import organic_sd
from conftest import MNIST, T, needs_mnist, schedule, tiny_ounet
from organic_sd import cli, ola
from organic_sd.ounet import OUNet, OUNetConfig
from organic_sd.ounet import features as features_mod
from organic_sd.ounet import model as model_mod
from organic_sd.ounet.generate import generate
from organic_sd.ounet.train import DENOISER_UNITS_PER_ROUND

class Centre(nn.Module):
    """Copies each channel's centre window input: an O-UNet with it returns x_t itself."""

    def __init__(self, cfg):
        super().__init__()
        self.cols = [cfg.centre_index(c) for c in range(cfg.sample_shape[0])]

    def forward(self, x):
        return x[..., self.cols]


def test_patch_assembly_is_exact():
    for shape, k in (((1, 8, 8), 3), ((3, 6, 10), 5)):
        cfg = OUNetConfig(sample_shape=shape, num_steps=T, window=k, grid=2, freqs=3, modulate=3)
        u = OUNet(cfg, Centre(cfg), schedule())
        x = torch.randn(2, *shape)
        assert torch.equal(u(x, torch.tensor([0, T - 1])), x)


def test_features_shape_and_content():
    u = tiny_ounet()
    x = torch.randn(2, 1, 8, 8)
    rows = features_mod.features(u.config, u.schedule, x, torch.tensor([3, 40]))
    assert rows.shape == (2, 64, u.config.in_dim)
    ab = float(schedule()[40])
    k2 = u.config.window ** 2
    assert torch.allclose(rows[1, :, k2], torch.full((64,), ab ** 0.5))  # sqrt(alpha-bar) after the window
    assert torch.allclose(rows[0, :, k2 + 2 + 4:k2 + 2 + 4 + 4],  # 2 x 2 pooled global context
                          torch.nn.functional.adaptive_avg_pool2d(x[:1], 2).flatten(1).expand(64, -1))
    mod = k2 + 2 + 4 + 4 + 2  # modulated inputs after the position: (inner 1 x 1 window, global) x sqrt(ab), ...
    assert torch.allclose(rows[1, :, mod], x[1].flatten() * ab ** 0.5)
    assert torch.allclose(rows[1, :, mod + 5], x[1].flatten() * (1 - ab) ** 0.5)
    assert rows.shape[2] == mod + 10


def test_save_load_round_trip(tmp_path):
    u = tiny_ounet()
    u.meta = {"note": "x"}
    f = u.save(tmp_path / "u.safetensors")
    v = OUNet.load(f)
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 10, 49])
    assert torch.equal(u(x, t), v(x, t))
    assert v.meta == {"note": "x"} and v.num_parameters() == u.num_parameters()
    assert torch.equal(v.schedule, schedule()) and v.config == u.config
    u.save(tmp_path / "run")  # a folder gets model.safetensors, as a training run has
    assert torch.equal(OUNet.load(tmp_path / "run")(x, t), u(x, t))
    from organic_sd.info import ounet_summary  # no training summary, no head: still a summary

    assert ounet_summary(v).startswith("O-UNet, ") and "trained: not recorded" in ounet_summary(v)
    assert organic_sd.OUNet is OUNet


def test_bad_inputs(tmp_path, monkeypatch):
    u = tiny_ounet()
    with pytest.raises(ValueError, match="shape"):
        u(torch.randn(2, 1, 9, 8), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="0..49"):
        u(torch.randn(2, 1, 8, 8), torch.tensor([1, 50]))
    with pytest.raises(ValueError, match="shape"):
        u(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="unconditional"):
        u(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), cond=torch.zeros(2, 4))
    m = ola.OLAModule(ola.OLAConfig(4, 1))
    m.save(tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="not an O-UNet"):
        OUNet.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="not an O-UNet"):
        OUNet.load(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        OUNet.load(tmp_path / "missing")
    monkeypatch.setitem(model_mod.SHIPPED, "mnist", tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError, match="osd train denoiser"):
        OUNet.load()
    with pytest.raises(ValueError, match="odd"):
        OUNetConfig(sample_shape=(1, 8, 8), num_steps=T, window=4)
    with pytest.raises(ValueError, match="modulate"):
        OUNetConfig(sample_shape=(1, 8, 8), num_steps=T, window=3, modulate=5)


def test_generate_is_deterministic(tmp_path):
    u = tiny_ounet()
    a = generate(u, tmp_path / "a.png", steps=4, seed=3, n=4)
    b = generate(u, tmp_path / "b.png", steps=4, seed=3, n=4)
    c = generate(u, tmp_path / "c.png", steps=4, seed=4, n=4)
    assert torch.equal(a["samples"], b["samples"]) and not torch.equal(a["samples"], c["samples"])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    # the teacher panel: the same model as teacher draws the same images (infinite PSNR is capped)
    d = generate(u, tmp_path / "d.png", steps=4, seed=3, n=4, teacher=u)
    assert d["psnr"] >= 100


@needs_mnist
def test_end_to_end_mnist(tmp_path, capsys):
    store, run, png = tmp_path / "store", tmp_path / "run", tmp_path / "g.png"
    assert cli.main(["precompute", "denoiser", "--teacher", f"ddpm-mnist:{MNIST}", "--out", str(store),
                     "--samples", "4", "--steps", "5", "--renoise", "2", "--batch", "4", "--device", "cpu",
                     "--val-fraction", "0.5"]) == 0
    args = ["train", "denoiser", "--store", str(store), "--out", str(run), "--ticks", "1", "--generations", "5",
            "--max-rows", "2000", "--hidden", "2", "--eval-records", "4", "--window", "3", "--modulate", "1"]
    assert cli.main(args) == 0
    assert {"config.json", "model.safetensors", "state.json", "log.jsonl"} <= {p.name for p in run.iterdir()}
    assert cli.main(args) == 0  # resume: one more tick on the same run
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["tick"] for r in log] == [1, 2]
    (run / "state.json").unlink()  # a crash between the checkpoint and state.json: the checkpoint knows
    assert cli.main(args) == 0
    state = json.loads((run / "state.json").read_text())
    assert state["tick"] == 3 and set(state["best"]) == {"heldout_mse", "rel_err"}
    assert cli.main(["train", "denoiser", "--store", str(store), "--out", str(run), "--ticks", "1",
                     "--window", "5"]) == 2  # other settings: refused, not mixed
    assert cli.main([*args, "--eval-records", "8"]) == 2  # other held-out records would judge the ticks
    deflated = tmp_path / "deflated"
    assert cli.main([*args[:5], str(deflated), *args[6:], "--deflate"]) == 0
    assert OUNet.load(deflated).module.training_summary["subspace"]["deflate"] is True
    assert OUNet.load(run).module.training_summary["subspace"]["deflate"] is False
    capsys.readouterr()
    assert cli.main(["generate", "--ounet", str(run), "--steps", "2", "--n", "2", "--seed", "1",
                     "--teacher", f"ddpm-mnist:{MNIST}", "--out", str(png)]) == 0
    assert "PSNR O-UNet vs teacher" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(png).size[0] > Image.open(png).size[1]  # clone | teacher side by side
    u = OUNet.load(run)
    assert u.config.pixel_range == (-0.5, 0.5) and u.meta["tick"] == 3
    assert u.module.training_summary["units_per_round"] == DENOISER_UNITS_PER_ROUND  # not the O-VAE's rounds
    assert u(torch.zeros(1, 1, 28, 28), 999).shape == (1, 1, 28, 28)


def test_gained_window_is_the_input_over_the_noise_level():
    cfg = OUNetConfig(sample_shape=(2, 6, 6), num_steps=T, window=5, grid=2, freqs=1, modulate=3, gain=3)
    x_t = torch.randn(3, 2, 6, 6)
    t = torch.tensor([0, 20, 49])
    rows = features_mod.features(cfg, schedule(), x_t, t)  # (B, HW, in)
    assert rows.shape == (3, 36, cfg.in_dim)
    sig = (1 - schedule()[t].float() + features_mod.GAIN_FLOOR ** 2).sqrt()  # (B,)
    gained = rows[..., cfg.in_dim - 2 * 9:].reshape(3, 6, 6, 2, 3, 3)  # (B, H, W, C, n, n): the last columns
    torch.testing.assert_close(gained[..., 1, 1], x_t.permute(0, 2, 3, 1) / sig[:, None, None, None])
    with pytest.raises(ValueError, match="gain must be 0 or odd"):
        OUNetConfig(sample_shape=(1, 6, 6), num_steps=T, window=5, gain=2)


def test_shipped_default_generates_samples_with_a_dark_background(tmp_path, capsys):
    """The package's own O-UNet: MNIST-shaped, honest about its teacher, small, and `osd generate` runs on it."""
    u = OUNet.load()
    assert u.sample_shape == (1, 28, 28) and u.config.teacher.startswith("ddpm-mnist")
    assert u.num_parameters() <= 150_000 and u.config.cond_dim == 0
    assert cli.main(["generate", "--steps", "4", "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size[0] > 28
    # a clean sample is mostly the teacher's dark background, not noise
    x = generate(u, tmp_path / "h.png", steps=8, seed=3, n=8)["samples"]
    assert 0.0 <= float(x.mean()) < 0.35
