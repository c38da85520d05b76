"""Samplers: schedules, CFG, the official GRPO SDE step, and the mixed ODE–SDE (Fast-GRPO) sampler."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from prismaudio.model.conditioning import ConditionTokens
from prismaudio.sampling import (
    euler_step,
    grpo_timesteps,
    guided_velocity,
    inference_timesteps,
    sample_mixed,
    sample_ode,
    sample_window_start,
    sde_step,
)

# 2-D toy flow with a known exact velocity: data x0 ~ N(M, diag(S²)), ε ~ N(0, I), x_t = (1-t)x0 + tε.
# (x_t, u = ε - x0) is jointly Gaussian per dimension: E[u] = -M, Var(x_t) = (1-t)²S² + t²,
# Cov(u, x_t) = t - (1-t)S², hence v(x, t) = E[u | x_t = x] = -M + Cov/Var · (x - (1-t)M).
M = torch.tensor([1.5, -0.5])
S = torch.tensor([0.5, 2.0])


def toy_velocity(x: Tensor, t: Tensor) -> Tensor:
    t = t.view(-1, 1)
    var = (1 - t) ** 2 * S**2 + t**2
    return -M + (t - (1 - t) * S**2) / var * (x - (1 - t) * M)


def nonlinear_velocity(x: Tensor, t: Tensor) -> Tensor:
    """Row-wise field (no cross-row mixing) so batch size never changes the bytes."""
    return torch.tanh(x) * (1 + t.view(-1, *([1] * (x.dim() - 1)))) - 0.3 * x


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------ schedules
def test_timestep_grids() -> None:
    assert torch.equal(inference_timesteps(24), torch.linspace(1, 0, 25))
    s = grpo_timesteps(24)
    assert s.shape == (25,) and s.dtype == torch.float32
    assert s[0] == 1 and s[-1] == 0 and s[-2] == pytest.approx(0.001)
    assert s[1].item() == pytest.approx(0.9565652, abs=1e-7)


@pytest.fixture(scope="module")
def official(shared_reference) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(shared_reference / "official_fixtures/tiny/reference.safetensors")


def test_grpo_timesteps_match_official(official: dict[str, Tensor]) -> None:
    ref = official
    assert torch.equal(grpo_timesteps(24), ref["grpo.scheduler_sigmas"])
    assert torch.equal(grpo_timesteps(24)[:-1] * 1000, ref["grpo.scheduler_timesteps"])


# ------------------------------------------------------------------------------------ SDE step
@pytest.mark.parametrize("step", [0, 12, 23])
@pytest.mark.parametrize("explicit_substitute", [True, False])
def test_sde_step_matches_official_fixture(official: dict[str, Tensor], step: int, explicit_substitute: bool) -> None:
    ref = official
    p = f"grpo.step{step}."
    s = grpo_timesteps(24)
    out = sde_step(
        ref[p + "latents"], ref[p + "model_output"], s[step], s[step + 1], 0.7,
        prev_sample=ref[p + "prev_sample"], sigma_one_substitute=s[1] if explicit_substitute else None,
    )
    assert torch.equal(out.prev_sample, ref[p + "prev_sample"])
    torch.testing.assert_close(out.mean, ref[p + "prev_sample_mean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std, ref[p + "std_dev_t"].expand(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.log_prob, ref[p + "log_prob"], atol=1e-5, rtol=0)


def test_sde_noise_level_zero_is_exact_euler() -> None:
    g = _gen(0)
    x, v = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    sig = torch.tensor([1.0, 0.5, 0.04])
    sig_next = torch.tensor([0.9, 0.45, 0.0])
    for a, b in [(0.5, 0.4), (1.0, 0.95), (sig, sig_next)]:
        out = sde_step(x, v, a, b, 0.0, generator=g)
        assert torch.equal(out.prev_sample, euler_step(x, v, a, b))
        assert torch.equal(out.mean, out.prev_sample)
        assert torch.equal(out.std, torch.zeros(3))
        assert out.log_prob.shape == (3,) and torch.isnan(out.log_prob).all()  # documented: meaningless
    # evaluating a given sample does not crash either
    assert torch.isnan(sde_step(x, v, 0.5, 0.4, 0.0, prev_sample=x).log_prob).all()


def test_sde_log_prob_is_mean_gaussian_density() -> None:
    g = _gen(1)
    x, v = torch.randn(4, 3, 7, generator=g), torch.randn(4, 3, 7, generator=g)
    sig = torch.tensor([1.0, 0.7, 0.3, 0.05])  # per-sample sigmas, one at the σ == 1 quirk
    sig_next = torch.tensor([0.95, 0.65, 0.25, 0.0])
    out = sde_step(x, v, sig, sig_next, 0.7, generator=g)
    scale = (out.std * (sig - sig_next).sqrt()).view(-1, 1, 1)
    expected = torch.distributions.Normal(out.mean, scale).log_prob(out.prev_sample).mean(dim=(1, 2))
    torch.testing.assert_close(out.log_prob, expected, atol=1e-5, rtol=1e-6)
    # σ == 1 uses the substitute (default: sigma_next), others the plain formula
    expected_std = 0.7 * torch.sqrt(sig / (1 - torch.where(sig == 1, sig_next, sig)))
    torch.testing.assert_close(out.std, expected_std)
    # the standardized residual is N(0, 1)
    big = sde_step(torch.zeros(2, 20000), torch.zeros(2, 20000), 0.6, 0.5, 0.7, generator=g)
    z = (big.prev_sample - big.mean) / (big.std.view(-1, 1) * 0.1**0.5)
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


def test_sde_mean_is_differentiable_and_sample_is_not_in_log_prob() -> None:
    x = torch.randn(2, 3)
    v = torch.randn(2, 3, requires_grad=True)
    target = torch.randn(2, 3, requires_grad=True)
    out = sde_step(x, v, 0.5, 0.45, 0.7, prev_sample=target)
    out.log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert target.grad is None  # official: log-prob of prev_sample.detach()


# ------------------------------------------------------------------------------------ CFG
class FakeDiT(torch.nn.Module):
    """Depends on every condition path and on t; counts calls and batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: Tensor, t: Tensor, cond: ConditionTokens) -> Tensor:
        self.batches.append(x.shape[0])
        c = cond.cross.mean(dim=(1, 2)) + 2 * cond.add.mean(dim=(1, 2)) + 3 * cond.sync.mean(dim=(1, 2))
        return x * (1 + c).view(-1, 1, 1) + t.view(-1, 1, 1) + c.view(-1, 1, 1) ** 2


