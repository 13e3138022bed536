"""The search strategies: the trust rule's arithmetic, per-neuron selection, shaping."""

import pytest
import torch

from organic_sd.ola.population import dense
from organic_sd.ola.search import Budget, _keep_best, run_search
from organic_sd.ola.strategies import SNES, STRATEGIES, Trust, make_strategy
from organic_sd.ola.strategies.shaping import nes_utilities


def _state(strategy, P=3, R=1, d=2):
    g = torch.Generator().manual_seed(0)
    return strategy.init(torch.zeros(R, d), 1.0, g)


def test_trust_rule_hand_computed():
    # Three genomes, previous losses 1.0; new losses better / equal / worse than their own.
    t = Trust(3, up=0.01, down=0.005, epsilon=1e-6, trust_init=0.1, mutate_below=0.1)
    s = _state(t)
    s = s.__class__(**{**s.__dict__, "prev_loss": torch.ones(3, 1)})
    new_trust = t.update_trust(s, torch.tensor([[0.5], [1.0], [2.0]]))
    assert torch.allclose(new_trust, torch.tensor([[0.11], [0.10], [0.095]]))


def test_trust_epsilon_ignores_tiny_changes():
    t = Trust(2, epsilon=0.1)
    s = _state(t, P=2)
    s = s.__class__(**{**s.__dict__, "prev_loss": torch.ones(2, 1)})
    assert torch.allclose(t.update_trust(s, torch.tensor([[0.95], [1.05]])), s.trust)


def test_trust_replaces_only_low_trust_genomes_from_trusted_parents():
    t = Trust(3, trust_init=0.1, mutate_below=0.1, elite_fraction=0.34)
    s = _state(t)
    theta = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 2.0]]])  # (P=3, R=1, d=2)
    s = s.__class__(**{**s.__dict__, "theta": theta, "prev_loss": torch.ones(3, 1)})
    # genome 0 improves (trust 0.11, the only elite), 1 holds (0.10), 2 worsens (0.095 -> replaced)
    loss = torch.tensor([[0.5], [1.0], [2.0]])
    s2, metrics = t.tell(s, theta, loss)
    assert torch.equal(s2.theta[0], theta[0]) and torch.equal(s2.theta[1], theta[1])
    assert not torch.equal(s2.theta[2], theta[2])
    # the replacement is a mutated copy of genome 0, the trusted one, and is judged against its loss
    assert (s2.theta[2] - theta[0]).abs().max() < 1.0
    assert torch.allclose(s2.trust[:, 0], torch.tensor([0.11, 0.10, 0.10]))
    assert float(s2.prev_loss[2]) == 0.5
    assert abs(metrics["replaced"] - 1 / 3) < 1e-6


def test_trust_never_replaces_the_lowest_loss_genome():
    t = Trust(2, mutate_below=10.0)  # every genome is "low trust"
    s = _state(t, P=2)
    theta = s.theta.clone()
    s2, _ = t.tell(s, theta, torch.tensor([[0.1], [0.2]]))
    assert torch.equal(s2.theta[0], theta[0])
    assert not torch.equal(s2.theta[1], theta[1])


def test_trust_per_row_replaces_rows_independently():
    t = Trust(2, per_row=True, mutate_below=10.0)
    s = _state(t, P=2, R=2)
    theta = s.theta.clone()
    # genome 0 is best on row 0, genome 1 on row 1: each keeps its winning row only
    s2, _ = t.tell(s, theta, torch.tensor([[0.1, 0.9], [0.9, 0.1]]))
    assert torch.equal(s2.theta[0, 0], theta[0, 0]) and torch.equal(s2.theta[1, 1], theta[1, 1])
    assert not torch.equal(s2.theta[0, 1], theta[0, 1]) and not torch.equal(s2.theta[1, 0], theta[1, 0])


def test_nes_utilities_rank_within_each_row():
    loss = torch.tensor([[1.0, 4.0], [2.0, 3.0], [3.0, 2.0], [4.0, 1.0]])
    u = nes_utilities(loss)
    assert torch.allclose(u.sum(0), torch.zeros(2), atol=1e-6)
    assert u[:, 0].argmax() == 0 and u[:, 1].argmax() == 3
    assert torch.isfinite(nes_utilities(torch.tensor([[float("nan")], [1.0]]))).all()
    assert nes_utilities(torch.tensor([[float("nan")], [1.0]]))[1] > 0


def test_keep_best_selects_each_row_separately():
    class PerRow:
        per_row = True

        def candidates(self, state):
            return state

    cand = torch.tensor([[[1.0], [1.0]], [[2.0], [2.0]]])  # (K=2, R=2, d=1)
    val = lambda th: torch.tensor([[0.1, 0.9], [0.9, 0.1]])  # noqa: E731
    theta, v, _ = _keep_best(PerRow(), cand, val, torch.zeros(2, 1), torch.full((2,), 5.0))
    assert theta[:, 0].tolist() == [1.0, 2.0] and torch.allclose(v, torch.tensor([0.1, 0.1]))


