"""Built-in light, trainable video and sync encoders for the `mini` / `tiny` presets.

They stand in for VideoPrism and Synchformer where those cannot be loaded (offline machines, CPU):
small enough (< 1 M parameters for `mini`) to train jointly with the DiT on the procedural corpus and
to run a 4 s clip in a few tens of milliseconds on a CPU. Both emit one token per input frame.

* `light_video` (~8 fps): what is on screen and where. A small CNN per frame keeps a coarse 2x2
  spatial layout (left/right matters for stereo), then a light temporal conv mixes neighbours.
* `light_sync` (25 fps): *when* things happen. Each frame sees itself plus its difference to the
  previous frame, with explicit motion-energy statistics (global and per quadrant) added, and only
  local temporal convs (receptive field +-3 frames), so an onset stays on its own frame.

Speed: on a CPU, full-resolution element-wise passes cost as much as the convolutions, so each
encoder touches the full-size frames exactly once (a 4x4 patchify conv with the pixel normalisation
folded into its weights; the sync encoder adds one 4x4 average pool) and does everything else,
frame differences included, at 1/16 of the pixels. Differencing after the (linear) stem equals a
stem on the difference image.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Encoder, positive_float, positive_int, register_encoder


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _patch(size: int) -> int:
    return 4 if size >= 16 else 1


class PatchStem(nn.Module):
    """Patchify conv on [0, 1] pixels, computed as if on (x - 0.5) * 4 (folded, so no extra pass)."""

    def __init__(self, out_ch: int, patch: int):
        super().__init__()
        self.conv = nn.Conv2d(3, out_ch, patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        w = self.conv.weight * 4.0
        b = self.conv.bias - 0.5 * w.sum(dim=(1, 2, 3))
        return F.conv2d(x, w, b, stride=self.conv.stride)


class FrameTrunk(nn.Module):
    """Stem features [N, width, s, s] -> norm/act, stride-2 convs down to <= 4x4, a 2x2 grid -> [N, out_dim]."""

    def __init__(self, width: int, side: int, out_dim: int):
        super().__init__()
        layers: list[nn.Module] = [_norm(width), nn.SiLU()]
        ch = width
        while side > 4:
            layers += [nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1), _norm(2 * ch), nn.SiLU()]
            ch, side = 2 * ch, (side + 1) // 2
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.proj = nn.Linear(4 * ch, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.pool(self.body(x)).flatten(1))


class TemporalBlock(nn.Module):
    """Pre-norm residual Conv1d over time (padding keeps the length; dilation widens the view)."""

    def __init__(self, dim: int, dilation: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, 3, padding=dilation, dilation=dilation)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D]
        return x + self.act(self.conv(self.norm(x).transpose(1, 2))).transpose(1, 2)


def _time_diff(x: Tensor) -> Tensor:
    """[B, T, ...] -> x_t - x_{t-1}, zero at t = 0 (nothing came before the first frame)."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], dim=1)


class _LightBase(Encoder):
    # The rule the shipped `mini` model was trained with (the latest frame at or before k / fps);
    # a retrained default can move to the "ffmpeg" rule like every other encoder.
    frame_rule: ClassVar[str] = "floor"

    def __init__(self, name: str, dim: int, fps: float, size: int, width: int):
        super().__init__()
        self.output_dim = positive_int("dim", dim, name)
        self.fps = positive_float("fps", fps, name)
        self.size = positive_int("size", size, name)
        self.width = positive_int("width", width, name)
        self.patch = _patch(self.size)
        self.trainable = True


@register_encoder("light_video")
class LightVideoEncoder(_LightBase):
    """Frames at ~8 fps -> one `dim`-d token per frame (per-frame CNN + 1 temporal conv block)."""

    modality = "video"

    def __init__(self, dim: int = 128, fps: float = 8.0, size: int = 64, width: int = 32):
        super().__init__("light_video", dim, fps, size, width)
        self.stem = PatchStem(width, self.patch)
        self.trunk = FrameTrunk(width, size // self.patch, dim)
        self.temporal = TemporalBlock(dim)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, frames: Tensor) -> Tensor:
        frames = self.check_frames(frames)
        b, t = frames.shape[:2]
        tokens = self.trunk(self.stem(frames.flatten(0, 1))).view(b, t, -1)
        return self.out_norm(self.temporal(tokens))


@register_encoder("light_sync")
class LightSyncEncoder(_LightBase):
    """Frames at 25 fps -> one `dim`-d token per frame from appearance + frame differences.

    The first frame's difference is zero, so the start of the clip is not mistaken for an onset.
    """

    modality = "sync"
    N_MOTION = 10  # mean |diff| and mean signed diff: whole frame + 4 quadrants

    def __init__(self, dim: int = 128, fps: float = 25.0, size: int = 64, width: int = 16):
        super().__init__("light_sync", dim, fps, size, width)
        self.stem = PatchStem(2 * width, self.patch)  # first half: appearance, second: difference
        self.trunk = FrameTrunk(width, size // self.patch, dim)
        self.motion = nn.Sequential(nn.Linear(self.N_MOTION, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.temporal = nn.Sequential(TemporalBlock(dim, 1), TemporalBlock(dim, 2))
        self.out_norm = nn.LayerNorm(dim)

    @staticmethod
    def motion_stats(diff: Tensor) -> Tensor:
        """[N, 3, s, s] frame differences -> [N, 10] motion energy (log-compressed)."""
        q = F.adaptive_avg_pool2d(diff.abs().mean(1, keepdim=True), 2).flatten(1)  # per quadrant
        s = F.adaptive_avg_pool2d(diff.mean(1, keepdim=True), 2).flatten(1)  # signed: brighter/darker
        energy = torch.cat([q.mean(1, keepdim=True), q], dim=1)
        signed = torch.cat([s.mean(1, keepdim=True), s], dim=1)
        return torch.cat([torch.log1p(100.0 * energy), torch.sign(signed) * torch.log1p(100.0 * signed.abs())], dim=1)

    def forward(self, frames: Tensor) -> Tensor:
        frames = self.check_frames(frames)
        b, t = frames.shape[:2]
        flat = frames.flatten(0, 1)
        appearance, change = self.stem(flat).chunk(2, dim=1)
        change = _time_diff(change.view(b, t, *change.shape[1:])).flatten(0, 1)  # = stem of the difference image
        small = F.avg_pool2d(flat, self.patch) if self.patch > 1 else flat
        motion = _time_diff(small.view(b, t, *small.shape[1:])).flatten(0, 1)
        tokens = self.trunk(appearance + change) + self.motion(self.motion_stats(motion))
        return self.out_norm(self.temporal(tokens.view(b, t, -1)))
