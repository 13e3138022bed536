import json
import os

import pytest
import torch
from conftest import interrupt_fit, quick

from organic_sd import cli, ola
from organic_sd.ovae import OVAE
from organic_sd.ovae import staged as staged_mod
from organic_sd.ovae.config import TrainConfig
from organic_sd.ovae.train import train

STAGES = ("3:4", "3:3", "1:0:1")  # tiny: latent -> 1/4 -> 1/2 -> full on the 32x32 fake store


def _log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_staged_train_resume_and_load(store, tmp_path, capsys):
    run = tmp_path / "dec"
    res = train(quick("decoder", store, run, stages=STAGES))
    assert res["status"] == "done" and [s["stage"] for s in res["stages"]] == [1, 2, 3]
    for i in (1, 2, 3):
        for name in ("config.json", "model.safetensors", "state.json", "log.jsonl", "plot.png"):
            assert (run / f"stage{i}" / name).is_file(), (i, name)
        assert [r["tick"] for r in _log(run / f"stage{i}")] == [1, 2]
    v = OVAE.load(run)
    d = v.decoder
    assert d.config.mode == "staged" and [s.config.up for s in d.module.stages] == [2, 2, 2]
    assert [tuple(s.module.config.hidden) for s in d.module.stages] == [(4,), (3,), ()]
    z = torch.randn(2, 4, 3, 5)
    y = v.decode(z)
    assert y.shape == (2, 3, 24, 40) and float(y.abs().max()) <= 1.0
    ref = d.module.outputs(z, fast=False)[-1].clamp(-1, 1)  # the one fast CPU pass equals the row path
    assert torch.allclose(y, ref, atol=1e-5)
    # every stage learned something at its own resolution: better than a flat grey picture
    for s in res["stages"]:
        assert s["heldout_mse"] < 0.2, s
    # the last stage's held-out score is the decoder's, through the OVAE API, on the same held-out images
    assert v.meta["decoder"]["stages"][0]["stage"]["in_channels"] == 4
    # resume: finished stages are not refitted, the run says so and nothing changes
    res2 = train(quick("decoder", store, run, stages=STAGES))
    out = capsys.readouterr().out
    assert res2["status"] == "done" and out.count("done earlier") == 3
    assert torch.equal(OVAE.load(run).decode(z), y)
    # other stages on the same folder are refused rather than mixed
    with pytest.raises(ValueError, match="stages: run has"):
        train(quick("decoder", store, run, stages=("3:4", "3:3", "3:0:1")))


def test_ctrl_c_mid_stage_then_resume(store, tmp_path, monkeypatch):
    real = interrupt_fit(monkeypatch, staged_mod, 4)  # at stage 2's second tick (stage 1 took ticks 1 and 2)
    run = tmp_path / "dec"
    res = train(quick("decoder", store, run, stages=STAGES))
    assert res["status"] == "interrupted" and [s["status"] for s in res["stages"]] == ["done", "interrupted"]
    assert json.loads((run / "stage2" / "state.json").read_text())["status"] == "interrupted"
    assert not (run / "stage3").exists() and not (run / "model.safetensors").exists()
    stage1 = (run / "stage1" / "model.safetensors").read_bytes()
    monkeypatch.setattr(staged_mod.ola, "fit", real)
    res = train(quick("decoder", store, run, stages=STAGES))
    assert res["status"] == "done"
    assert (run / "stage1" / "model.safetensors").read_bytes() == stage1  # a finished stage is never refitted
    assert [r["tick"] for r in _log(run / "stage2")] == [1, 2]  # stage 2 went on from its tick 1, to 2 in all
    assert OVAE.load(run).decoder.config.mode == "staged"


def test_init_from_a_staged_run(store, tmp_path, capsys):
    first = tmp_path / "a"
    train(quick("decoder", store, first, stages=STAGES, ticks=1))
    res = train(quick("decoder", store, tmp_path / "b", stages=("3:6", "3:3", "1:0:1"), ticks=1, init=str(first)))
    assert res["status"] == "done" and "starting from --init" in capsys.readouterr().out
    with pytest.raises(ValueError, match="stage 3: it has"):
        train(quick("decoder", store, tmp_path / "c", stages=("3:4", "3:3", "3:0:1"), ticks=1, init=str(first)))


