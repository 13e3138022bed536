import json

import pytest

from organic_sd.runs import check_resume, resume_state


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
