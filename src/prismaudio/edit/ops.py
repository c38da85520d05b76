"""The editing operations on an existing soundtrack (ThinkSound §4.4 stages 2-3 on PrismAudio):
inpaint, extend, add, remove and object-focused refine, all through one audio-context generation
(`PrismAudioPipeline.generate(context=...)`, `prismaudio.context`).

What each op shows the model (`visible`) and copies back sample-exactly (`keep`):

=========  =========================  ==========================  ==============================
op         visible                    keep                        output
=========  =========================  ==========================  ==============================
inpaint    outside the region         outside the region          the region regenerated
extend     the audio before `start`   the audio before `start`    continued to the video's end
add        everywhere                 outside the region          the region with the object in
remove     everywhere                 outside the region          the region without the object
refine     everywhere                 nothing (the output is      existing + the object's sound,
                                      the object's stem)          inside the region
=========  =========================  ==========================  ==============================

Refine encodes the video features on the ROI crop (the box, or the mask box of a click) and
conditions on a CoT about that object; the generated stem is mixed into the existing track inside
the region (sine fades at the region's edges), the stem turned down only if the sum would clip.
Before mixing, the stem is moved to the box's horizontal position (`edit.place`: the crop hides it
from the network).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import PrismAudioError
from .instruction import OPS, Instruction, Vocabulary, default_vocabulary, parse_instruction, target_cot
from .roi import Box, Click, Region, check_box, check_click, check_region, mask_box, roi_size, write_roi_video

if TYPE_CHECKING:
    from ..cot import CoT
    from ..pipeline import GenerationResult, PrismAudioPipeline
    from .segmenter import Segmenter

CROSSFADE_S = 0.02  # the context's linear crossfade at each keep/generate boundary
PLACEMENTS = ("box", "model")  # refine: where the object's stem sits (`edit`)


@dataclass(frozen=True)
class ClipInfo:
    """What the checks need of the video: the clip length the pipeline generates, frame size and rate."""

    duration: float
    fps: float
    width: int
    height: int

    @property
    def frame_s(self) -> float:
        return 1.0 / self.fps


def clip_info(pipe: "PrismAudioPipeline", video: str | os.PathLike) -> ClipInfo:
    from ..io.video import probe_video

    info = probe_video(video)
    duration = pipe._check_duration(pipe.clip_duration(info.duration))
    return ClipInfo(duration, info.fps, info.width, info.height)


# ------------------------------------------------------------------------------------ the audio
def conform_audio(audio: Tensor, rate: int, clip: ClipInfo, model_rate: int, op: str,
                  what: str = "--audio") -> tuple[Tensor, list[str]]:
    """The existing audio [C, S] at `rate` as the model's stereo at `model_rate`, with one note per
    repair. Refused (one line, saying which): a length that differs from the clip by more than one
    video frame (unless `op` is extend, which continues a shorter audio; never a longer one), more
    than two channels. Repaired with a note: mono (duplicated to both channels), another sample rate
    (resampled: safe once the length is known to cover the clip), up to one frame too long / short
    (trimmed / zero-padded)."""
    from ..io.audio import resample

    notes: list[str] = []
    if audio.dim() != 2 or audio.shape[-1] == 0:
        raise PrismAudioError(f"{what} must hold [channels, samples] audio, got shape {tuple(audio.shape)}")
    if audio.shape[0] > 2:
        raise PrismAudioError(f"{what} has {audio.shape[0]} channels; give a mono or stereo WAV")
    seconds = audio.shape[-1] / rate
    gap = seconds - clip.duration
    length = f"{what} is {seconds:.3f} s long ({audio.shape[-1]} samples at {rate} Hz)"
    if gap > clip.frame_s + 1e-9:
        raise PrismAudioError(f"{length}, longer than the {clip.duration:.3f} s video by more than one frame "
                              f"({clip.frame_s * 1000:.0f} ms)")
    if gap < -(clip.frame_s + 1e-9) and op != "extend":
        raise PrismAudioError(f"{length}, shorter than the {clip.duration:.3f} s video by more than one frame "
                              f"({clip.frame_s * 1000:.0f} ms); only --op extend continues a shorter audio")
    if audio.shape[0] == 1:
        notes.append(f"{what} is mono: duplicated to both channels")
        audio = audio.expand(2, -1).clone()
    audio = audio.float()
    if rate != model_rate:
        notes.append(f"{what} is at {rate} Hz, the model at {model_rate} Hz: resampled")
        audio = resample(audio, rate, model_rate)
    n = round(clip.duration * model_rate)
    if op == "extend" and gap < -(clip.frame_s + 1e-9):
        return audio[:, :n], notes
    if audio.shape[-1] > n:
        if gap > 0.5 / model_rate:
            notes.append(f"{what} is {gap * 1000:.1f} ms longer than the clip: trimmed")
        audio = audio[:, :n]
    elif audio.shape[-1] < n:
        if -gap > 0.5 / model_rate:
            notes.append(f"{what} is {-gap * 1000:.1f} ms shorter than the clip: padded with silence")
        audio = torch.nn.functional.pad(audio, (0, n - audio.shape[-1]))
    return audio, notes


def load_existing_audio(path: str | os.PathLike, clip: ClipInfo, model_rate: int | None,
                        op: str) -> tuple[Tensor, list[str], int]:
    """A WAV (or any file `io.audio.load_audio` reads) conformed to the clip (`conform_audio`), and
    its rate: `model_rate`, or the file's own when None."""
    from ..io.audio import load_audio

    audio, rate = load_audio(path, sample_rate=None, channels=None)
    out_rate = model_rate or rate
    return (*conform_audio(audio, rate, clip, out_rate, op), out_rate)


