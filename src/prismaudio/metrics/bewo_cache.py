"""Cache of BEWO GCC-PHAT ITD tracks (`spatial.itd_track_bewo`), keyed by audio content.

Every system an evaluation compares is measured against the same reference folder, so each
reference file's 100-value track is needed once per run -- and, with a cache directory, once ever
for a given protocol version: `gcc_mse_bewo` over S systems then costs S + 1 tracks per clip
instead of 2 S. The key is a SHA-256 of the samples (float32 bytes, shape, sample rate), the frame
stride and `BEWO_PROTOCOL_VERSION`, so a changed file, stride or protocol never hits a stale entry.
On disk each track is one small JSON file (exact float64 values via repr, NaN as null), written to
a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import PrismAudioError

# Bump when anything that changes a track's values changes (window placement, FFT size, lags, the
# NaN rule for silent frames): old cache entries are then simply never looked up again.
BEWO_PROTOCOL_VERSION = "bewo-gcc-v1"


def audio_key(audio, sr: int, frame_stride: int = 1) -> str:
    """Content hash of one clip for the track cache (hex SHA-256)."""
    x = audio if isinstance(audio, Tensor) else torch.as_tensor(np.asarray(audio))
    x = x.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256()
    h.update(f"{BEWO_PROTOCOL_VERSION}|sr={int(sr)}|stride={int(frame_stride)}|shape={tuple(x.shape)}|".encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()


@dataclass
class BewoTrackCache:
    """In-memory (and, with `directory`, on-disk) store of ITD tracks; `hits` / `misses` count lookups."""

    directory: str | os.PathLike | None = None
    hits: int = 0
    misses: int = 0
    _mem: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.directory is not None:
            d = Path(self.directory)
            if d.exists() and not d.is_dir():
                raise PrismAudioError(f"BEWO cache path is not a directory: {d}")
            d.mkdir(parents=True, exist_ok=True)
            self.directory = d

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else Path(self.directory) / f"{key}.json"

    def _read(self, key: str) -> Tensor | None:
        p = self._path(key)
        if p is None or not p.is_file():
            return None
        try:
            doc = json.loads(p.read_text())
            vals = doc["track"]
            if doc.get("protocol") != BEWO_PROTOCOL_VERSION or len(vals) != 100:
                return None
            return torch.tensor([float("nan") if v is None else float(v) for v in vals], dtype=torch.float64)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable or foreign file: recompute (and overwrite it)

    def _write(self, key: str, track: Tensor) -> None:
        p = self._path(key)
        if p is None:
            return
        vals = [None if math.isnan(v) else v for v in track.tolist()]
        text = json.dumps({"protocol": BEWO_PROTOCOL_VERSION, "track": vals})
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=p.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def track(self, audio, sr: int, frame_stride: int = 1) -> Tensor:
        """`itd_track_bewo(audio, sr, frame_stride)`, computed at most once per content."""
        from .spatial import itd_track_bewo

        key = audio_key(audio, sr, frame_stride)
        t = self._mem.get(key)
        if t is None:
            t = self._read(key)
            if t is not None:
                self._mem[key] = t
        if t is not None:
            self.hits += 1
            return t.clone()
        self.misses += 1
        t = itd_track_bewo(audio, sr, frame_stride)
        self._mem[key] = t
        self._write(key, t)
        return t.clone()
