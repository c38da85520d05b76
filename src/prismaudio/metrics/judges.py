"""Offline judges standing in for the real reward/metric models (CLAP, Synchformer, Audiobox Aesthetics).

They are small CPU models trained on the procedural corpus (`prismaudio.procedural.train_judges`);
their numbers are *proxies* with the same shape and range as the real ones, not the real ones. This
module knows no corpus: the class names a judge predicts travel in its own checkpoint.

- `SemanticJudge` (CLAP-style): log-mel of the mono mix -> small 1-D CNN over time -> audio embedding; the frozen
  pretrained MiniLM text tower (mean-pooled token states) -> learned MLP projection; trained with a
  symmetric InfoNCE (learnable temperature; texts of clips with the same class set count as positives).
  A multi-label class head (the `classes` its checkpoint lists) on the audio features gives posteriors
  for KL / class recall; `embed_audio` gives L2-normalised joint-space embeddings for FD.
- `SyncJudge` (Synchformer-style): predicts the audio-video offset on the 21-class grid -2..+2 s (0.2 s
  step). Sign: a positive offset means the audio is *late* (an event is heard after it is seen). Per-frame
  video features (16x16 frame + frame difference -> MLP -> temporal convs) and audio features (log-mel at a
  40 ms hop, i.e. one column per video frame -> temporal convs) are correlated at each grid lag (lag
  k * 0.2 s = 5k frames) plus a learned per-lag bias. Trained on corpus clips whose audio is delayed by
  k steps with zero fill (`shift_audio`, label k + 10).
- `QualityJudge` (Audiobox-style): PQ and PC in 1..10. Training targets, from the scene graph:
  PQ = 10 - 9 * severity (clean audio: 10; severities lie in 0.15..1, so degraded PQ is 1..8.65),
  PC = min(10, 1 + 3 * (n_sources - 1)) (one source: 1, two: 4, three: 7).
  CE and CU have no ground truth in the corpus and are not produced.

Each judge saves to a directory: `config.json` ({"judge": kind, "config": {...}}, plus "classes": [...]
for the semantic judge) + `model.safetensors`, and loads strictly (every tensor present with its
exact shape, nothing extra; `io.weights`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PrismAudioError
from ..io.weights import load_state_into, read_model_dir, save_model_dir

SAMPLE_RATE = 16000
FPS = 25
GRID_STEP_S = 0.2
N_LAGS = 21  # offsets -2.0 .. +2.0 s
OFFSET_GRID = torch.tensor([round(GRID_STEP_S * k, 1) for k in range(-(N_LAGS // 2), N_LAGS // 2 + 1)])


def pq_target(degradation: dict | None) -> float:
    """PQ training target: clean 10, degraded 10 - 9 * severity."""
    if not degradation:
        return 10.0
    return float(10.0 - 9.0 * float(degradation["severity"]))


def pc_target(n_sources: int) -> float:
    """PC training target from the number of concurrent sources: 1, 4, 7, ... capped at 10."""
    return float(min(10.0, 1.0 + 3.0 * (max(1, int(n_sources)) - 1)))


def shift_audio(audio: Tensor, k: int, sr: int = SAMPLE_RATE) -> Tensor:
    """Delay the audio by k grid steps (k * 0.2 s; negative: advance), zero-filled: label index k + 10."""
    n = round(abs(k) * GRID_STEP_S * sr)
    if k == 0 or n == 0:
        return audio.clone()
    out = torch.zeros_like(audio)
    if n >= audio.shape[-1]:
        return out
    if k > 0:
        out[..., n:] = audio[..., :-n]
    else:
        out[..., :-n] = audio[..., n:]
    return out


def offset_label(k: int) -> int:
    if not -(N_LAGS // 2) <= k <= N_LAGS // 2:
        raise PrismAudioError(f"offset step {k} is outside the grid -10..10")
    return k + N_LAGS // 2


def to_mono16k(audio: Any, sr: int) -> Tensor:
    """[S], [C, S] or [B, C, S] (tensor or array) -> [B, S] float32 mono at 16 kHz."""
    from ..io.audio import resample

    x = torch.as_tensor(np.asarray(audio) if not isinstance(audio, Tensor) else audio).float()
    if x.dim() == 1:
        x = x[None, None]
    elif x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[-1] == 0:
        raise PrismAudioError(f"audio must be [S], [C, S] or [B, C, S], got shape {tuple(x.shape)}")
    x = x.mean(1)
    if int(sr) != SAMPLE_RATE:
        x = resample(x, int(sr), SAMPLE_RATE)
    return x


def _mel_fb(n_fft: int, n_mels: int, sr: int) -> Tensor:
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    imel = lambda m: 700.0 * (10 ** (m / 2595.0) - 1.0)
    pts = imel(np.linspace(mel(0.0), mel(sr / 2), n_mels + 2))
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    fb = np.zeros((n_mels, freqs.size), np.float32)
    for i in range(n_mels):
        lo, c, hi = pts[i], pts[i + 1], pts[i + 2]
        fb[i] = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    return torch.from_numpy(fb)


class LogMel(nn.Module):
    """[B, S] mono 16 kHz -> [B, n_mels, frames] log-mel, frame t centred at t * hop (no weights)."""

    def __init__(self, n_mels: int = 64, n_fft: int = 1024, hop: int = 320):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fb", _mel_fb(n_fft, n_mels, SAMPLE_RATE), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] < self.n_fft // 2 + 1:
            x = F.pad(x, (0, self.n_fft // 2 + 1 - x.shape[-1]))
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True, return_complex=True).abs() ** 2
        return (torch.log(self.fb @ spec + 1e-6) + 6.0) / 4.0


def _block(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv1d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.GELU()]
    return nn.Sequential(*layers, nn.MaxPool1d(2)) if pool else nn.Sequential(*layers)


class AudioTrunk(nn.Module):
    """Log-mel (64 bins, 20 ms hop; the bins are the channels) -> 4 temporal conv blocks -> mean + max
    pooling over time -> [B, 2 * 2 * width] (1-D convolutions: several times faster on CPU than 2-D)."""

    def __init__(self, width: int = 128, n_mels: int = 64, min_pool: bool = False):
        super().__init__()
        self.min_pool = bool(min_pool)  # also min over time: the noise floor of quiet parts (quality)
        self.mel = LogMel(n_mels, n_fft=1024, hop=320)
        w = width
        self.net = nn.Sequential(_block(n_mels, w, False), _block(w, w, True), _block(w, 2 * w, True),
                                 _block(2 * w, 2 * w, False))
        self.out_dim = (6 if self.min_pool else 4) * w

    def forward(self, mono: Tensor) -> Tensor:
        h = self.net(self.mel(mono))
        return torch.cat([h.mean(2), h.amax(2)] + ([h.amin(2)] if self.min_pool else []), 1)


class _Judge(nn.Module):
    kind = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, **config: Any):
        super().__init__()
        unknown = set(config) - set(self.defaults)
        if unknown:
            raise PrismAudioError(f"{self.kind} judge: unknown config keys {sorted(unknown)}")
        self.config = {**self.defaults, **config}

    def meta(self) -> dict[str, Any]:
        """What `config.json` holds: enough to rebuild the judge before its weights are loaded."""
        return {"judge": self.kind, "config": self.config}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: Path) -> _Judge:
        config = meta.get("config", {})
        if not isinstance(config, dict):
            raise PrismAudioError(f"judge checkpoint {where}: config.json's 'config' is not an object")
        return cls(**config)

    def save(self, out_dir) -> Path:
        return save_model_dir(out_dir, self, self.meta())

    @classmethod
    def load(cls, path) -> _Judge:
        p = Path(path)
        meta, state = read_model_dir(p, "judge")
        if meta.get("judge") != cls.kind:
            raise PrismAudioError(f"{p} holds a '{meta.get('judge')}' judge, not '{cls.kind}'")
        return _build(cls, meta, state, p)


def _build(cls: type[_Judge], meta: dict[str, Any], state: dict[str, Tensor], where: Path) -> _Judge:
    return load_state_into(cls.from_meta(meta, where), state, where, "judge").eval()


class SemanticJudge(_Judge):
    kind = "semantic"
    defaults: ClassVar[dict[str, Any]] = {"width": 128, "embed_dim": 128, "text_dim": 384, "n_classes": None,
                "text_encoder": {"name": "minilm"}}  # n_classes None: len(classes)

    def __init__(self, classes: Sequence[str], **config: Any):
        super().__init__(**config)
        self.classes = tuple(str(n) for n in classes)  # the class head's order
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise PrismAudioError(f"semantic judge: classes must be distinct names, got {list(self.classes)}")
        c = self.config
        if c["n_classes"] is None:
            c["n_classes"] = len(self.classes)
        if int(c["n_classes"]) != len(self.classes):
            raise PrismAudioError(f"semantic judge: n_classes {c['n_classes']} but {len(self.classes)} class names")
        self.trunk = AudioTrunk(c["width"])
        self.audio_proj = nn.Linear(self.trunk.out_dim, c["embed_dim"])
        self.text_proj = nn.Sequential(nn.Linear(c["text_dim"], 256), nn.GELU(), nn.Linear(256, c["embed_dim"]))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.class_head = nn.Linear(self.trunk.out_dim, c["n_classes"])
        self._text: list = []  # the frozen text encoder, outside the state dict
        self._text_cache: dict[str, Tensor] = {}

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "classes": list(self.classes)}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], where: Path) -> SemanticJudge:
        classes, config = meta.get("classes"), meta.get("config", {})
        if not isinstance(classes, list) or not classes:
            raise PrismAudioError(f"semantic judge {where}: config.json lists no classes")
        if not isinstance(config, dict):
            raise PrismAudioError(f"judge checkpoint {where}: config.json's 'config' is not an object")
        return cls(classes, **config)

    def text_features(self, texts: list[str]) -> Tensor:
        """Mean-pooled frozen MiniLM token states [B, 384] (cached per text)."""
        if isinstance(texts, str):
            texts = [texts]
        todo = sorted({t for t in texts if t not in self._text_cache})
        if todo:
            if not self._text:
                from ..encoders import build_encoder

                self._text.append(build_encoder(dict(self.config["text_encoder"])))
            for i in range(0, len(todo), 128):
                hid, lens = self._text[0].encode_text(todo[i:i + 128])
                pooled = hid.float().sum(1) / lens.clamp(min=1)[:, None].float()
                self._text_cache.update(zip(todo[i:i + 128], pooled))
        return torch.stack([self._text_cache[t] for t in texts]) if texts else torch.zeros(0, self.config["text_dim"])

    def project_text(self, feats: Tensor) -> Tensor:
        return F.normalize(self.text_proj(feats), dim=-1)

    def embed_text(self, texts: list[str]) -> Tensor:
        return self.project_text(self.text_features(texts))

    def embed_mono(self, mono: Tensor) -> tuple[Tensor, Tensor]:
        """[B, S] mono 16 kHz -> (normalised joint embedding [B, D], class logits [B, C])."""
        h = self.trunk(mono)
        return F.normalize(self.audio_proj(h), dim=-1), self.class_head(h)

    def embed_audio(self, audio, sr: int) -> Tensor:
        return self.embed_mono(to_mono16k(audio, sr))[0]

    def class_posteriors(self, audio, sr: int) -> Tensor:
        """Independent (multi-label) class probabilities [B, C], order `self.classes`."""
        return torch.sigmoid(self.embed_mono(to_mono16k(audio, sr))[1])

    def score(self, audio, sr: int, texts: list[str]) -> Tensor:
        """Cosine similarity [B] of each clip with its text (CLAP-style, in -1..1)."""
        a = self.embed_audio(audio, sr)
        t = self.embed_text(list(texts))
        if t.shape[0] != a.shape[0]:
            raise PrismAudioError(f"score: {a.shape[0]} clips but {t.shape[0]} texts")
        return (a * t).sum(-1)

    def loss(self, mono: Tensor, text_feats: Tensor, class_targets: Tensor) -> dict[str, Tensor]:
        """Symmetric InfoNCE (clips with the same class set are mutual positives) + multi-label BCE."""
        a, logits_c = self.embed_mono(mono)
        t = self.project_text(text_feats)
        sim = self.logit_scale.clamp(max=math.log(100)).exp() * a @ t.T
        same = (class_targets[:, None, :] == class_targets[None, :, :]).all(-1).float()
        nce = 0.5 * (F.cross_entropy(sim, same / same.sum(1, keepdim=True))
                     + F.cross_entropy(sim.T, same / same.sum(0, keepdim=True).T))
        bce = F.binary_cross_entropy_with_logits(logits_c, class_targets)
        return {"loss": nce + bce, "nce": nce.detach(), "bce": bce.detach()}


def frames_to_tensor(frames: Any, size: int) -> Tensor:
    """[T, H, W, 3] / [B, T, H, W, 3] uint8, or [T, 3, H, W] / [B, T, 3, H, W] float in [0, 1]
    -> [B, T, 3, size, size] float in [0, 1] (area-resized)."""
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
    if x.dim() == 4:
        x = x[None]
    if x.dim() != 5:
        raise PrismAudioError(f"frames must be 4-D or 5-D, got shape {tuple(x.shape)}")
    if x.shape[-1] == 3 and x.shape[2] != 3:
        x = x.permute(0, 1, 4, 2, 3)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    B, T = x.shape[:2]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.adaptive_avg_pool2d(x.reshape(B * T, *x.shape[2:]), size).reshape(B, T, 3, size, size)
    return x


class SyncJudge(_Judge):
    kind = "sync"
    defaults: ClassVar[dict[str, Any]] = {"dim": 32, "size": 16, "n_mels": 48}

    def __init__(self, **config: Any):
        super().__init__(**config)
        d = self.config["dim"]
        self.mel = LogMel(self.config["n_mels"], n_fft=1024, hop=SAMPLE_RATE // FPS)
        self.frame_net = nn.Sequential(nn.Linear(6 * self.config["size"] ** 2, 64), nn.GELU(), nn.Linear(64, d))
        self.video_t = nn.Sequential(nn.Conv1d(d, d, 5, padding=2), nn.GELU(), nn.Conv1d(d, d, 5, padding=2))
        self.audio_t = nn.Sequential(nn.Conv1d(2 * self.config["n_mels"], 2 * d, 5, padding=2), nn.GELU(),
                                     nn.Conv1d(2 * d, d, 5, padding=2), nn.GELU(), nn.Conv1d(d, d, 5, padding=2))
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.lag_bias = nn.Parameter(torch.zeros(N_LAGS))

    def logits(self, frames, audio, sr: int) -> Tensor:
        """[B, 21] offset logits (grid `OFFSET_GRID`) for frames at 25 fps and audio of the same span."""
        v = frames_to_tensor(frames, self.config["size"])
        B, T = v.shape[:2]
        prev = torch.cat([v[:, :1], v[:, :-1]], 1)
        fv = self.frame_net(torch.cat([v, 4 * (v - prev)], 2).reshape(B, T, -1))
        fv = self.video_t(fv.transpose(1, 2))
        mono = to_mono16k(audio, sr)
        if mono.shape[0] != B:
            raise PrismAudioError(f"sync judge: {B} videos but {mono.shape[0]} audio clips")
        m = self.mel(mono)[..., :T]
        m = F.pad(m, (0, T - m.shape[-1]))
        fa = self.audio_t(torch.cat([m, m - F.pad(m, (1, 0))[..., :-1]], 1))
        fv, fa = F.normalize(fv, dim=1), F.normalize(fa, dim=1)
        half, step = N_LAGS // 2, round(GRID_STEP_S * FPS)
        pa = F.pad(fa, (half * step, half * step))
        corr = torch.stack([(fv * pa[..., (k + half) * step:(k + half) * step + T]).sum((1, 2)) / T
                            for k in range(-half, half + 1)], 1)
        return self.scale * corr + self.lag_bias

    def offset(self, frames, audio, sr: int) -> Tensor:
        """Predicted offset in seconds [B] (positive: audio late)."""
        return OFFSET_GRID[self.logits(frames, audio, sr).argmax(-1)]


class QualityJudge(_Judge):
    kind = "quality"
    defaults: ClassVar[dict[str, Any]] = {"width": 64, "min_pool": True}

    def __init__(self, **config: Any):
        super().__init__(**config)
        self.trunk = AudioTrunk(self.config["width"], min_pool=self.config["min_pool"])
        self.head = nn.Linear(self.trunk.out_dim, 2)

    def predict_mono(self, mono: Tensor) -> Tensor:
        """[B, 2] (PQ, PC) in 1..10."""
        return 1.0 + 9.0 * torch.sigmoid(self.head(self.trunk(mono)))

    def score(self, audio, sr: int) -> dict[str, Tensor]:
        """{"PQ": [B], "PC": [B]} in 1..10; CE / CU are not modelled (absent, never invented)."""
        out = self.predict_mono(to_mono16k(audio, sr))
        return {"PQ": out[:, 0], "PC": out[:, 1]}


JUDGES = {j.kind: j for j in (SemanticJudge, SyncJudge, QualityJudge)}


def load_judge(path) -> _Judge:
    """Load any judge directory, dispatching on its config.json."""
    p = Path(path)
    meta, state = read_model_dir(p, "judge")
    kind = meta.get("judge")
    if kind not in JUDGES:
        raise PrismAudioError(f"{path}: unknown judge kind {kind!r}")
    return _build(JUDGES[kind], meta, state, p)
