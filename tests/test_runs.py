import io
import json
import time
from types import SimpleNamespace

import pytest
import torch

from organic_sd import ola, runs
from organic_sd.runs import check_resume, resume_state, run_ticks


def test_check_resume_gives_runs_older_than_a_field_the_value_they_used(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"kind": "decoder", "window": 3}))  # saved before "mix" existed
    rec = {"kind": "decoder", "window": 3, "mix": 0.5}
    assert check_resume(run, rec, ("kind", "window", "mix"), added={"mix": 0.5})["window"] == 3
    with pytest.raises(ValueError, match="mix: run has 0.5, asked 0.7"):
        check_resume(run, {**rec, "mix": 0.7}, ("kind", "window", "mix"), added={"mix": 0.5})


def test_check_resume_new_same_other_and_foreign_folders(tmp_path):
    rec = {"kind": "decoder", "window": 3, "seed": 0}
    assert check_resume(tmp_path / "new", rec, ("kind", "window", "seed")) is None
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(rec))
    assert check_resume(run, dict(rec), ("kind", "window", "seed")) == rec
    with pytest.raises(ValueError, match=r"window: run has 3, asked 5; seed: run has 0, asked 1"):
        check_resume(run, {**rec, "window": 5, "seed": 1}, ("kind", "window", "seed"))
    with pytest.raises(ValueError, match="holds a run of kind 'decoder'"):
        check_resume(run, {**rec, "kind": "encoder"}, ("kind", "window"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a training run"):
        check_resume(tmp_path / "other", rec, ())


def test_resume_state_prefers_the_newer_of_state_json_and_the_checkpoint(tmp_path):
    summary = {"run": {}, "tick": 4, "minutes": 1.5, "heldout_mse": 0.1, "training_run": "x"}
    assert resume_state(tmp_path, summary) == {"tick": 4, "time": 90.0, "status": "running",
                                               "best": {"heldout_mse": 0.1}}  # no state.json
    (tmp_path / "state.json").write_text(json.dumps({"tick": 3, "time": 80.0, "best": {"heldout_mse": 0.2}}))
    assert resume_state(tmp_path, summary)["tick"] == 4  # the checkpoint was written after state.json
    (tmp_path / "state.json").write_text(json.dumps({"tick": 4, "time": 90.5, "best": {"heldout_mse": 0.1}}))
    assert resume_state(tmp_path, summary)["time"] == 90.5  # equal ticks: state.json's exact numbers


class _Kept:
    def __init__(self, module):
        self.module = module

    def num_parameters(self):
        return self.module.num_parameters()


class FakeJob:
    """A linear target for runs.run_ticks: what a trainer supplies, at its smallest."""

    noun = "module"
    device = torch.device("cpu")
    fit_kwargs = {}
    plot = [("heldout_mse", "MSE", True)]

    def __init__(self, run, rows: int = 400):
        self.run, self.saved, self.rows = run, [], rows
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3, 2, generator=g)
        self.x_val = torch.randn(200, 3, generator=g)

    def draw(self, rng):
        x = torch.from_numpy(rng.standard_normal((self.rows, 3)).astype("float32"))
        return x, 0.3 * torch.tanh(x @ self.w)

    def fit_share(self, tick):
        return 1

    def candidate(self, module, tick, interrupted, rng, tick_seconds):
        return _Kept(module), {"extra": tick}

    def module_of(self, kept):
        return None if kept is None else kept.module

    def score(self, cand):
        mse = float((cand.module(self.x_val) - 0.3 * torch.tanh(self.x_val @ self.w)).square().mean())
        return {"heldout_mse": mse}

    def keep(self, cand):
        pass

    def describe(self, scores):
        return f"held-out MSE {scores['heldout_mse']:.5g}"

    def save(self, kept, summary):
        self.saved.append(summary["tick"])
        return self.run / "model.safetensors"


def _loop_cfg(**kw):
    base = dict(hidden=(), strategy="auto", population=8, max_minutes=None, ticks=None, tick_seconds=60.0,
                first_tick_seconds=None, generations=5, save_minutes=0.0, freeze_loss=None, batch_size=None, seed=0,
                progress=False)
    return SimpleNamespace(**{**base, **kw})


def test_run_ticks_logs_saves_and_stops_after_its_ticks(tmp_path):
    job, state = FakeJob(tmp_path), {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    res = run_ticks(_loop_cfg(ticks=2), job, tmp_path, {"out_scale": 1.0}, state, None, [], time.perf_counter(),
                    log_to=io.StringIO())
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert res["status"] == "done" and res["tick"] == 2 and [r["tick"] for r in lines] == [1, 2]
    assert [r["extra"] for r in lines] == [0, 1] and job.saved == [1, 2, 2]  # every tick, then at the stop
    assert json.loads((tmp_path / "state.json").read_text())["status"] == "done"


def test_a_run_from_init_keeps_the_init_until_a_tick_beats_it(tmp_path):
    class InitIsBest(FakeJob):  # the module the run starts from scores better than anything a tick finds
        def score(self, cand):
            return {"heldout_mse": 0.0} if cand is self.init else super().score(cand)

    first = FakeJob(tmp_path)
    first.keep = lambda cand: setattr(first, "kept", cand)
    run_ticks(_loop_cfg(ticks=1), first, tmp_path, {"out_scale": 1.0}, {"tick": 0, "time": 0.0, "best": None,
              "status": "running"}, None, [], time.perf_counter(), log_to=io.StringIO())
    run = tmp_path / "from_init"
    run.mkdir()
    job, out = InitIsBest(run), io.StringIO()
    job.init = first.kept
    res = run_ticks(_loop_cfg(ticks=2), job, run, {"out_scale": 1.0}, {"tick": 0, "time": 0.0, "best": None,
                    "status": "running"}, job.init, [], time.perf_counter(), log_to=out)
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["kept"] for r in lines] == [False, False] and res["heldout_mse"] == 0.0
    assert "tick    0 | as --init starts it: held-out MSE 0" in out.getvalue()


def test_run_ticks_logs_the_rows_per_generation_each_fit_used(tmp_path):
    state = {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    for batch, want in ((64, 64), (None, 1024)):  # None: the engine's default on the CPU
        run = tmp_path / str(batch)
        run.mkdir()
        run_ticks(_loop_cfg(ticks=1, batch_size=batch), FakeJob(run, rows=2000), run, {"out_scale": 1.0}, dict(state),
                  None, [], time.perf_counter(), log_to=io.StringIO())
        line = json.loads((run / "log.jsonl").read_text())
        assert line["rows"] == 2000 and line["batch_size"] == want


def test_run_ticks_freezes_and_saves_by_the_minute(tmp_path):
    job, state = FakeJob(tmp_path), {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    out = io.StringIO()
    res = run_ticks(_loop_cfg(ticks=3, freeze_loss=10.0, save_minutes=60.0), job, tmp_path, {"out_scale": 1.0},
                    state, None, [], time.perf_counter(), log_to=out)
    assert res["status"] == "frozen" and res["tick"] == 1 and "frozen" in out.getvalue()
    assert job.saved == [1]  # --save-minutes 60: only the final save


def _new_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # as train() leaves it before the first tick
    return run


def test_a_budget_that_cannot_fit_the_first_tick_is_refused_and_leaves_no_run(tmp_path):
    run = _new_run(tmp_path)
    job, state = FakeJob(run), {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    setup_done = time.perf_counter() - 50.0  # setup took 50 s of a 60 s budget; the first tick asks for 30
    with pytest.raises(ValueError, match=r"--max-minutes 1 is too short .* 50 s of setup .* 10 s of the 30 s .* --max-minutes 1.4 or more"):
        run_ticks(_loop_cfg(max_minutes=1.0, tick_seconds=30.0, generations=None), job, run, {"out_scale": 1.0},
                  state, None, [], setup_done, log_to=io.StringIO())
    assert not run.exists() and job.saved == []


def test_a_stage_too_short_for_its_first_tick_says_what_to_give_the_whole_run(tmp_path):
    # R14: a staged encoder's stage 2 got 2 of --max-minutes 8 and was told "Give --max-minutes 3.6", which the run
    # already had; the stage needs its share of the run's minutes to grow
    run = _new_run(tmp_path)
    job, state = FakeJob(run), {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    cfg = _loop_cfg(max_minutes=1.0, tick_seconds=30.0, generations=None, stage_number=2, stage_share=0.25,
                    run_minutes=4.0)
    with pytest.raises(ValueError, match=r"stage 2's share of --max-minutes 4 \(1.0 min left to it\) is too short .* "
                                         r"50 s of setup .* --max-minutes 5.4 or more, or this stage a larger "
                                         r"--stage-shares"):
        run_ticks(cfg, job, run, {"out_scale": 1.0}, state, None, [], time.perf_counter() - 50.0,
                  log_to=io.StringIO())


def test_a_tick_with_no_generation_is_never_a_result(tmp_path, monkeypatch):
    real = ola.fit
    # every tick's search gets no time at all, as when setup eats a CPU run's budget
    monkeypatch.setattr(runs.ola, "fit", lambda *a, **kw: real(*a, **{**kw, "max_seconds": 1e-9}))
    run = _new_run(tmp_path)
    job, state, out = FakeJob(run), {"tick": 0, "time": 0.0, "best": None, "status": "running"}, io.StringIO()
    with pytest.warns(ola.NoProgressWarning):
        res = run_ticks(_loop_cfg(max_minutes=0.03, tick_seconds=2.0, generations=None), job, run, {"out_scale": 1.0},
                        state, None, [], time.perf_counter(), log_to=out)
    assert res["status"] == "no-result" and res["tick"] == 0 and "heldout_mse" not in res  # before: "done", MSE 0.0x
    assert "ran 0 generations; not scored" in out.getvalue() and "too short to learn anything" in out.getvalue()
    assert "done" not in out.getvalue() and job.saved == [] and not run.exists()


def test_whole_ticks_that_never_search_stop_the_run_with_what_to_change(tmp_path, monkeypatch):
    real = ola.fit
    # every tick gets the time it asks for and spends it on setup, as 600,000 rows on one CPU thread did;
    # before, `--ticks 1` then looped forever: a tick without search never counted
    monkeypatch.setattr(runs.ola, "fit", lambda *a, **kw: real(*a, **{**kw, "max_seconds": 1e-9}))
    run = _new_run(tmp_path)
    job, state, out = FakeJob(run), {"tick": 0, "time": 0.0, "best": None, "status": "running"}, io.StringIO()
    said = r"3 ticks in a row kept nothing: .*--tick-seconds.* more, or fewer --max-rows"
    with pytest.warns(ola.NoProgressWarning), pytest.raises(ValueError, match=said):
        run_ticks(_loop_cfg(ticks=1, tick_seconds=2.0, generations=None), job, run, {"out_scale": 1.0}, state, None,
                  [], time.perf_counter(), log_to=out)
    assert out.getvalue().count("ran 0 generations") == runs.STARVED_TICKS and not run.exists()


def test_a_tick_whose_search_never_beat_zero_is_not_kept_and_the_run_goes_on(tmp_path, monkeypatch):
    real, calls = ola.fit, []

    def first_learns_nothing(*a, **kw):
        m = real(*a, **kw)
        calls.append(1)
        if len(calls) == 1:  # as a CPU coarse stage's first 30-s tick on one thread did
            raise ola.FitDidNotLearn("the fit learned nothing: ...", m)
        return m

    monkeypatch.setattr(runs.ola, "fit", first_learns_nothing)
    run = _new_run(tmp_path)
    job, state, out = FakeJob(run), {"tick": 0, "time": 0.0, "best": None, "status": "running"}, io.StringIO()
    res = run_ticks(_loop_cfg(ticks=2), job, run, {"out_scale": 1.0}, state, None, [], time.perf_counter(), log_to=out)
    assert "ran 5 generations that never beat predicting zero; not scored" in out.getvalue()
    assert res["status"] == "done" and res["tick"] == 2 and len(calls) == 3  # before: the run ended at the first tick
    # every tick like that: the run stops with what to change instead of trying forever
    def always_learns_nothing(*a, **kw):
        raise ola.FitDidNotLearn("the fit learned nothing: ...", real(*a, **kw))

    monkeypatch.setattr(runs.ola, "fit", always_learns_nothing)
    (tmp_path / "b").mkdir()
    run2 = _new_run(tmp_path / "b")
    with pytest.raises(ValueError, match="3 ticks in a row kept nothing"):
        run_ticks(_loop_cfg(ticks=1, tick_seconds=2.0), FakeJob(run2), run2, {"out_scale": 1.0},
                  {"tick": 0, "time": 0.0, "best": None, "status": "running"}, None, [], time.perf_counter(),
                  log_to=io.StringIO())


def test_a_run_folder_being_trained_is_refused_to_a_second_trainer(tmp_path):
    from organic_sd.runs import LOCK_NAME, run_lock

    run = _new_run(tmp_path)
    job, state = FakeJob(run), {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    with run_lock(run):  # another trainer holds the folder (a second open file, as another process has)
        with pytest.raises(ValueError, match="being trained by another process"):
            run_ticks(_loop_cfg(ticks=1), job, run, {"out_scale": 1.0}, dict(state), None, [], time.perf_counter(),
                      log_to=io.StringIO())
    assert job.saved == [] and (run / "config.json").is_file()  # the holder's run untouched
    res = run_ticks(_loop_cfg(ticks=1), job, run, {"out_scale": 1.0}, dict(state), None, [], time.perf_counter(),
                    log_to=io.StringIO())
    assert res["status"] == "done" and job.saved  # released: the same folder trains
    bare = tmp_path / "bare"
    with run_lock(bare):
        pass
    # a folder left holding only its lock file is a new run, not "not empty" clutter
    assert (bare / LOCK_NAME).exists() and check_resume(bare, {"kind": "k"}, ()) is None


def test_a_tick_whose_draw_is_slow_still_searches_half_its_time():
    # R10b on one CPU thread: the teacher's pass drew rows for 108 s of a 30-s tick and the search got 0.5 s
    assert runs.search_seconds(30.0, 108.0, None) == 30.0 * runs.MIN_SEARCH_SHARE
    assert runs.search_seconds(30.0, 4.0, None) == 26.0  # a quick draw comes out of the tick, as before
    assert runs.search_seconds(30.0, 108.0, 118.0) == 10.0  # never past --max-minutes
    assert runs.search_seconds(30.0, 108.0, 100.0) == 0.5


def test_the_loop_gives_a_slow_draw_s_tick_its_search(tmp_path, monkeypatch):
    real, asked = ola.fit, []
    monkeypatch.setattr(runs.ola, "fit", lambda *a, **kw: asked.append(kw["max_seconds"]) or real(*a, **kw))

    class SlowDraw(FakeJob):
        def draw(self, rng):
            time.sleep(1.5)
            return super().draw(rng)

    job, state = SlowDraw(tmp_path), {"tick": 0, "time": 0.0, "best": None, "status": "running"}
    run_ticks(_loop_cfg(ticks=1, tick_seconds=2.0), job, tmp_path, {"out_scale": 1.0}, state, None, [],
              time.perf_counter(), log_to=io.StringIO())
    assert asked and asked[0] >= 2.0 * runs.MIN_SEARCH_SHARE  # before: 2.0 - 1.5 = 0.5 s
