"""Compiled inner loop of the exact BEWO GCC-PHAT fast path (`spatial._fast_absc_compiled`).

Per frame, one pass over the sliding float64 spectra: the PHAT-normalised cross-spectrum, folded for
the lag projection, the frame's certification sum, then the slide to the next frame. The 49-lag
projection is a float32 GEMM done by the caller on chunks of `CHUNK` frames (L2-sized). numba is an
optional dependency: without it `AVAILABLE` is False and `spatial` keeps its torch backend.

Folding: bin f = i (i = 0..1920, "half 0") and bin g = 3840 - i ("half 1") share index i. For the
lags |l| <= 24, cos(2 pi g l / n) = (-1)^l cos(2 pi i l / n) and sin(2 pi g l / n) = -(-1)^l sin(..),
so even lags need (Re P_f + Re P_g, Im P_f - Im P_g) and odd ones (Re P_f - Re P_g, Im P_f + Im P_g):
1921 products per lag instead of 3841. The slide of bin g needs no rotation of its own:
omega^(g j) = (-1)^j conj(omega^(i j)) and (-1)^g = (-1)^i.

Layout (one flat float64 array `st` of 13 rows of Q, fixed offsets, so LLVM sees one base pointer and
vectorises): Re/Im Z_L, Re/Im Z_R of half 0, the same of half 1, Re/Im omega^(i j), Re/Im omega^i,
(-1)^i. The loop runs over tiles of `KB` bins (the tile's state stays in L1) and, inside, over the
chunk's frames; each tile is also one block of the GEMM's sum, which keeps its float32 worst-case
rounding at gamma_241 instead of gamma_1921. No fast-math beyond reassociation / contraction / signed zeros: the bound's terms
must be IEEE-rounded (see `spatial._fast_absc_compiled` for the error accounting).
"""

from __future__ import annotations

import os
import sys

import numpy as np


def _wide_vectors() -> bool:
    """Let LLVM use 512-bit vectors where the CPU has AVX-512 (measured 25% faster here; LLVM
    prefers 256 bits on these CPUs by default). numba has no per-function switch, so this sets
    NUMBA_CPU_FEATURES to the host's own features minus "prefer-256-bit" for the duration of the
    import and the eager compilation below -- only when numba is not imported yet and the user has
    not set the variable. Results do not depend on it (same IEEE operations, other vector width)."""
    if "numba" in sys.modules or "NUMBA_CPU_FEATURES" in os.environ:
        return False
    try:
        import llvmlite.binding as llvm

        feats = llvm.get_host_cpu_features().flatten()
    except Exception:  # noqa: BLE001 - no llvmlite, or an unusual host: keep numba's defaults
        return False
    if "+avx512f" not in feats.split(","):
        return False
    os.environ["NUMBA_CPU_FEATURES"] = feats + ",-prefer-256-bit"
    return True


_WIDE = _wide_vectors()
try:  # optional dependency: pip install numba
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None
    AVAILABLE = False

Q = 1921       # folded bins i = 0..1920 (1920 = n / 4 is its own partner)
CHUNK = 27     # frames per GEMM: 513 = 19 x 27; 4 x 27 x 1928 float32 = 0.8 MB
KB = 241       # bins per tile and per GEMM block: 13 x 241 float64 = 25 KB of state (L1)
NBLK = 8       # 8 x 241 = 1928 >= Q (the 7 padding inputs stay 0)
N_FRAMES = 513
FRAME = 3840
WIN = 4352
ROWS = 13      # rows of `st`


