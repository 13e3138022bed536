"""The staged O-Encoder: fine to coarse, each stage toward the teacher encoder's activations, the last its latent."""
import json

import pytest
import torch
from conftest import interrupt_fit, quick

from organic_sd.data.store import Store
from organic_sd.ovae import OVAE
from organic_sd.ovae import staged as staged_mod
from organic_sd.ovae.config import TrainConfig
from organic_sd.ovae.features import FEATURES_NAME
from organic_sd.ovae.train import train

STAGES = ("3:4", "1:3", "3:0")  # pixels -> 1/2 (features) -> 1/4 (features) -> latent (linear)


def encoder_run(store, teacher, out, **kw):
    kw = {"generations": 40, **kw}  # enough search for the tiny store's latents (a random teacher's: nearly flat)
    return quick("encoder", store, out, stages=STAGES, teacher=str(teacher), feature_channels=5, **kw)


def test_a_staged_encoder_trains_resumes_and_encodes(taesd_store, tmp_path, capsys):
    store, teacher = taesd_store
    run = tmp_path / "enc"
    res = train(encoder_run(store, teacher, run))
    out = capsys.readouterr().out
    assert res["status"] == "done" and out.count("the teacher's features") >= 2 and "in 2x2 cells" in out
    e = OVAE.load(run).encoder
    assert e.config.mode == "staged"
    assert [(s.config.in_channels, s.config.out_channels, s.config.down) for s in e.module.stages] == \
        [(3, 5, 2), (5, 5, 2), (5, 4, 2)]
    # stages 1 and 2 learn the teacher encoder's activations, the last its latent, scored by cosine
    logs = [[json.loads(line) for line in (run / f"stage{i}" / "log.jsonl").read_text().splitlines()]
            for i in (1, 2, 3)]
    assert all("rel_error" in r for r in logs[0] + logs[1]) and all("cosine" in r for r in logs[2])
    assert json.loads((run / "stage3" / "config.json").read_text())["targets"] == "latent"
    images = torch.rand(2, 3, 32, 24) * 2 - 1
    z = OVAE.load(run).encode(images)
    assert z.shape == (2, 4, 4, 3)
    assert torch.allclose(z, e.module.outputs(images, fast=False)[-1], atol=1e-5)  # the fast pass is exact
    # the stack learned something: on held-out photos closer to the teacher's latents than predicting zero
    s = Store.open(store)
    val = s.indices("val")
    x, zt = torch.from_numpy(s.images[val]), torch.from_numpy(s.latents[val])
    assert float((OVAE.load(run).encode(x) - zt).square().mean()) < 0.5 * float(zt.square().mean())
    # resume: nothing refitted, the basis untouched
    basis = (run / FEATURES_NAME).read_bytes()
    assert train(encoder_run(store, teacher, run))["status"] == "done"
    assert capsys.readouterr().out.count("done earlier") == 3
    assert (run / FEATURES_NAME).read_bytes() == basis and torch.equal(OVAE.load(run).encode(images), z)
    # a full O-VAE: this encoder beside a decoder; `osd info` tells the stages fine to coarse
    from organic_sd import info

    dec = tmp_path / "dec"
    train(quick("decoder", store, dec, window=3, hidden=(3,), ticks=1))
    from organic_sd.ovae.export import export

    export(run, dec, tmp_path / "pair.safetensors")
    ov = OVAE.load(tmp_path / "pair.safetensors")
    assert ov.decode(ov.encode(images)).shape == images.shape
    text = info.ovae_summary(ov)
    assert "encoder: staged, 3 stages fine to coarse" in text and "/2 down" in text


def test_ctrl_c_mid_stage_resumes(taesd_store, tmp_path, monkeypatch):
    store, teacher = taesd_store
    real = interrupt_fit(monkeypatch, staged_mod, 4)  # at stage 2's second tick
    run = tmp_path / "enc"
    res = train(encoder_run(store, teacher, run))
    assert res["status"] == "interrupted" and [s["status"] for s in res["stages"]] == ["done", "interrupted"]
    stage1 = (run / "stage1" / "model.safetensors").read_bytes()
    monkeypatch.setattr(staged_mod.ola, "fit", real)
    assert train(encoder_run(store, teacher, run))["status"] == "done"
    assert (run / "stage1" / "model.safetensors").read_bytes() == stage1
    assert OVAE.load(run).encoder.config.mode == "staged"


