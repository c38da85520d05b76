"""The Synchformer network (visual + audio branches and the sync transformer) in the released key layout.

`synchformer_state_dict.pth` (av-benchmark) holds ``vfeat_extractor.*`` (the MotionFormer, implemented once
in `prismaudio.encoders.synchformer.SyncVisualBranch`), ``afeat_extractor.*`` (AST + frequency aggregation),
``vproj`` / ``aproj`` and ``transformer.*`` (GlobalTransformer). Every size is read from the tensors
(`SynchformerConfig.from_state_dict`); only the head counts are parameters. The protocols and the
backend that use it are in `desync.py`; the facts are listed there.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...encoders.synchformer import UNUSED_VISUAL, VISUAL_PREFIX, SyncVisualBranch, _box
from ...errors import PrismAudioError
from ._common import load_state_dict

NAME = "synchformer_desync"
FPS = 25.0
SR = 16000
SEG_FRAMES, SEG_FRAMES_STEP = 16, 8
SEG_SAMPLES, SEG_SAMPLES_STEP = 10240, 5120
N_MELS, N_FFT, WIN, HOP, SPEC_T = 128, 1024, 400, 160, 66
LOG_OFFSET = 1e-6
AST_MEAN, AST_STD = -4.2677393, 4.5689974
AST_STRIDE, AST_LN_EPS, AGG_LN_EPS = 10, 1e-12, 1e-6
N_SEGMENTS = 14


def class_grid(n: int = 21, low: float = -2.0, high: float = 2.0) -> Tensor:
    """Synchformer's make_class_grid: a float64 linspace cast to float32 (torch.linspace in float32
    differs by 6e-8)."""
    return torch.from_numpy(np.linspace(low, high, n)).float()


OFFSET_GRID = class_grid(21)
EXPECTED = ("a local Synchformer checkpoint: av-benchmark's synchformer_state_dict.pth or the experiment "
            "checkpoint with a 'model' entry (24-01-04T16-39-21)")
AST_PREFIX = "afeat_extractor.ast."


# --------------------------------------------------------------------------------------------------
# Sizes, read from the tensors
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynchformerConfig:
    """Every size of the network; the released model is the default. Heads cannot be read from tensors."""

    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_hidden: int = 3072
    agg_hidden: int = 3072
    size: int = 224
    patch_size: int = 16
    tubelet: int = 2
    ast_dim: int = 768
    ast_depth: int = 12
    ast_heads: int = 12
    ast_hidden: int = 3072
    ast_agg_hidden: int = 3072
    ast_patch: int = 16
    sync_dim: int = 768
    sync_depth: int = 3
    sync_heads: int = 8
    sync_hidden: int = 3072
    n_classes: int = 21
    window_segments: int = N_SEGMENTS

    @property
    def ast_grid(self) -> tuple[int, int]:
        """(frequency, time) patches of the 128 x 66 log-mel: (12, 6)."""
        return (N_MELS - self.ast_patch) // AST_STRIDE + 1, (SPEC_T - self.ast_patch) // AST_STRIDE + 1

    @property
    def v_tokens(self) -> int:
        return SEG_FRAMES // self.tubelet

    @property
    def seq_len(self) -> int:
        return 2 + self.window_segments * (self.v_tokens + self.ast_grid[1])

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], heads: int, ast_heads: int, sync_heads: int,
                        where: Any) -> SynchformerConfig:
        """Sizes of a released-layout state dict; a key it needs that is absent is one error naming it."""

        def shape(key: str, ndim: int) -> tuple[int, ...]:
            if key not in sd:
                raise PrismAudioError(f"backend {NAME!r}: {where} is not a Synchformer checkpoint in the released "
                                      f"layout: missing key {key!r} ({len(sd)} keys, e.g. {next(iter(sd), None)!r})")
            if sd[key].ndim != ndim:
                raise PrismAudioError(f"backend {NAME!r}: {where}: {key} has shape {tuple(sd[key].shape)}, "
                                      f"expected {ndim} dimensions")
            return tuple(sd[key].shape)

        def count(prefix: str) -> int:
            pat = re.compile(re.escape(prefix) + r"(\d+)\.")
            found = [int(m.group(1)) for k in sd if (m := pat.match(k))]
            if not found:
                raise PrismAudioError(f"backend {NAME!r}: {where} is not a Synchformer checkpoint in the released "
                                      f"layout: no {prefix}0.* keys")
            return 1 + max(found)

        v = VISUAL_PREFIX
        dim, _, tubelet, patch, _ = shape(v + "patch_embed_3d.proj.weight", 5)
        n_pos = shape(v + "pos_embed", 3)[1] - 1
        t_tok = shape(v + "temp_embed", 3)[1]
        grid = math.isqrt(max(n_pos, 0))
        if grid * grid != n_pos or t_tok * tubelet != SEG_FRAMES:
            raise PrismAudioError(f"backend {NAME!r}: {where}: {v}pos_embed / temp_embed describe {n_pos} positions "
                                  f"x {t_tok * tubelet} frames, expected a square grid x {SEG_FRAMES} frames")
        ast_dim, _, ast_patch, _ = shape(AST_PREFIX + "embeddings.patch_embeddings.projection.weight", 4)
        s_dim, v_in = shape("vproj.weight", 2)
        cfg = cls(
            dim=dim, depth=count(v + "blocks."), heads=heads, size=grid * patch, patch_size=patch, tubelet=tubelet,
            mlp_hidden=shape(v + "blocks.0.mlp.fc1.weight", 2)[0],
            agg_hidden=shape(v + "spatial_attn_agg.linear1.weight", 2)[0],
            ast_dim=ast_dim, ast_depth=count(AST_PREFIX + "encoder.layer."), ast_heads=ast_heads, ast_patch=ast_patch,
            ast_hidden=shape(AST_PREFIX + "encoder.layer.0.intermediate.dense.weight", 2)[0],
            ast_agg_hidden=shape("afeat_extractor.freq_attn_agg.linear1.weight", 2)[0],
            sync_dim=s_dim, sync_depth=count("transformer.blocks."), sync_heads=sync_heads,
            sync_hidden=shape("transformer.blocks.0.mlp.0.weight", 2)[0],
            n_classes=shape("transformer.off_head.weight", 2)[0])
        rows = shape("transformer.pos_emb_cfg.pos_emb", 3)[1]
        per_segment = cfg.v_tokens + cfg.ast_grid[1]
        if (rows - 2) % per_segment or rows <= 2:
            raise PrismAudioError(f"backend {NAME!r}: {where}: transformer.pos_emb_cfg.pos_emb has {rows} rows, not "
                                  f"2 + segments x {per_segment}")
        cfg = cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)} | {"window_segments": (rows - 2) // per_segment})
        for name, d, h in (("visual", dim, heads), ("audio", ast_dim, ast_heads), ("sync", s_dim, sync_heads)):
            if d % h:
                raise PrismAudioError(f"backend {NAME!r}: {where}: the {name} width {d} is not divisible by its "
                                      f"head count {h}; set the matching heads parameter")
        if v_in != dim:
            raise PrismAudioError(f"backend {NAME!r}: {where}: vproj takes {v_in} features, the visual branch "
                                  f"gives {dim}")
        return cfg


# --------------------------------------------------------------------------------------------------
# Audio branch: log-mel, AST + frequency aggregation
# --------------------------------------------------------------------------------------------------
def mel_filterbank(n_freqs: int, sr: int, n_mels: int) -> Tensor:
    """[n_freqs, n_mels] triangular HTK-mel filters without normalisation, computed in float32 as
    torchaudio's `melscale_fbanks` does (so the filters are the same numbers)."""
    def hz2mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    freqs = torch.linspace(0, sr // 2, n_freqs)
    mels = torch.linspace(hz2mel(0.0), hz2mel(sr / 2), n_mels + 2)
    pts = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    diff = pts[1:] - pts[:-1]
    slopes = pts.unsqueeze(0) - freqs.unsqueeze(1)
    down, up = (-1.0 * slopes[:, :-2]) / diff[:-1], slopes[:, 2:] / diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


class LogMel(nn.Module):
    """Audio segments [N, 10240] at 16 kHz -> normalised log-mel [N, 128 mel, 66 time] (upstream layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN), persistent=False)
        self.register_buffer("fbank", mel_filterbank(N_FFT // 2 + 1, SR, N_MELS), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        spec = torch.stft(x, N_FFT, HOP, WIN, self.window, center=True, pad_mode="reflect", normalized=False,
                          onesided=True, return_complex=True).abs().pow(2.0)  # [N, 513, 65]
        mel = torch.matmul(spec.transpose(-1, -2), self.fbank).transpose(-1, -2)  # [N, 128, 65]
        mel = torch.log(mel + LOG_OFFSET)
        t = mel.shape[-1]
        mel = nn.functional.pad(mel, (0, SPEC_T - t)) if t < SPEC_T else mel[..., :SPEC_T]
        return (mel - AST_MEAN) / (2 * AST_STD)


def _heads(x: Tensor, h: int) -> Tensor:
    n, t, d = x.shape
    return x.view(n, t, h, d // h).transpose(1, 2)


def _merge(y: Tensor) -> Tensor:
    n, h, t, e = y.shape
    return y.transpose(1, 2).reshape(n, t, h * e)


class _ASTLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention = _box(attention=_box(query=nn.Linear(dim, dim), key=nn.Linear(dim, dim),
                                             value=nn.Linear(dim, dim)),
                              output=_box(dense=nn.Linear(dim, dim)))
        self.intermediate = _box(dense=nn.Linear(dim, hidden))
        self.output = _box(dense=nn.Linear(hidden, dim))
        self.layernorm_before = nn.LayerNorm(dim, eps=AST_LN_EPS)
        self.layernorm_after = nn.LayerNorm(dim, eps=AST_LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        h, att = self.layernorm_before(x), self.attention.attention
        q, k, v = (_heads(m(h), self.heads) for m in (att.query, att.key, att.value))
        x = x + self.attention.output.dense(_merge(nn.functional.scaled_dot_product_attention(q, k, v)))
        h = nn.functional.gelu(self.intermediate.dense(self.layernorm_after(x)))
        return x + self.output.dense(h)


class ASTModel(nn.Module):
    """HF-style Audio Spectrogram Transformer: [N, 128, 66] -> last hidden state [N, 2 + 12 * 6, D]."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        d, f, t = cfg.ast_dim, *cfg.ast_grid
        self.embeddings = _box(patch_embeddings=_box(
            projection=nn.Conv2d(1, d, cfg.ast_patch, stride=(AST_STRIDE, AST_STRIDE))))
        self.embeddings.cls_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.embeddings.distillation_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.embeddings.position_embeddings = nn.Parameter(torch.randn(1, 2 + f * t, d) * 0.02)
        self.encoder = _box(layer=nn.ModuleList(_ASTLayer(d, cfg.ast_heads, cfg.ast_hidden)
                                                for _ in range(cfg.ast_depth)))
        self.layernorm = nn.LayerNorm(d, eps=AST_LN_EPS)

    def forward(self, spec: Tensor) -> Tensor:
        e = self.embeddings
        x = e.patch_embeddings.projection(spec.unsqueeze(1)).flatten(2).transpose(1, 2)  # [N, f*t, D], f-major
        n = x.shape[0]
        x = torch.cat([e.cls_token.expand(n, -1, -1), e.distillation_token.expand(n, -1, -1), x], 1)
        x = x + e.position_embeddings
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class CLSEncoderLayer(nn.TransformerEncoderLayer):
    """Synchformer's aggregation layer: prepend a learned CLS token, one pre-norm layer, its output."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__(dim, heads, hidden, dropout=0.0, activation="gelu", batch_first=True,
                         layer_norm_eps=AGG_LN_EPS, norm_first=True)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


class SyncAudioBranch(nn.Module):
    """Log-mel segments [N, 128, 66] -> [N, 6, D]: AST tokens, then attention over frequency per time patch."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        self.grid = cfg.ast_grid
        self.ast = ASTModel(cfg)
        self.freq_attn_agg = CLSEncoderLayer(cfg.ast_dim, cfg.ast_heads, cfg.ast_agg_hidden)

    def forward(self, spec: Tensor) -> Tensor:
        x = self.ast(spec)[:, 2:]
        n, _, d = x.shape
        f, t = self.grid
        x = x.transpose(1, 2).reshape(n, d, f, t).permute(0, 3, 2, 1).reshape(n * t, f, d)
        return self.freq_attn_agg(x).view(n, t, d)


# --------------------------------------------------------------------------------------------------
# Sync transformer (GlobalTransformer)
# --------------------------------------------------------------------------------------------------
class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _box(key=nn.Linear(dim, dim), query=nn.Linear(dim, dim), value=nn.Linear(dim, dim),
                         proj=nn.Linear(dim, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor) -> Tensor:
        h, a = self.ln1(x), self.attn
        q, k, v = (_heads(m(h), self.heads) for m in (a.query, a.key, a.value))
        x = x + a.proj(_merge(nn.functional.scaled_dot_product_attention(q, k, v)))
        return x + self.mlp(self.ln2(x))


class GlobalTransformer(nn.Module):
    """[OFF ; visual ; MOD ; audio] + the learned position table -> blocks -> offset logits from OFF."""

    def __init__(self, cfg: SynchformerConfig) -> None:
        super().__init__()
        d = cfg.sync_dim
        self.vis_in_lnorm, self.aud_in_lnorm = nn.LayerNorm(d), nn.LayerNorm(d)
        self.OFF_tok = nn.Parameter(torch.randn(1, 1, d))
        self.MOD_tok = nn.Parameter(torch.randn(1, 1, d))
        self.pos_emb_cfg = _box()
        self.pos_emb_cfg.pos_emb = nn.Parameter(torch.randn(1, cfg.seq_len, d))
        self.blocks = nn.Sequential(*[_Block(d, cfg.sync_heads, cfg.sync_hidden) for _ in range(cfg.sync_depth)])
        self.ln_f = nn.LayerNorm(d)
        self.off_head = nn.Linear(d, cfg.n_classes)

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        b = v.shape[0]
        x = torch.cat([self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(v),
                       self.MOD_tok.expand(b, -1, -1), self.aud_in_lnorm(a)], dim=1)
        pos = self.pos_emb_cfg.pos_emb
        if x.shape[1] != pos.shape[1]:  # upstream adds the whole table: the window length is fixed
            raise PrismAudioError(f"{NAME}: the sync transformer takes {pos.shape[1]} tokens, got {x.shape[1]}")
        return self.off_head(self.ln_f(self.blocks(x + pos))[:, 0])


class SynchformerNet(nn.Module):
    """The whole model; attribute names are the released top-level ones (state-dict prefixes)."""

    def __init__(self, cfg: SynchformerConfig | None = None, **sizes: Any) -> None:
        super().__init__()
        cfg = SynchformerConfig(**sizes) if cfg is None else cfg
        self.cfg = cfg
        self.vfeat_extractor = SyncVisualBranch(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads,
                                                patch_size=cfg.patch_size, tubelet=cfg.tubelet,
                                                segment_frames=SEG_FRAMES, size=cfg.size,
                                                mlp_hidden=cfg.mlp_hidden, agg_ffn=cfg.agg_hidden)
        self.afeat_extractor = SyncAudioBranch(cfg)
        self.vproj, self.aproj = nn.Linear(cfg.dim, cfg.sync_dim), nn.Linear(cfg.ast_dim, cfg.sync_dim)
        self.transformer = GlobalTransformer(cfg)

    def compare_v_a(self, v: Tensor, a: Tensor) -> Tensor:
        """Window tokens v [B, 14, 8, Dv], a [B, 14, 6, Da] -> offset logits [B, 21]."""
        b = v.shape[0]
        return self.transformer(self.vproj(v.reshape(b, -1, v.shape[-1])), self.aproj(a.reshape(b, -1, a.shape[-1])))

    # kept for callers of the earlier name
    classify = compare_v_a


def _strict_load(net: SynchformerNet, sd: dict[str, Tensor], where: Any) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"first missing key {missing[0]!r} ({len(missing)} missing)" if missing else "",
                 f"first unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)" if unexpected else "",
                 f"shape mismatch {shapes[0]}" if shapes else ""]
        raise PrismAudioError(f"backend {NAME!r}: weights in {where} do not match the Synchformer "
                              f"({'; '.join(p for p in parts if p)})")
    net.load_state_dict(sd, strict=True)


def load_synchformer(path: Path, heads: int = 12, ast_heads: int = 12, sync_heads: int = 8) -> SynchformerNet:
    """A frozen `SynchformerNet` from av-benchmark's state dict or the experiment checkpoint (``model`` entry)."""
    sd = load_state_dict(path, NAME, EXPECTED)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(tuple(VISUAL_PREFIX + u for u in UNUSED_VISUAL))}
    net = SynchformerNet(SynchformerConfig.from_state_dict(sd, heads, ast_heads, sync_heads, path))
    _strict_load(net, sd, path)
    return net.eval().requires_grad_(False)
