"""The offline planner on footage outside its world, and the bounds on every plan it writes.

A new user's first clip is real footage (issue 19: a 1280x720 25 fps rabbit in a meadow got ~1,500
words about 36 imaginary sources). Here a natural-ish texture video of that format is built with
PyAV; it must get one warning line and a short neutral plan, while procedural clips keep theirs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prismaudio.cot import CoT, build_planner
from prismaudio.procedural import planner as P

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example.mp4"


def write_meadow(path: Path, w: int = 1280, h: int = 720, fps: int = 25, seconds: float = 2.0) -> Path:
    """Sky over a meadow: smooth drifting colour noise, a vertical gradient, grass stripes that sway."""
    rng = np.random.default_rng(0)
    n = int(fps * seconds)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    sky = (yy < 0.4 * h)[..., None]
    base = np.where(sky, np.array([0.55, 0.7, 0.92], np.float32), np.array([0.25, 0.5, 0.18], np.float32))
    base = base * (0.8 + 0.4 * yy[..., None] / h)
    fields = torch.from_numpy(rng.random((n // 10 + 2, 3, 9, 16)).astype(np.float32))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(n):
            k, a = divmod(i, 10)
            lo = torch.lerp(fields[k], fields[k + 1], a / 10)[None]
            noise = F.interpolate(lo, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
            grass = (0.12 * np.sin(0.7 * xx + 2.0 * np.sin(0.04 * yy + i / 4)))[..., None] * ~sky
            img = np.clip(base + 0.3 * (noise - 0.5) + grass * np.array([0.3, 1.0, 0.2], np.float32), 0, 1)
            for p in s.encode(av.VideoFrame.from_ndarray((img * 255).astype(np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def meadow(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_meadow(tmp_path_factory.mktemp("footage") / "meadow.mp4")


@pytest.fixture(scope="module")
def planner():
    return build_planner("offline")


def _plan(planner, video, caption=None) -> tuple[CoT, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cot = planner.plan(video, caption=caption)
    return cot, [str(w.message) for w in caught]


def test_real_footage_gets_one_warning_and_a_short_neutral_plan(planner, meadow: Path) -> None:
    cot, warned = _plan(planner, meadow)
    assert len(warned) == 1 and "\n" not in warned[0]
    assert "meadow.mp4 does not look like the procedural world" in warned[0] and "no floor line" in warned[0]
    text = cot.render("multi")
    assert len(text.split()) <= 60
    assert P.caption_classes(text) == []  # names no corpus source (no gongs, engines, balls)
    assert "floor" not in text.lower() and not planner.last_report.in_domain


def test_real_footage_with_a_caption_plans_the_caption(planner, meadow: Path) -> None:
    cot, warned = _plan(planner, meadow, caption="a rabbit hops through tall grass")
    assert len(warned) == 1 and "the caption as its Semantic part" in warned[0]
    assert cot.semantic == "A rabbit hops through tall grass."
    assert P.caption_classes(cot.render("multi")) == []


def test_procedural_clips_keep_their_plan(planner, corpus: Path) -> None:
    """In domain: no warning, and exactly the plan of the unchecked analysis (the scene it estimates)."""
    import json

    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]
    for row in rows[:3]:
        video = corpus / row["video"]
        cot, warned = _plan(planner, video)
        assert warned == [] and planner.last_report.in_domain
        assert cot == CoT(**P.analyse_video(video, classifier=planner.classifier))
        gt = {s["class"] for s in row["scene"]["sources"]}
        assert len(P.estimate_scene(video, planner.classifier)["sources"]) <= max(len(gt), P.MAX_SOURCES)


def test_bundled_example_keeps_its_impact_times(planner) -> None:
    cot, warned = _plan(planner, EXAMPLE)
    assert warned == []
    assert "0.96 s" in cot.temporal and "2.56 s" in cot.temporal  # the impacts at 1.00 s / 2.60 s, frame-exact


def test_word_bound_drops_trailing_sentences_and_keeps_every_part() -> None:
    long = {k: " ".join(f"Sentence {i} of the {k} part has seven words." for i in range(40)) for k in P.PARTS}
    out = P.bound_words(long)
    assert sum(len(t.split()) for t in out.values()) <= P.MAX_WORDS
    for k in P.PARTS:
        assert out[k] and long[k].startswith(out[k])  # a prefix of whole sentences
    one = P.bound_words({"semantic": "word " * 500, "temporal": "Short."}, 50)
    assert sum(len(t.split()) for t in one.values()) <= 50 and one["temporal"] == "Short."
    flat = P.bound_words({k: "word " * 100 for k in P.PARTS}, 50)  # one long sentence each
    assert sum(len(t.split()) for t in flat.values()) <= 50 and all(flat.values())


def test_event_and_source_bounds() -> None:
    sources = [{"events": [{"frame": f} for f in range(n)]} for n in (9, 5, 1)]
    P._bound_events(sources)
    counts = [len(s["events"]) for s in sources]
    assert sum(counts) == P.MAX_EVENTS and counts[2] == 1 and max(counts) - min(counts[:2]) <= 1
    T = 10
    tracks = [P._new_track(T, 0) for _ in range(7)]
    for i, tr in enumerate(tracks):
        tr.col[: i + 1] = 5.0  # track i seen on i + 1 frames
    an = P.Analysis(np.zeros((T, 4, 4, 3), np.float32), np.zeros((T, 4, 4), np.int32), 25.0, 3, tracks,
                    ["tonal"] * 7, [[0]] * 7)
    probs = np.eye(7, len(P.CLASSES))
    kept, kp = P.bound_tracks(an, probs)
    assert kept.tracks == tracks[3:] and len(kept.behaviour) == len(kept.events) == P.MAX_SOURCES
    assert np.array_equal(kp, probs[3:])


def test_planning_time_estimate_grows_with_pixels_and_frames(planner, meadow: Path, tmp_path: Path) -> None:
    small, big = planner.estimate_seconds(EXAMPLE), planner.estimate_seconds(meadow)
    assert 0 < small and big > small  # 50 frames of 1280x720 cost more than 100 of 128x128
    assert planner.estimate_seconds(tmp_path / "missing.mp4") is None
