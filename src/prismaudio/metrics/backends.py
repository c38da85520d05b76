"""One registry for the models behind metrics and rewards ("backends"), offline judges and real adapters alike.

Each backend plays one *role* and exposes that role's methods (all batched, in memory, no grad):

* ``clap``        ``embed_audio(audio, sr) -> [B, D]`` (L2-normalised), ``embed_text(texts) -> [B, D]``,
                  ``score(audio, sr, texts) -> [B]`` cosine in -1..1  (CLAP score; MS-CLAP / LAION-CLAP / offline judge)
* ``desync``      ``offsets(frames, audio, sr) -> [B, W]`` signed offset in seconds (> 0: audio late) of each
                  evaluation window, ``desync(frames, audio, sr) -> [B]`` mean |offset| over the windows
                  (av-benchmark: the first and the last 4.8 s; Synchformer / offline sync judge)
* ``aesthetics``  ``score(audio, sr) -> {"PQ": [B], "PC": [B], "CE": [B], "CU": [B]}`` (1..10); an axis the
                  model cannot judge is ABSENT from the dict, never invented (Audiobox Aesthetics / offline judge)
* ``crw``         ``itd_track(audio, sr) -> [100]`` seconds (> 0: left leads), BEWO protocol (StereoCRW)
* ``embedder``    ``embed(audio, sr) -> [B, D]`` for FD (VGGish / PaSST / PANNs / offline judge)
* ``classifier``  ``logits(audio, sr) -> [B, C]`` (or ``posteriors``) for KL (PaSST / PANNs / offline judge)

A backend may define ``load()`` to read its weights eagerly; `preload` calls it (or the adapters'
``_load()`` / ``net``) so that a checkpoint that fails to load is found before any clip is scored.

``audio`` is ``[B, C, S]`` float32 (``[C, S]`` accepted for one clip) at sample rate ``sr``; every backend
resamples and mixes down itself. ``frames`` is ``[B, T, 3, H, W]`` float in [0, 1] at 25 fps, or uint8
``[B, T, H, W, 3]`` (backends resize/normalise themselves).

Register with ``@register_backend("name", role)``; build with ``build_backend("name", **params)`` where
params are the constructor's keyword arguments (e.g. ``path=`` a LOCAL checkpoint). Real adapters never
download anything: a missing path is one `PrismAudioError` naming the file expected.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from ..errors import PrismAudioError

ROLES = ("clap", "desync", "aesthetics", "crw", "embedder", "classifier")

_BACKENDS: dict[str, tuple[str, Callable[..., Any]]] = {}

# name -> module that registers it on import (imported lazily by `build_backend`)
BACKEND_PROVIDERS: dict[str, str] = {
    "judge_clap": "prismaudio.metrics.offline",
    "judge_sync": "prismaudio.metrics.offline",
    "judge_quality": "prismaudio.metrics.offline",
    "judge_embedder": "prismaudio.metrics.offline",
    "judge_classifier": "prismaudio.metrics.offline",
    "laion_clap": "prismaudio.metrics.adapters.clap",
    "ms_clap": "prismaudio.metrics.adapters.clap",
    "synchformer_desync": "prismaudio.metrics.adapters.desync",
    "audiobox_aesthetics": "prismaudio.metrics.adapters.aesthetics",
    "stereocrw": "prismaudio.metrics.adapters.stereocrw",
    "vggish": "prismaudio.metrics.adapters.vggish",
    "passt": "prismaudio.metrics.adapters.passt",
    "passt_classifier": "prismaudio.metrics.adapters.passt",
    "panns": "prismaudio.metrics.adapters.panns",
    "panns_classifier": "prismaudio.metrics.adapters.panns",
}


def register_backend(name: str, role: str) -> Callable:
    """Class/factory decorator: ``name`` builds a backend for ``role`` (one of `ROLES`)."""
    if role not in ROLES:
        raise PrismAudioError(f"unknown backend role {role!r}; roles: {', '.join(ROLES)}")

    def deco(factory: Callable) -> Callable:
        if name in _BACKENDS and _BACKENDS[name][1] is not factory:
            raise PrismAudioError(f"backend {name!r} is already registered")
        _BACKENDS[name] = (role, factory)
        return factory

    return deco


def _resolve(name: str) -> tuple[str, Callable[..., Any]]:
    if name not in _BACKENDS and name in BACKEND_PROVIDERS:
        try:
            importlib.import_module(BACKEND_PROVIDERS[name])
        except ImportError as e:
            raise PrismAudioError(f"backend {name!r}: cannot import {BACKEND_PROVIDERS[name]}: {e}") from None
    if name not in _BACKENDS:
        known = sorted(set(_BACKENDS) | set(BACKEND_PROVIDERS))
        raise PrismAudioError(f"unknown metric backend {name!r}; known: {', '.join(known)}")
    return _BACKENDS[name]


def is_known(name: str) -> bool:
    """Registered, or listed in `BACKEND_PROVIDERS` (its module may still fail to import)."""
    return name in _BACKENDS or name in BACKEND_PROVIDERS


def backend_role(name: str) -> str:
    return _resolve(name)[0]


def backend_params(name: str) -> set[str] | None:
    """The keyword parameters backend `name` accepts (None: any, the factory takes ``**kwargs``)."""
    sig = inspect.signature(_resolve(name)[1])
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return set(sig.parameters)


def build_backend(name: str, **params: Any) -> Any:
    """Build backend `name`; unknown parameters are one clear error (a config typo), not a TypeError."""
    _, factory = _resolve(name)
    accepted = backend_params(name)
    if accepted is not None:
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise PrismAudioError(f"backend {name!r}: unknown parameter(s) {unknown}; accepted: {sorted(accepted)}")
    return factory(**params)


def preload(backend: Any) -> None:
    """Load a built backend's weights now (adapters load lazily on first use): ``load()`` if it has one,
    else its ``_load()``, else its ``net`` property. Lets `evaluate` report a file that fails to load
    once, before the work, instead of on every clip."""
    for attr in ("load", "_load"):
        fn = getattr(backend, attr, None)
        if callable(fn):
            fn()
            return
    if isinstance(getattr(type(backend), "net", None), property):
        _ = backend.net


def list_backends(role: str | None = None) -> list[str]:
    names = sorted(set(_BACKENDS) | set(BACKEND_PROVIDERS))
    return [n for n in names if role is None or backend_role(n) == role]
