"""Video decoding, frame-rate resampling and muxing a generated track back into the video (PyAV).

Frames are sampled like the official feature extractors: T = int(fps * duration) frames per rate,
the last frame repeated when the stream is shorter than the request. Which frame stands at output
k is a `FrameSpec`'s `rule`:

* "ffmpeg" (default): exactly FFmpeg's `fps` filter, which the official pipeline runs (torio's
  `add_basic_video_stream(frame_rate=R)`): output k shows the latest frame whose timestamp, in
  units of 1/R and rounded to the nearest integer (halves away from zero, in exact rational
  arithmetic as FFmpeg's `av_rescale_q_rnd`), is <= k, i.e. the last frame before (k + 1/2) / R.
  Checked against PyAV's own FFmpeg filter graph on 23.976, 29.97, 30, 50, 60 fps and
  variable-frame-rate files (tests/test_frame_selection.py).
* "floor": the latest frame whose timestamp is <= k / R, the rule the shipped `mini` model's light
  encoders were trained with (kept so its results stay valid until it is retrained).

A spec's `size` is a square side (centre crop + antialiased bilinear resize, float32 in [0, 1],
for the light encoders) or None: the frame at its native resolution as uint8 RGB, for encoders
that preprocess like their upstream code (VideoPrism, Synchformer). Several rates come from ONE
decode pass, since decoding dominates the cost. Every user-facing failure raises `PrismAudioError`
with one sentence.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple, Sequence

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.video.reformatter import VideoReformatter
from torch import Tensor

from ..errors import PrismAudioError
from .files import atomic_path, check_input_file
from .audio import resample

PathLike = str | os.PathLike

# A frame counts as "shown at t" if its timestamp is <= t + this tolerance: container time bases
# (e.g. 1/12800, 1001/30000) cannot represent every k/fps exactly.
_TIME_EPS = 1e-4
# Frames whose short side exceeds this multiple of the largest requested size are pre-shrunk.
_PRESHRINK = 4
_AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)


RULES = ("ffmpeg", "floor")


class FrameSpec(NamedTuple):
    """One frame request: rate, square side (None = native uint8 frames) and selection rule."""

    fps: float
    size: int | None
    rule: str = "ffmpeg"


def as_frame_spec(spec: Sequence) -> FrameSpec:
    """A `FrameSpec` from a spec or a plain (fps, size[, rule]) tuple, validated."""
    fs = FrameSpec(*spec)
    if not (isinstance(fs.fps, (int, float)) and fs.fps > 0 and math.isfinite(fs.fps)):
        raise PrismAudioError(f"frame rate must be a positive number, got {fs.fps}")
    if fs.size is not None and (int(fs.size) != fs.size or fs.size < 1):
        raise PrismAudioError(f"frame size must be a positive integer or None (native), got {fs.size}")
    if fs.rule not in RULES:
        raise PrismAudioError(f"frame selection rule must be one of {', '.join(RULES)}, got {fs.rule!r}")
    return FrameSpec(float(fs.fps), None if fs.size is None else int(fs.size), fs.rule)


def ffmpeg_round(x: Fraction) -> int:
    """Round to the nearest integer, halves away from zero (FFmpeg's AV_ROUND_NEAR_INF)."""
    return math.floor(x + Fraction(1, 2)) if x >= 0 else -math.floor(-x + Fraction(1, 2))


@dataclass
class VideoInfo:
    """What `probe_video` learns from the container (duration in seconds, stream fps)."""

    duration: float
    fps: float
    width: int
    height: int
    num_frames: int
    has_audio: bool


def _open(path: PathLike) -> av.container.InputContainer:
    """Open a media file for reading, turning every failure into one clear sentence."""
    p = check_input_file(path, "video")
    try:
        return av.open(str(p), mode="r")
    except PermissionError:
        raise PrismAudioError(f"cannot read video file (permission denied): {p}") from None
    except av.InvalidDataError:
        raise PrismAudioError(f"not a readable media file (corrupt or unsupported format): {p}") from None
    except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as e:
        raise PrismAudioError(f"cannot open media file {p}: {e}") from None


def _video_stream(container: av.container.InputContainer, path: PathLike) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise PrismAudioError(f"file has no video stream (streams: {', '.join(kinds)}): {path}")
    return container.streams.video[0]


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and float(rate) > 0:
            return float(rate)
    return 25.0  # unknown rate: the common default; only used for estimates, never for sampling


def _stream_start(stream: av.video.stream.VideoStream) -> float:
    if stream.start_time is not None and stream.time_base is not None:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _metadata_duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _packet_duration(path: PathLike) -> float:
    """Duration from the packet timestamps (demux only, no decoding) when metadata lacks it."""
    with _open(path) as c:
        s = _video_stream(c, path)
        first, end = None, 0.0
        for pkt in c.demux(s):
            if pkt.pts is None or pkt.time_base is None:
                continue
            t = float(pkt.pts * pkt.time_base)
            first = t if first is None else min(first, t)
            end = max(end, t + float((pkt.duration or 0) * pkt.time_base))
        return 0.0 if first is None else end - first


def probe_video(path: PathLike) -> VideoInfo:
    """Read the container metadata and decode one frame, so a file that passes is really usable."""
    with _open(path) as c:
        stream = _video_stream(c, path)
        fps = _stream_fps(stream)
        duration = _metadata_duration(c, stream)
        try:
            frame = next(c.decode(stream), None)
        except (av.FFmpegError, OSError) as e:
            raise PrismAudioError(f"cannot decode video stream: {path} ({e})") from None
        if frame is None:
            raise PrismAudioError(f"video has no decodable frames (zero-length video): {path}")
        has_audio = bool(c.streams.audio)
        n = int(stream.frames or 0)
        width, height = frame.width, frame.height
    if duration is None:
        duration = _packet_duration(path)
    if n <= 0:
        n = max(1, round(duration * fps))
    return VideoInfo(duration=duration, fps=fps, width=width, height=height, num_frames=n, has_audio=has_audio)


def num_samples(fps: float, duration: float) -> int:
    """Frames requested for `duration` s at `fps` (official: int(fps * duration)); at least one.

    The tiny epsilon keeps e.g. 25 * 1.9999999 from losing a frame to float rounding.
    """
    return max(1, int(fps * duration + 1e-6))


def _convert(frame: av.VideoFrame, sizes: Sequence[int | None], fmt: VideoReformatter) -> dict[int | None, Tensor]:
    """The frame for every requested size: None -> native uint8 [3, H, W]; an int -> square."""
    out: dict[int | None, Tensor] = {}
    squares = [s for s in sizes if s is not None]
    if None in sizes:
        native = torch.from_numpy(fmt.reformat(frame, format="rgb24").to_ndarray()).permute(2, 0, 1).contiguous()
        out[None] = native
    if squares:
        out.update(_to_square(frame, squares, fmt))
    return out


def _to_square(frame: av.VideoFrame, sizes: Sequence[int], fmt: VideoReformatter) -> dict[int | None, Tensor]:
    """Center-crop to a square and resize (bilinear, antialiased) to each requested size.

    Frames much larger than needed (HD video for 64 px encoders) are first shrunk by swscale with
    an area filter while converting to RGB: one pass instead of a full-size RGB copy, ~5x faster.
    `fmt` is shared by all frames of a read, so swscale's context is built once, not per frame.
    """
    side = min(frame.width, frame.height)
    if side > _PRESHRINK * max(sizes):
        scale = _PRESHRINK * max(sizes) / side
        w, h = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
        rgb = fmt.reformat(frame, format="rgb24", width=w, height=h, interpolation="AREA").to_ndarray()
    else:
        rgb = fmt.reformat(frame, format="rgb24").to_ndarray()
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = torch.from_numpy(rgb).permute(2, 0, 1)[:, top : top + side, left : left + side].unsqueeze(0).float()
    out: dict[int | None, Tensor] = {}
    for size in sizes:
        y = x if size == side else F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[size] = y[0].div(255.0).clamp_(0.0, 1.0)
    return out


class _Sampler:
    """Collects the frame that stands at each output index k = 0..count-1 for one `FrameSpec`."""

    def __init__(self, spec: FrameSpec, count: int):
        self.spec, self.count = spec, count
        self.rate = Fraction(spec.fps).limit_denominator(1_000_000)
        self.frames: list[Tensor] = []

    @property
    def done(self) -> bool:
        return len(self.frames) >= self.count

    def first_index(self, t: Fraction) -> int:
        """The first output index a frame at relative time `t` (seconds, exact) stands at."""
        if self.spec.rule == "ffmpeg":
            return ffmpeg_round(t * self.rate)
        return math.ceil(float(t * self.rate) - _TIME_EPS * float(self.rate))

    def take_until(self, t_next: Fraction, shown: Tensor) -> None:
        """`shown` stands until the next frame (at `t_next`) takes over: assign it to the outputs before."""
        stop = min(self.count, self.first_index(t_next))
        while len(self.frames) < stop:
            self.frames.append(shown)

    def wants(self, t_next: Fraction) -> bool:
        return not self.done and len(self.frames) < self.first_index(t_next)

    def fill(self, last: Tensor) -> None:
        """Stream ended: repeat the last frame for the remaining outputs (official behaviour)."""
        while not self.done:
            self.frames.append(last)


def _frame_time(frame: av.VideoFrame, index: int, stream_fps: float) -> Fraction:
    """A frame's presentation time in seconds, exact when the container gives a timestamp."""
    if frame.pts is not None and frame.time_base is not None:
        return Fraction(frame.pts) * Fraction(frame.time_base)
    return Fraction(index) / Fraction(stream_fps).limit_denominator(1_000_000)


def read_frames_multi(
    path: PathLike, specs: Sequence[FrameSpec | tuple], duration: float | None = None, start: float = 0.0
) -> list[Tensor]:
    """Decode once and return one tensor per `FrameSpec` (or (fps, size[, rule]) tuple):
    [T_i, 3, size_i, size_i] float32 in [0, 1], or [T_i, 3, H, W] uint8 for `size` None.

    T_i = int(fps_i * duration) (at least 1); `duration` defaults to the rest of the video after
    `start`. Times are relative to the stream start + `start`; which frame stands at output k is
    the spec's rule (module docstring); outputs past the end of the stream repeat the last decoded
    frame. Decoding stops as soon as every request is filled.
    """
    if not specs:
        return []
    _check_window(start, duration)
    with _open(path) as c:
        stream = _video_stream(c, path)
        total = _metadata_duration(c, stream)
        if total is None and (duration is None or start > 0):
            total = _packet_duration(path)
        frames, _ = _decode_window(c, stream, path, [as_frame_spec(sp) for sp in specs], start, duration, total,
                                   seek=start > 0)
        return frames


def _check_window(start: float, duration: float | None) -> None:
    if start < 0 or not math.isfinite(start):
        raise PrismAudioError(f"start time must be >= 0 seconds, got {start}")
    if duration is not None and not (duration > 0 and math.isfinite(duration)):
        raise PrismAudioError(f"duration must be a positive number of seconds, got {duration}")


def _decode_window(
    c: av.container.InputContainer, stream: av.video.stream.VideoStream, path: PathLike, reqs: list[FrameSpec],
    start: float, duration: float | None, total: float | None, seek: bool,
) -> tuple[list[Tensor], int]:
    """`read_frames_multi` on an open container: (one tensor per spec, frames decoded). `seek`
    moves to the keyframe at or before `start` first (needed whenever the container was read before)."""
    if start > 0 and total is not None and start >= total:
        raise PrismAudioError(f"start time {start:.3f} s is past the end of the video ({total:.3f} s): {path}")
    if duration is None:
        duration = total - start
    samplers = [_Sampler(sp, num_samples(sp.fps, duration)) for sp in reqs]
    sizes = sorted({sp.size for sp in reqs}, key=lambda v: -1 if v is None else v)
    origin = Fraction(stream.start_time) * Fraction(stream.time_base) if (
        stream.start_time is not None and stream.time_base is not None) else Fraction(0)
    offset = origin + Fraction(start).limit_denominator(1_000_000_000)
    stream_fps = _stream_fps(stream)
    if stream.thread_type != "AUTO" and not stream.codec_context.is_open:
        stream.thread_type = "AUTO"
    if seek and stream.time_base is not None:
        try:  # land on the keyframe at or before `start`; earlier frames are skipped below
            c.seek(int((origin + start) / stream.time_base), stream=stream, backward=True, any_frame=False)
        except av.FFmpegError:
            pass  # unseekable input: decode from the beginning instead
    pending: av.VideoFrame | None = None  # the frame standing now (converted only if needed)
    cache: tuple[av.VideoFrame | None, dict[int | None, Tensor]] = (None, {})
    fmt = VideoReformatter()
    index = 0
    t_pending = Fraction(0)
    warned = False
    try:
        for frame in c.decode(stream):
            t_rel = _frame_time(frame, index, stream_fps) - offset
            index += 1
            if pending is None:  # the first frame stands in for every earlier output
                pending, t_pending = frame, t_rel
                continue
            if any(s.wants(t_rel) for s in samplers):
                if cache[0] is not pending:
                    cache = (pending, _convert(pending, sizes, fmt))
                for s in samplers:
                    s.take_until(t_rel, cache[1][s.spec.size])
            pending, t_pending = frame, t_rel
            if all(s.done for s in samplers):
                break
    except (av.FFmpegError, OSError) as e:
        if index == 0:
            raise PrismAudioError(f"cannot decode video stream: {path} ({e})") from None
        warnings.warn(f"video decoding stopped early ({e}); repeating the last good frame: {path}", stacklevel=2)
        warned = True
    if pending is None:
        if index:
            raise PrismAudioError(f"no video frames at or after {start:.3f} s: {path}")
        raise PrismAudioError(f"video has no decodable frames (zero-length video): {path}")
    if not all(s.done for s in samplers):
        # Threaded decoding swallows a truncated file's errors: the stream just ends early. Its
        # last frame standing in for the rest is only silent when the file says it ends there.
        end = float(t_pending + offset - origin) + 1.0 / stream_fps  # where the decoded frames stop
        stated = _metadata_duration(c, stream)
        if not warned and stated is not None and end + 1.5 / stream_fps < min(stated, start + duration):
            warnings.warn(f"the video's frames end at {end:.2f} s but the file says {stated:.2f} s (truncated "
                          f"or damaged?); repeating its last frame for the rest: {path}", stacklevel=2)
        if cache[0] is not pending:
            cache = (pending, _convert(pending, sizes, fmt))
        for s in samplers:
            s.fill(cache[1][s.spec.size])
    return [torch.stack(s.frames) for s in samplers], index


def read_frames(
    path: PathLike, fps: float, size: int, duration: float | None = None, start: float = 0.0
) -> Tensor:
    """[T, 3, size, size] float32 frames in [0, 1] at `fps`; see `read_frames_multi`."""
    return read_frames_multi(path, [(fps, size)], duration=duration, start=start)[0]


class FrameWindows:
    """Streams a long video window by window: `read(start, duration)` returns what
    `read_frames_multi(path, specs, duration, start)` would, from ONE open container.

    Why: a 10-minute video cannot be decoded into memory at once, and reopening + re-probing the
    file per window repeats the container scan. Each read seeks to the keyframe at or before its
    start and decodes only up to the window's end, so memory holds one window's frames and the
    work per window is the window plus at most one GOP. `frames_decoded` counts decoded frames
    (all reads), `last_decoded` those of the latest read, so callers can check the bound.
    """

    def __init__(self, path: PathLike, specs: Sequence[FrameSpec | tuple]):
        if not specs:
            raise PrismAudioError("FrameWindows needs at least one frame spec")
        self.path = path
        self.specs = [as_frame_spec(sp) for sp in specs]
        self._c = _open(path)
        try:
            self._stream = _video_stream(self._c, path)
            total = _metadata_duration(self._c, self._stream)
            self.duration: float = _packet_duration(path) if total is None else total
        except BaseException:
            self._c.close()
            raise
        self._used = False
        self.frames_decoded = 0
        self.last_decoded = 0

    def read(self, start: float, duration: float) -> list[Tensor]:
        """One tensor per spec for the window [start, start + duration) (see `read_frames_multi`)."""
        _check_window(start, duration)
        frames, n = _decode_window(self._c, self._stream, self.path, self.specs, start, duration, self.duration,
                                   seek=self._used or start > 0)
        self._used = True
        self.frames_decoded += n
        self.last_decoded = n
        return frames

    def close(self) -> None:
        self._c.close()

    def __enter__(self) -> "FrameWindows":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_clip(src: PathLike, out: PathLike, start: float, duration: float) -> Path:
    """The picture of `src` in [start, start + duration) as a new video file (re-encoded H.264 /
    MPEG-4 at the stream's rate, no audio), written atomically: for planners that only read files
    (a VLM planning one window of a long video). The frame standing at `start` opens the clip."""
    _check_window(start, duration)
    fmt = _muxer_for(Path(out))
    encoder = next((e for e in _REENCODERS if e in av.codecs_available), None)
    if encoder is None:
        raise PrismAudioError("this FFmpeg has no H.264 / MPEG-4 encoder to cut a clip of the video")
    with atomic_path(Path(out)) as tmp, _open(src) as c:
        vin = _video_stream(c, src)
        fps = Fraction(_stream_fps(vin)).limit_denominator(1001)
        width = max(2, vin.codec_context.width - vin.codec_context.width % 2)
        height = max(2, vin.codec_context.height - vin.codec_context.height % 2)
        origin = _stream_start(vin)
        if start > 0 and vin.time_base is not None:
            try:
                c.seek(int((origin + start) / vin.time_base), stream=vin, backward=True, any_frame=False)
            except av.FFmpegError:
                pass
        with av.open(tmp, mode="w", format=fmt) as dst:
            vout = dst.add_stream(encoder, rate=fps)
            vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
            vout.codec_context.time_base = 1 / fps
            vout.codec_context.thread_count = 1
            n, standing = 0, None
            for i, frame in enumerate(c.decode(vin)):
                t = (float(frame.pts * frame.time_base) - origin) if frame.pts is not None and frame.time_base else i / float(fps)
                if t <= start + _TIME_EPS:
                    standing = frame  # the latest frame at or before `start`
                    continue
                if t >= start + duration - _TIME_EPS:
                    break
                for f in ([standing] if standing is not None else []) + [frame]:
                    img = f.reformat(width=width, height=height, format="yuv420p")
                    img.pts, img.time_base = n, vout.codec_context.time_base
                    n += 1
                    for pkt in vout.encode(img):
                        dst.mux(pkt)
                standing = None
            if standing is not None:  # the window holds a single frame
                img = standing.reformat(width=width, height=height, format="yuv420p")
                img.pts, img.time_base = n, vout.codec_context.time_base
                n += 1
                for pkt in vout.encode(img):
                    dst.mux(pkt)
            if n == 0:
                raise PrismAudioError(f"no video frames in {start:.3f}-{start + duration:.3f} s: {src}")
            for pkt in vout.encode(None):
                dst.mux(pkt)
    return Path(out)


def _encode_aac(container: av.container.OutputContainer, audio: Tensor, sample_rate: int, start_s: float) -> list:
    """Encode [2, S] float audio to AAC packets (stereo, fltp), starting at `start_s` on the timeline."""
    stream = container.add_stream("aac", rate=sample_rate, layout="stereo")
    stream.bit_rate = 192_000
    data = audio.detach().to("cpu", torch.float32).clamp(-1.0, 1.0).numpy()
    offset = round(start_s * sample_rate)
    packets = []
    chunk = 1024 * 16
    for i in range(0, data.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[:, i : i + chunk]), format="fltp", layout="stereo")
        frame.sample_rate = sample_rate
        frame.pts = offset + i
        packets.extend(stream.encode(frame))
    packets.extend(stream.encode(None))
    return packets


