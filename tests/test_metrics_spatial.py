import math

import numpy as np
import pytest
import torch

from prismaudio.metrics.spatial import (gcc_distribution_distance_paper, gcc_mse_bewo, gcc_phat_itd,
                                        itd_track_bewo, tdoa_distribution_paper)

SR = 16000


def _pink(n, seed=0):
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec))
    spec[1:] /= np.sqrt(f[1:])
    x = np.fft.irfft(spec, n)
    return 0.5 * x / np.abs(x).max()


def _delayed(x, d):
    """Right channel = left delayed by d (fractional) samples (FFT phase shift)."""
    n = len(x)
    w = 2 * np.pi * np.fft.rfftfreq(n)
    return np.fft.irfft(np.fft.rfft(x) * np.exp(-1j * w * d), n)


@pytest.mark.parametrize("d", [3.0, -5.0, 2.3, -4.6, 0.4])
@pytest.mark.parametrize("noise", ["white", "pink"])
def test_gcc_phat_integer_and_fractional(d, noise):
    x = _pink(8000) if noise == "pink" else np.random.default_rng(1).standard_normal(8000) * 0.3
    itd = gcc_phat_itd(x, _delayed(x, d), SR)
    assert abs(itd - d / SR) < 0.05e-3
    assert abs(gcc_phat_itd(_delayed(x, d), x, SR) + d / SR) < 0.05e-3


def test_bewo_sign_and_constant_track():
    x = _pink(4 * SR, seed=2)
    a = torch.tensor(np.stack([x, _delayed(x, 4.0)]), dtype=torch.float32)
    tr = itd_track_bewo(a, SR, frame_stride=128)
    assert tr.shape == (100,)
    assert torch.allclose(tr, torch.full_like(tr, 4 / SR))  # left leads -> positive, like gcc_phat_itd
    tr_exact = itd_track_bewo(a[:, : SR], SR)  # exact protocol (513 frames) on a 1 s clip
    assert torch.allclose(tr_exact, torch.full_like(tr_exact, 4 / SR))


def test_gcc_mse_bewo_zero_and_grows():
    x = _pink(2 * SR, seed=3)
    clips = {d: torch.tensor(np.stack([x, _delayed(x, d)]), dtype=torch.float32) for d in (0, 2, 6)}
    ref = [clips[0], clips[2]]
    assert gcc_mse_bewo(ref, ref, SR, frame_stride=256) == 0.0
    m1 = gcc_mse_bewo(ref, [clips[2], clips[2]], SR, frame_stride=256)
    m2 = gcc_mse_bewo(ref, [clips[6], clips[6]], SR, frame_stride=256)
    assert 0 < m1 < m2
    assert m1 == pytest.approx(((2 / SR) ** 2 / 2) * 1000, rel=1e-6)


def test_paper_mode_mirrored_on_swap():
    x = _pink(3 * SR, seed=4)
    a = np.stack([x, _delayed(x, 3.0)])
    t, r = tdoa_distribution_paper(torch.tensor(a), SR)
    ts, rs = tdoa_distribution_paper(torch.tensor(a[::-1].copy()), SR)
    assert r is None and rs is None and len(t) == 30
    assert torch.allclose(torch.sort(ts)[0], torch.sort(-t)[0], atol=1e-9)
    assert abs(float(t.mean()) - 3 / SR) < 0.05e-3
    d = gcc_distribution_distance_paper(torch.tensor(a), torch.tensor(a), SR)
    ds = gcc_distribution_distance_paper(torch.tensor(a), torch.tensor(a[::-1].copy()), SR)
    assert d["mode"] == "paper" and d["distance"] == 0.0 and ds["distance"] > 0.1


def test_silent_and_mono():
    z = torch.zeros(2, 2 * SR)
    t, r = tdoa_distribution_paper(z, SR)
    assert len(t) == 0 and "silent" in r
    d = gcc_distribution_distance_paper(z, z, SR)
    assert math.isnan(d["distance"]) and d["reason"]
    assert torch.isnan(itd_track_bewo(z, SR, frame_stride=512)).all()
    det = gcc_mse_bewo([z], [z], SR, frame_stride=512, return_details=True)
    assert math.isnan(det["gcc_mse"]) and det["reason"]
    mono = torch.randn(1, SR)
    assert (itd_track_bewo(mono, SR) == 0).all()  # mono: identical channels, ITD 0 by definition
    t, r = tdoa_distribution_paper(mono, SR)
    assert len(t) == 0 and "mono" in r


def test_resamples_to_16k():
    x = _pink(48000, seed=6)
    a = torch.tensor(np.stack([x, _delayed(x, 9.0)]), dtype=torch.float32)  # 9 samples @ 48k = 3 @ 16k
    tr = itd_track_bewo(a, 48000, frame_stride=256)
    assert torch.allclose(tr, torch.full_like(tr, 3 / SR))
