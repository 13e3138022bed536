import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from organic_sd import cli
from organic_sd.data import Store
from organic_sd.metrics.pixels import psnr_of_mse
from organic_sd.ovae import OVAE
from organic_sd.ola import cascade
from organic_sd.ovae import rows as rows_mod
from organic_sd.ovae.config import TrainConfig
from organic_sd.ovae import train as train_mod
from organic_sd.ovae.train import train
from conftest import STORE_SIZE as SIZE, quick

def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_decoder_train_and_resume(store, tmp_path, capsys):
    run = tmp_path / "dec"
    res = train(quick("decoder", store, run))
    assert res["status"] == "done" and res["tick"] == 2
    for name in ("config.json", "model.safetensors", "state.json", "log.jsonl", "plot.png"):
        assert (run / name).is_file(), name
    first = _log(run)
    assert [r["tick"] for r in first] == [1, 2] and all("psnr" in r and "heldout_mse" in r for r in first)
    v = OVAE.load(run)
    assert v.encoder is None and v.decoder.config.teacher == "fake-avgpool8-c4"
    assert v.decode(torch.zeros(1, 4, 3, 5)).shape == (1, 3, 24, 40)  # any latent size
    best = json.loads((run / "state.json").read_text())["best"]["heldout_mse"]

    res = train(quick("decoder", store, run, ticks=1))  # resume: same run, one more tick
    assert res["tick"] == 3 and "resuming" in capsys.readouterr().out
    log = _log(run)
    assert log[:2] == first and log[2]["tick"] == 3
    assert log[2]["best_heldout_mse"] <= best  # the kept module never gets worse on held-out data
    (run / "state.json").unlink()  # as if a crash hit between writing the checkpoint and state.json
    res = train(quick("decoder", store, run, ticks=1))
    assert res["tick"] == 4 and _log(run)[3]["best_heldout_mse"] <= log[2]["best_heldout_mse"]


def test_resume_refuses_other_settings(store, tmp_path):
    run = tmp_path / "dec"
    train(quick("decoder", store, run, ticks=1))
    with pytest.raises(ValueError, match="window: run has 3, asked 5"):
        train(quick("decoder", store, run, window=5))
    with pytest.raises(ValueError, match="seed: run has 0, asked 7"):  # other held-out images would judge the ticks
        train(quick("decoder", store, run, seed=7))
    with pytest.raises(ValueError, match="holds a run of kind 'decoder'"):
        train(quick("encoder", store, run))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a training run"):
        train(quick("decoder", store, tmp_path / "other"))


