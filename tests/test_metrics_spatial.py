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


# ---------------------------------------------------------------- fast exact BEWO path vs the reference

def _moving(n, d0, d1, seed):
    """Right channel = left delayed by a delay sweeping linearly from d0 to d1 samples (per-sample
    fractional delay by linear interpolation): every frame has a different, mostly fractional, lag."""
    x = _pink(n + 64, seed=seed)
    t = np.arange(n)
    pos = t + 32 - (d0 + (d1 - d0) * t / n)
    i = np.floor(pos).astype(int)
    fr = pos - i
    return x[32:n + 32], (1 - fr) * x[i] + fr * x[i + 1]


def _clips():
    """Short stereo clips (a few BEWO windows each) that exercise every branch of the fast path."""
    n = 6400  # 0.4 s: 3 distinct windows, 1539 frames
    x = _pink(n, seed=11)
    gaps = np.stack([x, _delayed(x, -3.0)])
    gaps[:, 1200:5300] = 0.0                                            # all-zero frames -> NaN
    gaps[1, 5300:5600] = 0.0                                            # and the right channel alone silent
    l, r = _moving(n, -6.0, 6.0, seed=12)
    q16 = np.round(np.stack([x, _delayed(x, 4.0)]) * 32767) / 32767     # 16-bit-like, integer delay
    return {
        "integer delay 4 (16-bit)": (q16, 4.0),
        "half-sample delay 2.5 (near ties)": (np.stack([x, _delayed(x, 2.5)]), None),
        "moving source -6..6": (np.stack([l, r]), None),
        "silent gap, one channel silent": (gaps, None),
        "uncorrelated noise": (np.stack([x, _pink(n, seed=13)]), None),
    }


