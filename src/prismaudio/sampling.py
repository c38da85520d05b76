"""Samplers: Euler ODE (inference), the exact GRPO SDE step, and the mixed ODE–SDE sampler.

One API for inference and Fast-GRPO rollouts (official_network.md §8.1, §10.1–10.3; paper eq. 1–4,
10–11). Convention: t = 1 is noise, t = 0 is data, the velocity is v = ε - x0, so a step from t to
t' < t is x' = x + (t' - t)·v. Samplers see the network only through a `VelocityFn`
`(x [B, ...], t [B]) -> v [B, ...]`; `guided_velocity` builds one from a DiT and its conditions.

Batch layout for groups: a grown batch of B·G rows is `repeat_interleave` order, i.e. row r belongs
to prompt r // G. `guided_velocity` accepts any x whose batch is a multiple k of the condition batch
and expands the conditions the same way, so the Fast-GRPO sampler can branch a group of G samples
off one shared ODE prefix without the caller doing anything.

Every random draw goes through an explicit `torch.Generator` (None = torch's global RNG).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from .flow import randn
from .model.conditioning import ConditionTokens

__all__ = [
    "VelocityFn",
    "inference_timesteps",
    "grpo_timesteps",
    "guided_velocity",
    "euler_step",
    "SDEStepOutput",
    "sde_step",
    "sample_ode",
    "MixedSampleOutput",
    "sample_mixed",
    "sample_window_start",
    "Constraint",
    "replace_known",
]

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""(x [B, ...], t [B]) -> v [B, ...]; must accept any batch size the sampler hands it."""

Scalar = float | Tensor  # a float, a 0-d tensor or a per-sample [B] tensor

Constraint = Callable[[Tensor, Tensor], Tensor]
"""(x [B, ...], t [B]) -> x with the known part of the state imposed (see `replace_known`)."""


# ------------------------------------------------------------------------------------ schedules
def inference_timesteps(steps: int) -> Tensor:
    """Official inference grid linspace(1, 0, steps + 1) (§8.1; no shift, never evaluated at 0)."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32)


def grpo_timesteps(steps: int, sigma_min: float = 0.001) -> Tensor:
    """Official GRPO grid (§10.1): linspace(1, sigma_min, steps) then a final 0 (steps + 1 values).

    Built like diffusers' FlowMatchEulerDiscreteScheduler (float64 on the 1000-step scale, then
    float32) so it equals the official `scheduler.sigmas` bit for bit.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    s = torch.linspace(1000.0, 1000.0 * sigma_min, steps, dtype=torch.float64) / 1000.0
    return torch.cat([s.to(torch.float32), torch.zeros(1, dtype=torch.float32)])


# ------------------------------------------------------------------------------------ helpers
def _t_vector(t: Scalar, x: Tensor) -> Tensor:
    """Timestep as a float32 [B] vector on x's device (the model wants one t per row)."""
    t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
    return t.reshape(1).expand(x.shape[0]) if t.numel() == 1 else t.reshape(x.shape[0])


def _bcast(s: Scalar, x: Tensor) -> Tensor:
    """float / 0-d / [B] -> float32 tensor broadcastable against x ([B, 1, ..., 1] when per sample)."""
    s = torch.as_tensor(s, dtype=torch.float32, device=x.device)
    return s.reshape(()) if s.numel() == 1 else s.reshape(-1, *([1] * (x.dim() - 1)))


