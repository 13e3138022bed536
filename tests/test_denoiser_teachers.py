import json
import time

import numpy as np
import pytest
import torch

from conftest import MNIST, build_tiny_pipeline, needs_mnist
from organic_sd.teachers import TeacherError, load_denoiser
from organic_sd.teachers.ddpm_mnist import DDPMMnistModule
from organic_sd.teachers.ddim import ddim_sample, ddim_timesteps



@pytest.fixture(scope="module")
def mnist():
    if not MNIST.is_file():
        pytest.skip(f"{MNIST} not present")
    return load_denoiser(f"ddpm-mnist:{MNIST}")


@needs_mnist
def test_mnist_file_loads_every_tensor(mnist):
    state = torch.load(MNIST, map_location="cpu", weights_only=True)
    mine = mnist.module.state_dict()
    assert sorted(mine) == sorted(state)  # no missing, no unexpected keys
    for k, v in state.items():
        assert torch.equal(mine[k], v.cpu()), k
    n = sum(v.numel() for k, v in mine.items() if k.startswith("gt.") and k != "gt.frequencies")
    assert n == 291_217  # the README's parameter count
    assert mnist.alphas_cumprod.shape == (1001,) and mnist.sample_shape == (1, 28, 28)
    assert mnist.cond_shape is None and mnist.pixel_range == (-0.5, 0.5)
    # the same file through every spec form gives the same id
    assert load_denoiser(MNIST).id == load_denoiser(MNIST.parent).id == mnist.id


@needs_mnist
def test_mnist_eps_shape_and_timestep_dependence(mnist):
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    e10 = mnist.eps(x, torch.full((3,), 10))
    e900 = mnist.eps(x, 900)  # a scalar step is broadcast
    assert e10.shape == (3, 1, 28, 28) and e10.dtype == torch.float32 and torch.isfinite(e10).all()
    assert (e10 - e900).abs().mean() > 0.05  # the step matters
    # at t = 900 x_t is nearly pure noise, so eps is nearly x_t itself
    assert ((e900 - x) ** 2).mean() < 0.05
    torch.testing.assert_close(mnist.eps(x[:1], 10), e10[:1], atol=1e-5, rtol=1e-4)


@needs_mnist
def test_mnist_ddim_samples_are_digit_like(mnist):
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(8, 1, 28, 28, generator=g)
    x0 = ddim_sample(mnist, noise, 25)  # (8, 1, 28, 28)
    torch.testing.assert_close(ddim_sample(mnist, noise, 25), x0, atol=0, rtol=0)  # deterministic
    # MNIST in [-0.5, 0.5] is mostly black background with white strokes: near-binary pixels
    near = ((x0 + 0.5).abs() < 0.1) | ((x0 - 0.5).abs() < 0.1)
    assert near.float().mean() > 0.8
    ink = (x0 > 0).float().mean(dim=(1, 2, 3))  # (8,) share of stroke pixels per sample
    assert (ink > 0.03).all() and (ink < 0.4).all()
    # the teacher knows its own samples: re-noised at t, it finds the noise again
    for t, bound in ((50, 0.2), (500, 0.05)):
        ab = float(mnist.alphas_cumprod[t])
        n = torch.randn(x0.shape, generator=g)
        e = mnist.eps(ab**0.5 * x0 + (1 - ab) ** 0.5 * n, t)
        assert ((e - n) ** 2).mean() < bound, t


def test_ddim_timesteps():
    assert ddim_timesteps(1001, 5) == [1000, 800, 600, 400, 200]
    assert ddim_timesteps(1000, 1) == [999]
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(1001, 0)
    # a chosen last step: evenly spaced from the top down to it
    assert ddim_timesteps(1001, 8, 30) == [1000, 861, 723, 584, 446, 307, 169, 30]
    assert ddim_timesteps(1001, 8, 125) == ddim_timesteps(1001, 8) and ddim_timesteps(1001, 1, 7) == [1000]
    for bad in (0, 994):  # t = 0 is the clean image; above 993 eight distinct steps do not fit
        with pytest.raises(ValueError, match=r"last step must be in 1..993 for 8 steps"):
            ddim_timesteps(1001, 8, bad)


