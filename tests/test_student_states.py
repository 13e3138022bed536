"""A clone's own DDIM paths, labelled by the teacher, appended to the teacher's store (data/student_states.py)."""

import math

import numpy as np
import pytest
import torch
from conftest import MNIST, needs_mnist
from test_denoiser_store import FakeDenoiser

from organic_sd.cli import main
from organic_sd.data.denoiser_precompute import draw_noise, precompute_denoiser
from organic_sd.data.denoiser_store import DenoiserStore
from organic_sd.data.store import StoreError
from organic_sd.data.student_states import FIRST_SAMPLE, add_student_states
from organic_sd.teachers.ddim import ddim_timesteps

STEPS = 4


class FakeClone:
    """A clone that errs: its eps is not the teacher's, so its path leaves the teacher's."""

    sample_shape = (1, 4, 4)

    def __init__(self, conditional=False, schedule=None):
        self.device = torch.device("cpu")
        self.alphas_cumprod = FakeDenoiser().alphas_cumprod if schedule is None else schedule
        self.cond_shape = (3, 5) if conditional else None
        self.conds = []

    def eps(self, x_t, t, cond=None):
        if self.cond_shape is not None:
            self.conds.append(cond.clone())
        return 0.3 * x_t + 0.1


def _store(path, teacher=None, samples=4, **kw):
    kw = {"steps": 5, "renoise": 1, "batch": 2, "val_fraction": 0.5, "progress": False, **kw}
    precompute_denoiser(teacher or FakeDenoiser(), path, samples, **kw)
    return path


def test_records_are_the_clones_path_labelled_by_the_teacher(tmp_path):
    path = _store(tmp_path / "s")
    before = DenoiserStore.open(path)
    old_keys, old_eps = list(before.keys), before.eps[:]
    teacher, clone = FakeDenoiser(), FakeClone()
    rep = add_student_states(teacher, clone, path, 3, steps=STEPS, batch=2, seed=7, student_id="fake",
                             progress=False)
    assert rep.samples_written == 3 and rep.records_written == 3 * STEPS and rep.total == len(old_keys) + 12
    s = DenoiserStore.open(path)
    assert s.keys[:len(old_keys)] == old_keys  # the teacher's own records are untouched
    np.testing.assert_array_equal(s.eps[:len(old_keys)], old_eps)
    new = np.arange(len(old_keys), len(s))
    assert [s.keys[i] for i in new[:STEPS]] == [f"{FIRST_SAMPLE:08d}/s{k:04d}" for k in range(STEPS)]
    ts = ddim_timesteps(101, STEPS)
    np.testing.assert_array_equal(s.t[new[:STEPS]], ts)
    x = torch.from_numpy(s.x_t[new[:STEPS]])  # (K, 1, 4, 4): one path
    # it starts from the sample's seeded noise and moves by the clone's eps (DDIM), not the teacher's
    noise = draw_noise((1, 4, 4), 101, 0, 7, FIRST_SAMPLE)[0]
    np.testing.assert_allclose(x[0], noise, atol=2e-3)
    ab = teacher.alphas_cumprod
    for k in range(STEPS - 1):
        a, b = ab[ts[k]].item(), ab[ts[k + 1]].item()
        e = clone.eps(x[k], None)
        want = math.sqrt(b) * (x[k] - math.sqrt(1 - a) * e) / math.sqrt(a) + math.sqrt(1 - b) * e
        np.testing.assert_allclose(x[k + 1], want, atol=3e-3)
    # every label is the teacher's eps at the state the clone reached
    want = teacher.eps(torch.from_numpy(s.x_t[new]), torch.from_numpy(s.t[new]).long()).numpy()
    np.testing.assert_allclose(s.eps[new], want, atol=2e-3, rtol=2e-3)
    # a path is never split between train and held-out records
    val = set(s.indices("val").tolist())
    for j in range(3):
        flags = {int(i) in val for i in new[j * STEPS:(j + 1) * STEPS]}
        assert len(flags) == 1
    assert s.meta["student_states"] == [{"clone": "fake", "samples": 3, "steps": STEPS, "seed": 7,
                                         "first_sample": FIRST_SAMPLE}]
    s.verify()


