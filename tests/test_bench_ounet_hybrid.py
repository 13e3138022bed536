"""bench/ounet_hybrid.py: the clone's own path, step by step, against the teacher's estimates from its states."""

import sys
from pathlib import Path

import torch
from conftest import tiny_ounet

from organic_sd.teachers.ddim import ddim_sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from ounet_hybrid import along_clone_path, mixed_path  # noqa: E402


def test_along_the_clone_path_the_teacher_finishes_from_the_clones_states():
    u, teacher = tiny_ounet(seed=0), tiny_ounet(seed=1)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    path = along_clone_path(u, teacher, noise, 4)
    assert [s["t"] for s in path] == [49, 37, 24, 12] and all(s["clone_x0"].shape == noise.shape for s in path)
    with torch.no_grad():
        own = ddim_sample(teacher, noise, 4)
        # from the first state (the noise itself) the teacher's finish is its own sample; later it finishes the
        # clone's states: the clone for k steps, then the teacher
        torch.testing.assert_close(path[0]["teacher_finish"], own)
        for k in (1, 3):
            torch.testing.assert_close(path[k]["teacher_finish"], mixed_path(u, teacher, k, noise, 4))
        assert not torch.allclose(path[3]["teacher_finish"], own)
        # the last x0 estimate on the clone's path is the clone's sample
        torch.testing.assert_close(path[-1]["clone_x0"], ddim_sample(u, noise, 4), rtol=1e-4, atol=1e-4)
    # a clone equal to its teacher: the same x0 from every state
    same = along_clone_path(teacher, teacher, noise, 4)
    assert all(torch.allclose(s["clone_x0"], s["teacher_x0"]) for s in same)
