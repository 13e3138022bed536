import json
import os

import numpy as np
import pytest
import torch

from conftest import DIT, MNIST
from organic_sd.cli import build_parser, main
from organic_sd.data import Store, StoreError
from organic_sd.data.denoiser_precompute import precompute_denoiser
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.teachers.ddim import ddim_timesteps
from organic_sd.teachers.denoiser_base import check_eps_inputs

K, R = 4, 2  # DDIM steps and re-noised copies per sample


class FakeDenoiser:
    """A tiny deterministic teacher: eps depends on x_t, t and (when conditional) the prompt embedding."""

    sample_shape = (1, 4, 4)
    pixel_range = (-1.0, 1.0)

    def __init__(self, conditional=False, fail_after=None, interrupt_after=None):
        self.id = "fake-denoiser" + ("-cond" if conditional else "")
        self.device = torch.device("cpu")
        self.alphas_cumprod = torch.linspace(0.999, 0.01, 101, dtype=torch.float64)  # (T,) T = 101
        self.cond_shape = (3, 5) if conditional else None
        self.calls, self.fail_after, self.interrupt_after = 0, fail_after, interrupt_after

    def eps(self, x_t, t, cond=None):
        tt = check_eps_inputs(x_t, t, self.sample_shape, len(self.alphas_cumprod))
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("teacher crashed")
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        out = 0.5 * x_t * (1 + tt.float() / 100)[:, None, None, None]
        if self.cond_shape is not None:
            out = out + cond.mean(dim=(1, 2))[:, None, None, None]
        return out

    def encode_text(self, prompts):
        return torch.stack([torch.full(self.cond_shape, float(len(p))) + torch.arange(5) * 0.1 for p in prompts])


def _run(path, samples, teacher=None, **kw):
    kw = {"steps": K, "renoise": R, "batch": 2, "shard_size": 5, "val_fraction": 0.3, "progress": False, **kw}
    return precompute_denoiser(teacher or FakeDenoiser(), path, samples, **kw)


def test_records_roundtrip(tmp_path):
    rep = _run(tmp_path / "s", 5)
    assert rep.samples_written == 5 and rep.records_written == rep.total == 5 * (K + R)
    s = DenoiserStore.open(tmp_path / "s")
    assert len(s) == 30 and s.x_t.shape == (30, 1, 4, 4) and s.eps.shape == (30, 1, 4, 4) and s.t.shape == (30,)
    assert s.cond[0].shape == (0,) and s.cond[[0, 3]].shape == (2, 0)
    assert s.keys[:K + R] == [f"00000000/d{k:04d}" for k in range(K)] + [f"00000000/r{j:04d}" for j in range(R)]
    ts = ddim_timesteps(101, K)
    assert ts == [100, 75, 50, 25]
    np.testing.assert_array_equal(s.t[0:K], ts)
    rt = s.t[np.flatnonzero(s.renoised)]
    assert ((rt >= 1) & (rt <= 100)).all() and (rt == np.round(rt)).all()
    # every stored eps is the teacher's at the stored (x_t, t), up to fp16 rounding
    fake = FakeDenoiser()
    want = fake.eps(torch.from_numpy(s.x_t[:]), torch.from_numpy(s.t[:]).long()).numpy()
    np.testing.assert_allclose(s.eps[:], want, atol=2e-3, rtol=2e-3)
    # the first trajectory step starts from the seeded noise, and the next follows DDIM
    ab = fake.alphas_cumprod
    x0, e0 = s.x_t[0], s.eps[0]
    x1 = (ab[75] / ab[100]).sqrt().item() * (x0 - (1 - ab[100]).sqrt().item() * e0) + (1 - ab[75]).sqrt().item() * e0
    np.testing.assert_allclose(s.x_t[1], x1, atol=3e-3)
    m = s.meta
    assert m["kind"] == "denoiser" and m["teacher"] == "fake-denoiser" and m["sampler"]["seed"] == 0
    assert m["sampler"]["timesteps"] == ts and len(m["schedule"]["alphas_cumprod"]) == 101
    np.testing.assert_allclose(s.alphas_cumprod, fake.alphas_cumprod.numpy())
    s.verify()
    with pytest.raises(StoreError, match="not a denoiser store"):
        DenoiserStore(tmp_path, {**m, "kind": None})


def test_split_is_by_sample(tmp_path):
    _run(tmp_path / "s", 20, val_fraction=0.5)
    s = DenoiserStore.open(tmp_path / "s")
    val, train = s.indices("val"), s.indices("train")
    assert len(val) and len(train) and len(val) + len(train) == len(s)
    assert not set(s.sample[val]) & set(s.sample[train])  # no trajectory straddles the split
    assert np.bincount(s.sample[val]).max() == K + R