def _cond(b: int, g: torch.Generator) -> ConditionTokens:
    return ConditionTokens(torch.randn(b, 5, 8, generator=g), torch.randn(b, 4, 8, generator=g),
                           torch.randn(b, 6, 8, generator=g))


def test_cfg_scale_one_is_plain_and_scale_s_combines() -> None:
    g = _gen(2)
    model, cond = FakeDiT(), _cond(2, g)
    x, t = torch.randn(2, 3, 6, generator=g), torch.tensor([0.8, 0.3])
    assert torch.equal(guided_velocity(model, cond, 1.0)(x, t), model(x, t, cond))
    v_c, v_u = model(x, t, cond), model(x, t, cond.zeros_like())
    model.batches.clear()
    v = guided_velocity(model, cond, 5.0)(x, t)
    assert model.batches == [4]  # one batched [cond ; uncond] call
    torch.testing.assert_close(v, v_u + 5.0 * (v_c - v_u))
    # scalar t is broadcast to the batch
    torch.testing.assert_close(guided_velocity(model, cond, 5.0)(x, torch.tensor(0.8)),
                               guided_velocity(model, cond, 5.0)(x, torch.full((2,), 0.8)))


def test_cfg_accepts_grown_group_batch() -> None:
    g = _gen(3)
    model, cond = FakeDiT(), _cond(2, g)
    x, t = torch.randn(6, 3, 6, generator=g), torch.rand(6, generator=g)
    fn = guided_velocity(model, cond, 4.0)
    torch.testing.assert_close(fn(x, t), guided_velocity(model, cond.repeat_interleave(3), 4.0)(x, t))
    with pytest.raises(ValueError):
        fn(torch.randn(5, 3, 6), torch.rand(5))


# ------------------------------------------------------------------------------------ samplers
def test_sample_ode_progress_and_window_zero_is_ode() -> None:
    g = _gen(4)
    noise = torch.randn(3, 2, 5, generator=g)
    ts = grpo_timesteps(10)
    calls: list[tuple[int, int]] = []
    ode = sample_ode(nonlinear_velocity, noise, ts, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, 10) for i in range(1, 11)]
    for share, start in [(True, 0), (True, 4), (False, 10)]:
        noise_in = noise if share else noise.repeat_interleave(2, 0)
        out = sample_mixed(nonlinear_velocity, noise_in, ts, start, 0, 0.7, group_size=2, share_prefix=share,
                           generator=g)
        assert torch.equal(out.samples, ode.repeat_interleave(2, 0))
        assert out.log_probs.shape == (6, 0) and out.states.shape == (6, 0, 2, 5)
        assert out.nfe == 10 and out.nfe_rows == (30 if share else 60)  # w = 0: ODE once per prompt


