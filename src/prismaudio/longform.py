"""Long videos in windows of the model's trained length (issue 18 item 3, ThinkSound §4.4's
"extend" used as a sliding window).

A model is trained on clips of `config.duration` seconds (4 s for `mini`, 9 s for `paper`); a
longer video is cut into windows of that length that overlap by at least `overlap_s`. Windows are
spread evenly (the last one ends exactly at the video's end, so no window is a tiny remainder) and
start on the sync encoder's frame grid, so every window sees its frames in phase with its audio.
Window k > 0 continues the track made so far:

* with audio-context conditioning (`DiTConfig.audio_context`, `prismaudio.context`, the default
  whenever the network has it), it gets `AudioContext(audio = the track's samples in the overlap,
  keep = the overlap)`: the model hears the previous window's tail, and the output there equals
  it sample for sample up to a short linear fade before the seam, so the seam continues the sound
  instead of joining two independent clips;
* without it (e.g. the official `paper` network, or the shipped `mini` before its retraining) the
  two windows are joined by an equal-power crossfade over the overlap. `use_context=True` forces the
  context anyway: such a network then only gets the RePaint-style replacement of the kept latent
  frames, whose seams measured rougher than the crossfade's (benchmarks/bench_long_video.py).

Memory stays bounded: frames are streamed per window (`io.video.FrameWindows`: seek + decode of
the window only, never the whole video) and only the output track [2, S] grows with the length
(8 bytes per stereo sample). Each window gets its own CoT: planned on that window's frames by the
offline planner (decoded in the same pass as the encoders' frames), by another planner from a
temporary clip of the window, or one given CoT for every window.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor

from .config import MAX_LONG_DURATION
from .errors import PrismAudioError
from .io.video import FrameSpec, FrameWindows, num_samples, probe_video, write_clip

if TYPE_CHECKING:
    from .cot import CoT, Planner
    from .pipeline import PrismAudioPipeline

DEFAULT_OVERLAP = 0.25  # overlap as a fraction of the window when none is given
PLANNER_FRAME_SIZE = 192  # px: what the offline planner analyses at most (its MAX_SIZE)


@dataclass(frozen=True)
class Window:
    """One window of the output track, in samples: [start, start + length); the first `keep`
    samples overlap the window before it (0 for the first window)."""

    index: int
    start: int
    length: int
    keep: int

    @property
    def end(self) -> int:
        return self.start + self.length

    def seconds(self, sample_rate: int) -> tuple[float, float]:
        return self.start / sample_rate, self.end / sample_rate


def plan_windows(total: int, window: int, overlap: int, grid: int = 1) -> list[Window]:
    """Windows of `window` samples covering [0, total) with overlaps >= `overlap`.

    Starts lie on a grid of `grid` samples (the sync encoder's frame period: a window starting
    between two frames would shift every frame the encoders see against the audio by up to half a
    frame, a systematic onset error), spread evenly from 0 to the last grid point before
    total - window, with K = 1 + ceil(span / stride) windows (span and stride in whole grid steps),
    so no window is a tiny remainder. The last window runs to `total`: up to grid - 1 samples
    longer than the others. A track no longer than one window is a single window of `total` samples.
    """
    if total <= 0 or window <= 0:
        raise PrismAudioError(f"cannot cut {total} samples into windows of {window}")
    if not 0 <= overlap < window:
        raise PrismAudioError(f"the overlap ({overlap} samples) must be shorter than the window ({window})")
    if total <= window:
        return [Window(0, 0, total, 0)]
    grid = max(1, int(grid))
    if (window - overlap) // grid < 1:  # the grid is coarser than the stride: give it up
        grid = 1
    stride_g, span_g = (window - overlap) // grid, (total - window) // grid
    if span_g == 0:  # less than one grid step longer than a window: one slightly longer window
        return [Window(0, 0, total, 0)]
    count = 1 + math.ceil(span_g / stride_g)
    starts = [span_g * k // (count - 1) * grid for k in range(count)]
    out: list[Window] = []
    for k, st in enumerate(starts):
        length = window if k < count - 1 else total - st
        out.append(Window(k, st, length, 0 if k == 0 else out[-1].end - st))
    return out


def frame_grid(pipe: "PrismAudioPipeline") -> int:
    """The sync encoder's frame period in samples (640 at 16 kHz / 25 fps), 1 when not whole."""
    period = pipe.config.sample_rate / pipe.sync_encoder.frame_spec().fps
    return round(period) if abs(period - round(period)) < 1e-6 and period >= 1 else 1


