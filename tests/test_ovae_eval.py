import json

import numpy as np
import pytest
import torch
from PIL import Image

from organic_sd import cli
from organic_sd.data import Store, preprocess
from organic_sd.metrics.pixels import cosine_rows, image_metrics
from organic_sd.ovae import OVAE, demo, evaluate, model
from organic_sd.ovae.train import train
from conftest import STORE_SIZE as SIZE, FakeTeacher, make_store, quick, smooth_images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A fake-teacher store, a few-generation encoder and decoder, and their export."""
    tmp = tmp_path_factory.mktemp("ovae")
    store = make_store(tmp)
    train(quick("encoder", store, tmp / "enc", ticks=1))
    train(quick("decoder", store, tmp / "dec", ticks=1))
    rc = cli.main(["export", "--encoder", str(tmp / "enc"), "--decoder", str(tmp / "dec"),
                   "--out", str(tmp / "ovae.safetensors")])
    assert rc == 0
    return tmp, store, tmp / "ovae.safetensors"


def test_pipeline_writes_pictures_and_reports(trained, tmp_path):
    tmp, _, path = trained
    images = smooth_images(tmp_path / "test", 2, size=48, seed=5)
    rep = evaluate.pipeline([str(images)], OVAE.load(path), tmp_path / "out", teacher=FakeTeacher())
    for name in ("im000", "im001"):
        for f in ("orig.png", "teacher_recon.png", "o_recon.png", "o_decoder_on_teacher_latents.png",
                  "side_by_side.png"):
            assert (tmp_path / "out" / name / f).is_file(), f
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["mean"].keys() >= {"teacher_vs_orig", "ovae_vs_orig", "odec_vs_teacher", "latent_cosine"}
    assert set(saved["mean"]["ovae_vs_orig"]) == {"l2", "cosine", "psnr", "ssim", "ms_ssim"}
    assert rep["size"] == SIZE and "O-VAE recon vs original" in (tmp_path / "out" / "report.md").read_text()


def test_pipeline_scores_the_teacher_decoder_on_o_encoder_latents(trained, tmp_path):
    v = OVAE.load(trained[2])
    images = smooth_images(tmp_path / "test", 1, size=48, seed=7)
    rep = evaluate.pipeline([str(images)], v, tmp_path / "out", teacher=FakeTeacher())
    x = torch.from_numpy(preprocess(Image.open(images / "im000.png"), SIZE))[None]
    want = image_metrics(FakeTeacher().decode(v.encode(x)).clamp(-1, 1), x)
    got = rep["images"][0]["tdec_oenc_vs_orig"]
    assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-4) and got["l2"] == pytest.approx(want["l2"], rel=1e-4)
    assert (tmp_path / "out" / "im000" / "teacher_decode_of_o_latents.png").is_file()
    assert "teacher decoder on O-Encoder latents vs original" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("latents, warned", [("teacher", False), ("mix:enc", False), ("oenc:enc", True)])
def test_pipeline_notes_a_decoder_scored_off_its_training_latents(trained, tmp_path, latents, warned):
    v = OVAE.load(trained[2])
    v.decoder.config.latents = latents
    images = smooth_images(tmp_path / "test", 1, size=48, seed=6)
    rep = evaluate.pipeline([str(images)], v, tmp_path / "out", teacher=FakeTeacher())
    assert any("outside its training distribution" in n for n in rep["notes"]) == warned


def test_cli_eval_reconstruct(trained, tmp_path, capsys):
    tmp, store, path = trained
    images = smooth_images(tmp_path / "test", 1, size=48, seed=6)
    assert cli.main(["eval", "pipeline", str(images), "--ovae", str(path), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "im000" / "o_recon.png").is_file()
    assert not (tmp_path / "p" / "im000" / "teacher_recon.png").exists()  # no teacher given
    assert cli.main(["eval", "latents", "--ovae", str(path), "--store", str(store), "--out", str(tmp_path / "l")]) == 0
    res = json.loads((tmp_path / "l" / "latents.json").read_text())
    assert len(res["r2_per_channel"]) == 4 and (tmp_path / "l" / "latents.png").is_file()
    s, val = Store.open(store), Store.open(store).indices("val")
    cells = lambda z: z.permute(0, 2, 3, 1).flatten(0, 2)  # noqa: E731  (B, C, h, w) -> (B h w, C)
    want = cosine_rows(cells(OVAE.load(path).encode(torch.from_numpy(s.images[val]))), cells(torch.from_numpy(s.latents[val])))
    assert res["positions"] == len(val) * (SIZE // 8) ** 2 and res["cosine"] == pytest.approx(float(want.mean()), abs=1e-6)
    assert cli.main(["reconstruct", str(images / "im000.png"), "--ovae", str(path), "--out",
                     str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").is_file() and "PSNR" in capsys.readouterr().out
    assert cli.main(["reconstruct", str(images / "im000.png"), "--ovae", str(tmp / "nothing")]) == 2
    (tmp_path / "bad.png").write_text("not an image")
    capsys.readouterr()
    assert cli.main(["reconstruct", str(tmp_path / "bad.png"), "--ovae", str(path)]) == 2
    assert "bad.png: not a readable image" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")  # a file where --out needs a folder: an OSError, said in one line
    assert cli.main(["reconstruct", str(images / "im000.png"), "--ovae", str(path), "--out",
                     str(tmp_path / "afile" / "r.png")]) == 2
    assert "osd: error:" in capsys.readouterr().err


def test_reconstruct_whole_image_into_current_folder(trained, tmp_path, monkeypatch, capsys):
    """Issue 25 item 4: the output went beside the input (a later `osd eval pipeline` of that folder scored it
    as one more photo) and a non-square photo was silently centre-cropped to the training size."""
    _, _, path = trained
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize(
        (62, 44), Image.Resampling.BICUBIC).save(photos / "wide.png")  # 62 x 44: neither side a multiple of 8
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    assert cli.main(["reconstruct", str(photos / "wide.png"), "--ovae", str(path)]) == 0
    assert sorted(p.name for p in photos.iterdir()) == ["wide.png"]  # nothing written beside the input
    with Image.open(here / "wide_ovae.png") as im:
        assert im.size == (62, 44)  # the whole image at its own size
    assert "against the input" in capsys.readouterr().out
    # --size: the centre square at that size, as before
    assert cli.main(["reconstruct", str(photos / "wide.png"), "--ovae", str(path), "--size", "32",
                     "--out", str(here / "sq.png")]) == 0
    with Image.open(here / "sq.png") as im:
        assert im.size == (32, 32)
    capsys.readouterr()
    # an odd --size is said as such, not as a complaint about the image
    assert cli.main(["reconstruct", str(photos / "wide.png"), "--ovae", str(path), "--size", "20"]) == 2
    err = capsys.readouterr().err
    assert "--size must be a positive multiple of 8" in err and "image is" not in err


def test_info_summarises_runs_and_exports(trained, capsys):
    tmp, _, path = trained
    for spec, parts in ((tmp / "enc", "parts: encoder;"), (tmp / "dec", "parts: decoder;"),
                        (path, "parts: encoder, decoder;")):
        assert cli.main(["info", str(spec)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("O-VAE, ") and parts in out and "trained: " in out and str(tmp) not in out, out


def test_export_label_stores_no_machine_folders(trained, tmp_path, capsys):
    """Issue 25 item 6: `osd export --label NAME` stores the label where the runs' folders were."""
    tmp, _, path = trained
    assert str(tmp).encode() in path.read_bytes()  # without --label: the run folders, as before
    out = tmp_path / "labelled.safetensors"
    assert cli.main(["export", "--encoder", str(tmp / "enc"), "--decoder", str(tmp / "dec"), "--out", str(out),
                     "--label", "test-release"]) == 0
    data = out.read_bytes()
    assert str(tmp).encode() not in data and str(tmp_path).encode() not in data and b"test-release" in data
    v, w = OVAE.load(out), OVAE.load(path)
    x = torch.rand(1, 3, SIZE, SIZE) * 2 - 1
    assert torch.equal(v(x), w(x)) and v.meta["label"] == "test-release"
    capsys.readouterr()
    assert cli.main(["info", str(out)]) == 0
    assert "label: test-release" in capsys.readouterr().out


def test_demo_with_shipped_default(trained, tmp_path, monkeypatch, capsys):
    pytest.importorskip("skimage")
    monkeypatch.setattr(model, "DEFAULT_PATH", trained[2])
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--images", "2"]) == 0
    out = capsys.readouterr().out
    assert "side_by_side.png" in out and (tmp_path / "demo" / "report.md").is_file()


def test_demo_without_default_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model, "DEFAULT_PATH", tmp_path / "none.safetensors")
    monkeypatch.delenv("OSD_TEACHER", raising=False)
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 2
    assert "no default O-VAE is shipped" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_with_teacher(tmp_path, monkeypatch, capsys):
    pytest.importorskip("skimage")
    pytest.importorskip("av")
    import organic_sd.teachers

    monkeypatch.setattr(organic_sd.teachers, "load_teacher", lambda spec, device="cpu": FakeTeacher())
    rep = demo.demo(tmp_path / "demo", "fake", seconds=4, images=2, size=32)
    assert (tmp_path / "demo" / "ovae.safetensors").is_file()
    assert "odec_vs_teacher" in rep["mean"] and (tmp_path / "demo" / "eval" / "report.md").is_file()
