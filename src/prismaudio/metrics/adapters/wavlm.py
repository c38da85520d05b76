"""WavLM encoder (unilm / fairseq layout) as Audiobox Aesthetics runs it, with the release's key names.

Written from the documented algorithm so that the keys of the release `checkpoint.pt` load without renaming and
the padding rules are upstream's (transformers' WavLM derives the frame mask from conv output lengths, which
drops one frame of a padded window; upstream marks a frame as padding only when ALL its samples are padding):

* conv front end ("default" mode): Conv1d (no bias) -> GELU per layer, GroupNorm(C, C) after the first conv;
* LayerNorm over the conv channels, frame padding mask, `post_extract_proj`;
* encoder: padded frames zeroed, + weight-normalised grouped positional conv (SamePad, GELU), LayerNorm
  (post-LN model), then post-LN layers whose self-attention adds a bucketed relative position bias (computed
  by layer 0 and reused) scaled per head by the gated relative position gate (gru_rel_pos);
* `forward` returns the layer results (the encoder input and every layer output) and the frame padding mask.

Sizes come from the tensors (`WavLMConfig.from_state_dict`); the strides and `max_distance` are not stored in a
checkpoint and default to upstream's `DEFAULT_AUDIO_CFG` values.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import PrismAudioError

# upstream DEFAULT_AUDIO_CFG (audiobox_aesthetics / unilm WavLM-Base): what the checkpoint does not store
DEFAULT_CONV_STRIDES = (5, 2, 2, 2, 2, 2, 2)
DEFAULT_MAX_DISTANCE = 800
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class WavLMConfig:
    """The WavLM sizes. `conv_layers` is ((dim, kernel, stride), ...) as upstream's `conv_feature_layers`."""

    conv_layers: tuple[tuple[int, int, int], ...]
    embed_dim: int
    ffn_dim: int
    layers: int
    heads: int
    conv_pos: int
    conv_pos_groups: int
    num_buckets: int = 320
    max_distance: int = DEFAULT_MAX_DISTANCE
    gru_rel_pos: bool = True
    layer_norm_eps: float = LAYER_NORM_EPS

    @property
    def hop(self) -> int:
        return math.prod(s for _, _, s in self.conv_layers)

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], conv_strides: tuple[int, ...] | None = None,
                        max_distance: int = DEFAULT_MAX_DISTANCE, where: str = "") -> WavLMConfig:
        """Sizes read from WavLM tensors (unprefixed fairseq keys); strides default to upstream's."""
        def need(key: str) -> Tensor:
            if key not in sd:
                raise PrismAudioError(f"{where}: missing WavLM key {key!r}")
            return sd[key]

        convs = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.0\.weight", k)))
        if not convs or convs != list(range(len(convs))):
            raise PrismAudioError(f"{where}: missing WavLM key 'feature_extractor.conv_layers.0.0.weight'")
        strides = tuple(conv_strides) if conv_strides is not None else (
            DEFAULT_CONV_STRIDES if len(convs) == len(DEFAULT_CONV_STRIDES) else None)
        if strides is None or len(strides) != len(convs):
            raise PrismAudioError(f"{where}: {len(convs)} conv layers; give conv_feature_layers (upstream has 7)")
        conv = tuple((int(need(f"feature_extractor.conv_layers.{i}.0.weight").shape[0]),
                      int(need(f"feature_extractor.conv_layers.{i}.0.weight").shape[2]), int(s))
                     for i, s in zip(convs, strides))
        layers = 1 + max((int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k))), default=-1)
        if layers == 0:
            raise PrismAudioError(f"{where}: missing WavLM key 'encoder.layers.0.fc1.weight'")
        rel = need("encoder.layers.0.self_attn.relative_attention_bias.weight")
        pos = need("encoder.pos_conv.0.weight_v")
        d = int(need("post_extract_proj.weight").shape[0])
        return cls(conv_layers=conv, embed_dim=d, ffn_dim=int(need("encoder.layers.0.fc1.weight").shape[0]),
                   layers=layers, heads=int(rel.shape[1]), conv_pos=int(pos.shape[2]),
                   conv_pos_groups=d // int(pos.shape[1]), num_buckets=int(rel.shape[0]),
                   max_distance=int(max_distance), gru_rel_pos="encoder.layers.0.self_attn.grep_a" in sd)


