"""Parametric stereo (`model/stereo.py`) and the `mini` VAE built on it (issue 17)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prismaudio.config import model_config_from_dict, preset
from prismaudio.errors import PrismAudioError
from prismaudio.metrics.spatial import gcc_phat_itd
from prismaudio.model.stereo import ParametricStereo
from prismaudio.model.vae import OobleckVAE

ROOT = Path(__file__).resolve().parents[1]
SR, FRAME = 16000, 512


def _panned(delay: int, ild_db: float, n: int = 8 * FRAME, seed: int = 0) -> torch.Tensor:
    """[1, 2, n] band-limited noise bursts; the right channel is the left delayed by `delay` samples
    (delay > 0: left leads) and `ild_db` quieter."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(n + 64, generator=g)
    src = torch.nn.functional.conv1d(src[None, None], torch.ones(1, 1, 3) / 3)[0, 0]  # gentle low-pass
    env = (torch.arange(src.shape[0]) % 1500 < 900).float()
    src = src * env
    left = src[32:32 + n]
    right = src[32 - delay:32 - delay + n] * 10 ** (-ild_db / 20)
    return torch.stack([left, right])[None] * 0.3


@pytest.mark.parametrize("delay", [-9, -4, -1, 1, 3, 8])
def test_itd_is_measured_to_a_quarter_sample_and_its_sign_survives(delay: int) -> None:
    ps = ParametricStereo(7, FRAME)
    x = _panned(delay, 3.0)
    mid, params = ps.analyse(x)
    tau = params[0, -1] * ps.itd_scale
    assert torch.allclose(tau, torch.full_like(tau, float(delay)), atol=0.25), tau
    y = ps.synthesise(mid, params)
    est = gcc_phat_itd(y[0, 0].numpy(), y[0, 1].numpy(), SR)
    ref = gcc_phat_itd(x[0, 0].numpy(), x[0, 1].numpy(), SR)
    assert np.sign(est) == np.sign(ref) == np.sign(delay)
    assert abs(est - ref) * SR < 0.5


def test_ild_is_measured_per_band_and_applied() -> None:
    ps = ParametricStereo(7, FRAME)
    x = _panned(0, 6.0)
    mid, params = ps.analyse(x)
    ild = params[0, :7] * 12.0  # ILD_SCALE_DB
    assert torch.allclose(ild, torch.full_like(ild, 6.0), atol=0.5)
    y = ps.synthesise(mid, params)
    level = 10 * torch.log10(y[0, 0].square().sum() / y[0, 1].square().sum())
    assert abs(float(level) - 6.0) < 0.5


def test_round_trip_reconstructs_a_single_panned_source() -> None:
    ps = ParametricStereo(7, FRAME)
    x = _panned(5, -4.0, seed=3)
    y = ps.synthesise(*ps.analyse(x))
    core = slice(FRAME, -FRAME)  # away from the clip edges
    err = (y - x)[..., core].square().sum() / x[..., core].square().sum()
    assert float(err) < 1e-3  # > 30 dB SNR


def test_mid_is_aligned_not_comb_filtered() -> None:
    """(L + R) / 2 of a 9-sample ITD notches ~890 Hz; the aligned mid keeps the source's spectrum."""
    ps = ParametricStereo(7, FRAME)
    x = _panned(9, 0.0)
    mid, _ = ps.analyse(x)
    naive = x.mean(1)
    src = x[:, 0]
    f = torch.fft.rfftfreq(x.shape[-1], 1 / SR)
    band = (f > 800) & (f < 980)

    def energy(s: torch.Tensor) -> float:
        return float(torch.fft.rfft(s[0]).abs().square()[band].sum())

    assert energy(naive) < 0.2 * energy(src)
    assert energy(mid[:, 0]) > 0.8 * energy(src)


