"""Long videos in windows (`prismaudio.longform`, issue 18 item 3): window layout, exact length,
seams through the audio context, streamed frames, the cap, the progress bar, odd frame rates."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from prismaudio import longform
from prismaudio.cli import main
from prismaudio.config import preset
from prismaudio.cot import CoT, Planner
from prismaudio.errors import PrismAudioError
from prismaudio.io.video import FrameWindows, num_samples, probe_video, read_frames_multi, write_clip
from prismaudio.longform import LongformConfig, equal_power_join, generate_long, plan_windows
from prismaudio.pipeline import PrismAudioPipeline

SR = 16000


def make_video(path: Path, n: int, fps: float | Fraction = 25, size: int = 32, gop: int = 10) -> Path:
    """H.264 clip of `n` frames, frame i a uniform gray (i * 7) % 256 (so frames are identifiable),
    a keyframe every `gop` frames (a window's decode then starts at most `gop` frames early)."""
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.codec_context.gop_size = gop
        s.options = {"qp": "0", "preset": "ultrafast", "keyint": str(gop), "min-keyint": str(gop)}
        for i in range(n):
            f = av.VideoFrame.from_ndarray(np.full((size, size, 3), (i * 7) % 256, np.uint8), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def pipe() -> PrismAudioPipeline:
    cfg = preset("tiny")
    cfg.dit.audio_context = True
    return PrismAudioPipeline.from_config(cfg, seed=0)


@pytest.fixture(scope="module")
def video6(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("v") / "six.mp4", n=150, fps=25)  # 6.0 s


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("model") / "tiny"
    PrismAudioPipeline.from_preset("tiny", seed=0).save_pretrained(root)
    return root


# ------------------------------------------------------------------------------ window layout
@pytest.mark.parametrize("total,window,overlap,grid", [
    (96000, 16000, 4000, 640), (96001, 32000, 8000, 640), (16641, 16000, 4000, 640),
    (100003, 16000, 0, 1), (70000, 32000, 15999, 512), (33000, 16000, 4000, 128), (960000, 64000, 16000, 640),
])
def test_windows_cover_the_track_evenly(total: int, window: int, overlap: int, grid: int) -> None:
    ws = plan_windows(total, window, overlap, grid)
    assert ws[0].start == 0 and ws[0].keep == 0 and ws[-1].end == total  # first at 0, the last ends at the end
    assert all(w.length == window for w in ws[:-1]) and window <= ws[-1].length < window + grid  # no tiny window
    for a, b in zip(ws, ws[1:]):
        assert b.keep == a.end - b.start >= overlap  # every overlap at least the requested one
        assert b.start > a.start and b.keep < a.length  # progress, every window adds new samples
    assert all(w.start % grid == 0 for w in ws)  # on the frame grid: frames stay in phase with the audio
    stride = (window - overlap) // grid
    assert len(ws) == 1 + -(-((total - window) // grid) // stride)  # no more windows than needed


def test_a_track_less_than_a_grid_step_over_is_one_window() -> None:
    assert plan_windows(16100, 16000, 4000, 640) == [longform.Window(0, 0, 16100, 0)]


def test_one_window_when_the_track_fits() -> None:
    assert plan_windows(16000, 16000, 4000) == [longform.Window(0, 0, 16000, 0)]
    assert plan_windows(9000, 16000, 4000) == [longform.Window(0, 0, 9000, 0)]
    with pytest.raises(PrismAudioError, match="overlap"):
        plan_windows(50000, 16000, 16000)


def test_equal_power_join() -> None:
    track = torch.full((2, 10), 0.3)
    new = torch.full((2, 6), -0.6)
    equal_power_join(track, new, start=4, overlap=3)
    t = (torch.arange(3) + 0.5) / 3
    expect = 0.3 * torch.cos(0.5 * torch.pi * t) - 0.6 * torch.sin(0.5 * torch.pi * t)
    assert torch.equal(track[:, :4], torch.full((2, 4), 0.3))
    torch.testing.assert_close(track[0, 4:7], expect)
    assert torch.equal(track[:, 7:], torch.full((2, 3), -0.6))
    loud = torch.full((2, 10), 1.0)
    equal_power_join(loud, torch.full((2, 6), 1.0), start=4, overlap=3)  # cos + sin > 1: clipped
    assert loud.max() == 1.0


def test_seam_splice_copies_the_kept_audio_and_fades_linearly() -> None:
    from prismaudio.longform import seam_splice

    ref, gen = torch.full((2, 20), 0.9), torch.full((2, 20), -0.9)
    out = seam_splice(gen, ref, keep=8, width=4)
    assert torch.equal(out[:, :4], ref[:, :4]) and torch.equal(out[:, 8:], gen[:, 8:])
    w = (torch.arange(4) + 0.5) / 4
    torch.testing.assert_close(out[0, 4:8], 0.9 * (1 - w) - 0.9 * w)
    same = seam_splice(ref.clone(), ref, keep=8, width=4)  # correlated audio: no bump at the seam
    assert torch.allclose(same, ref)


# ------------------------------------------------------------------------------ streaming
def test_frame_windows_equal_read_frames_multi_and_decode_only_the_window(video6: Path) -> None:
    specs = [(8.0, 16), (25.0, 16)]
    starts = [0.0, 1.5, 3.0, 4.5, 2.0]  # the last one goes back: the reader seeks
    with FrameWindows(video6, specs) as fw:
        for st in starts:
            got = fw.read(st, 1.5)
            want = read_frames_multi(video6, specs, duration=1.5, start=st)
            assert all(torch.equal(a, b) for a, b in zip(got, want))
            assert [g.shape[0] for g in got] == [num_samples(8.0, 1.5), num_samples(25.0, 1.5)]
            # the window's 38 frames + at most one GOP (10) before it + one look-ahead frame: never the whole video
            assert fw.last_decoded <= 38 + 10 + 1 < 150
        assert fw.frames_decoded <= len(starts) * 49


def test_generate_long_streams_frames_per_window(pipe: PrismAudioPipeline, video6: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[float, float, int]] = []
    real = FrameWindows.read

    def spy(self: FrameWindows, start: float, duration: float) -> list[torch.Tensor]:
        out = real(self, start, duration)
        reads.append((start, duration, self.last_decoded))
        return out

    monkeypatch.setattr(FrameWindows, "read", spy)
    monkeypatch.setattr(longform, "read_frames_multi", None, raising=False)  # the whole-clip reader is never used
    r = generate_long(pipe, video6, steps=1, planner=None, config=LongformConfig(window_s=1.0))
    assert [(round(a, 6), round(b, 6)) for a, b, _ in reads] == [(round(a, 6), round(b - a, 6))
                                                                 for a, b in r.window_seconds()]
    assert all(n <= 25 + 10 + 1 for _, _, n in reads)  # one window (25 frames) + a GOP, not the 150-frame video
    assert r.frames_decoded == sum(n for *_, n in reads)


# ------------------------------------------------------------------------------ generation
def test_output_is_exactly_the_video_length(pipe: PrismAudioPipeline, video6: Path) -> None:
    r = generate_long(pipe, video6, steps=1, planner=None, config=LongformConfig(window_s=2.0, overlap_s=0.5))
    assert r.audio.shape == (2, 6 * SR) and r.audio.dtype == torch.float32
    assert torch.isfinite(r.audio).all() and r.audio.abs().max() <= 1.0
    assert len(r.windows) == 4 and r.seams == "audio-context"
    assert r.window_seconds()[-1][1] == pytest.approx(6.0)
    assert all(float(r.audio[:, w.start:w.end].abs().max()) > 0 for w in r.windows)  # no silent gap


def test_keep_region_equals_the_previous_window(pipe: PrismAudioPipeline, video6: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    outs: list[torch.Tensor] = []
    contexts: list[object] = []
    real = longform._window_audio

    def record(*args: object) -> torch.Tensor:
        out = real(*args)
        outs.append(out.clone())
        contexts.append(args[-1])
        return out

    monkeypatch.setattr(longform, "_window_audio", record)
    cfg = LongformConfig(window_s=1.5, overlap_s=0.5, crossfade_s=0.02)
    r = generate_long(pipe, video6, steps=2, planner=None, seed=3, config=cfg)
    xf = round(cfg.crossfade_s * SR)
    assert contexts[0] is None and all(c is not None for c in contexts[1:])
    for k in range(1, len(r.windows)):
        prev, cur = r.windows[k - 1], r.windows[k]
        shift = cur.start - prev.start
        # sample-exact copy of the previous window's output, up to the context's crossfade at the seam
        assert torch.equal(outs[k][:, : cur.keep - xf], outs[k - 1][:, shift : shift + cur.keep - xf])
        assert not torch.equal(outs[k][:, cur.keep:], torch.zeros_like(outs[k][:, cur.keep:]))
    # the final track is each window's output beyond the next window's seam
    for k, w in enumerate(r.windows):
        stop = r.windows[k + 1].start + r.windows[k + 1].keep - xf if k + 1 < len(r.windows) else w.end
        assert torch.equal(r.audio[:, w.start:stop], outs[k][:, : stop - w.start])


def test_the_pipeline_method_is_the_windowed_path(pipe: PrismAudioPipeline, video6: Path) -> None:
    cfg = LongformConfig(window_s=2.0, overlap_s=0.5)
    a = pipe.generate_long(video6, steps=1, planner=None, config=cfg, seed=2)
    b = generate_long(pipe, video6, steps=1, planner=None, config=cfg, seed=2)
    assert torch.equal(a.audio, b.audio)
    with pytest.raises(PrismAudioError, match="generate_long"):
        pipe.generate(video6, duration=pipe.config.max_duration + 1, steps=1)


def test_crossfade_path_and_determinism(pipe: PrismAudioPipeline, video6: Path) -> None:
    cfg = LongformConfig(window_s=2.0, overlap_s=0.5, use_context=False)
    a = generate_long(pipe, video6, steps=1, planner=None, config=cfg, seed=1)
    b = generate_long(pipe, video6, steps=1, planner=None, config=cfg, seed=1)
    c = generate_long(pipe, video6, steps=1, planner=None, config=LongformConfig(window_s=2.0, overlap_s=0.5), seed=1)
    assert a.seams == "crossfade" and torch.equal(a.audio, b.audio)
    assert not torch.equal(a.audio, c.audio)  # the context path conditions (and replaces) the overlaps
    w0 = a.windows[1]  # before the first seam both paths hold the first window's audio
    assert torch.equal(a.audio[:, : w0.start], c.audio[:, : w0.start])


def test_one_window_is_the_single_pass(pipe: PrismAudioPipeline, video6: Path) -> None:
    r = generate_long(pipe, video6, duration=0.9, steps=2, planner=None, seed=5)
    s = pipe.generate(video6, duration=0.9, steps=2, planner=None, seed=5)
    assert len(r.windows) == 1 and torch.equal(r.audio, s.audio)


def test_odd_frame_count_and_rate(pipe: PrismAudioPipeline, tmp_path: Path) -> None:
    video = make_video(tmp_path / "odd.mp4", n=157, fps=Fraction(24000, 1001), gop=7)  # 6.548 s at 23.976 fps
    info = probe_video(video)
    r = generate_long(pipe, video, steps=1, planner=None, config=LongformConfig(window_s=1.7, overlap_s=0.3))
    assert r.audio.shape == (2, round(info.duration * SR))
    assert r.windows[-1].end == r.audio.shape[1] and all(w.length == round(1.7 * SR) for w in r.windows[:-1])
    assert all(w.start % 640 == 0 for w in r.windows)  # the 25 fps sync frames of every window in phase


def test_per_window_plans_offline_and_given(pipe: PrismAudioPipeline, video6: Path) -> None:
    with pytest.warns(UserWarning, match="windows"):  # gray frames are outside the procedural world: one warning
        r = generate_long(pipe, video6, steps=1, config=LongformConfig(window_s=2.0))
    assert len(r.plans) == len(r.windows) and all(isinstance(p, CoT) for p in r.plans)
    given = CoT("a ball bounces.", "", "", "")
    g = generate_long(pipe, video6, cot=given, steps=1, config=LongformConfig(window_s=2.0))
    assert g.plan == given and set(g.cots) == {given.render("multi")}


class _RecordingPlanner(Planner):
    """A file-reading planner (like the VLM ones): records the clips it was given."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, int]] = []

    def plan(self, video_path, caption=None) -> CoT:  # type: ignore[no-untyped-def]
        info = probe_video(video_path)
        self.seen.append((info.duration, info.num_frames))
        return CoT(f"window clip of {info.num_frames} frames.", "", "", "")


def test_file_planners_get_one_clip_per_window(pipe: PrismAudioPipeline, video6: Path) -> None:
    planner = _RecordingPlanner()
    r = generate_long(pipe, video6, steps=1, planner=planner, config=LongformConfig(window_s=2.0))
    assert len(planner.seen) == len(r.windows)
    assert all(abs(d - 2.0) <= 0.08 for d, _ in planner.seen)  # each clip is its window (+ the frame standing at its start)
    assert r.plans[0].semantic.startswith("window clip of")


def test_write_clip_holds_the_window(video6: Path, tmp_path: Path) -> None:
    out = write_clip(video6, tmp_path / "w.mp4", 2.0, 1.0)
    frames = read_frames_multi(out, [(25.0, 16)])[0]
    want = read_frames_multi(video6, [(25.0, 16)], duration=1.0, start=2.0)[0]
    assert frames.shape[0] >= 25
    assert torch.allclose(frames[:25].mean((1, 2, 3)), want.mean((1, 2, 3)), atol=0.02)  # the same grays, in order


def test_cap_and_too_long_duration_are_refused(pipe: PrismAudioPipeline, video6: Path) -> None:
    with pytest.raises(PrismAudioError, match="exceeds the maximum of 5 s for long videos"):
        generate_long(pipe, video6, steps=1, planner=None, config=LongformConfig(max_duration_s=5))
    with pytest.raises(PrismAudioError, match="exceeds the maximum for this video"):
        generate_long(pipe, video6, duration=7.0, steps=1, planner=None)


def test_progress_over_windows(pipe: PrismAudioPipeline, video6: Path) -> None:
    calls: list[tuple[int, int]] = []
    r = generate_long(pipe, video6, steps=1, planner=None, config=LongformConfig(window_s=2.0),
                      progress=lambda i, n: calls.append((i, n)))
    n = len(r.windows)
    assert calls == [(i, n) for i in range(n + 1)]


# ------------------------------------------------------------------------------ CLI
def test_cli_long_video_windows_mux_and_plans(model_dir: Path, video6: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert main(["generate", str(video6), "--model", str(model_dir), "--steps", "1", "--window", "2",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "overlapping windows" in err and "windows:" in err  # the note and the bar over windows
    wav, sr = sf.read(out / "six.wav")
    assert sr == SR and wav.shape == (6 * SR, 2)
    with av.open(str(out / "six.mp4")) as c:
        assert len(c.streams.audio) == 1 and float(c.streams.audio[0].duration * c.streams.audio[0].time_base) >= 5.9
    rows = json.loads((out / "six.cot.json").read_text())
    assert [r["window"] for r in rows] == list(range(len(rows))) and rows[-1]["end"] == pytest.approx(6.0)
    assert (out / "six.cot.txt").read_text().count("# window ") == len(rows)


def test_cli_quiet_has_no_bar(model_dir: Path, video6: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(video6), "--model", str(model_dir), "--steps", "1", "--window", "3",
                 "--planner", "none", "--quiet", "--out", str(tmp_path / "q")]) == 0
    captured = capsys.readouterr()
    assert "windows:" not in captured.err and "window/s" not in captured.err and captured.out == ""


@pytest.mark.parametrize("extra,msg", [
    (["--max-duration", "5"], "exceeds the maximum of 5 s for long videos"),
    (["--duration", "6.5"], "exceeds the maximum for this video"),
    (["--window", "0"], "--window must be a positive"),
    (["--overlap", "-1"], "--overlap must be >= 0"),
    (["--window", "2", "--overlap", "2"], "overlap"),
])
def test_cli_cap_is_one_line_exit_2_nothing_written(extra: list[str], msg: str, model_dir: Path, video6: Path,
                                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["generate", str(video6), "--model", str(model_dir), "--planner", "none", "--steps", "1",
                 "--quiet", "--out", str(out), *extra])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "note:" not in line]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("prismaudio: error:") and msg in lines[0], lines
    assert not out.exists()


def test_seam_mode_follows_the_network(video6: Path) -> None:
    plain = PrismAudioPipeline.from_preset("tiny", seed=0)  # no audio-context conditioning
    auto = generate_long(plain, video6, steps=1, planner=None, config=LongformConfig(window_s=2.0))
    forced = generate_long(plain, video6, steps=1, planner=None, config=LongformConfig(window_s=2.0, use_context=True))
    assert auto.seams == "crossfade" and forced.seams == "replace"
    w = forced.windows[1]
    assert torch.equal(forced.audio[:, : w.start], auto.audio[:, : w.start])  # the first window alone: same audio
    # in the overlap the crossfade mixes in the second window, the context keeps the first one's audio
    overlap = slice(w.start, w.start + w.keep - 320)
    assert not torch.equal(forced.audio[:, overlap], auto.audio[:, overlap])
