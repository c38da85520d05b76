"""Torch datasets: raw clips (decode video + audio) and cached features (for training).

`ClipDataset` decodes each clip's frames at every requested (fps, size) in one PyAV pass and its
reference audio (the row's `audio` file, else the video's own track), resampled to the model rate
and zero-padded / cropped to a fixed duration. `FeatureDataset` reads the per-clip safetensors files
written by `prismaudio.data.extract`. Bad files raise `PrismAudioError` from `__getitem__`; callers
(the extractor, a tolerant collate) skip the clip.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import PrismAudioError
from ..io.audio import load_audio
from ..io.video import FrameSpec, as_frame_spec, probe_video, read_frames_multi
from .manifest import ManifestRow

PathLike = str | os.PathLike

FEATURE_SUFFIX = ".safetensors"
FEATURE_FORMAT = "prismaudio-features"
FEATURE_VERSION = "2"  # 2: the "multi" text is `CoT.render("multi")`, as training and generation use
FEATURE_TENSORS = (
    "video_features", "sync_features", "text_features", "text_length", "latent_mean", "latent_std", "latent",
)


def fit_length(audio: Tensor, length: int) -> Tensor:
    """Crop or zero-pad the last axis to exactly `length` samples."""
    n = audio.shape[-1]
    if n > length:
        return audio[..., :length].contiguous()
    if n < length:
        return F.pad(audio, (0, length - n))
    return audio


class ClipDataset(Dataset):
    """Items: {id, frames: [T_i, 3, s_i, s_i] per spec, audio [channels, S], audio_length, duration,
    caption, cot, cot_monolithic, split, subset}.

    `duration` fixes every clip's length (S = round(duration * sample_rate), frames T_i =
    int(fps_i * duration)); `None` uses the row's `duration`, else the video's. Audio shorter than
    that is zero-padded (`audio_length` = real samples kept), longer audio is cropped.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRow],
        sample_rate: int,
        duration: float | None,
        video_specs: Sequence[FrameSpec | tuple],
        channels: int = 2,
        max_duration: float | None = None,
    ) -> None:
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise PrismAudioError(f"sample rate must be a positive integer, got {sample_rate}")
        if duration is not None and not (duration > 0 and math.isfinite(duration)):
            raise PrismAudioError(f"duration must be > 0 s, got {duration}")
        self.rows = list(rows)
        self.sample_rate = int(sample_rate)
        self.duration = None if duration is None else float(duration)
        self.video_specs = [as_frame_spec(sp) for sp in video_specs]
        self.channels = channels
        self.max_duration = max_duration

    def __len__(self) -> int:
        return len(self.rows)

    def clip_duration(self, row: ManifestRow) -> float:
        d = self.duration if self.duration is not None else row.duration
        if d is None:
            d = probe_video(row.video).duration
        if not d > 0:
            raise PrismAudioError(f"clip {row.id!r}: duration must be > 0 s, got {d:g}")
        if self.max_duration is not None and d > self.max_duration:
            raise PrismAudioError(f"clip {row.id!r}: duration {d:g} s exceeds the maximum of {self.max_duration:g} s")
        return float(d)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        try:
            duration = self.clip_duration(row)
            frames = read_frames_multi(row.video, self.video_specs, duration=duration) if self.video_specs else []
            audio, _ = load_audio(row.audio if row.audio is not None else row.video, self.sample_rate, self.channels)
        except PrismAudioError as e:
            raise PrismAudioError(f"clip {row.id!r}: {e}") from None
        length = round(duration * self.sample_rate)
        real = min(audio.shape[-1], length)
        return {
            "id": row.id,
            "frames": frames,
            "audio": fit_length(audio, length),
            "audio_length": real,
            "duration": duration,
            "caption": row.caption,
            "cot": row.cot,
            "cot_monolithic": row.cot_monolithic,
            "split": row.split,
            "subset": row.subset,
        }


def feature_path(cache_dir: PathLike, clip_id: str) -> Path:
    return Path(cache_dir) / f"{clip_id}{FEATURE_SUFFIX}"


def read_feature_meta(path: PathLike) -> dict[str, str]:
    """The metadata of one feature file without reading its tensors (cheap: lets training check a
    whole extracted set before it starts)."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise PrismAudioError(f"corrupt feature file {p}: {e}") from None
    if meta.get("format") != FEATURE_FORMAT or meta.get("version") != FEATURE_VERSION:
        raise PrismAudioError(f"{p} is not a PrismAudio feature file (format version {FEATURE_VERSION})")
    return meta


def list_feature_ids(cache_dir: PathLike) -> list[str]:
    """Clip ids of every `<id>.safetensors` in `cache_dir`, sorted (hidden temp files ignored)."""
    d = Path(cache_dir)
    if not d.is_dir():
        raise PrismAudioError(f"feature directory not found: {d}")
    return sorted(p.name[: -len(FEATURE_SUFFIX)] for p in d.iterdir()
                  if p.name.endswith(FEATURE_SUFFIX) and not p.name.startswith(".") and p.is_file())


def read_feature_file(path: PathLike) -> tuple[dict[str, Tensor], dict[str, str]]:
    """(tensors, metadata) of one cache file; a missing, truncated or foreign file raises `PrismAudioError`."""
    p = Path(path)
    if not p.is_file():
        raise PrismAudioError(f"feature file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            # clone: never keep views of the mapped file (it may be truncated / rewritten under us)
            tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise PrismAudioError(f"corrupt feature file {p}: {e}") from None
    if meta.get("format") != FEATURE_FORMAT or meta.get("version") != FEATURE_VERSION:
        raise PrismAudioError(f"{p} is not a PrismAudio feature file (format version {FEATURE_VERSION})")
    missing = [k for k in FEATURE_TENSORS if k not in tensors]
    if missing:
        raise PrismAudioError(f"feature file {p} lacks tensor(s): {', '.join(missing)}")
    return tensors, meta


class FeatureDataset(Dataset):
    """Cached features for training: item = the file's tensors + `id`, `duration`, `text`, `meta`.

    `ids=None` takes every `<id>.safetensors` in `cache_dir` (sorted; hidden temp files ignored).
    """

    def __init__(self, cache_dir: PathLike, ids: Sequence[str] | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        if not self.cache_dir.is_dir():
            raise PrismAudioError(f"feature cache directory not found: {self.cache_dir}")
        self.ids = list(list_feature_ids(self.cache_dir) if ids is None else ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip_id = self.ids[index]
        tensors, meta = read_feature_file(feature_path(self.cache_dir, clip_id))
        item: dict[str, Any] = dict(tensors)
        item["id"] = clip_id
        item["duration"] = float(meta.get("duration", "nan"))
        item["text"] = meta.get("text", "")
        item["meta"] = meta
        try:
            item["cot"] = json.loads(meta["cot"]) if meta.get("cot") else None
        except ValueError:
            item["cot"] = None
        return item
