"""The class-conditional MNIST DiT teacher: exact loading, a pinned eps value, the cond forms, bad inputs."""

import pytest
import torch

from conftest import DIT, needs_dit
from organic_sd.teachers import TeacherError, load_denoiser
from organic_sd.teachers.ddim import ddim_sample
from organic_sd.teachers.dit_mnist import DiT, DiTMnistDenoiser, class_cond


@pytest.fixture(scope="module")
def dit():
    if not DIT.is_file():
        pytest.skip(f"{DIT} not present")
    return load_denoiser(f"dit-mnist-cond:{DIT}")


@pytest.fixture(scope="module")
def random_dit():
    """The architecture with its default random init: for shapes and input checks without the file."""
    torch.manual_seed(0)
    return DiTMnistDenoiser(DiT(), "dit-mnist-cond:random", torch.device("cpu"))


@needs_dit
def test_file_loads_every_tensor(dit):
    state = torch.load(DIT, map_location="cpu", weights_only=True)
    mine = dit.net.state_dict()
    assert sorted(mine) == sorted(state)  # no missing, no unexpected keys
    for k, v in state.items():
        assert torch.equal(mine[k], v), k
    assert sum(v.numel() for v in mine.values()) == 388_672  # the README's count (half_emb included)
    assert dit.alphas_cumprod.shape == (1000,) and dit.alphas_cumprod.dtype == torch.float64
    assert dit.sample_shape == (1, 28, 28) and dit.pixel_range == (-1.0, 1.0) and dit.cond_shape == (10,)
    # every spec form of the same file gives the same id
    assert load_denoiser(DIT).id == load_denoiser(DIT.parent).id == dit.id


@needs_dit
def test_known_eps_value(dit):
    # pinned once from the real weights (2026-12-03): a change of layout, scaling or schedule moves them
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    e = dit.eps(x, torch.tensor([500, 37]), torch.tensor([7, 2]))
    torch.testing.assert_close(e[0, 0, 10, 12:16], torch.tensor([-0.30488, -1.07954, 0.17782, -0.38940]),
                               atol=2e-4, rtol=0)
    torch.testing.assert_close(e[1, 0, 3, 3:6], torch.tensor([-0.27827, 1.62682, 0.23850]), atol=2e-4, rtol=0)
    assert abs(e.abs().sum().item() - 1695.546) < 0.05
    c = dit.conditioning(torch.tensor([500]), torch.tensor([7]))  # (1, 64) label + time embedding
    torch.testing.assert_close(c[0, :4], torch.tensor([1.02053, -0.59564, -0.31631, 0.14198]), atol=2e-4, rtol=0)


@needs_dit
def test_class_changes_eps_and_samples(dit):
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(4, 1, 28, 28, generator=g)
    x1 = ddim_sample(dit, noise, 8, torch.tensor([1] * 4))
    x0 = ddim_sample(dit, noise, 8, class_cond([0] * 4))  # the one-hot form, as a store's cond table holds it
    # a 1 is a thin stroke, a 0 a ring: far less ink for the 1s from the same noise
    ink1, ink0 = (x1 > 0).float().mean(), (x0 > 0).float().mean()
    assert ink1 < 0.7 * ink0, (ink1, ink0)


def test_cond_forms_agree_and_broadcast(random_dit):
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([4, 0, 9])
    e_idx = random_dit.eps(x, 100, labels)
    assert e_idx.shape == (3, 1, 28, 28) and e_idx.dtype == torch.float32
    torch.testing.assert_close(random_dit.eps(x, 100, class_cond(labels)), e_idx)
    torch.testing.assert_close(random_dit.eps(x, 100, torch.tensor([4]))[0], e_idx[0])  # one row shared by all
    assert not torch.allclose(random_dit.eps(x, 100, torch.tensor([5, 0, 9]))[0], e_idx[0])  # the class matters
    assert random_dit.conditioning(torch.tensor([1, 2, 3]), labels).shape == (3, 64)
    assert random_dit.label_table.shape == (10, 64)
    torch.testing.assert_close(random_dit.encode_text(["4", " 0", "9"]), class_cond(labels))


@pytest.mark.parametrize("cond, match", [
    (None, "no unconditional mode"),
    ([1, 2], "must be a torch.Tensor"),
    (torch.tensor([1, 10]), r"in 0\.\.9"),
    (torch.tensor([1.0, 2.0]), r"\(B,\) integer classes"),
    (torch.zeros(2, 9), r"\(B, 10\) float"),
    (torch.tensor([1, 2, 3]), "2 rows"),
    (torch.full((2, 10), float("nan")), "NaN"),
])
def test_bad_cond_is_a_clear_error(random_dit, cond, match):
    with pytest.raises(ValueError, match=match):
        random_dit.eps(torch.zeros(2, 1, 28, 28), 5, cond)


def test_bad_x_t_and_t(random_dit):
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        random_dit.eps(torch.zeros(2, 1, 32, 32), 5, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"0\.\.999"):
        random_dit.eps(torch.zeros(2, 1, 28, 28), 1000, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"0\.\.999"):
        random_dit.conditioning(torch.tensor([5, 1000]), torch.tensor([1, 2]))
    with pytest.raises(TeacherError, match="takes a class"):
        random_dit.encode_text(["a handwritten seven"])


def test_mismatched_keys_are_listed(tmp_path):
    state = DiT().state_dict()
    del state["dits.2.wq.weight"]
    state["dits.3.wq.weight"] = torch.zeros(256, 64)
    state["label_emb.weight"] = torch.zeros(11, 64)
    path = tmp_path / "model-40000.pth"
    torch.save(state, path)
    with pytest.raises(TeacherError) as e:
        load_denoiser(f"dit-mnist-cond:{path}")
    msg = str(e.value)
    assert "missing dits.2.wq.weight" in msg and "unexpected dits.3.wq.weight" in msg
    assert "shape label_emb.weight: expected (10, 64), file has (11, 64)" in msg


def test_other_files_and_specs_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "model-40000.pth"
    torch.save({"w": torch.zeros(3)}, path)
    with pytest.raises(TeacherError, match="not the MNIST DiT"):
        load_denoiser(f"dit-mnist-cond:{path}")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_denoiser(f"dit-mnist-cond:{tmp_path / 'absent.pth'}")
    monkeypatch.delenv("OSD_SHARED_DATA", raising=False)
    with pytest.raises(TeacherError, match="OSD_SHARED_DATA"):
        load_denoiser("dit-mnist-cond")


def test_random_weights_round_trip_through_the_loader(tmp_path, random_dit):
    path = tmp_path / "model-40000.pth"
    torch.save(random_dit.net.state_dict(), path)
    te = load_denoiser(path)  # found by its keys, no prefix
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(te.eps(x, 7, torch.tensor([3, 8])), random_dit.eps(x, 7, torch.tensor([3, 8])))
    assert te.id.startswith("dit-mnist-cond:")
