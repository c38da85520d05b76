"""The PrismAudio diffusion transformer: v = DiT(x_t, t, condition tokens).

A direct transcription of official_network.md §5: learned Fourier timestep features prepended as one
token, condition MLPs, the video add path interpolated to the latent length and added through a sigmoid
gate (and the sync path through its own gate), pre-norm blocks, no final norm, 1x1 residual convs
around the in/out projections. Classifier-free guidance lives outside (zeros in conditioner space).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..config import DiTConfig
from ..errors import PrismAudioError
from .conditioning import ConditionTokens
from .layers import MLP, Block, RotaryEmbedding, interpolate_time


@dataclass
class PreparedConditions:
    """The time-independent part of a DiT forward for one batch of conditions (see `prepare`)."""

    n: int  # latent frames the additions were interpolated to
    added: Tensor  # [B, N, D] sigmoid(add_gate) * video add path
    sync: Tensor | None  # [B, N, D] sigmoid(sync_gate) * sync path
    kv: list[tuple[Tensor, Tensor]]  # per block: cross-attention (normed keys, values)
    ctx_items: Tensor | None  # batch items with a non-zero context (None = all)
    audio_ctx: Tensor | None = None  # [B, N, D] ctx_proj(audio context); None = no audio context


class TimestepEmbedding(nn.Module):
    """e_t = MLP([cos 2πtw ; sin 2πtw]) with learned frequencies w ~ N(0, 1); t is not rescaled."""

    def __init__(self, num_features: int, dim: int) -> None:
        super().__init__()
        self.freqs = nn.Parameter(torch.randn(num_features, 1))
        self.mlp = MLP(2 * num_features, dim, bias=True)

    def forward(self, t: Tensor) -> Tensor:
        f = (2 * math.pi * t)[:, None] * self.freqs[:, 0]
        return self.mlp(torch.cat((f.cos(), f.sin()), dim=-1))


class DiffusionTransformer(nn.Module):
    """Velocity network. forward(x [B, C, N], t [B], cond) -> v [B, C, N].

    `official_predict_sync_quirk` (default False) reproduces the official predict.py / app.py
    inference (official_network.md §8.3): every conditional item's sync tokens are replaced by the
    learned `empty_sync_feat` (one constant vector over all frames); items whose sync is all zero
    (the CFG uncond half, dropped conditions) keep 0. Only for parity checks: it discards the
    Synchformer features.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        if d % cfg.num_heads:
            raise PrismAudioError(f"embed_dim {d} is not divisible by num_heads {cfg.num_heads}")
        head_dim = d // cfg.num_heads
        self.official_predict_sync_quirk = False

        self.time_embed = TimestepEmbedding(cfg.num_fourier_features, d)
        # official project_cond_tokens=false: the cross MLP keeps the conditioner width
        self.cross_mlp = MLP(cfg.cond_token_dim, cfg.cond_token_dim)
        self.add_mlp = MLP(cfg.add_token_dim, d)
        self.sync_mlp = MLP(cfg.sync_token_dim, d)
        if cfg.keep_unused_official_params:
            # never used in our forward; kept so official checkpoints load 1:1 (and for the quirk)
            self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.cond_token_dim))
            self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_token_dim))

        c = cfg.io_channels
        self.pre_conv = nn.Conv1d(c, c, 1, bias=False)
        self.post_conv = nn.Conv1d(c, c, 1, bias=False)
        nn.init.zeros_(self.pre_conv.weight)
        nn.init.zeros_(self.post_conv.weight)
        self.project_in = nn.Linear(c, d, bias=False)
        self.project_out = nn.Linear(d, c, bias=False)
        self.add_gate = nn.Parameter(torch.ones(1, 1, d))  # sigmoid(1) = 0.731
        self.sync_gate = nn.Parameter(torch.zeros(1, 1, d))  # sigmoid(0) = 0.5

        self.rope = RotaryEmbedding(max(head_dim // 2, 32))
        self.blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.cond_token_dim, cfg.ff_mult) for _ in range(cfg.depth)
        )
        if cfg.audio_context:  # registered last: the same parameter order as `enable_audio_context` later
            self.enable_audio_context()

    # ------------------------------------------------------------------------------------
    def enable_audio_context(self) -> bool:
        """Add the audio-context projection (issue 18) if it is missing; True when it was added.

        `ctx_proj` maps ctx = [latents * visible ; visible ; keep] ([B, C + 2, N]) to the embedding
        width and is added to the input embedding. It starts at zero, so a model trained without
        context computes exactly what it did until the projection learns (how the context stage
        starts from a trained foundation / CoT model). Without `audio_context` the module has no
        such parameter: official state dicts and outputs stay as they are.
        """
        if hasattr(self, "ctx_proj"):
            return False
        p = self.project_in.weight
        self.ctx_proj = nn.Linear(self.cfg.io_channels + 2, self.cfg.embed_dim, bias=False,
                                  device=p.device, dtype=p.dtype)
        nn.init.zeros_(self.ctx_proj.weight)
        self.cfg.audio_context = True
        return True

    def prepare(self, cond: ConditionTokens, n: int) -> PreparedConditions:
        """Everything that depends on the conditions but not on (x, t): the condition MLPs, the
        interpolated gated additions and each block's cross-attention keys/values. A sampler
        prepares once and reuses it for every step (the official code recomputes it per step)."""
        dtype = self.project_in.weight.dtype
        # An all-zero context (CFG uncond half, dropped condition) makes cross-attention exactly 0
        # (k = v = 0), so those items skip it: bit-identical output, ~10% less work with CFG.
        cross = cond.cross.to(dtype)
        has_context = cross.flatten(1).ne(0).any(dim=1)
        ctx_items = None if bool(has_context.all()) else has_context.nonzero().squeeze(1)
        context = self.cross_mlp(cross if ctx_items is None else cross[ctx_items])
        kv = [block.cross_attn.project_context(context) for block in self.blocks]
        added = torch.sigmoid(self.add_gate) * interpolate_time(self.add_mlp(cond.add.to(dtype)), n)
        sync = self._sync_embedding(cond.sync, dtype)
        if sync is not None:
            # our fix: the official code requires len(sync) == N (integer durations of 8-15 s only)
            sync = torch.sigmoid(self.sync_gate) * interpolate_time(sync, n)
        return PreparedConditions(n, added, sync, kv, ctx_items, self._audio_context(cond.audio, n, dtype))

    def forward(self, x: Tensor, t: Tensor, cond: ConditionTokens | PreparedConditions) -> Tensor:
        dtype = self.project_in.weight.dtype
        b, _, n = x.shape
        x = x.to(dtype)
        t = t.to(dtype).reshape(-1).expand(b)
        prep = cond if isinstance(cond, PreparedConditions) else self.prepare(cond, n)
        if prep.n != n:
            raise ValueError(f"conditions were prepared for {prep.n} latent frames, x has {n}")

        h = x + self.pre_conv(x)
        z = self.project_in(h.transpose(1, 2)) + prep.added  # add the video path after its MLP
        if prep.sync is not None:
            z = z + prep.sync
        if prep.audio_ctx is not None:
            z = z + prep.audio_ctx
        z = torch.cat((self.time_embed(t)[:, None], z), dim=1)  # timestep token at position 0

        rope = self.rope(n + 1, z.device)
        for block, kv in zip(self.blocks, prep.kv):
            z = block(z, kv, rope, prep.ctx_items)

        out = self.project_out(z[:, 1:]).transpose(1, 2)
        return out + self.post_conv(out)

    def _audio_context(self, ctx: Tensor | None, n: int, dtype: torch.dtype) -> Tensor | None:
        """ctx_proj(ctx) as [B, N, D]; None when there is no context (= an all-zero one, since the
        projection has no bias) so context-free sampling does no extra work."""
        if ctx is None:
            return None
        if not hasattr(self, "ctx_proj"):
            raise PrismAudioError("this model was not trained with audio context (dit.audio_context is false); "
                                  "train the context stage first (configs/train/context_mini.yaml)")
        c = self.cfg.io_channels + 2
        if ctx.dim() != 3 or ctx.shape[1] != c or ctx.shape[2] != n:
            raise PrismAudioError(f"audio context must be [B, {c}, {n}] (latents, visible, keep), got {tuple(ctx.shape)}")
        return self.ctx_proj(ctx.to(dtype).transpose(1, 2))

    def _sync_embedding(self, sync: Tensor | None, dtype: torch.dtype) -> Tensor | None:
        """to_sync_embed(sync), or the official predict.py constant when the quirk is on."""
        if sync is None:
            return None
        if not self.official_predict_sync_quirk:
            return self.sync_mlp(sync.to(dtype))
        if not hasattr(self, "empty_sync_feat"):
            raise PrismAudioError("official_predict_sync_quirk needs keep_unused_official_params=True")
        is_cond = sync.flatten(1).ne(0).any(dim=1).to(dtype)[:, None, None]
        return is_cond * self.sync_mlp(self.empty_sync_feat.to(dtype))[None]

    # ------------------------------------------------------------------------------------
    def param_count(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