def test_init_frozen_keeps_the_first_stages_and_trains_a_reshaped_last(store, tmp_path, capsys):
    first = tmp_path / "a"
    train(quick("decoder", store, first, stages=STAGES, ticks=1))
    run, stages = tmp_path / "b", ("3:4", "3:3", "3:5:0:1")  # stage 3: another window, more units, the carry
    res = train(quick("decoder", store, run, stages=stages, ticks=1, init=str(first), init_frozen=2))
    out = capsys.readouterr().out
    assert res["status"] == "done" and [s["status"] for s in res["stages"]] == ["frozen", "frozen", "done"]
    assert out.count("taken from --init") == 2 and "stage 3: fresh" in out
    for k in (1, 2):  # the frozen stages are --init's, to the bit
        a, b = ola.load(first / f"stage{k}"), ola.load(run / f"stage{k}")
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        assert json.loads((run / f"stage{k}" / "state.json").read_text())["status"] == "frozen"
    v = OVAE.load(run)
    last = v.decoder.module.stages[2]
    assert last.config.window == 3 and last.config.carry_channels == 3 and tuple(last.module.config.hidden) == (5,)
    assert v.decode(torch.zeros(2, 4, 4, 4)).shape == (2, 3, 32, 32)
    # the same command resumes: nothing is trained again
    again = train(quick("decoder", store, run, stages=stages, ticks=1, init=str(first), init_frozen=2))
    assert [s["status"] for s in again["stages"]] == ["frozen", "frozen", "done"]
    assert capsys.readouterr().out.count("taken from --init") == 2
    with pytest.raises(ValueError, match="a frozen stage is taken as it is"):  # a frozen stage must match exactly
        train(quick("decoder", store, tmp_path / "c", stages=("3:4", "3:6", "1:0:1"), ticks=1, init=str(first),
                    init_frozen=2))


def test_a_carried_stack_trains_and_loads_with_the_carry(store, tmp_path, capsys):
    run = tmp_path / "carry"
    res = train(quick("decoder", store, run, stages=("3:4", "3:3:0:1", "1:0:1:3")))
    assert res["status"] == "done" and "carried hidden 4x1x1" in capsys.readouterr().out
    d = OVAE.load(run).decoder
    assert [s.config.carry_channels for s in d.module.stages] == [0, 4, 3]
    assert [s.config.carry_window for s in d.module.stages] == [1, 1, 3]
    z = torch.randn(2, 4, 3, 5)
    assert torch.allclose(OVAE.load(run).decode(z), d.module.outputs(z, fast=False)[-1].clamp(-1, 1), atol=1e-5)
    for s in res["stages"]:
        assert s["heldout_mse"] < 0.2, s


def test_stages_flag_on_the_command_line(store, tmp_path):
    run = tmp_path / "cli"
    rc = cli.main(["train", "decoder", "--store", str(store), "--out", str(run), "--stages", *STAGES,
                   "--ticks", "1", "--generations", "3", "--eval-images", "4", "--max-rows", "2000"])
    assert rc == 0 and OVAE.load(run).decoder.config.mode == "staged"
    assert json.loads((run / "config.json").read_text())["stages"] == list(STAGES)


@pytest.mark.parametrize("kw, match", [
    ({"stages": ("3:4", "3")}, "WINDOW:HIDDEN"),
    ({"stages": ("2:4",)}, "must be odd"),
    ({"stages": ("3:4:1",)}, "stage 1 reads the latent"),
    ({"stages": ("3:4", "3:4:0:2")}, "must be odd"),
    ({"stages": ("3:0", "3:4:0:1")}, "CARRY reads the previous stage's hidden units, and it has none"),
    ({"stages": ("3:4", "3:4"), "hidden": (8,)}, "leave --window and --hidden out"),
    ({"stages": ("3:4", "3:4"), "stage_shares": (1.0,)}, "one positive share per stage"),
    ({"stage_shares": (1.0,)}, "only apply with --stages"),
    ({"stages": ("3:4", "3:3"), "stage_patience": -1}, "--stage-patience must be 0"),
    ({"stages": ("3:4", "3:3"), "init_frozen": 1}, "needs --init"),
    ({"stages": ("3:4", "3:3"), "init": "run", "init_frozen": 2}, "at most 1 of the 2 --stages"),
    ({"init_frozen": 1}, "--init-frozen only apply with --stages"),
    ({"stages": ("3:4", "3:3"), "init_frozen": -1}, "0 or more"),
    ({"stages": ("3:4", "3:3"), "shift_seconds": -1}, "--shift-seconds must be 0"),
    ({"shift_seconds": 5}, "a staged decoder"),
])
def test_stage_flags_are_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig("decoder", "s", "o", ticks=1, **kw)
    with pytest.raises(ValueError, match="needs --max-minutes or --ticks"):
        TrainConfig("decoder", "s", "o", stages=("3:4",))