# Video codecs an MP4 / MOV carries as they are; anything else (VP8, GIF, raw, ...) is re-encoded.
_MP4_VIDEO_CODECS = frozenset({"h264", "hevc", "mpeg4", "av1", "vp9", "mpeg1video", "mpeg2video"})
_REENCODERS = ("libx264", "mpeg4")  # preferred first; both are in PyAV's bundled FFmpeg


def video_track_plan(video_path: PathLike, out_path: PathLike) -> str | None:
    """How `mux_audio` will write the video track of `video_path` into `out_path`: None = packets
    copied, else the name of the encoder that re-encodes it (the codec cannot go into that
    container). Cheap (no decoding), so callers decide it before any compute."""
    fmt = _muxer_for(Path(out_path))
    with _open(video_path) as src:
        name = _video_stream(src, video_path).codec_context.name
    if fmt == "matroska" or name in _MP4_VIDEO_CODECS:
        return None
    for enc in _REENCODERS:
        if enc in av.codecs_available:
            return enc
    raise PrismAudioError(f"the {name} video of {video_path} cannot go into {Path(out_path).suffix} and this "
                          "FFmpeg has no H.264 / MPEG-4 encoder to re-encode it; use an .mkv output")


def mux_audio(video_path: PathLike, audio: Tensor, sample_rate: int, out_path: PathLike,
              second: Tensor | None = None) -> None:
    """Write `out_path` = the input's video stream + `audio` as AAC.

    The video packets are copied when the container can hold their codec, else (WebM/VP8, GIF,
    raw AVI into an MP4) the track is re-encoded (`video_track_plan`: H.264, yuv420p, the frame
    timestamps kept, even dimensions). Audio shorter than the video by more than a frame (a
    `--duration` below the video's) trims the video to it: packets cannot be cut between
    keyframes, so the track is then re-encoded up to the audio's end. Existing audio tracks are dropped. The audio starts with
    the video stream; a rate AAC cannot store is resampled to the next AAC rate up. The file is
    written to a temporary name beside `out_path` and renamed, so readers never see a half file.
    `second` ([2, S] at the same rate, e.g. the original soundtrack) becomes a second AAC track.
    """
    if not isinstance(audio, Tensor) or audio.ndim != 2 or audio.shape[0] not in (1, 2) or audio.shape[1] == 0:
        shape = tuple(audio.shape) if isinstance(audio, Tensor) else type(audio).__name__
        raise PrismAudioError(f"audio to mux must be a [2, S] (or [1, S]) tensor with S > 0, got {shape}")
    if not torch.isfinite(audio).all():
        raise PrismAudioError("audio to mux contains NaN or infinite samples")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise PrismAudioError(f"sample rate must be a positive integer, got {sample_rate}")
    if audio.shape[0] == 1:
        audio = audio.expand(2, -1)
    if second is not None and (second.ndim != 2 or second.shape[0] != 2 or not torch.isfinite(second).all()):
        raise PrismAudioError("the second audio track must be a finite [2, S] tensor")
    sample_rate = int(sample_rate)
    if sample_rate not in _AAC_RATES:  # AAC has a fixed rate table: go to the next one up
        target = min((r for r in _AAC_RATES if r >= sample_rate), default=max(_AAC_RATES))
        audio = resample(audio.float(), sample_rate, target)
        second = resample(second.float(), sample_rate, target) if second is not None else None
        sample_rate = target
    fmt = _muxer_for(Path(out_path))
    encoder = video_track_plan(video_path, out_path)
    out = Path(out_path)
    end = audio.shape[1] / sample_rate
    with atomic_path(out) as tmp, _open(video_path) as src:
        vin = _video_stream(src, video_path)
        stated = _metadata_duration(src, vin)
        trim = stated is not None and end < stated - 1.0 / _stream_fps(vin)
        if trim and encoder is None:
            encoder = next((e for e in _REENCODERS if e in av.codecs_available), None)
        try:
            with av.open(tmp, mode="w", format=fmt) as dst:
                if encoder is None:
                    vout = dst.add_stream_from_template(vin)
                    vpkts = _copied_packets(src, vin, vout)
                else:
                    vout, vpkts = _reencoded_packets(src, vin, dst, encoder, end if trim else None)
                apkts = _encode_aac(dst, audio, sample_rate, _stream_start(vin))
                if second is not None:  # one time-ordered list of both tracks' packets (stable: first wins ties)
                    more = _encode_aac(dst, second, sample_rate, _stream_start(vin))
                    apkts = sorted(apkts + more, key=lambda p: float(p.pts * p.time_base) if p.pts is not None else 0.0)
                _interleave(vpkts, apkts, dst)
        except av.FFmpegError as e:
            if isinstance(e, OSError) and e.errno is not None and e.errno in _WRITE_ERRNOS:
                raise OSError(e.errno, os.strerror(e.errno), str(out)) from None
            raise PrismAudioError(
                f"cannot write {out} ({vin.codec_context.name} video + AAC {sample_rate} Hz audio): {e}"
            ) from None


