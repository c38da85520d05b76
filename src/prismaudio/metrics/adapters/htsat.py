"""HTSAT, the Swin-transformer audio encoder of MS-CLAP 2023 and LAION-CLAP, with its torchlibrosa front end.

One module for both CLAP backends: the upstream `HTSAT_Swin_Transformer` (HTS-Audio-Transformer, vendored by
`msclap` and `laion_clap`) computation for computation, with the upstream state-dict key names
(``spectrogram_extractor.stft.conv_real.weight``, ``logmel_extractor.melW``, ``bn0.*``, ``patch_embed.*``,
``layers.<i>.blocks.<j>.{norm1,attn.*,norm2,mlp.*,attn_mask}``, ``layers.<i>.downsample.*``, ``norm.*``,
``tscam_conv.*``, ``head.*``), so a release checkpoint loads by stripping its prefix and nothing else.

Equal to upstream (checked against the upstream fixtures, tests/test_upstream_clap.py):

* front end (torchlibrosa 0.1.0): reflect-padded (center) STFT as a Conv1d with the checkpoint's frozen DFT
  kernels (periodic hann), power 2, the checkpoint's frozen mel matrix, ``10 log10(clamp(x, 1e-10))``
  (ref 1, no top_db). `stft_kernels` / `slaney_mel` rebuild those frozen tensors (librosa's formulas) for
  models built without a checkpoint; a loaded checkpoint's own tensors are always used, as upstream does;
* BatchNorm over mel bins, ``reshape_wav2img`` (bicubic, align_corners, time -> spec_size * freq_ratio, then
  the time axis folded into freq_ratio chunks stacked along frequency), Swin stages (window attention with the
  relative position bias, shifted windows with the -100 mask, PatchMerging), final LayerNorm;
* the embedding is upstream's ``latent_output``: the mean of the final tokens (upstream averages the same
  tokens after a regrouping that does not change the mean). The token-semantic CNN head (``tscam_conv``,
  ``head``) is held for the strict load only; the embedding does not use it.

Sizes come from the checkpoint's tensor shapes (`htsat_config_from_state_dict`); what the tensors do not
carry (spec_size, patch_stride, STFT hop) has the upstream defaults and can be overridden. A spectrogram longer
than ``spec_size * freq_ratio`` frames (upstream's overlapping-crop path, unreachable at the CLAP backends'
fixed input lengths) is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import PrismAudioError


@dataclass(frozen=True)
class HTSATConfig:
    """Sizes of one HTSAT (defaults: the upstream class defaults, i.e. MS-CLAP's HTSAT-tiny)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    spec_size: int = 256
    patch_size: tuple[int, int] = (4, 4)
    patch_stride: tuple[int, int] = (4, 4)
    in_chans: int = 1
    num_classes: int = 527
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    mel_bins: int = 64
    n_fft: int = 1024
    hop_size: int = 320
    layer_norm_eps: float = 1e-5
    bn_eps: float = 1e-5
    amin: float = 1e-10

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.mel_bins

    @property
    def max_frames(self) -> int:
        return self.spec_size * self.freq_ratio


OVERRIDABLE = ("spec_size", "patch_stride", "hop_size", "layer_norm_eps", "bn_eps")


def htsat_config_from_state_dict(sd: dict[str, Tensor], where: str = "the checkpoint",
                                 **overrides: Any) -> HTSATConfig:
    """Every size the tensors carry, read from them; `overrides` for the rest (see `OVERRIDABLE`)."""
    bad = sorted(set(overrides) - set(OVERRIDABLE))
    if bad:
        raise PrismAudioError(f"unknown HTSAT override(s) {bad}; allowed: {list(OVERRIDABLE)}")

    def need(key: str) -> Tensor:
        if key not in sd:
            raise PrismAudioError(f"{where} is not an HTSAT checkpoint of the expected layout: missing key {key!r}")
        return sd[key]

    proj = need("patch_embed.proj.weight")
    depths: list[int] = []
    while any(k.startswith(f"layers.{len(depths)}.blocks.") for k in sd):
        i = len(depths)
        depths.append(1 + max(int(k.split(".")[3]) for k in sd if k.startswith(f"layers.{i}.blocks.")))
    if not depths:
        need("layers.0.blocks.0.norm1.weight")
    heads = tuple(int(need(f"layers.{i}.blocks.0.attn.relative_position_bias_table").shape[1])
                  for i in range(len(depths)))
    table = int(need("layers.0.blocks.0.attn.relative_position_bias_table").shape[0])
    window = (math.isqrt(table) + 1) // 2
    dim0 = int(proj.shape[0])
    stft = need("spectrogram_extractor.stft.conv_real.weight")
    cfg = HTSATConfig(
        embed_dim=dim0, depths=tuple(depths), num_heads=heads, window_size=window,
        patch_size=(int(proj.shape[2]), int(proj.shape[3])), in_chans=int(proj.shape[1]),
        num_classes=int(need("head.weight").shape[0]),
        mlp_ratio=float(need("layers.0.blocks.0.mlp.fc1.weight").shape[0]) / dim0,
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in sd,
        mel_bins=int(need("bn0.weight").shape[0]), n_fft=int(stft.shape[-1]),
    )
    if "patch_stride" in overrides:
        s = overrides["patch_stride"]
        overrides["patch_stride"] = (int(s), int(s)) if isinstance(s, int) else tuple(int(v) for v in s)
    return replace(cfg, **overrides)


# ---------------------------------------------------------------- frozen front-end tensors


def stft_kernels(n_fft: int) -> tuple[Tensor, Tensor]:
    """torchlibrosa's frozen STFT Conv1d kernels ([n_fft//2+1, 1, n_fft] real, imag), periodic hann window."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * n / n_fft)
    phase = 2 * math.pi * ((k[:, None] * n[None, :]) % n_fft) / n_fft  # exact integer reduction
    return ((torch.cos(phase) * window)[:, None].float(), (-torch.sin(phase) * window)[:, None].float())


def _hz_to_mel(f: Tensor) -> Tensor:  # Slaney scale (librosa, htk=False)
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp(min=1e-12) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: Tensor) -> Tensor:
    f_sp, min_log_hz, min_log_mel, logstep = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def slaney_mel(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> Tensor:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax) (Slaney scale and norm), transposed: [n_fft//2+1, n_mels]."""
    fft_freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = _hz_to_mel(torch.tensor([float(fmin), float(fmax)], dtype=torch.float64))
    mel_f = _mel_to_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))
    fdiff = mel_f.diff()
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0)
    weights = weights * (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.T.float().contiguous()


class _STFT(nn.Module):
    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        real, imag = stft_kernels(n_fft)
        self.n_fft, self.hop = n_fft, hop
        self.conv_real = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        self.conv_real.weight.data.copy_(real)
        self.conv_imag.weight.data.copy_(imag)


class _Spectrogram(nn.Module):
    """torchlibrosa `Spectrogram` (center, reflect, power 2): [B, S] -> [B, 1, T, n_fft//2+1]."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.stft = _STFT(n_fft, hop)

    def forward(self, wave: Tensor) -> Tensor:
        n = self.stft.n_fft
        if wave.shape[-1] <= n // 2:
            raise PrismAudioError(f"HTSAT front end needs more than {n // 2} samples, got {wave.shape[-1]}")
        x = F.pad(wave[:, None, :], (n // 2, n // 2), mode="reflect")
        real = self.stft.conv_real(x)[:, None].transpose(2, 3)
        imag = self.stft.conv_imag(x)[:, None].transpose(2, 3)
        return real**2 + imag**2


class _LogMel(nn.Module):
    """torchlibrosa `LogmelFilterBank` (ref 1, no top_db): power -> 10 log10(clamp(power @ melW, amin))."""

    def __init__(self, n_fft: int, n_mels: int, amin: float, sr: int = 32_000, fmin: float = 50.0,
                 fmax: float = 14_000.0):
        super().__init__()
        self.amin = amin
        self.melW = nn.Parameter(slaney_mel(sr, n_fft, n_mels, fmin, fmax), requires_grad=False)

    def forward(self, power: Tensor) -> Tensor:
        return 10.0 * torch.log10(torch.clamp(torch.matmul(power, self.melW), min=self.amin))


# ---------------------------------------------------------------- Swin parts


def window_partition(x: Tensor, ws: int) -> Tensor:
    """[B, H, W, C] -> [B * nW, ws * ws, C] (row-major windows, as upstream)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def relative_position_index(ws: int) -> Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shift_mask(h: int, w: int, ws: int, shift: int) -> Tensor:
    """The shifted-window attention mask: 0 within a region, -100 across regions ([nW, ws*ws, ws*ws])."""
    img = torch.zeros(1, h, w, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).squeeze(-1)
    diff = win[:, None, :] - win[:, :, None]
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(b // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Upstream `SwinTransformerBlock` (norm_before_mlp 'ln'); a window >= the resolution disables the shift."""

    def __init__(self, dim: int, res: tuple[int, int], heads: int, ws: int, shift: int, cfg: HTSATConfig):
        super().__init__()
        if min(res) <= ws:
            ws, shift = min(res), 0
        self.res, self.ws, self.shift = res, ws, shift
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = WindowAttention(dim, ws, heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))
        self.attn_mask: Tensor | None
        self.register_buffer("attn_mask", shift_mask(res[0], res[1], ws, shift) if shift > 0 else None)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.res
        b, _, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.ws), self.attn_mask)
        y = window_reverse(y.view(-1, self.ws, self.ws, c), self.ws, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y.reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, res: tuple[int, int], dim: int, eps: float):
        super().__init__()
        self.res = res
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.res
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class BasicLayer(nn.Module):
    def __init__(self, i: int, res: tuple[int, int], cfg: HTSATConfig, last: bool):
        super().__init__()
        dim = cfg.embed_dim * 2**i
        self.blocks = nn.ModuleList(
            SwinBlock(dim, res, cfg.num_heads[i], cfg.window_size, 0 if j % 2 == 0 else cfg.window_size // 2, cfg)
            for j in range(cfg.depths[i]))
        self.downsample = None if last else PatchMerging(res, dim, cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: HTSATConfig):
        super().__init__()
        pad = tuple((p - s) // 2 for p, s in zip(cfg.patch_size, cfg.patch_stride))
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_stride, padding=pad)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.grid = (cfg.spec_size // cfg.patch_stride[0], cfg.spec_size // cfg.patch_stride[1])

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


# ---------------------------------------------------------------- the network


@dataclass
class HTSATOutput:
    logmel: Tensor  # [B, 1, T, mel_bins], before bn0
    latent: Tensor  # [B, num_features], upstream's latent_output / "embedding"
    tokens: Tensor = field(repr=False)  # [B, N, num_features] after the final LayerNorm


class HTSAT(nn.Module):
    """Upstream `HTSAT_Swin_Transformer` in eval mode, non-fusion: waveform [B, S] -> `HTSATOutput`.

    `mel_sr`, `fmin`, `fmax` only shape the default mel matrix of a model built without a checkpoint.
    """

    def __init__(self, cfg: HTSATConfig, mel_sr: int = 32_000, fmin: float = 50.0, fmax: float = 14_000.0):
        super().__init__()
        if cfg.spec_size % cfg.mel_bins or len(cfg.num_heads) != len(cfg.depths):
            raise PrismAudioError(f"inconsistent HTSAT config {cfg}")
        self.cfg = cfg
        self.spectrogram_extractor = _Spectrogram(cfg.n_fft, cfg.hop_size)
        self.logmel_extractor = _LogMel(cfg.n_fft, cfg.mel_bins, cfg.amin, mel_sr, fmin, fmax)
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins, eps=cfg.bn_eps)
        self.patch_embed = PatchEmbed(cfg)
        gh, gw = self.patch_embed.grid
        n = len(cfg.depths)
        self.layers = nn.ModuleList(BasicLayer(i, (gh // 2**i, gw // 2**i), cfg, i == n - 1) for i in range(n))
        self.norm = nn.LayerNorm(cfg.num_features, eps=cfg.layer_norm_eps)
        sf = cfg.spec_size // 2 ** (n - 1) // cfg.patch_stride[0] // cfg.freq_ratio
        self.tscam_conv = nn.Conv2d(cfg.num_features, cfg.num_classes, kernel_size=(sf, 3), padding=(0, 1))
        self.head = nn.Linear(cfg.num_classes, cfg.num_classes)

    def logmel(self, wave: Tensor) -> Tensor:
        return self.logmel_extractor(self.spectrogram_extractor(wave))

    def reshape_wav2img(self, x: Tensor) -> Tensor:
        """[B, 1, T, F] -> [B, 1, spec_size, spec_size]: bicubic stretch of time, then fold time into frequency."""
        cfg = self.cfg
        b, c, t, f = x.shape
        target_t, target_f = cfg.max_frames, cfg.spec_size // cfg.freq_ratio
        if t > target_t or f > target_f:
            raise PrismAudioError(f"HTSAT input of {t} frames x {f} bins exceeds {target_t} x {target_f} "
                                  "(upstream's overlapping-crop path for longer inputs is not implemented)")
        if t < target_t:
            x = F.interpolate(x, (target_t, f), mode="bicubic", align_corners=True)
        if f < target_f:
            x = F.interpolate(x, (x.shape[2], target_f), mode="bicubic", align_corners=True)
        x = x.permute(0, 1, 3, 2).reshape(b, c, x.shape[3], cfg.freq_ratio, x.shape[2] // cfg.freq_ratio)
        x = x.permute(0, 1, 3, 2, 4)
        return x.reshape(b, c, x.shape[2] * x.shape[3], x.shape[4])

    def forward(self, wave: Tensor) -> HTSATOutput:
        logmel = self.logmel(wave)
        x = self.bn0(logmel.transpose(1, 3)).transpose(1, 3)
        x = self.patch_embed(self.reshape_wav2img(x))
        for layer in self.layers:
            x = layer(x)
        tokens = self.norm(x)
        return HTSATOutput(logmel=logmel, latent=tokens.mean(dim=1), tokens=tokens)