def test_shared_prefix_equals_per_sample_path() -> None:
    b, grp, steps, start, width = 3, 4, 12, 5, 3
    noise = torch.randn(b, 2, 5, generator=_gen(5))
    ts = grpo_timesteps(steps)
    seen: list[int] = []

    def fn(x: Tensor, t: Tensor) -> Tensor:
        seen.append(x.shape[0])
        return nonlinear_velocity(x, t)

    shared = sample_mixed(fn, noise, ts, start, width, 0.7, group_size=grp, share_prefix=True, generator=_gen(9))
    assert seen == [b] * start + [b * grp] * (steps - start)  # the group branches at the window start
    per = sample_mixed(nonlinear_velocity, noise.repeat_interleave(grp, 0), ts, start, width, 0.7, group_size=grp,
                       share_prefix=False, generator=_gen(9))
    for name in ["samples", "states", "log_probs", "means", "stds"]:
        assert torch.equal(getattr(shared, name), getattr(per, name)), name
    assert shared.nfe == per.nfe == steps
    assert shared.nfe_rows == start * b + (steps - start) * b * grp and per.nfe_rows == steps * b * grp
    # the window starts from the (tiled) ODE prefix, and the group members diverge inside it
    prefix = sample_ode(nonlinear_velocity, noise, ts[: start + 1])
    assert torch.equal(shared.latents[:, 0], prefix.repeat_interleave(grp, 0))
    assert not torch.allclose(shared.samples[0], shared.samples[1])
    assert torch.equal(shared.sigmas, ts[start : start + width + 1])
    assert shared.latents.shape == shared.next_latents.shape == (b * grp, width, 2, 5)


def test_window_log_probs_recompute_exactly() -> None:
    """Ratio = 1 at θ = θ_old: recomputing each window step with the stored next latents."""
    ts = grpo_timesteps(8)
    out = sample_mixed(nonlinear_velocity, torch.randn(2, 3, 4, generator=_gen(6)), ts, 0, 3, 0.7,
                       group_size=2, generator=_gen(7))
    for j in range(3):
        x = out.latents[:, j]
        re = sde_step(x, nonlinear_velocity(x, out.sigmas[j].expand(4)), out.sigmas[j], out.sigmas[j + 1], 0.7,
                      prev_sample=out.next_latents[:, j], sigma_one_substitute=ts[1])
        assert torch.equal(re.log_prob, out.log_probs[:, j])
        assert torch.equal(re.mean, out.means[:, j]) and torch.equal(re.std, out.stds[:, j])
    assert torch.isfinite(out.log_probs).all()


@pytest.mark.parametrize("start,width,share", [(0, 40, True), (80, 40, True), (0, 200, False)])
def test_mixed_sampler_keeps_terminal_distribution(start: int, width: int, share: bool) -> None:
    """Paper App. B.2 on the exact toy field: ODE, Fast-GRPO windows and Flow-GRPO land on the data."""
    n, steps = 16000, 200  # 32k elements: under torch's intra-op grain, so no thread contention
    noise = torch.randn(n, 2, generator=_gen(8))
    ts = grpo_timesteps(steps)
    ode = sample_ode(toy_velocity, noise, ts)
    mixed = sample_mixed(toy_velocity, noise, ts, start, width, 0.7, share_prefix=share, generator=_gen(10)).samples
    # tolerances: ~5 sampling sigmas (1/sqrt(n) = 0.8 % of S) plus the O(1/T) Euler bias (~1-2 %);
    # a wrong drift misses by > 20 % of S
    for x in (ode, mixed):
        assert ((x.mean(0) - M).abs() < 0.04 * S).all(), x.mean(0)
        assert ((x.std(0) / S - 1).abs() < 0.04).all(), x.std(0)
    assert ((mixed.mean(0) - ode.mean(0)).abs() < 0.04 * S).all()
    assert ((mixed.std(0) / ode.std(0) - 1).abs() < 0.05).all()
    assert not torch.allclose(mixed, ode)  # the window really was stochastic


def test_determinism_and_window_start() -> None:
    noise = torch.randn(2, 3, 4, generator=_gen(11))
    ts = grpo_timesteps(6)
    a = sample_mixed(nonlinear_velocity, noise, ts, 2, 2, 0.7, group_size=3, generator=_gen(12))
    b = sample_mixed(nonlinear_velocity, noise, ts, 2, 2, 0.7, group_size=3, generator=_gen(12))
    c = sample_mixed(nonlinear_velocity, noise, ts, 2, 2, 0.7, group_size=3, generator=_gen(13))
    assert torch.equal(a.samples, b.samples) and torch.equal(a.log_probs, b.log_probs)
    assert not torch.equal(a.samples, c.samples)

    g = _gen(14)
    draws = [sample_window_start(24, 2, g) for _ in range(2000)]
    assert set(draws) == set(range(23))  # uniform over {0, ..., T - w}, fresh on every call
    assert max(draws.count(k) for k in range(23)) < 2.0 * 2000 / 23
    g1, g2 = _gen(15), _gen(15)
    assert [sample_window_start(24, 2, g1) for _ in range(5)] == [sample_window_start(24, 2, g2) for _ in range(5)]
    assert sample_window_start(24, 24, g) == 0
    with pytest.raises(ValueError):
        sample_window_start(24, 25, g)
    with pytest.raises(ValueError):
        sample_mixed(nonlinear_velocity, noise, ts, 5, 2, 0.7)
