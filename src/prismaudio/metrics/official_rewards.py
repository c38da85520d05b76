"""The official PrismAudio reward variants, selectable by name in the reward registry.

They compute what the official reward code (FunAudioLLM/ThinkSound, branch prismaudio,
``grpo/fast_grpo/``) computes, on the real models loaded from the local checkpoints that the
real-config YAML names (`real_config`; ``configs/eval/real.yaml``, section ``rewards:`` or the role
entry of the same backend):

=======================  ====================  =====================================================
reward                   backend (role)        value per sample
=======================  ====================  =====================================================
``official_semantic``    ms_clap (clap)        MS-CLAP 2023 similarity / 80 (`adapters.clap.official_semantic_reward`)
``official_temporal``    synchformer_desync    ``(2 - |offset|) / 4`` with the reward's Synchformer input pipeline
                         (desync)              (short side 256, centre crop 224, first 9 s; `adapters.desync.official_sync_reward`)
``official_aesthetic``   audiobox_aesthetics   ``(CE + CU - PC + PQ) / 40``, unclamped axes (`adapters.aesthetics.official_aesthetic_reward`)
``official_spatial``     stereocrw (crw)       ``-(5 MSE_crw / 2 + 5 MSE_gcc) / 2`` on the mean ITDs in ms of one 6 s
                                               clip of the generated and the reference audio: StereoCRW over its
                                               512 patches + GCC-PHAT (`StereoCRW.official_itd`,
                                               `adapters.stereocrw.official_itd_reward`)
=======================  ====================  =====================================================

Upstream defect not reproduced: the official ITD reward builds its StereoCRW network but never
loads the checkpoint (``args.resume`` is unused), so it scores with torchvision's random init;
ours loads the weights of the configured file.

Our additions (the GRPO failure policy of `rewards`): silent or non-finite generated clips, samples
without text / video, are NaN (excluded from the group); ``official_spatial`` needs
``ctx.reference_audio``. Backends are built once per configuration (and loaded at once by the
``prepare`` hook, so a missing or broken checkpoint is one `PrismAudioError` before the first batch).
The adapter functions are imported when first used.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from ..rewards import RewardContext, register_reward
from . import real_config
from .backends import backend_params, backend_role, build_backend, preload
from .offline import nan_where, silent_mask

# parameters the official pipeline fixes, passed when the backend accepts them
FORCED_PARAMS: dict[str, dict[str, Any]] = {
    "official_aesthetic": {"clamp": False},  # AesPredictor.forward does not clamp to 1..10
}

_BUILT: dict[tuple, Any] = {}


# ------------------------------------------------------------------------------ backends
def _adapter(module: str, name: str) -> Any:
    try:
        fn = getattr(importlib.import_module(f"prismaudio.metrics.adapters.{module}"), name)
    except (ImportError, AttributeError) as e:
        raise PrismAudioError(f"prismaudio.metrics.adapters.{module}.{name} is not available ({e})") from None
    return fn


def backend_for(reward: str) -> Any:
    """The built (and loaded) backend of official `reward`, from the active real config."""
    cfg = real_config.active()
    role, official = real_config.OFFICIAL_BACKENDS[reward]
    if cfg is None:
        raise PrismAudioError(f"reward {reward!r} needs the local {official} checkpoint: point "
                              f"${real_config.ENV} at a real-config YAML (see configs/eval/real.yaml)")
    spec = cfg.reward_spec(reward)
    if backend_role(spec.backend) != role:
        raise PrismAudioError(f"real config {spec.where}: backend {spec.backend!r} plays the "
                              f"{backend_role(spec.backend)!r} role, reward {reward!r} needs a {role!r} backend")
    params = dict(spec.params)
    if spec.backend == official and not params.get("path"):
        raise PrismAudioError(f"real config {spec.where}: reward {reward!r} needs 'path:' (the local {official} "
                              "checkpoint; nothing is downloaded)")
    accepted = backend_params(spec.backend)
    for k, v in FORCED_PARAMS.get(reward, {}).items():
        if accepted is None or k in accepted:
            params[k] = v
    key = (reward, real_config.BackendSpec(spec.backend, params).key())
    if key not in _BUILT:
        obj = build_backend(spec.backend, **params)
        try:
            preload(obj)
        except PrismAudioError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken file is the user's input: one line
            raise PrismAudioError(f"reward {reward!r}: {spec.backend} failed to load "
                                  f"{params.get('path', '')}: {type(e).__name__}: {e}") from None
        _BUILT[key] = obj
    return _BUILT[key]


# the adapter function each reward calls (module of prismaudio.metrics.adapters, name)
ADAPTER_FUNCTIONS: dict[str, tuple[str, str]] = {
    "official_semantic": ("clap", "official_semantic_reward"),
    "official_temporal": ("desync", "official_sync_reward"),
    "official_aesthetic": ("aesthetics", "official_aesthetic_reward"),
    "official_spatial": ("stereocrw", "official_itd_reward"),
}


def _prepare(reward: str) -> None:
    """The ``prepare`` hook: the adapter function exists and the backend builds and loads."""
    _adapter(*ADAPTER_FUNCTIONS[reward])
    backend_for(reward)


def clear_cache() -> None:
    _BUILT.clear()


def invalid_mask(audio: Tensor) -> Tensor:
    """[B] True where a clip is silent or holds a NaN / Inf sample."""
    finite = torch.isfinite(audio.reshape(audio.shape[0], -1)).all(1)
    return ~finite | silent_mask(torch.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0))


def _values(x: Any, n: int, what: str) -> Tensor:
    v = torch.as_tensor(x).detach().to("cpu", torch.float32).reshape(-1)
    if v.numel() != n:
        raise PrismAudioError(f"{what} returned {v.numel()} values for {n} clip(s)")
    return v


# ------------------------------------------------------------------------------ semantic
@register_reward("official_semantic", prepare=lambda: _prepare("official_semantic"))
def official_semantic(audio: Tensor, sample_rate: int, ctx: RewardContext) -> Tensor:
    """MS-CLAP 2023 similarity / 80 with the sample's caption (else the CoT's semantic part)."""
    from .semantic import texts_from_ctx

    fn = _adapter(*ADAPTER_FUNCTIONS["official_semantic"])
    batch = audio.shape[0]
    texts = texts_from_ctx(ctx, batch)
    bad = invalid_mask(audio) | torch.tensor([t is None for t in texts])
    out = torch.full((batch,), math.nan)
    idx = (~bad).nonzero().flatten().tolist()
    if idx:
        clap = backend_for("official_semantic")
        out[idx] = _values(fn(clap, audio[idx], sample_rate, [texts[i] for i in idx]), len(idx),
                           "official_semantic_reward")
    return nan_where(out, bad)


# ------------------------------------------------------------------------------ temporal
@register_reward("official_temporal", prepare=lambda: _prepare("official_temporal"))
def official_temporal(audio: Tensor, sample_rate: int, ctx: RewardContext) -> Tensor:
    """``(2 - |offset|) / 4`` on the video FILE (the reward's own frame pipeline), else the given frames.
    Samples that share a video file (a GRPO group) are scored in one call."""
    fn = _adapter(*ADAPTER_FUNCTIONS["official_temporal"])
    batch = audio.shape[0]
    paths = list(ctx.video_paths or [None] * batch)
    frames = list(ctx.video_frames or [None] * batch)
    if all(p is None for p in paths) and all(f is None for f in frames):
        raise PrismAudioError("official_temporal needs the video: ctx.video_paths or ctx.video_frames")
    bad = invalid_mask(audio) | torch.tensor([p is None and f is None for p, f in zip(paths, frames)])
    out = torch.full((batch,), math.nan)
    groups: dict[Any, list[int]] = {}
    for i in (~bad).nonzero().flatten().tolist():
        groups.setdefault(("path", str(paths[i])) if paths[i] else ("frames", i), []).append(i)
    if groups:
        backend = backend_for("official_temporal")
    for (kind, _), idx in groups.items():
        src = paths[idx[0]] if kind == "path" else frames[idx[0]]
        r = torch.as_tensor(fn(backend, src, audio[idx], sample_rate)).detach().float().reshape(-1)
        if r.numel() != len(idx):  # the adapter scores one clip per call
            r = torch.stack([_values(fn(backend, src, audio[i:i + 1], sample_rate), 1, "official_sync_reward")[0]
                             for i in idx])
        out[idx] = r.cpu()
    return nan_where(out, bad)


# ------------------------------------------------------------------------------ aesthetic
@register_reward("official_aesthetic", prepare=lambda: _prepare("official_aesthetic"))
def official_aesthetic(audio: Tensor, sample_rate: int, ctx: RewardContext) -> Tensor:
    """Audiobox Aesthetics ``(CE + CU - PC + PQ) / 40``."""
    fn = _adapter(*ADAPTER_FUNCTIONS["official_aesthetic"])
    batch = audio.shape[0]
    bad = invalid_mask(audio)
    out = torch.full((batch,), math.nan)
    idx = (~bad).nonzero().flatten().tolist()
    if idx:
        scores = backend_for("official_aesthetic").score(audio[idx], sample_rate)
        out[idx] = _values(fn(scores), len(idx), "official_aesthetic_reward")
    return nan_where(out, bad)


# ------------------------------------------------------------------------------ spatial
@register_reward("official_spatial", prepare=lambda: _prepare("official_spatial"))
def official_spatial(audio: Tensor, sample_rate: int, ctx: RewardContext) -> Tensor:
    """The official ITD reward against ``ctx.reference_audio`` (same sample rate): the backend's
    `official_itd` (CRW and GCC ITDs of the reward's 6 s clip) of both, scored by
    `adapters.stereocrw.official_itd_reward`. A GRPO group's repeated reference is measured once."""
    ref = ctx.reference_audio
    if ref is None:
        raise PrismAudioError("official_spatial needs the reference audio (ctx.reference_audio)")
    if audio.shape[1] != 2 or ref.shape[1] != 2:
        raise PrismAudioError(f"official_spatial needs stereo audio, got {tuple(audio.shape)} and "
                              f"reference {tuple(ref.shape)}")
    score = _adapter(*ADAPTER_FUNCTIONS["official_spatial"])
    batch = audio.shape[0]
    bad = invalid_mask(audio) | invalid_mask(ref)
    out = torch.full((batch,), math.nan)
    backend = None
    last: tuple[Tensor, Any] | None = None
    for i in (~bad).nonzero().flatten().tolist():
        backend = backend or backend_for("official_spatial")
        if last is None or not torch.equal(last[0], ref[i]):
            last = (ref[i], backend.official_itd(ref[i], sample_rate))
        out[i] = float(torch.as_tensor(score(backend.official_itd(audio[i], sample_rate), last[1])).reshape(-1)[0])
    return nan_where(out, bad)


__all__ = ["ADAPTER_FUNCTIONS", "FORCED_PARAMS", "backend_for", "clear_cache", "invalid_mask", "official_aesthetic",
           "official_semantic", "official_spatial", "official_temporal"]