def test_resume_adds_only_the_missing_paths_and_lists_the_run_once(tmp_path):
    path = _store(tmp_path / "s")
    kw = {"steps": STEPS, "batch": 2, "student_id": "fake", "progress": False}
    add_student_states(FakeDenoiser(), FakeClone(), path, 2, **kw)
    rep = add_student_states(FakeDenoiser(), FakeClone(), path, 5, **kw)
    assert (rep.samples_already, rep.samples_written, rep.records_written) == (2, 3, 3 * STEPS)
    s = DenoiserStore.open(path)
    assert len([k for k in s.keys if "/s" in k]) == 5 * STEPS
    assert [r["samples"] for r in s.meta["student_states"]] == [5]


def test_the_conditional_clone_and_teacher_see_the_samples_prompt(tmp_path):
    teacher = FakeDenoiser(conditional=True)
    path = _store(tmp_path / "s", teacher, prompts=["a", "bbb"])
    clone = FakeClone(conditional=True)
    add_student_states(teacher, clone, path, 2, steps=STEPS, batch=2, progress=False)
    table = DenoiserStore.open(path).cond_table  # (P, 3, 5)
    rows = (np.arange(FIRST_SAMPLE, FIRST_SAMPLE + 2)) % len(table)
    np.testing.assert_allclose(clone.conds[0].numpy(), table[rows].astype(np.float32))
    s = DenoiserStore.open(path)
    new = np.flatnonzero(["/s" in k for k in s.keys])
    want = teacher.eps(torch.from_numpy(s.x_t[new]), torch.from_numpy(s.t[new]).long(),
                       torch.from_numpy(table[s.prompt_index[new]].astype(np.float32))).numpy()
    np.testing.assert_allclose(s.eps[new], want, atol=2e-3, rtol=2e-3)


def test_mismatches_are_clear_errors_and_leave_the_store_as_it_was(tmp_path):
    path = _store(tmp_path / "s")
    count = DenoiserStore.open(path).meta["count"]
    with pytest.raises(FileNotFoundError, match="osd precompute denoiser"):
        add_student_states(FakeDenoiser(), FakeClone(), tmp_path / "none", 1, progress=False)
    other = FakeDenoiser()
    other.id = "another-teacher"
    with pytest.raises(StoreError, match="another-teacher"):
        add_student_states(other, FakeClone(), path, 1, progress=False)
    with pytest.raises(ValueError, match="clone's noise schedule"):
        add_student_states(FakeDenoiser(), FakeClone(schedule=torch.linspace(0.99, 0.02, 101)), path, 1,
                           progress=False)
    wide = FakeClone()
    wide.sample_shape = (1, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        add_student_states(FakeDenoiser(), wide, path, 1, progress=False)
    with pytest.raises(ValueError, match="conditioning"):
        add_student_states(FakeDenoiser(), FakeClone(conditional=True), path, 1, progress=False)
    with pytest.raises(ValueError, match="samples and batch"):
        add_student_states(FakeDenoiser(), FakeClone(), path, 0, progress=False)
    assert DenoiserStore.open(path).meta["count"] == count


@needs_mnist
def test_cli_records_the_shipped_o_unets_paths(tmp_path, capsys):
    store = tmp_path / "dn"
    spec = f"ddpm-mnist:{MNIST}"
    assert main(["precompute", "denoiser", "--teacher", spec, "--out", str(store), "--samples", "2", "--steps", "3",
                 "--renoise", "0", "--batch", "2", "--device", "cpu"]) == 0
    assert main(["precompute", "clone-states", "--teacher", spec, "--ounet", "mnist", "--store", str(store),
                 "--samples", "2", "--steps", "8", "--batch", "2", "--device", "cpu"]) == 0
    assert "now holds 22 records" in capsys.readouterr().out
    s = DenoiserStore.open(store)
    assert sorted(set(np.asarray(s.t[6:]).round().astype(int))) == sorted(ddim_timesteps(len(s.alphas_cumprod), 8))
