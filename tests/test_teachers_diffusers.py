"""organic_sd.teachers through diffusers: AutoencoderKL folders, single files, the hub cache,
and the TAESD architecture against diffusers' AutoencoderTiny."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from organic_sd.teachers import TeacherError, VAETeacher, load_teacher
from organic_sd.teachers import diffusers_vae

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402


def tiny_kl(groups: int = 4, channels=(8, 16), scaling_factor: float = 0.5, seed: int = 0):
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(
        block_out_channels=channels, down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels), layers_per_block=1, latent_channels=4,
        norm_num_groups=groups, scaling_factor=scaling_factor,
    )
    with torch.no_grad():  # GroupNorm affine starts at 1/0; perturb so a missed tensor would show
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae.eval()


def to_ldm(state: dict, n_levels: int) -> dict:
    """diffusers AutoencoderKL keys -> the original ldm layout of SD .ckpt/.safetensors VAE files."""
    out = {}
    for k, v in state.items():
        k2 = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k2 = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k2)
        k2 = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.",
                    lambda m: f"decoder.up.{n_levels - 1 - int(m.group(1))}.block.", k2)
        k2 = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                    lambda m: f"decoder.up.{n_levels - 1 - int(m.group(1))}.upsample.", k2)
        k2 = k2.replace("mid_block.resnets.0.", "mid.block_1.").replace("mid_block.resnets.1.", "mid.block_2.")
        k2 = k2.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        if "mid_block.attentions.0." in k2:
            k2 = k2.replace("mid_block.attentions.0.", "mid.attn_1.").replace("group_norm.", "norm.")
            k2 = k2.replace("to_q.", "q.").replace("to_k.", "k.").replace("to_v.", "v.")
            k2 = k2.replace("to_out.0.", "proj_out.")
            if v.ndim == 2:  # ldm attention projections are 1x1 convs
                v = v[:, :, None, None]
        out[k2] = v.contiguous()
    return out


def kl_reference(vae, x: torch.Tensor):
    """(latents, decodes) the way VAETeacher defines them, computed by diffusers itself."""
    sf = vae.config.scaling_factor
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * sf
        y = vae.decode(z / sf).sample.clamp(-1, 1)
    return z, y


def assert_same_kl(teacher, vae, x):
    z, y = kl_reference(vae, x)
    tz = teacher.encode(x)
    assert tz.shape == z.shape and tz.dtype == torch.float32
    torch.testing.assert_close(tz, z, rtol=1e-5, atol=1e-5)
    ty = teacher.decode(tz)
    assert ty.shape == x.shape
    torch.testing.assert_close(ty, y, rtol=1e-5, atol=1e-5)


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(2, 3, 16, 16) * 2 - 1  # (B, 3, H, W) in [-1, 1]


def test_diffusers_folder_and_pipeline_folder(tmp_path, images):
    vae = tiny_kl()
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    for spec in (tmp_path / "pipe" / "vae", str(tmp_path / "pipe")):  # a pipeline folder's vae/ is found
        t = load_teacher(spec)
        assert isinstance(t, VAETeacher)
        assert (t.latent_channels, t.downscale, t.scaling_factor) == (4, 2, 0.5)
        assert t.id.startswith("autoencoderkl:")
        assert_same_kl(t, vae, images)
    assert load_teacher(tmp_path / "pipe").id == t.id  # stable
    assert load_teacher(tmp_path / "pipe", dtype=torch.float64).id == t.id + "+float64"


def test_single_file_ldm_layout_with_config_uses_from_single_file(tmp_path, images, caplog):
    vae = tiny_kl()
    folder = tmp_path / "sd"
    vae.save_config(folder)  # config.json beside the file: from_single_file can use the folder as config
    save_file(to_ldm(vae.state_dict(), 2), folder / "vae-ldm.safetensors")
    with caplog.at_level(logging.INFO, logger="organic_sd.teachers.diffusers_vae"):
        t = load_teacher(folder / "vae-ldm.safetensors")
    assert "from_single_file failed" not in caplog.text
    assert t.scaling_factor == 0.5
    assert_same_kl(t, vae, images)
    # The same weights through the folder path get the same id: ids follow weights, not files.
    (folder / "vae-ldm.safetensors").rename(tmp_path / "elsewhere.safetensors")
    vae.save_pretrained(folder)
    assert load_teacher(folder).id == t.id


def test_single_file_ldm_without_config_falls_back_offline(tmp_path, images, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vae = tiny_kl(groups=32, channels=(32, 32), scaling_factor=diffusers_vae.LDM_DEFAULT_SCALING)
    save_file(to_ldm(vae.state_dict(), 2), tmp_path / "my_vae.safetensors")
    with caplog.at_level(logging.INFO, logger="organic_sd.teachers.diffusers_vae"):
        t = load_teacher(tmp_path / "my_vae.safetensors")
    assert "from_single_file failed" in caplog.text  # no hub config offline -> the direct load
    assert t.scaling_factor == pytest.approx(0.18215)
    assert_same_kl(t, vae, images)


def test_full_sd_ckpt_vae_part(tmp_path, images):
    vae = tiny_kl(groups=32, channels=(32, 32), scaling_factor=diffusers_vae.LDM_DEFAULT_SCALING)
    state = {"first_stage_model." + k: v for k, v in to_ldm(vae.state_dict(), 2).items()}
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(3, 4, 3, 3)
    torch.save({"state_dict": state, "global_step": 7}, tmp_path / "sd.ckpt")
    assert_same_kl(load_teacher(tmp_path / "sd.ckpt"), vae, images)


@pytest.mark.parametrize("failure", ["raises_meta", "returns_meta"])
def test_single_file_meta_tensor_fallback(tmp_path, images, monkeypatch, failure):
    vae = tiny_kl()
    vae.save_config(tmp_path)
    save_file(to_ldm(vae.state_dict(), 2), tmp_path / "vae.safetensors")

    def broken(*args, **kwargs):
        if failure == "raises_meta":
            raise NotImplementedError("Cannot copy out of meta tensor; no data!")
        with torch.device("meta"):
            return diffusers.AutoencoderKL.from_config(vae.config)

    monkeypatch.setattr(diffusers.AutoencoderKL, "from_single_file", broken)
    assert_same_kl(load_teacher(tmp_path / "vae.safetensors"), vae, images)


def test_diffusers_layout_single_file_needs_config(tmp_path, images):
    vae = tiny_kl()
    save_file(vae.state_dict(), tmp_path / "weights.safetensors")
    with pytest.raises(TeacherError, match="diffusers layout; put its config.json"):
        load_teacher(tmp_path / "weights.safetensors")
    vae.save_config(tmp_path)
    assert_same_kl(load_teacher(tmp_path / "weights.safetensors"), vae, images)


def test_device_and_dtype_handled_inside(tmp_path, images):
    vae = tiny_kl()
    vae.save_pretrained(tmp_path)
    t = load_teacher(tmp_path, dtype="float64")
    z = t.encode(images.half())  # half input, float64 teacher -> float32 output
    assert z.dtype == torch.float32 and z.device == images.device
    assert t.decode(z).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(3, 16, 16\)"):
        t.encode(images[0])
    with pytest.raises(ValueError, match="multiples of 2"):
        t.encode(images[..., :15])
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\), got \(2, 3, 8, 8\)"):
        t.decode(torch.zeros(2, 3, 8, 8))


def test_taesd_matches_diffusers_autoencoder_tiny(tmp_path, images):
    torch.manual_seed(0)
    tiny = diffusers.AutoencoderTiny(latent_channels=4).eval()
    tiny.save_pretrained(tmp_path / "taesd")
    t = load_teacher(tmp_path / "taesd")
    assert t.variant == "taesd"
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = tiny.encode(x).latents
        y = tiny.decode(z).sample.clamp(-1, 1)
    torch.testing.assert_close(t.encode(x), z)
    torch.testing.assert_close(t.decode(z), y)


def test_hub_id_from_cache(tmp_path, monkeypatch, images):
    from huggingface_hub import constants

    vae = tiny_kl()
    snap = tmp_path / "models--someone--tiny-vae" / "snapshots" / ("ab" * 20)
    vae.save_pretrained(snap / "vae")
    (tmp_path / "models--someone--tiny-vae" / "refs").mkdir()
    (tmp_path / "models--someone--tiny-vae" / "refs" / "main").write_text("ab" * 20)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = load_teacher("someone/tiny-vae")
    assert t.id == "someone/tiny-vae/vae@" + "ab" * 20
    assert_same_kl(t, vae, images)
