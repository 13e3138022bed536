"""organic_sd.teachers: every load path, the TAESD architecture against real weights, bad input."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_taesd
from safetensors.torch import save_file

from organic_sd.teachers import TAESDTeacher, TeacherError, load_teacher
from organic_sd.teachers.common import read_weights

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    env = os.environ.get("OSD_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if env is None and not path.exists():
        pytest.skip("shared data not found: set OSD_SHARED_DATA")
    return path


@pytest.fixture(scope="module")
def taef2_dir() -> Path:
    return shared_data() / "teachers" / "taef2"


def photo_256() -> torch.Tensor:
    """(1, 3, 256, 256) in [-1, 1]: a real photo, shorter side resized to 256 and centre-cropped."""
    from PIL import Image

    im = Image.open(shared_data() / "images" / "val" / "cset14" / "lenna.png").convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - 256) // 2, (h - 256) // 2
    im = im.crop((left, top, left + 256, top + 256))
    return torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] images, measured on [0, 1]."""
    return float(10 * torch.log10(1 / ((a - b) / 2).pow(2).mean()))


# ---- TAESD family


def test_taef2_real_weights_reconstruct_a_photo(taef2_dir):
    t = load_teacher(taef2_dir)
    assert isinstance(t, TAESDTeacher)
    assert (t.variant, t.latent_channels, t.downscale) == ("taef2", 32, 8)
    assert re.fullmatch(r"taef2:[0-9a-f]{12}", t.id)
    assert sum(p.numel() for p in t.encoder.parameters()) == 1338528
    x = photo_256()
    z = t.encode(x)
    assert z.shape == (1, 32, 32, 32)
    y = t.decode(z)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    assert psnr(y, x) > 25  # ~31 dB published-weights quality; a wrong block would give < 23


def test_taef2_specs_agree(taef2_dir, tmp_path):
    enc, dec = taef2_dir / "taef2_encoder.pth", taef2_dir / "taef2_decoder.pth"
    ids = {load_teacher(s).id for s in (taef2_dir, enc, dec, f"{enc},{dec}", (enc, dec), f"taef2:{taef2_dir}")}
    assert len(ids) == 1
    # The hub's single taef2.safetensors (diffusers layout, decoder numbered from its first conv).
    e, d = read_weights(enc), read_weights(dec)
    combined = {f"encoder.layers.{k}": v for k, v in e.items()}
    combined |= {re.sub(r"^(\d+)", lambda m: f"decoder.layers.{int(m.group(1)) - 1}", k): v for k, v in d.items()}
    save_file(combined, tmp_path / "taef2.safetensors")
    t = load_teacher(tmp_path / "taef2.safetensors")
    assert t.id in ids
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(t.encode(x), load_teacher(taef2_dir).encode(x))


def test_variant_from_names_and_shapes(tmp_path):
    _, _, (enc, _) = random_taesd(tmp_path / "a", "taesd3", 16, False)
    assert load_teacher(enc).variant == "taesd3"
    _, _, (enc, _) = random_taesd(tmp_path / "b", "mine", 32, True, ".safetensors")
    assert load_teacher(tmp_path / "b").variant == "taef2"  # only taef2 has 32 channels + GroupNorm
    _, _, (enc, _) = random_taesd(tmp_path / "c", "mine", 16, False)
    with pytest.raises(TeacherError, match=r"fit taesd3 and taef1.*prefix"):
        load_teacher(enc)
    assert load_teacher(f"taef1:{enc}").variant == "taef1"
    _, _, (enc, _) = random_taesd(tmp_path / "d", "taesdxl", 4, False)
    assert load_teacher(tmp_path / "d").variant == "taesdxl"  # not taesd: longest name wins


def test_name_contradicting_shapes(tmp_path):
    _, _, (enc, _) = random_taesd(tmp_path, "taef2", 4, False)
    with pytest.raises(TeacherError, match="file names say taef2.*4 latent channels"):
        load_teacher(enc)