def test_resume_and_determinism(tmp_path):
    _run(tmp_path / "a", 6, batch=4)
    rep1 = _run(tmp_path / "b", 3, batch=1)
    rep2 = _run(tmp_path / "b", 6, batch=3)  # more samples: continues at sample 3
    assert rep1.samples_written == 3 and rep2.samples_written == 3 and rep2.samples_already == 3
    rep3 = _run(tmp_path / "b", 6)
    assert rep3.samples_written == 0 and rep3.total == 36
    a, b = DenoiserStore.open(tmp_path / "a"), DenoiserStore.open(tmp_path / "b")
    assert a.keys == b.keys and len(set(b.keys)) == len(b)
    for name in ("x_t", "t", "eps"):  # the same seed gives the same records whatever the batching
        np.testing.assert_array_equal(getattr(a, name)[:], getattr(b, name)[:])
    other = _run(tmp_path / "c", 2, seed=1)
    assert other.total == 12 and not np.array_equal(DenoiserStore.open(tmp_path / "c").x_t[0], a.x_t[0])
    with pytest.raises(StoreError, match="other settings.*sampler"):
        _run(tmp_path / "b", 6, steps=K + 1)


@pytest.mark.parametrize("kind", ["crash", "interrupt"])
def test_crash_mid_run_then_resume(tmp_path, kind):
    clean = _run(tmp_path / "clean", 6)
    # each batch of 2 samples makes K + R eps calls; fail inside the third batch
    opts = {"fail_after": 2 * (K + R) + 1} if kind == "crash" else {"interrupt_after": 2 * (K + R) + 1}
    with pytest.raises(RuntimeError if kind == "crash" else KeyboardInterrupt):
        _run(tmp_path / "s", 6, FakeDenoiser(**opts))
    partial = DenoiserStore.open(tmp_path / "s")
    assert 0 < len(partial) < clean.total
    assert not list((tmp_path / "s").glob("*.tmp"))
    _run(tmp_path / "s", 6)
    a, b = DenoiserStore.open(tmp_path / "clean"), DenoiserStore.open(tmp_path / "s")
    assert sorted(a.keys) == sorted(b.keys) and len(set(b.keys)) == len(b)  # no duplicates, nothing lost
    order = np.argsort(b.keys)
    for name in ("x_t", "t", "eps"):
        np.testing.assert_array_equal(getattr(a, name)[np.argsort(a.keys)], getattr(b, name)[order])
    b.verify()


def test_conditional_teacher_and_cond_table(tmp_path):
    prompts = ["a", "bb", "ccc"]
    _run(tmp_path / "s", 4, FakeDenoiser(conditional=True), prompts=prompts)
    s = DenoiserStore.open(tmp_path / "s")
    assert s.prompts == prompts and s.cond.shape == (len(s), 3, 5) and s.cond_table.shape == (3, 3, 5)
    np.testing.assert_array_equal(s.prompt_index, s.sample % 3)
    fake = FakeDenoiser(conditional=True)
    np.testing.assert_allclose(s.cond[3 * (K + R)], fake.encode_text(["a"])[0].numpy(), atol=1e-3)  # sample 3
    np.testing.assert_allclose(s.cond[K + R], fake.encode_text(["bb"])[0].numpy(), atol=1e-3)
    want = fake.eps(torch.from_numpy(s.x_t[:]), torch.from_numpy(s.t[:]).long(), torch.from_numpy(s.cond[:]))
    np.testing.assert_allclose(s.eps[:], want.numpy(), atol=3e-3, rtol=3e-3)
    s.verify()
    (tmp_path / "s" / "cond.f16").write_bytes(b"\0" * 90)
    with pytest.raises(StoreError, match="cond.f16"):
        DenoiserStore.open(tmp_path / "s").verify()
    # no prompts for a conditional teacher: the empty prompt
    _run(tmp_path / "u", 1, FakeDenoiser(conditional=True))
    assert DenoiserStore.open(tmp_path / "u").prompts == [""]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unconditional"):
        _run(tmp_path / "s", 2, prompts=["a cat"])
    with pytest.raises(ValueError, match="steps must be <= 100"):
        _run(tmp_path / "s", 2, steps=101)
    with pytest.raises(ValueError, match="val_fraction"):
        _run(tmp_path / "s", 2, val_fraction=1.0)
    _run(tmp_path / "v", 1)
    with pytest.raises(StoreError, match="denoiser store without arrays"):
        Store.open(tmp_path / "v")  # a frame store reader does not take a denoiser store


@pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} not present")
def test_real_mnist_teacher_tiny(tmp_path):
    from organic_sd.teachers import load_denoiser

    d = load_denoiser(f"ddpm-mnist:{MNIST}")
    rep = precompute_denoiser(d, tmp_path / "s", 4, steps=5, renoise=1, batch=4, progress=False)
    assert rep.total == 4 * 6
    s = DenoiserStore.open(tmp_path / "s")
    i = np.array([1, 5, 11])  # two trajectory steps and a re-noised record
    e = d.eps(torch.from_numpy(s.x_t[i]), torch.from_numpy(s.t[i]).long())
    np.testing.assert_allclose(s.eps[i], e.numpy(), atol=5e-3)
    assert s.meta["teacher"] == d.id and s.meta["schedule"]["num_steps"] == 1001


@pytest.mark.skipif(not MNIST.is_file(), reason=f"{MNIST} not present")
def test_cli_precompute_denoiser(tmp_path, capsys):
    argv = ["precompute", "denoiser", "--teacher", f"ddpm-mnist:{MNIST}", "--out", str(tmp_path / "s"),
            "--samples", "2", "--steps", "3", "--renoise", "1", "--device", "cpu", "--val-fraction", "0.5"]
    assert main([*argv, "--no-progress"]) == 0
    got = capsys.readouterr()
    assert "wrote 2 samples (8 records" in got.out and "sample/s" not in got.err  # no bar when asked for none
    assert main([*argv, "--progress"]) == 0  # resumed: nothing left to do; the bar is drawn even to a pipe
    got = capsys.readouterr()
    assert "0 samples" in got.out and "sample" in got.err
    assert main([*argv[:-6], "--steps", "4"]) == 2  # other settings: a clear error, not a traceback
    assert "other settings" in capsys.readouterr().err
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["count"] == 8 and meta["val_fraction"] == 0.5


def test_cli_precompute_frames_and_its_older_spelling():
    from organic_sd.cli import legacy_argv

    a = build_parser().parse_args(["precompute", "frames", "clip.mp4", "frames/", "--teacher", "t", "--out", "o"])
    assert a.sources == ["clip.mp4", "frames/"] and a.size == 256 and a.store_kind == "frames"
    for old in (["precompute", "clip.mp4", "--teacher", "t", "--out", "o"],
                ["precompute", "--teacher", "t", "clip.mp4", "--out", "o"]):
        b = build_parser().parse_args(legacy_argv(old))  # `osd precompute SOURCE ...` still means frames
        assert b.store_kind == "frames" and b.sources == ["clip.mp4"] and b.func is a.func
    assert legacy_argv(["precompute", "--help"]) == ["precompute", "--help"]
    d = build_parser().parse_args(["precompute", "denoiser", "--teacher", "ddpm-mnist", "--out", "o"])
    assert d.store_kind == "denoiser" and d.samples == 256
    with pytest.raises(SystemExit):
        main(["precompute", "denoiser", "--out", "o"])  # --teacher is required


def test_ctrl_c_stops_after_the_batch_and_keeps_it(tmp_path):
    import signal

    class CtrlC(FakeDenoiser):
        def eps(self, x_t, t, cond=None):
            if self.calls == K + R + 1:  # inside the second batch, as if the user pressed Ctrl-C
                os.kill(os.getpid(), signal.SIGINT)
            return super().eps(x_t, t, cond)

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    rep = _run(tmp_path / "s", 6, CtrlC())
    assert rep.interrupted and rep.samples_written == 4 and rep.total == 4 * (K + R)  # the second batch is kept
    assert "re-run the same command to resume" in rep.summary()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    rep = _run(tmp_path / "s", 6)
    assert not rep.interrupted and rep.samples_already == 4 and rep.total == 6 * (K + R)