def _random_staged_ovae(shift: bool = False) -> OVAE:
    """A staged decoder with random weights (4 latent channels, x8): stage shapes as `--stages 3:5 3:3 3:0` makes;
    with `shift`, a global shift of two maps and a probe after them."""
    from organic_sd.ola.module import OLAConfig, OLAModule
    from organic_sd.ovae import Part, PartConfig
    from organic_sd.stages import Stack, Stage, StageConfig

    g = torch.Generator().manual_seed(0)
    stages = []
    for cfg, hidden in ((StageConfig(4, 3, 3, 2), (5,)), (StageConfig(3, 3, 3, 2, extra_channels=4), (3,)),
                        (StageConfig(3, 3, 3, 2, extra_channels=4, carry_channels=3), ())):  # latent cell, carry
        m = OLAModule(OLAConfig(*cfg.io_dims(), hidden))
        for p in m.parameters():
            p.data = torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
        stages.append(Stage(cfg, m))
    from test_global_shift import random_shift

    stack = Stack(stages, random_shift(C=4, O=3, maps=2) if shift else None)
    part = Part(PartConfig("decoder", mode="staged", teacher="fake", latent_channels=4), stack)
    return OVAE(decoder=part)


@pytest.mark.parametrize("shift", [False, True])
def test_staged_decoder_file_round_trip_info_and_onnx(tmp_path, capsys, shift):
    v = _random_staged_ovae(shift)
    f = v.save(tmp_path / "v.safetensors")
    back = OVAE.load(f)
    z = torch.randn(2, 4, 5, 3)
    assert torch.equal(back.decode(z), v.decode(z)) and back.num_parameters() == v.num_parameters()
    assert v.decode(z[:0]).shape == (0, 3, 40, 24)
    assert cli.main(["info", str(f)]) == 0
    out = capsys.readouterr().out
    assert "staged, 3 stages" in out and ("global shift: per image, 3 channel shifts from 25" in out) == shift
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from organic_sd.ovae.onnx import check_onnx, export_onnx

    path = export_onnx(back, tmp_path / "d.onnx", "decoder", size=(64, 64))
    assert check_onnx(path, back, "decoder", size=(40, 88)) <= 1e-3  # a size it was not exported at


@pytest.mark.parametrize("shift", [False, True])
def test_staged_decoder_through_diffusers_save_pretrained(tmp_path, shift):
    pytest.importorskip("diffusers")
    from organic_sd.ovae.diffusers_vae import OVAEDiffusers

    v = _random_staged_ovae(shift)
    OVAEDiffusers.from_ovae(v).save_pretrained(tmp_path / "d")
    e = OVAEDiffusers.from_pretrained(tmp_path / "d")
    z = torch.randn(1, 4, 5, 7)
    assert torch.equal(e.decode(z).sample, v.decode(z))


def test_a_single_stage_run_from_before_stages_still_resumes(store, tmp_path):
    run = tmp_path / "dec"
    train(quick("decoder", store, run, ticks=1))
    cfg = json.loads((run / "config.json").read_text())
    del cfg["stages"], cfg["stage_shares"]  # as written before --stages existed
    (run / "config.json").write_text(json.dumps(cfg))
    assert train(quick("decoder", store, run, ticks=1))["tick"] == 2