def test_ctrl_c_saves_a_loadable_checkpoint(store, tmp_path, monkeypatch):
    real, calls = train_mod.ola.fit, []

    def fit_then_interrupt(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the second tick's search
        return real(*a, **kw)

    monkeypatch.setattr(train_mod.ola, "fit", fit_then_interrupt)
    run = tmp_path / "dec"
    res = train(quick("decoder", store, run, ticks=5))
    assert res["status"] == "interrupted" and res["tick"] == 1
    assert json.loads((run / "state.json").read_text())["status"] == "interrupted"
    assert OVAE.load(run).decoder is not None
    # Ctrl-C before any module exists: nothing to save, no crash, and no folder left that looks like a run
    calls.clear(), calls.append(1)
    res = train(quick("decoder", store, tmp_path / "dec2"))
    assert res["status"] == "interrupted" and res["parameters"] is None
    assert not (tmp_path / "dec2").exists()


def test_ctrl_c_before_the_first_round_of_units_ends_resumes_with_the_same_command(store, tmp_path, monkeypatch):
    real = cascade._evolve_units

    def stop_at_once(*a, **kw):
        raise KeyboardInterrupt  # Ctrl-C in the first tick, before one unit is grown

    monkeypatch.setattr(cascade, "_evolve_units", stop_at_once)
    run = tmp_path / "dec"
    cfg = quick("decoder", store, run, hidden=(4,), ticks=1, refine=0.0)  # the cascade's rounds (not random units)
    assert train(cfg)["status"] == "interrupted"
    assert OVAE.load(run).decoder.module.config.hidden == ()  # the linear readout, saved
    monkeypatch.setattr(cascade, "_evolve_units", real)
    res = train(cfg)  # the same command: before the fix, "init has hidden=() but hidden=(4,) was asked for"
    assert res["status"] == "done" and OVAE.load(run).decoder.module.config.hidden == (4,)


def test_ctrl_c_while_units_grow_keeps_them_and_the_resumed_run_grows_the_rest(store, tmp_path, monkeypatch):
    real, calls = cascade._evolve_units, []

    def stop_in_second_round(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C in the first tick, while the second round of units grows
        return real(*a, **kw)

    monkeypatch.setattr(cascade, "_evolve_units", stop_in_second_round)
    run = tmp_path / "dec"
    cfg = quick("decoder", store, run, hidden=(10,), ticks=2, refine=0.0)  # the cascade: rounds of 8 and 2
    res = train(cfg)
    assert res["status"] == "interrupted" and res["tick"] == 1
    assert OVAE.load(run).decoder.module.config.hidden == (8,)  # the first round, saved and loadable
    first = OVAE.load(run).decoder.module.hidden[0].weight.clone()
    monkeypatch.setattr(cascade, "_evolve_units", real)
    score = rows_mod.HeldOut.score

    def grown_scores_worse(self, part):  # held-out data that happens to favour the partial module
        s = score(self, part)
        return {**s, "heldout_mse": 10 * s["heldout_mse"]} if part.module.config.hidden == (10,) else s

    monkeypatch.setattr(rows_mod.HeldOut, "score", grown_scores_worse)
    res = train(cfg)
    assert res["status"] == "done" and res["tick"] == 3  # two more ticks: the first grows the last 2 units
    grown = OVAE.load(run).decoder.module
    assert grown.config.hidden == (10,) and torch.equal(grown.hidden[0].weight[:8], first)


def test_encoder_then_decoder_on_its_latents(store, tmp_path):
    res = train(quick("encoder", store, tmp_path / "enc", hidden=(2,), ticks=1))
    assert res["status"] == "done" and "cosine" in res
    cfg = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert cfg["out_scale"] >= 1.2 * float(np.abs(Store.open(store).latents[:]).max())
    res = train(quick("decoder", store, tmp_path / "dec", latents=f"oenc:{tmp_path / 'enc'}", ticks=1))
    v = OVAE.load(tmp_path / "dec")
    assert v.decoder.config.latents.startswith("oenc:") and v.decoder.config.target == "image"
    with pytest.raises(ValueError, match="holds no encoder"):
        train(quick("decoder", store, tmp_path / "dec2", latents=f"oenc:{tmp_path / 'dec'}"))
    with pytest.raises(ValueError, match="only applies to the decoder"):
        quick("encoder", store, tmp_path / "x", latents="oenc:y")


def test_mixed_decoder_sees_teacher_and_encoder_latents_toward_the_teacher_decode(store, tmp_path):
    train(quick("encoder", store, tmp_path / "enc", ticks=1))
    cfg = quick("decoder", store, tmp_path / "dec", latents=f"mix:{tmp_path / 'enc'}", ticks=1)
    assert cfg.target == "decode"
    s = Store.open(store)
    idx = s.indices("train")[:3]
    teacher_rows = rows_mod.PartRows(s, rows_mod.part_config(quick("decoder", store, tmp_path / "t"), s), torch.device("cpu"), None)
    enc = rows_mod.source_encoder(cfg.latents, s, torch.device("cpu"))
    mixed = rows_mod.PartRows(s, rows_mod.part_config(cfg, s), torch.device("cpu"), enc)
    (xt, yt), (xm, ym) = teacher_rows.pairs(idx), mixed.pairs(idx)
    n = xt.shape[0]
    assert xm.shape[0] == 2 * n and torch.equal(xm[:n], xt)  # the teacher's rows, then the O-Encoder's
    assert torch.equal(ym[:n], yt) and torch.equal(ym[n:], yt)  # both toward the teacher's decode
    assert not torch.allclose(xm[n:], xt)
    x, _ = mixed.draw(s.indices("train"), 10**6, np.random.default_rng(0))
    assert x.shape[0] == 2 * len(s.indices("train")) * (SIZE // 8) ** 2  # every image, twice
    res = train(cfg)
    assert res["status"] == "done"
    assert OVAE.load(tmp_path / "dec").decoder.config.latents.startswith("mix:")


@pytest.mark.parametrize("w", [0.75, 0.25])
def test_mix_teacher_sets_the_share_of_teacher_rows(store, tmp_path, w):
    train(quick("encoder", store, tmp_path / "enc", ticks=1))
    cfg = quick("decoder", store, tmp_path / "dec", latents=f"mix:{tmp_path / 'enc'}", ticks=1, mix_teacher=w)
    s = Store.open(store)
    pool = s.indices("train")
    enc = rows_mod.source_encoder(cfg.latents, s, torch.device("cpu"))
    mixed = rows_mod.PartRows(s, rows_mod.part_config(cfg, s), torch.device("cpu"), enc, cfg.mix_teacher)
    xt, xo = mixed.pairs(pool)[0].chunk(2)  # every teacher row, then every O-Encoder row
    x, y = mixed.draw(pool, 10**6, np.random.default_rng(0))  # room for every row: only the balance thins
    in_teacher = (x[:, None, :] == xt[None]).all(-1).any(1)  # (N,) rows that are teacher rows
    in_oenc = (x[:, None, :] == xo[None]).all(-1).any(1)
    assert bool((in_teacher ^ in_oenc).all())
    assert in_teacher.float().mean().item() == pytest.approx(w, abs=0.01)
    assert int(in_teacher.sum() if w > 0.5 else in_oenc.sum()) == xt.shape[0]  # the larger set is kept whole
    assert train(cfg)["status"] == "done"
    assert json.loads((tmp_path / "dec" / "config.json").read_text())["mix_teacher"] == w
    with pytest.raises(ValueError, match="cannot resume"):
        train(replace(cfg, mix_teacher=0.5))  # another balance is another experiment


def test_mix_teacher_is_checked(store, tmp_path):
    with pytest.raises(ValueError, match="only applies to --latents mix"):
        quick("decoder", store, tmp_path / "d", mix_teacher=0.7)
    for w in (0.0, 1.0):
        with pytest.raises(ValueError, match="between 0 and 1"):
            quick("decoder", store, tmp_path / "d", latents="mix:x", mix_teacher=w)


def test_drawing_rows_from_an_empty_split_is_a_clear_error(store, tmp_path):
    s = Store.open(store)
    rows = rows_mod.PartRows(s, rows_mod.part_config(quick("decoder", store, tmp_path / "d"), s), torch.device("cpu"), None)
    with pytest.raises(ValueError, match="no samples in this split"):
        rows.draw(np.array([], dtype=np.int64), 100, np.random.default_rng(0))


def test_global_mode(store, tmp_path):
    train(quick("encoder", store, tmp_path / "genc", mode="global", retina_dim=16, grid=1, ticks=1))
    train(quick("decoder", store, tmp_path / "gdec", mode="global", grid=1, global_size=8, ticks=1))
    e, d = OVAE.load(tmp_path / "genc"), OVAE.load(tmp_path / "gdec")
    x = torch.zeros(2, 3, SIZE, SIZE)
    z = e.encode(x)
    assert z.shape == (2, 4, 1, 1) and d.decode(z).shape == (2, 3, SIZE, SIZE)


def test_freeze_loss_stops(store, tmp_path, capsys):
    res = train(quick("decoder", store, tmp_path / "dec", ticks=5, freeze_loss=10.0))
    assert res["status"] == "frozen" and res["tick"] == 1 and "frozen" in capsys.readouterr().out


def test_cli_train(store, tmp_path):
    rc = cli.main(["train", "decoder", "--store", str(store), "--out", str(tmp_path / "d"), "--ticks", "1",
                   "--generations", "3", "--max-rows", "1000", "--eval-images", "2", "--window", "1"])
    assert rc == 0 and OVAE.load(tmp_path / "d").decoder.config.window == 1
    rc = cli.main(["train", "decoder", "--store", str(store), "--out", str(tmp_path / "d"), "--ticks", "1",
                   "--window", "3"])
    assert rc == 2  # a clear error, not a traceback


def test_train_hessian_gives_each_unit_its_own_search_directions(store, tmp_path):
    run = tmp_path / "dec"
    assert cli.main(["train", "decoder", "--store", str(store), "--out", str(run), "--hidden", "3", "--hessian", "2",
                     "--ticks", "1", "--generations", "30", "--eval-images", "4", "--max-rows", "2000"]) == 0
    v = OVAE.load(run)
    assert v.decoder.module.config.hidden == (3,)
    assert v.decoder.module.training_summary["subspace"]["hessian"] == 2
    with pytest.raises(ValueError, match="--hessian"):
        quick("decoder", store, tmp_path / "bad", hessian=-1)


@pytest.mark.parametrize("part, flag, want", [("decoder", [], True), ("decoder", ["--no-deflate"], False),
                                              ("encoder", [], False), ("encoder", ["--deflate"], True)])
def test_train_deflates_decoder_units_by_default_and_as_told(store, tmp_path, part, flag, want):
    run = tmp_path / part
    assert cli.main(["train", part, "--store", str(store), "--out", str(run), "--hidden", "3", *flag,
                     "--ticks", "1", "--generations", "30", "--eval-images", "4", "--max-rows", "2000"]) == 0
    assert getattr(OVAE.load(run), part).module.training_summary["subspace"]["deflate"] is want
    assert json.loads((run / "config.json").read_text())["deflate"] is want


@pytest.mark.parametrize("part, flag, want", [("encoder", [], 16), ("decoder", [], cascade.UNITS_PER_ROUND),
                                              ("encoder", ["--units-per-round", "2"], 2)])
def test_train_grows_units_in_rounds_of_the_given_size(store, tmp_path, part, flag, want):
    run = tmp_path / part
    assert cli.main(["train", part, "--store", str(store), "--out", str(run), "--hidden", "4", *flag,
                     "--ticks", "1", "--generations", "30", "--eval-images", "4", "--max-rows", "2000"]) == 0
    assert getattr(OVAE.load(run), part).module.training_summary["units_per_round"] == want
    assert json.loads((run / "config.json").read_text())["units_per_round"] == want
    with pytest.raises(ValueError, match="--units-per-round"):
        quick("encoder", store, tmp_path / "bad", units_per_round=0)


def test_init_keeps_the_units_and_refits_the_readout_on_this_runs_rows(store, tmp_path, capsys):
    train(quick("encoder", store, tmp_path / "enc", ticks=1))
    train(quick("decoder", store, tmp_path / "units", hidden=(4,), ticks=1))  # units grown on teacher latents
    grown = OVAE.load(tmp_path / "units").decoder.module
    run = tmp_path / "dec"
    cfg = quick("decoder", store, run, hidden=(4,), ticks=1, init=str(tmp_path / "units"),
                latents=f"mix:{tmp_path / 'enc'}", mix_teacher=0.25)
    train(cfg)
    assert "starting from --init" in capsys.readouterr().out
    new = OVAE.load(run).decoder.module
    assert torch.equal(new.hidden[0].weight, grown.hidden[0].weight)  # the units are kept as they were
    assert torch.equal(new.hidden[0].bias, grown.hidden[0].bias)
    assert not torch.equal(new.readout.weight, grown.readout.weight)  # the readout is searched on the mixed rows
    assert json.loads((run / "config.json").read_text())["init"] == str(tmp_path / "units")
    assert OVAE.load(run).decoder.config.latents.startswith("mix:")

    train(replace(cfg, init=str(tmp_path / "nothing-here")))  # a resume goes on from its own checkpoint
    assert "not used" in capsys.readouterr().out and _log(run)[-1]["tick"] == 2


def test_init_goes_on_growing_a_smaller_module(store, tmp_path):
    train(quick("decoder", store, tmp_path / "units", hidden=(2,), ticks=1))
    train(quick("decoder", store, tmp_path / "dec", hidden=(4,), ticks=1, units_per_round=2,
                init=str(tmp_path / "units")))
    w = OVAE.load(tmp_path / "dec").decoder.module.hidden[0].weight
    assert w.shape[0] == 4 and torch.equal(w[:2], OVAE.load(tmp_path / "units").decoder.module.hidden[0].weight)


def test_init_that_does_not_fit_the_run_is_a_clear_error(store, tmp_path):
    train(quick("decoder", store, tmp_path / "units", hidden=(4,), ticks=1))
    for kw, msg in [({"window": 5}, "window: it has 3, this run 5"), ({"hidden": (2,)}, "it may only grow"),
                    ({"hidden": ()}, "it may only grow")]:
        with pytest.raises(ValueError, match=msg):
            train(quick("decoder", store, tmp_path / "d", init=str(tmp_path / "units"), **kw))
        assert not (tmp_path / "d" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="holds no encoder"):
        train(quick("encoder", store, tmp_path / "e", init=str(tmp_path / "units")))
    assert cli.main(["train", "decoder", "--store", str(store), "--out", str(tmp_path / "c"), "--hidden", "4",
                     "--ticks", "1", "--generations", "2", "--max-rows", "500", "--eval-images", "2",
                     "--init", str(tmp_path / "units")]) == 0


def test_init_from_another_seed_needs_the_same_seed_only_in_global_mode(store, tmp_path):
    # a patch part's inputs do not depend on --seed; a global encoder's retina is drawn from it
    train(quick("decoder", store, tmp_path / "units", hidden=(2,), ticks=1, seed=1))
    train(quick("decoder", store, tmp_path / "dec", hidden=(2,), ticks=1, init=str(tmp_path / "units"), seed=0))
    assert OVAE.load(tmp_path / "dec").decoder.module.hidden[0].weight.shape[0] == 2
    g = {"mode": "global", "retina_dim": 16, "ticks": 1}
    train(quick("encoder", store, tmp_path / "genc", seed=1, **g))
    with pytest.raises(ValueError, match="retina_seed: it has 1, this run 0 [(]the retina is drawn from --seed"):
        train(quick("encoder", store, tmp_path / "g0", init=str(tmp_path / "genc"), seed=0, **g))
    assert not (tmp_path / "g0" / "model.safetensors").exists()
    train(quick("encoder", store, tmp_path / "g1", init=str(tmp_path / "genc"), seed=1, **g))


def test_mixed_decoder_is_scored_on_both_latents_weighted_as_its_rows(store, tmp_path, capsys):
    train(quick("encoder", store, tmp_path / "enc", ticks=1))
    run = tmp_path / "dec"
    cfg = quick("decoder", store, run, latents=f"mix:{tmp_path / 'enc'}", mix_teacher=0.75, ticks=1)
    train(cfg)
    assert "(O-Encoder's)" in capsys.readouterr().out
    s = Store.open(store)
    rows = rows_mod.PartRows(s, rows_mod.part_config(cfg, s), torch.device("cpu"),
                          rows_mod.source_encoder(cfg.latents, s, torch.device("cpu")), 0.75)
    held = rows_mod.HeldOut(s, rows_mod.part_config(cfg, s), rows, cfg.eval_images, cfg.seed)
    part = OVAE.load(run).decoder
    got = held.score(part)
    images = torch.from_numpy(s.images[held.idx])
    target = torch.from_numpy(s.decodes[held.idx]).float()
    mse_t = float((part(torch.from_numpy(s.latents[held.idx])).clamp(-1, 1) - target).double().square().mean())
    mse_o = float((part(rows.source(images)).clamp(-1, 1) - target).double().square().mean())
    assert got["heldout_mse"] == pytest.approx(0.75 * mse_t + 0.25 * mse_o, rel=1e-4)
    assert got["psnr"] == pytest.approx(psnr_of_mse(mse_t), abs=1e-3)
    assert got["psnr_oenc"] == pytest.approx(psnr_of_mse(mse_o), abs=1e-3)
    assert "psnr_oenc" in _log(run)[0]

    # a run saved before both were scored: its best is scored again on resume, so the ticks compare alike
    st = json.loads((run / "state.json").read_text())
    st["best"] = {"heldout_mse": 1e-9, "psnr": 90.0}
    (run / "state.json").write_text(json.dumps(st))
    train(replace(cfg, ticks=1))
    assert _log(run)[-1]["best_heldout_mse"] > 1e-9


def test_teacher_latent_decoder_score_is_unchanged(store, tmp_path):
    cfg = quick("decoder", store, tmp_path / "dec", ticks=1)
    res = train(cfg)
    assert "psnr_oenc" not in res
    assert res["psnr"] == pytest.approx(psnr_of_mse(res["heldout_mse"]))


def test_refine_moves_the_kept_units_of_later_ticks_and_is_checked(store, tmp_path):
    train(quick("decoder", store, tmp_path / "units", hidden=(4,), ticks=1))
    grown = OVAE.load(tmp_path / "units").decoder.module
    for share in (0.0, 0.5):  # a tick that continues a grown module: the readout alone, or the units together
        run = tmp_path / f"refine{share}"
        train(quick("decoder", store, run, hidden=(4,), ticks=1, generations=60, init=str(tmp_path / "units"),
                    refine=share))
        new = OVAE.load(run).decoder.module
        assert torch.equal(new.hidden[0].weight, grown.hidden[0].weight) is (share == 0.0)
        assert new.training_summary["refine"]["share"] == share
        assert json.loads((run / "config.json").read_text())["refine"] == share
    with pytest.raises(ValueError, match="--refine"):
        quick("decoder", store, tmp_path / "bad", refine=1.0)


def test_a_fresh_one_layer_decoder_starts_random_and_everything_else_keeps_the_cascade():
    def chosen(kind="decoder", **kw):
        c = TrainConfig(kind=kind, store="s", out="o", **kw)
        return c.refine_start, c.refine

    assert chosen(hidden=(8,)) == ("random", 0.9)  # the measured default (docs/BENCHMARKS.md)
    assert chosen(hidden=(8,), refine=0.5) == ("random", 0.5)
    assert chosen(hidden=(8,), refine=0.0) == ("cascade", 0.0)  # --refine 0: the cascade, as before
    assert chosen(hidden=(8,), refine_start="cascade") == ("cascade", 0.0)
    assert chosen(hidden=(8,), init="units") == ("cascade", 0.0)  # given units: their readout is re-fitted
    assert chosen("encoder", hidden=(8,)) == ("cascade", 0.0)  # random windows of pixels lose (measured)
    assert chosen(hidden=(8, 4)) == chosen(hidden=()) == ("cascade", 0.0)
    assert chosen(stages=("3:8", "3:4"), max_minutes=1.0) == ("cascade", 0.0)


def test_a_run_grown_by_the_cascade_is_not_resumed_under_the_random_default(store, tmp_path):
    run = tmp_path / "old"
    train(quick("decoder", store, run, hidden=(4,), ticks=1, refine=0.0))  # as every run before the default changed
    record = json.loads((run / "config.json").read_text())
    del record["refine_start"]  # runs from before the flag: the cascade
    (run / "config.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="refine_start: run has 'cascade', asked 'random'"):
        train(quick("decoder", store, run, hidden=(4,), ticks=1))
    assert train(quick("decoder", store, run, hidden=(4,), ticks=1, refine_start="cascade"))["tick"] == 2


def test_ctrl_c_while_random_units_refine_keeps_them_and_the_same_command_resumes(store, tmp_path, monkeypatch):
    from organic_sd.ola import refine as refine_mod

    real, calls = refine_mod.fit_readout, []

    def stop_in_second_round(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the first tick, in the second round of the default random start
        return real(*a, **kw)

    monkeypatch.setattr(refine_mod, "fit_readout", stop_in_second_round)
    run = tmp_path / "dec"
    cfg = quick("decoder", store, run, hidden=(4,), ticks=2, generations=60)
    assert (cfg.refine_start, cfg.refine) == ("random", 0.9)
    assert train(cfg)["status"] == "interrupted"
    kept = OVAE.load(run).decoder.module
    assert kept.config.hidden == (4,)  # every random unit is there from the start: all of them are kept
    monkeypatch.setattr(refine_mod, "fit_readout", real)
    res = train(cfg)
    assert res["status"] == "done" and res["tick"] > 1 and OVAE.load(run).decoder.module.config.hidden == (4,)


def test_refine_start_random_draws_the_units_instead_of_growing_them_and_is_checked(store, tmp_path):
    run = tmp_path / "random"
    assert cli.main(["train", "decoder", "--store", str(store), "--out", str(run), "--hidden", "4", "--refine", "0.9",
                     "--refine-start", "random", "--ticks", "2", "--generations", "60", "--eval-images", "4",
                     "--max-rows", "2000"]) == 0
    m = OVAE.load(run).decoder.module
    assert m.config.hidden == (4,) and m.training_summary["refine"] == {**m.training_summary["refine"],
                                                                      "share": 0.9, "start": "random"}
    assert json.loads((run / "config.json").read_text())["refine_start"] == "random"
    for kw in ({"refine": 0.0}, {"hidden": (4, 2)}, {"hidden": ()}):
        with pytest.raises(ValueError, match="--refine-start random"):
            quick("decoder", store, tmp_path / "bad", **{"hidden": (4,), "refine": 0.9, "refine_start": "random", **kw})