def _literal(node: ast.AST) -> object:
    """Evaluate upstream's list grammar only: int tuples in lists, `+` of lists, `list * small int`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, list) and isinstance(right, list):
            return left + right
        if isinstance(node.op, ast.Mult) and isinstance(left, list) and isinstance(right, int) and 0 <= right <= 64:
            return left * right
    raise ValueError("unsupported expression")


def parse_conv_feature_layers(spec: str | list | tuple) -> tuple[tuple[int, int, int], ...]:
    """Upstream's `conv_feature_layers` string ("[(512,10,5)] + [(512,3,2)] * 4 + ...") or a parsed list."""
    if isinstance(spec, str):
        try:
            spec = _literal(ast.parse(spec, mode="eval").body)
        except (SyntaxError, ValueError):
            raise PrismAudioError(f"bad conv_feature_layers {spec!r}") from None
    try:
        out = tuple((int(a), int(b), int(c)) for a, b, c in spec)
    except (TypeError, ValueError):
        raise PrismAudioError(f"bad conv_feature_layers {spec!r}") from None
    if not out or any(v <= 0 for layer in out for v in layer):
        raise PrismAudioError(f"bad conv_feature_layers {spec!r}: need positive (dim, kernel, stride) triples")
    return out


class _WeightNormConv(nn.Module):
    """Grouped Conv1d with weight norm over dim 2 (keys `weight_g` [1, 1, K], `weight_v`, `bias`)."""

    def __init__(self, dim: int, kernel: int, groups: int):
        super().__init__()
        self.kernel, self.groups = kernel, groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.zeros(dim, dim // groups, kernel))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        v = self.weight_v
        w = self.weight_g * v / v.norm(dim=(0, 1), keepdim=True)
        return F.conv1d(x, w, self.bias, padding=self.kernel // 2, groups=self.groups)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: WavLMConfig, has_bias: bool):
        super().__init__()
        d, h = cfg.embed_dim, cfg.heads
        self.heads, self.head_dim = h, d // h
        self.num_buckets, self.max_distance = cfg.num_buckets, cfg.max_distance
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        self.gru_rel_pos = cfg.gru_rel_pos
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, h, 1, 1))
        self.relative_attention_bias = nn.Embedding(cfg.num_buckets, h) if has_bias else None

    def _buckets(self, rel: Tensor) -> Tensor:
        """Bidirectional log buckets of relative positions (T5 / WavLM rule)."""
        half = self.num_buckets // 2
        out = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(self.max_distance / exact)
                         * (half - exact)).long()
        large = torch.minimum(large, torch.full_like(large, half - 1))
        return out + torch.where(rel < exact, rel, large)

    def position_bias(self, t: int, device: torch.device) -> Tensor:
        pos = torch.arange(t, device=device)
        values = self.relative_attention_bias(self._buckets(pos[None, :] - pos[:, None]))  # [T, T, H]
        return values.permute(2, 0, 1)  # [H, T, T]

    def forward(self, x: Tensor, key_padding: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        b, t, d = x.shape
        h, hd = self.heads, self.head_dim
        if bias is None and self.relative_attention_bias is not None:
            bias = self.position_bias(t, x.device)
        mask = None
        if bias is not None:
            mask = bias[None].expand(b, -1, -1, -1)
            if self.gru_rel_pos:
                qh = x.view(b, t, h, hd).transpose(1, 2)  # the layer input per head, not the projected query
                gate_a, gate_b = torch.sigmoid(self.grep_linear(qh).view(b, h, t, 2, 4).sum(-1)).chunk(2, dim=-1)
                mask = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * mask  # [B, H, T, 1] * [B, H, T, T]
        if key_padding is not None:
            pad = torch.zeros(b, 1, 1, t, dtype=x.dtype, device=x.device).masked_fill(
                key_padding[:, None, None, :], float("-inf"))
            mask = pad if mask is None else mask + pad
        q, k, v = (p(x).view(b, t, h, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d)), bias


class _Layer(nn.Module):
    """Post-LN transformer layer (layer_norm_first False), GELU FFN."""

    def __init__(self, cfg: WavLMConfig, has_bias: bool):
        super().__init__()
        self.self_attn = _SelfAttention(cfg, has_bias)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, key_padding: Tensor | None, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        y, bias = self.self_attn(x, key_padding, bias)
        x = self.self_attn_layer_norm(x + y)
        x = self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))
        return x, bias


