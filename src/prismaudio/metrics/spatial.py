"""Spatial measures on stereo audio.

`gcc_phat_itd` estimates the interaural time difference with the generalized cross-correlation
with phase transform (GCC-PHAT). Sign convention: the result is POSITIVE when the LEFT channel
leads (the right channel is a delayed copy, i.e. the source is on the left) and negative when the
right channel leads.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .bewo_cache import BewoTrackCache

_FLOOR = 1e-3


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def gcc_phat_itd(left: Tensor | np.ndarray, right: Tensor | np.ndarray, sample_rate: int,
                 max_delay_s: float = 1e-3, fft_size: int | None = None) -> float:
    """ITD in seconds (> 0: left leads) from the GCC-PHAT peak within +-max_delay_s, refined to
    sub-sample precision by parabolic interpolation. Silence gives 0.0."""
    l, r = _as_numpy(left), _as_numpy(right)
    n = min(len(l), len(r))
    l, r = l[:n], r[:n]
    nfft = fft_size or 1 << max(1, (2 * n - 1).bit_length())
    cross = np.fft.rfft(r, nfft) * np.conj(np.fft.rfft(l, nfft))  # peaks at +d when r(t) = l(t - d)
    mag = np.abs(cross)
    if mag.max() <= 0:
        return 0.0
    # Regularised PHAT: bins more than 60 dB below the strongest keep their (tiny) magnitude instead
    # of unit weight, so empty bands of a band-limited source (or 16-bit dither) add no random phase.
    cc = np.fft.irfft(cross / np.maximum(mag, _FLOOR * mag.max()), nfft)
    m = max(1, min(int(round(max_delay_s * sample_rate)), nfft // 2 - 1))
    win = np.concatenate([cc[-m:], cc[: m + 1]])  # lags -m..m
    k = int(np.argmax(win))
    shift = 0.0
    if 0 < k < len(win) - 1:
        a, b, c = win[k - 1], win[k], win[k + 1]
        den = a - 2 * b + c
        shift = 0.5 * (a - c) / den if den != 0 else 0.0
    return float((k - m + shift) / sample_rate)


# --------------------------------------------------------------------------------------------------
# BEWO evaluation protocol ("bewo" mode) and the PrismAudio paper's TDOA distributions ("paper" mode)
# --------------------------------------------------------------------------------------------------
BEWO_SR = 16000
BEWO_N_EST = 100          # estimates at t = i / 10 s, i = 0..99 (first 10 s)
BEWO_HOP = 1600           # 0.1 s at 16 kHz
BEWO_WIN = 4352           # 3840 + 512
BEWO_FRAME = 3840
BEWO_NFFT = 7680
BEWO_MAXLAG = 24          # 1.5 ms at 16 kHz


def _stereo(audio, what: str = "audio") -> tuple[Tensor | None, str | None]:
    """[2, S] float32 tensor, or (None, reason) for mono / empty input."""
    x = audio if isinstance(audio, Tensor) else torch.as_tensor(np.asarray(audio))
    x = x.detach().to("cpu", torch.float32)
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[-1] == 0:
        return None, f"{what}: expected [channels, samples], got shape {tuple(x.shape)}"
    if x.shape[0] == 1:
        return None, f"{what}: mono input (1 channel) has no interaural time difference"
    if x.shape[0] != 2:
        return None, f"{what}: expected 2 channels, got {x.shape[0]}"
    return x, None


def _to_16k(x: Tensor, sr: int) -> Tensor:
    if int(sr) == BEWO_SR:
        return x
    from ..io.audio import resample
    return resample(x, int(sr), BEWO_SR)


def bewo_window_starts(n_samples: int) -> list[int]:
    """Start sample (16 kHz) of the window of each of the 100 estimates: centred on t = i/10 s,
    clamped to [0, S - 4352] (so past the end of a short clip the last window repeats)."""
    hi = max(n_samples - BEWO_WIN, 0)
    return [min(max(i * BEWO_HOP - BEWO_WIN // 2, 0), hi) for i in range(BEWO_N_EST)]


def _bewo_window_itd(frames_l: Tensor, frames_r: Tensor) -> Tensor:
    """Integer-lag GCC-PHAT ITD (s) of each frame [..., 3840], exactly as BEWO; NaN where the
    cross-spectrum is identically zero (digital silence: BEWO's argmax would return lag -24)."""
    pad = (0, BEWO_NFFT - BEWO_FRAME)
    xl = torch.fft.rfft(torch.nn.functional.pad(frames_l, pad))
    xr = torch.fft.rfft(torch.nn.functional.pad(frames_r, pad))
    r = xl * xr.conj()
    mag = r.abs()
    cc = torch.fft.irfft(r / (mag + 1e-20), n=BEWO_NFFT)
    m = BEWO_MAXLAG
    win = torch.cat([cc[..., -m:], cc[..., : m + 1]], dim=-1)  # lags -24..24
    itd = -(win.abs().argmax(-1).to(torch.float64) - m) / BEWO_SR
    return torch.where(mag.amax(-1) > 0, itd, torch.full_like(itd, float("nan")))


def itd_track_bewo(audio, sr: int, frame_stride: int = 1) -> Tensor:
    """BEWO's GCC-PHAT ITD track: Tensor[100] (float64, seconds) for t = 0, 0.1, ..., 9.9 s.

    Protocol (BEWO evaluation code): resample to 16 kHz; window of 4352 samples centred on t and
    clamped at the file edges (clips shorter than 10 s repeat their last window; clips shorter than
    one window are zero-padded to 4352); the window is unfolded into 513 frames of 3840 samples with
    step 1; per frame R = X_L conj(X_R) with FFT size 7680, cc = irfft(R / (|R| + 1e-20)), lags
    limited to +-24 (1.5 ms); ITD = -(argmax|cc| - 24) / fs; the estimate is the mean over frames.

    Sign: with R = X_L conj(X_R) the correlation peaks at lag -d when the right channel is the left
    one delayed by d samples, so BEWO's leading minus makes the ITD POSITIVE WHEN THE LEFT CHANNEL
    LEADS -- the same convention as `gcc_phat_itd` (and as the synth scene's `itd_s`). Unlike
    `gcc_phat_itd` this mode keeps BEWO's integer lags (no sub-sample interpolation, plain PHAT).

    Deviations, all documented: frames of digital silence (cross-spectrum exactly 0) are NaN and
    skipped by the mean (BEWO would count them as +1.5 ms); a window with only such frames is NaN.
    Mono ([S] or [1, S]) input gives a track of zeros (identical channels have zero ITD). Windows
    repeated by the clamping are computed once. `frame_stride` > 1 is an approximation (every
    k-th of the 513 frames, always including the last) for speed; 1 is the exact protocol.

    Speed: with `frame_stride=1` the frames go through `_bewo_fast_frame_itd` (sliding spectra, one
    matrix product for the 49 lags; with numba installed a compiled kernel, 11-13x less CPU than
    `itd_track_bewo_reference`, without it 3-4x; measured by benchmarks/bench_metrics.py --bewo-only);
    every frame whose argmax that path cannot certify is recomputed by the original float32
    arithmetic, so the track is exactly the one of `itd_track_bewo_reference` (argmax-equal per
    frame, the means bitwise; see `_bewo_fast_frame_itd`). Audio that is not finite or beyond
    1e15 (outside the range the fast path's float32 normalisation is accounted for) goes to the
    reference as a whole.
    """
    if int(frame_stride) != 1:
        return itd_track_bewo_reference(audio, sr, frame_stride)
    x, reason = _stereo(audio)
    if x is None:
        if "mono" in (reason or ""):
            return torch.zeros(BEWO_N_EST, dtype=torch.float64)
        raise ValueError(reason)
    x = _to_16k(x, sr)
    if not bool(torch.isfinite(x).all()) or float(x.abs().max()) > 1e15:
        return itd_track_bewo_reference(x, BEWO_SR)
    if x.shape[-1] < BEWO_WIN:
        x = torch.nn.functional.pad(x, (0, BEWO_WIN - x.shape[-1]))
    starts = bewo_window_starts(x.shape[-1])
    uniq = sorted(set(starts))
    mean = torch.nanmean(_bewo_fast_frame_itd(x, uniq), dim=-1)
    est = dict(zip(uniq, mean.tolist()))
    return torch.tensor([est[s] for s in starts], dtype=torch.float64)


def itd_track_bewo_reference(audio, sr: int, frame_stride: int = 1, max_frames_per_chunk: int = 1026) -> Tensor:
    """The original implementation of `itd_track_bewo` (protocol and deviations: see there): every
    frame through `_bewo_window_itd`, three float32 FFTs of 7680 per frame (2.5-4 s per 4 s clip).
    Kept as the reference the fast path is tested and benchmarked against; `frame_stride` > 1 (the
    approximation) always runs here."""
    x, reason = _stereo(audio)
    if x is None:
        if "mono" in (reason or ""):
            return torch.zeros(BEWO_N_EST, dtype=torch.float64)
        raise ValueError(reason)
    x = _to_16k(x, sr)
    if x.shape[-1] < BEWO_WIN:
        x = torch.nn.functional.pad(x, (0, BEWO_WIN - x.shape[-1]))
    starts = bewo_window_starts(x.shape[-1])
    uniq = sorted(set(starts))
    offs = torch.arange(0, BEWO_WIN - BEWO_FRAME + 1, max(1, int(frame_stride)))
    if offs[-1] != BEWO_WIN - BEWO_FRAME:
        offs = torch.cat([offs, torch.tensor([BEWO_WIN - BEWO_FRAME])])
    per_win = len(offs)
    wins_per_chunk = max(1, max_frames_per_chunk // per_win)
    idx = offs[:, None] + torch.arange(BEWO_FRAME)[None]  # [F, 3840]
    est = {}
    for c in range(0, len(uniq), wins_per_chunk):
        ss = torch.tensor(uniq[c:c + wins_per_chunk])
        gather = ss[:, None, None] + idx[None]  # [W, F, 3840]
        itd = _bewo_window_itd(x[0][gather], x[1][gather])  # [W, F]
        mean = torch.nanmean(itd, dim=-1)
        for s, v in zip(ss.tolist(), mean.tolist()):
            est[s] = v
    return torch.tensor([est[s] for s in starts], dtype=torch.float64)


# ---- fast exact path -----------------------------------------------------------------------------
# Frame k of a window (samples w[k : k + 3840], zero-padded to 7680) has the spectrum X_k. With
# Z_j = omega^(f j) X_(k0 + j) (omega = e^(-2 pi i / 7680)) one step of the slide is exact algebra:
#     Z_(j+1)[f] = Z_j[f] + omega^(f j) ((-1)^f w[k0 + j + 3840] - w[k0 + j]),
# and the rotation cancels in the cross-spectrum: Z_L conj(Z_R) = X_L conj(X_R) = R. So each block
# of `_FAST_BLOCK` frames needs one float64 FFT per channel (its first frame) and then one
# multiply-add per bin and frame, instead of three FFTs per frame. The 49 lags of
# irfft(R / (|R| + 1e-20)) are a product with a fixed [3842, 49] cosine / sine table.
_FAST_BLOCK = 171                      # 513 = 3 x 171 frames: 3 anchors (float64 FFTs) per window
_FAST_WINDOWS = 12                     # windows per group: 36 frames per step, a working set in cache
_FAST_HALF = (BEWO_NFFT // 2 + 2) // 2  # 1921 bins per parity class (odd ones padded by one)
_FAST_BIN_ERR = 40.0                   # per-bin float32 FFT error, x eps x ||frame|| (calibrated, see below)
_FAST_CC_ERR = 1e-5                    # every other rounding of either path, on |cc| (<= 1)
_REDO_BATCH = 32                       # frames per call when recomputing by the reference arithmetic
_fast_tables_cache: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}


def _fast_tables(block: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(rotations [block, 2, 2H] float64, cos [2H, 25] and sin [2H, 24] lag tables float32, bin order)."""
    if block not in _fast_tables_cache:
        n, nb, h, m = BEWO_NFFT, BEWO_NFFT // 2 + 1, _FAST_HALF, BEWO_MAXLAG
        order = torch.cat([torch.arange(0, nb, 2), torch.arange(1, nb, 2)])  # even bins | odd bins
        f = torch.cat([order, torch.tensor([0])]).double()                  # + the padding bin
        j = torch.arange(block, dtype=torch.float64)[:, None]
        ang = -2 * math.pi * ((f[None] * j) % n) / n                         # omega^(f j), exact phase
        rot = torch.stack([torch.cos(ang), torch.sin(ang)], 1)              # [block, ri, 2H]
        rot[..., -1] = 0.0
        rot = rot.view(block, 2, 2, h).transpose(1, 2).reshape(block, 2, 2 * h)  # [block, par, ri*H]
        w = torch.full_like(f, 2.0)
        w[(f == 0) | (f == nb - 1)] = 1.0
        w[-1] = 0.0                                                          # padding bin: no weight
        th = 2 * math.pi * ((f[:, None] * torch.arange(m + 1, dtype=torch.float64)[None]) % n) / n
        cos = (w[:, None] * torch.cos(th) / n).float()
        sin = (w[:, None] * torch.sin(th) / n)[:, 1:].float().contiguous()
        _fast_tables_cache[block] = (rot, cos, sin, order)
    return _fast_tables_cache[block]


def _bewo_fast_frame_itd(x: Tensor, starts: list[int], backend: str | None = None) -> Tensor:
    """ITD (s) of the 513 frames of each window starting at `starts` in x [2, S] (16 kHz, S >= 4352):
    Tensor[len(starts), 513] float64, NaN where a channel's frame is all zeros -- frame for frame
    what `_bewo_window_itd` gives on the same frames.

    Why it is the same and not an approximation: the spectra here are float64 (sliding, exact
    algebra), the reference's are float32 FFTs. A frame's argmax is taken from this path only when
    the gap between its two largest |cc| is more than 2 (bound + `_FAST_CC_ERR`), the bound being on
    how far this path's |cc| can be from the reference's at any lag; it is per frame, from the
    frame's own spectrum: (2/7680) sum over bins of min(2, k (1/|X_L| + 1/|X_R|)) with
    k = 2 c eps ||frame|| (bins far below the frame's level are where a float32 FFT's phase is
    noise; |P| <= 1 on both sides gives the 2), and `_FAST_CC_ERR` for the reference's remaining
    roundings. Every other frame (near ties, exact ties, near-empty frames) is recomputed by
    `_bewo_window_itd` itself, so its argmax is the reference's, tie-breaking included.

    The constant c (`_FAST_BIN_ERR` = 40) is calibrated, not a proven worst case: on 16,184 corpus
    frames the reference's largest |cc| error (up to 1.3e-3, from weak bins) stayed below half of this
    bound; identity is verified on 20 corpus clips (400,140 frames, 0.9% recomputed) and on
    band-limited, tonal, moving-source, click and -80 dB test signals (tests/test_metrics_spatial.py,
    benchmarks/bench_metrics.py --bewo-only). Given that per-bin model, everything this path adds
    is accounted in the worst case (see the backends).

    Two backends (`backend`: None = "compiled" when numba is installed, else "torch"):
    `_fast_absc_compiled` (fused numba kernel + blocked float32 GEMM; its bound adds its own
    slide and GEMM roundings) and `_fast_absc_torch` (torch ops; the looser per-channel form
    min(2, k/|X_L|) + min(2, k/|X_R|)). The certification and the recomputation are shared.
    """
    n, fr, m = BEWO_NFFT, BEWO_FRAME, BEWO_MAXLAG
    nf = BEWO_WIN - BEWO_FRAME + 1
    ss = torch.tensor(starts)
    wins = x[:, ss[:, None] + torch.arange(BEWO_WIN)[None]].transpose(0, 1).double().contiguous()  # [W, 2, WIN]
    nw = wins.shape[0]
    k = torch.arange(nf)
    nz = torch.nn.functional.pad((wins != 0).cumsum(-1), (1, 0))
    silent = ((nz[..., k + fr] - nz[..., k]) == 0).any(1)                         # [W, 513]
    e2 = torch.nn.functional.pad((wins * wins).cumsum(-1), (1, 0))
    # an upper bound of each frame's norm (the prefix-sum difference can only lose ~1e-16 of the total)
    norm = ((e2[..., k + fr] - e2[..., k]).clamp_min(0) + 1e-15 * e2[..., -1:]).sqrt()  # [W, 2, 513]
    if backend is None:
        from . import _bewo_kernel

        backend = "compiled" if _bewo_kernel.AVAILABLE else "torch"
    threads = torch.get_num_threads()
    # Parallel over groups of windows with one intra-op thread each: thousands of small ops, each with a
    # thread barrier, stall badly on a shared machine (measured 10-40x slower under load; the
    # reference's few large ops do not). The thread count is restored on exit.
    torch.set_num_threads(1)
    try:
        if backend == "compiled":
            absc, bound = _fast_absc_compiled(wins, norm, threads)
        elif backend == "torch":
            absc, bound = _fast_absc_torch(wins, norm, threads)
        else:
            raise ValueError(f"backend must be 'compiled' or 'torch', got {backend!r}")
    finally:
        torch.set_num_threads(threads)
    top = absc.view(nw, nf, 2 * m + 1).topk(2, dim=-1)
    itd = -(top.indices[..., 0].to(torch.float64) - m) / BEWO_SR
    gap = top.values[..., 0] - top.values[..., 1]
    # near-empty frames (below -120 dB: float audio only; a 16-bit sample is >= 3e-5) are recomputed too
    redo = ((gap <= 2 * (bound.view(nw, nf) + _FAST_CC_ERR)) | (norm < 1e-6).any(1)) & ~silent
    if bool(redo.any()):
        # small batches: 2.7x less time per frame than 1026 (in cache); the reference arithmetic gives
        # bitwise the same per-frame values for any batch size (tested)
        wi, ki = torch.nonzero(redo, as_tuple=True)
        for c0 in range(0, len(wi), _REDO_BATCH):
            w_, k_ = wi[c0:c0 + _REDO_BATCH], ki[c0:c0 + _REDO_BATCH]
            idx = ss[w_][:, None] + k_[:, None] + torch.arange(fr)[None]
            itd[w_, k_] = _bewo_window_itd(x[0][idx], x[1][idx])
    itd[silent] = float("nan")
    return itd


def _run_groups(fn, nw: int, threads: int, per_group: int) -> None:
    """fn(g) for the window groups g = 0, per_group, ...: on a thread pool when threads > 1."""
    groups = list(range(0, nw, per_group))
    if threads > 1 and len(groups) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(threads, len(groups))) as pool:
            list(pool.map(fn, groups))
    else:
        for g in groups:
            fn(g)


def _fast_absc_torch(wins: Tensor, norm: Tensor, threads: int) -> tuple[Tensor, Tensor]:
    """(|cc| [W, 3, 171, 49] float32, bound [W, 3, 171] float64) by torch ops: 3 float64 anchor FFTs
    per window, then the slide one step (one frame of each block) at a time, a [3842, 49] product."""
    rot, cos, sin, order = _fast_tables(_FAST_BLOCK)
    n, fr, m, h, blk = BEWO_NFFT, BEWO_FRAME, BEWO_MAXLAG, _FAST_HALF, _FAST_BLOCK
    nf = BEWO_WIN - BEWO_FRAME + 1
    nb = nf // blk
    nw = wins.shape[0]
    kappa = 2 * _FAST_BIN_ERR * 2.0 ** -24
    k0 = torch.arange(nb) * blk
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64)
    absc = torch.empty(nw, nb, blk, 2 * m + 1)
    bound = torch.empty(nw, nb, blk)
    n_groups = max(-(-nw // _FAST_WINDOWS), min(threads, nw))
    per_group = -(-nw // n_groups)                                                  # balanced groups

    def group(g: int) -> None:
        """Windows g .. g + per_group: anchors, then the slide, one step (frame of each block) at a time."""
        rows_max = per_group * nb
        zf = torch.empty(rows_max, 2, 2, 2, h)
        re, im, sq, pl, pr = (torch.empty(rows_max, 2, h) for _ in range(5))
        cpos, spos = torch.empty(blk, rows_max, m + 1), torch.empty(blk, rows_max, m)
        bsum = torch.empty(blk, rows_max)
        wg = wins[g:g + per_group]
        gw = wg.shape[0]
        rows = gw * nb
        spec = torch.fft.rfft(wg[:, :, k0[:, None] + torch.arange(fr)[None]], n=n)[..., order]  # [gw, 2, nb, 3841]
        spec = torch.nn.functional.pad(spec, (0, 1))
        z = torch.stack([spec.real, spec.imag], -2).view(gw, 2, nb, 2, 2, h)        # [gw, ch, nb, ri, par, H]
        z = z.permute(0, 2, 1, 4, 3, 5).contiguous()                                # [gw, nb, ch, par, ri, H]
        zrow = z.view(rows * 2, 2, 2 * h)
        steps = k0[:, None] + torch.arange(blk)[None]                               # [nb, blk]
        out_s, in_s = wg[:, :, steps], wg[:, :, (steps + fr).clamp(max=BEWO_WIN - 1)]  # [gw, 2, nb, blk]
        fac = sign * in_s[..., None] - out_s[..., None]                             # [gw, ch, nb, blk, par]
        fac = fac.permute(3, 0, 2, 1, 4).reshape(blk, rows * 2, 2, 1).contiguous()
        nl = norm[g:g + gw, 0, steps].reshape(rows, blk).t().contiguous()           # [blk, rows]
        nr = norm[g:g + gw, 1, steps].reshape(rows, blk).t().contiguous()
        kl, kr = (kappa * nl).float(), (kappa * nr).float()
        capl, capr = (2.0 / kl)[..., None, None], (2.0 / kr)[..., None, None]            # [blk, rows, 1, 1]
        zv, r_, i_, q_, pl_, pr_ = zf[:rows], re[:rows], im[:rows], sq[:rows], pl[:rows], pr[:rows]
        a, b, c, d = zv[:, 0, :, 0], zv[:, 0, :, 1], zv[:, 1, :, 0], zv[:, 1, :, 1]
        for j in range(blk):
            zv.copy_(z.view(rows, 2, 2, 2, h))
            torch.mul(a, a, out=pl_).addcmul_(b, b).clamp_min_(1e-30).rsqrt_()    # 1 / |X_L|
            torch.mul(c, c, out=pr_).addcmul_(d, d).clamp_min_(1e-30).rsqrt_()    # 1 / |X_R|
            torch.mul(pl_, pr_, out=q_)                                             # 1 / |R|
            torch.mul(a, c, out=r_).addcmul_(b, d).mul_(q_)                         # Re R / |R|
            torch.mul(b, c, out=i_).addcmul_(a, d, value=-1).mul_(q_)               # Im R / |R|
            torch.mm(r_.view(rows, 2 * h), cos, out=cpos[j, :rows])
            torch.mm(i_.view(rows, 2 * h), sin, out=spos[j, :rows])
            # per-bin error bound: min(2, kappa ||frame|| / |X|) per channel (padding bin: |X| = 0 -> 2)
            el = torch.minimum(pl_, capl[j]).sum((-1, -2))
            er = torch.minimum(pr_, capr[j]).sum((-1, -2))
            bsum[j, :rows] = el * kl[j] + er * kr[j]
            if j + 1 < blk:
                zrow.addcmul_(fac[j], rot[j])
        cp, sp = cpos[:, :rows], spos[:, :rows]
        cc = torch.cat([(cp[..., 1:] + sp).flip(-1), cp[..., :1], cp[..., 1:] - sp], -1).abs_()  # lags -24..24
        absc[g:g + gw] = cc.view(blk, gw, nb, 2 * m + 1).permute(1, 2, 0, 3)
        bound[g:g + gw] = ((bsum[:, :rows].double() - 4.0) * (2.0 / n)).view(blk, gw, nb).permute(1, 2, 0)

    _run_groups(group, nw, threads, per_group)
    return absc, bound


_compiled_tables_cache: dict[str, tuple] = {}
# This path's own rounding on |cc|, a worst case (any summation order, u = 2^-24): the float32 GEMM
# sums blocks of 241 terms and then the 8 partial sums, every |x t| <= 2 * 2/7680 and their sum
# <= 1.0005, so (gamma_241 + gamma_7) * 1.0005 <= 1.48e-5 per cos or sin sum, x2 for cc = C -+ S;
# plus <= 9u relative on each folded input (float32 normalisation) and u on the table: 1.2e-6.
_COMPILED_OWN_ERR = 3.2e-5


def _compiled_tables() -> tuple[Tensor, np.ndarray]:
    """Folded lag tables T [4 x 8 blocks, 241, 13] float32 (even-cos, even-sin, odd-cos, odd-sin, each
    cut into the kernel's 8 blocks of 241 bins; 1/n and the rfft bin weights included; padding rows
    and unused columns 0) and the constant rows 10..12 of the kernel state
    (Re/Im omega^i, (-1)^i), see `_bewo_kernel`."""
    if "t" not in _compiled_tables_cache:
        from ._bewo_kernel import KB, NBLK, Q

        n = BEWO_NFFT
        i = np.arange(Q)
        wt = np.full(Q, 2.0)
        wt[0] = 1.0                                   # bin 0 and its partner 3840 (Nyquist): weight 1

        def trig(fn, lags):
            return wt[:, None] * fn(2 * np.pi * ((i[:, None] * np.asarray(lags)[None]) % n) / n) / n

        t = np.zeros((4, Q, 13))
        t[0] = trig(np.cos, range(0, 25, 2))
        t[1, :, :12] = trig(np.sin, range(2, 25, 2))
        t[2, :, :12] = trig(np.cos, range(1, 24, 2))
        t[3, :, :12] = trig(np.sin, range(1, 24, 2))
        t = np.concatenate([t, np.zeros((4, NBLK * KB - Q, 13))], 1).reshape(4 * NBLK, KB, 13)
        ang = 2 * np.pi * i / n
        const = np.stack([np.cos(ang), -np.sin(ang), np.where(i % 2 == 0, 1.0, -1.0)])
        _compiled_tables_cache["t"] = (torch.from_numpy(t).float(), const)
    return _compiled_tables_cache["t"]


def _slide_error(wins: Tensor) -> Tensor:
    """Upper bound [W, 2, 513] of |Z_j - exact X_j| per bin, from the float64 roundings of the
    compiled slide: the anchor FFT (<= 1e-11 ||frame||_1), per step <= 4u (||frame_j||_1 + |d_j|) for
    the update and <= 4u (j + 1) |d_j| from the recurrence of omega^(f j), |d_j| <= |in| + |out|."""
    u = 2.0 ** -53
    fr, nf = BEWO_FRAME, BEWO_WIN - BEWO_FRAME + 1
    k = torch.arange(nf)
    a = wins.abs()
    l1 = torch.nn.functional.pad(a.cumsum(-1), (1, 0))
    l1 = l1[..., k + fr] - l1[..., k] + 1e-15 * l1[..., -1:]                        # ||frame_j||_1 (upper)
    d = a[..., k[:-1]] + a[..., k[:-1] + fr]
    inc = 4 * u * (l1[..., :-1] + d) + 4 * u * (k[:-1] + 1) * d
    err = torch.nn.functional.pad(inc.cumsum(-1), (1, 0)) + 1e-11 * l1[..., :1]
    return err * 1.001                                                              # (1 + 4u)^513 growth


def _fast_absc_compiled(wins: Tensor, norm: Tensor, threads: int) -> tuple[Tensor, Tensor]:
    """(|cc| [W, 513, 49] float32, bound [W, 513] float64) by the numba kernel `_bewo_kernel.slide_chunk`:
    one float64 anchor FFT per channel and window, then per frame one fused pass (normalised folded
    cross-spectrum, certification sum, slide) and a float32 GEMM per chunk of 27 frames, summed in
    8 blocks of 241 bins.

    Certification terms (the argument of `_bewo_fast_frame_itd`, each addition a worst case):
    - per bin, k = kappa ||frame|| (the reference's float32 FFT, as in the torch backend) plus
      2 `_slide_error` (this path's own float64 error in X), so per channel |u_ours - u_ref| <=
      min(2, k / |X|) for u = X / |X|, and |P_ours - P_ref| <= min(2, k (1/|X_L| + 1/|X_R|))
      since P = u_L conj(u_R) and |P| <= 1 on both sides (it is this tighter sum that the kernel
      takes; 1/|X| from |X|^2 in float64, then IEEE float32 sqrt and division);
    - the terms are float32, their sum float32 per tile then float64 (<= 1e-4 relative): x 1.001;
    - this path's remaining roundings, float32 normalisation and the float32 GEMM summed in blocks
      of 241 (the GEMM's own order does not matter for a gamma_n bound): `_COMPILED_OWN_ERR`,
      added to the bound. Bins below |X|^2 = 1e-30 are clamped: their term is then 2 (k > 4e-12
      for any frame not recomputed as near-empty), and |P_ours| <= 1 still holds."""
    from ._bewo_kernel import CHUNK, KB, NBLK, Q, ROWS, slide_chunk

    t, const = _compiled_tables()
    n, fr, m = BEWO_NFFT, BEWO_FRAME, BEWO_MAXLAG
    nf = BEWO_WIN - BEWO_FRAME + 1
    nw = wins.shape[0]
    kappa = 2 * _FAST_BIN_ERR * 2.0 ** -24
    kk = (kappa * norm + 2 * _slide_error(wins)).numpy()                          # [W, 2, 513]
    spec = torch.fft.rfft(wins[..., :fr], n=n).numpy()                             # [W, 2, 3841] anchors
    rev = BEWO_NFFT // 2 - np.arange(Q)                                            # partner bins 3840 - i
    nch = nf // CHUNK                                                              # 19 chunks of 27 frames
    part = torch.empty(nw, nch, 4 * NBLK, CHUNK, 13)                               # block partial sums
    bsum = np.empty((nw, nf))
    wnp = wins.numpy().reshape(nw, -1)
    per_group = -(-nw // max(1, min(threads, nw)))

    def group(g: int) -> None:
        buf = np.zeros(4 * NBLK * CHUNK * KB, dtype=np.float32)               # padding inputs stay 0
        bt = torch.from_numpy(buf).view(4 * NBLK, CHUNK, KB)
        st = np.empty((ROWS, Q))
        st[10:] = const
        flat = st.reshape(-1)
        for wi in range(g, min(g + per_group, nw)):
            sp = spec[wi]
            st[0], st[1], st[2], st[3] = sp[0, :Q].real, sp[0, :Q].imag, sp[1, :Q].real, sp[1, :Q].imag
            st[4], st[5], st[6], st[7] = sp[0, rev].real, sp[0, rev].imag, sp[1, rev].real, sp[1, rev].imag
            st[8], st[9] = 1.0, 0.0                                                # omega^(f 0)
            kl, kr, bs, out = kk[wi, 0], kk[wi, 1], bsum[wi], part[wi]
            for c in range(nch):
                slide_chunk(wnp[wi], c * CHUNK, CHUNK, flat, kl, kr, buf, bs)
                torch.bmm(bt, t, out=out[c])

    _run_groups(group, nw, threads, per_group)
    cs = part.view(nw, nch, 4, NBLK, CHUNK, 13).sum(3).transpose(2, 3).reshape(nw, nf, 4, 13).double()
    c = torch.empty(nw, nf, m + 1, dtype=torch.float64)                            # C_l, l = 0..24
    s = torch.empty(nw, nf, m, dtype=torch.float64)                                # S_l, l = 1..24
    c[..., 0::2], c[..., 1::2] = cs[..., 0, :13], cs[..., 2, :12]
    s[..., 1::2], s[..., 0::2] = cs[..., 1, :12], cs[..., 3, :12]
    cl = c[..., 1:]
    absc = torch.cat([(cl + s).flip(-1), c[..., :1], cl - s], -1).abs_()             # lags -24..24
    return absc, torch.from_numpy(bsum) * (1.001 * 2.0 / n) + _COMPILED_OWN_ERR


def _load_any(a, sr: int):
    if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__"):
        from ..io.audio import load_audio
        return load_audio(a, sample_rate=None, channels=None)
    return a, sr


def gcc_mse_bewo(ref_audios, gen_audios, sr: int, frame_stride: int = 1, return_details: bool = False,
                 cache: BewoTrackCache | None = None):
    """BEWO GCC MSE between paired reference and generated clips (tensors [2, S] or file paths):
    per file the mean of its 100 ITDs (s), squared difference, mean over files, x1000 as reported.
    Files whose mean is NaN (silent) are skipped and listed in the details; NaN if none is left.

    `cache` (a `bewo_cache.BewoTrackCache`, shared by the calls for the S systems of one evaluation,
    optionally backed by a directory) computes each distinct clip's track once: S + 1 tracks per
    clip instead of 2 S, the values unchanged."""
    refs, gens = list(ref_audios), list(gen_audios)
    if len(refs) != len(gens):
        raise ValueError(f"{len(refs)} reference vs {len(gens)} generated clips")
    track = itd_track_bewo if cache is None else cache.track
    ref_m, gen_m, skipped = [], [], []
    for i, (r, g) in enumerate(zip(refs, gens)):
        (ra, rsr), (ga, gsr) = _load_any(r, sr), _load_any(g, sr)
        mr = float(torch.nanmean(track(ra, rsr, frame_stride)))
        mg = float(torch.nanmean(track(ga, gsr, frame_stride)))
        ref_m.append(mr)
        gen_m.append(mg)
        if not (np.isfinite(mr) and np.isfinite(mg)):
            skipped.append((i, "silent reference" if not np.isfinite(mr) else "silent generated clip"))
    d = np.array(ref_m) - np.array(gen_m)
    ok = np.isfinite(d)
    value = float(np.mean(d[ok] ** 2) * 1000) if ok.any() else float("nan")
    if not return_details:
        return value
    return {"mode": "bewo", "gcc_mse": value, "ref_mean_itd_s": ref_m, "gen_mean_itd_s": gen_m,
            "skipped": skipped, "reason": None if ok.any() else "no clip pair with a finite ITD"}


def _gcc_phat_batch(l: Tensor, r: Tensor, sample_rate: int, max_delay_s: float) -> Tensor:
    """Vectorised `gcc_phat_itd` over rows [B, n] (same regularised PHAT and parabolic refinement)."""
    n = l.shape[-1]
    nfft = 1 << max(1, (2 * n - 1).bit_length())
    cross = torch.fft.rfft(r.double(), nfft) * torch.fft.rfft(l.double(), nfft).conj()
    mag = cross.abs()
    floor = _FLOOR * mag.amax(-1, keepdim=True)
    cc = torch.fft.irfft(cross / torch.maximum(mag, floor).clamp_min(1e-300), nfft)
    m = max(1, min(int(round(max_delay_s * sample_rate)), nfft // 2 - 1))
    win = torch.cat([cc[..., -m:], cc[..., : m + 1]], dim=-1)
    k = win.argmax(-1)
    kc = k.clamp(1, 2 * m - 1)
    a, b, c = (win.gather(-1, (kc + o)[:, None])[:, 0] for o in (-1, 0, 1))
    den = a - 2 * b + c
    shift = torch.where((k == kc) & (den != 0), 0.5 * (a - c) / torch.where(den != 0, den, 1.0), 0.0)
    return (k - m + shift) / sample_rate


def tdoa_distribution_paper(audio, sr: int, hop_s: float = 0.1, seg_s: float = 0.1,
                            threshold_dbfs: float = -16.0, max_delay_s: float = 1.5e-3,
                            level: str = "peak") -> tuple[Tensor, str | None]:
    """Paper mode (PrismAudio App. F.1): (TDOAs in seconds of the non-silent segments, reason).

    The clip (resampled to 16 kHz) is cut every `hop_s` into segments of `seg_s`; a segment is
    non-silent when its level in dBFS is above `threshold_dbfs`: `level="peak"` (default: 20 log10
    of the largest |sample| of either channel) or `"rms"` (RMS over both channels; full-scale square
    = 0 dBFS -- with -16 dB this drops the decays of most impact sounds, hence peak by default); its TDOA is `gcc_phat_itd` (regularised PHAT, parabolic sub-sample
    peak, > 0: left leads). Silent or mono audio gives an empty tensor and a reason, never raises.
    """
    x, reason = _stereo(audio)
    if x is None:
        return torch.zeros(0, dtype=torch.float64), reason
    x = _to_16k(x, sr)
    hop, seg = int(round(hop_s * BEWO_SR)), int(round(seg_s * BEWO_SR))
    if x.shape[-1] < seg:
        return torch.zeros(0, dtype=torch.float64), f"clip shorter than one {seg_s} s segment"
    segs = x.unfold(-1, seg, hop)  # [2, N, seg]
    if level == "peak":
        lev = segs.double().abs().amax(dim=(0, 2))
    elif level == "rms":
        lev = segs.double().pow(2).mean(dim=(0, 2)).sqrt()
    else:
        raise ValueError(f"level must be 'peak' or 'rms', got {level!r}")
    keep = 20 * torch.log10(lev.clamp_min(1e-12)) > threshold_dbfs
    if not bool(keep.any()):
        return torch.zeros(0, dtype=torch.float64), f"no segment above {threshold_dbfs} dBFS (silent audio)"
    return _gcc_phat_batch(segs[0][keep], segs[1][keep], BEWO_SR, max_delay_s), None


def wasserstein1(a: Tensor, b: Tensor) -> float:
    """Wasserstein-1 distance between two 1-D empirical distributions (integral of |F_a - F_b|)."""
    a, b = torch.sort(a.double().reshape(-1))[0], torch.sort(b.double().reshape(-1))[0]
    allv = torch.sort(torch.cat([a, b]))[0]
    fa = torch.searchsorted(a, allv[:-1], right=True).double() / len(a)
    fb = torch.searchsorted(b, allv[:-1], right=True).double() / len(b)
    return float(((fa - fb).abs() * allv.diff()).sum())


def gcc_distribution_distance_paper(ref, gen, sr: int, **kw) -> dict:
    """Paper mode distance between the reference and generated TDOA distributions (in ms):
    distance = (mean_ref - mean_gen)^2 + W1(ref, gen) -- the squared difference of means is the
    per-file analogue of BEWO's MSE, the Wasserstein-1 term catches spread/shape differences (e.g.
    a bimodal left/right scene rendered centred). NaN with a reason when either side is empty."""
    tr, rr = tdoa_distribution_paper(ref, sr, **kw)
    tg, rg = tdoa_distribution_paper(gen, sr, **kw)
    out = {"mode": "paper", "distance": float("nan"), "mean_sq_ms2": float("nan"), "w1_ms": float("nan"),
           "n_ref": len(tr), "n_gen": len(tg), "reason": None}
    if len(tr) == 0 or len(tg) == 0:
        out["reason"] = f"reference: {rr}" if len(tr) == 0 else f"generated: {rg}"
        return out
    tr, tg = tr * 1e3, tg * 1e3
    out["mean_sq_ms2"] = float((tr.mean() - tg.mean()) ** 2)
    out["w1_ms"] = wasserstein1(tr, tg)
    out["distance"] = out["mean_sq_ms2"] + out["w1_ms"]
    return out
