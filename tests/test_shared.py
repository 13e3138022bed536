"""ola/strategies/shared.py: candidates along shared directions, scored without materialising them."""

import pytest
import torch

from organic_sd import ola
from organic_sd.ola.population import SharedCandidates, dense, mse_loss, squash
from organic_sd.ola.search import Budget, run_search
from organic_sd.ola.strategies.shared import SharedSNES


def asked(R=5, d=4, P=8, seed=0):
    s = SharedSNES(P)
    g = torch.Generator().manual_seed(seed)
    state = s.init(torch.randn(R, d, generator=g), torch.rand(R, d, generator=g) + 0.1, g)
    return s, *s.ask(state)


def test_every_row_moves_along_the_same_directions_by_its_own_step():
    s, state, theta = asked()
    th = dense(theta)  # (P, R, d)
    moves = (th - state.mean[None]) / state.step[None, :, None]
    torch.testing.assert_close(moves, moves[:, :1].expand_as(moves))  # row r's move = step_r x a shared direction
    torch.testing.assert_close(th[: s.population // 2] - state.mean, state.mean - th[s.population // 2:])  # antithetic


@pytest.mark.parametrize("wide", [False, True])
def test_the_shared_losses_equal_the_dense_ones(wide):
    _, _, theta = asked()
    z, y = torch.randn(7, 3), 0.5 * torch.randn(7, 5)
    torch.testing.assert_close(squash(theta, z), squash(theta.dense(), z, wide=wide))
    torch.testing.assert_close(mse_loss(theta, z, y, 1.5), mse_loss(theta.dense(), z, y, 1.5))


def test_the_shared_pre_activations_are_laid_out_candidate_major():
    # the losses reduce along B: over a (B, P, R) memory layout that ran 7x slower on the CPU
    _, _, theta = asked()
    assert squash(theta, torch.randn(7, 3)).is_contiguous()


def test_a_per_coordinate_start_splits_into_row_steps_and_a_shared_scale():
    sigma = torch.tensor([[1.0, 4.0], [0.5, 2.0]])  # rank one: rows 2x apart, coordinates 4x apart
    state = SharedSNES(4).init(torch.zeros(2, 2), sigma, torch.Generator())
    torch.testing.assert_close(state.sigma, sigma)
    assert float(state.scale.log().sum()) == pytest.approx(0.0, abs=1e-6)


def test_a_loss_without_the_fast_path_gets_a_tensor_and_the_search_still_solves_each_row():
    target = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 0.0, 3.0]])  # (R, d)
    seen = []

    def loss(th):
        seen.append(type(th))
        return (th - target).square().sum(-1)

    res = run_search(SharedSNES(20), loss, loss, torch.zeros(2, 3), 1.0, Budget(generations=300),
                     torch.Generator().manual_seed(0))
    assert set(seen) == {torch.Tensor}
    assert float((res.theta - target).abs().max()) < 0.1


def test_the_fast_path_is_taken_where_the_loss_asks_for_it():
    seen = []

    def loss(th):
        seen.append(type(th))
        return dense(th).square().sum(-1)

    def val_loss(th):
        return th.square().sum(-1)

    run_search(SharedSNES(6), loss, val_loss, torch.ones(2, 3), 0.5, Budget(generations=3), torch.Generator(),
               shared_loss=True)
    assert seen == [SharedCandidates] * 3


def test_the_carried_rounds_search_along_shared_directions_and_a_bad_name_is_refused():
    assert ola.Refine.measured(0.9, "random").strategy == "snes-shared"
    assert ola.Refine.measured(0.5).strategy is None
    with pytest.raises(ValueError, match="Refine.strategy"):
        ola.Refine(share=0.5, strategy="nope")


def test_a_whole_fit_can_search_this_way_the_cascade_scoring_it_densely():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g)
    y = torch.tanh(0.5 * torch.tanh(x @ torch.randn(6, 4, generator=g)) @ torch.randn(4, 3, generator=g))
    m = ola.fit(x, y, hidden=(4,), strategy="snes-shared", generations=200)
    assert m.training_summary["val_mse"] < 0.2 * float(y.var(0).mean())
