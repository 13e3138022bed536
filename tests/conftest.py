"""Shared test helpers: fake teachers, tiny stores and models, and where the real teacher files live.

Test modules take these as fixtures or import them from here; no test module imports another.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from organic_sd import ola
from organic_sd.data import precompute
from organic_sd.ounet import OUNet, OUNetConfig
from organic_sd.ovae import OVAE, Part, PartConfig

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OSD_SHARED_DATA") or REPO.parent / "shared" / "data")  # real teachers and data
MNIST = SHARED / "teachers" / "ddpm-mnist" / "ddpm_mnist_starter.pth"
needs_mnist = pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} not present")
DIT = SHARED / "teachers" / "dit-mnist-cond" / "model-40000.pth"  # the class-conditional MNIST DiT
needs_dit = pytest.mark.skipif(not DIT.is_file(), reason=f"{DIT} not present")


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny nets, and a loaded machine makes thread pools slow."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- VAE side


class FakeTeacher:
    """Avg-pool by 8 to 4 channels (RGB + mean), nearest upsample back; `delay` seconds per batch."""

    id = "fake-avgpool8-c4"
    latent_channels = 4
    downscale = 8
    device = torch.device("cpu")

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def encode(self, x):
        time.sleep(self.delay)
        z = F.avg_pool2d(x, 8)  # (B, 3, H/8, W/8)
        return torch.cat([z, z.mean(1, keepdim=True)], 1)  # (B, 4, H/8, W/8)

    def decode(self, z):
        return F.interpolate(z[:, :3], scale_factor=8, mode="nearest")  # (B, 3, H, W)


def noise_images(folder: Path, n: int, size=(48, 40), seed=0) -> str:
    """n white-noise PNGs of size (W, H) written into folder; -> the folder, as a source spec."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"im{i:03d}.png")
    return str(folder)


def smooth_images(folder, n, size=40, seed=0):
    """Smooth random colour fields (learnable, unlike white noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(folder / f"im{i:03d}.png")
    return folder


STORE_SIZE = 32  # 4 x 4 latent cells per image: every fit on the store is a few thousand rows at most


def random_taesd(folder: Path, stem: str, channels: int, gn: bool, suffix: str = ".pth", seed: int = 0):
    """Random weights for one TAESD architecture saved as STEM_encoder/STEM_decoder."""
    from safetensors.torch import save_file

    from organic_sd.teachers import taesd

    torch.manual_seed(seed)
    enc, dec = taesd.build_encoder(channels, gn), taesd.build_decoder(channels, gn)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for half, module in (("encoder", enc), ("decoder", dec)):
        p = folder / f"{stem}_{half}{suffix}"
        state = {k: v.contiguous() for k, v in module.state_dict().items()}
        save_file(state, p) if suffix == ".safetensors" else torch.save(state, p)
        paths.append(p)
    return enc, dec, paths


def interrupt_fit(monkeypatch, module, at: int):
    """Make `module.ola.fit` raise KeyboardInterrupt on its `at`-th call (a Ctrl-C mid-run); returns the real fit."""
    real, calls = module.ola.fit, []

    def fit_then_interrupt(*a, **kw):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(module.ola, "fit", fit_then_interrupt)
    return real


def make_store(tmp_path, n=24):
    """A FakeTeacher store of n smooth images (or a few more: see below), a quarter of them held out."""
    store = tmp_path / "store"
    # the split hashes each file's folder and name; a store that draws no held-out image gets one anyway
    precompute([str(smooth_images(tmp_path / "imgs", n))], FakeTeacher(), store, STORE_SIZE, val_fraction=0.25,
               progress=False)
    return store


def quick(kind, store, out, **kw):
    """A TrainConfig for a few-second `osd train` run on a make_store store."""
    from organic_sd.ovae.config import TrainConfig

    kw = {"ticks": 2, "generations": 4, "tick_seconds": 10, "eval_images": 4, "max_rows": 2000, **kw}
    return TrainConfig(kind, str(store), str(out), **kw)


@pytest.fixture
def store(tmp_path):
    """A fresh make_store store for one test."""
    return make_store(tmp_path)


@pytest.fixture
def taesd_store(tmp_path):
    """(store, teacher folder): a store of smooth 32x32 images made by a random-weight TAESD (4 latent channels)."""
    from organic_sd.teachers import load_teacher

    random_taesd(tmp_path / "teacher", "taesd", 4, False)
    store = tmp_path / "store"
    precompute([str(smooth_images(tmp_path / "imgs", 16))], load_teacher(tmp_path / "teacher"), store, STORE_SIZE,
               val_fraction=0.25, progress=False)
    return store, tmp_path / "teacher"


@pytest.fixture
def fake_teacher():
    return FakeTeacher()


# ---- denoiser side

T = 50  # steps of the fake schedule


def schedule():
    return torch.linspace(0.999, 0.01, T, dtype=torch.float64)


def tiny_ounet(window=3, hidden=(3,), seed=0, shape=(1, 8, 8)) -> OUNet:
    """An O-UNet with a real OLAModule stack of random weights (no training)."""
    cfg = OUNetConfig(sample_shape=shape, num_steps=T, window=window, grid=2, freqs=2, modulate=1, teacher="fake",
                      pixel_range=(-0.5, 0.5))
    m = ola.OLAModule(ola.OLAConfig(cfg.in_dim, shape[0], hidden, out_scale=3.0))
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return OUNet(cfg, m, schedule())


def _tiny_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    # byte-level BPE vocab with no merges: every byte is a token (GPT-2/CLIP byte-to-unicode map)
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in cs:
            vocab[chr(c) + suffix] = len(vocab)
    src = folder / "bpe"
    src.mkdir(parents=True)
    (src / "vocab.json").write_text(json.dumps(vocab))
    (src / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(src), model_max_length=16), len(vocab)


def build_tiny_pipeline(folder: Path, prediction_type: str = "epsilon") -> Path:
    """A diffusers SD pipeline folder with random tiny weights (diffusers' own test sizes)."""
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=4, attention_head_dim=2,
    )
    tok, vocab_size = _tiny_tokenizer(folder / "src")
    text = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size, max_position_embeddings=16,
    ))
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type=prediction_type)
    pipe = folder / "pipe"
    unet.save_pretrained(pipe / "unet")
    text.save_pretrained(pipe / "text_encoder")
    tok.save_pretrained(pipe / "tokenizer")
    sched.save_pretrained(pipe / "scheduler")
    (pipe / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }))
    return pipe


