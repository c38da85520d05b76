"""The ``semantic`` reward: CLAP agreement between the generated audio and its text.

``reward = scale * cos(audio, text)`` per sample, where ``cos`` is the clap backend's `score`
(cosine in -1..1). Text: ``ctx.texts[i]`` (caption or semantic CoT), else the ``semantic`` part of
``ctx.cots[i]`` (a CoT dict, or a plain string used as is).

* Offline judge (default, ``judge_clap``): scale 1, i.e. the cosine itself.
* ``ms_clap``: the official PrismAudio reward, MS-CLAP's similarity / 80 (``exp(logit_scale) * cos / 80``
  with the checkpoint's logit_scale; `adapters.clap.official_semantic_reward`), unless ``scale=`` is
  configured (then ``scale * cos``). The ``official_semantic`` reward (`official_rewards`) is the same
  number with its checkpoint taken from the real config.
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


def configure(backend: Any = None, scale: float | None = None, **params: Any) -> None:
    """Select the clap backend (name + constructor params, or a built object; default judge_clap)
    and optionally the reward scale (default: the official similarity / 80 for ms_clap, else 1)."""
    _SLOT.configure(backend, **params)
    _SCALE["scale"] = None if scale is None else float(scale)


def current_scale() -> float:
    return 1.0 if _SCALE["scale"] is None else float(_SCALE["scale"])


def official_form() -> bool:
    """True when the reward is MS-CLAP's own similarity / 80 (ms_clap backend, no explicit scale)."""
    return _SLOT.name == "ms_clap" and _SCALE["scale"] is None


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
        batch_texts = [texts[i] for i in idx.tolist()]
        with torch.no_grad():
            if official_form():
                from .adapters.clap import official_semantic_reward

                val = torch.as_tensor(official_semantic_reward(clap, audio[idx], sample_rate, batch_texts))
            else:
                val = torch.as_tensor(clap.score(audio[idx], sample_rate, batch_texts)) * current_scale()
        out[idx] = val.detach().cpu().float().reshape(-1)
    return nan_where(out, bad)
