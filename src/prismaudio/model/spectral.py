"""A spectral codec: the learned mono core of the `mini` autoencoder as an alternative to Oobleck.

Why: Oobleck's first and last layers run at the audio rate (16,000 steps per second per channel),
so on 2 CPU cores it trains at ~0.5 steps/s, and after 1,500 steps it still decodes a struck metal
bar 23 dB too soft with its decay lost in a -52 dB noise floor (docs/training_notes.md). This codec
works on STFT frames (hop 128: 125 per second), the way Vocos-style vocoders do: the encoder reads
each frame's log magnitude and phase direction, ConvNeXt blocks mix frames, a strided convolution
takes them to the latent rate; the decoder mirrors it and predicts each frame's log magnitude, and
Griffin-Lim (`spec_gl_iters` iterations) makes the waveform. Training fits the magnitudes directly
(`train/vae_stage.py`), no waveform in the loop. Magnitudes -- what timbre judges and onset
detectors read -- come out directly instead of through a deep stack of transposed convolutions, and a
step costs a fraction of Oobleck's, so many more steps fit in the same CPU budget.

Shapes match `OobleckEncoder` / `OobleckDecoder` (so `OobleckVAE` takes either): encoder
[B, A, S] -> [B, 2 latent_dim, S / ratio], decoder [B, latent_dim, N] -> [B, A, N ratio].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VAEConfig

__all__ = ["SpectralDecoder", "SpectralEncoder", "griffin_lim", "spectral_target"]

_LOG_EPS = 1e-5
_MAX_LOG_MAG = 7.0  # |X| <= e^7 ~ 1100 (a full-scale sine peaks at n_fft / 4 = 128 here)


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k 7) -> LayerNorm -> pointwise MLP (x3) -> layer scale, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 3 * dim)
        self.pw2 = nn.Linear(3 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dw(x).transpose(1, 2)
        h = self.pw2(F.gelu(self.pw1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


def _blocks(dim: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[ConvNeXtBlock(dim) for _ in range(n)])


class _Spectral(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.n_fft, self.hop = cfg.spec_n_fft, cfg.spec_hop
        self.k = cfg.downsampling_ratio // self.hop  # STFT frames per latent frame
        self.bins = self.n_fft // 2 + 1
        self.channels = cfg.audio_channels
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)


class SpectralEncoder(_Spectral):
    """audio [B, A, S] -> [B, 2 latent_dim, S / ratio] = [mean ; scale] (pre-bottleneck)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__(cfg)
        w, half = cfg.channels, max(1, cfg.spec_depth // 2)
        self.proj = nn.Conv1d(3 * self.bins * self.channels, w, 3, padding=1)
        self.pre = _blocks(w, half)
        self.down = nn.Conv1d(w, w, self.k, stride=self.k)
        self.post = _blocks(w, cfg.spec_depth - half)
        self.out = nn.Conv1d(w, 2 * cfg.latent_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        b, a, s = x.shape
        spec = torch.stft(x.reshape(b * a, s), self.n_fft, self.hop, window=self.window, center=True,
                          return_complex=True)[..., : s // self.hop]  # N k frames (the last, centred on S, dropped)
        mag = spec.abs()
        unit = spec / mag.clamp_min(_LOG_EPS)
        feats = torch.cat([(mag + _LOG_EPS).log(), unit.real, unit.imag], 1)  # [B A, 3 F, T]
        h = self.proj(feats.reshape(b, a * 3 * self.bins, -1))
        return self.out(self.post(self.down(self.pre(h))))


class SpectralDecoder(_Spectral):
    """latents [B, latent_dim, N] -> audio [B, A, N ratio]: per-frame log magnitude and phase, iSTFT."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__(cfg)
        w, half = cfg.channels, max(1, cfg.spec_depth // 2)
        self.proj = nn.Conv1d(cfg.latent_dim, w, 3, padding=1)
        self.pre = _blocks(w, cfg.spec_depth - half)
        self.up = nn.ConvTranspose1d(w, w, self.k, stride=self.k)
        self.post = _blocks(w, half)
        self.out = nn.Conv1d(w, self.bins * self.channels, 3, padding=1)
        self.gl_iters, self.gl_momentum = cfg.spec_gl_iters, cfg.spec_gl_momentum

    def log_magnitude(self, z: Tensor) -> Tensor:
        """latents [B, latent_dim, N] -> predicted log |STFT| [B A, F, N k + 1] (what training fits)."""
        b = z.shape[0]
        h = self.out(self.post(self.up(self.pre(self.proj(z)))))  # [B, F A, N k]
        h = h.reshape(b * self.channels, self.bins, -1).clamp(max=_MAX_LOG_MAG)
        return torch.cat([h, h[..., -1:]], -1)  # the frame centred on the last sample

    def forward(self, z: Tensor) -> Tensor:
        b, _, n = z.shape
        s = n * self.k * self.hop
        audio = griffin_lim(self.log_magnitude(z).exp(), self.n_fft, self.hop, self.window, s, self.gl_iters,
                            self.gl_momentum)
        return audio.reshape(b, self.channels, s)


def griffin_lim(mag: Tensor, n_fft: int, hop: int, window: Tensor, length: int, iters: int,
                momentum: float = 0.0) -> Tensor:
    """Waveform whose STFT magnitude approximates `mag` [..., F, T] (Griffin & Lim 1984, from zero
    phase: deterministic). Why not a learned phase: without an adversarial loss a predicted phase
    does not become consistent across overlapping frames, and the overlap-add cancels (measured: a
    1,500-step run decoded 30-40 dB too soft); magnitudes are what a CPU budget can learn."""
    spec = mag.to(torch.complex64)
    prev = spec
    for _ in range(iters):
        x = torch.istft(spec, n_fft, hop, window=window, center=True, length=length)
        est = torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True)
        proj = mag * est / est.abs().clamp_min(1e-8)
        # "fast Griffin-Lim" (Perraudin et al. 2013): extrapolate along the last step
        spec = proj + momentum * (proj - prev) if momentum else proj
        prev = proj
    return torch.istft(spec, n_fft, hop, window=window, center=True, length=length)


def spectral_target(x: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """|STFT| of audio [B, A, S] as [B A, F, S / hop + 1], the decoder's training target."""
    b, a, s = x.shape
    return torch.stft(x.reshape(b * a, s), n_fft, hop, window=window, center=True, return_complex=True).abs()
