"""Sampling a scene graph (sources, events, trajectories, room, degradation) from a clip's RNG,
and the deterministic assignment of clip ids to splits.

Every time in the graph is a frame index first: an event at frame k has time k / fps and its audio
starts at sample round(k / fps * sr). Positions are stored per frame, rounded, and the renderers
read the stored values, so the graph is the exact truth of what is seen and heard.
"""

from __future__ import annotations

import math

import numpy as np

from .vocab import CLASSES, SoundClass

ITD_MAX_S = 0.6e-3  # interaural time difference for a source at the far left/right edge
FLOOR = 0.82  # floor line, as a fraction of the frame height from the top
SPLITS = ("train", "val", "test")
# AudioCanvas test proportions: 2,676 single-event : 501 multi-event clips.
TEST_SINGLE, TEST_MULTI = 2676, 501
_BLOCK = ("train",) * 8 + ("val", "test")  # 80/10/10, permuted per block of 10 ids


def clip_id(index: int) -> str:
    return f"clip_{index:07d}"


def clip_rngs(seed: int, index: int, n: int = 3) -> list[np.random.Generator]:
    """Independent generators for (scene, audio, text) of clip `index`: no dependence on scheduling."""
    return [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence([int(seed), int(index)]).spawn(n)]


def assign_split(seed: int, index: int) -> tuple[str, str | None]:
    """(split, subset) of clip `index`: exactly 8 train, 1 val, 1 test per block of 10 ids (order
    drawn from the seed), and the b-th test clip is "single" or "multi" by a low-discrepancy rule
    that keeps the running proportion within one clip of 2676 : 501."""
    block, pos = divmod(int(index), len(_BLOCK))
    perm = np.random.Generator(np.random.PCG64([int(seed), block, 7])).permutation(len(_BLOCK))
    split = _BLOCK[int(perm[pos])]
    if split != "test":
        return split, None
    p = TEST_SINGLE / (TEST_SINGLE + TEST_MULTI)
    return split, ("single" if math.floor((block + 1) * p) > math.floor(block * p) else "multi")


def _event(frame: int, fps: float, kind: str) -> dict:
    return {"time": round(frame / fps, 6), "frame": int(frame), "kind": kind}


def _impact(rng, T: int, fps: float, n_ev: int, H: float) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """A falling object: held, dropped, hits the floor at the first event, then bounces."""
    fall = int(rng.integers(8, 14))
    gaps = [int(rng.integers(8, 15)) for _ in range(n_ev - 1)]
    # A short clip holds fewer bounces: drop the ones that would land past its end (after the draws,
    # so a clip that fits -- every 4 s clip -- gets exactly the same scene).
    fall = min(fall, max(1, T - 6))
    while gaps and fall + 1 + sum(gaps) > T - 4:
        gaps.pop()
    last_start = T - 4 - sum(gaps)
    first = int(rng.integers(fall + 1, max(fall + 2, last_start)))
    frames = [first]
    for g in gaps:
        frames.append(frames[-1] + g)
    h0 = float(rng.uniform(0.36, 0.5))
    h = np.full(T, h0)
    f = np.arange(T, dtype=float)
    start = first - fall
    seg = (f >= start) & (f <= first)
    h[seg] = h0 * (1 - ((f[seg] - start) / fall) ** 2)
    for i, (a, b) in enumerate(zip(frames[:-1], frames[1:])):
        g = b - a
        hb = max(h0 * 0.55 ** (i + 1), 4.5 / H * g * g / (4 * (g - 1)))  # >= 4.5 px one frame off contact
        seg = (f >= a) & (f <= b)
        u = (f[seg] - a) / g
        h[seg] = 4 * hb * u * (1 - u)
    h[f >= frames[-1]] = 0.0
    for k in frames:
        h[k] = 0.0
    return [_event(k, fps, "impact") for k in frames], h, np.ones(T, bool)


def _strikes(rng, T: int, fps: float, n_ev: int) -> list[int]:
    frames: list[int] = []
    while len(frames) < n_ev:
        frames = sorted(int(k) for k in rng.integers(3, T - 8, n_ev))
        if any(b - a < 10 for a, b in zip(frames[:-1], frames[1:])):
            frames = []
    return frames