def test_snes_solves_a_separable_quadratic_per_row():
    target = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.0, 3.0]])  # (R, d)
    loss = lambda th: (th - target).square().sum(-1)  # noqa: E731  (P, R)
    g = torch.Generator().manual_seed(0)
    res = run_search(SNES(20), loss, loss, torch.zeros(2, 3), 1.0, Budget(generations=300), g)
    assert torch.allclose(res.theta, target, atol=1e-2)


def test_make_strategy_names():
    assert isinstance(make_strategy("auto", 10), SNES)
    assert isinstance(make_strategy("trust", 10), Trust)
    try:
        make_strategy("adam", 10)
    except ValueError as e:
        assert "unknown strategy 'adam'" in str(e)
    else:
        raise AssertionError("a bad name must raise")


def test_drifted_rows_are_judged_relative_to_the_size_of_their_best():
    from organic_sd.ola.search import drifted

    best = torch.tensor([1.0, 1.0, -1.0, -1.0])
    cand = torch.tensor([1.01, 1.2, -0.99, -0.8])  # small and large setbacks, positive and negative losses
    assert drifted(cand, best, 0.05).tolist() == [False, True, False, True]


def test_snes_fall_back_restarts_only_the_masked_rows_with_smaller_steps():
    s = SNES(4).init(torch.zeros(2, 3), 1.0, torch.Generator().manual_seed(0))
    best = torch.ones(2, 3)
    s2 = SNES(4).fall_back(s, torch.tensor([True, False]), best)
    assert torch.equal(s2.mean[0], best[0]) and torch.equal(s2.mean[1], s.mean[1])
    assert torch.allclose(s2.sigma[0], 0.5 * s.sigma[0]) and torch.equal(s2.sigma[1], s.sigma[1])


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_registered_strategy_keeps_the_contract(name):
    s = make_strategy(name, 6)
    assert isinstance(s.per_row, bool) and isinstance(s.splittable, bool) and s.population >= 6
    R, d = 3, 4
    state = s.init(torch.zeros(R, d), 1.0, torch.Generator().manual_seed(0))
    state, theta = s.ask(state)
    assert theta.shape == (s.population, R, d)
    state, metrics = s.tell(state, theta, dense(theta).square().sum(-1))  # (P, R)
    assert isinstance(metrics, dict)
    cand = s.candidates(state)
    assert cand.ndim == 3 and cand.shape[1:] == (R, d)
    assert s.fall_back(state, torch.zeros(R, dtype=torch.bool), cand[0]) is state  # no drifted rows: unchanged


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_registered_strategy_lowers_a_quadratic(name):
    target = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.0, 3.0]])  # (R, d)
    loss = lambda th: (th - target).square().sum(-1)  # noqa: E731  (P, R)
    start = torch.zeros(2, 3)
    res = run_search(make_strategy(name, 20), loss, loss, start, 1.0, Budget(generations=200),
                     torch.Generator().manual_seed(0))
    assert float(res.val_loss.sum()) < 0.9 * float(loss(start[None]).sum())


def test_cli_strategy_names_are_the_registry():
    """--strategy's choices (read without torch) are the registry's names, and the CLI refuses others."""
    from organic_sd import strategy_names
    from organic_sd.cli import build_parser
    from organic_sd.ola.strategies import AUTO, STRATEGIES

    assert tuple(STRATEGIES) == strategy_names.STRATEGY_NAMES and AUTO in STRATEGIES
    assert strategy_names.CHOICES == ("auto", *STRATEGIES)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "denoiser", "--store", "s", "--out", "o", "--strategy", "nope"])
    a = build_parser().parse_args(["train", "denoiser", "--store", "s", "--out", "o", "--strategy", "trust-neuron"])
    assert a.strategy == "trust-neuron"


def test_a_search_resumes_from_per_coordinate_steps_and_reports_where_they_ended():
    loss = lambda th: th.square().sum(-1)  # noqa: E731  (P, R)
    g = torch.Generator().manual_seed(0)
    step0 = torch.tensor([[1.0, 1e-3], [1e-3, 1.0]])  # (R, d): each row starts wide on a different coordinate
    state = SNES(10).init(torch.ones(2, 2), step0, g)
    assert torch.equal(state.sigma, step0)
    res = run_search(SNES(10), loss, loss, torch.ones(2, 2), step0, Budget(generations=5), g, keep_step=True)
    assert res.step.shape == (2, 2)
    # the narrow coordinates barely moved from 1, the wide ones did: the per-coordinate start was used
    assert float(res.theta[0, 1]) > 0.9 and float(res.theta[1, 0]) > 0.9
    assert abs(float(res.theta[0, 0])) < 0.5 and abs(float(res.theta[1, 1])) < 0.5
    trust = run_search(make_strategy("trust", 10), loss, loss, torch.ones(2, 2), 0.1, Budget(generations=5), g,
                       keep_step=True)
    assert trust.step is None  # one scalar scale: nothing per coordinate to resume from
