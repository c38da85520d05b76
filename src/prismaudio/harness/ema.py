"""Float32 exponential moving average of a module's floating-point state (params + buffers)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import PrismAudioError


class EMA:
    """With `warmup` the decay after step n is min(decay, (1 + n) / (10 + n)) (official ema.py): a short
    run (a few thousand steps at decay 0.999) would otherwise export weights still ~30% made of the
    random initialisation. n is the run's optimizer step, so a resumed run applies the same decays.
    """

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        self.decay = decay
        self.warmup = warmup
        self.track(module)
        self.shadow = {k: v.detach().float().clone() for k, v in self.live.items()}

    def track(self, module: nn.Module) -> None:
        """(Re)bind the live tensors: moving a module to a device replaces its buffers."""
        self.live = {k: v for k, v in module.state_dict(keep_vars=True).items() if v.is_floating_point()}

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold in the live weights after optimizer step `step` (1-based, as official ema.py)."""
        decay = self.decay_at(step)
        for k, v in self.live.items():
            self.shadow[k].lerp_(v.detach().float(), 1.0 - decay)

    def to(self, device: torch.device) -> EMA:
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def load(self, shadow: dict[str, Tensor]) -> None:
        if set(shadow) != set(self.shadow):
            raise PrismAudioError("the checkpoint's EMA does not match the model's parameters")
        for k, v in shadow.items():
            self.shadow[k].copy_(v)

    def copy_into(self, module: nn.Module) -> nn.Module:
        sd = module.state_dict()
        module.load_state_dict({k: self.shadow[k].to(v.dtype) if k in self.shadow else v for k, v in sd.items()})
        return module
