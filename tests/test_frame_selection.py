"""Frame selection equals FFmpeg's `fps` filter (what the official extraction runs through torio)
at 4 and 25 fps, on constant-rate files of the common rates and on a variable-frame-rate file.

Ground truth comes from FFmpeg itself, through PyAV's filter graph (`buffer -> fps=R -> sink`);
each test frame carries its own index in its pixels (lossless H.264), so the selected frames can be
named exactly."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from prismaudio.io.video import FrameSpec, num_samples, probe_video, read_frames_multi

W, H = 48, 32


def _write(path: Path, rate: Fraction, n: int, vfr: bool = False) -> Path:
    """`n` frames whose pixels encode their index (left half: i % 64, right half: i // 64, x4)."""
    steps = [Fraction(1, 30), Fraction(1, 15), Fraction(1, 60), Fraction(1, 24)]
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate, options={"crf": "0", "preset": "ultrafast"})
        s.width, s.height, s.pix_fmt = W, H, "yuv444p"
        tb = Fraction(1, 90000)
        s.codec_context.time_base = tb
        t = Fraction(0)
        for i in range(n):
            img = np.zeros((H, W, 3), np.uint8)
            img[:, : W // 2] = (i % 64) * 4
            img[:, W // 2 :] = (i // 64) * 4
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = round(t / tb), tb
            t += steps[int(rng.integers(len(steps)))] if vfr else 1 / rate
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def _index(rgb: np.ndarray) -> int:
    """[H, W, 3] uint8 -> the frame index written by `_write`."""
    a = rgb.astype(np.float64)
    return int(round(a[:, : W // 2].mean() / 4)) + 64 * int(round(a[:, W // 2 :].mean() / 4))


def _ffmpeg_fps(path: Path, rate: int) -> list[int]:
    """The frame indices FFmpeg's fps filter outputs for `path` at `rate`."""
    out: list[int] = []
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        g = av.filter.Graph()
        src, fps, sink = g.add_buffer(template=s), g.add("fps", f"fps={rate}"), g.add("buffersink")
        src.link_to(fps)
        fps.link_to(sink)
        g.configure()

        def drain() -> None:
            while True:
                try:
                    out.append(_index(g.pull().to_ndarray(format="rgb24")))
                except (av.BlockingIOError, av.EOFError):
                    return

        for frame in c.decode(s):
            g.push(frame)
            drain()
        g.push(None)
        drain()
    return out


FILES = {  # name: (rate, frames, variable frame rate)
    "23.976": (Fraction(24000, 1001), 70, False),
    "29.97": (Fraction(30000, 1001), 90, False),
    "30": (Fraction(30), 75, False),
    "50": (Fraction(50), 120, False),
    "60": (Fraction(60), 150, False),
    "vfr": (Fraction(30), 80, True),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fps")
    out = {}
    for name, (rate, n, vfr) in FILES.items():
        out[name] = _write(d / f"{name.replace('.', '_')}.mp4", rate, n, vfr)
        with av.open(str(out[name])) as c:  # the index code survives the round trip
            assert [_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)] == list(range(n))
    return out


@pytest.mark.parametrize("name", list(FILES))
def test_selection_equals_ffmpeg_fps_filter_at_4_and_25(videos: dict[str, Path], name: str) -> None:
    path = videos[name]
    duration = probe_video(path).duration
    specs = [FrameSpec(4.0, None), FrameSpec(25.0, None)]
    for spec, frames in zip(specs, read_frames_multi(path, specs, duration=duration)):
        ours = [_index(f.permute(1, 2, 0).numpy()) for f in frames]
        ref = _ffmpeg_fps(path, int(spec.fps))
        assert frames.dtype == torch.uint8 and tuple(frames.shape[1:]) == (3, H, W)
        assert len(ours) == num_samples(spec.fps, duration)  # the official int(R * d)
        k = min(len(ours), len(ref))
        assert k >= len(ours) - 1, (len(ours), len(ref))
        assert ours[:k] == ref[:k], (name, spec.fps)
        assert all(i == ref[-1] for i in ours[k:])  # past FFmpeg's end: the last frame repeated


def test_floor_rule_differs_from_ffmpeg_where_it_should(videos: dict[str, Path]) -> None:
    """The light encoders' legacy rule (latest frame at or before k / R) is a different selection:
    at 4 fps from 29.97 fps, FFmpeg takes frame 3 for k = 0 (t < 1/8 s), the floor rule frame 0."""
    ff, fl = read_frames_multi(videos["29.97"], [FrameSpec(4.0, None), FrameSpec(4.0, None, "floor")])
    assert _index(ff[0].permute(1, 2, 0).numpy()) == 3 and _index(fl[0].permute(1, 2, 0).numpy()) == 0
    assert [_index(f.permute(1, 2, 0).numpy()) for f in fl[:4]] == [0, 7, 14, 22]  # floor(k / 4 * 29.97)


def test_short_video_pads_with_its_last_frame(videos: dict[str, Path]) -> None:
    (frames,) = read_frames_multi(videos["30"], [FrameSpec(25.0, None)], duration=4.0)
    ids = [_index(f.permute(1, 2, 0).numpy()) for f in frames]
    assert len(ids) == 100 and ids[-1] == 74 and ids[-30:] == [74] * 30


def test_whole_seconds_duration_rule_is_the_official_truncation(videos: dict[str, Path]) -> None:
    """demo.sh truncates ffprobe's duration to whole seconds; ours keeps it exact by default."""
    from prismaudio.pipeline import PrismAudioPipeline

    pipe = PrismAudioPipeline.from_preset("tiny")
    d = probe_video(videos["29.97"]).duration  # 90 frames at 29.97 fps: 3.003 s
    assert d > 3.0 and pipe.clip_duration(d) == d and pipe.extract_features(videos["29.97"]).duration == d
    pipe.config.sampling.duration_rule = "whole_seconds"
    assert pipe.clip_duration(d) == 3.0 and pipe.extract_features(videos["29.97"]).duration == 3.0
    with pytest.raises(Exception, match="truncates this 0.500 s video to 0 s"):
        pipe.clip_duration(0.5)
