"""bench/staged_features.py: RGB or teacher-feature targets for greedy decoder stages, Adam references, evolution."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from staged_features import main  # noqa: E402


def test_every_row_is_measured_and_the_evolved_stack_beats_a_flat_picture(taesd_store, tmp_path):
    store, teacher = taesd_store
    out = tmp_path / "r.json"
    assert main(["--store", str(store), "--teacher", str(teacher), "--shipped", "", "--k", "4", "--w1", "3",
                 "--hidden", "4", "4", "4", "--generations", "60", "--adam-seconds", "0.5",
                 "--rows", "3000", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert "shipped" not in r and r["evolved_parameters"] > 0
    # the evolved stack decodes the held-out latents closer to the teacher than a flat grey picture does
    assert r["evolved_features"] > r["zero"] + 1, r
    for name in ("adam_rgb", "adam_features", "adam_last_stage_on_teacher_features"):  # half a second of Adam:
        assert r[name] == r[name] and r[name] > 0, (name, r)  # scored (a finite PSNR), not judged
    for i in (1, 2):  # the feature stages beat predicting zero (the basis mean) on held-out rows
        assert 0 < r[f"evolved_stage{i}_relative_error"] < 1, r


def test_references_only_with_a_wider_second_stage(taesd_store, tmp_path):
    store, teacher = taesd_store
    out = tmp_path / "r.json"
    assert main(["--store", str(store), "--teacher", str(teacher), "--shipped", "", "--k", "4", "--w1", "3",
                 "--w2", "5", "--hidden", "4", "4", "4", "--adam-steps", "20", "--kinds", "features",
                 "--minutes", "0", "0", "0", "--rows", "3000", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["w2"] == 5 and r["adam_features"] > r["zero"] and "adam_rgb" not in r and "evolved_features" not in r


def test_adam_steps_bound_the_reference_by_steps_not_seconds():
    import torch
    from staged_features import adam_stage
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 6, generator=g)
    y = 0.5 * torch.tanh(x[:, :2])
    mse = lambda net: float((net(x) - y).square().mean())  # noqa: E731
    torch.manual_seed(0)
    few = adam_stage(x, y, 8, 1.0, seconds=1e9, dev="cpu", steps=2)  # 1e9 s: only the steps can have stopped it
    torch.manual_seed(0)
    many = adam_stage(x, y, 8, 1.0, seconds=1e9, dev="cpu", steps=300)
    assert mse(many) < 0.5 * mse(few)