def test_bewo_fast_track_equals_reference_and_recovers_delay(monkeypatch):
    import prismaudio.metrics.spatial as sp

    redone = []
    ref_fn = sp._bewo_window_itd
    monkeypatch.setattr(sp, "_bewo_window_itd", lambda l, r: redone.append(l.shape[0]) or ref_fn(l, r))
    for name, (a, delay) in _clips().items():
        a = torch.tensor(a, dtype=torch.float32)
        redone.clear()
        fast = itd_track_bewo(a, SR)
        n_redone = sum(redone)
        ref = sp.itd_track_bewo_reference(a, SR)
        assert fast.dtype == torch.float64 and fast.shape == (100,)
        assert torch.equal(torch.isnan(fast), torch.isnan(ref)), name
        assert torch.equal(fast.nan_to_num(7.0), ref.nan_to_num(7.0)), name  # bitwise, NaN where silent
        assert n_redone < 513, name  # the fast path decided most frames itself
        if delay is not None:
            assert torch.allclose(fast, torch.full_like(fast, delay / SR)), name
        if "near ties" in name:  # lags 2 and 3 tie: such frames do reach the reference arithmetic
            assert n_redone > 0
    for a in (torch.zeros(2, SR // 4), torch.tensor(_clips()["moving source -6..6"][0][:, :1000], dtype=torch.float32)):
        fast, ref = itd_track_bewo(a, SR), sp.itd_track_bewo_reference(a, SR)  # silent; shorter than a window
        assert torch.equal(fast.nan_to_num(7.0), ref.nan_to_num(7.0))
    assert torch.isnan(itd_track_bewo(torch.zeros(2, SR // 4), SR)).all()


def test_bewo_fast_frames_equal_reference_frames():
    """Frame for frame (not only the means): every one of the 513 frames of a window."""
    import prismaudio.metrics.spatial as sp

    a = torch.tensor(_clips()["moving source -6..6"][0], dtype=torch.float32)
    starts = [0, 1000, a.shape[-1] - sp.BEWO_WIN]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # two groups of windows on two Python threads, one intra-op thread each
    try:
        fast = sp._bewo_fast_frame_itd(a, starts)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(threads)
    idx = torch.tensor(starts)[:, None, None] + torch.arange(513)[None, :, None] + torch.arange(3840)[None, None]
    ref = sp._bewo_window_itd(a[0][idx], a[1][idx])
    assert fast.shape == (3, 513) and torch.equal(fast, ref)
    assert len(set(fast.flatten().tolist())) >= 3  # the lag moves across the frames


# ---------------------------------------------------------------- backends, fallback batching, track cache

def _backends():
    from prismaudio.metrics import _bewo_kernel

    return ["torch"] + (["compiled"] if _bewo_kernel.AVAILABLE else [])


def _ref_frames(a, starts):
    import prismaudio.metrics.spatial as sp

    idx = torch.tensor(starts)[:, None, None] + torch.arange(513)[None, :, None] + torch.arange(3840)[None, None]
    return sp._bewo_window_itd(a[0][idx], a[1][idx])


@pytest.mark.parametrize("backend", _backends())
def test_bewo_backends_equal_reference_frame_for_frame(backend):
    """All 513 frames (so every chunk boundary of the compiled kernel: 27-frame GEMM chunks, the
    last frame without a slide) of windows that stress what each backend adds: a loud click that
    leaves the frame before -100 dB noise (the slide's own float64 error), 16-bit scale samples, a
    tonal signal whose energy sits in few bins (most bins weak, large bound), a half-sample delay
    (near ties reach the fallback) and a moving source."""
    import prismaudio.metrics.spatial as sp

    n = 4352 * 2
    rng = np.random.default_rng(5)
    t = np.arange(n) / SR
    tone = np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 2500 * t)
    click = 1e-5 * rng.standard_normal((2, n))
    click[:, 100:110] = [[0.9], [0.7]]                                    # leaves frames 110..
    x = _pink(n, seed=21)
    cases = {
        "click then -100 dB": click,
        "16-bit scale": np.round(np.stack([x, _delayed(x, -7.0)]) * 32767),
        "tonal, delay 2": np.stack([tone, _delayed(tone, 2.0)]),
        "half-sample delay": np.stack([x, _delayed(x, 1.5)]),
        "moving source": np.stack(_moving(n, -9.0, 9.0, seed=22)),
    }
    for name, a in cases.items():
        a = torch.tensor(a, dtype=torch.float32)
        starts = [0, 3000, n - 4352]
        fast = sp._bewo_fast_frame_itd(a, starts, backend=backend)
        ref = _ref_frames(a, starts)
        assert torch.equal(fast.nan_to_num(9.0), ref.nan_to_num(9.0)), name


def test_bewo_compiled_bound_covers_the_reference_error():
    """The compiled backend's per-frame bound really bounds |cc| of the reference's float32
    arithmetic minus its own |cc| (what the certification relies on), on weak-bin, tonal signals."""
    import prismaudio.metrics.spatial as sp
    from prismaudio.metrics import _bewo_kernel

    if not _bewo_kernel.AVAILABLE:
        pytest.skip("numba not installed")
    n = 4352
    t = np.arange(n) / SR
    tone = np.sin(2 * np.pi * 440 * t) * np.exp(-t * 8)
    x = torch.tensor(np.stack([tone, _delayed(tone, 3.3)]), dtype=torch.float32)
    wins = x[None].double()
    k = torch.arange(513)
    e2 = torch.nn.functional.pad((wins * wins).cumsum(-1), (1, 0))
    norm = (e2[..., k + 3840] - e2[..., k]).clamp_min(0).sqrt()
    absc, bound = sp._fast_absc_compiled(wins, norm, 1)
    idx = k[:, None] + torch.arange(3840)[None]
    pad = (0, 3840)
    xl = torch.fft.rfft(torch.nn.functional.pad(x[0][idx], pad))
    xr = torch.fft.rfft(torch.nn.functional.pad(x[1][idx], pad))
    r = xl * xr.conj()
    cc = torch.fft.irfft(r / (r.abs() + 1e-20), n=7680)
    ref = torch.cat([cc[:, -24:], cc[:, :25]], -1).abs().double()
    err = (ref - absc[0].double()).abs().amax(-1)
    assert 0 < float(bound[0].min()) and float(bound[0].max()) < 0.05        # informative, not vacuous
    assert bool((err <= bound[0] + sp._FAST_CC_ERR).all())


def test_bewo_reference_arithmetic_is_batch_invariant():
    """The fallback recomputes frames in batches of `_REDO_BATCH`, the reference in 1026: the float32
    arithmetic must give bitwise the same per-frame ITD for any batch (else tracks could differ)."""
    import prismaudio.metrics.spatial as sp

    x = torch.tensor(np.stack(_moving(8000, -4.0, 4.0, seed=9)), dtype=torch.float32)
    idx = torch.arange(0, 3000, 3)[:, None] + torch.arange(3840)[None]       # 1000 frames
    full = sp._bewo_window_itd(x[0][idx], x[1][idx])
    for b in (1, 7, sp._REDO_BATCH):
        parts = torch.cat([sp._bewo_window_itd(x[0][idx[i:i + b]], x[1][idx[i:i + b]]) for i in range(0, 1000, b)])
        assert torch.equal(parts, full), b


def test_bewo_extreme_amplitude_goes_to_the_reference():
    import prismaudio.metrics.spatial as sp

    x = _pink(6000, seed=3)
    a = torch.tensor(np.stack([x, _delayed(x, 2.0)]) * 1e17, dtype=torch.float32)
    assert torch.equal(itd_track_bewo(a, SR), sp.itd_track_bewo_reference(a, SR))


def test_bewo_track_cache_memory_disk_and_gcc_mse(tmp_path):
    from prismaudio.metrics.bewo_cache import BewoTrackCache, audio_key

    x = _pink(6000, seed=4)
    ref = torch.tensor(np.stack([x, _delayed(x, 3.0)]), dtype=torch.float32)
    gens = [torch.tensor(np.stack([x, _delayed(x, d)]), dtype=torch.float32) for d in (1.0, -2.0)]
    silent = torch.zeros(2, 6000)
    assert audio_key(ref, SR) != audio_key(ref, SR, frame_stride=2) != audio_key(ref * 0.5, SR)
    cache = BewoTrackCache(tmp_path / "bewo")
    plain = [gcc_mse_bewo([ref, silent], [g, g], SR) for g in gens]
    cached = [gcc_mse_bewo([ref, silent], [g, g], SR, cache=cache) for g in gens]
    assert plain == cached
    assert (cache.misses, cache.hits) == (4, 4)              # S + 1 = 3 distinct clips + silent; refs hit
    files = sorted((tmp_path / "bewo").glob("*.json"))
    assert len(files) == 4 and not list((tmp_path / "bewo").glob(".tmp-*"))
    fresh = BewoTrackCache(tmp_path / "bewo")                # a later run: everything from disk
    t = fresh.track(silent, SR)
    assert torch.isnan(t).all() and (fresh.hits, fresh.misses) == (1, 0)
    assert torch.equal(fresh.track(ref, SR), itd_track_bewo(ref, SR))       # exact float64 round trip
    files[0].write_text("{not json")                          # a corrupt entry is recomputed, not trusted
    assert BewoTrackCache(tmp_path / "bewo").track(ref, SR).shape == (100,)
    (tmp_path / "file").write_text("x")
    from prismaudio.errors import PrismAudioError

    with pytest.raises(PrismAudioError):
        BewoTrackCache(tmp_path / "file")
