"""Stage 0: train the Oobleck VAE on random audio crops.

Loss = multi-resolution STFT (spectral convergence + log-magnitude L1) + time-domain L1 + a small
KL to N(0, 1); for stereo also the MR-STFT of the sum and the difference of the channels (as
stable-audio-tools' stereo VAEs: per-channel magnitudes say nothing about the inter-channel phase,
i.e. the width of the stereo image, while |L - R| and |L + R| do) and an inter-channel phase
loss (the sign of the ITD: which channel leads, see `interchannel_phase_loss`) (it keeps the latent well scaled for the flow model without blurring the audio), and
optionally a hinge GAN with a small multi-scale STFT discriminator plus feature matching.

The GAN needs no second optimizer: the generator's adversarial term is evaluated through the
discriminator with *detached* parameters (`torch.func.functional_call`), and the discriminator's
term sees a detached reconstruction, so one backward pass gives each side only its own gradients
and the common trainer (one optimizer, DDP, accumulation, EMA) trains both.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import PrismAudioError
from ..io.audio import save_wav
from ..io.spectrogram import save_spectrogram_png
from ..model.spectral import SpectralDecoder, spectral_target
from ..model.vae import OobleckVAE
from ..pipeline import PrismAudioPipeline
from .config import TrainConfig, VAELossConfig
from .data import AudioClips, build_audio_clips, load_rows

DEMO_CLIPS = 2


def _stft(x: Tensor, n_fft: int) -> Tensor:
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    spec = torch.stft(x.reshape(-1, x.shape[-1]), n_fft, hop_length=n_fft // 4, window=window, return_complex=True)
    return spec.view(*x.shape[:-1], *spec.shape[-2:])


def _stft_mag(x: Tensor, n_fft: int) -> Tensor:
    return _stft(x, n_fft).abs().clamp_min(MAG_FLOOR)


def interchannel_phase_loss(pred: Tensor, target: Tensor, sizes: list[int]) -> Tensor:
    """Mean over FFT sizes of |u_pred - u_target| weighted by the target's cross-spectrum magnitude,
    where u = L·conj(R) / |L·conj(R)| is the inter-channel phase difference of each time-frequency bin.

    Which channel leads (the sign of the ITD, i.e. left or right) lives only in this phase: no
    magnitude loss sees it, not even one on L + R and L - R (|1 - e^{-iωd}| is even in the delay d).
    The loss ignores each channel's absolute phase, which a short-trained decoder cannot match yet."""
    losses = []
    for n in sizes:
        if n > target.shape[-1]:
            continue
        t, p = _stft(target.float(), n), _stft(pred.float(), n)
        ct, cp = t[:, 0] * t[:, 1].conj(), p[:, 0] * p[:, 1].conj()
        w = ct.abs()
        ut, up = ct / w.clamp_min(MAG_FLOOR**2), cp / cp.abs().clamp_min(MAG_FLOOR**2)
        losses.append((w * (ut - up).abs()).sum() / w.sum().clamp_min(MAG_FLOOR**2))
    if not losses:
        raise PrismAudioError(f"every vae.stft_sizes entry exceeds the crop length {target.shape[-1]}")
    return torch.stack(losses).mean()


MAG_FLOOR = 1e-5  # guards the divisions (spectral convergence of a silent batch)
# Floor of the log-magnitude term (a full-scale sine peaks at n_fft / 4 in these Hann STFTs, so this
# is 50-90 dB below it). The corpus is full of digital silence: with a -100 dB floor every silent
# bin demanded the decoder hit -100 dB exactly, the cheapest answer was to be quiet everywhere, and
# the first 1200-step run decoded loud clips 40 dB too soft. Differences below it are inaudible.
LOG_FLOOR = 1e-3


def multi_resolution_stft_loss(pred: Tensor, target: Tensor, sizes: list[int]) -> Tensor:
    """Mean over FFT sizes of spectral convergence + L1 of log magnitudes (sizes > length skipped).

    Spectral convergence is taken over the whole batch (one Frobenius ratio), not per crop: the
    procedural corpus is full of silent stretches, and a per-crop ratio over a silent target divides
    by ~0 and swamps every other term."""
    losses = []
    for n in sizes:
        if n > target.shape[-1]:
            continue
        p, t = _stft_mag(pred.float(), n), _stft_mag(target.float(), n)
        sc = torch.linalg.vector_norm(t - p) / torch.linalg.vector_norm(t).clamp_min(MAG_FLOOR)
        losses.append(sc + (t.clamp_min(LOG_FLOOR).log() - p.clamp_min(LOG_FLOOR).log()).abs().mean())
    if not losses:
        raise PrismAudioError(f"every vae.stft_sizes entry exceeds the crop length {target.shape[-1]}")
    return torch.stack(losses).mean()


