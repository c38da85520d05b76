"""`synchformer_desync` (role ``desync``): Synchformer audio-visual offset classifier, av-benchmark DeSync.

Pipeline (av-benchmark protocol, reference doc): video at 25 fps, torchvision v2 Resize(224, bicubic,
antialias, on uint8) + CenterCrop(224) + (x/255 - 0.5) / 0.5 (`encoders.synchformer.preprocess_frames`),
segments of 16 frames step 8 -> `SyncVisualBranch` (the upstream MotionFormer, shared with the
`synchformer` encoder; 8 tokens per segment); audio mixed to mono at 16 kHz, segments of 10240 samples step 5120, each a
log-mel spectrogram (128 mels, n_fft 1024, win 400, hop 160, power 2, HTK mel scale without
normalisation as torchaudio's defaults; log(x + 1e-6); zero-padded/trimmed to 66 frames;
(x + 4.2677393) / (2 * 4.5689974)) -> AST branch (6 tokens per segment); the sync transformer reads
[OFF ; 14 x 8 visual ; MOD ; 14 x 6 audio] tokens and predicts one of 21 offsets -2..+2 s (step 0.2).
`offsets` gives the offset of the first and of the last 14 segments; `desync` is their mean |offset|.
Inputs: frames [B, T, 3, H, W] uint8 or float in [0, 1] (quantised to uint8: round(x * 255)), or uint8
[B, T, H, W, 3], at 25 fps; audio a tensor
[B, C, S] or [C, S] at any rate (mixed down and resampled here).

What follows the official code (v-iashin/Synchformer `sync_model.py`, `transformer.py`, `ast.py`,
`motionformer.py`, `configs/sync.yaml`, read for this module), keys included:
  * ``transformer.*`` = `GlobalTransformer`: ``vis_in_lnorm``, ``aud_in_lnorm``, ``OFF_tok``,
    ``MOD_tok``, ``pos_emb_cfg.pos_emb`` [1, 198, D] (RandInitPositionalEncoding over the whole
    sequence), ``blocks.{i}.{ln1,ln2}``, ``blocks.{i}.attn.{key,query,value,proj}``,
    ``blocks.{i}.mlp.{0,2}`` (GELU MLP x4), ``ln_f``, ``off_head`` (Linear D -> 21, on the OFF token);
    3 layers, 8 heads, D = 768; ``vproj``/``aproj`` = Linear(768, D).
  * ``afeat_extractor.freq_attn_agg.*`` = nn.TransformerEncoderLayer (norm_first, GELU, eps 1e-6,
    batch_first) plus ``cls_token``, aggregating the 12 frequency patches of each time patch.
  * ``afeat_extractor.ast.*`` = the Hugging Face `ASTModel` as patched in Synchformer's
    `hf_src/modeling_ast.py` (read): ``embeddings.{cls_token,distillation_token,position_embeddings}``,
    ``embeddings.patch_embeddings.projection`` (Conv2d 1 -> D, 16x16, strides 10/10 over the
    (mel, time) image), ``encoder.layer.{i}.attention.attention.{query,key,value}``,
    ``...attention.output.dense``, ``...intermediate.dense``, ``...output.dense``,
    ``...layernorm_{before,after}`` (pre-norm, GELU), final ``layernorm``; 128 mels x 66 frames
    -> 12 x 6 patches + CLS + distillation tokens (position embeddings cut to 74, as Synchformer
    does). 12 layers, 12 heads, eps 1e-12 are the `ASTConfig` defaults (assumed, not re-read).
Assumptions / our own:
  * ``vfeat_extractor.*`` = `prismaudio.encoders.synchformer.SyncVisualBranch`, in the released
    MotionFormer layout (checked against the upstream `synchformer_visual` / `synchformer_desync`
    fixtures); the unused 2-D ``vfeat_extractor.patch_embed.proj.*`` of the release is dropped before
    the strict load.
  * the offset sign is Synchformer's class grid (assumed > 0: audio late); DeSync uses |offset| only.
  * clips shorter than 14 segments (4.8 s) repeat their last segment's tokens up to 14 (then both
    windows coincide: W = 2 equal values); clips shorter than one segment are padded (last frame
    repeated / audio zero-padded). Video and audio segment counts are cut to the smaller one.
  * the log-mel is our torch re-implementation of torchaudio's MelSpectrogram defaults (torchaudio is
    not installed here, so not compared numerically); PadOrTruncate is assumed to pad zeros (after
    the log). Frames are assumed to be at 25 fps already (not re-sampled here).
  * the checkpoint may be a plain dict or under "state_dict"/"model" (the official wrapper key was
    not checked).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...encoders.synchformer import (
    UNUSED_VISUAL,
    VISUAL_PREFIX,
    SyncVisualBranch,
    preprocess_frames,
    to_uint8,
)
from ...errors import PrismAudioError
from ..backends import register_backend
from ._common import load_state_dict, load_strict, mono_at, require_path

SR = 16000
SEG_FRAMES, SEG_FRAMES_STEP = 16, 8
SEG_SAMPLES, SEG_SAMPLES_STEP = 10240, 5120
N_MELS, N_FFT, WIN, HOP, SPEC_T = 128, 1024, 400, 160, 66
AST_MEAN, AST_STD = -4.2677393, 4.5689974
N_SEGMENTS = 14
OFFSET_GRID = torch.linspace(-2.0, 2.0, 21)
_EXPECTED = "a local Synchformer state dict in the released layout (synchformer_state_dict.pth, 24-01-04T16-39-21)"
_UNUSED = tuple(VISUAL_PREFIX + k for k in UNUSED_VISUAL)  # the release's unused 2-D patch embedding


def _box(**modules: nn.Module) -> nn.Module:
    """A plain container, so attribute paths (and state-dict keys) follow the official nesting."""
    box = nn.Module()
    for name, mod in modules.items():
        box.add_module(name, mod)
    return box


def _heads(x: Tensor, h: int) -> Tensor:
    n, t, d = x.shape
    return x.view(n, t, h, d // h).transpose(1, 2)


def _merge(y: Tensor) -> Tensor:
    n, h, t, e = y.shape
    return y.transpose(1, 2).reshape(n, t, h * e)


# --------------------------------------------------------------------------------------------------
# Audio branch: AST + frequency aggregation
# --------------------------------------------------------------------------------------------------
def mel_filterbank(n_freqs: int, sr: int, n_mels: int) -> Tensor:
    """[n_freqs, n_mels] triangular HTK-mel filters, no normalisation (torchaudio's defaults)."""
    def hz2mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    freqs = torch.linspace(0, sr // 2, n_freqs, dtype=torch.float64)
    mels = torch.linspace(hz2mel(0.0), hz2mel(sr / 2), n_mels + 2, dtype=torch.float64)
    pts = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    diff = pts.diff()
    slopes = pts[None, :] - freqs[:, None]
    down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0).float()


class LogMel(nn.Module):
    """Audio segments [N, 10240] at 16 kHz -> normalised log-mel [N, 66, 128] (time x mel)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(WIN), persistent=False)
        self.register_buffer("fbank", mel_filterbank(N_FFT // 2 + 1, SR, N_MELS), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        spec = torch.stft(x, N_FFT, HOP, WIN, self.window, center=True, pad_mode="reflect",
                          return_complex=True).abs().pow(2)  # [N, 513, 65]
        mel = torch.log(torch.einsum("nft,fm->ntm", spec, self.fbank) + 1e-6)
        t = mel.shape[1]
        mel = nn.functional.pad(mel, (0, 0, 0, SPEC_T - t)) if t < SPEC_T else mel[:, :SPEC_T]
        return (mel - AST_MEAN) / (2 * AST_STD)


class _ASTLayer(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.attention = _box(attention=_box(query=nn.Linear(dim, dim), key=nn.Linear(dim, dim),
                                             value=nn.Linear(dim, dim)),
                              output=_box(dense=nn.Linear(dim, dim)))
        self.intermediate = _box(dense=nn.Linear(dim, hidden))
        self.output = _box(dense=nn.Linear(hidden, dim))
        self.layernorm_before = nn.LayerNorm(dim, eps=1e-12)
        self.layernorm_after = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor) -> Tensor:
        h, att = self.layernorm_before(x), self.attention.attention
        q, k, v = (_heads(m(h), self.heads) for m in (att.query, att.key, att.value))
        x = x + self.attention.output.dense(_merge(nn.functional.scaled_dot_product_attention(q, k, v)))
        h = nn.functional.gelu(self.intermediate.dense(self.layernorm_after(x)))
        return x + self.output.dense(h)


class ASTModel(nn.Module):
    """HF-style Audio Spectrogram Transformer: [N, 66, 128] -> last hidden state [N, 2 + 12 * 6, D]."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.grid = ((N_MELS - 16) // 10 + 1, (SPEC_T - 16) // 10 + 1)  # (f, t) = (12, 6)
        n_tok = 2 + self.grid[0] * self.grid[1]
        self.embeddings = _box(patch_embeddings=_box(projection=nn.Conv2d(1, dim, 16, stride=(10, 10))))
        self.embeddings.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.embeddings.distillation_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.embeddings.position_embeddings = nn.Parameter(torch.randn(1, n_tok, dim) * 0.02)
        self.encoder = _box(layer=nn.ModuleList(_ASTLayer(dim, heads, int(dim * mlp_ratio)) for _ in range(depth)))
        self.layernorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, spec: Tensor) -> Tensor:
        e = self.embeddings
        x = e.patch_embeddings.projection(spec.unsqueeze(1).transpose(2, 3))  # [N, D, f, t]
        x = x.flatten(2).transpose(1, 2)
        n = x.shape[0]
        x = torch.cat([e.cls_token.expand(n, -1, -1), e.distillation_token.expand(n, -1, -1), x], 1)
        x = x + e.position_embeddings
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)


