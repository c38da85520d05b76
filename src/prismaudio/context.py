"""Audio-context conditioning (issue 18, ThinkSound §4.2-4.4): existing audio that a generation
continues, inpaints or edits.

An `AudioContext` says, per sample, where the output must equal the given audio (`keep`) and where
the model may look at it (`visible`). Inside the network it becomes the condition
`ctx = concat(latents * visible, visible, keep)` [B, C + 2, N] at latent resolution (see
`context_condition`); after decoding, `splice` copies the kept samples back with a linear (equal-gain)
crossfade at every keep/generate boundary, so the kept audio is sample-exact away from the seams.

Latent frames: frame j covers samples [j * hop, (j + 1) * hop). A frame is `keep` iff ALL its
samples are keep (it never forces generated audio into a region that must be regenerated) and
`visible` iff ANY sample is visible (the model sees everything the user showed it).

The context latents are the posterior mean of the WHOLE context audio, masked per frame (training
masks the cached latents the same way), so a visible frame next to a hidden region carries a little
of it through the encoder's receptive field, in training and inference alike.

Hard constraint (`sampling.replace_known`, on by default: `generate(..., context_replace=True)`):
at every step the kept frames of x_t are replaced by the context latents' own flow path. Measured
on the tiny preset trained 400 steps with the context tasks (24 clips of 1 s, inpainting frames
[0.35, 0.65) of each, 24 steps, CFG 5; latent MSE against the clip's true latents, whose variance
is 0.54): conditioned only, the kept frames come back with MSE 0.042 (0.94 without any context),
the hidden region 1.030 and the seam jump |z_a - z_a-1| at 0.95 x a typical frame step; with the
replacement the kept frames are exact (0.000), hidden 1.018, seam 0.93. Trained 1500 steps
(over-fitting those clips): conditioned only 0.119 / 1.305 / 1.22, with the replacement 0.000 /
1.291 / 1.22. Neither tiny run inpaints the hidden region better than chance (two independent
draws give ~2 x 0.54), so these runs say nothing about the conditioning's benefit there; the
replacement is exact on the kept frames and never worse elsewhere, costs nothing and makes the
decoded audio on both sides of each crossfade agree, so it stays on; a well-trained model can
turn it off to let the network also smooth the kept side of a seam.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import PrismAudioError

__all__ = [
    "AudioContext",
    "ContextLatents",
    "frame_masks",
    "context_condition",
    "splice",
    "crossfade_gain",
    "inpaint_context",
    "extend_context",
    "edit_context",
]


@dataclass
class AudioContext:
    """Existing audio that a generation continues / edits."""

    audio: Tensor  # [2, S] float32 at the model's sample rate, S = the clip's samples
    keep: Tensor  # [S] bool: True where the output must equal `audio` (copied, sample-exact)
    # [S] bool: where the model SEES the audio; None = same as keep. inpaint/extend: visible = keep
    # (the region is hidden); add/remove/refine: visible everywhere, keep outside the region.
    visible: Tensor | None = None
    crossfade_s: float = 0.02  # linear (equal-gain) crossfade at each keep/generate boundary

    @property
    def visible_mask(self) -> Tensor:
        return self.keep if self.visible is None else self.visible

    def validate(self, sample_rate: int, num_samples: int, channels: int = 2) -> None:
        """One-line `PrismAudioError` when the context does not fit a clip of `num_samples` samples
        at `sample_rate` Hz (the audio is assumed to be at that rate: say so when it is not)."""
        a = self.audio
        if not isinstance(a, Tensor) or a.dim() != 2:
            shape = tuple(a.shape) if isinstance(a, Tensor) else type(a).__name__
            raise PrismAudioError(f"context audio must be a [channels, samples] tensor, got {shape}")
        if a.shape[0] != channels:
            raise PrismAudioError(f"context audio has {a.shape[0]} channel(s), the model makes {channels}")
        if not a.is_floating_point():
            raise PrismAudioError(f"context audio must be floating point in [-1, 1], got {a.dtype}")
        if a.shape[1] != num_samples:
            raise PrismAudioError(
                f"context audio has {a.shape[1]} samples ({a.shape[1] / sample_rate:.3f} s at {sample_rate} Hz), "
                f"the clip has {num_samples} ({num_samples / sample_rate:.3f} s): resample it to {sample_rate} Hz "
                "and trim or pad it to the clip")
        if not bool(torch.isfinite(a).all()):
            raise PrismAudioError("context audio contains NaN or infinite samples")
        for name, m in (("keep", self.keep), ("visible", self.visible)):
            if m is None:
                continue
            if not isinstance(m, Tensor) or m.dtype != torch.bool or m.shape != (num_samples,):
                shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                dtype = m.dtype if isinstance(m, Tensor) else ""
                raise PrismAudioError(f"context {name} mask must be a bool [{num_samples}] tensor, got {dtype} {shape}")
        if not (math.isfinite(self.crossfade_s) and self.crossfade_s >= 0):
            raise PrismAudioError(f"context crossfade_s must be a finite number >= 0, got {self.crossfade_s}")
        if bool(self.keep.all()):
            raise PrismAudioError("the context keeps every sample: there is nothing to generate")


# ------------------------------------------------------------------------------ constructors
def _region(sample_rate: int, num_samples: int, start_s: float, end_s: float) -> Tensor:
    if not (math.isfinite(start_s) and math.isfinite(end_s)):
        raise PrismAudioError(f"region {start_s}:{end_s} is not finite")
    duration = num_samples / sample_rate
    if end_s <= start_s:
        raise PrismAudioError(f"region {start_s:g}:{end_s:g} s is empty")
    if start_s < 0 or end_s > duration + 1e-9:
        raise PrismAudioError(f"region {start_s:g}:{end_s:g} s lies outside the clip (0:{duration:g} s)")
    a, b = round(start_s * sample_rate), min(num_samples, round(end_s * sample_rate))
    if b <= a:
        raise PrismAudioError(f"region {start_s:g}:{end_s:g} s holds no sample at {sample_rate} Hz")
    m = torch.zeros(num_samples, dtype=torch.bool)
    m[a:b] = True
    return m


def inpaint_context(audio: Tensor, sample_rate: int, start_s: float, end_s: float,
                    crossfade_s: float = 0.02) -> AudioContext:
    """Regenerate [start_s, end_s) of `audio` [2, S]; the region is hidden from the model."""
    keep = ~_region(sample_rate, audio.shape[-1], start_s, end_s)
    return AudioContext(audio, keep, None, crossfade_s)


def extend_context(audio: Tensor, sample_rate: int, num_samples: int, crossfade_s: float = 0.02) -> AudioContext:
    """Continue `audio` [2, P] to `num_samples` samples: the prefix is kept, the rest generated."""
    p = audio.shape[-1]
    if not 0 < p < num_samples:
        raise PrismAudioError(f"cannot extend {p} samples to {num_samples}: the prefix must be shorter than the clip")
    full = torch.zeros(audio.shape[0], num_samples, dtype=audio.dtype)
    full[:, :p] = audio
    keep = torch.zeros(num_samples, dtype=torch.bool)
    keep[:p] = True
    return AudioContext(full, keep, None, crossfade_s)


def edit_context(audio: Tensor, sample_rate: int, start_s: float, end_s: float,
                 crossfade_s: float = 0.02) -> AudioContext:
    """Add / remove / refine inside [start_s, end_s): the model sees all of `audio`, the outside is kept."""
    keep = ~_region(sample_rate, audio.shape[-1], start_s, end_s)
    return AudioContext(audio, keep, torch.ones_like(keep), crossfade_s)


# ------------------------------------------------------------------------------ latent resolution
def frame_masks(keep: Tensor, visible: Tensor, hop: int, num_frames: int) -> tuple[Tensor, Tensor]:
    """Sample masks [..., S] -> latent-frame masks [..., N] (keep: all samples; visible: any).

    Samples past S (the last frame's padding up to N * hop) count as neither keep nor visible for
    `visible` and do not prevent `keep`; frames entirely past S are neither."""
    s = keep.shape[-1]
    total = num_frames * hop
    lead = keep.shape[:-1]

    def _pad(m: Tensor, value: bool) -> Tensor:
        if s >= total:
            return m[..., :total]
        return torch.cat([m, torch.full((*lead, total - s), value, dtype=torch.bool, device=m.device)], dim=-1)

    real = _pad(torch.ones_like(keep), False).reshape(*lead, num_frames, hop).any(-1)
    k = _pad(keep, True).reshape(*lead, num_frames, hop).all(-1) & real
    v = _pad(visible, False).reshape(*lead, num_frames, hop).any(-1)
    return k, v


def context_condition(latents: Tensor, keep_frames: Tensor, visible_frames: Tensor) -> Tensor:
    """The DiT's context condition [B, C + 2, N] = concat(latents * visible, visible, keep)."""
    v = visible_frames.to(latents.dtype).unsqueeze(1)
    k = keep_frames.to(latents.dtype).unsqueeze(1)
    return torch.cat([latents * v, v, k], dim=1)


# ------------------------------------------------------------------------------ the splice
def crossfade_gain(keep: Tensor, width: int) -> Tensor:
    """Per-sample weight w in [0, 1] of the context audio (float32 [S]): 1 on keep samples farther
    than `width` from any generated sample, 0 on generated samples, and a linear ramp d / width over
    the `width` keep samples next to a boundary (d = distance in samples to the nearest generated
    sample, 1..width). The generated audio gets 1 - w. Why equal-gain and not equal-power: at a keep
    boundary the generated audio continues the kept one (it was conditioned on it and, without
    conditioning, its latent frames were imposed), so the two are correlated there, and an equal-power
    fade would add up to +3 dB and can exceed full scale (measured on long-video seams)."""
    s = keep.shape[-1]
    gen = ~keep
    if width <= 0 or not bool(gen.any()):
        return keep.float()
    idx = torch.arange(s)
    big = torch.full((s,), s + width + 1, dtype=torch.long)
    # distance to the nearest generated sample on the left / right (cumulative max / min of indices)
    last_gen = torch.where(gen, idx, torch.full_like(idx, -(s + width + 1))).cummax(0).values
    next_gen = torch.where(gen, idx, big + s).flip(0).cummin(0).values.flip(0)
    dist = torch.minimum(idx - last_gen, next_gen - idx)
    ramp = dist.clamp(max=width).float() / width
    return torch.where(keep, ramp, torch.zeros(()))


def splice(generated: Tensor, ctx: AudioContext, sample_rate: int) -> Tensor:
    """Generated audio [K, 2, S] with `ctx.audio` copied in where `ctx.keep` (a linear crossfade
    within `crossfade_s` of each boundary, on the keep side, so the generated region is untouched)."""
    width = int(round(ctx.crossfade_s * sample_rate))
    s = generated.shape[-1]  # the official sync length rounds N down for some durations: cut to it
    w = crossfade_gain(ctx.keep[:s].cpu(), width).to(generated.device)
    g = 1 - w
    ref = ctx.audio[:, :s].to(generated.device, generated.dtype)
    out = generated * g + ref.unsqueeze(0) * w
    # bit-exact copy where w == 1 (w * ref + 0 * gen is already exact; this also clears -0.0 / NaN paths)
    full = w == 1
    return torch.where(full, ref.unsqueeze(0).expand_as(out), out)


@dataclass
class ContextLatents:
    """An `AudioContext` at latent resolution (what the sampler and the DiT see)."""

    latents: Tensor  # [B, C, N] the context audio's VAE latents (posterior mean / latent_scale)
    keep: Tensor  # [B, N] bool: frames whose every sample is keep
    visible: Tensor  # [B, N] bool: frames with any visible sample

    def condition(self) -> Tensor:
        """[B, C + 2, N] = concat(latents * visible, visible, keep): `ConditionTokens.audio`."""
        return context_condition(self.latents, self.keep, self.visible)

    def to(self, device: torch.device | str) -> "ContextLatents":
        return ContextLatents(self.latents.to(device), self.keep.to(device), self.visible.to(device))
