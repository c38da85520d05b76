"""The Fast-GRPO objective (paper eq. 4, 6, 7; official_network.md §10.4-10.5), in float32.

Per window step t ∈ W(l) and sample i the policy is the Gaussian SDE transition
N(μ_θ(x_t), (σ_t·sqrt(-Δt))²). The ratio of eq. 4 is r = exp(log p_θ - log p_old), with the
official per-element-MEAN log-probability (`sampling.sde_step`). The loss is the negated clipped
surrogate of eq. 7 plus β times the official KL estimate to a frozen reference policy:

    L = mean_i max(-A_i·r_i, -A_i·clip(r_i, 1 - ε, 1 + ε)) + β · mean_i mean_elem (μ_θ - μ_ref)² / (2σ_t²)

(the KL divides by σ_t² without Δt, as the official code does). Every input is checked to be
finite: a NaN reaching the optimizer would silently destroy the policy, so it raises instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import PrismAudioError

__all__ = ["GRPOLoss", "NonFiniteLossError", "compute_advantages", "grpo_loss", "kl_to_reference"]


class NonFiniteLossError(PrismAudioError):
    """A NaN / inf reached the GRPO loss (a log-prob, an advantage, a mean or the loss itself)."""


def _finite(name: str, x: Tensor) -> Tensor:
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteLossError(f"GRPO loss: {name} has {bad} non-finite value(s); refusing to update")
    return x


def compute_advantages(total: Tensor, valid: Tensor, group_size: int, global_std: bool = False,
                       eps: float = 1e-4) -> Tensor:
    """Eq. 6: A_i = (R_i - mean_group) / (std + ε), over VALID samples only.

    std is the group's population std (eq. 6) or, with `global_std`, the population std of all
    valid rewards of the batch (official per-prompt mean + global std, §10.4). Excluded samples
    (NaN rewards, `valid` False), zero-variance groups and groups with < 2 valid members get
    A = 0 exactly, so they contribute no policy gradient and never a NaN.
    """
    n = total.numel()
    if group_size < 1 or n % group_size:
        raise PrismAudioError(f"batch {n} is not a multiple of group size {group_size}")
    r = torch.where(valid, total, torch.zeros_like(total)).to(torch.float64).reshape(-1, group_size)
    m = valid.reshape(-1, group_size).to(torch.float64)
    cnt = m.sum(1, keepdim=True)
    mean = (r * m).sum(1, keepdim=True) / cnt.clamp_min(1)
    dev = (r - mean) * m
    if global_std:
        k = m.sum()
        all_mean = (r * m).sum() / k.clamp_min(1)
        std = (((r - all_mean) * m) ** 2).sum().div(k.clamp_min(1)).sqrt().expand_as(cnt)
    else:
        std = (dev**2).sum(1, keepdim=True).div(cnt.clamp_min(1)).sqrt()
    adv = dev / (std + eps)
    keep = (m > 0) & (cnt > 1) & (std > 0)
    return torch.where(keep, adv, torch.zeros_like(adv)).reshape(-1).to(torch.float32)


def kl_to_reference(mean: Tensor, ref_mean: Tensor, std: Tensor) -> Tensor:
    """Official KL estimate per sample: mean over elements of (μ_θ - μ_ref)² / (2σ_t²), [B]."""
    d = (mean.float() - ref_mean.float()) ** 2
    per = d.reshape(d.shape[0], -1).mean(1)
    return per / (2 * std.float().reshape(-1) ** 2)


@dataclass
class GRPOLoss:
    loss: Tensor  # scalar, differentiable
    policy: Tensor  # scalar, the clipped surrogate term
    kl: Tensor  # scalar (0 when no reference)
    ratio: Tensor  # [B] detached
    clip_frac: Tensor  # scalar: fraction of samples whose ratio left [1 - ε, 1 + ε]


def grpo_loss(log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor, clip_range: float,
              adv_clip: float | None = None, mean: Tensor | None = None, ref_mean: Tensor | None = None,
              std: Tensor | None = None, beta: float = 0.0) -> GRPOLoss:
    """Negated eq. 7 for ONE window step, averaged over the samples given (+ β·KL when β > 0).

    `log_prob` [B] is differentiable (current θ), `old_log_prob` [B] the rollout's, `advantages`
    [B] from `compute_advantages` (clipped here to ±adv_clip). `mean`/`ref_mean`/`std` are the SDE
    means of θ and of the frozen reference and σ_t, needed when β > 0. Float32 throughout.
    """
    log_prob = _finite("log_prob", log_prob.float())
    old = _finite("old_log_prob", old_log_prob.detach().float())
    adv = _finite("advantages", advantages.detach().float())
    if adv_clip is not None:
        adv = adv.clamp(-adv_clip, adv_clip)
    ratio = torch.exp(log_prob - old)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    policy = torch.maximum(unclipped, clipped).mean()
    kl = policy.new_zeros(())
    if beta > 0:
        if mean is None or ref_mean is None or std is None:
            raise PrismAudioError("grpo_loss: beta > 0 needs mean, ref_mean and std")
        kl = kl_to_reference(_finite("mean", mean), _finite("ref_mean", ref_mean.detach()), std).mean()
    loss = _finite("loss", policy + beta * kl)
    clip_frac = ((ratio.detach() - 1).abs() > clip_range).float().mean()
    return GRPOLoss(loss, policy.detach(), kl.detach(), ratio.detach(), clip_frac)