# ------------------------------------------------------------------------------------ guidance
def guided_velocity(
    model: Callable[[Tensor, Tensor, ConditionTokens], Tensor], cond: ConditionTokens, cfg_scale: float,
    uncond: ConditionTokens | None = None,
) -> VelocityFn:
    """Classifier-free guided velocity (§6): v = v_u + (v_c - v_u)·s with [cond ; uncond] batched.

    The unconditional branch is `cond.zeros_like()` (zeros in conditioner-output space, no learned
    null), or `uncond` (same shapes as `cond`: a negative prompt's tokens). cfg_scale == 1 is one plain call. x may have batch k·B for a condition batch B: the
    conditions are then `repeat_interleave`d k times (cached per k), matching the group layout of
    `sample_mixed`. With autograd off and a model that has `prepare` (the DiT), its
    time-independent work is also cached per closure: build a new closure after changing weights.
    """
    b = cond.batch_size
    cache: dict[int, ConditionTokens] = {}
    prepared: dict[tuple[int, int], Any] = {}
    prepare = getattr(model, "prepare", None)

    def _cond_for(x: Tensor) -> Any:
        rows = x.shape[0]
        if rows not in cache:
            if rows % b:
                raise ValueError(f"velocity batch {rows} is not a multiple of the condition batch {b}")
            c = cond if rows == b else cond.repeat_interleave(rows // b)
            u = c.zeros_like() if uncond is None else (uncond if rows == b else uncond.repeat_interleave(rows // b))
            cache[rows] = c if cfg_scale == 1 else c.cat(u)
        if prepare is None or torch.is_grad_enabled():
            return cache[rows]  # with autograd on, recompute so gradients always see fresh weights
        key = (rows, x.shape[-1])
        if key not in prepared:  # the DiT's time-independent work, done once per sampling run
            prepared[key] = prepare(cache[rows], x.shape[-1])
        return prepared[key]

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        tv = _t_vector(t, x)
        c = _cond_for(x)
        if cfg_scale == 1:
            return model(x, tv, c)
        v_c, v_u = model(torch.cat([x, x]), torch.cat([tv, tv]), c).chunk(2)
        return v_u + (v_c - v_u) * cfg_scale

    return velocity


# ------------------------------------------------------------------------------------ steps
def euler_step(x: Tensor, v: Tensor, t: Scalar, t_next: Scalar) -> Tensor:
    """Deterministic ODE step x + (t_next - t)·v (dt < 0 when moving towards data)."""
    dt = _bcast(t_next, x) - _bcast(t, x)
    return x + dt * v.to(x.dtype)


@dataclass
class SDEStepOutput:
    """One GRPO SDE step. `std` is the official std_t WITHOUT the sqrt(-dt) factor: the Gaussian
    policy is N(mean, (std·sqrt(-dt))²) per element; the official KL divides by std² alone."""

    prev_sample: Tensor  # [B, ...] x' (sampled, or the given prev_sample)
    mean: Tensor  # [B, ...] μ (differentiable w.r.t. v)
    std: Tensor  # [B] std_t
    log_prob: Tensor  # [B] per-element MEAN of log N(x'; μ, std²·(-dt)); NaN when noise_level == 0


def sde_step(
    x: Tensor,
    v: Tensor,
    sigma: Scalar,
    sigma_next: Scalar,
    noise_level: float,
    prev_sample: Tensor | None = None,
    generator: torch.Generator | None = None,
    sigma_one_substitute: Scalar | None = None,
) -> SDEStepOutput:
    """The official `sde_step_with_logprob` (§10.2), in float32.

    std_t = a·sqrt(σ / (1 - σ̃)) with σ̃ = σ except at σ == 1, where the official code uses the
    schedule's SECOND sigma (else std would be infinite); `sigma_one_substitute` is that value and
    defaults to `sigma_next`, which is the same thing because σ == 1 only at the first step.
    μ = x·(1 + std²/(2σ)·dt) + v·(1 + std²·(1 - σ)/(2σ))·dt and x' = μ + std·sqrt(-dt)·ε.
    With `prev_sample` given nothing is drawn and its log-prob under (μ, std) is returned: this is
    how the policy ratio is recomputed with the current weights. noise_level == 0 is exactly the
    Euler step; its log-prob is meaningless (a point mass) and returned as NaN.
    sigma / sigma_next may be floats, 0-d or per-sample [B] tensors.
    """
    x = x.float()
    v = v.float()
    b = x.shape[0]
    if noise_level < 0:
        raise ValueError(f"noise_level must be >= 0, got {noise_level}")
    if noise_level == 0:
        mean = euler_step(x, v, sigma, sigma_next)
        out = mean if prev_sample is None else prev_sample.float()
        nan = torch.full((b,), float("nan"), device=x.device)
        return SDEStepOutput(out, mean, torch.zeros(b, device=x.device), nan)
    sig = _bcast(sigma, x)
    sig_next = _bcast(sigma_next, x)
    sub = sig_next if sigma_one_substitute is None else _bcast(sigma_one_substitute, x)
    dt = sig_next - sig
    sig_tilde = torch.where(sig == 1, sub, sig)
    std = torch.sqrt(sig / (1 - sig_tilde)) * noise_level
    mean = x * (1 + std**2 / (2 * sig) * dt) + v * (1 + std**2 * (1 - sig) / (2 * sig)) * dt
    step_std = std * torch.sqrt(-dt)
    if prev_sample is None:
        prev_sample = mean + step_std * randn(x.shape, generator, device=x.device)
    else:
        prev_sample = prev_sample.float()
    log_two_pi_half = torch.log(torch.sqrt(torch.tensor(2 * math.pi, dtype=torch.float32, device=x.device)))
    lp = -((prev_sample.detach() - mean) ** 2) / (2 * step_std**2) - torch.log(step_std) - log_two_pi_half
    lp = lp.mean(dim=tuple(range(1, lp.dim())))
    return SDEStepOutput(prev_sample, mean, std.reshape(-1).expand(b).clone(), lp)


# ------------------------------------------------------------------------------------ samplers
def replace_known(known: Tensor, mask: Tensor, noise: Tensor) -> Constraint:
    """RePaint-style hard constraint for flow matching: where `mask` is True, the state is replaced
    by the point of the known latents' own flow path, x_t = (1 - t)·known + t·noise.

    known [1 or B, C, N], mask broadcastable to it ([1 or B, 1, N] bool), noise [B, C, N]: the
    sampler's starting noise, so at t = 1 the constraint is the identity and at t = 0 it returns
    `known` exactly on the masked frames. It keeps an under-trained context model from drifting
    away from the audio it must continue (measured: see `prismaudio.context`).
    """

    def constrain(x: Tensor, t: Tensor) -> Tensor:
        tt = _bcast(t, x)
        path = (1 - tt) * known.to(x.dtype) + tt * noise.to(x.dtype)
        return torch.where(mask, path, x)

    return constrain


def sample_ode(
    velocity_fn: VelocityFn,
    noise: Tensor,
    timesteps: Tensor,
    progress: Callable[[int, int], None] | None = None,
    constraint: Constraint | None = None,
) -> Tensor:
    """Euler ODE from noise at timesteps[0] to timesteps[-1] (official `sample_discrete_euler`).

    `progress(i, total)` is called after step i (1-based), e.g. to drive a progress bar.
    `constraint(x, t)` (e.g. `replace_known`), when given, is applied to the state before every
    velocity evaluation and to the final state; None is the plain sampler, bit for bit.
    """
    x = noise
    total = len(timesteps) - 1
    for i in range(total):
        if constraint is not None:
            x = constraint(x, _t_vector(timesteps[i], x))
        v = velocity_fn(x, _t_vector(timesteps[i], x))
        x = euler_step(x, v, timesteps[i], timesteps[i + 1])
        if progress is not None:
            progress(i + 1, total)
    if constraint is not None:
        x = constraint(x, _t_vector(timesteps[-1], x))
    return x


@dataclass
class MixedSampleOutput:
    """A mixed ODE–SDE rollout. Rows are B·G in `repeat_interleave` order (row r: prompt r // G)."""

    samples: Tensor  # [B·G, ...] final latents at timesteps[-1]
    states: Tensor  # [B·G, w + 1, ...] x_l .. x_{l+w} (window inputs and outputs)
    log_probs: Tensor  # [B·G, w] old-policy log-probs of the window transitions
    means: Tensor  # [B·G, w, ...] SDE means μ
    stds: Tensor  # [B·G, w] std_t (without sqrt(-dt))
    sigmas: Tensor  # [w + 1] timesteps[l .. l + w]: step j goes sigmas[j] -> sigmas[j + 1]
    window_start: int  # l
    window_width: int  # w
    group_size: int  # G
    nfe: int  # velocity_fn calls (= number of steps T)
    nfe_rows: int  # sum over calls of the rows evaluated: the rollout cost in per-sample NFE

    @property
    def latents(self) -> Tensor:
        """[B·G, w, ...] x_j fed to each window step (the policy-ratio inputs)."""
        return self.states[:, :-1]

    @property
    def next_latents(self) -> Tensor:
        """[B·G, w, ...] the sampled x_{j+1} of each window step (the actions)."""
        return self.states[:, 1:]


def sample_window_start(num_steps: int, width: int, generator: torch.Generator | None = None) -> int:
    """Window start l uniform over {0, ..., T - w} (paper eq. 1), drawn afresh on every call.

    The official code reseeds Python's RNG with the GPU rank before each draw, so l is fixed per
    rank for the whole run (§10.3); we draw from the caller's generator instead.
    """
    if not 0 <= width <= num_steps:
        raise ValueError(f"window width must be in [0, {num_steps}], got {width}")
    dev = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, num_steps - width + 1, (1,), generator=generator, device=dev).item())


def sample_mixed(
    velocity_fn: VelocityFn,
    noise: Tensor,
    timesteps: Tensor,
    window_start: int,
    window_width: int,
    noise_level: float,
    group_size: int = 1,
    share_prefix: bool = True,
    generator: torch.Generator | None = None,
) -> MixedSampleOutput:
    """Mixed ODE–SDE sampler (paper eq. 2): SDE steps on W(l) = {l, ..., l + w - 1}, Euler elsewhere.

    share_prefix=True (Fast-GRPO): `noise` is [B, ...]; the ODE prefix (steps < l) runs once per
    prompt, then the state is `repeat_interleave`d G times and the group branches at step l, so
    velocity_fn sees batch B before the window and B·G from it on. With w == 0 the branch is
    deferred to the end (the G copies would be identical anyway). share_prefix=False: `noise` is
    already [B·G, ...] and each row runs its own prefix (G only labels the output). w == T with
    share_prefix=False is Flow-GRPO; w == 0 is the plain ODE. Only the SDE steps draw noise (one
    [B·G, ...] draw per step from `generator`), so with noise tiled as the shared path tiles it the
    two paths give the same samples. Call under torch.no_grad() for rollouts.
    """
    steps = len(timesteps) - 1
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not share_prefix and noise.shape[0] % group_size:
        raise ValueError(f"per-sample noise batch {noise.shape[0]} is not a multiple of group_size {group_size}")
    if not 0 <= window_width <= steps or not 0 <= window_start <= steps - window_width:
        raise ValueError(f"window [{window_start}, {window_start + window_width}) does not fit {steps} steps")
    l, w = window_start, window_width
    branch = (l if w > 0 else steps) if share_prefix and group_size > 1 else -1
    sub = timesteps[1] if steps >= 1 else None  # official σ̃ at σ == 1: the schedule's second sigma
    x = noise.float()  # the SDE step is float32 (official); keep the ODE steps in the same dtype
    states: list[Tensor] = []
    means: list[Tensor] = []
    stds: list[Tensor] = []
    lps: list[Tensor] = []
    nfe = nfe_rows = 0
    for i in range(steps):
        if i == branch:
            x = x.repeat_interleave(group_size, 0)
        v = velocity_fn(x, _t_vector(timesteps[i], x))
        nfe += 1
        nfe_rows += x.shape[0]
        if l <= i < l + w:
            if i == l:
                states.append(x)
            out = sde_step(x, v, timesteps[i], timesteps[i + 1], noise_level, generator=generator,
                           sigma_one_substitute=sub)
            x = out.prev_sample
            states.append(x)
            means.append(out.mean)
            stds.append(out.std)
            lps.append(out.log_prob)
        else:
            x = euler_step(x, v, timesteps[i], timesteps[i + 1])
    if branch == steps:
        x = x.repeat_interleave(group_size, 0)

    rows, shape = x.shape[0], tuple(x.shape[1:])

    def _stack(items: list[Tensor], tail: tuple[int, ...]) -> Tensor:
        return torch.stack(items, 1) if items else x.new_zeros((rows, 0) + tail)

    return MixedSampleOutput(
        samples=x,
        states=_stack(states, shape),
        log_probs=_stack(lps, ()),
        means=_stack(means, shape),
        stds=_stack(stds, ()),
        sigmas=timesteps[l : l + w + 1].clone() if w > 0 else timesteps[:0].clone(),
        window_start=l,
        window_width=w,
        group_size=group_size,
        nfe=nfe,
        nfe_rows=nfe_rows,
    )