def test_forced_variant_lists_every_mismatch(tmp_path):
    random_taesd(tmp_path, "mine", 4, False)
    with pytest.raises(TeacherError) as err:
        load_teacher(f"taef2:{tmp_path}")
    msg = str(err.value)
    assert "encoder shape 14.weight: expected (32, 64, 3, 3), file has (4, 64, 3, 3)" in msg
    assert "encoder missing 11.pool.0.weight (256, 64, 1, 1)" in msg
    assert "decoder shape 1.weight: expected (64, 32, 3, 3), file has (64, 4, 3, 3)" in msg
    assert "decoder missing 5.pool.3.weight (64, 256, 1, 1)" in msg
    # per half: 3 GroupNorm blocks x 4 pool tensors, plus the latent conv (encoder: weight+bias, decoder: weight)
    assert "27 mismatches" in msg


def test_dtype_and_device_of_inputs_handled_inside(tmp_path):
    enc, dec, _ = random_taesd(tmp_path, "taesd", 4, False)
    t = load_teacher(tmp_path, dtype=torch.float64)
    assert t.id.endswith("+float64") and t.id.removesuffix("+float64") == load_teacher(tmp_path).id
    x = torch.rand(2, 3, 16, 16) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    z = t.encode(x.half())
    assert z.shape == (2, 4, 2, 2) and z.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(z, enc(x.add(1).div(2)), rtol=1e-2, atol=1e-2)  # fp16 input rounding
        torch.testing.assert_close(t.decode(z), dec(z).mul(2).sub(1).clamp(-1, 1))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(3, 16, 16\)"):
        t.encode(x[0])
    with pytest.raises(ValueError, match="multiples of 8"):
        t.encode(x[..., :12])
    with pytest.raises(ValueError, match=r"\(B, 4, h, w\), got \(2, 16, 2, 2\)"):
        t.decode(torch.zeros(2, 16, 2, 2))


def test_folder_with_several_pairs_needs_prefix(tmp_path):
    random_taesd(tmp_path, "taesd", 4, False)
    random_taesd(tmp_path, "taesdxl", 4, False, seed=1)
    with pytest.raises(TeacherError, match="several TAESD pairs"):
        load_teacher(tmp_path)
    assert load_teacher(f"taesd:{tmp_path}").variant == "taesd"
    assert load_teacher(f"taesdxl:{tmp_path}").variant == "taesdxl"
    assert load_teacher(f"taesd:{tmp_path}").id != load_teacher(f"taesdxl:{tmp_path}").id


# ---- bad input