def test_silence_gives_centred_zero_parameters() -> None:
    ps = ParametricStereo(7, FRAME)
    mid, params = ps.analyse(torch.zeros(1, 2, 4 * FRAME))
    assert torch.equal(params, torch.zeros_like(params))
    assert torch.equal(ps.synthesise(mid, params), torch.zeros(1, 2, 4 * FRAME))


def _ps_config(bands: int = 7):
    cfg = preset("tiny")
    cfg.vae.stereo_bands = bands
    cfg.vae.stereo_n_fft, cfg.vae.stereo_hop = 256, 64  # the tiny VAE's latent frame is 128 samples
    cfg.dit.io_channels = cfg.vae.latent_channels
    return cfg


def test_vae_latents_carry_the_spatial_channels_and_keep_the_state_layout() -> None:
    cfg = _ps_config()
    vae = OobleckVAE(cfg.vae).eval()
    mono = OobleckVAE(dataclasses.replace(cfg.vae, audio_channels=1, stereo_bands=0))
    assert set(vae.state_dict()) == set(mono.state_dict())  # no buffers of the DSP are saved
    x = _panned(4, 2.0, n=8 * cfg.vae.downsampling_ratio)
    with torch.no_grad():
        mean, std = vae.encode_moments(x)
        z = vae.encode(x, sample=False)
        y = vae.decode(z)
    assert mean.shape[1] == cfg.vae.latent_dim + 8 == cfg.vae.latent_channels
    assert torch.all(std[:, cfg.vae.latent_dim:] == 1e-4)
    assert y.shape == x.shape
    # even an untrained codec keeps which side leads: the measured ITD is applied by the decoder
    est = gcc_phat_itd(y[0, 0].numpy(), y[0, 1].numpy(), SR)
    assert est > 0


def test_config_refuses_mismatched_latent_width() -> None:
    cfg = _ps_config()
    bad = cfg.to_dict()
    bad["dit"]["io_channels"] = cfg.vae.latent_dim
    with pytest.raises(PrismAudioError, match="io_channels"):
        model_config_from_dict(bad)
    mono = cfg.to_dict()
    mono["vae"]["audio_channels"] = 1
    with pytest.raises(PrismAudioError, match="parametric stereo"):
        model_config_from_dict(mono)


def test_paper_preset_is_unchanged() -> None:
    cfg = preset("paper")
    assert cfg.vae.stereo_bands == 0 and cfg.vae.latent_channels == cfg.vae.latent_dim == cfg.dit.io_channels


def test_init_script_makes_the_mono_core_of_a_stereo_vae(tmp_path: Path) -> None:
    """For a centred source (L = R = mid) the converted encoder's first layer and decoder's last
    layer compute what the stereo ones did."""
    from prismaudio.pipeline import PrismAudioPipeline

    src = PrismAudioPipeline.from_preset("tiny", seed=1)
    src.save_pretrained(tmp_path / "src")
    out = tmp_path / "ps"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "init_parametric_vae.py"), "--from",
                        str(tmp_path / "src"), "--out", str(out), "--bands", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    new = PrismAudioPipeline.from_pretrained(out)
    assert new.config.vae.stereo_bands == 3 and new.config.dit.io_channels == new.config.vae.latent_dim + 4
    m = torch.randn(1, 1, 1024)
    with torch.no_grad():
        a = src.vae.encoder.layers[0](m.expand(1, 2, -1))
        b = new.vae.encoder.layers[0](m)
        assert torch.allclose(a, b, atol=1e-5)
        h = torch.randn(1, src.vae.decoder.layers[-2].weight_v.shape[1], 256)
        assert torch.allclose(src.vae.decoder.layers[-2](h).mean(1, keepdim=True), new.vae.decoder.layers[-2](h), atol=1e-5)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "init_parametric_vae.py"), "--from", str(out),
                        "--out", str(tmp_path / "again")], capture_output=True, text=True)
    assert r.returncode == 2 and "already" in r.stderr and not (tmp_path / "again").exists()
