"""One registry of batched, in-memory rewards and their weighted combination (paper eq. 5).

A reward is a callable ``fn(audio, sample_rate, ctx) -> Tensor[B]``:

* ``audio``: generated stereo waveforms ``[B, 2, S]`` float32 in [-1, 1];
* ``sample_rate``: their rate in Hz;
* ``ctx``: a `RewardContext` with the per-sample conditions (texts / CoTs, video frames or paths,
  reference audio, scene graphs); every field is optional and a reward that needs a missing one
  should raise `PrismAudioError` (it is then reported as NaN for the whole batch, see below).

Higher is better. Rewards are registered by name with `register_reward`::

    @register_reward("semantic")
    def semantic_reward(audio, sample_rate, ctx):
        ...  # e.g. MS-CLAP(audio, ctx.texts) / 80, the official normalisation

Judge-backed rewards (semantic / temporal / aesthetic / spatial) live beside their metrics and
register themselves when their module is imported. `get_reward` imports the module listed for
a name in `REWARD_PROVIDERS` on first use, so ``get_reward("semantic")`` works without the caller
importing it first; a module registering a new name should add itself there (or be imported
before use). Only simple, dependency-free rewards are registered in this file (`loudness`).

Official variants (`prismaudio.metrics.official_rewards`), computed as the official PrismAudio reward
code computes them, each on the real model loaded from the local checkpoint the real-config YAML
names (`prismaudio.metrics.real_config`; ``configs/eval/real.yaml``):

* ``official_semantic``   MS-CLAP 2023 similarity / 80;
* ``official_temporal``   Synchformer on the reward's own input pipeline, first 9 s, ``(2 - |offset|) / 4``;
* ``official_aesthetic``  Audiobox Aesthetics ``(CE + CU - PC + PQ) / 40``;
* ``official_spatial``    StereoCRW + GCC-PHAT ITD on one 6 s clip against the reference audio,
  ``-(5 MSE_crw / 2 + 5 MSE_gcc) / 2`` (ms^2).

`REWARD_PRESETS` holds named weight sets: ``"official"`` is the official 8-GPU mix (0.6 sync +
1.0 MS-CLAP + 0.4 ITD + 0.1 aesthetic) on these variants, ``"paper"`` the same weights on the
judge-backed rewards (the `RewardConfig` default).

A reward may register a ``prepare`` hook (``register_reward(name, prepare=fn)``): `prepare_rewards`
runs it before any batch, so a configuration mistake (a missing checkpoint path) is one
`PrismAudioError` for the run, not a NaN batch after batch.

Failure policy (never propagate a NaN into GRPO advantages):

* `compute_rewards` runs every reward inside ``try``; a reward that raises becomes NaN for the
  whole batch, and the exception text is kept as the reason.
* `combine_rewards` computes ``R_total = sum_k lambda_k R_k`` (eq. 5) over rewards with non-zero
  weight. A sample whose weighted reward is NaN/inf (or whose reward raised) is EXCLUDED:
  ``valid[i] = False``, ``total[i] = 0`` (a placeholder, never to be used) and the reason is logged.
  Excluded samples get no advantage: they are dropped from their group before the group mean and
  std of eq. 6 are taken (see `rl.grpo.compute_advantages`, which returns advantage 0 for them,
  so they contribute no policy gradient).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .config import from_dict
from .errors import PrismAudioError

log = logging.getLogger(__name__)

RewardFn = Callable[[Tensor, int, "RewardContext"], Tensor]

_REGISTRY: dict[str, RewardFn] = {}
_PREPARE: dict[str, Callable[[], None]] = {}

# name -> module that registers it on import (imported lazily by `get_reward`).
REWARD_PROVIDERS: dict[str, str] = {
    "semantic": "prismaudio.metrics.semantic",
    "temporal": "prismaudio.metrics.temporal",
    "aesthetic": "prismaudio.metrics.aesthetic",
    "spatial": "prismaudio.metrics.spatial_reward",
    "official_semantic": "prismaudio.metrics.official_rewards",
    "official_temporal": "prismaudio.metrics.official_rewards",
    "official_aesthetic": "prismaudio.metrics.official_rewards",
    "official_spatial": "prismaudio.metrics.official_rewards",
}

# Named weight sets (eq. 5 lambda_k). "official": the official 8-GPU config's mix on the official
# variants (its 4-GPU config uses MS-CLAP alone: {"official_semantic": 1.0}); "paper": the same weights
# under the paper's dimension names, on the judge-backed rewards.
REWARD_PRESETS: dict[str, dict[str, float]] = {
    "official": {"official_temporal": 0.6, "official_semantic": 1.0, "official_spatial": 0.4,
                 "official_aesthetic": 0.1},
    "official_4gpu": {"official_semantic": 1.0},
    "paper": {"semantic": 1.0, "temporal": 0.6, "aesthetic": 0.1, "spatial": 0.4},
}


@dataclass
class RewardContext:
    """Per-sample conditions of one batch; each list (when given) has one item per sample."""

    texts: list[str | None] | None = None  # captions or the semantic CoT (CLAP text side)
    cots: list[Any] | None = None  # full CoT values (four parts), for rewards that need them
    video_frames: list[Tensor | None] | None = None  # [T, 3, H, W] per sample
    video_paths: list[str | None] | None = None
    reference_audio: Tensor | None = None  # [B, 2, S_ref] ground truth (spatial reward), or None
    scene_graphs: list[Any] | None = None  # synthetic-world truth (events, positions, ...)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else a custom reward needs

    def check(self, batch: int) -> None:
        """Raise `PrismAudioError` if a per-sample field does not have `batch` items."""
        for name in ("texts", "cots", "video_frames", "video_paths", "scene_graphs"):
            value = getattr(self, name)
            if value is not None and len(value) != batch:
                raise PrismAudioError(f"RewardContext.{name} has {len(value)} items, batch is {batch}")
        ref = self.reference_audio
        if ref is not None and (ref.dim() != 3 or ref.shape[0] != batch):
            raise PrismAudioError(f"RewardContext.reference_audio must be [{batch}, 2, S], got {tuple(ref.shape)}")


@dataclass
class RewardConfig:
    """Reward weights lambda_k of eq. 5. Default: the official 8-GPU mix
    0.6 sync + 1.0 MS-CLAP + 0.4 ITD + 0.1 aesthetic, under the paper's dimension names."""

    weights: dict[str, float] = field(default_factory=lambda: dict(REWARD_PRESETS["paper"]))

    def __post_init__(self) -> None:
        for name, w in self.weights.items():
            if not isinstance(name, str) or isinstance(w, bool) or not isinstance(w, (int, float)):
                raise PrismAudioError(f"reward weight {name!r}: expected a number, got {w!r}")
            if not math.isfinite(w):
                raise PrismAudioError(f"reward weight {name!r} must be finite, got {w!r}")
        self.weights = {k: float(v) for k, v in self.weights.items()}


