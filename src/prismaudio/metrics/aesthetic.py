"""The ``aesthetic`` reward from an aesthetics backend (PQ, PC, CE, CU in 1..10).

* All four axes present (Audiobox Aesthetics): the official PrismAudio reward
  ``(CE + CU - PC + PQ) / 40``.
* Otherwise (the offline quality judge, default, which has PQ and PC only): ``PQ / 10``.
  PC is deliberately NOT penalised offline: the offline judge's PC is trained on the corpus's
  number of concurrent sources (1 -> 1, 2 -> 4, 3 -> 7), i.e. it measures how many sounds the scene
  holds, not a production flaw; subtracting it would reward dropping sources that the video
  shows, against the semantic and class-recall objectives.

Silent clips are NaN (excluded by `compute_rewards`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from ..rewards import RewardContext, register_reward
from .offline import BackendSlot, nan_where, silent_mask

_SLOT = BackendSlot("aesthetics", "judge_quality")
AXES = ("CE", "CU", "PC", "PQ")


def configure(backend: Any = None, **params: Any) -> None:
    """Select the aesthetics backend (name + params, or a built object; default judge_quality)."""
    _SLOT.configure(backend, **params)


def aesthetic_score(scores: dict[str, Tensor]) -> Tensor:
    """The reward from a backend's axis dict (see module doc)."""
    s = {k: torch.as_tensor(v).detach().cpu().float().reshape(-1) for k, v in scores.items()}
    if all(a in s for a in AXES):
        return (s["CE"] + s["CU"] - s["PC"] + s["PQ"]) / 40.0
    if "PQ" not in s:
        raise PrismAudioError(f"aesthetics backend returned no PQ axis (got {sorted(s)})")
    return s["PQ"] / 10.0


@register_reward("aesthetic")
def aesthetic_reward(audio: Tensor, sample_rate: int, ctx: RewardContext) -> Tensor:
    batch = audio.shape[0]
    bad = silent_mask(audio)
    out = torch.full((batch,), float("nan"))
    idx = (~bad).nonzero().flatten()
    if len(idx):
        with torch.no_grad():
            out[idx] = aesthetic_score(_SLOT.get().score(audio[idx], sample_rate))
    return nan_where(out, bad)
