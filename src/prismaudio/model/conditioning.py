"""Condition tokens and the condition MLPs (official `conditioner.*`).

`ConditionTokens` is what flows from the conditioner into the DiT: everything in
*conditioner-output space*, which is where classifier-free guidance zeros conditions and where
training drops them (three independent masks, official_network.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ConditionTokens:
    """Conditioner outputs for a batch.

    cross: [B, Tv + Lt, D] cross-attention context = [video ; text]
    add:   [B, Tv, D]      video add path (interpolated to N inside the DiT)
    sync:  [B, N, D]       sync add path, already at the latent length (None = no sync path)
    """

    cross: Tensor
    add: Tensor
    sync: Tensor | None

    @property
    def batch_size(self) -> int:
        return self.cross.shape[0]

    def zeros_like(self) -> "ConditionTokens":
        """The unconditional branch of CFG: zeros with the same shapes (no learned null)."""
        return ConditionTokens(
            torch.zeros_like(self.cross),
            torch.zeros_like(self.add),
            None if self.sync is None else torch.zeros_like(self.sync),
        )

    def cat(self, other: "ConditionTokens") -> "ConditionTokens":
        """Concatenate along the batch (used for [cond ; uncond] CFG batches)."""
        sync = None if self.sync is None or other.sync is None else torch.cat([self.sync, other.sync])
        return ConditionTokens(torch.cat([self.cross, other.cross]), torch.cat([self.add, other.add]), sync)

    def repeat_interleave(self, n: int) -> "ConditionTokens":
        """Each item repeated n times in a row (a group of n samples per prompt)."""
        sync = None if self.sync is None else self.sync.repeat_interleave(n, 0)
        return ConditionTokens(self.cross.repeat_interleave(n, 0), self.add.repeat_interleave(n, 0), sync)

    def index(self, idx: Tensor | slice) -> "ConditionTokens":
        sync = None if self.sync is None else self.sync[idx]
        return ConditionTokens(self.cross[idx], self.add[idx], sync)

    def to(self, *args, **kwargs) -> "ConditionTokens":
        sync = None if self.sync is None else self.sync.to(*args, **kwargs)
        return ConditionTokens(self.cross.to(*args, **kwargs), self.add.to(*args, **kwargs), sync)

    def dropout(self, p: float, generator: torch.Generator | None = None) -> "ConditionTokens":
        """Official training dropout: three independent per-sample Bernoulli(p) masks replace the
        whole cross-attention context, the video add path and the sync path by zeros."""
        if p <= 0:
            return self
        b = self.batch_size
        dev = self.cross.device
        keep = (torch.rand(3, b, generator=generator, device=dev if generator is None else generator.device) >= p)
        keep = keep.to(dev)

        def _mask(x: Tensor, k: Tensor) -> Tensor:
            return x * k.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)

        sync = None if self.sync is None else _mask(self.sync, keep[2])
        return ConditionTokens(_mask(self.cross, keep[0]), _mask(self.add, keep[1]), sync)