@dataclass
class LongformConfig:
    """How `generate_long` windows a video (None = derived from the model)."""

    window_s: float | None = None  # the model's trained duration (`config.duration`)
    overlap_s: float | None = None  # DEFAULT_OVERLAP of the window
    max_duration_s: float = MAX_LONG_DURATION  # safety cap: longer videos are refused in one line
    # None: the audio context when the network is conditioned on it (`dit.audio_context`), else a
    # crossfade; True: the context in any case (RePaint-style replacement without conditioning); False: crossfade
    use_context: bool | None = None
    crossfade_s: float = 0.02  # the linear fade from the kept to the generated audio before each seam


@dataclass
class LongGenerationResult:
    """What `generate_long` made: one stereo track of exactly round(duration * rate) samples."""

    audio: Tensor  # [2, S] float32 in [-1, 1]
    sample_rate: int
    duration: float
    windows: list[Window]
    cots: list[str]  # the text each window was conditioned on
    plans: list["CoT | None"]  # each window's four-part plan (None for raw text / no CoT)
    seams: str  # how windows were joined: `seam_mode` ("audio-context", "replace", "crossfade"), "none" for one
    video: Path | None = None
    frames_decoded: int = 0  # video frames decoded over all windows (the streaming bound)
    samples: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.samples is None:
            self.samples = self.audio.unsqueeze(0)

    @property
    def plan(self) -> "CoT | None":
        """The plan when every window shares one (a given CoT), else None."""
        first = self.plans[0] if self.plans else None
        return first if first is not None and all(p == first for p in self.plans) else None

    def window_seconds(self) -> list[tuple[float, float]]:
        return [w.seconds(self.sample_rate) for w in self.windows]


def context_available(pipe: "PrismAudioPipeline") -> bool:
    """Whether the pipeline's sampler takes an audio context (`prismaudio.context`)."""
    import inspect

    return "context" in inspect.signature(pipe.sample_latents).parameters


def seam_mode(pipe: "PrismAudioPipeline", use_context: bool) -> str:
    """How windows join: "audio-context" (the DiT is conditioned on the previous tail and the kept
    frames follow it), "replace" (a network without `audio_context`: the kept latent frames are
    imposed at every step, RePaint-style, `sampling.replace_known`) or "crossfade"."""
    if not use_context:
        return "crossfade"
    return "audio-context" if getattr(pipe.config.dit, "audio_context", False) else "replace"


def window_length_s(pipe: "PrismAudioPipeline", window_s: float | None = None) -> float:
    """The window length: given, else the model's trained clip length."""
    w = float(pipe.config.duration if window_s is None else window_s)
    if not (w > 0 and math.isfinite(w)):
        raise PrismAudioError(f"the window length must be a positive number of seconds, got {w:g}")
    if w > pipe.config.max_duration:
        raise PrismAudioError(f"a window of {w:g} s exceeds the model's maximum of {pipe.config.max_duration:g} s")
    return w


def needs_windows(pipe: "PrismAudioPipeline", duration: float, window_s: float | None = None) -> bool:
    """True when `duration` s is longer than one window (by more than one sample)."""
    return round(duration * pipe.config.sample_rate) > round(window_length_s(pipe, window_s) * pipe.config.sample_rate)


def check_long_duration(duration: float, video_duration: float, max_duration_s: float) -> None:
    """One-line refusals before any work: past the safety cap, or longer than the video's picture."""
    if not (max_duration_s > 0 and math.isfinite(max_duration_s)):
        raise PrismAudioError(f"the maximum duration must be a positive number of seconds, got {max_duration_s:g}")
    if duration > max_duration_s:
        raise PrismAudioError(f"duration {duration:.1f} s exceeds the maximum of {max_duration_s:g} s for long videos "
                              "(raise it with --max-duration / max_duration_s, or pass a shorter --duration)")
    if duration > video_duration + 1e-3:
        raise PrismAudioError(f"duration {duration:g} s exceeds the maximum for this video: it is {video_duration:.3f} s "
                              "long, and windows past its end would have no picture")


