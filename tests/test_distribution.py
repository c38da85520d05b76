"""Fréchet distance and paired KL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from prismaudio.errors import PrismAudioError
from prismaudio.metrics import distribution as D


def _gauss(n, d, seed):
    return np.random.default_rng(seed).normal(size=(n, d)) @ np.random.default_rng(99).normal(size=(d, d))


def test_fd_identical_is_zero():
    a = _gauss(200, 8, 0)
    assert D.frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-8)


def test_fd_shift_is_squared_norm():
    a = _gauss(300, 6, 1)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.0])
    # same covariance, shifted mean: FD = |shift|^2 exactly
    assert D.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-8)
    # independent draws of N(0, I) vs N(mu, I): FD ~ |mu|^2 (sampling error only)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20000, 4)), rng.normal(size=(20000, 4)) + 2.0
    assert D.frechet_distance(x, y) == pytest.approx(16.0, rel=0.02)


def test_fd_matches_scipy_and_is_symmetric():
    a, b = _gauss(100, 5, 3), 0.5 * _gauss(120, 5, 4) + 1.0
    ma, ca = a.mean(0), np.cov(a, rowvar=False)
    mb, cb = b.mean(0), np.cov(b, rowvar=False)
    ref = float(((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb).real))
    assert D.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    assert D.frechet_distance(b, a) == pytest.approx(D.frechet_distance(a, b), rel=1e-9)


def test_fd_rank_deficient_n_less_than_d():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(5, 32)), rng.normal(size=(7, 32)) + 0.3
    fd = D.frechet_distance(torch.tensor(a, dtype=torch.float32), b)
    assert math.isfinite(fd) and fd > 0
    assert D.frechet_distance(a, b) == pytest.approx(D.frechet_distance(b, a), rel=1e-6)
    assert D.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(PrismAudioError, match="at least 2"):
        D.frechet_distance(a[:1], b)
    with pytest.raises(PrismAudioError, match="widths differ"):
        D.frechet_distance(a, b[:, :10])
    with pytest.raises(PrismAudioError, match="NaN"):
        D.frechet_distance(np.full((3, 2), np.nan), b[:, :2])


def test_kl_identical_is_zero():
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    assert D.kl_paired(logits, logits) == pytest.approx(0.0, abs=1e-12)
    probs = torch.softmax(logits, 1)
    assert D.kl_paired(probs, probs, inputs="probs") == pytest.approx(0.0, abs=1e-9)


def test_kl_two_class_analytic_and_direction():
    gen = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)
    ref = torch.tensor([[0.9, 0.1], [0.9, 0.1]], dtype=torch.float64)
    kl_ref_gen = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # KL(ref || gen), clip 0
    assert D.kl_paired(gen, ref, inputs="probs") == pytest.approx(kl_ref_gen / 2, rel=1e-9)
    per = D.kl_per_clip(gen, ref, inputs="probs")
    assert per[0].item() == pytest.approx(kl_ref_gen) and per[1].item() == pytest.approx(0.0, abs=1e-12)
    # the same with logits (softmax applied)
    assert D.kl_paired(gen.log(), ref.log()) == pytest.approx(kl_ref_gen / 2, rel=1e-9)
    # zero reference mass contributes nothing; the gen floor keeps it finite
    assert D.kl_paired(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), inputs="probs") == pytest.approx(
        -math.log(1e-6), rel=1e-9)
    with pytest.raises(PrismAudioError, match="paired"):
        D.kl_paired(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(PrismAudioError, match="sum to 1"):
        D.kl_paired(torch.ones(2, 3), torch.ones(2, 3), inputs="probs")


def test_embed_all_with_protocol():
    class MeanEmbedder:
        def __call__(self, audio, sample_rate):
            return audio.mean(-1)

    emb = MeanEmbedder()
    assert isinstance(emb, D.Embedder)
    out = D.embed_all(emb, [torch.ones(2, 2, 10), torch.zeros(3, 2, 10)], 16000)
    assert out.shape == (5, 2)