# ------------------------------------------------------------------------------------ the request
@dataclass(frozen=True)
class EditPlan:
    """A checked edit: everything decided before the model runs."""

    op: str
    region: Region
    audio: Tensor  # [2, S'] at the model's rate (S' < S only for extend)
    instruction: Instruction | None
    box: Box | None  # refine: the ROI
    notes: tuple[str, ...] = ()


def default_region(op: str, audio_seconds: float, clip: ClipInfo) -> Region:
    """extend: from the audio's end to the video's; everything else: the whole clip."""
    if op == "extend":
        return Region(min(audio_seconds, clip.duration), clip.duration)
    return Region(0.0, clip.duration)


def plan_edit(
    clip: ClipInfo,
    model_rate: int | None,
    video: str | os.PathLike,
    audio: str | os.PathLike | Tensor,
    op: str | None,
    region: tuple[float, float] | Region | None = None,
    object: Box | Click | tuple[float, ...] | None = None,
    instruction: str | None = None,
    cot: "CoT | None" = None,
    segmenter: "Segmenter | None" = None,
    object_time: float | None = None,
    vocabulary: Vocabulary | None = None,
    audio_rate: int | None = None,
) -> EditPlan:
    """Every check of an edit for a clip `clip` (`clip_info`) and a model at `model_rate` Hz (None:
    keep the audio's own rate, to check an edit before the model is loaded), in the order that
    fails fastest. No generation happens here (the SAM segmenter, when a click needs one, runs)."""
    if op is not None and op not in OPS:
        raise PrismAudioError(f"unknown --op {op!r} (choose from {', '.join(OPS)})")
    parsed = None
    if instruction is not None:
        parsed = parse_instruction(instruction, vocabulary or default_vocabulary(), op)
        op = parsed.op
    if op is None:
        raise PrismAudioError(f"give --op ({', '.join(OPS)}) or an --instruction that names one")
    if op in ("add", "remove") and parsed is None and cot is None:
        raise PrismAudioError(f"--op {op} needs --instruction TEXT (what to {op}) or --cot @FILE (the target's CoT)")
    if isinstance(audio, Tensor):
        rate = audio_rate or model_rate
        if rate is None:
            raise PrismAudioError("an audio tensor needs its sample rate (audio_rate)")
        wav, notes = conform_audio(audio, rate, clip, model_rate or rate, op, what="audio")
        out_rate = model_rate or rate
    else:
        wav, notes, out_rate = load_existing_audio(audio, clip, model_rate, op)
    audio_s = wav.shape[-1] / out_rate
    if region is None:
        reg = default_region(op, audio_s, clip)
        if reg.length <= 0:
            raise PrismAudioError("--op extend: the audio already covers the whole video; nothing to extend")
    else:
        reg = region if isinstance(region, Region) else Region(float(region[0]), float(region[1]))
        reg = check_region(reg, clip.duration)
    if op == "extend":
        if abs(reg.end - clip.duration) > 1e-6:
            raise PrismAudioError(f"--op extend continues to the video's end ({clip.duration:g} s): give --region "
                                  f"{reg.start:g}: (or {reg.start:g}:{clip.duration:g})")
        if reg.start > audio_s + clip.frame_s:
            raise PrismAudioError(f"--op extend from {reg.start:g} s: the audio ends at {audio_s:.3f} s, "
                                  "so there is nothing to continue from there")
        if reg.start <= 0:
            raise PrismAudioError("--op extend needs some audio to continue: the region starts at 0")
    box = None
    if object is not None:
        obj = object if isinstance(object, (Box, Click)) else (
            Box(*map(int, object)) if len(object) == 4 else Click(*map(float, object)))
        if isinstance(obj, Box):
            box = check_box(obj, clip.width, clip.height)
        else:
            check_click(obj, clip.width, clip.height)
            if segmenter is None:
                raise PrismAudioError("a click --object needs a segmenter (--segmenter scene or a SAM checkpoint)")
            t = reg.start if object_time is None else float(object_time)
            frame = _frame_at(video, t)
            box = check_box(mask_box(segmenter.segment(frame, obj, t), "the segmenter's mask"), clip.width,
                            clip.height, "the segmenter's mask")
            known = getattr(segmenter, "class_at", None)  # the scene graph knows what was clicked
            if op == "refine" and parsed is None and cot is None and known is not None:
                parsed = Instruction("refine", (vocabulary or default_vocabulary()).get(known(obj, t)), "")
    if op == "refine" and box is None:
        raise PrismAudioError("--op refine needs --object (a box x0,y0,x1,y1 or a click x,y)")
    if op == "refine" and parsed is None and cot is None:
        parsed = Instruction("refine", None, "")
    return EditPlan(op, reg, wav, parsed, box, tuple(notes))