@needs_mnist
def test_mnist_bad_inputs(mnist):
    x = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match=r"shape \(B, 1, 28, 28\), got \(2, 28, 28\)"):
        mnist.eps(x[:, 0], 5)
    with pytest.raises(ValueError, match=r"t must be in 0..1000, got values in 5..1001"):
        mnist.eps(x, torch.tensor([5, 1001]))
    with pytest.raises(ValueError, match="t must have shape"):
        mnist.eps(x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        mnist.eps(x, torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="unconditional"):
        mnist.eps(x, 5, cond=torch.zeros(2, 3, 4))
    with pytest.raises(TeacherError, match="no text encoder"):
        mnist.encode_text(["a digit"])


def test_mnist_mismatches_are_all_listed(tmp_path):
    state = DDPMMnistModule().state_dict()
    del state["gt.blocks.2.net.0.bias"]
    state["gt.blocks.0.net.0.weight"] = torch.zeros(8, 1, 7, 7)
    state["gt.extra"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(TeacherError) as e:
        load_denoiser(f"ddpm-mnist:{tmp_path / 'bad.pth'}")
    msg = str(e.value)
    assert "3 mismatches" in msg and "missing gt.blocks.2.net.0.bias" in msg and "unexpected gt.extra" in msg
    assert "shape gt.blocks.0.net.0.weight: expected (16, 1, 7, 7), file has (8, 1, 7, 7)" in msg


def test_not_a_denoiser(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(TeacherError, match="not a denoiser"):
        load_denoiser(tmp_path / "x.pth")
    with pytest.raises(TeacherError, match="not the MNIST DDPM"):
        load_denoiser(f"ddpm-mnist:{tmp_path / 'x.pth'}")
    with pytest.raises(FileNotFoundError):
        load_denoiser(tmp_path / "nothing.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="neither"):
        load_denoiser(tmp_path / "empty")
    if not torch.cuda.is_available():  # the device is checked before any file is read
        with pytest.raises(TeacherError, match="not available"):
            load_denoiser("ddpm-mnist", device="cuda:7")


# ---- the Stable Diffusion path, on a tiny randomly initialised pipeline


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    return build_tiny_pipeline(tmp_path_factory.mktemp("sd"))


def test_sd_pipeline_eps_and_text(tiny_pipe):
    from diffusers import UNet2DConditionModel

    d = load_denoiser(tiny_pipe)
    assert d.sample_shape == (4, 8, 8) and d.cond_shape == (16, 32) and d.alphas_cumprod.shape == (1000,)
    assert d.pixel_range == (-1.0, 1.0)
    assert d.id.startswith("sd-pipeline:") and load_denoiser(str(tiny_pipe)).id == d.id
    c = d.encode_text(["a red cat", "a blue dog", ""])
    assert c.shape == (3, 16, 32) and torch.isfinite(c).all()
    assert (c[0] - c[1]).abs().max() > 1e-3  # prompts give different embeddings
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 999])
    e = d.eps(x, t, c)
    assert e.shape == (3, 4, 8, 8) and torch.isfinite(e).all()
    unet = UNet2DConditionModel.from_pretrained(tiny_pipe / "unet")
    with torch.no_grad():
        torch.testing.assert_close(e, unet(x, t, encoder_hidden_states=c).sample)
    torch.testing.assert_close(d.eps(x, t), d.eps(x, t, c[2:3]))  # None = the empty prompt, broadcast
    assert (d.eps(x[:1], 500, c[:1]) - d.eps(x[:1], 500, c[1:2])).abs().max() > 1e-5  # the prompt matters
    with pytest.raises(ValueError, match=r"cond must have shape \(3, 16, 32\)"):
        d.eps(x, t, torch.zeros(3, 16, 8))
    with pytest.raises(ValueError, match="t must be in 0..999"):
        d.eps(x, 1000, c)
    out = ddim_sample(d, x, 3, c)
    torch.testing.assert_close(ddim_sample(d, x, 3, c), out, atol=0, rtol=0)


def test_sd_v_prediction_is_converted(tmp_path):
    from diffusers import UNet2DConditionModel

    pipe = build_tiny_pipeline(tmp_path, "v_prediction")
    d = load_denoiser(pipe)
    assert d.prediction_type == "v_prediction"
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 800])
    c = d.encode_text(["x", "y"])
    unet = UNet2DConditionModel.from_pretrained(pipe / "unet")
    with torch.no_grad():
        v = unet(x, t, encoder_hidden_states=c).sample
    ab = d.alphas_cumprod[t].float()[:, None, None, None]
    torch.testing.assert_close(d.eps(x, t, c), ab.sqrt() * v + (1 - ab).sqrt() * x, atol=1e-5, rtol=1e-4)


