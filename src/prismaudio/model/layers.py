"""Transformer building blocks of the PrismAudio DiT (official_network.md §5.6).

Every block is pre-norm: self-attention (q/k RMSNorm + partial RoPE), cross-attention on the
condition tokens (q/k RMSNorm, no RoPE, no mask), then a SwiGLU feed-forward. All projections
inside attention are bias-free; the feed-forward has biases. Output projections start at zero
(official init), so an untrained block is the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm(nn.Module):
    """LayerNorm with a gain and no bias (the official `beta` is an all-zero buffer)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, None, self.eps)


class RMSNorm(nn.Module):
    """Per-head RMSNorm for q and k, like the official nn.RMSNorm(64) with eps=None: the epsilon is
    finfo(dtype).eps (1.19e-7 in float32) and half precision is normalised in float32."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        eps = torch.finfo(x.dtype).eps
        xf = x.float() if x.element_size() < 4 else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        return (y * self.weight).to(x.dtype)


# ------------------------------------------------------------------------------------ RoPE
def rope_inv_freq(dim: int, base: float = 10000.0) -> Tensor:
    """inv_freq_j = base^(-2j/dim), j < dim/2, computed on the CPU exactly like the official buffer."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, device="cpu").float() / dim))


class RotaryEmbedding(nn.Module):
    """Rotary position angles for the first `dim` channels of each head (official: 32 of 64).

    Half-split pairing (channel j rotates with j + dim/2), base 10000, computed in float32.
    No buffer: the frequencies are a pure function of `dim` (the converter checks the official
    `inv_freq`), which also keeps models built on the meta device correct after `to_empty`.
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.base = dim, base

    def forward(self, seq_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(cos, sin), each [seq_len, 1, dim] float32 (positions 0..seq_len-1, broadcast over heads)."""
        inv_freq = rope_inv_freq(self.dim, self.base).to(device)
        freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
        freqs = torch.cat((freqs, freqs), dim=-1)[:, None]
        return freqs.cos(), freqs.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first cos.shape[-1] channels of x [B, N, H, Dh] (in float32); keep the rest."""
    r = cos.shape[-1]
    dtype = x.dtype
    x = x.float()
    rot, rest = x[..., :r], x[..., r:]
    x1, x2 = rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)  # rotate_half
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1).to(dtype)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(Dh)) v for [B, N, H, Dh] tensors, returning [B, N, H * Dh].

    SDPA keeps the query's memory layout, so the head merge at the end is a free view.
    """
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return y.transpose(1, 2).flatten(2)


# ------------------------------------------------------------------------------- attention
class SelfAttention(nn.Module):
    """Multi-head self-attention with q/k RMSNorm and partial RoPE, via SDPA."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        b, n, _ = x.shape
        # channel c = head * Dh + d, chunk order q, k, v; each [B, N, H, Dh]
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        q = apply_rope(self.q_norm(q), *rope)
        k = apply_rope(self.k_norm(k), *rope)
        return self.out(attention(q, k, v))


class CrossAttention(nn.Module):
    """Attention from the latent tokens to the condition tokens: q/k RMSNorm, no RoPE, no mask.

    Zero-padded context tokens are attended (as officially); an all-zero context gives exactly 0.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.out = nn.Linear(dim, dim, bias=False)
        nn.init.zeros_(self.out.weight)

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """(RMS-normed keys, values) [B, M, H, Dh] of the context: time-independent, so a sampler
        computes them once per run instead of once per step."""
        b, m, _ = context.shape
        k, v = self.kv(context).view(b, m, 2, self.num_heads, self.head_dim).unbind(2)
        return self.k_norm(k), v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        b, n, _ = x.shape
        q = self.q(x).view(b, n, self.num_heads, self.head_dim)
        return self.out(attention(self.q_norm(q), *kv))


class SwiGLU(nn.Module):
    """Feed-forward y = fc2(u * silu(g)) with [u | g] = fc1(x): value first, gate second."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        hidden = mult * dim
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: Tensor) -> Tensor:
        u, g = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(u * F.silu(g))


class Block(nn.Module):
    """Pre-norm block: x += SelfAttn(LN(x)); x += CrossAttn(LN(x), ctx); x += FF(LN(x))."""

    def __init__(self, dim: int, num_heads: int, context_dim: int, ff_mult: int = 4) -> None:
        super().__init__()
        self.self_attn_norm = LayerNorm(dim)
        self.self_attn = SelfAttention(dim, num_heads)
        self.cross_attn_norm = LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, num_heads, context_dim)
        self.ff_norm = LayerNorm(dim)
        self.ff = SwiGLU(dim, ff_mult)

    def forward(
        self, x: Tensor, kv: tuple[Tensor, Tensor], rope: tuple[Tensor, Tensor], ctx_items: Tensor | None = None
    ) -> Tensor:
        """`kv`: this block's `cross_attn.project_context(context)`. `ctx_items`: indices of the
        batch items the context belongs to (None = all); the other items have an all-zero
        context, whose cross-attention output is exactly 0."""
        x = x + self.self_attn(self.self_attn_norm(x), rope)
        if ctx_items is None:
            x = x + self.cross_attn(self.cross_attn_norm(x), kv)
        elif ctx_items.numel():
            x = x.index_add(0, ctx_items, self.cross_attn(self.cross_attn_norm(x[ctx_items]), kv))
        return x + self.ff(self.ff_norm(x))


class MLP(nn.Sequential):
    """Linear -> SiLU -> Linear (the official condition / timestep embedders)."""

    def __init__(self, in_dim: int, dim: int, bias: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim, bias=bias)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(dim, dim, bias=bias)


def interpolate_time(x: Tensor, length: int) -> Tensor:
    """Linear resampling of x [B, T, D] along T (align_corners=False, official §5.3)."""
    if x.shape[1] == length:
        return x
    return F.interpolate(x.transpose(1, 2), size=length, mode="linear", align_corners=False).transpose(1, 2)
