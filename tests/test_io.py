"""io.video and io.audio: exact frame sampling, error messages, remuxing, atomic writes, resampling."""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from prismaudio.errors import PrismAudioError
from prismaudio.io.audio import load_audio, peak_normalize, resample, save_wav
from prismaudio.io.video import mux_audio, probe_video, read_frames, read_frames_multi

FLASH = 25  # frame index of the white flash (t = 1.0 s at 25 fps)


def _gray(i: int) -> int:
    return 255 if i == FLASH else 20 + 3 * i  # every frame distinguishable, flash unmistakable


def _add_audio(c: av.container.OutputContainer, seconds: float, sr: int = 16000):
    a = c.add_stream("aac", rate=sr, layout="mono")
    frame = av.AudioFrame.from_ndarray(np.zeros((1, int(sr * seconds)), np.float32), format="fltp", layout="mono")
    frame.sample_rate, frame.pts = sr, 0
    return list(a.encode(frame)) + list(a.encode(None))


def make_video(path: Path, n: int = 50, w: int = 64, h: int = 64, fps: int = 25, audio: bool = False, image=None) -> Path:
    """H.264 (lossless qp 0) test clip; frame i is uniform gray `_gray(i)` unless `image` is given."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"qp": "0", "preset": "ultrafast"}
        apkts = _add_audio(c, n / fps) if audio else []
        for i in range(n):
            img = image if image is not None else np.full((h, w, 3), _gray(i), np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
        for p in apkts:
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    files = {
        "flash": make_video(d / "flash.mp4"),
        "flash_audio": make_video(d / "flash_audio.mp4", audio=True),
    }
    wide = np.zeros((64, 128, 3), np.uint8)
    wide[:, :32] = (255, 0, 0)
    wide[:, 32:96] = (0, 255, 0)
    wide[:, 96:] = (255, 0, 0)
    files["wide"] = make_video(d / "wide.mp4", n=5, w=128, image=wide)
    with av.open(str(d / "audio_only.m4a"), "w") as c:
        for p in _add_audio(c, 1.0):
            c.mux(p)
    files["audio_only"] = d / "audio_only.m4a"
    with av.open(str(d / "zero.mkv"), "w") as c:  # a video stream that never gets a frame
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for p in _add_audio(c, 0.5):
            c.mux(p)
    files["zero"] = d / "zero.mkv"
    (d / "empty.mp4").write_bytes(b"")
    files["empty"] = d / "empty.mp4"
    (d / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["random"] = d / "random.mp4"
    files["missing"] = d / "missing.mp4"
    files["dir"] = d
    return files


def brightness(frames: torch.Tensor) -> torch.Tensor:
    return frames.mean(dim=(1, 2, 3)) * 255


# ------------------------------------------------------------------------------------ video


def test_probe(media):
    info = probe_video(media["flash"])
    assert (info.width, info.height, info.num_frames, info.has_audio) == (64, 64, 50, False)
    assert info.duration == pytest.approx(2.0) and info.fps == pytest.approx(25.0)
    assert probe_video(media["flash_audio"]).has_audio


def test_frame_counts_and_flash_position(media):
    v8, v25 = read_frames_multi(media["flash"], [(8, 64, "floor"), (25, 32)])
    assert v8.shape == (16, 3, 64, 64) and v25.shape == (50, 3, 32, 32)
    assert v8.dtype == torch.float32 and 0.0 <= v8.min() and v8.max() <= 1.0
    assert int(brightness(v25).argmax()) == FLASH
    assert int(brightness(v8).argmax()) == 8  # t = 8/8 = 1.0 s = frame 25
    assert brightness(v8)[8] > 250 and brightness(v8)[[7, 9]].max() < 120


def test_each_target_shows_the_frame_on_screen(media):
    v8, v25 = read_frames_multi(media["flash"], [(8, 32, "floor"), (25, 32)])
    for k in range(16):  # t = k/8 shows frame floor(k * 25 / 8): the same decoded frame, bit-identical
        assert torch.equal(v8[k], v25[k * 25 // 8]), k
    ff8, = read_frames_multi(media["flash"], [(8, 32)])  # FFmpeg's fps filter: the last frame before (k + 1/2) / 8
    for k in range(16):
        assert torch.equal(ff8[k], v25[max(i for i in range(50) if math.floor(i * 8 / 25 + 0.5) <= k)]), k
    levels = brightness(v25)
    assert all(levels[i] < levels[i + 1] for i in range(FLASH - 1))  # in order, none skipped or doubled


def test_short_video_repeats_last_frame(media):
    v25, v8 = read_frames_multi(media["flash"], [(25, 16), (8, 16, "floor")], duration=3.0)
    assert v25.shape[0] == 75 and v8.shape[0] == 24
    assert all(torch.equal(v25[i], v25[49]) for i in range(49, 75))
    assert not torch.equal(v25[48], v25[49])
    assert torch.equal(v8[16], v25[49]) and all(torch.equal(v8[i], v8[16]) for i in range(16, 24))


def test_start_and_duration(media):
    x = read_frames(media["flash"], 25, 16, duration=0.4, start=1.0)
    assert x.shape[0] == 10 and int(brightness(x).argmax()) == 0
    assert read_frames(media["flash"], 25, 16, start=1.5).shape[0] == 12  # the rest of the video
    with pytest.raises(PrismAudioError, match="past the end"):
        read_frames(media["flash"], 25, 16, start=5.0)


def test_center_crop(media):
    x = read_frames(media["wide"], 8, 32, duration=0.5)
    assert x.shape == (4, 3, 32, 32)
    assert x[:, 1].mean() > 0.9 and x[:, 0].max() < 0.1  # only the green middle square survives
    small = read_frames(media["wide"], 8, 8, duration=0.5)  # 64 px > 4 x 8: swscale pre-shrink path
    assert small.shape == (4, 3, 8, 8) and small[:, 1].mean() > 0.9 and small[:, 0].max() < 0.1


@pytest.mark.parametrize("key", ["missing", "empty", "random", "audio_only", "zero", "dir"])
def test_video_errors(media, key):
    with pytest.raises(PrismAudioError) as e1:
        probe_video(media[key])
    with pytest.raises(PrismAudioError):
        read_frames(media[key], 8, 32)
    msg = str(e1.value)
    assert "\n" not in msg and len(msg) < 300
    assert {"missing": "not found", "empty": "empty", "random": "not a readable media file",
            "audio_only": "no video stream", "zero": "no decodable frames", "dir": "directory"}[key] in msg


def test_bad_sampling_arguments(media):
    for kwargs in ({"fps": 0, "size": 32}, {"fps": 8, "size": 0}, {"fps": 8, "size": 32, "duration": -1.0}):
        with pytest.raises(PrismAudioError):
            read_frames(media["flash"], **kwargs)


def _video_packets(path: Path) -> list[tuple[bytes, float]]:
    """(payload, pts in ms): containers differ in time base (mp4 1/12800, mkv 1/1000), not in time."""
    with av.open(str(path)) as c:
        return [(bytes(p), round(float(p.pts * p.time_base) * 1000, 3)) for p in c.demux(c.streams.video[0]) if p.size]


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_mux_copies_video_and_adds_stereo_aac(media, tmp_path, ext):
    sr = 16000
    t = torch.arange(2 * sr) / sr
    audio = torch.stack([0.5 * torch.sin(2 * math.pi * 440 * t), 0.3 * torch.sin(2 * math.pi * 660 * t)])
    out = tmp_path / f"out{ext}"
    mux_audio(media["flash_audio"], audio, sr, out)  # the input's own audio track must be dropped
    assert _video_packets(out) == _video_packets(media["flash_audio"])
    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac" and a.codec_context.channels == 2
        if a.duration is not None:  # mp4 stores it (edit list hides the encoder priming)
            assert abs(float(a.duration * a.time_base) - 2.0) <= 1024 / sr + 1e-6
        decoded = sum(f.samples for f in c.decode(a))  # priming skipped, last frame padded
        assert abs(decoded / sr - 2.0) <= 1024 / sr
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temp file left behind
    decoded, got_sr = load_audio(out)  # PyAV fallback path of load_audio
    assert got_sr == sr and decoded.shape[0] == 2 and abs(decoded.shape[1] - 2 * sr) <= 2048


def test_mux_resamples_rates_aac_cannot_store(media, tmp_path):
    mux_audio(media["flash"], torch.zeros(1, 12345), 12345, tmp_path / "odd.mp4")  # mono, odd rate
    with av.open(str(tmp_path / "odd.mp4")) as c:
        a = c.streams.audio[0]
        assert a.codec_context.sample_rate == 16000 and a.codec_context.channels == 2


def test_mux_failure_is_atomic(media, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"previous result")
    audio = torch.zeros(2, 16000)
    for bad in ("audio_only", "random", "missing"):
        with pytest.raises(PrismAudioError):
            mux_audio(media[bad], audio, 16000, out)
    with pytest.raises(PrismAudioError, match="extension"):
        mux_audio(media["flash"], audio, 16000, tmp_path / "out.xyz")
    with pytest.raises(PrismAudioError):
        mux_audio(media["flash"], torch.full((2, 100), float("nan")), 16000, out)
    assert out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]


# ------------------------------------------------------------------------------------ audio


def _peak_hz(x: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(x.double() * torch.hann_window(x.shape[-1], dtype=torch.float64)).abs()
    return float(spec.argmax()) * sr / x.shape[-1]


@pytest.mark.parametrize("sr_in,sr_out", [(44100, 16000), (16000, 44100), (48000, 16000), (22050, 16000), (44101, 16000)])
def test_resample_keeps_frequency_and_length(sr_in, sr_out):
    n = sr_in // 2 + 7
    x = torch.sin(2 * math.pi * 1000 * torch.arange(n, dtype=torch.float64) / sr_in).float()
    y = resample(torch.stack([x, x]), sr_in, sr_out)
    assert y.shape == (2, round(n * sr_out / sr_in)) and y.dtype == torch.float32
    assert _peak_hz(y[0], sr_out) == pytest.approx(1000, abs=sr_out / y.shape[-1])
    ideal = torch.sin(2 * math.pi * 1000 * torch.arange(y.shape[-1], dtype=torch.float64) / sr_out)
    assert (y[0].double() - ideal)[200:-200].abs().max() < 1e-3


def test_resample_antialiasing_and_shapes():
    sr = 44100
    x = torch.sin(2 * math.pi * 10000 * torch.arange(sr, dtype=torch.float64) / sr).float()  # above the 8 kHz Nyquist of 16 kHz
    y = resample(x, sr, 16000)
    assert y.abs()[200:-200].max() < 1e-3  # would alias to 6 kHz at full amplitude without filtering
    assert resample(torch.zeros(3, 2, 441), 44100, 16000).shape == (3, 2, 160)
    assert resample(torch.zeros(2, 0), 44100, 16000).shape == (2, 0)
    with pytest.raises(PrismAudioError):
        resample(x, 0, 16000)


def test_save_and_load_roundtrip(tmp_path):
    sr = 16000
    audio = 0.5 * torch.sin(2 * math.pi * 440 * torch.arange(sr) / sr).repeat(2, 1)
    save_wav(tmp_path / "a.wav", audio, sr)
    back, got = load_audio(tmp_path / "a.wav")
    assert got == sr and back.shape == (2, sr) and (back - audio).abs().max() < 1e-4
    save_wav(tmp_path / "f.wav", audio, sr, subtype="FLOAT")
    assert torch.equal(load_audio(tmp_path / "f.wav")[0], audio)
    save_wav(tmp_path / "loud.wav", audio * 4, sr)  # clipped, never wrapped around
    assert load_audio(tmp_path / "loud.wav")[0].max() > 0.99


def test_load_audio_channels_and_rate(tmp_path):
    sf.write(tmp_path / "mono.wav", np.linspace(-0.5, 0.5, 4410, dtype=np.float32), 44100, subtype="FLOAT")
    x, sr = load_audio(tmp_path / "mono.wav")
    assert sr == 44100 and x.shape == (2, 4410) and torch.equal(x[0], x[1])
    x, sr = load_audio(tmp_path / "mono.wav", sample_rate=16000)
    assert sr == 16000 and x.shape == (2, 1600)
    assert load_audio(tmp_path / "mono.wav", channels=1)[0].shape == (1, 4410)


def test_save_wav_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.wav"
    target.write_bytes(b"old")

    real_write_bytes = Path.write_bytes

    def broken_write(self, data):  # the disk fills half-way through the file
        real_write_bytes(self, b"RIFF-half-written")
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", broken_write)
    with pytest.raises(PrismAudioError, match="No space left on device"):
        save_wav(target, torch.zeros(2, 100), 16000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]


def test_audio_errors(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    for p in (tmp_path / "nope.wav", tmp_path / "empty.wav", tmp_path / "junk.wav", tmp_path):
        with pytest.raises(PrismAudioError):
            load_audio(p)
    for bad in (torch.full((2, 10), float("inf")), torch.zeros(2, 2, 2)):
        with pytest.raises(PrismAudioError):
            save_wav(tmp_path / "x.wav", bad, 16000)
    with pytest.raises(PrismAudioError):
        save_wav(tmp_path / "no_dir" / "x.wav", torch.zeros(2, 10), 16000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.wav", "junk.wav"]


def test_peak_normalize():
    x = torch.tensor([[0.1, -0.4], [0.2, 0.0]])
    assert peak_normalize(x, 0.8).abs().max() == pytest.approx(0.8)
    assert torch.equal(peak_normalize(torch.zeros(2, 5)), torch.zeros(2, 5))
    batch = peak_normalize(torch.stack([x, 2 * x]), 0.5)
    assert batch.abs().amax(dim=(1, 2)).tolist() == pytest.approx([0.5, 0.5])


# ------------------------------------------------------------------ issue 20: output faults, odd codecs
def _odd_video(path: Path, codec: str, fmt: str, pix: str, w: int = 64, h: int = 48, n: int = 10) -> Path:
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = w, h, pix
        for i in range(n):
            a = np.zeros((h, w, 3), np.uint8)
            a[:, (i * 5) % w] = 255
            f = av.VideoFrame.from_ndarray(a, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.mark.parametrize("name,codec,fmt,pix", [("a.webm", "libvpx", "webm", "yuv420p"),
                                                ("a.gif", "gif", "gif", "rgb8"),
                                                ("a.avi", "rawvideo", "avi", "bgr24"),
                                                ("odd.webm", "libvpx", "webm", "yuv420p")])
def test_mux_reencodes_what_an_mp4_cannot_hold(tmp_path, name, codec, fmt, pix):
    """Issue 20 item 4: VP8 / GIF / raw video used to fail in the mux (after the compute)."""
    from prismaudio.io.video import mux_audio, video_track_plan

    w, h = (63, 47) if name.startswith("odd") else (64, 48)
    src = _odd_video(tmp_path / name, codec, fmt, pix, w, h)
    assert video_track_plan(src, tmp_path / "o.mp4") in ("libx264", "mpeg4")
    assert video_track_plan(src, tmp_path / "o.mkv") is None  # Matroska holds anything as it is
    mux_audio(src, torch.zeros(2, 16000), 16000, tmp_path / "o.mp4")
    with av.open(str(tmp_path / "o.mp4")) as c:
        v = c.streams.video[0]
        assert v.codec_context.name in ("h264", "mpeg4") and len(c.streams.audio) == 1
        frames = list(c.decode(video=0))
    assert len(frames) == 10 and frames[0].width % 2 == 0 and frames[0].width >= w - 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_mux_copies_h264_unchanged(tmp_path):
    from prismaudio.io.video import video_track_plan

    src = _odd_video(tmp_path / "a.mp4", "libx264", "mp4", "yuv420p")
    assert video_track_plan(src, tmp_path / "o.mp4") is None


def test_truncated_but_decodable_video_warns(tmp_path):
    """Issue 20 item 10: the stream ends early with no decode error (threaded decoding); say so."""
    full = _odd_video(tmp_path / "full.mkv", "libx264", "matroska", "yuv420p", n=40)
    data = full.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="truncated or damaged"):
        frames = read_frames(cut, 10, 16)
    assert frames.shape[0] == 40 and torch.equal(frames[-1], frames[-2])  # still the official padding
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact file, even asked for more than it has, stays silent
        read_frames(full, 10, 16)
        read_frames(full, 10, 16, duration=6.0)


def test_staging_publishes_all_or_nothing(tmp_path):
    from prismaudio.io.files import Staging

    out = tmp_path / "new" / "out"
    with Staging(out) as st:
        st.path("a.wav").write_bytes(b"a")
        st.path("b.png").write_bytes(b"b")
        assert not out.exists() and st.dir.parent == tmp_path  # staged on the nearest existing folder
        written = st.publish()
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.png"] == [p.name for p in written]
    assert [p.name for p in tmp_path.iterdir()] == ["new"]
    with pytest.raises(RuntimeError):  # a failure half-way: the existing folder is as it was
        with Staging(out) as st:
            st.path("a.wav").write_bytes(b"new")
            assert st.dir.parent == out
            raise RuntimeError("disk full")
    assert sorted(p.name for p in out.iterdir()) == ["a.wav", "b.png"] and (out / "a.wav").read_bytes() == b"a"


def test_sweep_stale_removes_only_dead_writers(tmp_path):
    import subprocess
    import sys

    from prismaudio.io.files import STAGING_PREFIX, check_output_dir, sweep_stale

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f"{STAGING_PREFIX}{dead}-abcd1234").mkdir()
    (tmp_path / f".clip.{dead}.abcd_123.part.wav").write_bytes(b"x")
    live = [f"{STAGING_PREFIX}{os.getpid()}-abcd1234", f".clip.{os.getpid()}.abcd_123.part.wav"]
    (tmp_path / live[0]).mkdir()
    (tmp_path / live[1]).write_bytes(b"x")
    (tmp_path / "clip.wav").write_bytes(b"x")
    removed = sweep_stale(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(live + ["clip.wav"])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(PrismAudioError, match="not a directory"):
        check_output_dir(tmp_path / "afile")
    with pytest.raises(PrismAudioError, match="is a file"):
        check_output_dir(tmp_path / "afile" / "sub")


def test_mux_trims_the_video_to_shorter_audio(tmp_path):
    """Issue 19 (outputs): `--duration` below the video's left an MP4 whose picture outlasted its sound."""
    src = _odd_video(tmp_path / "a.mp4", "libx264", "mp4", "yuv420p", n=30)  # 3 s at 10 fps
    mux_audio(src, torch.zeros(2, 16000), 16000, tmp_path / "short.mp4")  # 1 s of audio
    mux_audio(src, torch.zeros(2, 48000), 16000, tmp_path / "full.mp4")  # as long as the video: copied
    with av.open(str(tmp_path / "short.mp4")) as c:
        assert len(list(c.decode(video=0))) == 10
    with av.open(str(tmp_path / "full.mp4")) as c, av.open(str(src)) as s:
        assert [bytes(p) for p in c.demux(video=0)] == [bytes(p) for p in s.demux(video=0)]


