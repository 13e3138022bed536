import json

import pytest
import torch
from conftest import interrupt_fit, quick, random_taesd

from organic_sd.ovae import OVAE
from organic_sd.ovae import staged as staged_mod
from organic_sd.ovae.config import TrainConfig
from organic_sd.ovae.features import FEATURES_NAME, FeatureTargets, encoder_taps, taps
from organic_sd.ovae.train import train
from organic_sd.teachers.taesd import build_decoder, build_encoder

STAGES = ("3:4", "3:3:0", "1:0:0")  # latent -> 1/4 (features) -> 1/2 (features) -> full (RGB)


def features_run(store, teacher, out, **kw):
    return quick("decoder", store, out, stages=STAGES, stage_targets="features", teacher=str(teacher),
                 feature_channels=5, **kw)


def test_taps_are_the_last_layer_at_each_resolution():
    dec = build_decoder(4)
    assert taps(dec) == [5, 10, 15]
    h = torch.randn(1, 4, 2, 3)
    sizes = {}
    for i, layer in enumerate(dec):
        h = layer(h)
        sizes[i] = tuple(h.shape[-2:])
    assert [sizes[i] for i in taps(dec)] == [(2, 3), (4, 6), (8, 12)]
    with pytest.raises(ValueError, match="TAESD-family teacher"):
        taps(torch.nn.Linear(2, 2))


def test_encoder_taps_are_the_last_layer_before_each_halving():
    enc = build_encoder(4)
    h, sizes = torch.randn(1, 3, 16, 24), {}
    for i, layer in enumerate(enc):
        h = layer(h)
        sizes[i] = tuple(h.shape[-2:])
    assert [sizes[i] for i in encoder_taps(enc)] == [(16, 24), (8, 12), (4, 6)]
    with pytest.raises(ValueError, match="TAESD-family teacher"):
        encoder_taps(None)


def test_the_basis_standardises_and_round_trips(tmp_path):
    torch.manual_seed(0)
    dec = build_decoder(4).eval()
    z = torch.randn(8, 4, 4, 4)
    ft = FeatureTargets.for_decoder(dec, [2, 4], 6, "t:1").fit(z, seed=0)
    for stage, side in ((0, 8), (1, 16)):
        y = ft(z, stage)  # (B, K, side, side)
        assert y.shape == (8, 6, side, side)
        rows = y.permute(0, 2, 3, 1).reshape(-1, 6).double()
        # on the latents it was fitted on: centred, unit variance, uncorrelated components
        assert torch.allclose(rows.mean(0), torch.zeros(6, dtype=torch.double), atol=1e-3)
        assert torch.allclose(rows.T @ rows / len(rows), torch.eye(6, dtype=torch.double), atol=1e-3)
        assert ft.scale[stage] >= float(rows.abs().quantile(0.999))  # the readout's tanh reaches nearly every value
    path = ft.save(tmp_path / FEATURES_NAME)
    back = FeatureTargets.for_decoder(dec, [2, 4], 6, "t:1").load(path)
    assert torch.allclose(back(z, 1), ft(z, 1), atol=1e-5) and back.scale == ft.scale
    for ups, k, teacher in (([2, 4], 5, "t:1"), ([2, 4], 6, "t:2"), ([2], 6, "t:1")):
        other = FeatureTargets.for_decoder(dec, ups, k, teacher)
        with pytest.raises(ValueError, match="holds a feature basis for teacher"):
            other.load(path)
    with pytest.raises(ValueError, match="a stage asks for x16"):
        FeatureTargets.for_decoder(dec, [16], 6, "t:1")
    with pytest.raises(RuntimeError, match="fit"):
        FeatureTargets.for_decoder(dec, [2], 6, "t:1")(z, 0)


def test_a_feature_staged_run_trains_resumes_and_loads(taesd_store, tmp_path, capsys):
    store, teacher = taesd_store
    run = tmp_path / "dec"
    res = train(features_run(store, teacher, run))
    out = capsys.readouterr().out
    assert res["status"] == "done" and out.count("the teacher's features") >= 2
    basis = (run / FEATURES_NAME).read_bytes()
    d = OVAE.load(run).decoder
    assert [(s.config.in_channels, s.config.out_channels) for s in d.module.stages] == [(4, 5), (5, 5), (5, 3)]
    # stages 1 and 2 score against the teacher's activations, the last against its decode
    logs = [[json.loads(line) for line in (run / f"stage{i}" / "log.jsonl").read_text().splitlines()]
            for i in (1, 2, 3)]
    assert all("rel_error" in r for r in logs[0] + logs[1]) and all("psnr" in r for r in logs[2])
    assert json.loads((run / "stage1" / "config.json").read_text())["targets"] == "features"
    assert json.loads((run / "stage3" / "config.json").read_text())["out_scale"] == 1.0
    z = torch.randn(2, 4, 3, 5)
    y = OVAE.load(run).decode(z)
    assert y.shape == (2, 3, 24, 40)
    assert torch.allclose(y, d.module.outputs(z, fast=False)[-1].clamp(-1, 1), atol=1e-5)  # the fast pass is exact
    # resume: nothing refitted, the basis untouched
    res2 = train(features_run(store, teacher, run))
    assert res2["status"] == "done" and capsys.readouterr().out.count("done earlier") == 3
    assert (run / FEATURES_NAME).read_bytes() == basis and torch.equal(OVAE.load(run).decode(z), y)
    # the same folder under RGB targets, or another K, is refused rather than mixed
    with pytest.raises(ValueError, match="stage_targets"):
        train(quick("decoder", store, run, stages=STAGES))
    with pytest.raises(ValueError, match="feature_channels"):
        train(quick("decoder", store, run, stages=STAGES, stage_targets="features", teacher=str(teacher),
                    feature_channels=4))


