import json
import zlib

import numpy as np
import pytest
import torch

from conftest import build_tiny_pipeline
from organic_sd import cli, ola
from organic_sd.data.denoiser_precompute import precompute_denoiser
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.ounet import OUNet, OUNetConfig
from organic_sd.ounet.adapter import (
    StackWithCond,
    TextAdapter,
    cond_columns,
    evolve_adapter,
)
from organic_sd.ounet.features import features
from organic_sd.ounet.train import DenoiserTrainConfig, heldout_score, train

T = 40
PROMPTS = [f"prompt {i}" for i in range(6)]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


class FakeCondTeacher:
    """A conditional denoiser whose eps carries a per-prompt offset: only a clone that reads the prompt can match it."""

    id = "fake-cond"
    device = torch.device("cpu")
    sample_shape = (1, 6, 6)
    cond_shape = (3, 5)
    pixel_range = (-1.0, 1.0)
    alphas_cumprod = torch.linspace(0.99, 0.05, T, dtype=torch.float64)

    def __init__(self):
        self.v = torch.tensor([[1.5, -1.0, 0.5, 0.8, -0.6]]).T  # (D, 1) the text direction eps depends on

    def encode_text(self, prompts):
        out = [torch.randn(self.cond_shape, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
               for p in prompts]
        return torch.stack(out)  # (P, L, D)

    def eps(self, x_t, t, cond=None):
        ab = self.alphas_cumprod[torch.as_tensor(t)].float().reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        off = torch.tanh(2 * cond.float().mean(1) @ self.v)[:, :, None, None]  # (B, 1, 1, 1) per prompt
        return 0.5 * (1 - ab).sqrt() * x_t + off


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("cond") / "store"
    torch.set_num_threads(1)
    precompute_denoiser(FakeCondTeacher(), path, 48, steps=4, renoise=4, prompts=PROMPTS, batch=24,
                        val_fraction=0.25, progress=False)
    return DenoiserStore.open(path)


def _train(store, out, cond_dim, ticks=3, adapter_every=2):
    cfg = DenoiserTrainConfig(store=str(store.path), out=str(out), window=3, hidden=(4,), grid=2, freqs=2,
                              modulate=1, cond_dim=cond_dim, adapter_every=adapter_every, ticks=ticks,
                              generations=60, population=16, max_rows=4000, eval_records=48,
                              tick_seconds=3600)  # generations end each tick, not the clock
    return train(cfg, log_to=open("/dev/null", "w"))


def test_adapter_pca_init_and_shapes():
    table = torch.randn(5, 3, 4)
    a = TextAdapter.from_embeddings(table, 6)
    c = a(table)
    assert c.shape == (5, 6) and torch.isfinite(c).all()
    # 5 prompts span 4 directions: the first 4 outputs vary, the rest are constant
    assert (c[:, :4].std(0) > 0.05).all() and torch.allclose(c[:, 4:], c[:1, 4:].expand(5, -1))
    torch.testing.assert_close(a(table.mean(1)), c)  # (B, D) pooled input is accepted as is
    with pytest.raises(ValueError, match="text embedding"):
        a(torch.zeros(2, 3, 7))
    one = TextAdapter.from_embeddings(table[:1], 2)  # one prompt: nothing varies, still valid
    assert one(table[:1]).shape == (1, 2)


def test_stack_with_cond_matches_module():
    cfg = OUNetConfig(sample_shape=(2, 5, 5), num_steps=T, window=3, grid=2, freqs=1, modulate=1, cond_dim=3)
    sched = FakeCondTeacher.alphas_cumprod
    sl = cond_columns(features, cfg, sched)
    m = ola.OLAModule(ola.OLAConfig(cfg.in_dim, 2, (4, 3), out_scale=2.0))
    g = torch.Generator().manual_seed(0)
    for p in m.parameters():
        p.copy_(0.4 * torch.randn(p.shape, generator=g))
    x = torch.randn(2, 2, 5, 5, generator=g)
    t = torch.tensor([3, 30])
    c = torch.randn(2, 3, generator=g)
    rows = features(cfg, sched, x, t, c).flatten(0, 1)  # (50, in)
    base = features(cfg, sched, x, t, torch.zeros(2, 3)).flatten(0, 1)
    f = StackWithCond(m, base, sl)
    torch.testing.assert_close(f(c.repeat_interleave(25, 0)[None])[0], m(rows))
    pick = torch.tensor([0, 7, 49])
    torch.testing.assert_close(f(c.repeat_interleave(25, 0)[pick][None], pick)[0], m(rows[pick]))


def test_save_load_round_trip_and_broken_files(tmp_path, store):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cfg = OUNetConfig(sample_shape=(1, 6, 6), num_steps=T, window=3, grid=2, freqs=2, modulate=1, cond_dim=4)
    m = ola.OLAModule(ola.OLAConfig(cfg.in_dim, 1, (2,), out_scale=3.0))
    for p in m.parameters():
        p.copy_(0.3 * torch.randn(p.shape))
    a = TextAdapter.from_embeddings(store.cond_table, 4)
    u = OUNet(cfg, m, FakeCondTeacher.alphas_cumprod, adapter=a)
    f = u.save(tmp_path / "u.safetensors")
    v = OUNet.load(f)
    x, t = torch.randn(3, 1, 6, 6), torch.tensor([0, 10, 39])
    emb = torch.from_numpy(store.cond[[0, 5, 9]])  # (3, L, D) text embeddings
    torch.testing.assert_close(v(x, t, emb), u(x, t, emb), atol=0, rtol=0)
    torch.testing.assert_close(v(x, t, emb[:1]), u(x, t, emb[:1].expand(3, -1, -1)))  # one prompt, broadcast
    assert v.adapter.config == a.config and v.cond_shape == (3, 5)
    assert v.num_parameters() == m.num_parameters() + a.module.num_parameters()
    with pytest.raises(ValueError, match="conditional"):
        v(x, t)
    with pytest.raises(ValueError, match="text embedding"):
        v(x, t, torch.zeros(3, 4))
    tensors = load_file(f)
    with safe_open(str(f), framework="pt") as fh:
        md = fh.metadata()
    no_tensors = {k: w for k, w in tensors.items() if not k.startswith("adapter.")}
    save_file(no_tensors, tmp_path / "missing.safetensors", metadata=md)
    with pytest.raises(ValueError, match="no adapter tensors"):
        OUNet.load(tmp_path / "missing.safetensors")
    save_file(tensors, tmp_path / "extra.safetensors", metadata={k: w for k, w in md.items() if k != "adapter"})
    with pytest.raises(ValueError, match="no adapter config"):
        OUNet.load(tmp_path / "extra.safetensors")
    bad = dict(tensors, **{"adapter.readout.weight": torch.zeros(4, 7)})
    save_file(bad, tmp_path / "bad.safetensors", metadata=md)
    with pytest.raises(ValueError, match="bad text adapter"):
        OUNet.load(tmp_path / "bad.safetensors")
    wrong = dict(tensors, **{"module.readout.weight": tensors["module.readout.weight"][:, :-1].contiguous()})
    save_file(wrong, tmp_path / "wrong.safetensors", metadata=md)
    with pytest.raises(ValueError, match=r"stack: weights do not match its config; mismatched entries"):
        OUNet.load(tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match="cond values"):
        OUNet(cfg, m, FakeCondTeacher.alphas_cumprod, adapter=TextAdapter.from_embeddings(store.cond_table, 3))


def test_conditional_training_beats_the_prompt_blind_clone(tmp_path, store):
    cond = _train(store, tmp_path / "cond", 2)
    blind = _train(store, tmp_path / "blind", 0)
    assert cond["status"] == blind["status"] == "done"
    # the per-prompt offset is most of eps: only the adapter's cond can carry it
    assert cond["rel_err"] < 0.6 * blind["rel_err"], (cond["rel_err"], blind["rel_err"])
    log = [json.loads(line) for line in (tmp_path / "cond" / "log.jsonl").read_text().splitlines()]
    assert "adapter" in log[1] and "adapter" not in log[0]  # searched every 2nd tick
    u = OUNet.load(tmp_path / "cond")
    assert u.adapter is not None and u.config.cond_dim == 2
    assert OUNet.load(tmp_path / "blind").adapter is None
    with pytest.raises(ValueError, match="cond_dim"):  # resuming with another adapter size is refused
        _train(store, tmp_path / "cond", 3, ticks=1)


def test_adapter_search_repairs_a_broken_adapter(tmp_path, store):
    _train(store, tmp_path / "run", 2, ticks=2, adapter_every=0)
    u = OUNet.load(tmp_path / "run")
    eval_idx = store.indices("val")
    good = heldout_score(u, store, eval_idx)["heldout_mse"]
    # the stack stays; the adapter's rows are swapped and negated, so its cond now misleads the stack
    ad = u.adapter.module
    ad.readout.weight.copy_(-ad.readout.weight.flip(0)), ad.readout.bias.copy_(-ad.readout.bias.flip(0))
    broken = heldout_score(u, store, eval_idx)["heldout_mse"]
    assert broken > 1.5 * good
    new, summary = evolve_adapter(u, store, store.indices("train"), generations=120, population=16, seed=1)
    assert summary["val_mse_after"] < 0.7 * summary["val_mse_before"]
    fixed = heldout_score(OUNet(u.config, u.module, u.schedule, adapter=new), store, eval_idx)["heldout_mse"]
    assert fixed < 0.7 * broken, (good, broken, fixed)


def test_generate_with_a_prompt(tmp_path, store):
    from organic_sd.ounet.generate import generate

    _train(store, tmp_path / "run", 2, ticks=1)
    u = OUNet.load(tmp_path / "run")
    teacher = FakeCondTeacher()
    a = generate(u, tmp_path / "a.png", steps=3, n=2, cond=teacher.encode_text([PROMPTS[0]]), teacher=teacher)
    b = generate(u, tmp_path / "b.png", steps=3, n=2, cond=teacher.encode_text([PROMPTS[3]]))
    assert (tmp_path / "a.png").is_file() and np.isfinite(a["psnr"])
    assert not torch.equal(a["samples"], b["samples"])  # the prompt changes the samples
    with pytest.raises(ValueError, match="conditional"):
        generate(u, tmp_path / "c.png", steps=3, n=2)


@pytest.mark.slow
def test_sd_pipeline_end_to_end(tmp_path, capsys):
    pipe = build_tiny_pipeline(tmp_path / "sd")
    (tmp_path / "p.txt").write_text("a red cat\na blue dog\na green tree\n")
    store, run, png = tmp_path / "store", tmp_path / "run", tmp_path / "x.png"
    assert cli.main(["precompute", "denoiser", "--teacher", str(pipe), "--prompts", str(tmp_path / "p.txt"),
                     "--out", str(store), "--samples", "4", "--steps", "3", "--renoise", "1", "--device", "cpu",
                     "--val-fraction", "0.25"]) == 0
    assert cli.main(["train", "denoiser", "--store", str(store), "--out", str(run), "--ticks", "2", "--cond-dim",
                     "4", "--generations", "5", "--hidden", "2", "--window", "3", "--modulate", "1",
                     "--max-rows", "2000", "--eval-records", "4"]) == 0
    u = OUNet.load(run)
    assert u.adapter is not None and u.adapter.config.cond_shape == (16, 32) and u.config.cond_dim == 4
    capsys.readouterr()
    assert cli.main(["generate", "a prompt", "--ounet", str(run), "--teacher", str(pipe), "--steps", "2",
                     "--n", "2", "--out", str(png)]) == 0
    assert "prompt 'a prompt'" in capsys.readouterr().out
    from PIL import Image

    assert Image.open(png).size[0] > 0
    assert cli.main(["generate", "a prompt", "--ounet", str(run), "--steps", "2", "--out", str(png)]) == 2
    assert cli.main(["generate", "--ounet", str(run), "--teacher", str(pipe), "--steps", "2", "--n", "1",
                     "--vae", "teacher", "--out", str(png)]) == 2  # the tiny pipeline has no vae/: a clear error
    from diffusers import AutoencoderKL

    AutoencoderKL(latent_channels=4, block_out_channels=(8, 16), norm_num_groups=4,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(pipe / "vae")
    assert cli.main(["generate", "--ounet", str(run), "--teacher", str(pipe), "--steps", "2", "--n", "1",
                     "--vae", "teacher", "--out", str(png)]) == 0  # the empty prompt, decoded by the pipeline's VAE
    assert Image.open(png).size == (4 * (18 + 8 + 18), 4 * 18)  # 16 x 16 images (VAE f = 2): clone | teacher