def random_ovae(C=4, f=8, hidden=(5, 3), enc_window=16, dec_window=3, pad="replicate", seed=0) -> OVAE:
    """A patch-mode O-VAE with random weights large enough that every tanh bends (tiny, fast)."""
    g = torch.Generator().manual_seed(seed)
    parts = []
    for kind, window, scale in (("encoder", enc_window, 3.0), ("decoder", dec_window, 1.0)):
        cfg = PartConfig(kind, teacher="fake", latent_channels=C, downscale=f, window=window, pad=pad)
        i, o = cfg.io_dims()
        m = ola.OLAModule(ola.OLAConfig(i, o, hidden, scale))
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 2 / max(p.shape[-1], 1) ** 0.5)
        parts.append(Part(cfg, m))
    return OVAE(*parts)


def sd_pipe(folder, vae):
    """A StableDiffusionPipeline from a tiny folder with `vae` in place of its own."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), vae=vae, safety_checker=None,
                                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_ctrl_c_then_resume(monkeypatch, args: list, out: Path, partial: Path, grown=(1,)):
    """`osd ARGS` interrupted while its fit grows: exit 130, the units grown so far (`grown`) kept at `partial`,
    nothing at `out`; the same command then continues them, writes `out` and removes `partial`."""
    from organic_sd import cli

    real, seen = ola.fit, []

    def interrupted_fit(x, y, **kw):
        seen.append(kw.get("init"))
        raise ola.FitInterrupted(real(x, y, **{**kw, "hidden": grown, "max_seconds": 1.0}))

    monkeypatch.setattr(ola, "fit", interrupted_fit)
    assert cli.main(args) == 130 and not out.exists()
    assert partial.is_file() and ola.load(partial).config.hidden == grown
    monkeypatch.setattr(ola, "fit", lambda x, y, **kw: seen.append(kw.get("init")) or real(x, y, **kw))
    assert cli.main(args) == 0 and out.is_file() and not partial.exists()
    assert seen[0] is None and seen[1].config.hidden == grown  # the second run continued the grown units
    OUNet.load(out)  # a loadable O-UNet, with or without the part (kept only if it helped)