def test_pixel_range_comes_from_the_teacher_not_its_id(tmp_path):
    """A teacher whose id says nothing of its range still gets it: the store and the O-UNet record what it declares."""
    from organic_sd.ounet.model import OUNet

    teacher = FakeDenoiser()
    teacher.id, teacher.pixel_range = "plain", (-0.5, 0.5)
    _run(tmp_path / "s", 6, teacher=teacher)
    s = DenoiserStore.open(tmp_path / "s")
    assert s.meta["pixel_range"] == [-0.5, 0.5] and s.pixel_range == (-0.5, 0.5)
    run = tmp_path / "run"
    assert main(["train", "denoiser", "--store", str(tmp_path / "s"), "--out", str(run), "--ticks", "1",
                     "--window", "3", "--modulate", "1", "--hidden", "2", "--generations", "3"]) == 0
    assert OUNet.load(run).config.pixel_range == (-0.5, 0.5)
    # a store written before the field existed: a clear error, not a guess
    m = json.loads((tmp_path / "s" / "meta.json").read_text())
    del m["pixel_range"]
    (tmp_path / "s" / "meta.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="pixel range"):
        DenoiserStore.open(tmp_path / "s").pixel_range


class FakeClassDenoiser(FakeDenoiser):
    """A class-conditional fake: cond is a (B, 3) one-hot row over classes 'a', 'b', 'c'."""

    classes = ("a", "b", "c")

    def __init__(self):
        super().__init__()
        self.id = "fake-class-denoiser"
        self.cond_shape = (3,)

    def eps(self, x_t, t, cond=None):
        tt = check_eps_inputs(x_t, t, self.sample_shape, len(self.alphas_cumprod))
        assert cond is not None and cond.shape == (x_t.shape[0], 3)
        out = 0.5 * x_t * (1 + tt.float() / 100)[:, None, None, None]
        return out + (cond @ torch.tensor([1.0, 2.0, 3.0]))[:, None, None, None]

    def encode_text(self, prompts):
        return torch.nn.functional.one_hot(torch.tensor([self.classes.index(p) for p in prompts]), 3).float()


def test_class_conditional_store_is_balanced_and_labelled(tmp_path):
    _run(tmp_path / "s", 7, FakeClassDenoiser())
    s = DenoiserStore.open(tmp_path / "s")
    assert s.classes == ["a", "b", "c"] and s.prompts == ["a", "b", "c"] and s.cond_table.shape == (3, 3)
    np.testing.assert_array_equal(s.label, s.sample % 3)  # sample S is of class S mod 3
    np.testing.assert_array_equal(np.bincount(s.label[~s.renoised]) // K, [3, 2, 2])  # balanced up to 7 mod 3
    np.testing.assert_array_equal(s.cond[:], np.eye(3)[s.label])  # the one-hot rows, exact in fp16
    # every eps was computed with the record's own class: its offset is 1, 2 or 3
    want = FakeClassDenoiser().eps(torch.from_numpy(s.x_t[:]), torch.from_numpy(s.t[:]).long(),
                                   torch.from_numpy(s.cond[:]))
    np.testing.assert_allclose(s.eps[:], want.numpy(), atol=3e-3, rtol=3e-3)
    # the split is by sample: all records of a sample (so of one class draw) on one side
    val = set(s.sample[s.indices("val")])
    assert val and not val & set(s.sample[s.indices("train")])
    s.verify()
    # named prompts must be class names; a subset of classes is allowed (e.g. only "c")
    with pytest.raises(ValueError, match="class names"):
        _run(tmp_path / "x", 2, FakeClassDenoiser(), prompts=["a cat"])
    _run(tmp_path / "c", 2, FakeClassDenoiser(), prompts=["c"])
    assert (DenoiserStore.open(tmp_path / "c").label == 2).all()
    # stores of other teachers hold no classes
    _run(tmp_path / "u", 1)
    u = DenoiserStore.open(tmp_path / "u")
    assert u.classes is None
    with pytest.raises(StoreError, match="not class-conditional"):
        u.label


@pytest.mark.skipif(not DIT.is_file(), reason=f"{DIT} not present")
def test_cli_precompute_dit_teacher_tiny(tmp_path, capsys):
    from organic_sd.teachers import load_denoiser

    out = tmp_path / "s"
    argv = ["precompute", "denoiser", "--teacher", f"dit-mnist-cond:{DIT}", "--out", str(out), "--samples", "10",
            "--steps", "2", "--renoise", "1", "--batch", "10", "--device", "cpu", "--val-fraction", "0.3"]
    assert main(argv) == 0 and "wrote 10 samples (30 records" in capsys.readouterr().out
    s = DenoiserStore.open(out)
    assert s.classes == [str(k) for k in range(10)] and s.cond.shape == (30, 10)
    np.testing.assert_array_equal(np.bincount(s.label, minlength=10), [3] * 10)  # every class, once per sample
    d = load_denoiser(f"dit-mnist-cond:{DIT}")
    i = np.array([0, 4, 29])  # sample 0's first step, sample 1's second, sample 9's re-noised copy
    e = d.eps(torch.from_numpy(s.x_t[i]), torch.from_numpy(s.t[i]).long(), torch.from_numpy(s.cond[i]))
    np.testing.assert_allclose(s.eps[i], e.numpy(), atol=5e-3)
    assert s.meta["teacher"] == d.id and s.pixel_range == (-1.0, 1.0)
