"""Measures that need the scene graph of the procedural benchmark (`prismaudio.procedural.synth`).

Every function takes the generated audio [2, S] (tensor or array), its sample rate and the clip's
`scene` dict, and returns a `Measure(value, reason)`: `reason` is None when the measure applies and
a short string (with `value` NaN) when it does not (silent audio, no static source, ...). Nothing
here raises on such input.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from .spatial import gcc_phat_itd

NAN = float("nan")


class Measure(NamedTuple):
    value: Any
    reason: str | None = None


def _np(audio) -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(audio, dtype=np.float64)
    return a[None] if a.ndim == 1 else a


def _silent(a: np.ndarray) -> bool:
    return a.size == 0 or float(np.abs(a).max()) < 1e-6


def detect_onsets(audio, sr: int, hop_ms: float = 0.5, post_ms: float = 2.0, pre_ms: float = 20.0,
                  rise_db: float = 9.0, floor_db: float = -45.0, min_gap_ms: float = 30.0) -> np.ndarray:
    """Onset times (s): local maxima of the energy rise 10 log10(E_post / E_pre) (a `post_ms`
    window starting at the candidate vs the `pre_ms` before it, channels summed in energy), at
    least `rise_db` high, with E_post above `floor_db` re the loudest post window, `min_gap_ms`
    apart. Evaluated every `hop_ms` from a cumulative sum, so it costs O(S)."""
    a = _np(audio)
    e = np.concatenate([[0.0], np.cumsum((a ** 2).sum(0))])
    n = a.shape[1]
    post, pre = max(1, int(post_ms * sr / 1000)), max(1, int(pre_ms * sr / 1000))
    pos = np.arange(0, n - post, max(1, int(hop_ms * sr / 1000)))
    if len(pos) < 3:
        return np.zeros(0)
    e_post = (e[pos + post] - e[pos]) / post
    lo = np.maximum(pos - pre, 0)
    e_pre = (e[pos] - e[lo]) / np.maximum(pos - lo, 1)
    peak = e_post.max()
    if peak <= 0:
        return np.zeros(0)
    eps = peak * 10 ** (floor_db / 10) * 1e-2
    rise = 10 * np.log10((e_post + eps) / (e_pre + eps))
    ok = (rise >= rise_db) & (e_post >= peak * 10 ** (floor_db / 10))
    gap = max(1, int(round(min_gap_ms / hop_ms)))
    out: list[int] = []
    for i in np.argsort(-rise):  # greedy non-maximum suppression
        if not ok[i]:
            break
        if all(abs(i - j) >= gap for j in out):
            out.append(int(i))
    return np.sort(pos[out]) / sr


def _event_times(scene: dict) -> list[float]:
    return sorted(ev["time"] for s in scene.get("sources", []) for ev in s.get("events", []))


def onset_errors(audio, sr: int, scene: dict, radius_ms: float = 50.0) -> Measure:
    """Per ground-truth event (sorted by time): |detected - true| onset in ms for the nearest
    detected onset within `radius_ms`, NaN for a miss. Value: that list (NaN when silent / no event)."""
    times = _event_times(scene)
    if not times:
        return Measure(NAN, "scene has no event")
    a = _np(audio)
    if _silent(a):
        return Measure(NAN, "silent audio")
    det = detect_onsets(a, sr)
    errs = []
    for t in times:
        d = np.abs(det - t) * 1000 if len(det) else np.array([np.inf])
        errs.append(float(d.min()) if d.min() <= radius_ms else NAN)
    return Measure(errs, None)


def onset_summary(errors: list[float]) -> dict:
    """Median error (ms) over matched events and miss rate."""
    e = np.asarray(errors, dtype=float)
    hit = e[np.isfinite(e)]
    return {"median_ms": float(np.median(hit)) if len(hit) else NAN,
            "miss_rate": float(1 - len(hit) / len(e)) if len(e) else NAN}


def _static_windows(scene: dict, sr: int, margin: float, win_s: float = 0.1) -> list[tuple[dict, int, int]]:
    """(source, start, end) sample windows where one static source with |x| > margin sounds alone:
    from its first event to <= `win_s` later, cut at the first event of any other source, kept when
    no other source started before it and the window is >= 20 ms long."""
    srcs = scene.get("sources", [])
    out = []
    for i, s in enumerate(srcs):
        if s.get("moving", True) or not s.get("events"):
            continue
        x = float(np.mean(s["positions"]["x"]))
        if abs(x) <= margin:
            continue
        t0 = min(ev["time"] for ev in s["events"])
        others = [min(ev["time"] for ev in o["events"]) for j, o in enumerate(srcs) if j != i and o.get("events")]
        if any(t <= t0 for t in others):
            continue
        t1 = min([t0 + win_s] + others)
        if t1 - t0 >= 0.02:
            out.append((s, int(round(t0 * sr)), int(round(t1 * sr))))
    return out


def side_accuracy(audio, sr: int, scene: dict, margin: float = 0.1) -> Measure:
    """Fraction of static sources (|x| > margin) whose GCC-PHAT ITD sign in the generated audio
    matches their side (x < 0: left, ITD > 0). Multi-source clips: only sources heard alone (see
    `_static_windows`: the first source to start, until another one starts) are scored."""
    a = _np(audio)
    if a.shape[0] < 2:
        return Measure(NAN, "mono audio has no side")
    if _silent(a):
        return Measure(NAN, "silent audio")
    wins = _static_windows(scene, sr, margin)
    if not wins:
        return Measure(NAN, f"no static source with |x| > {margin} heard alone")
    hits = []
    for s, b, e in wins:
        seg = a[:, b:e]
        if _silent(seg):
            hits.append(False)
            continue
        itd = gcc_phat_itd(seg[0], seg[1], sr)
        hits.append(np.sign(itd) == -np.sign(np.mean(s["positions"]["x"])))
    return Measure(float(np.mean(hits)), None)


def itd_error(audio, sr: int, scene: dict, margin: float = 0.0) -> Measure:
    """|GCC-PHAT ITD - itd_s| in ms for single-source static clips (first 100 ms after its onset)."""
    a = _np(audio)
    srcs = scene.get("sources", [])
    if len(srcs) != 1 or srcs[0].get("moving", True):
        return Measure(NAN, "not a single static source")
    if a.shape[0] < 2:
        return Measure(NAN, "mono audio has no ITD")
    if _silent(a):
        return Measure(NAN, "silent audio")
    wins = _static_windows(scene, sr, margin=-1.0)
    if not wins:
        return Measure(NAN, "source window too short")
    s, b, e = wins[0]
    seg = a[:, b:e]
    if _silent(seg):
        return Measure(NAN, "generated audio silent at the source onset")
    return Measure(abs(gcc_phat_itd(seg[0], seg[1], sr) - s["itd_s"]) * 1000, None)


def class_recall(predicted_classes, scene: dict) -> Measure:
    """Fraction of the scene's classes (names; labels accepted too, case-insensitive) predicted."""
    srcs = scene.get("sources", [])
    if not srcs:
        return Measure(NAN, "scene has no source")
    pred = {str(p).strip().lower() for p in predicted_classes}
    truth = {(s["class"].lower(), str(s.get("label", "")).lower()) for s in srcs}
    hit = sum(1 for name, label in truth if name in pred or (label and label in pred))
    return Measure(hit / len(truth), None)
