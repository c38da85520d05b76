"""The offline judges (`judges.py`) as metric / reward backends (see `backends.py` for the roles).

==================  ==========  ==============================================================
name                role        what it wraps
==================  ==========  ==============================================================
``judge_clap``      clap        `SemanticJudge.score` / `embed_audio` / `embed_text` (cosine)
``judge_sync``      desync      `SyncJudge.logits` on the av-benchmark windows (below)
``judge_quality``   aesthetics  `QualityJudge.score` -> {"PQ", "PC"} only (CE / CU absent)
``judge_embedder``  embedder    `SemanticJudge.embed_audio` (FD)
``judge_classifier`` classifier `SemanticJudge` class logits [B, C] / sigmoid posteriors (KL,
                                class recall; names from the checkpoint)
==================  ==========  ==============================================================

Every factory takes ``path=``: the judge directory (``config.json`` + ``model.safetensors``). By
default it is ``$PRISMAUDIO_JUDGES/<kind>`` when the environment variable is set, else the shipped
``judges/<kind>`` asset (`resources.asset_path`; kind: semantic, sync, quality). Loaded judges are
cached per resolved path, so building the five backends loads the semantic judge once. A missing
checkpoint is one `PrismAudioError` that says how to train them (``prismaudio train-judges`` /
``make judges``).

DeSync windows (av-benchmark protocol): the first and the last 4.8 s of the clip (the clip length is
the shorter of the video, ``T / 25`` s, and the audio); a clip of at most 4.8 s gives one window,
repeated, so ``offsets`` is always ``[B, 2]``. ``desync`` = mean |offset| over the two windows.
``logits`` returns ``[B, 2, 21]`` like the Synchformer adapter, so rewards can take the posterior.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import PrismAudioError
from ..resources import asset_path
from .backends import register_backend
from .judges import (
    FPS,
    OFFSET_GRID,
    QualityJudge,
    SemanticJudge,
    SyncJudge,
    _Judge,
    frames_to_tensor,
    load_judge,
    to_mono16k,
)

JUDGES_ENV = "PRISMAUDIO_JUDGES"
WINDOW_S = 4.8
SILENCE_PEAK = 1e-6

_CACHE: dict[str, _Judge] = {}


def default_judges_dir() -> Path:
    """``$PRISMAUDIO_JUDGES`` when set, else the shipped ``judges`` asset (see `resources`)."""
    env = os.environ.get(JUDGES_ENV)
    return Path(env).expanduser() if env else asset_path("judges")


def judge_path(kind: str, path: str | os.PathLike | None = None) -> Path:
    return Path(path).expanduser() if path else default_judges_dir() / kind


def load_cached(kind: str, path: str | os.PathLike | None = None) -> _Judge:
    """The `kind` judge at `path` (default: `judge_path`), loaded once per resolved path."""
    p = judge_path(kind, path)
    key = str(p.resolve())
    if key not in _CACHE:
        if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
            raise PrismAudioError(
                f"offline {kind} judge not found at {p} (config.json + model.safetensors); train the judges "
                f"with `prismaudio train-judges --corpus CORPUS --out DIR` (or `make judges`), "
                f"or point ${JUDGES_ENV} / path= at a judges directory"
            )
        judge = load_judge(p)
        expected = {"semantic": SemanticJudge, "sync": SyncJudge, "quality": QualityJudge}[kind]
        if not isinstance(judge, expected):
            raise PrismAudioError(f"{p} holds a '{judge.kind}' judge, expected '{kind}'")
        _CACHE[key] = judge.eval().requires_grad_(False)
    return _CACHE[key]


def clear_cache() -> None:
    _CACHE.clear()
    _MEMO.clear()


def silent_mask(audio: Any, peak: float = SILENCE_PEAK) -> Tensor:
    """[B] bool: True where a clip of ``[B, C, S]`` (or ``[C, S]``) has no sample above `peak`."""
    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, Tensor) else audio)
    if x.dim() == 2:
        x = x[None]
    if x.shape[-1] == 0:
        return torch.ones(x.shape[0], dtype=torch.bool)
    return x.detach().abs().reshape(x.shape[0], -1).amax(1).float() <= peak


def _batch_audio(audio: Any) -> Tensor:
    x = audio if isinstance(audio, Tensor) else torch.as_tensor(np.asarray(audio))
    x = x.float()
    if x.dim() == 1:
        x = x[None, None]
    elif x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[-1] == 0:
        raise PrismAudioError(f"audio must be [B, C, S] or [C, S] with samples, got {tuple(x.shape)}")
    return x


# ------------------------------------------------------------- one semantic-judge pass per clip
_MEMO: list[tuple[tuple, Tensor, tuple[Tensor, Tensor]]] = []
_MEMO_SIZE = 8


def semantic_outputs(judge: SemanticJudge, audio: Any, sr: int) -> tuple[Tensor, Tensor]:
    """(joint embedding [B, D], class logits [B, C]) of the semantic judge for `audio`.

    The CLAP, embedder and classifier roles all share one judge, and `evaluate` asks all three about
    the same clip: the last few results are memoised, keyed on the audio tensor's storage, view and
    version counter (the entry holds a reference to the tensor, so its memory cannot be reused by
    another clip while the entry lives, and an in-place edit bumps the version)."""
    x = _batch_audio(audio)
    key = (id(judge), x.untyped_storage().data_ptr(), x.storage_offset(), tuple(x.shape), x.stride(),
           x._version, x.dtype, int(sr))
    for k, _, out in _MEMO:
        if k == key:
            return out
    out = judge.embed_mono(to_mono16k(x, sr))
    _MEMO.insert(0, (key, x, out))
    del _MEMO[_MEMO_SIZE:]
    return out


# -------------------------------------------------------------------------------------- clap
@register_backend("judge_clap", "clap")
class JudgeClap:
    """CLAP role from the offline semantic judge: cosine similarity in -1..1."""

    name = "judge_clap"

    def __init__(self, path: str | None = None) -> None:
        self.judge: SemanticJudge = load_cached("semantic", path)  # type: ignore[assignment]

    @torch.no_grad()
    def embed_audio(self, audio: Any, sr: int) -> Tensor:
        return semantic_outputs(self.judge, audio, sr)[0]

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        return self.judge.embed_text(list(texts))

    @torch.no_grad()
    def score(self, audio: Any, sr: int, texts: list[str]) -> Tensor:
        a, t = self.embed_audio(audio, sr), self.embed_text(list(texts))
        if t.shape[0] != a.shape[0]:
            raise PrismAudioError(f"score: {a.shape[0]} clips but {t.shape[0]} texts")
        return (a * t).sum(-1)


# ------------------------------------------------------------------------------------ desync
def window_bounds(duration_s: float, window_s: float = WINDOW_S) -> list[tuple[float, float]]:
    """The two evaluation windows (start, end) in seconds: first and last `window_s`; one window
    (the whole clip) twice when the clip is not longer than `window_s`."""
    if duration_s <= window_s:
        return [(0.0, duration_s), (0.0, duration_s)]
    return [(0.0, window_s), (duration_s - window_s, duration_s)]


@register_backend("judge_sync", "desync")
class JudgeSync:
    """Desync role from the offline sync judge (av-benchmark windows, see module doc)."""

    name = "judge_sync"

    def __init__(self, path: str | None = None, window_s: float = WINDOW_S) -> None:
        self.judge: SyncJudge = load_cached("sync", path)  # type: ignore[assignment]
        self.window_s = float(window_s)
        self.frame_size = int(self.judge.config["size"])  # frames are area-pooled to this anyway

    @torch.no_grad()
    def logits(self, frames: Any, audio: Any, sr: int) -> Tensor:
        """[B, 2, 21] offset logits of the first and the last window of each clip."""
        v = frames_to_tensor(frames, self.frame_size)  # [B, T, 3, s, s]
        a = _batch_audio(audio)
        if v.shape[0] != a.shape[0]:
            raise PrismAudioError(f"judge_sync: {v.shape[0]} videos vs {a.shape[0]} audio clips")
        if v.shape[1] == 0:
            raise PrismAudioError("judge_sync: the video has no frames")
        dur = min(v.shape[1] / FPS, a.shape[-1] / sr)
        done: dict[tuple[float, float], Tensor] = {}  # a clip <= window_s has one window, used twice
        for t0, t1 in window_bounds(dur, self.window_s):
            if (t0, t1) not in done:
                f0 = round(t0 * FPS)
                f1 = max(f0 + 1, round(t1 * FPS))
                s0, s1 = round(t0 * sr), round(t1 * sr)
                done[(t0, t1)] = self.judge.logits(v[:, f0:f1], a[..., s0:s1], sr)
        return torch.stack([done[w] for w in window_bounds(dur, self.window_s)], 1)

    def offsets(self, frames: Any, audio: Any, sr: int) -> Tensor:
        """[B, 2] signed offsets (s, > 0: audio late) = grid value of the argmax per window."""
        return OFFSET_GRID[self.logits(frames, audio, sr).argmax(-1)]

    def desync(self, frames: Any, audio: Any, sr: int) -> Tensor:
        """[B] mean |offset| over the two windows (DeSync per clip)."""
        return self.offsets(frames, audio, sr).abs().mean(-1)

    def expected_abs_offset(self, frames: Any, audio: Any, sr: int) -> Tensor:
        """[B] mean over the windows of E[|offset|] under the softmax posterior over the grid."""
        return expected_abs_offset(self.logits(frames, audio, sr))


def expected_abs_offset(logits: Tensor) -> Tensor:
    """``logits [B, W, 21]`` (or ``[B, 21]``) -> [B] mean over windows of sum_k softmax_k |grid_k|."""
    lg = logits if logits.dim() == 3 else logits[:, None]
    p = torch.softmax(lg.float(), -1)
    return (p * OFFSET_GRID.abs().to(p)).sum(-1).mean(-1)


# ------------------------------------------------------------------------------- aesthetics
@register_backend("judge_quality", "aesthetics")
class JudgeQuality:
    """Aesthetics role from the offline quality judge: PQ and PC only (CE / CU are absent)."""

    name = "judge_quality"

    def __init__(self, path: str | None = None) -> None:
        self.judge: QualityJudge = load_cached("quality", path)  # type: ignore[assignment]

    @torch.no_grad()
    def score(self, audio: Any, sr: int) -> dict[str, Tensor]:
        return self.judge.score(_batch_audio(audio), sr)


# ------------------------------------------------------------------- embedder / classifier
@register_backend("judge_embedder", "embedder")
class JudgeEmbedder:
    """Embedder role (FD) from the offline semantic judge's L2-normalised audio embedding."""

    name = "judge_embedder"

    def __init__(self, path: str | None = None) -> None:
        self.judge: SemanticJudge = load_cached("semantic", path)  # type: ignore[assignment]

    @torch.no_grad()
    def embed(self, audio: Any, sr: int) -> Tensor:
        return semantic_outputs(self.judge, audio, sr)[0]

    __call__ = embed