def test_staged_decoder_stages_refine_as_told(store, tmp_path):
    run = tmp_path / "staged"
    assert cli.main(["train", "decoder", "--store", str(store), "--out", str(run), "--stages", "3:2", "3:2",
                     "--refine", "0.5", "--ticks", "2", "--generations", "40", "--eval-images", "4",
                     "--max-rows", "2000"]) == 0
    stages = OVAE.load(run).decoder.module.stages
    shares = [s.module.training_summary["refine"]["share"] for s in stages]
    assert shares == [0.5, 0.5]


def test_staged_decoder_stages_can_start_from_random_units(store, tmp_path):
    run = tmp_path / "staged"
    assert cli.main(["train", "decoder", "--store", str(store), "--out", str(run), "--stages", "3:3", "3:2",
                     "--refine", "0.9", "--refine-start", "random", "--ticks", "2", "--generations", "60",
                     "--eval-images", "4", "--max-rows", "2000"]) == 0
    stages = OVAE.load(run).decoder.module.stages
    assert [s.module.config.hidden for s in stages] == [(3,), (2,)]
    assert [s.module.training_summary["refine"]["start"] for s in stages] == ["random", "random"]
    assert json.loads((run / "config.json").read_text())["refine_start"] == "random"
    with pytest.raises(ValueError, match="--refine-start random"):  # a stage without units has nothing to start
        TrainConfig("decoder", "s", "o", ticks=1, stages=("3:3", "3:0"), refine=0.9, refine_start="random")
    assert TrainConfig("decoder", "s", "o", ticks=1, stages=("3:3", "3:2")).refine_start == "cascade"  # the default


def test_stage_budget_hands_what_an_early_stage_left_to_the_later_ones():
    import numpy as np
    shares = np.array([0.4, 0.3, 0.3])
    assert staged_mod.stage_budget(600.0, shares, 0, []) == 240.0
    assert staged_mod.stage_budget(600.0, shares, 1, [240.0]) == 180.0  # spent its share: as before
    assert staged_mod.stage_budget(600.0, shares, 1, [100.0]) == 250.0  # 140 s left over, shared 0.3 : 0.3
    assert staged_mod.stage_budget(600.0, shares, 2, [100.0, 250.0]) == 250.0
    assert staged_mod.stage_budget(600.0, shares, 1, [300.0]) == 180.0  # an overrun takes nothing from it
    assert staged_mod.stage_budget(600.0, shares, 2, [0.0, 0.0]) == 600.0  # --init-frozen 2: all to stage 3


def test_a_stage_that_stops_gaining_ends_and_the_next_gets_its_minutes(store, tmp_path, monkeypatch):
    from organic_sd import runs
    budgets = []
    real_ticks = staged_mod.run_ticks
    monkeypatch.setattr(staged_mod, "run_ticks",
                        lambda loop, *a, **kw: budgets.append(loop.max_minutes) or real_ticks(loop, *a, **kw))
    # every tick after a stage's first scores worse: with patience 1 each stage ends at its second tick
    monkeypatch.setattr(runs, "keeps", lambda new, kept, mse, best: best is None)
    run = tmp_path / "dec"
    res = train(quick("decoder", store, run, stages=("3:4", "3:3"), ticks=None, max_minutes=2.0,
                      stage_shares=(0.5, 0.5), stage_patience=1))
    assert res["status"] == "done"
    assert [len(_log(run / f"stage{i}")) for i in (1, 2)] == [2, 2]  # not a minute of ticks each
    assert budgets[0] == 1.0 and budgets[1] > 1.5  # stage 2 got what stage 1 left of its minute
    with pytest.raises(ValueError, match="--stage-patience"):
        TrainConfig("decoder", "s", "o", ticks=1, stage_patience=2)


