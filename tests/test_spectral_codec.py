"""The spectral codec (`model/spectral.py`) as the learned core of a parametric-stereo VAE."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prismaudio.config import model_config_from_dict, preset
from prismaudio.errors import PrismAudioError
from prismaudio.model.vae import OobleckVAE
from prismaudio.train.vae_stage import multi_resolution_stft_loss


def _config(stereo_bands: int = 3):
    cfg = preset("tiny")
    v = cfg.vae
    v.codec, v.channels, v.spec_depth, v.spec_n_fft, v.spec_hop = "spectral", 32, 2, 128, 32
    v.stereo_bands, v.stereo_n_fft, v.stereo_hop = stereo_bands, 256, 64
    cfg.dit.io_channels = v.latent_channels
    return cfg


def test_shapes_and_lengths_match_the_oobleck_contract() -> None:
    cfg = _config()
    vae = OobleckVAE(cfg.vae).eval()
    ratio = cfg.vae.downsampling_ratio
    x = torch.randn(2, 2, 5 * ratio - 17) * 0.1  # padded up to whole latent frames
    with torch.no_grad():
        mean, std = vae.encode_moments(x)
        y = vae.decode(mean)
    assert mean.shape == std.shape == (2, cfg.vae.latent_channels, 5)
    assert y.shape == (2, 2, 5 * ratio)


def test_the_codec_learns_a_decaying_tone() -> None:
    """A few dozen steps on one struck tone cut the MR-STFT distance clearly (the property the shipped
    Oobleck mini lacked: its decoder lost such decays)."""
    torch.manual_seed(0)
    cfg = _config(stereo_bands=0)
    cfg.vae.audio_channels = 1
    vae = OobleckVAE(cfg.vae)
    n = 8 * cfg.vae.downsampling_ratio
    t = torch.arange(n) / 16000
    tone = (torch.sin(2 * torch.pi * 880 * t) * torch.exp(-t / 0.15) * (t > 0.01)) * 0.5
    x = tone[None, None]
    opt = torch.optim.AdamW(vae.parameters(), 2e-3)
    sizes = [256, 128, 64]

    def loss() -> torch.Tensor:
        mean, _ = vae.encode_moments(x)
        return multi_resolution_stft_loss(vae.decode(mean), x, sizes)

    first = float(loss().detach())
    for _ in range(60):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < 0.6 * first


def test_pipeline_round_trip_is_bit_exact(tmp_path: Path) -> None:
    from prismaudio.pipeline import PrismAudioPipeline

    pipe = PrismAudioPipeline.from_config(_config(), seed=3)
    pipe.save_pretrained(tmp_path / "m")
    again = PrismAudioPipeline.from_pretrained(tmp_path / "m")
    for (k, a), (_, b) in zip(pipe.vae.state_dict().items(), again.vae.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(1, 2, 4 * pipe.config.vae.downsampling_ratio) * 0.1
    with torch.no_grad():
        assert torch.equal(pipe.vae.decode(pipe.vae.encode(x, sample=False)),
                           again.vae.decode(again.vae.encode(x, sample=False)))


def test_bad_codec_settings_are_refused() -> None:
    d = _config().to_dict()
    d["vae"]["codec"] = "wavenet"
    with pytest.raises(PrismAudioError, match="codec"):
        model_config_from_dict(d)
    d = _config().to_dict()
    d["vae"]["spec_hop"] = 96  # does not divide the 128-sample latent frame
    with pytest.raises(PrismAudioError, match="spec_hop"):
        model_config_from_dict(d)


def test_griffin_lim_recovers_a_consistent_magnitude_and_momentum_helps() -> None:
    from prismaudio.model.spectral import griffin_lim, spectral_target

    t = torch.arange(8192) / 16000
    x = (torch.sin(2 * torch.pi * 440 * t) + 0.5 * torch.sin(2 * torch.pi * 1250 * t)) * torch.exp(-t / 0.2)
    win = torch.hann_window(512)
    mag = spectral_target(x[None, None], 512, 128, win)

    def sc(y: torch.Tensor) -> float:
        m = spectral_target(y[:, None], 512, 128, win)
        return float(torch.linalg.vector_norm(m - mag) / torch.linalg.vector_norm(mag))

    plain = sc(griffin_lim(mag, 512, 128, win, 8192, 32))
    fast = sc(griffin_lim(mag, 512, 128, win, 8192, 32, momentum=0.99))
    assert fast < 0.7 * plain and fast < 0.15
    assert torch.equal(griffin_lim(mag, 512, 128, win, 8192, 8), griffin_lim(mag, 512, 128, win, 8192, 8))
