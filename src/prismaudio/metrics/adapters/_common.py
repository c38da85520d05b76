"""Small helpers shared by the CLAP / Aesthetics / VGGish / PaSST adapters (input checks, weight files)."""

from __future__ import annotations

import numbers
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import PrismAudioError
from ...io.audio import resample
from ...io.weights import read_state_dict
from .resample import resample as torchaudio_resample


def _read_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError)


READ_ERRORS = _read_errors()


# Backends whose upstream resamples with torchaudio.functional.resample (per their fixtures' facts.md): their
# audio is resampled with `resample.resample` (torchaudio-equal), every channel first, then averaged, as upstream.
# The others keep `io.audio.resample` (mix down first), pending facts on their upstream resampler.
TORCHAUDIO_RESAMPLE = frozenset({"audiobox_aesthetics"})


def mono_at(audio: Any, sr: int, target_sr: int, backend: str) -> Tensor:
    """[B, C, S] or [C, S] float audio at `sr` -> mono [B, S'] float32 at `target_sr`.

    Backends in `TORCHAUDIO_RESAMPLE` resample each channel with the torchaudio-equal resampler, then average
    (upstream's order); the others average first, then use the project resampler."""
    if not isinstance(audio, Tensor):
        raise PrismAudioError(f"backend {backend!r} expects audio as a torch.Tensor [B, C, S] or [C, S]")
    if audio.ndim == 2:
        audio = audio.unsqueeze(0)
    if audio.ndim != 3:
        raise PrismAudioError(f"backend {backend!r} expects audio [B, C, S] or [C, S], got {tuple(audio.shape)}")
    if audio.shape[-1] == 0:
        raise PrismAudioError(f"backend {backend!r} got empty audio (0 samples)")
    if isinstance(sr, bool) or not isinstance(sr, numbers.Integral) or sr <= 0:
        raise PrismAudioError(f"backend {backend!r}: sample rate must be a positive integer, got {sr!r}")
    sr = int(sr)
    if backend in TORCHAUDIO_RESAMPLE:
        return torchaudio_resample(audio.float(), sr, target_sr).mean(dim=1)
    x = audio.float().mean(dim=1)
    return resample(x, sr, target_sr) if sr != target_sr else x


def require_path(path: Any, backend: str, expected: str) -> Path:
    """A missing / empty path is one clear error naming what is expected (nothing is ever downloaded)."""
    if path is None or path == "":
        raise PrismAudioError(f"backend {backend!r} needs path=: {expected}; weights are never downloaded")
    p = Path(path).expanduser()
    if not p.exists():
        raise PrismAudioError(f"backend {backend!r}: {p} does not exist; expected {expected}")
    return p


def load_state_dict(path: Path, backend: str, expected: str) -> dict[str, Tensor]:
    """Tensors from a `.safetensors` file or a torch checkpoint (loaded with `weights_only=True`).

    A directory is searched for `model.safetensors`, then the single `*.safetensors` / `*.pt` / `*.pth` in it.
    Torch checkpoints wrapped as ``{"state_dict": ...}`` / ``{"model": ...}`` are unwrapped.
    """
    if path.is_dir():
        cands = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else sorted(
            [*path.glob("*.safetensors"), *path.glob("*.pt"), *path.glob("*.pth"), *path.glob("*.ckpt")])
        if len(cands) != 1:
            raise PrismAudioError(f"backend {backend!r}: need exactly one weight file in {path}; expected {expected}")
        path = cands[0]
    try:
        return read_state_dict(path, "weights")
    except PrismAudioError as e:  # corrupt / foreign file: one user-facing error
        raise PrismAudioError(f"backend {backend!r}: {e}; expected {expected}") from None


def load_strict(module: torch.nn.Module, sd: dict[str, Tensor], backend: str, where: Any) -> None:
    """Strict load with one readable error listing the first missing / unexpected keys and shape mismatches."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise PrismAudioError(
            f"backend {backend!r}: weights in {where} do not match the model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
            f"{', shape mismatch ' + str(shapes[:3]) if shapes else ''}"
        )
    module.load_state_dict(sd, strict=True)
