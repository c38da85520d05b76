"""`prismaudio edit`: edit a video's existing soundtrack (inpaint, extend, add, remove, refine).

Outputs like `generate`, all or nothing into --out (`io.files.Staging`): NAME.wav (the edited
track), NAME.mp4 (the video with it as its sound), NAME.cot.json / NAME.cot.txt (the target CoT the
edit was conditioned on, when there is one) and NAME.edit.json (what was done: op, region, ROI box,
instruction, repairs). Every bad input is one line and exit 2, checked before the model loads
where it can be, and nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import PrismAudioError
from .instruction import OPS


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `edit` on the CLI's subparsers (`func` is `run`)."""
    from ..cli import seed_arg

    e = subparsers.add_parser("edit", help="edit a video's soundtrack: inpaint, extend, add, remove, refine")
    e.add_argument("video", help="the video whose soundtrack is edited")
    e.add_argument("--audio", required=True, help="its existing soundtrack (WAV; mono is duplicated, another rate resampled)")
    e.add_argument("--op", default=None, help=f"{' | '.join(OPS)} (may be left out when --instruction names it)")
    e.add_argument("--region", default=None,
                   help="START:END seconds where the edit applies (START: = to the end; default the whole clip, "
                        "extend: from the audio's end)")
    e.add_argument("--object", default=None, help="the object: a box x0,y0,x1,y1 or a click x,y, in pixels (refine)")
    e.add_argument("--object-time", type=float, default=None,
                   help="the time (s) of the frame a click refers to (default the region's start)")
    e.add_argument("--instruction", default=None, help="e.g. 'add a metal clang', 'remove the rain'")
    e.add_argument("--cot", default=None, help="the target's CoT as TEXT or @FILE (four labelled parts or JSON)")
    e.add_argument("--segmenter", default=None,
                   help="click -> mask: 'scene' (a procedural clip's own masks, from its manifest) or a local "
                        "SAM checkpoint directory")
    e.add_argument("--manifest", default=None, help="the corpus manifest of the clip (--segmenter scene; default: "
                                                    "the manifest.jsonl beside the clip's video/ folder)")
    e.add_argument("--placement", default="box", choices=["box", "model"],
                   help="refine: pan the object's sound to the box's position (box, default) or keep the "
                        "stereo image the model made from the crop (model)")
    e.add_argument("--planner", default="offline", help="plans the existing video's CoT (offline | none)")
    e.add_argument("--out", required=True, help="output directory")
    e.add_argument("--name", default=None, help="output file stem (default: the video's)")
    e.add_argument("--model", default=None, help="model directory or preset:NAME (default: the shipped model)")
    e.add_argument("--seed", type=seed_arg, default=0)
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--cfg", type=float, default=None)
    e.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available, else cpu)")
    e.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="precision of the DiT and condition MLPs (default fp32; the VAE decodes in fp32)")
    e.add_argument("--offload", action="store_true", help="free the pretrained encoders before sampling")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=run)
    return e


def read_cot(value: str):
    """`--cot TEXT | @FILE` as a CoT; malformed text (no labelled or JSON parts) is refused."""
    from ..cli import read_text_arg
    from ..cot import CoT, CoTParseError

    text = read_text_arg(value)
    assert text is not None
    where = f"--cot {value}" if value.startswith("@") else "--cot"
    if not text.strip():
        raise PrismAudioError(f"{where} is empty")
    try:
        return CoT.parse(text)
    except CoTParseError as e:
        if any(v.strip() for v in (e.partial or {}).values()):
            print(f"prismaudio: note: the CoT has no {', '.join(e.missing)} part; left empty", file=sys.stderr)
            return CoT.parse(text, allow_missing=True)
        raise PrismAudioError(f"{where} is not a CoT: {e}") from None


def _check_args(args: argparse.Namespace) -> None:
    if args.op is not None and args.op not in OPS:
        raise PrismAudioError(f"unknown --op {args.op!r} (choose from {', '.join(OPS)})")
    if args.instruction is not None and args.cot is not None:
        raise PrismAudioError("give --instruction or --cot, not both")
    if args.steps is not None and args.steps <= 0:
        raise PrismAudioError(f"--steps must be a positive integer, got {args.steps}")
    if args.name is not None and (not args.name or args.name in (".", "..") or "/" in args.name):
        raise PrismAudioError(f"--name must be a plain file name, got {args.name!r}")
    if args.planner not in ("offline", "none"):
        from ..cot import list_planners

        if args.planner not in list_planners():
            raise PrismAudioError(f"--planner {args.planner!r}: available {', '.join(list_planners() + ['none'])}")