def test_spectrogram_marks_the_cots_event_times(tmp_path):
    """Issue 19 (outputs): a dB colour bar, and the Temporal part's times drawn on the panels."""
    from prismaudio.io.spectrogram import event_times, save_spectrogram_png

    text = "The ball hits the floor at 0.84 s, again at 1.5 s and 2 seconds; version 2.0 of 10.5 s clip."
    assert event_times(text) == [0.84, 1.5, 2.0, 10.5]
    assert event_times(text, duration=2.0) == [0.84, 1.5, 2.0]
    assert event_times("") == [] and event_times("no times here, 3 balls") == []
    audio = torch.randn(2, 32000) * 0.1
    save_spectrogram_png(tmp_path / "plain.png", audio, 16000)
    save_spectrogram_png(tmp_path / "marked.png", audio, 16000, events=[0.5, 1.5])
    from PIL import Image

    plain = np.asarray(Image.open(tmp_path / "plain.png").convert("RGB")).astype(int)
    marked = np.asarray(Image.open(tmp_path / "marked.png").convert("RGB")).astype(int)
    assert plain.shape == marked.shape and plain.shape[1] > 650  # room for the colour bar
    cyan = (marked[..., 0] < 80) & (marked[..., 1] > 170) & (marked[..., 2] > 170)
    assert cyan.sum() > 50 and ((plain[..., 0] < 80) & (plain[..., 1] > 170) & (plain[..., 2] > 170)).sum() == 0
