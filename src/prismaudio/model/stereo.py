"""Parametric stereo for the `mini` autoencoder: a mid (mono) signal plus a few spatial parameters
per latent frame, measured by signal processing and applied by the decoder.

Why: a learned stereo decoder trained for an hour on a CPU gets the level of each channel roughly
right and which channel leads (the ITD sign) at chance (docs/training_notes.md, stage 0): no
magnitude loss sees a time difference of a few samples. Low-bit-rate codecs (HE-AAC v2's parametric
stereo) do not learn space at all: they send one downmix plus per-band level and time/phase
differences. Here the same split: the learned codec only ever sees the mid signal, and space is
carried exactly by `bands` inter-channel level differences (ILD, dB per frequency band) and one
inter-channel time difference (ITD, samples) per latent frame. These parameters are ordinary latent
channels, so the DiT generates them like the rest (they are smooth and follow the object's x).

Conventions (those of the synth scene and `metrics.spatial`): ITD tau > 0 when the LEFT channel
leads (the right one is the left delayed by tau samples), R_f = L_f e^{-i w_f tau}.

Analysis, per STFT frame and bin (tau from the latent frame it belongs to):
    M = (L e^{-i w tau / 2} + R e^{+i w tau / 2}) / 2      (both channels aligned to the middle)
  so for a single source with gains a, b, M = (a + b) / 2 S: no comb filtering, unlike (L + R) / 2.
Synthesis: L' = g_L M e^{+i w tau / 2}, R' = g_R M e^{-i w tau / 2}, with g_L = 2 r / (1 + r),
  g_R = 2 / (1 + r), r = 10^(ILD / 20) interpolated across frequency from the band centres: for a
  single delayed, level-panned source, synthesis(analysis(x)) = x (up to STFT edge effects).
Limitation: one ITD per frame (the energy-dominant source's) and no inter-channel coherence
parameter, so two simultaneous sources at different positions share one ITD, and reverberation
comes out coherent between the channels (narrower than the original).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["ParametricStereo", "stereo_param_channels"]

ILD_SCALE_DB = 12.0  # latent value = ILD dB / 12 (clamped to +-24 dB): unit-scale for the DiT
ILD_MAX_DB = 24.0


def stereo_param_channels(bands: int) -> int:
    """Latent channels the spatial parameters take: one ILD per band + one ITD."""
    return bands + 1 if bands > 0 else 0


def _band_weights(bands: int, n_bins: int, lowest: float) -> Tensor:
    """[bands, n_bins] triangular ("hat") weights centred on log-spaced band centres (0, then from
    `lowest` x Nyquist to Nyquist), summing to 1 in every bin: band energies are pooled with them and
    the gains interpolated with them."""
    freqs = torch.linspace(0, 1, n_bins, dtype=torch.float64)  # fraction of Nyquist
    if bands == 1:
        return torch.ones(1, n_bins)
    centres = torch.cat([torch.zeros(1, dtype=torch.float64),
                         torch.logspace(math.log10(lowest), 0.0, bands - 1, dtype=torch.float64)])
    w = torch.zeros(bands, n_bins, dtype=torch.float64)
    for b in range(bands):
        lo = centres[b - 1] if b > 0 else None
        hi = centres[b + 1] if b + 1 < bands else None
        c = centres[b]
        up = torch.ones_like(freqs) if lo is None else ((freqs - lo) / (c - lo)).clamp(0, 1)
        down = torch.ones_like(freqs) if hi is None else ((hi - freqs) / (hi - c)).clamp(0, 1)
        w[b] = torch.where(freqs <= c, up, down)
    return (w / w.sum(0, keepdim=True)).float()


class ParametricStereo(nn.Module):
    """Stereo <-> (mid, spatial parameters). No learned parameters; buffers are not saved.

    `frame` is the latent hop (the VAE's downsampling ratio): parameters come one per latent frame,
    shape [B, bands + 1, N] = [ILD_1 .. ILD_bands ; ITD], scaled to about unit range. Everything is in
    samples and fractions of Nyquist, so the module needs no sample rate.
    """

    def __init__(self, bands: int, frame: int, n_fft: int = 1024, hop: int = 256, max_itd: float = 16.0,
                 lowest_band: float = 0.025) -> None:
        super().__init__()
        if bands < 1:
            raise ValueError("parametric stereo needs at least one band")
        if frame % hop:
            raise ValueError(f"STFT hop {hop} must divide the latent frame {frame}")
        self.bands, self.frame, self.n_fft, self.hop = bands, frame, n_fft, hop
        self.max_lag = float(max_itd)  # samples
        self.itd_scale = self.max_lag / 2  # latent value = tau / itd_scale
        n_bins = n_fft // 2 + 1
        omega = 2 * math.pi * torch.arange(n_bins, dtype=torch.float64) / n_fft  # rad per sample
        lags = torch.arange(-4 * math.floor(self.max_lag), 4 * math.floor(self.max_lag) + 1) / 4.0
        self.register_buffer("omega", omega.float(), persistent=False)
        self.register_buffer("lags", lags.float(), persistent=False)
        # e^{+i w lag}: Re(sum_f L R* e^{+i w lag}) peaks at lag = tau... see `_itd` for the sign
        steer = torch.polar(torch.ones(n_bins, len(lags), dtype=torch.float64), omega[:, None] * lags[None])
        self.register_buffer("steer", steer.to(torch.complex64), persistent=False)
        self.register_buffer("band_w", _band_weights(bands, n_bins, lowest_band), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    @property
    def channels(self) -> int:
        return stereo_param_channels(self.bands)

    # ---- STFT helpers ----------------------------------------------------------------------
    def _stft(self, x: Tensor) -> Tensor:
        """[..., S] -> [..., F, T] complex (centred frames, frame t centred on sample t * hop)."""
        shape = x.shape
        spec = torch.stft(x.reshape(-1, shape[-1]).float(), self.n_fft, self.hop, window=self.window,
                          center=True, return_complex=True)
        return spec.reshape(*shape[:-1], *spec.shape[-2:])

    def _istft(self, spec: Tensor, length: int) -> Tensor:
        shape = spec.shape
        x = torch.istft(spec.reshape(-1, *shape[-2:]), self.n_fft, self.hop, window=self.window,
                        center=True, length=length)
        return x.reshape(*shape[:-2], length)

    def _pool(self, n_stft: int, n_latent: int, device: torch.device) -> Tensor:
        """[T, N] triangular weights (width two latent frames) of STFT frame t in latent frame n."""
        t = torch.arange(n_stft, device=device, dtype=torch.float32) * self.hop
        c = (torch.arange(n_latent, device=device, dtype=torch.float32) + 0.5) * self.frame
        return (1 - (t[:, None] - c[None]).abs() / self.frame).clamp_min(0)

    def _to_stft_frames(self, p: Tensor, n_stft: int) -> Tensor:
        """Per-latent-frame values [B, K, N] -> per STFT frame [B, K, T], linear between frame centres."""
        n = p.shape[-1]
        u = (torch.arange(n_stft, device=p.device, dtype=torch.float32) * self.hop / self.frame - 0.5).clamp(0, n - 1)
        i0 = u.floor().long().clamp(max=n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        a = u - i0
        return p[..., i0] * (1 - a) + p[..., i1] * a

    # ---- analysis / synthesis ----------------------------------------------------------------
    @torch.no_grad()
    def analyse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """stereo [B, 2, S] (S a multiple of `frame`) -> (mid [B, 1, S], params [B, bands + 1, S / frame])."""
        b, _, s = x.shape
        n = s // self.frame
        spec = self._stft(x)  # [B, 2, F, T]
        left, right = spec[:, 0], spec[:, 1]
        pool = self._pool(spec.shape[-1], n, x.device)  # [T, N]
        # ILD per band: pooled energies; bands below the floor (~ -90 dBFS) get 0 dB
        floor = 1e-4
        el = torch.einsum("kf,bft,tn->bkn", self.band_w, left.abs().square(), pool)
        er = torch.einsum("kf,bft,tn->bkn", self.band_w, right.abs().square(), pool)
        ild = 10 * torch.log10((el + floor) / (er + floor))
        # ITD: the lag maximising Re sum_f (L R*)(f) e^{-i w lag}, energy-weighted over all bins
        cross = torch.einsum("bft,tn->bnf", left * right.conj(), pool.to(left.dtype))  # [B, N, F]
        tau = self._itd(cross)  # [B, N] samples
        quiet = (el + er).sum(1) < floor * self.bands  # nothing to localise: centre
        tau = torch.where(quiet, torch.zeros_like(tau), tau)
        tau_t = self._to_stft_frames(tau[:, None], spec.shape[-1])[:, 0]  # [B, T]
        rot = torch.polar(torch.ones_like(tau_t)[:, None], self.omega[None, :, None] * tau_t[:, None] / 2)
        mid_spec = (left * rot.conj() + right * rot) / 2  # both channels aligned to the middle
        mid = self._istft(mid_spec, s)[:, None]
        params = torch.cat([(ild.clamp(-ILD_MAX_DB, ILD_MAX_DB) / ILD_SCALE_DB), tau[:, None] / self.itd_scale], 1)
        return mid, params

    def _itd(self, cross: Tensor) -> Tensor:
        """Lag (samples) of the largest real part of the steered cross-spectrum [B, N, F], with a mild
        preference for small |lag| (near-ties of a tonal source's aliases go to the principal one)
        and a parabolic refinement between the quarter-sample grid points."""
        # R = L e^{-i w tau}  =>  L R* = |L|^2 e^{+i w tau}: steer with e^{-i w lag}, peak at lag = tau
        score = (cross @ self.steer.conj()).real  # [B, N, K]
        prior = 1 - 0.05 * (self.lags / self.max_lag).square()
        score = score * prior
        k = score.argmax(-1)
        kk = k.clamp(1, len(self.lags) - 2)
        y0, y1, y2 = (score.gather(-1, (kk + d)[..., None])[..., 0] for d in (-1, 0, 1))
        den = y0 - 2 * y1 + y2
        delta = torch.where(den < 0, 0.5 * (y0 - y2) / den.clamp(max=-1e-12), torch.zeros_like(den)).clamp(-0.5, 0.5)
        step = float(self.lags[1] - self.lags[0])
        return self.lags[kk] + delta * step

    def synthesise(self, mid: Tensor, params: Tensor) -> Tensor:
        """(mid [B, 1, S], params [B, bands + 1, N]) -> stereo [B, 2, S]; differentiable in `mid`."""
        s = mid.shape[-1]
        spec = self._stft(mid[:, 0])  # [B, F, T]
        t = spec.shape[-1]
        p = self._to_stft_frames(params.float(), t)  # [B, K, T]
        ild_db = p[:, : self.bands].clamp(-ILD_MAX_DB / ILD_SCALE_DB, ILD_MAX_DB / ILD_SCALE_DB) * ILD_SCALE_DB
        tau = p[:, self.bands].clamp(-self.max_lag / self.itd_scale, self.max_lag / self.itd_scale) * self.itd_scale
        r = 10 ** (torch.einsum("kf,bkt->bft", self.band_w, ild_db) / 20)  # amplitude ratio L / R per bin
        gl, gr = 2 * r / (1 + r), 2 / (1 + r)
        rot = torch.polar(torch.ones_like(tau)[:, None], self.omega[None, :, None] * tau[:, None] / 2)
        out = torch.stack([spec * gl * rot, spec * gr * rot.conj()], 1)
        return self._istft(out, s)
