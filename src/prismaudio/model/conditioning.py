"""Condition tokens and the condition MLPs (official `conditioner.*`).

`ConditionTokens` is what flows from the conditioner into the DiT: everything in
*conditioner-output space*, which is where classifier-free guidance zeros conditions and where
training drops them (three independent masks, official_network.md §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import ConditionerConfig
from ..errors import PrismAudioError
from .layers import MLP, interpolate_time


@dataclass
class ConditionTokens:
    """Conditioner outputs for a batch.

    cross: [B, Tv + Lt, D] cross-attention context = [video ; text]
    add:   [B, Tv, D]      video add path (interpolated to N inside the DiT)
    sync:  [B, N, D]       sync add path, already at the latent length (None = no sync path)
    audio: [B, C + 2, N]   audio context [latents * visible ; visible ; keep] (None = none; issue 18).
           It conditions BOTH CFG branches (it is not guided), so `zeros_like` keeps it, and the
           three-mask `dropout` leaves it alone: the context stage drops it with its own rate.
    """

    cross: Tensor
    add: Tensor
    sync: Tensor | None
    audio: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.cross.shape[0]

    def zeros_like(self) -> "ConditionTokens":
        """The unconditional branch of CFG: zeros with the same shapes (no learned null)."""
        return ConditionTokens(
            torch.zeros_like(self.cross),
            torch.zeros_like(self.add),
            None if self.sync is None else torch.zeros_like(self.sync),
            self.audio,
        )

    def cat(self, other: "ConditionTokens") -> "ConditionTokens":
        """Concatenate along the batch (used for [cond ; uncond] CFG batches)."""
        sync = None if self.sync is None or other.sync is None else torch.cat([self.sync, other.sync])
        audio = None if self.audio is None or other.audio is None else torch.cat([self.audio, other.audio])
        return ConditionTokens(torch.cat([self.cross, other.cross]), torch.cat([self.add, other.add]), sync, audio)

    def repeat_interleave(self, n: int) -> "ConditionTokens":
        """Each item repeated n times in a row (a group of n samples per prompt)."""
        sync = None if self.sync is None else self.sync.repeat_interleave(n, 0)
        audio = None if self.audio is None else self.audio.repeat_interleave(n, 0)
        return ConditionTokens(self.cross.repeat_interleave(n, 0), self.add.repeat_interleave(n, 0), sync, audio)

    def index(self, idx: Tensor | slice) -> "ConditionTokens":
        sync = None if self.sync is None else self.sync[idx]
        audio = None if self.audio is None else self.audio[idx]
        return ConditionTokens(self.cross[idx], self.add[idx], sync, audio)

    def to(self, *args, **kwargs) -> "ConditionTokens":
        sync = None if self.sync is None else self.sync.to(*args, **kwargs)
        audio = None if self.audio is None else self.audio.to(*args, **kwargs)
        return ConditionTokens(self.cross.to(*args, **kwargs), self.add.to(*args, **kwargs), sync, audio)

    def dropout(self, p: float, generator: torch.Generator | None = None) -> "ConditionTokens":
        """Official training dropout: three independent per-sample Bernoulli(p) masks replace the
        whole cross-attention context, the video add path and the sync path by zeros."""
        if p <= 0:
            return self
        b = self.batch_size
        dev = self.cross.device
        keep = (torch.rand(3, b, generator=generator, device=dev if generator is None else generator.device) >= p)
        keep = keep.to(dev)

        def _mask(x: Tensor, k: Tensor) -> Tensor:
            return x * k.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)

        sync = None if self.sync is None else _mask(self.sync, keep[2])
        return ConditionTokens(_mask(self.cross, keep[0]), _mask(self.add, keep[1]), sync, self.audio)

    def with_audio(self, audio: Tensor | None) -> "ConditionTokens":
        """The same conditions with the audio context `audio` [B or 1, C + 2, N] (1 is broadcast)."""
        if audio is not None and audio.shape[0] == 1 and self.batch_size > 1:
            audio = audio.expand(self.batch_size, -1, -1)
        return ConditionTokens(self.cross, self.add, self.sync, audio)


# -------------------------------------------------------------------------------- conditioner
def official_sync_length(num_tokens: int) -> int:
    """Official Sync_MLP output length int(194 * L / 216): 216 Synchformer tokens -> 194 latents."""
    return int(194 * num_tokens / 216)


def pad_tokens(seqs: Sequence[Tensor]) -> Tensor:
    """[Li, D] tensors -> [B, max Li, D], zero padded at the end (like pad_sequence)."""
    if len(seqs) == 0:
        raise PrismAudioError("the text batch is empty")
    out = seqs[0].new_zeros(len(seqs), max(s.shape[0] for s in seqs), seqs[0].shape[-1])
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out


class Conditioner(nn.Module):
    """The official condition MLPs (`conditioner.conditioners.*`): encoder features -> tokens.

    video, text: Linear-SiLU-Linear (bias-free). sync: a learned position embedding per token inside
    a Synchformer segment, the MLP, then linear interpolation along time to the target length:
    the latent length N (`sync_length="latent"`, any duration) or the official int(194 L / 216)
    (`"official"`, which only matches N for integer durations of 8-15 s).
    """

    def __init__(self, cfg: ConditionerConfig) -> None:
        super().__init__()
        if cfg.sync_length not in ("latent", "official"):
            raise PrismAudioError(f"sync_length must be 'latent' or 'official', got {cfg.sync_length!r}")
        self.cfg = cfg
        self.video = MLP(cfg.video_dim, cfg.output_dim)
        self.text = MLP(cfg.text_dim, cfg.output_dim)
        self.sync = MLP(cfg.sync_dim, cfg.output_dim)
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, cfg.sync_tokens_per_segment, cfg.sync_dim))
        if cfg.keep_unused_official_params:
            # parity only: the official base class creates this projection but never calls it
            self.sync_proj_out = nn.Linear(cfg.sync_dim, cfg.output_dim)

    def forward(
        self,
        video: Tensor,
        text: Tensor | Sequence[Tensor],
        sync: Tensor | None,
        latent_length: int,
    ) -> ConditionTokens:
        """video [B, Tv, Dv], text [B, Lt, Dt] (zero padded) or a list of [Li, Dt], sync [B, Ts, Ds]."""
        dtype = self.video.fc1.weight.dtype
        if not isinstance(text, Tensor):
            text = pad_tokens(list(text))
        c_video = self.video(video.to(dtype))
        c_text = self.text(text.to(dtype))
        if c_text.shape[0] != c_video.shape[0]:
            raise PrismAudioError(f"batch mismatch: {c_video.shape[0]} videos but {c_text.shape[0]} texts")
        cross = torch.cat((c_video, c_text), dim=1)
        c_sync = None if sync is None else self.embed_sync(sync.to(dtype), latent_length)
        return ConditionTokens(cross=cross, add=c_video, sync=c_sync)

    def embed_sync(self, sync: Tensor, latent_length: int) -> Tensor:
        b, length, dim = sync.shape
        p = self.cfg.sync_tokens_per_segment
        if length % p:
            raise PrismAudioError(f"sync features have {length} tokens, not a multiple of {p} per segment")
        s = (sync.reshape(b, length // p, p, dim) + self.sync_pos_emb).reshape(b, length, dim)
        s = self.sync(s)
        target = latent_length if self.cfg.sync_length == "latent" else official_sync_length(length)
        return interpolate_time(s, target)

    def param_count(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def frames_to_conditions(video_encoder: nn.Module, sync_encoder: nn.Module, conditioner: Conditioner,
                         video: Tensor, sync: Tensor, text: Tensor, latent_length: int) -> ConditionTokens:
    """Frames -> the DiT's condition tokens: the one path from pixels to conditions.

    `video` / `sync` are [B, T, 3, H, W] frames at each encoder's `frame_spec`, float in [0, 1] or
    uint8 (as the training data keeps them in memory, scaled by 1/255 here unless the encoder takes
    uint8 native frames itself); `text` the text encoder's features [B, L, Dt]. Training, GRPO and
    generation all condition through here.
    """
    return conditioner(_encode(video_encoder, video), text, _encode(sync_encoder, sync), latent_length=latent_length)


def _encode(encoder: nn.Module, frames: Tensor) -> Tensor:
    if frames.is_floating_point() or getattr(encoder, "takes_uint8", False):
        return encoder(frames)
    return encoder(frames.float() / 255.0)
