"""Placing refine's object stem where its box is (ThinkSound §4.3 leaves the stem's position to the model).

The ROI stage encodes the video on the *crop* of the box, so the network sees the object centred and
cannot hear where the box sits in the frame: measured on the shipped model, the refined stem came out
on the box's side for 71 % of off-centre objects. The box itself says where the object is, so the stem
is re-panned as a mixing engineer would: its own inter-channel delay removed (an aligned downmix, no
comb filter), then the delay and a constant-power level difference of a source at the box centre's
azimuth applied again. Timbre and timing stay the model's; only the two stereo cues change.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The largest interaural time difference of a human head (Woodworth's spherical head, radius 8.75 cm,
# c = 343 m/s, a source at 90 degrees: r / c * (pi / 2 + 1)).
HEAD_ITD_MAX_S = 0.0875 / 343.0 * (math.pi / 2 + 1)


def _delay(x: Tensor, seconds: Tensor | float, sample_rate: int) -> Tensor:
    """x [..., S] delayed by `seconds` (fractional, may be negative) in the frequency domain; zero-padded
    so the shift does not wrap around."""
    n = x.shape[-1]
    pad = int(math.ceil(abs(float(seconds)) * sample_rate)) + 8
    size = 1 << (n + 2 * pad - 1).bit_length()
    spec = torch.fft.rfft(torch.nn.functional.pad(x, (pad, pad)), size)
    w = 2 * math.pi * torch.fft.rfftfreq(size, 1.0 / sample_rate, dtype=torch.float64)
    phase = torch.polar(torch.ones_like(w), -w * float(seconds)).to(spec.dtype)
    return torch.fft.irfft(spec * phase, size)[..., pad: pad + n].to(x.dtype)


def place_stem(stem: Tensor, x: float, sample_rate: int, itd_max_s: float = HEAD_ITD_MAX_S) -> Tensor:
    """A stereo stem [2, S] (or [K, 2, S]) moved to horizontal position `x` in [-1, 1] (-1 = the
    frame's left edge): ITD = -x * itd_max_s (> 0: the left channel leads) and constant-power gains
    (cos, sin) of (x + 1) pi / 4, scaled so a centred source keeps its level."""
    from ..metrics.spatial import gcc_phat_itd

    if stem.dim() == 3:
        return torch.stack([place_stem(s, x, sample_rate, itd_max_s) for s in stem])
    if stem.dim() != 2 or stem.shape[0] != 2:
        raise ValueError(f"place_stem needs a [2, S] stereo stem, got shape {tuple(stem.shape)}")
    x = max(-1.0, min(1.0, float(x)))
    own = gcc_phat_itd(stem[0], stem[1], sample_rate)  # > 0: right = left delayed by `own`
    mid = 0.5 * (_delay(stem[0], own / 2, sample_rate) + _delay(stem[1], -own / 2, sample_rate))
    itd = -x * itd_max_s
    angle = (x + 1) * math.pi / 4
    left = math.sqrt(2) * math.cos(angle) * _delay(mid, -itd / 2, sample_rate)
    right = math.sqrt(2) * math.sin(angle) * _delay(mid, itd / 2, sample_rate)
    return torch.stack([left, right])