def reward_config_from_dict(data: Mapping[str, Any]) -> RewardConfig:
    """Strict loading: unknown keys or non-numeric weights raise `PrismAudioError`."""
    return from_dict(RewardConfig, dict(data), ".rewards")


# --------------------------------------------------------------------------------------------
# Registry


def register_reward(name: str, *, overwrite: bool = False,
                    prepare: Callable[[], None] | None = None) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering `fn` under `name`; re-registering a name needs ``overwrite=True``.
    `prepare` (optional) checks / builds what the reward needs; it raises `PrismAudioError` on a
    configuration mistake and is run by `prepare_rewards` (cheap once done: it caches)."""

    def deco(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and not overwrite and _REGISTRY[name] is not fn:
            raise PrismAudioError(f"reward {name!r} is already registered")
        _REGISTRY[name] = fn
        if prepare is not None:
            _PREPARE[name] = prepare
        else:
            _PREPARE.pop(name, None)
        return fn

    return deco


def prepare_rewards(names: Iterable[str]) -> None:
    """Resolve every name and run its ``prepare`` hook: a missing checkpoint fails here, once."""
    for name in names:
        get_reward(name)
        hook = _PREPARE.get(name)
        if hook is not None:
            hook()


def reward_preset(name: str) -> dict[str, float]:
    """A copy of the weights of preset `name` (see `REWARD_PRESETS`)."""
    if name not in REWARD_PRESETS:
        raise PrismAudioError(f"unknown reward preset {name!r}; presets: {', '.join(REWARD_PRESETS)}")
    return dict(REWARD_PRESETS[name])


def available_rewards() -> list[str]:
    """Names registered so far (providers not yet imported are not listed)."""
    return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    """The reward registered as `name`, importing its provider module if needed."""
    if name not in _REGISTRY and name in REWARD_PROVIDERS:
        module = REWARD_PROVIDERS[name]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise PrismAudioError(f"reward {name!r}: cannot import its provider {module}: {e}") from None
    if name not in _REGISTRY:
        raise PrismAudioError(
            f"unknown reward {name!r}; registered: {', '.join(available_rewards()) or '(none)'}"
        )
    return _REGISTRY[name]


# --------------------------------------------------------------------------------------------
# Computing and combining


@dataclass
class RewardResult:
    scores: dict[str, Tensor]  # name -> [B] float32 (NaN where it failed)
    total: Tensor  # [B] weighted sum (eq. 5); 0 where excluded
    valid: Tensor  # [B] bool
    log: dict[str, Any]  # see `combine_rewards`


def compute_rewards(
    names: Iterable[str] | None,
    weights: Mapping[str, float],
    audio: Tensor,
    sample_rate: int,
    ctx: RewardContext | None = None,
) -> RewardResult:
    """Run each named reward on the batch and combine them with `weights` (eq. 5).

    `names` defaults to the keys of `weights`; every name needs a weight. Unknown names and failing
    ``prepare`` hooks (e.g. a missing checkpoint) are an error; a reward that raises or returns a
    wrong shape is NaN for the batch.
    """
    if audio.dim() != 3:
        raise PrismAudioError(f"rewards expect audio [B, 2, S], got {tuple(audio.shape)}")
    batch = audio.shape[0]
    ctx = ctx if ctx is not None else RewardContext()
    ctx.check(batch)
    names = list(weights) if names is None else list(names)
    missing = [n for n in names if n not in weights]
    if missing:
        raise PrismAudioError(f"no weight for reward(s) {', '.join(missing)}")
    fns = {n: get_reward(n) for n in names}  # unknown names fail before any work
    prepare_rewards(names)  # a configuration mistake is one error, not a NaN batch
    scores: dict[str, Tensor] = {}
    reasons: dict[str, str] = {}
    for name, fn in fns.items():
        try:
            with torch.no_grad():
                out = fn(audio, sample_rate, ctx)
            out = torch.as_tensor(out).detach().to(device="cpu", dtype=torch.float32).reshape(-1)
            if out.numel() != batch:
                raise PrismAudioError(f"returned {out.numel()} values for a batch of {batch}")
        except Exception as e:  # noqa: BLE001 - one failing judge must not kill the step
            reasons[name] = f"raised {type(e).__name__}: {e}"
            log.warning("reward %s failed on the whole batch: %s", name, reasons[name])
            out = torch.full((batch,), float("nan"))
        scores[name] = out
    total, valid, info = combine_rewards(scores, {n: weights[n] for n in names}, reasons)
    return RewardResult(scores, total, valid, info)


def combine_rewards(
    scores: Mapping[str, Tensor],
    weights: Mapping[str, float],
    reasons: Mapping[str, str] | None = None,
) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """Eq. 5: ``total = sum_k weights[k] * scores[k]`` with per-sample exclusion of failures.

    Returns ``(total [B], valid [B] bool, log)``. A reward with weight 0 is reported but neither
    counted nor able to exclude a sample. `log` holds ``excluded`` (a list of
    ``{"sample", "reward", "reason"}``), ``n_valid``, ``n`` and ``mean`` (per reward, over its
    finite values; None when none). `reasons` gives a whole-batch reason per reward (exceptions).
    """
    if set(scores) != set(weights):
        raise PrismAudioError(
            f"scores and weights name different rewards: {sorted(scores)} vs {sorted(weights)}"
        )
    if not scores:
        raise PrismAudioError("combine_rewards needs at least one reward")
    reasons = dict(reasons or {})
    sizes = {n: s.reshape(-1).numel() for n, s in scores.items()}
    if len(set(sizes.values())) != 1:
        raise PrismAudioError(f"rewards have different batch sizes: {sizes}")
    batch = next(iter(sizes.values()))
    total = torch.zeros(batch, dtype=torch.float64)
    valid = torch.ones(batch, dtype=torch.bool)
    excluded: list[dict[str, Any]] = []
    means: dict[str, float | None] = {}
    for name in sorted(scores):
        s = scores[name].detach().reshape(-1).to("cpu", torch.float64)
        finite = torch.isfinite(s)
        means[name] = float(s[finite].mean()) if finite.any() else None
        w = float(weights[name])
        if w == 0.0:
            continue
        contrib = w * s
        bad = ~torch.isfinite(contrib)
        for i in bad.nonzero().flatten().tolist():
            why = reasons.get(name) or f"non-finite value {float(s[i])}"
            excluded.append({"sample": i, "reward": name, "reason": why})
        valid &= ~bad
        total += torch.where(bad, torch.zeros_like(contrib), contrib)
    total = torch.where(valid, total, torch.zeros_like(total)).to(torch.float32)
    if excluded:
        log.warning("excluded %d sample(s) from the reward: %s", int((~valid).sum()), excluded)
    info = {"excluded": excluded, "n_valid": int(valid.sum()), "n": batch, "mean": means}
    return total, valid, info


class RewardMix:
    """A `RewardConfig` bound to the registry: ``RewardMix(cfg)(audio, sr, ctx) -> RewardResult``."""

    def __init__(self, config: RewardConfig | Mapping[str, float] | None = None) -> None:
        if config is None:
            config = RewardConfig()
        elif not isinstance(config, RewardConfig):
            config = RewardConfig(weights=dict(config))
        self.weights = dict(config.weights)

    def __call__(self, audio: Tensor, sample_rate: int, ctx: RewardContext | None = None) -> RewardResult:
        return compute_rewards(None, self.weights, audio, sample_rate, ctx)


# --------------------------------------------------------------------------------------------
# Built-in dependency-free rewards


def rms_db(audio: Tensor, eps: float = 1e-10) -> Tensor:
    """Per-sample RMS level in dBFS over both channels: ``10 log10(mean(x^2) + eps)``, [B]."""
    x = audio.to(torch.float64).reshape(audio.shape[0], -1)
    return (10.0 * torch.log10(x.pow(2).mean(1) + eps)).to(torch.float32)


def loudness_reward(target_db: float = -20.0) -> RewardFn:
    """A reward ``-|RMS dBFS - target_db|`` (0 at the target, a crude LUFS stand-in, no K-weighting)."""

    def fn(audio: Tensor, sample_rate: int, ctx: RewardContext) -> Tensor:
        return -(rms_db(audio) - target_db).abs()

    return fn


register_reward("loudness")(loudness_reward(-20.0))