def _slide_chunk(w, j0, nj, st, kl, kr, buf, bsum):
    """Frames j0 .. j0 + nj - 1 (nj <= CHUNK) of one window, state advanced in place to j0 + nj.

    w float64[2 * 4352] (left window then right); st float64[13 * Q] (layout: module doc);
    kl / kr float64[513] the per-frame error scale of each channel (k in min(2, k / |X|));
    out: buf float32[4 * NBLK * CHUNK * KB] (even-cos, even-sin, odd-cos, odd-sin inputs of the GEMM,
    each cut into NBLK blocks of KB bins: [4, NBLK, CHUNK, KB]) and bsum float64[513] (sum over the 3841 bins of min(2, kl/|X_L|) + min(2, kr/|X_R|)).
    """
    last = Q - 1
    two = np.float32(2.0)
    one = np.float32(1.0)
    for jj in range(nj):
        bsum[j0 + jj] = 0.0
    for t in range(NBLK):
        i0 = t * KB
        i1 = min(i0 + KB, Q)
        for jj in range(nj):
            j = j0 + jj
            k_l = np.float32(kl[j])
            k_r = np.float32(kr[j])
            if j + 1 < N_FRAMES:
                o_l = w[j]
                n_l = w[j + FRAME]
                o_r = w[WIN + j]
                n_r = w[WIN + j + FRAME]
            else:
                o_l = n_l = o_r = n_r = 0.0
            sj = 1.0 - 2.0 * (j & 1)
            acc = np.float32(0.0)
            b0 = (t * CHUNK + jj) * KB             # buf[r, t, jj, ii]
            rs = NBLK * CHUNK * KB
            for ii in range(i1 - i0):               # (non-negative indices: no wraparound, vectorised)
                i = i0 + ii
                a = st[i]
                b = st[Q + i]
                c = st[2 * Q + i]
                d = st[3 * Q + i]
                a2 = st[4 * Q + i]
                b2 = st[5 * Q + i]
                c2 = st[6 * Q + i]
                d2 = st[7 * Q + i]
                ur = st[8 * Q + i]
                ui = st[9 * Q + i]
                # |X|^2 in float64, then 1/|X| in float32 (IEEE sqrt and division)
                il = one / np.sqrt(np.float32(max(a * a + b * b, 1e-30)))
                ir = one / np.sqrt(np.float32(max(c * c + d * d, 1e-30)))
                il2 = one / np.sqrt(np.float32(max(a2 * a2 + b2 * b2, 1e-30)))
                ir2 = one / np.sqrt(np.float32(max(c2 * c2 + d2 * d2, 1e-30)))
                g_on = one if i < last else np.float32(0.0)   # bin 1920 counts once (half 0)
                q = il * ir
                q2 = il2 * ir2 * g_on
                pre0 = np.float32(a * c + b * d) * q          # R / |R| = X_L conj(X_R) / (|X_L| |X_R|)
                pim0 = np.float32(b * c - a * d) * q
                pre1 = np.float32(a2 * c2 + b2 * d2) * q2
                pim1 = np.float32(b2 * c2 - a2 * d2) * q2
                acc += min(two, k_l * il + k_r * ir) + min(two, k_l * il2 + k_r * ir2) * g_on
                buf[b0 + ii] = pre0 + pre1
                buf[rs + b0 + ii] = pim0 - pim1
                buf[2 * rs + b0 + ii] = pre0 - pre1
                buf[3 * rs + b0 + ii] = pim0 + pim1
                # slide: Z_(j+1)[f] = Z_j[f] + omega^(f j) ((-1)^f new - old)
                sg = st[12 * Q + i]
                dl = sg * n_l - o_l
                dr = sg * n_r - o_r
                st[i] = a + ur * dl
                st[Q + i] = b + ui * dl
                st[2 * Q + i] = c + ur * dr
                st[3 * Q + i] = d + ui * dr
                vr = sj * ur
                vi = -sj * ui
                st[4 * Q + i] = a2 + vr * dl
                st[5 * Q + i] = b2 + vi * dl
                st[6 * Q + i] = c2 + vr * dr
                st[7 * Q + i] = d2 + vi * dr
                wr = st[10 * Q + i]
                wi = st[11 * Q + i]
                st[8 * Q + i] = ur * wr - ui * wi
                st[9 * Q + i] = ur * wi + ui * wr
            bsum[j] += acc


slide_chunk = None
if AVAILABLE:
    try:
        _f64, _f32 = numba.float64[::1], numba.float32[::1]
        slide_chunk = numba.njit((_f64, numba.int64, numba.int64, _f64, _f64, _f64, _f32, _f64),
                                 nogil=True, cache=True, error_model="numpy", boundscheck=False,
                                 fastmath={"reassoc", "contract", "nsz"})(_slide_chunk)
    except Exception:  # noqa: BLE001 - a numba that cannot compile here: the torch backend is used
        AVAILABLE = False
    finally:
        if _WIDE:
            os.environ.pop("NUMBA_CPU_FEATURES", None)