_WRITE_ERRNOS = {28, 27, 30, 122, 5, 13}  # ENOSPC, EFBIG, EROFS, EDQUOT, EIO, EACCES: the disk, not the input
_MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def _muxer_for(out: Path) -> str:
    """The container format, from the extension (the temp file's name cannot be trusted for it)."""
    fmt = _MUXERS.get(out.suffix.lower())
    if fmt is None:
        raise PrismAudioError(f"unsupported output video extension {out.suffix!r} (use .mp4, .mov or .mkv)")
    return fmt


def _copied_packets(src, vin, vout):
    for pkt in src.demux(vin):
        if pkt.dts is None and pkt.pts is None:  # the demuxer's end-of-stream flush packet
            continue
        pkt.stream = vout
        yield pkt


def _reencoded_packets(src, vin, dst, encoder: str, end: float | None = None):
    """Decode the input track and encode it with `encoder` (yuv420p, even size, the input's frame
    times, single-threaded so the bytes are deterministic); frames from `end` s on are dropped."""
    fps = Fraction(_stream_fps(vin)).limit_denominator(1001)
    width = max(2, vin.codec_context.width - vin.codec_context.width % 2)
    height = max(2, vin.codec_context.height - vin.codec_context.height % 2)
    vout = dst.add_stream(encoder, rate=fps)
    vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
    tb = vin.time_base if vin.time_base is not None else Fraction(1, 1000)
    vout.codec_context.time_base = Fraction(tb.numerator, tb.denominator)
    vout.codec_context.thread_count = 1
    if encoder == "libx264":
        vout.options = {"preset": "veryfast", "crf": "18", "threads": "1"}
    else:
        vout.codec_context.bit_rate = 4_000_000
    stream_fps = _stream_fps(vin)
    origin = vin.start_time or 0

    def packets():
        last = None
        for i, frame in enumerate(src.decode(vin)):
            if frame.pts is not None:
                pts = int(frame.pts) - origin
            else:
                pts = round(i / stream_fps / float(vout.codec_context.time_base))
            pts = pts if last is None else max(pts, last + 1)
            if end is not None and last is not None and pts * float(vout.codec_context.time_base) >= end - 1e-6:
                break
            last = pts
            img = frame.reformat(width=width, height=height, format="yuv420p")
            img.pts, img.time_base = pts, vout.codec_context.time_base
            yield from vout.encode(img)
        yield from vout.encode(None)

    return vout, packets()


def _interleave(vpkts, apkts: list, dst) -> None:
    """Mux video packets and audio packets in time order (good interleaving for players)."""
    ai = 0
    for pkt in vpkts:
        t = float(pkt.dts * pkt.time_base) if pkt.dts is not None else float(pkt.pts * pkt.time_base)
        while ai < len(apkts) and apkts[ai].pts is not None and float(apkts[ai].pts * apkts[ai].time_base) <= t:
            dst.mux(apkts[ai])
            ai += 1
        dst.mux(pkt)
    for p in apkts[ai:]:
        dst.mux(p)
