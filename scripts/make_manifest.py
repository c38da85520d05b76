"""A training manifest for your own clips: every video of a folder (its own sound track as the
target audio) with a four-part CoT, the input of `prismaudio train configs/train/cot_mini.yaml`.

    python scripts/make_manifest.py my_clips/ [--planner offline|openai|local|none] \
        [--planner-opt base_url=http://127.0.0.1:8000/v1 --planner-opt model=qwen2.5-vl] \
        [--captions captions.csv] [--val 0.1] [--out my_clips/manifest.jsonl]

The CoT of each clip comes from `--cot-dir DIR` (`DIR/<stem>.cot.json` or `.cot.txt`, e.g. edited
outputs of `prismaudio cot`), else from the planner (the offline planner knows only the procedural
world: for real footage it writes a short neutral plan and says so, so use a VLM planner or write
the CoTs). `--captions` is a CSV of `id,caption` (the caption also guides the planner). Clips
without an audio stream are skipped with a note. A deterministic `--val` fraction goes to split
`val`, the rest to `train`. Written atomically; paths are relative to the manifest's folder.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

import av

from prismaudio.batch import VIDEO_SUFFIXES
from prismaudio.cli import planner_options
from prismaudio.cot import CoT, build_planner
from prismaudio.errors import PrismAudioError
from prismaudio.io.files import atomic_path
from prismaudio.io.video import probe_video


def has_audio(path: Path) -> bool:
    try:
        with av.open(str(path)) as c:
            return bool(c.streams.audio)
    except (av.FFmpegError, OSError):
        return False


def read_captions(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["id"]: row["caption"] for row in csv.DictReader(f)}


def given_cot(cot_dir: Path | None, stem: str) -> CoT | None:
    if cot_dir is None:
        return None
    for suffix in (".cot.json", ".cot.txt"):
        p = cot_dir / f"{stem}{suffix}"
        if p.is_file():
            return CoT.parse(p.read_text(encoding="utf-8"))
    return None


def split_of(stem: str, val: float) -> str:
    """A stable split per clip id (not per run order): the first 8 hex digits of its SHA-1."""
    return "val" if int(hashlib.sha1(stem.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < val else "train"


def make_manifest(folder: Path, out: Path, planner: str, options: dict, captions: dict[str, str],
                  cot_dir: Path | None, val: float) -> int:
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    plan = None if planner == "none" else build_planner(planner, **options)
    rows = []
    for video in videos:
        if not has_audio(video):
            print(f"make_manifest: note: {video.name} has no audio stream; skipped", file=sys.stderr)
            continue
        caption = captions.get(video.stem, "")
        cot = given_cot(cot_dir, video.stem) or (plan.plan(video, caption=caption or None) if plan else None)
        rel = Path(video).resolve().relative_to(out.parent.resolve()) if video.resolve().is_relative_to(
            out.parent.resolve()) else video.resolve()
        rows.append({"id": video.stem, "video": str(rel), "audio": str(rel), "split": split_of(video.stem, val),
                     "duration": round(float(probe_video(video).duration), 6), "caption": caption,
                     "cot": None if cot is None else json.loads(cot.to_json())})
    if not rows:
        raise PrismAudioError(f"no video with an audio stream in {folder}")
    with atomic_path(out) as tmp:
        Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="default: FOLDER/manifest.jsonl")
    ap.add_argument("--planner", default="offline")
    ap.add_argument("--planner-opt", action="append", metavar="KEY=VALUE")
    ap.add_argument("--captions", type=Path, default=None, help="CSV with columns id,caption")
    ap.add_argument("--cot-dir", type=Path, default=None, help="folder of <id>.cot.json / .cot.txt to use as is")
    ap.add_argument("--val", type=float, default=0.1, help="fraction of clips in split val (default 0.1)")
    args = ap.parse_args(argv)
    try:
        if not args.folder.is_dir():
            raise PrismAudioError(f"{args.folder} is not a folder")
        if not 0 <= args.val < 1:
            raise PrismAudioError(f"--val must be in [0, 1), got {args.val}")
        out = args.out or args.folder / "manifest.jsonl"
        n = make_manifest(args.folder, out, args.planner, planner_options(args.planner_opt),
                          read_captions(args.captions), args.cot_dir, args.val)
    except PrismAudioError as e:
        print(f"make_manifest: error: {e}", file=sys.stderr)
        return 2
    print(f"{n} clips -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
