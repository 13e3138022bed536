"""bench/ovae_speed.py: every round times each function once, in order, after one warm-up call each."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from ovae_speed import interleaved_times  # noqa: E402


def test_rounds_interleave_the_functions_and_pair_their_times():
    calls, now = [], [0.0]
    cost = {"teacher": 10.0, "a": 1.0, "b": 2.0}

    def fn(name):
        def run(x):
            calls.append(name)
            now[0] += cost[name] * (3.0 if len(calls) > 6 else 1.0)  # the machine slows from round 2 on
        return run

    times = interleaved_times({n: fn(n) for n in cost}, None, repeats=3, clock=lambda: now[0])
    assert calls == ["teacher", "a", "b"] * 4  # a warm-up call each, then three rounds in the same order
    assert times == {"teacher": [10.0, 30.0, 30.0], "a": [1.0, 3.0, 3.0], "b": [2.0, 6.0, 6.0]}
    # paired per round, the ratio holds through the slow spell
    assert [t / a for t, a in zip(times["teacher"], times["a"])] == [10.0, 10.0, 10.0]