def sum_and_difference(x: Tensor) -> Tensor:
    """[B, 2, S] left/right -> [B, 2, S] (L + R, L - R)."""
    return torch.stack([x[:, 0] + x[:, 1], x[:, 0] - x[:, 1]], dim=1)


def kl_to_standard_normal(mean: Tensor, std: Tensor) -> Tensor:
    return (0.5 * (mean.square() + std.square() - 1.0) - std.log()).mean()


class STFTDiscriminator(nn.Module):
    """One scale: complex STFT (real, imag per channel) -> a small 2-D conv stack -> logits map."""

    def __init__(self, n_fft: int, audio_channels: int, ch: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.convs = nn.ModuleList([
            nn.Conv2d(2 * audio_channels, ch, (3, 9), padding=(1, 4)),
            nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4)),
            nn.Conv2d(ch, ch, (3, 9), stride=(1, 2), padding=(1, 4)),
            nn.Conv2d(ch, ch, (3, 3), padding=(1, 1)),
        ])
        self.out = nn.Conv2d(ch, 1, (3, 3), padding=(1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, a, s = x.shape
        window = torch.hann_window(self.n_fft, device=x.device, dtype=x.dtype)
        spec = torch.stft(x.reshape(b * a, s), self.n_fft, self.n_fft // 4, window=window, return_complex=True)
        h = torch.view_as_real(spec).reshape(b, a, *spec.shape[-2:], 2).permute(0, 1, 4, 3, 2)
        h = h.reshape(b, 2 * a, h.shape[-2], h.shape[-1])  # [B, 2A, T, F]
        feats = []
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
            feats.append(h)
        return self.out(h), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, cfg: VAELossConfig, audio_channels: int) -> None:
        super().__init__()
        self.scales = nn.ModuleList([STFTDiscriminator(n, audio_channels, cfg.disc_channels) for n in cfg.disc_sizes])

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        return [d(x) for d in self.scales]


class VAETrainModel(nn.Module):
    """VAE (+ discriminator); `forward(batch, generator)` crops, reconstructs and returns the loss."""

    def __init__(self, vae: OobleckVAE, cfg: VAELossConfig, crop: int) -> None:
        super().__init__()
        self.vae = vae
        self.cfg = cfg
        self.crop = crop
        self.disc = MultiScaleSTFTDiscriminator(cfg, vae.cfg.audio_channels) if cfg.adversarial else None

    def _crops(self, audio: Tensor, generator: torch.Generator) -> Tensor:
        b, _, s = audio.shape
        if s <= self.crop:
            return F.pad(audio, (0, self.crop - s))
        starts = torch.randint(0, s - self.crop + 1, (b,), generator=generator)
        return torch.stack([audio[i, :, int(o) : int(o) + self.crop] for i, o in enumerate(starts)])

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        x = self._crops(batch["audio"], generator)
        if isinstance(self.vae.decoder, SpectralDecoder):
            return self._spectral_loss(x, generator)
        mean, std = self.vae.encode_moments(x)
        eps = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean)
        z = mean + std * eps
        scale = self.vae.cfg.latent_scale
        recon = self.vae.decode(z / scale if scale != 1.0 else z)[..., : x.shape[-1]]
        c = self.cfg
        stft = multi_resolution_stft_loss(recon, x, c.stft_sizes)
        l1 = (recon - x).abs().mean()
        d = self.vae.cfg.latent_dim  # the KL is on the learned channels (parametric stereo's are measured)
        kl = kl_to_standard_normal(mean[:, :d], std[:, :d])
        loss = c.stft_weight * stft + c.l1_weight * l1 + c.kl_weight * kl
        logs = {"stft": stft.detach(), "l1": l1.detach(), "kl": kl.detach()}
        if c.stereo_weight > 0 and x.shape[1] == 2:
            sd = multi_resolution_stft_loss(sum_and_difference(recon), sum_and_difference(x), c.stft_sizes)
            loss = loss + c.stereo_weight * sd
            logs["stft_sd"] = sd.detach()
        if c.phase_weight > 0 and x.shape[1] == 2:
            ipd = interchannel_phase_loss(recon, x, c.stft_sizes)
            loss = loss + c.phase_weight * ipd
            logs["ipd"] = ipd.detach()
        if self.disc is not None:
            d_loss, g_loss, fm = self._adversarial(x, recon)
            loss = loss + d_loss + c.adv_weight * g_loss + c.feature_weight * fm
            logs.update(disc=d_loss.detach(), adv=g_loss.detach(), feat=fm.detach())
        return loss, logs

    def _spectral_loss(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """The spectral codec fits the STFT magnitude of what its encoder saw (the mid, with parametric
        stereo): spectral convergence + log-magnitude L1 at the codec's own STFT, + KL. Its waveform
        comes from Griffin-Lim, which has no parameters, so nothing else needs a gradient."""
        vae, c = self.vae, self.cfg
        mean, std = vae.encode_moments(x)
        d = vae.cfg.latent_dim
        eps = torch.randn(mean[:, :d].shape, generator=generator, device=generator.device).to(mean)
        z = mean[:, :d] + std[:, :d] * eps
        mono = vae.stereo.analyse(vae._pad(x))[0] if vae.stereo is not None else vae._pad(x)
        dec = vae.decoder
        target = spectral_target(mono, dec.n_fft, dec.hop, dec.window)
        log_pred = dec.log_magnitude(z)
        pred = log_pred.exp()
        sc = torch.linalg.vector_norm(target - pred) / torch.linalg.vector_norm(target).clamp_min(MAG_FLOOR)
        log_l1 = (target.clamp_min(LOG_FLOOR).log() - log_pred.clamp_min(math.log(LOG_FLOOR))).abs().mean()
        kl = kl_to_standard_normal(mean[:, :d], std[:, :d])
        loss = c.stft_weight * (sc + log_l1) + c.kl_weight * kl
        return loss, {"stft": (sc + log_l1).detach(), "sc": sc.detach(), "kl": kl.detach()}

    def _adversarial(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        assert self.disc is not None
        d_real = self.disc(real)
        d_fake = self.disc(fake.detach())
        d_loss = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for (r, _), (f, _) in zip(d_real, d_fake))
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        g_out = functional_call(self.disc, frozen, (fake,))
        g_loss = sum(F.relu(1 - f).mean() for f, _ in g_out)
        fm = sum(
            (fa - ra.detach()).abs().mean() / (ra.detach().abs().mean() + 1e-5)
            for (_, rf), (_, ff) in zip(d_real, g_out) for ra, fa in zip(rf, ff)
        )
        n = len(d_real)
        return d_loss / n, g_loss / n, fm / n  # type: ignore[operator]


class VAEStage:
    def __init__(self, cfg: TrainConfig, pipe: PrismAudioPipeline, log: Any) -> None:
        self.cfg = cfg
        self.pipe = pipe
        c = pipe.config
        duration = float(cfg.data.duration if cfg.data.duration is not None else c.duration)
        rows = load_rows(cfg.data, log)
        self.dataset: AudioClips = build_audio_clips(rows, c.sample_rate, duration, log)
        ratio = pipe.vae.downsampling_ratio
        crop = max(1, round(cfg.vae.crop_seconds * c.sample_rate / ratio)) * ratio
        self.module = VAETrainModel(pipe.vae, cfg.vae, crop)
        log(f"stage vae: {len(self.dataset)} clips of {duration:g} s, crops of {crop} samples"
            f"{' + STFT discriminator' if cfg.vae.adversarial else ''}")

    collate = None

    @torch.no_grad()
    def demo(self, module: nn.Module, out: Path, step: int) -> list[Path]:
        """Reconstruct the first clips (posterior mean) with the EMA weights."""
        assert isinstance(module, VAETrainModel)
        module.eval()
        sr = self.pipe.config.sample_rate
        written = []
        for i in range(min(DEMO_CLIPS, len(self.dataset))):
            x = self.dataset.audio[i : i + 1].to(next(module.parameters()).device)
            recon = module.vae.decode(module.vae.encode(x, sample=False))[0, :, : x.shape[-1]]
            recon = (recon / recon.abs().amax().clamp_min(1.0)).float().cpu()
            name = f"step{step:08d}-{self.dataset.ids[i]}"
            save_wav(out / f"{name}.wav", recon, sr)
            save_spectrogram_png(out / f"{name}.png", recon, sr, title=f"{name} (VAE reconstruction)")
            written += [out / f"{name}.wav", out / f"{name}.png"]
        return written

    def export(self, module: nn.Module, out: Path) -> None:
        """The base model with the trained VAE: the `model` of the foundation stage's config."""
        assert isinstance(module, VAETrainModel)
        p = self.pipe
        PrismAudioPipeline(p.config, p.dit, p.conditioner, module.vae, p.video_encoder, p.sync_encoder,
                           p.text_encoder).save_pretrained(out)
