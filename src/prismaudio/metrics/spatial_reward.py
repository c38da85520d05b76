"""The ``spatial`` reward: how well the generated clip's interaural time difference (ITD) matches
the reference.

* GCC (always): the mean of the clip's GCC-PHAT TDOAs over its non-silent 0.1 s segments
  (`tdoa_distribution_paper`: regularised PHAT, sub-sample peak, > 0: left leads) -- the fast
  estimate, not BEWO's 100-window track. The gate is relative: segments whose peak is within
  `GATE_DB` = 16 dB of the clip's own peak (the paper's -16 dBFS gate for a clip peaking at
  0 dBFS), so a quiet but non-silent generation is still scored.
* CRW (only when a crw backend is configured, ``configure("stereocrw", path=...)``): the mean of
  the backend's `itd_track`.
* Reference ITD: the same estimate(s) on ``ctx.reference_audio[i]`` (same sample rate as the
  generated batch); without reference audio, the scene graph's ITD ``ctx.scene_graphs[i]``: the
  gain-weighted mean of its sources' ``itd_s`` (the synth world's ground truth, seconds, > 0: left).
  Neither given: `PrismAudioError` (NaN for the batch in `compute_rewards`).
* ``MSE = (ITD_ref - ITD_gen)^2`` in ms^2, per sample. Reward: ``-5 * MSE_gcc`` (GCC only), or the
  official form ``-(5 * MSE_crw / 2 + 5 * MSE_gcc) / 2`` with a crw backend.

Silent generated clips (and samples whose reference ITD is undefined) are NaN.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from ..rewards import RewardContext, register_reward
from .offline import BackendSlot, silent_mask
from .spatial import tdoa_distribution_paper

GATE_DB = 16.0
_CRW: dict[str, BackendSlot | None] = {"slot": None}


def configure(backend: Any = None, **params: Any) -> None:
    """Select a crw backend (name + params, or a built object); None (default): GCC only."""
    if backend is None:
        if params:
            raise PrismAudioError("spatial.configure: parameters given without a crw backend")
        _CRW["slot"] = None
        return
    slot = BackendSlot("crw", "stereocrw")
    slot.configure(backend, **params)
    _CRW["slot"] = slot


def gcc_mean_itd_s(audio: Tensor, sr: int, gate_db: float = GATE_DB) -> float:
    """Mean GCC-PHAT TDOA (s) of one clip [2, S] over its segments within `gate_db` of its peak;
    NaN when silent or mono."""
    x = torch.as_tensor(audio).detach().float()
    if x.dim() != 2 or x.shape[0] != 2:
        return math.nan
    peak = float(x.abs().max()) if x.numel() else 0.0
    if peak <= 1e-6:
        return math.nan
    thr = 20.0 * math.log10(peak) - gate_db
    tdoa, _ = tdoa_distribution_paper(x, sr, threshold_dbfs=thr)
    return float(tdoa.mean()) if len(tdoa) else math.nan


def scene_itd_s(scene: Any) -> float:
    """The scene graph's ITD (s): gain-weighted mean of its sources' `itd_s`; NaN if unknown."""
    if not isinstance(scene, dict):
        return math.nan
    items = [(float(s.get("gain", 1.0) or 0.0), s["itd_s"]) for s in scene.get("sources", [])
             if isinstance(s, dict) and s.get("itd_s") is not None]
    if not items:
        return math.nan
    w = sum(g for g, _ in items)
    if w <= 0:
        return float(sum(float(v) for _, v in items) / len(items))
    return float(sum(g * float(v) for g, v in items) / w)


def _crw_mean_itd_s(backend: Any, audio: Tensor, sr: int) -> float:
    track = torch.as_tensor(backend.itd_track(audio, sr)).double()
    return float(torch.nanmean(track)) if torch.isfinite(track).any() else math.nan


@register_reward("spatial")
def spatial_reward(audio: Tensor, sample_rate: int, ctx: RewardContext) -> Tensor:
    batch = audio.shape[0]
    ref = ctx.reference_audio
    scenes = ctx.scene_graphs
    if ref is None and scenes is None:
        raise PrismAudioError("the spatial reward needs ctx.reference_audio or ctx.scene_graphs")
    if audio.shape[1] != 2:
        raise PrismAudioError(f"the spatial reward needs stereo audio [B, 2, S], got {tuple(audio.shape)}")
    slot = _CRW["slot"]
    crw = slot.get() if slot is not None else None
    silent = silent_mask(audio)
    out = torch.full((batch,), float("nan"))
    with torch.no_grad():
        for i in range(batch):
            if bool(silent[i]):
                continue
            gen = gcc_mean_itd_s(audio[i], sample_rate)
            if ref is not None:
                ref_gcc = gcc_mean_itd_s(ref[i], sample_rate)
            else:
                ref_gcc = scene_itd_s(scenes[i])
            mse_gcc = ((ref_gcc - gen) * 1e3) ** 2
            if crw is None:
                out[i] = -5.0 * mse_gcc
                continue
            gen_crw = _crw_mean_itd_s(crw, audio[i], sample_rate)
            ref_crw = _crw_mean_itd_s(crw, ref[i], sample_rate) if ref is not None else ref_gcc
            mse_crw = ((ref_crw - gen_crw) * 1e3) ** 2
            out[i] = -(5.0 * mse_crw / 2.0 + 5.0 * mse_gcc) / 2.0
    return out
