"""Rectified-flow training objective (official_network.md §7).

Convention everywhere in this package: t = 1 is pure noise, t = 0 is data,
x_t = (1 - t)·x0 + t·ε and the network predicts the velocity v = ε - x0 (noise minus data).
All random draws take an explicit `torch.Generator` so a seed fixes the bytes.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .model.conditioning import ConditionTokens

__all__ = ["randn", "sample_timesteps", "interpolate", "flow_matching_loss"]


def _gen_device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    """Draw on the generator's device (a CPU generator cannot fill a CUDA tensor)."""
    if generator is not None:
        return generator.device
    return torch.device("cpu") if device is None else torch.device(device)


def randn(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal draw from `generator` (on its device), then moved to `device`."""
    z = torch.randn(tuple(shape), generator=generator, device=_gen_device(generator, device), dtype=dtype)
    return z if device is None else z.to(device)


def sample_timesteps(
    batch: int,
    generator: torch.Generator | None = None,
    left_trunc: float = 0.075,
    device: torch.device | str | None = None,
) -> Tensor:
    """Official `trunc_logit_normal` training timesteps, float32 [batch] in (0, 1).

    t = 1 - (sigmoid(z') - lt) / (1 - lt) with z' ~ N(0, 1) truncated to z' > logit(lt): drawn
    by inverse CDF, u' = lb + (1 - lb)·u with lb = Φ(logit(lt)), z' = Φ⁻¹(u'). Computed in float64
    so the tails are exact; the (probability ~1e-8) float32 round-up to exactly 1 is clamped away.
    """
    u = torch.rand(batch, generator=generator, device=_gen_device(generator, device), dtype=torch.float64)
    lb = 0.5 * (1.0 + math.erf(math.log(left_trunc / (1.0 - left_trunc)) / math.sqrt(2.0)))
    u = lb + (1.0 - lb) * u
    z = math.sqrt(2.0) * torch.special.erfinv(2.0 * u - 1.0)
    r = (torch.sigmoid(z) - left_trunc) / (1.0 - left_trunc)
    t = (1.0 - r).to(torch.float32)
    t = t.clamp(min=torch.finfo(torch.float32).tiny, max=1.0 - 2.0**-24)
    return t if device is None else t.to(device)


def _per_sample(t: Tensor, like: Tensor) -> Tensor:
    """[B] -> [B, 1, ..., 1] so it broadcasts against `like`."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def interpolate(x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """The linear path x_t = (1 - t)·x0 + t·ε (t is [B])."""
    tt = _per_sample(t, x0)
    return (1 - tt) * x0 + tt * noise


def flow_matching_loss(
    model: Callable[[Tensor, Tensor, ConditionTokens], Tensor],
    x0: Tensor,
    cond: ConditionTokens,
    generator: torch.Generator | None = None,
    cond_dropout: float = 0.1,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Rectified-flow MSE, official style: loss = mean over all elements of (model(x_t, t, c') - (ε - x0))².

    `c'` is `cond.dropout(cond_dropout, generator)` (three independent per-sample masks:
    cross context, video add path, sync path). Draw order from `generator`: t (unless given),
    ε (unless given), then the dropout masks. Returns (loss, aux) with aux holding the detached
    t, noise, x_t, prediction, target and the dropped condition, for logging and tests.
    """
    x0 = x0.float()
    b = x0.shape[0]
    if t is None:
        t = sample_timesteps(b, generator, device=x0.device)
    t = t.to(device=x0.device, dtype=torch.float32)
    if noise is None:
        noise = randn(x0.shape, generator, device=x0.device)
    noise = noise.to(x0)
    c = cond.dropout(cond_dropout, generator) if cond_dropout > 0 else cond
    x_t = interpolate(x0, noise, t)
    target = noise - x0
    pred = model(x_t, t, c)
    loss = F.mse_loss(pred.float(), target)
    aux = {"t": t, "noise": noise, "x_t": x_t, "pred": pred.detach(), "target": target, "cond": c}
    return loss, aux