def sample_source(rng, cls: SoundClass, T: int, fps: float, H: int, n_ev: int) -> dict:
    fam = cls.family
    distance = round(float(rng.uniform(1.0, 3.5)), 3)
    x = np.full(T, float(rng.uniform(-0.85, 0.85)))
    visible = np.ones(T, bool)
    timbre = {"f0": round(float(rng.uniform(0.0, 1.0)), 4), "decay": round(float(rng.uniform(0.0, 1.0)), 4)}
    if fam == "impact":
        events, h, visible = _impact(rng, T, fps, n_ev, H)
    elif fam == "tonal":
        events = [_event(k, fps, "strike") for k in _strikes(rng, T, fps, n_ev)]
        h = np.full(T, float(rng.choice([0.0, rng.uniform(0.15, 0.4)])))
    else:
        k = _strikes(rng, T - 20, fps, 1)[0]
        events = [_event(k, fps, "start")]
        visible = np.arange(T) >= k
        h = np.full(T, 0.0 if fam == "continuous" else 0.55)
        f = np.clip(np.arange(T) - k, 0, None) / fps
        if cls.name == "engine":
            amp, per = float(rng.uniform(0.2, 0.45)), float(rng.uniform(1.2, 2.5))
            x0 = float(np.clip(x[0], -0.85 + amp, 0.85 - amp))
            x = x0 + amp * np.sin(2 * np.pi * f / per + float(rng.choice([0.0, np.pi])))
        elif cls.name == "whoosh":
            x0 = float(rng.choice([-0.85, 0.85]) * rng.uniform(0.7, 1.0))
            x1 = float(rng.uniform(-0.8, 0.8))
            travel = float(rng.uniform(0.8, 2.0))
            u = np.clip(f / travel, 0, 1)
            x = x0 + (x1 - x0) * (1 - (1 - u) ** 2)
            h = np.full(T, float(rng.uniform(0.2, 0.5)))
    x = np.round(np.clip(x, -0.95, 0.95), 4)
    h = np.round(h, 4)
    vis_x = x[visible]
    itd = -float(vis_x.mean()) * ITD_MAX_S
    return {
        "class": cls.name, "label": cls.label, "family": fam, "events": events,
        "positions": {"x": x.tolist(), "y": h.tolist(), "visible": visible.astype(int).tolist()},
        "moving": bool(np.ptp(vis_x) > 1e-3),
        "distance": distance, "gain": round(float(rng.uniform(0.6, 1.0)) / distance, 4),
        "itd_s": itd, "timbre": timbre,
    }


def sample_scene(seed: int, index: int, duration: float, fps: float, size: int, sample_rate: int,
                 subset: str | None) -> dict:
    """The scene graph of clip `index` (subset "single" forces one event, "multi" two or more)."""
    rng = clip_rngs(seed, index)[0]
    T = max(1, int(fps * duration + 1e-6))
    multi = subset == "multi" or (subset is None and rng.random() < 0.6)
    if not multi:
        plan = [(CLASSES[int(rng.integers(len(CLASSES)))], 1)]
    else:
        n_src = int(rng.integers(1, 4))
        names = rng.choice(len(CLASSES), size=n_src, replace=False)
        plan = []
        for j in names:
            cls = CLASSES[int(j)]
            many = cls.family in ("impact", "tonal")
            plan.append((cls, int(rng.integers(1, 4)) if many else 1))
        if sum(n for _, n in plan) < 2:  # one continuous/texture source alone: add an impact or tonal one
            pool = [c for c in CLASSES if c.family in ("impact", "tonal")]
            plan = [(pool[int(rng.integers(len(pool)))], 2)] if n_src == 1 else plan + [(pool[0], 1)]
    sources = [sample_source(rng, cls, T, fps, size, n) for cls, n in plan]
    for src in sources:  # static sources are delayed by whole samples: store that exact delay
        itd = src["itd_s"] if src["moving"] else round(src["itd_s"] * sample_rate) / sample_rate
        src["itd_s"] = round(itd, 9)
    degradation = None
    if rng.random() < 0.25:
        degradation = {"kind": str(rng.choice(["noise", "clipping", "bandlimit"])),
                       "severity": round(float(rng.uniform(0.15, 1.0)), 3)}
    bg = np.round(rng.uniform(0.05, 0.22, 3), 3).tolist()
    return {
        "duration": float(duration), "fps": float(fps), "sample_rate": int(sample_rate), "num_frames": T,
        "size": int(size), "floor": FLOOR, "background": bg,
        "floor_color": np.round(rng.uniform(0.25, 0.4, 3), 3).tolist(),
        "room": {"rt60": round(float(rng.uniform(0.2, 0.7)), 3)},
        "sources": sources, "degradation": degradation,
    }