class CLSEncoderLayer(nn.TransformerEncoderLayer):
    """Synchformer's BaseEncoderLayer: prepend a learned CLS token, return its output."""

    def __init__(self, dim: int, heads: int, hidden: int, eps: float = 1e-6) -> None:
        super().__init__(dim, heads, hidden, dropout=0.0, activation="gelu", batch_first=True,
                         layer_norm_eps=eps, norm_first=True)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


class SyncAudioBranch(nn.Module):
    """Log-mel segments [N, 66, 128] -> [N, 6, D]: AST tokens, then attention over frequency per time."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ast = ASTModel(dim, depth, heads, mlp_ratio)
        self.freq_attn_agg = CLSEncoderLayer(dim, heads, int(dim * mlp_ratio))

    def forward(self, spec: Tensor) -> Tensor:
        x = self.ast(spec)[:, 2:]
        n, _, d = x.shape
        f, t = self.ast.grid
        x = x.transpose(1, 2).reshape(n, d, f, t).permute(0, 3, 2, 1).reshape(n * t, f, d)
        return self.freq_attn_agg(x).view(n, t, d)


# --------------------------------------------------------------------------------------------------
# Sync transformer (GlobalTransformer)
# --------------------------------------------------------------------------------------------------
class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _box(key=nn.Linear(dim, dim), query=nn.Linear(dim, dim), value=nn.Linear(dim, dim),
                         proj=nn.Linear(dim, dim))
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor) -> Tensor:
        h, a = self.ln1(x), self.attn
        q, k, v = (_heads(m(h), self.heads) for m in (a.query, a.key, a.value))
        x = x + a.proj(_merge(nn.functional.scaled_dot_product_attention(q, k, v)))
        return x + self.mlp(self.ln2(x))


class GlobalTransformer(nn.Module):
    """[OFF ; visual ; MOD ; audio] + learned positions -> blocks -> offset logits from OFF."""

    def __init__(self, dim: int, depth: int, heads: int, seq_len: int, n_classes: int = 21) -> None:
        super().__init__()
        self.vis_in_lnorm, self.aud_in_lnorm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.OFF_tok = nn.Parameter(torch.randn(1, 1, dim))
        self.MOD_tok = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_emb_cfg = _box()
        self.pos_emb_cfg.pos_emb = nn.Parameter(torch.randn(1, seq_len, dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.off_head = nn.Linear(dim, n_classes)

    def forward(self, v: Tensor, a: Tensor) -> Tensor:
        b = v.shape[0]
        x = torch.cat([self.OFF_tok.expand(b, -1, -1), self.vis_in_lnorm(v),
                       self.MOD_tok.expand(b, -1, -1), self.aud_in_lnorm(a)], dim=1)
        x = self.blocks(x + self.pos_emb_cfg.pos_emb[:, : x.shape[1]])
        return self.off_head(self.ln_f(x)[:, 0])


class SynchformerNet(nn.Module):
    """Whole model; attribute names are the official top-level ones (state-dict prefixes)."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, mlp_ratio: float = 4.0, size: int = 224,
                 patch_size: int = 16, sync_dim: int = 768, sync_depth: int = 3, sync_heads: int = 8) -> None:
        super().__init__()
        self.vfeat_extractor = SyncVisualBranch(dim=dim, depth=depth, heads=heads, patch_size=patch_size,
                                                tubelet=2, segment_frames=SEG_FRAMES, size=size, mlp_ratio=mlp_ratio)
        self.afeat_extractor = SyncAudioBranch(dim, depth, heads, mlp_ratio)
        self.vproj, self.aproj = nn.Linear(dim, sync_dim), nn.Linear(dim, sync_dim)
        self.v_tokens, self.a_tokens = SEG_FRAMES // 2, self.afeat_extractor.ast.grid[1]
        seq = 2 + N_SEGMENTS * (self.v_tokens + self.a_tokens)  # 198 for the official config
        self.transformer = GlobalTransformer(sync_dim, sync_depth, sync_heads, seq)

    def classify(self, v: Tensor, a: Tensor) -> Tensor:
        """Window tokens v [B, 14, 8, D], a [B, 14, 6, D] -> logits [B, 21]."""
        b = v.shape[0]
        return self.transformer(self.vproj(v.reshape(b, -1, v.shape[-1])), self.aproj(a.reshape(b, -1, a.shape[-1])))


