"""Group rollouts for Fast-GRPO / Flow-GRPO, and the policy's log-prob of a stored window step.

Fast-GRPO (paper §3.3.2, eq. 1-2; official_network.md §10.3): per prompt ONE noise and ONE ODE
prefix x_0 -> x_l (computed once, batch B), then the state is tiled into the G group members,
which take SDE steps on the window W(l) = {l, ..., l + w - 1} (noise level a) and deterministic
Euler steps after it. Flow-GRPO: every member has its own noise and every step is SDE (w = T,
l = 0, no shared prefix). Both run `sampling.sample_mixed`; this module adds the noise draws, the
CFG velocity of the policy, the NFE accounting, and `window_log_prob`, the ONE function that
evaluates a stored transition x_j -> x_{j+1} under any weights (current policy, frozen reference).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..flow import randn
from ..model.conditioning import ConditionTokens
from ..sampling import (
    MixedSampleOutput,
    SDEStepOutput,
    VelocityFn,
    grpo_timesteps,
    guided_velocity,
    sample_mixed,
    sample_window_start,
    sde_step,
)
from .config import SamplerConfig

__all__ = ["CountingVelocity", "Rollout", "policy_velocity", "rollout", "window_log_prob"]


@dataclass
class CountingVelocity:
    """Wraps a `VelocityFn` and counts calls and rows (one row = one per-sample NFE; CFG's doubled
    batch counts once, as in the paper's NFE). With `record`, keeps every (x, t) it was given."""

    fn: VelocityFn
    record: bool = False
    calls: int = 0
    rows: int = 0
    inputs: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        if self.record:
            self.inputs.append((x.detach().clone(), t.detach().clone()))
        return self.fn(x, t)


def policy_velocity(model: Callable[..., Tensor], cond: ConditionTokens, cfg_scale: float) -> VelocityFn:
    """The policy's guided velocity (CFG in rollouts AND in the training forward, as officially)."""
    return guided_velocity(model, cond, cfg_scale)


@dataclass
class Rollout:
    """One iteration's groups. Rows are B·G in `repeat_interleave` order (row r: prompt r // G)."""

    out: MixedSampleOutput
    timesteps: Tensor  # [T + 1] the GRPO grid
    noise_level: float
    nfe_per_sample: float  # rollout policy evaluations per generated sample (rows / (B·G))

    @property
    def samples(self) -> Tensor:
        return self.out.samples

    @property
    def group_size(self) -> int:
        return self.out.group_size


@torch.no_grad()
def rollout(model: Callable[..., Tensor], cond: ConditionTokens, latent_shape: tuple[int, ...],
            cfg: SamplerConfig, group_size: int, generator: torch.Generator | None,
            window_start: int | None = None, record: bool = False) -> tuple[Rollout, CountingVelocity]:
    """Sample G members for each of the B prompts of `cond`.

    `latent_shape` is (C, N). Draw order from `generator`: the window start l (Fast mode, unless
    given; uniform over {0..T-w} (eq. 1) or {0..max_window_start}; drawn afresh every call, which
    fixes the official per-rank constant l of §10.3), the noise
    ([B] Fast, [B·G] Flow), then one draw per SDE step inside `sample_mixed`.
    """
    fast = cfg.mode == "fast"
    steps, w = cfg.steps, cfg.effective_window()
    timesteps = grpo_timesteps(steps, cfg.sigma_min)
    dev = cond.cross.device
    if fast and window_start is None:
        last = steps - w if cfg.max_window_start is None else cfg.max_window_start
        l = sample_window_start(last + w, w, generator)  # uniform over {0, ..., last}
    elif fast:
        l = int(window_start)
    else:
        l = 0
    b = cond.batch_size
    rows = b if fast else b * group_size
    noise = randn((rows, *latent_shape), generator, device=dev)
    vel = CountingVelocity(policy_velocity(model, cond, cfg.cfg_scale), record=record)
    out = sample_mixed(vel, noise, timesteps.to(dev), l, w, cfg.noise_level, group_size=group_size,
                       share_prefix=fast, generator=generator)
    return Rollout(out, timesteps, cfg.noise_level, vel.rows / (b * group_size)), vel


def window_log_prob(velocity_fn: VelocityFn, x: Tensor, x_next: Tensor, sigma: Tensor | float,
                    sigma_next: Tensor | float, noise_level: float,
                    sigma_one_substitute: Tensor | float | None) -> SDEStepOutput:
    """log p(x_next | x) of the SDE step σ -> σ' under `velocity_fn`'s weights (eq. 4, §10.2/10.5).

    Used for the new policy (with autograd), the frozen reference (μ_ref, under no_grad) and, in
    the tests, against the official fixtures. `sigma_one_substitute` is the grid's second sigma.
    """
    t = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(1).expand(x.shape[0])
    v = velocity_fn(x, t)
    return sde_step(x, v, sigma, sigma_next, noise_level, prev_sample=x_next,
                    sigma_one_substitute=sigma_one_substitute)