@register_backend("judge_classifier", "classifier")
class JudgeClassifier:
    """Classifier role from the semantic judge's class head (`class_names`: its checkpoint's classes, in order).

    The head is multi-label (sigmoid): `posteriors` are independent class probabilities (class
    recall uses > 0.5); `logits` are the raw scores, which KL turns into a softmax distribution
    like the PANNs / PaSST convention of av-benchmark."""

    name = "judge_classifier"

    def __init__(self, path: str | None = None) -> None:
        self.judge: SemanticJudge = load_cached("semantic", path)  # type: ignore[assignment]
        self.class_names = self.judge.classes

    @torch.no_grad()
    def logits(self, audio: Any, sr: int) -> Tensor:
        return semantic_outputs(self.judge, audio, sr)[1]

    def posteriors(self, audio: Any, sr: int) -> Tensor:
        return torch.sigmoid(self.logits(audio, sr))

    __call__ = logits


__all__ = ["JUDGES_ENV", "JudgeClap", "JudgeClassifier", "JudgeEmbedder", "JudgeQuality", "JudgeSync",
           "clear_cache", "default_judges_dir", "expected_abs_offset", "judge_path", "load_cached",
           "silent_mask", "window_bounds"]


# ------------------------------------------------------------------ reward backend selection
class BackendSlot:
    """The backend of one reward module: a registered name + parameters (built lazily, once), or an
    already built object. ``configure()`` with no argument restores the default (the offline judge)."""

    def __init__(self, role: str, default: str) -> None:
        self.role, self.default = role, default
        self.spec: Any = default
        self.params: dict[str, Any] = {}
        self._obj: Any = None

    def configure(self, backend: Any = None, **params: Any) -> None:
        from .backends import backend_role

        backend = self.default if backend is None else backend
        if isinstance(backend, str):
            role = backend_role(backend)
            if role != self.role:
                raise PrismAudioError(f"backend {backend!r} plays the {role!r} role, not {self.role!r}")
        elif params:
            raise PrismAudioError("parameters can only be given with a backend name, not a built backend")
        self.spec, self.params, self._obj = backend, dict(params), None

    @property
    def name(self) -> str:
        return self.spec if isinstance(self.spec, str) else getattr(self.spec, "name", type(self.spec).__name__)

    def get(self) -> Any:
        if self._obj is None:
            if isinstance(self.spec, str):
                from .backends import build_backend

                self._obj = build_backend(self.spec, **self.params)
            else:
                self._obj = self.spec
        return self._obj


def nan_where(values: Tensor, mask: Tensor) -> Tensor:
    """`values` as float32 [B] with NaN where `mask` is True."""
    v = torch.as_tensor(values).detach().to("cpu", torch.float32).reshape(-1)
    return torch.where(mask.reshape(-1), torch.full_like(v, float("nan")), v)