class _Encoder(nn.Module):
    def __init__(self, cfg: WavLMConfig):
        super().__init__()
        self.pos_conv = nn.Sequential(_WeightNormConv(cfg.embed_dim, cfg.conv_pos, cfg.conv_pos_groups))
        self.even_kernel = cfg.conv_pos % 2 == 0
        self.layers = nn.ModuleList(_Layer(cfg, i == 0) for i in range(cfg.layers))
        self.layer_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, padding: Tensor | None) -> list[Tensor]:
        if padding is not None:
            x = x.masked_fill(padding[..., None], 0.0)
        pos = self.pos_conv(x.transpose(1, 2))
        pos = F.gelu(pos[..., :-1] if self.even_kernel else pos).transpose(1, 2)  # SamePad, then GELU
        x = self.layer_norm(x + pos)
        results, bias = [x], None
        for layer in self.layers:
            x, bias = layer(x, padding, bias)
            results.append(x)
        return results


class _ConvLayer(nn.Sequential):
    """Sequential(conv, dropout, [GroupNorm], GELU): keys `<i>.0.weight` and, for the first, `<i>.2.*`."""

    def __init__(self, cin: int, dim: int, kernel: int, stride: int, group_norm: bool):
        mods: list[nn.Module] = [nn.Conv1d(cin, dim, kernel, stride, bias=False), nn.Identity()]
        if group_norm:
            mods.append(nn.GroupNorm(dim, dim, affine=True))
        mods.append(nn.GELU())
        super().__init__(*mods)


class _FeatureExtractor(nn.Module):
    def __init__(self, cfg: WavLMConfig):
        super().__init__()
        dims = [1] + [d for d, _, _ in cfg.conv_layers]
        self.conv_layers = nn.ModuleList(_ConvLayer(dims[i], d, k, s, i == 0)
                                         for i, (d, k, s) in enumerate(cfg.conv_layers))

    def forward(self, wav: Tensor) -> Tensor:
        x = wav[:, None]
        for conv in self.conv_layers:
            x = conv(x)
        return x  # [B, C, T]


class WavLM(nn.Module):
    """wav [B, S] (16 kHz, not normalised) + sample padding mask -> (layer results [L+1] x [B, T, D], frame padding)."""

    def __init__(self, cfg: WavLMConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.conv_layers[-1][0]
        self.feature_extractor = _FeatureExtractor(cfg)
        self.layer_norm = nn.LayerNorm(c, eps=cfg.layer_norm_eps)
        self.post_extract_proj = nn.Linear(c, cfg.embed_dim)
        self.encoder = _Encoder(cfg)
        self.mask_emb = nn.Parameter(torch.zeros(cfg.embed_dim))  # training-time masking only

    @staticmethod
    def frame_padding(padding: Tensor, frames: int) -> Tensor:
        """A frame is padding iff ALL of its samples are (the sample mask cut to a multiple of `frames`)."""
        extra = padding.shape[1] % frames
        if extra:
            padding = padding[:, :-extra]
        return padding.view(padding.shape[0], frames, -1).all(-1)

    def forward(self, wav: Tensor, padding: Tensor | None = None) -> tuple[list[Tensor], Tensor | None]:
        feats = self.layer_norm(self.feature_extractor(wav).transpose(1, 2))
        fpad = None if padding is None else self.frame_padding(padding, feats.shape[1])
        return self.encoder(self.post_extract_proj(feats), fpad), fpad
