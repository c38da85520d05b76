"""95 % bootstrap intervals over test clips: the error bars of every claim this project reports.

Clips, not samples of audio, are the unit: each system is scored once per clip, and a claim about two
systems is a claim about the mean of their per-clip difference (paired, so clip difficulty cancels).
With several training seeds the per-clip score is first averaged over the seeds, so the interval
covers clip variation around the seed-averaged system (the seeds' spread is reported beside it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

RESAMPLES = 2000


def interval(values: Sequence[float], resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean of `values` and its 95 % percentile-bootstrap interval."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap interval of no values")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (resamples, x.size))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(x.mean()), "ci95": [float(lo), float(hi)], "n": int(x.size)}


def paired(base: Mapping[str, float], other: Mapping[str, float], resamples: int = RESAMPLES,
           seed: int = 0) -> dict:
    """Mean of (other - base) over the clips both scored, its interval, and whether it lies above zero.

    Clips whose score is missing (None / NaN) in either system are left out; `n` counts the clips used."""
    ids = sorted(i for i in set(base) & set(other) if _finite(base[i]) and _finite(other[i]))
    if not ids:
        raise ValueError("paired bootstrap: the two systems share no scored clip")
    out = interval([other[i] - base[i] for i in ids], resamples, seed)
    out["above_zero"] = bool(out["ci95"][0] > 0)
    out["below_zero"] = bool(out["ci95"][1] < 0)
    return out


def _finite(v: float | None) -> bool:
    return v is not None and bool(np.isfinite(v))