def test_init_from_a_staged_encoder(taesd_store, tmp_path, capsys):
    store, teacher = taesd_store
    first = tmp_path / "first"
    train(encoder_run(store, teacher, first, ticks=1))
    res = train(encoder_run(store, teacher, tmp_path / "next", init=str(first), ticks=1))
    assert res["status"] == "done" and "starting from --init" in capsys.readouterr().out
    with pytest.raises(ValueError, match="holds no staged decoder"):  # an encoder run is no decoder's start
        train(quick("decoder", store, tmp_path / "d", stages=("3:4", "3:3:0", "1:0:0"), init=str(first), ticks=1))


@pytest.mark.parametrize("kw, match", [
    ({"stages": ("3:4", "3:0")}, "needs at least two --stages .* and --teacher"),
    ({"stages": ("3:4",), "teacher": "t"}, "at least two --stages"),
    ({"stages": ("3:4", "3:4:1"), "teacher": "t"}, "WINDOW:HIDDEN each"),
    ({"stages": ("3:4", "3:0"), "teacher": "t", "mode": "global"}, "patch-mode part"),
])
def test_staged_encoder_flags_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig("encoder", "s", "o", ticks=1, **kw)


def test_staged_encoder_on_the_command_line(taesd_store, tmp_path):
    from organic_sd import cli

    store, teacher = taesd_store
    run = tmp_path / "cli"
    rc = cli.main(["train", "encoder", "--store", str(store), "--out", str(run), "--stages", *STAGES,
                   "--teacher", str(teacher), "--feature-channels", "3", "--ticks", "1", "--generations", "3",
                   "--eval-images", "4", "--max-rows", "2000"])
    assert rc == 0 and (run / FEATURES_NAME).is_file()
    assert [s.config.out_channels for s in OVAE.load(run).encoder.module.stages] == [3, 3, 4]
    assert json.loads((run / "config.json").read_text())["stage_targets"] == "features"


def test_feature_targets_are_computed_once_per_sample(taesd_store, tmp_path, monkeypatch):
    from dataclasses import replace

    from organic_sd.ovae.features import open_basis
    from organic_sd.ovae.rows import PartRows, part_config

    store, teacher = taesd_store
    cfg = encoder_run(store, teacher, tmp_path / "r")
    s = Store.open(store)
    part = replace(part_config(cfg, s), mode="staged")
    configs = staged_mod.stage_configs(cfg, part)
    ft = staged_mod.feature_targets(cfg, s, configs, torch.device("cpu"))
    (tmp_path / "r").mkdir()
    open_basis(ft, tmp_path / "r", s.images, s.indices("train"), 0, torch.device("cpu"))
    rows = staged_mod.StageRows(PartRows(s, part, torch.device("cpu"), None), [], configs[0], ft)
    seen = []
    real = ft.activations
    monkeypatch.setattr(ft, "activations", lambda x, stages: seen.append(len(x)) or real(x, stages))
    idx = s.indices("train")[:5]
    images = torch.from_numpy(s.images[idx])
    first = rows.target(idx, images)
    again = rows.target(idx[[4, 0, 2]], images[[4, 0, 2]])
    assert seen == [5] and torch.equal(again, first[[4, 0, 2]])  # served from the cache, in the asked order
    more = s.indices("train")[3:7]
    both = rows.target(more, torch.from_numpy(s.images[more]))
    assert seen == [5, 2] and torch.equal(both[:2], first[3:5])  # only the two new samples go through the teacher
    monkeypatch.setattr(staged_mod, "TARGET_CACHE_BYTES", 0)  # a full cache: computed every time, still right
    full = staged_mod.StageRows(PartRows(s, part, torch.device("cpu"), None), [], configs[0], ft)
    assert torch.equal(full.target(idx, images), first) and seen[-1] == 5 and not full._cached