def run(args: argparse.Namespace) -> int:
    """Check everything, load the model, edit, write the outputs all at once."""
    import warnings

    from ..cli import load_pipeline, place_pipeline, resolve_device_dtype, status_printer
    from ..io.audio import save_wav
    from ..io.files import Staging, check_input_file
    from ..io.video import mux_audio, probe_video, video_track_plan
    from .instruction import default_vocabulary, parse_instruction
    from .ops import ClipInfo, clip_info, edit, load_existing_audio, plan_edit
    from .roi import Box, check_box, check_click, parse_object, parse_region

    _check_args(args)
    resolve_device_dtype(args.device, args.dtype)  # a device that cannot run here fails first
    video = check_input_file(args.video, "video")
    info = probe_video(video)  # a bad video fails here, before the model
    check_input_file(args.audio, "--audio")
    vocab = default_vocabulary() if args.instruction is not None or args.segmenter == "scene" else None
    if args.instruction is not None:
        parse_instruction(args.instruction, vocab, args.op)
    cot = read_cot(args.cot) if args.cot is not None else None
    region = parse_region(args.region, info.duration) if args.region is not None else None
    obj = parse_object(args.object) if args.object is not None else None
    if obj is not None:
        (check_box if isinstance(obj, Box) else check_click)(obj, info.width, info.height)
    segmenter = None
    if args.segmenter is not None:
        from .segmenter import build_segmenter

        segmenter = build_segmenter(args.segmenter, video, args.manifest)
    # every check before the model loads, on the video's own length and the WAV's own rate
    seen = ClipInfo(info.duration, info.fps, info.width, info.height)
    plan = plan_edit(seen, None, video, args.audio, args.op, region, obj, args.instruction, cot, segmenter,
                     args.object_time, vocab)
    name = args.name or video.stem
    encoder = video_track_plan(video, Path(args.out) / f"{name}.mp4")
    say = status_printer(args.quiet)
    with Staging(args.out) as staging:  # --out is writable, before the model loads
        say(f"loading the model ({args.model or 'the default'}) ...")
        pipe = place_pipeline(load_pipeline(args.model), args)
        clip = clip_info(pipe, video)
        if clip != seen:  # the model's duration rule shortens the clip: check again on its length
            first = plan
            plan = plan_edit(clip, pipe.config.sample_rate, video, args.audio, plan.op, region, plan.box,
                             args.instruction, cot, None, args.object_time, vocab)
            plan = dataclasses.replace(plan, instruction=first.instruction)  # a clicked scene object's class
        else:  # the same checks hold: only bring the audio to the model's rate
            wav, notes, _ = load_existing_audio(args.audio, clip, pipe.config.sample_rate, plan.op)
            plan = dataclasses.replace(plan, audio=wav, notes=tuple(notes))
        for note in plan.notes:
            print(f"prismaudio: warning: {note}", file=sys.stderr)
        if encoder is not None:
            print(f"prismaudio: note: {name}.mp4 re-encodes the video track ({encoder})", file=sys.stderr)
        bars: list[Any] = []

        def progress(i: int, total: int) -> None:
            from tqdm import tqdm

            if not bars:
                bars.append(tqdm(total=total, desc=f"{plan.op}", unit="step", disable=args.quiet, leave=False))
            bars[0].update(1)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the plan's notes were printed above
            result = edit(pipe, video, args.audio, plan.op, cot=cot, seed=args.seed, steps=args.steps, cfg=args.cfg,
                          planner=None if args.planner == "none" else args.planner, progress=progress, status=say,
                          plan=plan, placement=args.placement)
        for bar in bars:
            bar.close()
        record = {"op": plan.op, "region": [plan.region.start, plan.region.end],
                  "box": plan.box.as_list() if plan.box is not None else None,
                  "instruction": args.instruction, "object": plan.instruction.object.name
                  if plan.instruction is not None and plan.instruction.object is not None else None,
                  "placement": args.placement if plan.op == "refine" else None,
                  "seed": args.seed, "notes": list(plan.notes)}
        try:
            save_wav(staging.path(f"{name}.wav"), result.audio, result.sample_rate)
            mux_audio(video, result.audio, result.sample_rate, staging.path(f"{name}.mp4"))
            if result.plan is not None:
                staging.path(f"{name}.cot.txt").write_text(result.plan.render("multi") + "\n", encoding="utf-8")
                staging.path(f"{name}.cot.json").write_text(result.plan.to_json() + "\n", encoding="utf-8")
            staging.path(f"{name}.edit.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            written = staging.publish()
        except OSError as e:
            raise PrismAudioError(f"cannot write the outputs into {args.out}: {e.strerror or e}; nothing was written") from None
    if not args.quiet:
        for p in written:
            print(p)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m prismaudio.edit ...`: the same command outside the main CLI, one-line errors."""
    parser = argparse.ArgumentParser(prog="prismaudio-edit")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["edit", *(sys.argv[1:] if argv is None else argv)])
    import warnings

    from ..cli import one_line

    warnings.formatwarning = lambda message, category, *a, **k: f"prismaudio: warning: {message}\n"
    try:
        return run(args)
    except PrismAudioError as e:
        print(f"prismaudio: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:
        from ..io.files import os_error_line

        print(f"prismaudio: error: {os_error_line(e)}", file=sys.stderr)
        return 2