# ------------------------------------------------------------------------------------ stitching
def equal_power_join(track: Tensor, new: Tensor, start: int, overlap: int) -> None:
    """Write `new` [2, L] into `track` [2, S] at `start`; its first `overlap` samples fade in
    (sin) over the track's (cos): equal power for uncorrelated windows (the crossfade-only path),
    no gap, no click. Two independent full-scale signals can sum past 1 there: those samples are clipped."""
    if overlap > 0:
        t = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
        fade_in, fade_out = torch.sin(0.5 * math.pi * t), torch.cos(0.5 * math.pi * t)
        mixed = track[:, start : start + overlap] * fade_out + new[:, :overlap] * fade_in
        track[:, start : start + overlap] = mixed.clamp(-1.0, 1.0)
    track[:, start + overlap : start + new.shape[1]] = new[:, overlap:]


def seam_splice(generated: Tensor, ctx_audio: Tensor, keep: int, width: int) -> Tensor:
    """The window's output [2, L] with the kept audio copied back: `ctx_audio` on [0, keep - width),
    then a LINEAR crossfade to `generated` over the `width` samples before the seam, `generated`
    after it. Linear (equal gain), not equal power: with the context the generated audio in the
    kept region reproduces the kept audio (the kept latent frames are imposed), so the two are
    correlated and an equal-power fade would be a +3 dB bump (and overshoot full scale) at every
    seam. Away from the fade the copy is sample-exact."""
    out = generated.clone()
    width = max(0, min(width, keep))
    hard = keep - width
    out[:, :hard] = ctx_audio[:, :hard]
    if width > 0:
        w = (torch.arange(width, dtype=torch.float32) + 0.5) / width  # weight of the generated audio
        out[:, hard:keep] = ctx_audio[:, hard:keep] * (1 - w) + generated[:, hard:keep] * w
    return out


# ------------------------------------------------------------------------------------ planning
class _WindowPlanner:
    """Each window's CoT: a given one, none, the offline planner on the window's frames, or any
    other planner on a temporary clip of the window."""

    def __init__(self, pipe: "PrismAudioPipeline", video: Path, cot: "str | CoT | None", planner: "str | Planner | None",
                 planner_options: dict[str, Any] | None, caption: str | None, cot_style: str, info: Any):
        from .cot import CoT

        self.video, self.caption, self.cot_style = video, caption, cot_style
        self.fixed: tuple[str, CoT | None] | None = None
        self.offline: Any = None
        self.other: Any = None
        self.out_of_domain: list[int] = []
        self.first_report: Any = None
        if cot is not None or planner is None:
            plan = cot if isinstance(cot, CoT) else None
            text = plan.render(cot_style) if plan is not None else ("" if cot is None else str(cot))
            self.fixed = (text, plan)
            return
        built = pipe._planner(planner, planner_options)
        # a planner that reads decoded frames (the offline one) plans each window from the window's own
        # decode pass; found by duck typing, since the core never imports the procedural world
        if callable(getattr(built, "plan_frames", None)):
            self.offline = built
            self.spec = FrameSpec(float(info.fps), int(min(max(info.width, info.height), PLANNER_FRAME_SIZE)))
        else:
            self.other = built

    def frame_specs(self) -> list[FrameSpec]:
        """Extra frames the planner needs from each window's decode pass."""
        return [self.spec] if self.offline is not None else []

    def plan(self, window: Window, start_s: float, duration_s: float, frames: Tensor | None) -> tuple[str, "CoT | None"]:
        from .cot import CoT

        if self.fixed is not None:
            return self.fixed
        if self.offline is not None:
            assert frames is not None
            plan = self.offline.plan_frames(frames.permute(0, 2, 3, 1).numpy(), self.spec.fps, self.caption)
            report = self.offline.last_report
            if report is not None and not report.in_domain:
                self.out_of_domain.append(window.index)
                if self.first_report is None:
                    self.first_report = self.offline.out_of_domain_message(self.video, self.caption)
        else:
            with tempfile.TemporaryDirectory(prefix="prismaudio-window-") as tmp:
                clip = Path(tmp) / f"window{window.index}.mp4"
                write_clip(self.video, clip, start_s, duration_s)
                plan = self.other.plan(clip, caption=self.caption)
        return plan.render(self.cot_style), plan

    def warn_domain(self, total: int) -> None:
        """One warning for the windows the offline planner found outside the procedural world."""
        if self.out_of_domain:
            msg = self.first_report
            warnings.warn(f"{len(self.out_of_domain)} of {total} windows: {msg}", stacklevel=3)