def _frame_at(video: str | os.PathLike, t: float):
    """The frame shown at `t` s, [H, W, 3] uint8 (what the user clicked on)."""
    from ..io.video import probe_video, read_frames_multi

    info = probe_video(video)
    t = min(max(0.0, t), max(0.0, info.duration - 1.0 / info.fps))
    frames = read_frames_multi(video, [(info.fps, None)], duration=1.0 / info.fps, start=t)[0]
    return frames[0].permute(1, 2, 0).contiguous().numpy()


def build_context(plan: EditPlan, num_samples: int, sample_rate: int):
    """The `AudioContext` of an edit (the module's table)."""
    from ..context import AudioContext, edit_context, extend_context, inpaint_context

    a, b = plan.region.start, plan.region.end
    if plan.op == "inpaint":
        return inpaint_context(plan.audio, sample_rate, a, b, CROSSFADE_S)
    if plan.op == "extend":
        prefix = plan.audio[:, : round(a * sample_rate)]
        return extend_context(prefix, sample_rate, num_samples, CROSSFADE_S)
    if plan.op in ("add", "remove"):
        return edit_context(plan.audio, sample_rate, a, b, CROSSFADE_S)
    keep = torch.zeros(num_samples, dtype=torch.bool)  # refine: the output is the object's stem
    return AudioContext(plan.audio, keep, torch.ones_like(keep), CROSSFADE_S)