def test_sd_hub_id_offline_fails_fast(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(TeacherError, match="not in the hub cache.*HF_HUB_OFFLINE.*local diffusers pipeline folder"):
        load_denoiser("nobody/no-such-sd-pipeline")
    assert time.perf_counter() - t0 < 5


def test_sd_hub_id_from_cache(tmp_path, monkeypatch, tiny_pipe):
    import shutil

    from huggingface_hub import constants

    snap = tmp_path / "models--someone--tiny-sd" / "snapshots" / ("cd" * 20)
    shutil.copytree(tiny_pipe, snap)
    (tmp_path / "models--someone--tiny-sd" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-sd" / "refs" / "main").write_text("cd" * 20)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = load_denoiser("someone/tiny-sd")
    assert d.id == "someone/tiny-sd@" + "cd" * 20 and d.sample_shape == (4, 8, 8)


def test_sd_precompute_with_prompts(tiny_pipe, tmp_path):
    from organic_sd.data.denoiser_precompute import precompute_denoiser
    from organic_sd.data.denoiser_store import DenoiserStore

    d = load_denoiser(tiny_pipe)
    prompts = ["a red cat", "a blue dog"]
    rep = precompute_denoiser(d, tmp_path / "st", 3, steps=3, renoise=1, prompts=prompts, batch=2, progress=False)
    assert rep.records_written == 3 * 4
    s = DenoiserStore.open(tmp_path / "st")
    assert s.cond.shape == (12, 16, 32) and s.prompts == prompts
    table = d.encode_text(prompts).numpy().astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(s.cond[4], table[1])  # sample 1 -> prompt 1
    np.testing.assert_array_equal(s.cond[8], table[0])  # sample 2 -> prompt 0 (i mod P)
    i = 5
    e = d.eps(torch.from_numpy(s.x_t[[i]]), torch.tensor([int(s.t[i])]), torch.from_numpy(s.cond[[i]]))
    np.testing.assert_allclose(s.eps[i], e[0].numpy(), atol=2e-3)
    s.verify()


def test_sd_cli_with_prompts_file(tiny_pipe, tmp_path, capsys):
    from organic_sd.cli import main

    (tmp_path / "p.txt").write_text("a red cat\n\na blue dog\n")
    argv = ["precompute", "denoiser", "--teacher", str(tiny_pipe), "--out", str(tmp_path / "s"), "--prompts",
            str(tmp_path / "p.txt"), "--samples", "2", "--steps", "2", "--renoise", "1", "--device", "cpu"]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["prompts"] == ["a red cat", "a blue dog"] and meta["cond_shape"] == [16, 32] and meta["count"] == 6


def test_sd_unsupported_pipelines_are_refused(tiny_pipe, tmp_path):
    import shutil

    pipe = tmp_path / "zsnr"
    shutil.copytree(tiny_pipe, pipe)
    cfg = json.loads((pipe / "scheduler" / "scheduler_config.json").read_text())
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps({**cfg, "rescale_betas_zero_snr": True}))
    with pytest.raises(TeacherError, match="zero terminal SNR"):
        load_denoiser(pipe)
    shutil.rmtree(pipe / "text_encoder")
    with pytest.raises(TeacherError, match=r"lacks \['text_encoder'\]"):
        load_denoiser(pipe)