# ------------------------------------------------------------------------------------ generation
@torch.no_grad()
def generate_long(
    pipe: "PrismAudioPipeline",
    video: str | os.PathLike,
    cot: "str | CoT | None" = None,
    duration: float | None = None,
    seed: int = 0,
    steps: int | None = None,
    cfg_scale: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    config: LongformConfig | None = None,
    planner: "str | Planner | None" = "offline",
    planner_options: dict[str, Any] | None = None,
    caption: str | None = None,
    cot_style: str = "multi",
    status: Callable[[str], None] | None = None,
) -> LongGenerationResult:
    """Sound for a video of any length up to `config.max_duration_s`, in windows (module docstring).

    Arguments mean what they mean for `PrismAudioPipeline.generate`; window k is sampled with
    seed `seed + k`. `progress(done, total)` is called after every window. A video no longer than
    one window is generated by `pipe.generate` itself (the same audio, bit for bit).
    """
    cfg = config or LongformConfig()
    steps = pipe.config.sampling.steps if steps is None else int(steps)
    if steps <= 0:
        raise PrismAudioError(f"steps must be a positive integer, got {steps}")
    guidance = pipe.config.sampling.cfg_scale if cfg_scale is None else float(cfg_scale)
    say = status or (lambda _m: None)
    video = Path(video)
    info = probe_video(video)
    total_s = pipe.clip_duration(info.duration) if duration is None else float(duration)
    if not total_s > 0:
        raise PrismAudioError(f"duration must be > 0 s, got {total_s:g}")
    check_long_duration(total_s, info.duration, cfg.max_duration_s)
    sr = pipe.config.sample_rate
    window_s = window_length_s(pipe, cfg.window_s)
    overlap_s = DEFAULT_OVERLAP * window_s if cfg.overlap_s is None else float(cfg.overlap_s)
    if not (0 <= overlap_s < window_s and math.isfinite(overlap_s)):
        raise PrismAudioError(f"the overlap ({overlap_s:g} s) must be >= 0 and shorter than the window ({window_s:g} s)")
    total = round(total_s * sr)
    pipe._require_encoders()
    windows = plan_windows(total, round(window_s * sr), round(overlap_s * sr), frame_grid(pipe))
    if len(windows) == 1:  # one window: exactly the single-pass path
        r = pipe.generate(video, cot=cot, duration=total_s, seed=seed, steps=steps, cfg_scale=guidance, progress=None,
                          planner=planner, planner_options=planner_options, caption=caption, cot_style=cot_style,
                          status=status)
        if progress is not None:
            progress(1, 1)
        return LongGenerationResult(r.audio, r.sample_rate, r.duration, windows, [r.cot], [r.plan], "none", video)
    # auto: the audio context where the network is conditioned on it; a network without it only gets
    # the RePaint-style replacement, whose seams measured rougher than a crossfade (bench_long_video)
    conditioned = bool(getattr(pipe.config.dit, "audio_context", False))
    use_context = (conditioned and context_available(pipe)) if cfg.use_context is None else bool(cfg.use_context)
    if use_context and not context_available(pipe):
        raise PrismAudioError("this pipeline's sampler takes no audio context; its windows can only be crossfaded")
    seams = seam_mode(pipe, use_context)
    planning = _WindowPlanner(pipe, video, cot, planner, planner_options, caption, cot_style, info)
    specs = [pipe.video_encoder.frame_spec(), pipe.sync_encoder.frame_spec()]
    window_dur = windows[0].length / sr
    for enc, spec in zip((pipe.video_encoder, pipe.sync_encoder), specs):
        try:  # a window an encoder cannot take (shorter than one Synchformer segment) is refused up front
            enc.output_length(num_samples(spec.fps, window_dur))
        except PrismAudioError as e:
            raise PrismAudioError(f"{video}: a {window_dur:g} s window: {e}") from None
    say(f"{total_s:.1f} s in {len(windows)} windows of {window_s:g} s (overlap >= {overlap_s:g} s, "
        f"{seams} at the seams)")
    track = torch.zeros(2, total, dtype=torch.float32)
    cots: list[str] = []
    plans: list[CoT | None] = []
    warned: set[str] = set()
    if progress is not None:
        progress(0, len(windows))
    with FrameWindows(video, specs + planning.frame_specs()) as frames:
        for w in windows:
            start_s, dur_s = w.start / sr, w.length / sr
            decoded = frames.read(start_s, dur_s)
            text, plan = planning.plan(w, start_s, dur_s, decoded[2] if len(decoded) > 2 else None)
            if text and text not in warned:
                cut = pipe.text_encoder.truncation(text)
                if cut is not None:
                    warnings.warn(f"window {w.index}: {cut.message()}", stacklevel=2)
                warned.add(text)
            ctx = _window_context(track, w, cfg.crossfade_s) if use_context and w.keep > 0 else None
            audio = _window_audio(pipe, decoded[0], decoded[1], text, dur_s, seed + w.index, steps, guidance, ctx)
            if ctx is not None:
                track[:, w.start : w.end] = audio
            else:
                equal_power_join(track, audio, w.start, w.keep)
            cots.append(text)
            plans.append(plan)
            del decoded
            if progress is not None:
                progress(w.index + 1, len(windows))
        decoded_total = frames.frames_decoded
    planning.warn_domain(len(windows))
    return LongGenerationResult(track, sr, total / sr, windows, cots, plans, seams, video, decoded_total)