def test_a_global_shift_is_fitted_after_the_stages_once_and_kept_only_if_better(store, tmp_path, capsys):
    train(quick("encoder", store, tmp_path / "enc", ticks=1))
    run = tmp_path / "dec"
    kw = {"stages": STAGES, "ticks": 1, "latents": f"mix:{tmp_path / 'enc'}", "shift_seconds": 2}
    res = train(quick("decoder", store, run, **kw))
    out = capsys.readouterr().out
    state = json.loads((run / "shift" / "state.json").read_text())
    assert res["status"] == "done" and res["shift"]["kept"] == state["kept"] and "global shift: held-out" in out
    assert state["sources"] == 2 and len(state["probe_heldout_accuracy"]) == 2
    d = OVAE.load(run).decoder
    if state["kept"]:  # the file holds the shift; it lowered the held-out error it was judged by
        assert d.module.shift is not None and d.module.shift.config.maps == 2
        assert state["after"]["heldout_mse"] < state["before"]["heldout_mse"]
        z = torch.randn(2, 4, 4, 4)
        assert torch.allclose(d(z), d.module.outputs(z, fast=False)[-1], atol=1e-5)
    else:
        assert d.module.shift is None and state["after"]["heldout_mse"] >= state["before"]["heldout_mse"]
    again = train(quick("decoder", store, run, **kw))  # resumed: nothing is fitted twice
    assert "global shift: done earlier" in capsys.readouterr().out and again["shift"]["kept"] == state["kept"]
    # a finished run's stages all frozen: only a shift is trained (one map: teacher latents only)
    res = train(quick("decoder", store, tmp_path / "only", stages=STAGES, ticks=1, init=str(run), init_frozen=3,
                      shift_seconds=2))
    assert [s["status"] for s in res["stages"]] == ["frozen"] * 3 and res["shift"]["sources"] == 1
    frozen_file = OVAE.load(tmp_path / "only").decoder.module.training_summary["run"]
    assert frozen_file["psnr"] == res["stages"][-1]["psnr"] and frozen_file["init"] == str(run)
    assert OVAE.load(tmp_path / "only").decode(torch.zeros(1, 4, 4, 4)).shape == (1, 3, 32, 32)


def test_the_shift_learns_a_cast_the_stages_leave(tmp_path):
    """Stages that write zeros: the error is each image itself, whose mean colour its latent's means tell (the fake
    teacher's latent is the image pooled), so the evolved shift must take most of what one colour per image can."""
    import numpy as np
    from conftest import make_store

    from organic_sd.data.store import Store
    from organic_sd.ovae import rows as rows_mod
    from organic_sd.ovae.train_shift import fit_shift

    store = make_store(tmp_path, n=96)
    v = _random_staged_ovae()
    for s in v.decoder.module.stages:
        for p in s.module.parameters():
            p.data.zero_()
    st = Store.open(store)
    part_rows = rows_mod.PartRows(st, rows_mod.part_config(quick("decoder", store, tmp_path / "t"), st),
                                  torch.device("cpu"), None)
    val = st.indices("val")
    shift, summary = fit_shift(v.decoder.module, part_rows, st.indices("train"), val, 4.0, 0,
                               torch.device("cpu"), open(os.devnull, "w"), progress=True)  # the bars' path too
    assert shift is not None and summary["kept"] and summary["sources"] == 1
    decodes = torch.from_numpy(np.asarray(st.decodes[val], np.float32))
    oracle = float((decodes - decodes.mean((2, 3), keepdim=True)).square().mean())  # each image's own mean taken away
    before, after = summary["before"]["heldout_mse"], summary["after"]["heldout_mse"]
    assert after < before - 0.6 * (before - oracle), (before, after, oracle)


def test_ctrl_c_in_the_shift_step_keeps_the_stages_and_the_same_command_fits_it(store, tmp_path, monkeypatch, capsys):
    from organic_sd.ovae import train_shift

    run, kw = tmp_path / "dec", {"stages": STAGES, "ticks": 1, "shift_seconds": 1}
    real_fit = train_shift.fit_shift

    def stopped(*a, **k):  # Ctrl-C while the shift's maps evolve
        raise KeyboardInterrupt

    monkeypatch.setattr(train_shift, "fit_shift", stopped)
    res = train(quick("decoder", store, run, **kw))
    assert res["status"] == "interrupted" and "global shift: interrupted" in capsys.readouterr().out
    assert not (run / "shift" / "state.json").exists() and OVAE.load(run).decoder.module.shift is None
    monkeypatch.setattr(train_shift, "fit_shift", real_fit)
    again = train(quick("decoder", store, run, **kw))
    out = capsys.readouterr().out
    assert again["status"] == "done" and out.count("done earlier") == 3 and "global shift: held-out" in out
    assert (run / "shift" / "state.json").is_file()