# --------------------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------------------
def _segments(x: Tensor, length: int, step: int, dim: int) -> Tensor:
    """Unfold `dim` into windows (a too-short input is padded by repeating its last element)."""
    n = x.shape[dim]
    if n < length:
        last = x.narrow(dim, n - 1, 1)
        x = torch.cat([x, last.expand(*[length - n if i == dim % x.dim() else -1 for i in range(x.dim())])], dim)
    return x.unfold(dim, length, step)


@register_backend("synchformer_desync", "desync")
class SynchformerDesync:
    """Synchformer offsets / DeSync (av-benchmark) from a LOCAL checkpoint, loaded on first use."""

    def __init__(self, path: str | None = None, dim: int = 768, depth: int = 12, heads: int = 12,
                 mlp_ratio: float = 4.0, size: int = 224, patch_size: int = 16, sync_dim: int = 768,
                 sync_depth: int = 3, sync_heads: int = 8, batch_segments: int = 16, device: str = "cpu") -> None:
        self.path = require_path(path, "synchformer_desync", _EXPECTED)
        self._arch = {"dim": int(dim), "depth": int(depth), "heads": int(heads), "mlp_ratio": float(mlp_ratio),
                      "size": int(size), "patch_size": int(patch_size), "sync_dim": int(sync_dim),
                      "sync_depth": int(sync_depth), "sync_heads": int(sync_heads)}
        self.size = int(size)
        self.batch_segments = max(1, int(batch_segments))
        self.device = torch.device(device)
        self.logmel = LogMel().to(self.device)
        self._net: SynchformerNet | None = None

    @property
    def net(self) -> SynchformerNet:
        if self._net is None:
            net = SynchformerNet(**self._arch)
            sd = load_state_dict(self.path, "synchformer_desync", _EXPECTED)
            sd = {k: v for k, v in sd.items() if not k.startswith(_UNUSED)}
            load_strict(net, sd, "synchformer_desync", self.path)
            self._net = net.eval().requires_grad_(False).to(self.device)
        return self._net

    def _frames(self, frames: Any) -> Tensor:
        x = frames if isinstance(frames, Tensor) else torch.as_tensor(np.asarray(frames))
        if x.dim() == 4:
            x = x[None]
        if x.dim() != 5:
            raise PrismAudioError(f"desync: frames must be [B, T, 3, H, W] or [B, T, H, W, 3], got {tuple(x.shape)}")
        if x.dtype == torch.uint8 and x.shape[-1] == 3:
            x = x.permute(0, 1, 4, 2, 3)
        if x.shape[2] != 3 or x.shape[1] == 0:
            raise PrismAudioError(f"desync: expected frames [B, T>0, 3, H, W], got {tuple(x.shape)}")
        return to_uint8(x)

    @torch.no_grad()
    def _clip_tokens(self, frames: Tensor, wave: Tensor) -> tuple[Tensor, Tensor]:
        """One clip -> visual [S, 8, D] and audio [S, 6, D] segment tokens (S = min of both counts)."""
        net, dev = self.net, self.device
        img = preprocess_frames(frames.cpu(), self.size).to(dev)  # uint8 resize on the CPU (torchvision's kernel)
        vseg = _segments(img, SEG_FRAMES, SEG_FRAMES_STEP, 0).permute(0, 1, 4, 2, 3)  # [Sv, 3, 16, H, W]
        if wave.shape[-1] < SEG_SAMPLES:
            wave = nn.functional.pad(wave, (0, SEG_SAMPLES - wave.shape[-1]))
        aseg = wave.to(dev).unfold(-1, SEG_SAMPLES, SEG_SAMPLES_STEP)  # [Sa, 10240]
        s = min(vseg.shape[0], aseg.shape[0])
        vis = torch.cat([net.vfeat_extractor(b) for b in vseg[:s].split(self.batch_segments)])
        aud = torch.cat([net.afeat_extractor(self.logmel(b)) for b in aseg[:s].split(self.batch_segments)])
        return vis, aud

    @torch.no_grad()
    def logits(self, frames: Any, audio: Any, sr: int) -> Tensor:
        """[B, 2, 21] offset logits for the first and the last 14 segments of each clip."""
        fr, wav = self._frames(frames), mono_at(audio, sr, SR, "synchformer_desync")
        if fr.shape[0] != wav.shape[0]:
            raise PrismAudioError(f"desync: {fr.shape[0]} videos vs {wav.shape[0]} audio clips")
        out = []
        for f, a in zip(fr, wav):
            vis, aud = self._clip_tokens(f, a)
            s = vis.shape[0]
            if s < N_SEGMENTS:  # documented: repeat the last segment's tokens
                idx = torch.arange(N_SEGMENTS).clamp(max=s - 1)
                vis, aud, s = vis[idx], aud[idx], N_SEGMENTS
            starts = (0, s - N_SEGMENTS)
            v = torch.stack([vis[i:i + N_SEGMENTS] for i in starts])
            au = torch.stack([aud[i:i + N_SEGMENTS] for i in starts])
            out.append(self.net.classify(v, au).cpu())
        return torch.stack(out)

    def offsets(self, frames: Any, audio: Any, sr: int) -> Tensor:
        """[B, 2] signed offsets (s) on the grid -2..2 step 0.2: first and last 4.8 s windows."""
        return OFFSET_GRID[self.logits(frames, audio, sr).argmax(-1)]

    def desync(self, frames: Any, audio: Any, sr: int) -> Tensor:
        """[B] mean |offset| (s) over the two windows (av-benchmark DeSync per clip)."""
        return self.offsets(frames, audio, sr).abs().mean(-1)


__all__ = ["OFFSET_GRID", "LogMel", "SyncAudioBranch", "SynchformerDesync", "SynchformerNet", "mel_filterbank"]
