"""The ``temporal`` reward: audio-video synchrony from a desync backend.

``reward = (2 - |offset|) / 4`` per sample (the official PrismAudio form; 0.5 in sync, 0 at the
2 s edge of the grid), on the video frames ``ctx.video_frames[i]`` ([T, 3, H, W] at 25 fps), else
the video ``ctx.video_paths[i]`` read at 25 fps. Without either the reward raises
`PrismAudioError` (NaN for the batch in `compute_rewards`).

``|offset|``:

* Offline judge (default, ``judge_sync``): the EXPECTED |offset| under the softmax posterior over
  the 21-step grid, averaged over the av-benchmark windows (first / last 4.8 s). The argmax is
  piecewise constant (most policy samples would tie at the same grid value); the expectation moves
  smoothly with the judge's confidence, so GRPO gets an informative, graded signal. It equals the
  argmax value when the judge is certain.
* Other backends (``synchformer_desync``): the official argmax |offset| (`desync`: mean over the
  backend's windows), unless ``configure(..., expected=True)`` asks for the expectation (which
  needs a backend with `logits`). Deviation: the official reward uses the first 9 s only and its own
  frame pipeline; here the backend's own windows are used (``official_temporal`` in
  `official_rewards` is the official form).

Silent clips and samples without video are NaN.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from ..rewards import RewardContext, register_reward
from .judges import FPS
from .offline import BackendSlot, expected_abs_offset, nan_where, silent_mask

_SLOT = BackendSlot("desync", "judge_sync")
_OPTS: dict[str, Any] = {"expected": None}


def configure(backend: Any = None, expected: bool | None = None, **params: Any) -> None:
    """Select the desync backend (default judge_sync) and whether |offset| is the posterior
    expectation (default: True for the offline judge, False otherwise)."""
    _SLOT.configure(backend, **params)
    _OPTS["expected"] = expected


def use_expected() -> bool:
    return _SLOT.name == "judge_sync" if _OPTS["expected"] is None else bool(_OPTS["expected"])


def frame_size(backend: Any) -> int:
    return int(getattr(backend, "frame_size", getattr(backend, "size", 224)))


def frames_from_ctx(ctx: RewardContext, batch: int, size: int) -> list[Tensor | None]:
    """Per-sample frames [T, 3, H, W] (25 fps): ctx.video_frames, else read from ctx.video_paths."""
    if ctx.video_frames is not None:
        return list(ctx.video_frames)
    if ctx.video_paths is not None:
        from ..io.video import read_frames

        return [read_frames(p, FPS, size) if p else None for p in ctx.video_paths]
    raise PrismAudioError("the temporal reward needs the video: ctx.video_frames or ctx.video_paths")


def abs_offset(backend: Any, frames: Tensor, audio: Tensor, sr: int, expected: bool) -> Tensor:
    """[B] |offset| in seconds for frames [B, T, 3, H, W] and audio [B, C, S]."""
    if expected:
        if not hasattr(backend, "logits"):
            raise PrismAudioError("the expected |offset| needs a desync backend with logits()")
        return expected_abs_offset(torch.as_tensor(backend.logits(frames, audio, sr)))
    return torch.as_tensor(backend.desync(frames, audio, sr))


@register_reward("temporal")
def temporal_reward(audio: Tensor, sample_rate: int, ctx: RewardContext) -> Tensor:
    batch = audio.shape[0]
    backend = _SLOT.get()
    frames = frames_from_ctx(ctx, batch, frame_size(backend))
    bad = silent_mask(audio) | torch.tensor([f is None for f in frames])
    out = torch.full((batch,), float("nan"))
    idx = (~bad).nonzero().flatten().tolist()
    expected = use_expected()
    with torch.no_grad():
        shapes = {tuple(frames[i].shape) for i in idx}
        groups = [idx] if len(shapes) == 1 else [[i] for i in idx]
        for g in groups:
            fr = torch.stack([torch.as_tensor(frames[i]) for i in g])
            off = abs_offset(backend, fr, audio[g], sample_rate, expected)
            out[g] = (2.0 - off.detach().cpu().float().reshape(-1)) / 4.0
    return nan_where(out, bad)
