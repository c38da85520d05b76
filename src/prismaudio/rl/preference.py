"""Preference post-training on the SAME sampled groups as GRPO (ReasonAudio §4.4).

Each group gives final latents x0^1..x0^G with rewards. All three losses are flow-matching
regressions at a random t with x_t = (1 - t)·x0 + t·ε and target v* = ε - x0 (`flow.interpolate`),
per-sample error e_θ = mean_elem (v_θ(x_t, t) - v*)²:

* best-of-group SFT: e_θ of each group's highest-reward member (the winner);
* Flow-RWR: Σ_i softmax_group(r_i / τ) · e_θ(x0^i) (reward-weighted regression, exp(r) normalised
  within the group as the paper's text says);
* Flow-DPO: -log σ(-β/2 · (Δ_w - Δ_l)), Δ = e_θ - e_ref with a FROZEN reference velocity, for the
  group's best (w) and worst (l) member, both noised with the same (t, ε).

Excluded samples (invalid rewards) never take part; a group with < 2 valid members gives no pair.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..flow import interpolate, randn
from ..sampling import VelocityFn

__all__ = ["best_of_group", "dpo_loss", "fm_errors", "rwr_loss", "sft_loss"]

VelocityFor = Callable[[Tensor], VelocityFn]
"""rows [K] (long, indices into the sampled batch) -> the velocity with those rows' conditions."""


def fm_errors(velocity: VelocityFn, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Per-sample flow-matching error mean_elem (v(x_t, t) - (ε - x0))², [K]."""
    x0 = x0.float()
    pred = velocity(interpolate(x0, noise, t), t).float()
    err = (pred - (noise - x0)) ** 2
    return err.reshape(err.shape[0], -1).mean(1)


def best_of_group(total: Tensor, valid: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """(winner rows, loser rows, groups with >= 2 valid members) by reward, over valid members only."""
    r = total.reshape(-1, group_size).float()
    m = valid.reshape(-1, group_size)
    best = torch.where(m, r, torch.full_like(r, -torch.inf)).argmax(1)
    worst = torch.where(m, r, torch.full_like(r, torch.inf)).argmin(1)
    base = torch.arange(r.shape[0]) * group_size
    return base + best, base + worst, m.sum(1) >= 2


def _draw(n: int, like: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    t = torch.rand(n, generator=generator, device=generator.device if generator is not None else "cpu")
    return t.to(like.device), randn((n, *like.shape[1:]), generator, device=like.device)


def sft_loss(velocity_for: VelocityFor, x0: Tensor, total: Tensor, valid: Tensor, group_size: int,
             generator: torch.Generator | None = None) -> Tensor:
    """Best-of-group SFT: the flow-matching loss on each group's winner."""
    win, _, _ = best_of_group(total, valid, group_size)
    win = win[valid.reshape(-1, group_size).any(1)]
    if win.numel() == 0:
        return x0.new_zeros((), requires_grad=True)
    t, noise = _draw(win.numel(), x0, generator)
    return fm_errors(velocity_for(win), x0[win], t, noise).mean()


def rwr_loss(velocity_for: VelocityFor, x0: Tensor, total: Tensor, valid: Tensor, group_size: int,
             temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Flow-RWR over every row; the weights are a per-group softmax of the rewards."""
    r = torch.where(valid, total.float() / temperature, torch.full_like(total.float(), -torch.inf))
    w = torch.softmax(r.reshape(-1, group_size), dim=1)
    w = torch.nan_to_num(w, nan=0.0).reshape(-1)  # an all-invalid group: weight 0 everywhere
    t, noise = _draw(x0.shape[0], x0, generator)
    e = fm_errors(velocity_for(torch.arange(x0.shape[0], device=x0.device)), x0, t, noise)
    groups = max(1, int(valid.reshape(-1, group_size).any(1).sum()))
    return (w.to(e) * e).sum() / groups


def dpo_loss(velocity_for: VelocityFor, ref_velocity_for: VelocityFor, x0: Tensor, total: Tensor, valid: Tensor,
             group_size: int, beta: float = 5.0, generator: torch.Generator | None = None) -> Tensor:
    """Flow-DPO on each group's (best, worst) pair, both noised with the same (t, ε)."""
    win, lose, ok = best_of_group(total, valid, group_size)
    win, lose = win[ok], lose[ok]
    if win.numel() == 0:
        return x0.new_zeros((), requires_grad=True)
    k = win.numel()
    t, noise = _draw(k, x0, generator)
    xs, tt, nn_ = torch.cat([x0[win], x0[lose]]), torch.cat([t, t]), torch.cat([noise, noise])
    rows = torch.cat([win, lose])
    e = fm_errors(velocity_for(rows), xs, tt, nn_)
    with torch.no_grad():
        e_ref = fm_errors(ref_velocity_for(rows), xs, tt, nn_)
    delta = e - e_ref
    return -F.logsigmoid(-0.5 * beta * (delta[:k] - delta[k:])).mean()