def _window_context(track: Tensor, w: Window, crossfade_s: float) -> Any:
    """The audio context of window `w`: the track so far in its overlap, kept; the rest generated."""
    from .context import AudioContext

    audio = torch.zeros(2, w.length, dtype=torch.float32)
    audio[:, : w.keep] = track[:, w.start : w.start + w.keep]
    keep = torch.zeros(w.length, dtype=torch.bool)
    keep[: w.keep] = True
    return AudioContext(audio=audio, keep=keep, crossfade_s=crossfade_s)


def _window_audio(pipe: "PrismAudioPipeline", frames_v: Tensor, frames_s: Tensor, text: str, duration: float,
                  seed: int, steps: int, cfg_scale: float, ctx: Any) -> Tensor:
    """One window through encoders -> condition -> sampler (-> context splice) -> [2, L] audio."""
    from .pipeline import Features

    dev = pipe.device
    v = pipe.video_encoder(frames_v.unsqueeze(0).to(dev))
    s = pipe.sync_encoder(frames_s.unsqueeze(0).to(dev))
    tokens, _ = pipe.text_encoder.encode_text([text])
    cond = pipe.condition(Features(video=v, sync=s, text=tokens.to(dev), duration=duration))
    extra = {} if ctx is None else {"context": ctx}
    latents = pipe.sample_latents(cond, seed=seed, steps=steps, cfg_scale=cfg_scale, **extra)
    audio = pipe.decode(latents, duration)
    if ctx is not None:
        keep = int(ctx.keep.sum())
        audio = seam_splice(audio[0], ctx.audio, keep, round(ctx.crossfade_s * pipe.config.sample_rate)).unsqueeze(0)
    return audio[0]


def window_plans_json(result: LongGenerationResult) -> list[dict[str, Any]]:
    """[{window, start, end, cot}] for `<name>.cot.json` of a windowed generation."""
    out = []
    for w, text, plan in zip(result.windows, result.cots, result.plans):
        a, b = w.seconds(result.sample_rate)
        out.append({"window": w.index, "start": round(a, 6), "end": round(b, 6),
                    "cot": plan.to_dict() if plan is not None else text})
    return out


def event_times_long(result: LongGenerationResult, parse: Callable[[str], Sequence[float]]) -> list[float]:
    """The plans' event times on the whole track's clock (window start + time within the window),
    each taken from the window that generated that part (past its overlap)."""
    times: list[float] = []
    sr = result.sample_rate
    for w, plan in zip(result.windows, result.plans):
        if plan is None:
            continue
        a = w.start / sr
        lo = (w.keep / sr) if w.index > 0 else 0.0
        times.extend(a + t for t in parse(plan.temporal) if t >= lo and t <= w.length / sr)
    return sorted(set(round(t, 3) for t in times))
