"""The procedural AudioCanvas corpus: schema, determinism, exact ground truth on the written files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from prismaudio.procedural.synth import run_synth
from prismaudio.procedural.synth.render import cause_patch
from prismaudio.procedural.synth.scene import TEST_MULTI, TEST_SINGLE, assign_split
from prismaudio.procedural.synth.writer import make_clip, select_ids
from prismaudio.io.video import read_frames
from prismaudio.metrics.spatial import gcc_phat_itd

N = 10
SEED = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("synth_a")
    m = run_synth(out, N, SEED, split="test", workers=2, progress=False)
    return out, [json.loads(line) for line in m.read_text().splitlines()]


def onset(x: np.ndarray, sr: int, expected: float, search: float = 0.03) -> float:
    """Energy-jump onset near `expected` s: the 1 ms frame whose peak most exceeds the previous 10 ms."""
    env = np.abs(x).max(0)
    hop = max(1, sr // 1000)
    a = max(0, int((expected - search) * sr) - 10 * hop)
    b = min(len(env), int((expected + search) * sr))
    frames = env[a:b][: (b - a) // hop * hop].reshape(-1, hop).max(1)
    floor = 1e-4 + 1e-3 * frames.max()
    score = [frames[i] / (frames[max(0, i - 10):i].max() + floor) for i in range(10, len(frames))]
    i = 10 + int(np.argmax(score))
    seg = env[a + i * hop: a + (i + 1) * hop]
    lead = int(np.argmax(seg > 0.3 * seg.max()))  # first clearly rising sample inside that frame
    return (a + i * hop + lead) / sr


def test_manifest_schema(corpus):
    out, rows = corpus
    assert len(rows) == N and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    for r in rows:
        assert {"id", "video", "audio", "split", "subset", "duration", "sample_rate", "fps", "caption", "cot",
                "cot_monolithic", "scene"} <= set(r)
        assert (out / r["video"]).is_file() and (out / r["audio"]).is_file()
        assert r["split"] == "test" and r["subset"] in ("single", "multi")
        assert set(r["cot"]) == {"semantic", "temporal", "aesthetic", "spatial"}
        assert all(isinstance(v, str) and v for v in r["cot"].values())
        sc = r["scene"]
        for s in sc["sources"]:
            assert {"class", "label", "events", "positions", "distance", "gain", "itd_s"} <= set(s)
            assert len(s["positions"]["x"]) == sc["num_frames"]
            assert all(-1 <= x <= 1 for x in s["positions"]["x"])
            for e in s["events"]:
                assert e["time"] == pytest.approx(e["frame"] / r["fps"])
        n_ev = sum(len(s["events"]) for s in sc["sources"])
        assert (n_ev == 1) == (r["subset"] == "single")
        d = sc["degradation"]
        assert d is None or (d["kind"] in ("noise", "clipping", "bandlimit") and 0 <= d["severity"] <= 1)
        data, sr = sf.read(out / r["audio"])
        assert sr == 16000 and data.shape == (64000, 2)
    assert not list(out.rglob("*.part*"))


def test_deterministic(corpus, tmp_path):
    out, _ = corpus
    run_synth(tmp_path, N, SEED, split="test", workers=1, progress=False)
    for f in ["manifest.jsonl"] + [str(p.relative_to(out)) for p in out.rglob("*.*")]:
        assert (out / f).read_bytes() == (tmp_path / f).read_bytes(), f


def test_onsets_and_itd_on_wav(corpus):
    out, rows = corpus
    checked = 0
    for r in rows:
        audio, sr = sf.read(out / r["audio"], always_2d=True)
        audio = audio.T
        srcs = r["scene"]["sources"]
        if r["subset"] == "single":  # the WAV on disk: onset and ITD sign of the one source
            ev = srcs[0]["events"][0]
            assert abs(onset(audio, sr, ev["time"]) - round(ev["time"] * sr) / sr) <= 0.002, (r["id"], ev)
            if not srcs[0]["moving"] and abs(srcs[0]["itd_s"]) > 1e-4:
                a, b = round(ev["time"] * sr), round(ev["time"] * sr) + sr // 10
                itd = gcc_phat_itd(audio[0, a:b], audio[1, a:b], sr)
                assert np.sign(itd) == np.sign(srcs[0]["itd_s"]), (r["id"], itd, srcs[0]["itd_s"])
                assert abs(itd - srcs[0]["itd_s"]) < 1.5 / sr
            checked += 1
    assert checked >= 3


def test_onsets_and_itd_on_stems():
    """Every event of multi-event clips, on the per-source direct stems (kept in memory)."""
    cfg = {"duration": 4.0, "fps": 25.0, "size": 96, "sample_rate": 16000}
    n_ev = n_itd = 0
    for i in select_ids(6, SEED, "test")[:6] + list(range(4)):
        row, _, _, stems = make_clip(SEED, i, cfg)
        for s, stem in zip(row["scene"]["sources"], stems):
            for ev in s["events"]:
                assert abs(onset(stem, 16000, ev["time"]) - round(ev["time"] * 16000) / 16000) <= 0.002, (i, s["class"], ev)
                n_ev += 1
            x = np.asarray(s["positions"]["x"])[np.asarray(s["positions"]["visible"], bool)]
            if abs(s["itd_s"]) > 1e-4 and (np.all(x < -0.1) or np.all(x > 0.1)):
                a = round(s["events"][0]["time"] * 16000)
                itd = gcc_phat_itd(stem[0, a:a + 3200], stem[1, a:a + 3200], 16000)
                assert np.sign(itd) == np.sign(s["itd_s"]) == -np.sign(x.mean()), (i, s["class"], itd)
                n_itd += 1
    assert n_ev >= 10 and n_itd >= 3


def test_visual_cause_at_event_frame(corpus):
    out, rows = corpus
    n = 0
    for r in rows:
        sc = r["scene"]
        if len(sc["sources"]) != 1:
            continue
        frames = read_frames(out / r["video"], fps=r["fps"], size=sc["size"]).permute(0, 2, 3, 1).numpy()
        assert frames.shape[0] == sc["num_frames"]
        src = sc["sources"][0]
        bg = np.asarray(sc["background"])
        for ev in src["events"]:
            k = ev["frame"]
            rows_, cols = cause_patch(sc, src, ev)
            now, before = frames[k][rows_, cols], frames[k - 1][rows_, cols]
            if ev["kind"] == "strike":  # flash: much brighter than the frame before
                assert now.mean() - before.mean() > 0.15, (r["id"], ev)
            else:  # contact / appearance: object there now, background one frame earlier
                assert np.abs(now - bg).mean() > 0.12, (r["id"], ev)
                assert np.abs(before - bg).mean() < 0.06, (r["id"], ev)
            n += 1
    assert n >= 3


def test_split_proportions_dry_run():
    n = 31770
    c = Counter(assign_split(0, i) for i in range(n))
    assert c[("train", None)] == n * 8 // 10 and c[("val", None)] == n // 10
    assert c[("test", "single")] == TEST_SINGLE and c[("test", "multi")] == TEST_MULTI
    assert Counter(assign_split(1, i)[0] for i in range(1000)) == {"train": 800, "val": 100, "test": 100}
    assert [assign_split(1, i) for i in range(50)] != [assign_split(2, i) for i in range(50)]


def test_cot_mentions_truth_and_varies(corpus):
    _, rows = corpus
    from prismaudio.procedural.synth.vocab import BY_NAME

    for r in rows:
        for s in r["scene"]["sources"]:
            nouns = BY_NAME[s["class"]].nouns
            assert any(w in r["cot"]["semantic"] for w in nouns)
            x = np.asarray(s["positions"]["x"])[np.asarray(s["positions"]["visible"], bool)]
            if not s["moving"]:
                side = "left" if x.mean() < -0.33 else "right" if x.mean() > 0.33 else "centre"
                assert side in r["cot"]["spatial"]
            for e in s["events"]:
                assert f"{e['time']:.2f} s" in r["cot"]["temporal"]
        if r["scene"]["degradation"]:
            assert f"{r['scene']['degradation']['severity']:.2f}" in r["cot"]["aesthetic"]
    for part in ("semantic", "temporal", "aesthetic", "spatial"):
        openings = {r["cot"][part].split(" ")[0:2].__str__() for r in rows}
        assert len(openings) >= 2, part
    assert len({r["cot_monolithic"] for r in rows}) == len(rows)


def test_gcc_phat_sign():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(4000)
    right = np.concatenate([np.zeros(5), x[:-5]])  # right delayed: left leads
    assert gcc_phat_itd(x, right, 16000) == pytest.approx(5 / 16000, abs=1e-5)
    assert gcc_phat_itd(right, x, 16000) == pytest.approx(-5 / 16000, abs=1e-5)


@pytest.mark.parametrize("frames", [13, 20, 37, 100])
def test_impact_events_stay_inside_short_clips(frames: int) -> None:
    """A 1.5 s clip (37 frames) cannot hold three bounces of up to 14 frames after a 13-frame fall:
    the bounces that do not fit are dropped (this raised IndexError before), and a 4 s clip's scene is
    the one drawn before the fix."""
    from prismaudio.procedural.synth.scene import _impact

    for seed in range(200):
        for n_ev in (1, 2, 3, 4):
            events, height, _ = _impact(np.random.default_rng(seed), frames, 25.0, n_ev, 96.0)
            assert 1 <= len(events) <= n_ev and all(0 <= e["frame"] < frames for e in events)
            assert all(height[e["frame"]] == 0.0 for e in events)
            if frames == 100:
                assert len(events) == n_ev