def test_ctrl_c_in_a_feature_stage_resumes_on_the_same_basis(taesd_store, tmp_path, monkeypatch):
    store, teacher = taesd_store
    real = interrupt_fit(monkeypatch, staged_mod, 4)  # at stage 2's second tick
    run = tmp_path / "dec"
    res = train(features_run(store, teacher, run))
    assert res["status"] == "interrupted" and [s["status"] for s in res["stages"]] == ["done", "interrupted"]
    basis, stage1 = (run / FEATURES_NAME).read_bytes(), (run / "stage1" / "model.safetensors").read_bytes()
    monkeypatch.setattr(staged_mod.ola, "fit", real)
    assert train(features_run(store, teacher, run))["status"] == "done"
    assert (run / FEATURES_NAME).read_bytes() == basis
    assert (run / "stage1" / "model.safetensors").read_bytes() == stage1


def test_another_teacher_or_an_init_without_its_basis_is_refused(taesd_store, tmp_path):
    store, teacher = taesd_store
    random_taesd(tmp_path / "other", "taesd", 4, False, seed=1)
    with pytest.raises(ValueError, match="was made with"):
        train(features_run(store, tmp_path / "other", tmp_path / "a"))
    assert not (tmp_path / "a").exists()  # refused before the run folder was made
    rgb = tmp_path / "rgb"
    train(quick("decoder", store, rgb, stages=("3:4", "3:3:0", "1:0:0"), ticks=1))
    with pytest.raises(ValueError, match="stage 1: it has"):  # RGB stages do not fit a feature run's shapes
        train(features_run(store, teacher, tmp_path / "b", init=str(rgb), ticks=1))
    first = tmp_path / "first"
    train(features_run(store, teacher, first, ticks=1))
    (first / FEATURES_NAME).unlink()
    with pytest.raises(ValueError, match=f"holding its {FEATURES_NAME}"):
        train(features_run(store, teacher, tmp_path / "c", init=str(first), ticks=1))


def test_init_from_a_feature_run_reads_its_basis(taesd_store, tmp_path, capsys):
    store, teacher = taesd_store
    first = tmp_path / "first"
    train(features_run(store, teacher, first, ticks=1))
    res = train(features_run(store, teacher, tmp_path / "next", init=str(first), ticks=1))
    assert res["status"] == "done" and "starting from --init" in capsys.readouterr().out
    assert (tmp_path / "next" / FEATURES_NAME).read_bytes() == (first / FEATURES_NAME).read_bytes()


@pytest.mark.parametrize("kw, match", [
    ({"stages": ("3:4",), "stage_targets": "features", "teacher": "t"}, "at least two --stages"),
    ({"stages": STAGES, "stage_targets": "features"}, "needs at least two --stages .* and --teacher"),
    ({"stage_targets": "features", "teacher": "t"}, "only apply with --stages"),
    ({"teacher": "t"}, "only apply with --stages"),
    ({"stages": STAGES, "stage_targets": "pixels"}, "must be 'decode' or 'features'"),
    ({"stages": STAGES, "feature_channels": 0}, "--feature-channels must be positive"),
])
def test_feature_flags_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig("decoder", "s", "o", ticks=1, **kw)


def test_feature_targets_on_the_command_line(taesd_store, tmp_path):
    from organic_sd import cli

    store, teacher = taesd_store
    run = tmp_path / "cli"
    rc = cli.main(["train", "decoder", "--store", str(store), "--out", str(run), "--stages", *STAGES,
                   "--stage-targets", "features", "--teacher", str(teacher), "--feature-channels", "3",
                   "--ticks", "1", "--generations", "3", "--eval-images", "4", "--max-rows", "2000"])
    assert rc == 0 and (run / FEATURES_NAME).is_file()
    assert [s.config.out_channels for s in OVAE.load(run).decoder.module.stages] == [3, 3, 3]
    assert json.loads((run / "config.json").read_text())["stage_targets"] == "features"
