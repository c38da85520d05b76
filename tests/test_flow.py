"""Rectified-flow objective: official timestep sampler, target convention, condition dropout."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from prismaudio.flow import flow_matching_loss, interpolate, sample_timesteps
from prismaudio.model.conditioning import ConditionTokens


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_timestep_sampler_matches_official_quantiles() -> None:
    t = sample_timesteps(200_000, _gen(0))
    assert t.dtype == torch.float32 and t.shape == (200_000,)
    assert (t > 0).all() and (t < 1).all()
    assert t.mean().item() == pytest.approx(0.538, abs=0.005)
    q = torch.quantile(t, torch.tensor([0.01, 0.05, 0.25, 0.75, 0.95, 0.99]))
    torch.testing.assert_close(q, torch.tensor([0.096, 0.175, 0.364, 0.713, 0.898, 0.968]), atol=0.005, rtol=0)
    assert torch.equal(sample_timesteps(100, _gen(1)), sample_timesteps(100, _gen(1)))


def _cond(b: int) -> ConditionTokens:
    return ConditionTokens(torch.ones(b, 3, 4), torch.ones(b, 2, 4), torch.ones(b, 5, 4))


def test_interpolation_endpoints() -> None:
    x0, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    torch.testing.assert_close(interpolate(x0, eps, torch.tensor([0.0, 1.0])), torch.stack([x0[0], eps[1]]))


def test_loss_target_is_noise_minus_data() -> None:
    x0, eps = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    oracle = lambda x, t, c: eps - x0  # noqa: E731
    loss, aux = flow_matching_loss(oracle, x0, _cond(4), _gen(0), noise=eps)
    assert loss.item() == 0.0
    torch.testing.assert_close(aux["x_t"], interpolate(x0, eps, aux["t"]))
    wrong, _ = flow_matching_loss(lambda x, t, c: x0 - eps, x0, _cond(4), _gen(0), noise=eps)
    torch.testing.assert_close(wrong, 4 * ((eps - x0) ** 2).mean())


def test_loss_is_mse_over_all_elements_and_deterministic() -> None:
    lin = torch.nn.Linear(3, 3)

    def model(x: Tensor, t: Tensor, c: ConditionTokens) -> Tensor:
        return lin(x.transpose(1, 2)).transpose(1, 2) * t.view(-1, 1, 1)

    x0 = torch.randn(5, 3, 7)
    loss, aux = flow_matching_loss(model, x0, _cond(5), _gen(3))
    torch.testing.assert_close(loss, ((model(aux["x_t"], aux["t"], aux["cond"]) - (aux["noise"] - x0)) ** 2).mean())
    loss.backward()
    assert lin.weight.grad is not None
    again, _ = flow_matching_loss(model, x0, _cond(5), _gen(3))
    assert torch.equal(loss.detach(), again.detach())
    t = torch.full((5,), 0.25)
    _, aux_t = flow_matching_loss(model, x0, _cond(5), _gen(3), t=t)
    assert torch.equal(aux_t["t"], t)


def test_condition_dropout_three_independent_masks() -> None:
    b, p = 20000, 0.3
    _, aux = flow_matching_loss(lambda x, t, c: x, torch.zeros(b, 1, 2), _cond(b), _gen(4), cond_dropout=p)
    c: ConditionTokens = aux["cond"]
    dropped = []
    for tensor in (c.cross, c.add, c.sync):
        flat = tensor.reshape(b, -1)
        assert ((flat == 0).all(1) | (flat == 1).all(1)).all()  # whole-row masks
        dropped.append((flat == 0).all(1).float())
    for d in dropped:
        assert d.mean().item() == pytest.approx(p, abs=0.015)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert (dropped[i] * dropped[j]).mean().item() == pytest.approx(p * p, abs=0.01)  # independent
    assert (dropped[0] * dropped[1] * dropped[2]).mean().item() == pytest.approx(p**3, abs=0.006)
    _, aux0 = flow_matching_loss(lambda x, t, c: x, torch.zeros(4, 1, 2), _cond(4), _gen(4), cond_dropout=0.0)
    assert torch.equal(aux0["cond"].cross, torch.ones(4, 3, 4))
