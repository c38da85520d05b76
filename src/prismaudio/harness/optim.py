"""AdamW and its learning-rate schedule from an `OptimConfig`: the same for every run kind.

Every field of `OptimConfig` is used here (lr, betas, eps, weight_decay, warmup_steps, schedule,
min_lr_ratio) or by the harness's optimizer step (grad_clip); `harness.config.validate_optim`
rejects values they cannot take.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from .config import OptimConfig


def lr_lambda(o: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up to 1 over `warmup_steps`, then cosine to `min_lr_ratio` at `total_steps`
    optimizer steps (or constant)."""

    def fn(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, total_steps - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return fn


def build_optimizer(params: Iterable[nn.Parameter], o: OptimConfig,
                    total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """(AdamW, LambdaLR stepped once per optimizer step)."""
    optimizer = torch.optim.AdamW(list(params), lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps,
                                  weight_decay=o.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o, total_steps))