def region_gain(num_samples: int, region: Region, sample_rate: int, fade_s: float = CROSSFADE_S) -> Tensor:
    """[S] weight of a mixed-in stem: 1 inside the region, 0 outside, sine fades of `fade_s` inside its edges."""
    a, b = region.samples(sample_rate)
    g = torch.zeros(num_samples)
    g[a:b] = 1.0
    n = min(int(round(fade_s * sample_rate)), (b - a) // 2)
    if n > 0:
        ramp = torch.sin(0.5 * torch.pi * (torch.arange(n, dtype=torch.float32) + 1) / (n + 1))
        if a > 0:
            g[a:a + n] = ramp
        if b < num_samples:
            g[b - n:b] = ramp.flip(0)
    return g


def mix_in(existing: Tensor, stem: Tensor, gain: Tensor) -> Tensor:
    """existing + a * gain * stem ([K, 2, S]) with the largest a in (0, 1] per sample k that keeps
    the sum within [-1, 1]: only the stem is turned down, so the existing track stays sample-exact
    outside the region (where gain is 0)."""
    add = stem * gain
    out = []
    for e, d in zip(existing.expand_as(add), add):
        lo, hi = 0.0, 1.0
        if float((e + d).abs().max()) > 1.0:
            for _ in range(24):  # bisection on the stem's scale
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if float((e + mid * d).abs().max()) <= 1.0 else (lo, mid)
            hi = lo
        out.append(e + hi * d)
    return torch.stack(out)


# ------------------------------------------------------------------------------------ the edit
def edit(
    pipe: "PrismAudioPipeline",
    video: str | os.PathLike,
    audio: str | os.PathLike | Tensor,
    op: str | None,
    region: tuple[float, float] | Region | None = None,
    object: Box | Click | tuple[float, ...] | None = None,
    instruction: str | None = None,
    cot: "CoT | None" = None,
    seed: int = 0,
    steps: int | None = None,
    cfg: float | None = None,
    *,
    segmenter: "Segmenter | str | None" = None,
    object_time: float | None = None,
    planner: str | None = "offline",
    vocabulary: Vocabulary | None = None,
    audio_rate: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    status: Callable[[str], None] | None = None,
    plan: EditPlan | None = None,
    placement: str = "box",
) -> "GenerationResult":
    """Edit `audio` (a file, or a [C, S] tensor at `audio_rate`, default the model's) of `video`.

    `region` (start, end) s: where the edit applies (default: the whole clip; extend: from the
    audio's end). `object`: a box (x0, y0, x1, y1) or a click (x, y) in pixels (refine's ROI; a click
    goes through `segmenter`: a `Segmenter`, "scene" or a SAM checkpoint directory). `instruction`
    ("remove the rain") names the op and the object; `cot` gives the target CoT instead. Without
    either, inpaint / extend condition on the planner's plan of the whole video (`planner`; None =
    no CoT). Returns the `GenerationResult` of the edited track (`plan` = the target CoT, `video` =
    `video`), whose audio equals `audio` on every kept sample away from the crossfades.
    `placement` (refine): "box" re-pans the object's stem to the box centre (`edit.place`), "model"
    keeps the stereo image the network made from the crop.
    """
    from ..cot import CoT as _CoT

    if placement not in PLACEMENTS:
        raise PrismAudioError(f"unknown placement {placement!r} (choose from {', '.join(PLACEMENTS)})")
    if isinstance(segmenter, str):
        from .segmenter import build_segmenter

        segmenter = build_segmenter(segmenter, video)
    if cot is not None and instruction is not None:
        raise PrismAudioError("give --instruction or --cot, not both")
    if cot is not None and not isinstance(cot, _CoT):
        raise PrismAudioError(f"cot must be a CoT, got {type(cot).__name__}")
    sr = pipe.config.sample_rate
    clip = clip_info(pipe, video)
    if plan is None:
        plan = plan_edit(clip, sr, video, audio, op, region, object, instruction, cot, segmenter, object_time,
                         vocabulary, audio_rate)
    for note in plan.notes:
        warnings.warn(note, stacklevel=2)
    n = round(clip.duration * sr)
    if plan.audio.shape[-1] != (n if plan.op != "extend" else plan.audio.shape[-1]):
        raise PrismAudioError(f"the edit plan's audio has {plan.audio.shape[-1]} samples, the clip {n} at {sr} Hz "
                              "(plan it with this model's clip_info and sample rate)")
    target = cot
    if target is None:
        base = None
        if planner is not None:
            (status or (lambda _m: None))("planning the chain-of-thought of the video ...")
            base = pipe.plan_cot(video, planner)
        side = plan.box.side(clip.width) if plan.box is not None else None
        target = target_cot(base, plan.instruction, plan.region, side) if plan.instruction is not None else base
    ctx = build_context(plan, n, sr)
    with tempfile.TemporaryDirectory(prefix="prismaudio-roi-") as tmp:
        features_from = Path(video)
        if plan.op == "refine":
            assert plan.box is not None
            features_from = write_roi_video(video, plan.box, Path(tmp) / "roi.mkv", roi_size(pipe), clip.duration)
        result = pipe.generate(features_from, cot=target if target is not None else "", duration=clip.duration,
                               seed=seed, steps=steps, cfg_scale=cfg, progress=progress, planner=None,
                               status=status, context=ctx)
    if plan.op == "refine":
        assert plan.box is not None
        stem = result.samples
        if placement == "box":
            from .place import place_stem

            stem = place_stem(stem, plan.box.side(clip.width), sr)
        gain = region_gain(n, plan.region, sr)
        samples = mix_in(plan.audio.unsqueeze(0), stem, gain)
        result = replace(result, audio=samples[0], samples=samples)
    return replace(result, video=Path(video), plan=target if isinstance(target, _CoT) else result.plan)
