"""The ``semantic`` reward: CLAP agreement between the generated audio and its text.

``reward = scale * cos(audio, text)`` per sample, where ``cos`` is the clap backend's `score`
(cosine in -1..1). Text: ``ctx.texts[i]`` (caption or semantic CoT), else the ``semantic`` part of
``ctx.cots[i]`` (a CoT dict, or a plain string used as is).

* Offline judge (default, ``judge_clap``): scale 1, i.e. the cosine itself.
* ``ms_clap``: the official PrismAudio reward is MS-CLAP's similarity / 80, and MS-CLAP's
  similarity is its x100-scaled logit (100 * cosine), so the default scale for ``ms_clap`` is
  100 / 80 = 1.25 (``reward = 1.25 * cos``), reproducing the official numbers.
* Any other backend (e.g. ``laion_clap``): scale 1 (cosine), unless ``scale=`` is configured.

Silent clips and samples without text are NaN (excluded by `compute_rewards`); a batch with no
text at all raises `PrismAudioError`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from ..rewards import RewardContext, register_reward
from .offline import BackendSlot, nan_where, silent_mask

_SLOT = BackendSlot("clap", "judge_clap")
_SCALE: dict[str, float | None] = {"scale": None}
OFFICIAL_SCALES = {"ms_clap": 100.0 / 80.0}


def configure(backend: Any = None, scale: float | None = None, **params: Any) -> None:
    """Select the clap backend (name + constructor params, or a built object; default judge_clap)
    and optionally the reward scale (default: 1.25 for ms_clap, else 1)."""
    _SLOT.configure(backend, **params)
    _SCALE["scale"] = None if scale is None else float(scale)


def current_scale() -> float:
    if _SCALE["scale"] is not None:
        return float(_SCALE["scale"])
    return OFFICIAL_SCALES.get(_SLOT.name, 1.0)


def semantic_text(text: Any = None, cot: Any = None) -> str | None:
    """The CLAP text of one sample: the text if given, else the CoT's semantic part."""
    if isinstance(text, str) and text.strip():
        return text
    if isinstance(cot, dict):
        cot = cot.get("semantic")
    if isinstance(cot, str) and cot.strip():
        return cot
    return None


def texts_from_ctx(ctx: RewardContext, batch: int) -> list[str | None]:
    texts = ctx.texts or [None] * batch
    cots = ctx.cots or [None] * batch
    out = [semantic_text(t, c) for t, c in zip(texts, cots)]
    if all(t is None for t in out):
        raise PrismAudioError("the semantic reward needs ctx.texts (captions) or ctx.cots with a semantic part")
    return out


@register_reward("semantic")
def semantic_reward(audio: Tensor, sample_rate: int, ctx: RewardContext) -> Tensor:
    batch = audio.shape[0]
    texts = texts_from_ctx(ctx, batch)
    bad = silent_mask(audio) | torch.tensor([t is None for t in texts])
    out = torch.full((batch,), float("nan"))
    idx = (~bad).nonzero().flatten()
    if len(idx):
        clap = _SLOT.get()
        with torch.no_grad():
            cos = clap.score(audio[idx], sample_rate, [texts[i] for i in idx.tolist()])
        out[idx] = torch.as_tensor(cos).detach().cpu().float().reshape(-1) * current_scale()
    return nan_where(out, bad)