class Payload:
    """Pickles to `os.mkdir(path)`: unpickling it with arbitrary globals allowed runs that call."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("name", ["vae.ckpt", "taesd_encoder.pth", "weights.bin"])
def test_crafted_pickle_is_refused_and_not_run(tmp_path, name):
    marker = tmp_path / "pwned"
    evil = tmp_path / name
    torch.save({"encoder.conv_in.weight": torch.zeros(1), "x": Payload(marker)}, evil)
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "taesd_decoder.pth")
    with pytest.raises(TeacherError, match="refusing to load .*arbitrary unpickling"):
        load_teacher(evil)
    assert not marker.exists()
    # The payload is real: a plain unpickle runs it.
    proof = tmp_path / "proof.pth"
    torch.save({"x": Payload(tmp_path / "ran")}, proof)
    torch.load(proof, weights_only=False)
    assert (tmp_path / "ran").is_dir()


def test_not_a_vae(tmp_path):
    save_file({"fc.weight": torch.zeros(2, 2)}, tmp_path / "model.safetensors")
    with pytest.raises(TeacherError, match="is not a VAE"):
        load_teacher(tmp_path / "model.safetensors")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(TeacherError, match="not a readable weights file"):
        load_teacher(tmp_path / "junk.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(TeacherError, match="not a readable .safetensors"):
        load_teacher(tmp_path / "junk.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherError, match="holds no TAESD weights"):
        load_teacher(tmp_path / "empty")
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"_class_name": "UNet2DConditionModel"}')
    with pytest.raises(TeacherError, match="UNet2DConditionModel, not a VAE"):
        load_teacher(tmp_path / "unet")


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_teacher(tmp_path / "nope" / "vae.safetensors")
    random_taesd(tmp_path, "taesd", 4, False)
    (tmp_path / "taesd_decoder.pth").unlink()
    with pytest.raises(FileNotFoundError, match="taesd_decoder.pth is missing"):
        load_teacher(tmp_path / "taesd_encoder.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_teacher(f"{tmp_path / 'taesd_encoder.pth'},{tmp_path / 'gone_decoder.pth'}")


def test_hub_id_not_cached_fails_fast_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(TeacherError, match="not in the hub cache.*HF_HUB_OFFLINE.*exists either; pass a local path"):
        load_teacher("stabilityai/sd-vae-ft-mse")
    assert time.perf_counter() - t0 < 3


def test_hub_id_unreachable_fails_fast(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on discard
    t0 = time.perf_counter()
    with pytest.raises(TeacherError, match="unreachable; no local file or folder .* exists either; pass a local path"):
        load_teacher("organic-sd-test/no-such-vae@main")
    assert time.perf_counter() - t0 < 5


def test_cuda_unavailable_is_named(taef2_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TeacherError, match=r"device='cuda' was requested but CUDA is not available"):
        load_teacher(taef2_dir, device="cuda")
    with pytest.raises(TeacherError, match=r"device='cuda:1' was requested"):
        load_teacher(taef2_dir, device="cuda:1")
    with pytest.raises(TeacherError, match=r"device='gpu0' is not a torch device"):
        load_teacher(taef2_dir, device="gpu0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_teacher_takes_cpu_input(taef2_dir):
    t = load_teacher(taef2_dir, device="cuda", dtype="fp16")
    assert t.device.type == "cuda" and t.id.endswith("+float16")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = t.encode(x)
    assert z.device == x.device and z.dtype == torch.float32
    torch.testing.assert_close(z, load_teacher(taef2_dir).encode(x), atol=0.05, rtol=0.05)
    assert t.decode(z).device == x.device


@pytest.mark.parametrize("text", ["hello\n", "e" * 200, "", "not a checkpoint"])
def test_text_file_as_teacher_is_one_line_error(tmp_path, capsys, text):
    """Issue 25 item 5: a text file named teacher.pth gave `KeyError: 101` as a traceback."""
    from organic_sd.cli import main

    bad = tmp_path / "teacher.pth"
    bad.write_text(text)
    with pytest.raises(TeacherError, match="teacher.pth.*not a readable weights file.*expected"):
        read_weights(bad)
    rc = main(["precompute", "sample:skimage", "--teacher", str(bad), "--out", str(tmp_path / "store"),
               "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "teacher.pth" in err and "expected" in err, err
    assert "Traceback" not in err


def test_a_bare_taesd_name_is_its_hub_repo_or_a_clear_offline_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from organic_sd.teachers import hub

    monkeypatch.chdir(tmp_path)  # no local folder named taef2
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # before: "no such file or folder", although the README lists taef2 as a teacher spec
    with pytest.raises(TeacherError, match=r"'madebyollin/taef2' is not in the hub cache .*HF_HUB_OFFLINE.*"
                                           r"--teacher taef2:FOLDER"):
        load_teacher("taef2")
    random_taesd(tmp_path / "snap", "taef2", 32, True)  # as if the hub snapshot were cached
    monkeypatch.setattr(hub, "cached", lambda repo, rev, probes: (tmp_path / "snap", f"{repo}@abc"))
    t = load_teacher("taef2")
    assert (t.variant, t.latent_channels) == ("taef2", 32)
    assert t.id == load_teacher(f"taef2:{tmp_path / 'snap'}").id  # the same teacher as its local files
