"""`resample(x, orig_sr, new_sr)`: the resampler of `torchaudio.functional.resample` at its defaults.

Several upstream metric pipelines (Audiobox Aesthetics, MS-CLAP) resample with torchaudio; their scores
depend on its exact filter, so a different (even better) resampler moves the numbers by 1e-3. This is the
documented algorithm, written here because torchaudio is not a dependency:

* rates are reduced by their gcd: ``o = orig // g``, ``n = new // g``;
* windowed-sinc low-pass at ``base = min(o, n) * rolloff`` (rolloff 0.99), ``lowpass_filter_width`` = 6
  zero crossings each side, Hann window ``cos(pi t / (2 w))**2`` ("sinc_interp_hann");
* a bank of ``n`` kernels (one per output phase) of ``2 * width + o`` taps, ``width = ceil(w * o / base)``,
  evaluated at ``t = (k / o - p / n) * base`` for taps k in [-width, width + o) and phases p, clamped to
  [-w, w], scaled by ``base / o``. The functional form computes the kernels in the input's dtype;
  `torchaudio.transforms.Resample` (`resample_transform`) computes them in float64 (with ``p / n`` rounded to
  float32 first) and casts to float32: the two differ by ~4e-6 on full-scale audio, so each upstream gets its own;
* the input is zero-padded by ``width`` on the left and ``width + o`` on the right, convolved with stride ``o``,
  phases interleaved, and cut to ``ceil(n * length / o)`` samples.

Equal rates return the input unchanged (same tensor, as torchaudio does).
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache

import torch
from torch import Tensor

from ...errors import PrismAudioError

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


def _rate(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) <= 0:
        raise PrismAudioError(f"resample: {what} must be a positive integer, got {value!r}")
    return int(value)


@lru_cache(maxsize=16)
def _kernel(orig: int, new: int, dtype: torch.dtype | None, lowpass_filter_width: int,
            rolloff: float) -> tuple[Tensor, int]:
    """Kernel bank [new, 1, 2 * width + orig] for gcd-reduced rates (cached per rate pair and dtype).

    ``dtype=None`` is the transform's construction: float64 taps, float32 phases, float32 result."""
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64 if dtype is None else dtype)[None, None] / orig
    phases = torch.arange(0, -new, -1) / new if dtype is None else torch.arange(0, -new, -1, dtype=dtype) / new
    t = phases.to(torch.float32 if dtype is None else dtype)[:, None, None] + idx
    t *= base
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * (base / orig)
    return (kernels.to(torch.float32) if dtype is None else kernels), width


def resample(x: Tensor, orig_sr: int, new_sr: int, lowpass_filter_width: int = LOWPASS_FILTER_WIDTH,
             rolloff: float = ROLLOFF) -> Tensor:
    """x [..., S] float at `orig_sr` -> [..., ceil(S * new_sr / orig_sr)] at `new_sr`
    (= `torchaudio.functional.resample`)."""
    return _resample(x, orig_sr, new_sr, lowpass_filter_width, rolloff, transform=False)


def resample_transform(x: Tensor, orig_sr: int, new_sr: int, lowpass_filter_width: int = LOWPASS_FILTER_WIDTH,
                       rolloff: float = ROLLOFF) -> Tensor:
    """The same for `torchaudio.transforms.Resample(orig_sr, new_sr)` (float64-built float32 kernels)."""
    return _resample(x, orig_sr, new_sr, lowpass_filter_width, rolloff, transform=True)


def _resample(x: Tensor, orig_sr: int, new_sr: int, lowpass_filter_width: int, rolloff: float,
              transform: bool) -> Tensor:
    if not isinstance(x, Tensor):
        raise PrismAudioError(f"resample: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise PrismAudioError(f"resample: expected floating-point audio, got {x.dtype}")
    orig, new = _rate(orig_sr, "orig_sr"), _rate(new_sr, "new_sr")
    if orig == new:
        return x
    if lowpass_filter_width <= 0:
        raise PrismAudioError(f"resample: lowpass_filter_width must be > 0, got {lowpass_filter_width!r}")
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    kernel, width = _kernel(o, n, None if transform else x.dtype, int(lowpass_filter_width), float(rolloff))
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    length = flat.shape[-1]
    padded = torch.nn.functional.pad(flat, (width, width + o))
    out = torch.nn.functional.conv1d(padded[:, None], kernel.to(x.device, x.dtype), stride=o)  # [B, n, frames]
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)
    target = math.ceil(n * length / o)
    return out[..., :target].reshape(*shape[:-1], -1)
