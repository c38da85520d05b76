"""Spatial measures on stereo audio.

`gcc_phat_itd` estimates the interaural time difference with the generalized cross-correlation
with phase transform (GCC-PHAT). Sign convention: the result is POSITIVE when the LEFT channel
leads (the right channel is a delayed copy, i.e. the source is on the left) and negative when the
right channel leads.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_FLOOR = 1e-3


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def gcc_phat_itd(left: Tensor | np.ndarray, right: Tensor | np.ndarray, sample_rate: int,
                 max_delay_s: float = 1e-3, fft_size: int | None = None) -> float:
    """ITD in seconds (> 0: left leads) from the GCC-PHAT peak within +-max_delay_s, refined to
    sub-sample precision by parabolic interpolation. Silence gives 0.0."""
    l, r = _as_numpy(left), _as_numpy(right)
    n = min(len(l), len(r))
    l, r = l[:n], r[:n]
    nfft = fft_size or 1 << max(1, (2 * n - 1).bit_length())
    cross = np.fft.rfft(r, nfft) * np.conj(np.fft.rfft(l, nfft))  # peaks at +d when r(t) = l(t - d)
    mag = np.abs(cross)
    if mag.max() <= 0:
        return 0.0
    # Regularised PHAT: bins more than 60 dB below the strongest keep their (tiny) magnitude instead
    # of unit weight, so empty bands of a band-limited source (or 16-bit dither) add no random phase.
    cc = np.fft.irfft(cross / np.maximum(mag, _FLOOR * mag.max()), nfft)
    m = max(1, min(int(round(max_delay_s * sample_rate)), nfft // 2 - 1))
    win = np.concatenate([cc[-m:], cc[: m + 1]])  # lags -m..m
    k = int(np.argmax(win))
    shift = 0.0
    if 0 < k < len(win) - 1:
        a, b, c = win[k - 1], win[k], win[k + 1]
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den != 0 else 0.0
    return float((k - m + shift) / sample_rate)
