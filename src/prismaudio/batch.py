"""Generate sound for every clip of a manifest split (or every video of a folder), loading the model
once: the input `prismaudio evaluate` expects.

One `<id>.wav` per clip (written atomically, so an interrupted run never leaves a truncated file)
plus `<id>.cot.json`, the plan it was conditioned on; the plan is published just before the WAV
and removed again if the WAV cannot be written, so no plan is left without its audio. Clips whose
WAV already exists and reads as audio are skipped (a 0-byte or unreadable one is redone), so a
killed run continues where it stopped; the temp files a killed run left are swept first. A clip
that fails (broken video, planner error, a WAV that cannot be written) is reported and skipped;
the others still run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cot import CoT
from .data.manifest import ManifestRow, read_manifest
from .errors import PrismAudioError
from .io.audio import save_wav
from .io.files import atomic_path, sweep_stale
from .pipeline import PrismAudioPipeline

COT_SOURCES = ("planner", "manifest", "none")
Plan = Callable[[ManifestRow], "CoT | None"]


@dataclass
class BatchSummary:
    done: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def manifest_rows(manifest: str | os.PathLike, split: str | None, limit: int | None,
                  warn: Callable[[str], None]) -> list[ManifestRow]:
    rows, problems = read_manifest(manifest)
    for p in problems:
        warn(f"skipping bad manifest row: {p}")
    if split is not None:
        rows = [r for r in rows if r.split == split]
    rows = rows[:limit] if limit is not None else rows
    if not rows:
        where = f"of split {split!r} " if split is not None else ""
        raise PrismAudioError(f"no usable clips {where}in {manifest}")
    return rows


VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".webm", ".avi")


def folder_rows(folder: str | os.PathLike, limit: int | None = None) -> list[ManifestRow]:
    """Every video file directly in `folder` (by suffix, sorted), one row each, id = the file stem."""
    d = Path(folder)
    videos = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                    and not p.name.startswith("."))
    stems: dict[str, Path] = {}
    for p in videos:
        if p.stem in stems:
            raise PrismAudioError(f"{stems[p.stem].name} and {p.name} in {d} would both write {p.stem}.wav")
        stems[p.stem] = p
    rows = [ManifestRow(id=p.stem, video=p) for p in videos][:limit]
    if not rows:
        raise PrismAudioError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in {d}")
    return rows


def manifest_plan(row: ManifestRow) -> CoT:
    """The manifest's own (ground-truth) CoT of a clip."""
    if not row.cot:
        raise PrismAudioError(f"clip {row.id!r} has no CoT in the manifest")
    return CoT.from_corpus(row.cot)


def wav_is_done(path: Path) -> bool:
    """A finished clip: the WAV exists and its header reads with at least one frame."""
    import soundfile as sf

    try:
        return path.is_file() and sf.info(str(path)).frames > 0
    except (RuntimeError, OSError):  # soundfile's LibsndfileError is a RuntimeError
        return False


def _write_clip(out: Path, clip_id: str, cot: CoT | None, audio, sample_rate: int) -> None:
    """`<id>.cot.json` then `<id>.wav` (the done marker), each atomic; the plan goes if the WAV fails."""
    plan = out / f"{clip_id}.cot.json"
    wav = out / f"{clip_id}.wav"
    if cot is None:
        save_wav(wav, audio, sample_rate)
        return
    with atomic_path(plan) as tmp:
        Path(tmp).write_text(cot.to_json() + "\n", encoding="utf-8")
    try:
        save_wav(wav, audio, sample_rate)  # atomic: temp file, then rename
    except BaseException:
        plan.unlink(missing_ok=True)
        raise


def generate_rows(pipe: PrismAudioPipeline, rows: list[ManifestRow], out: str | os.PathLike, plan: Plan,
                  cot_style: str = "multi", steps: int = 24, cfg_scale: float | None = None, seed: int = 0,
                  progress: bool = True) -> BatchSummary:
    """`<out>/<id>.wav` for every row (the clip's own duration, the model's when unknown)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sweep_stale(out)
    summary = BatchSummary()
    for row in tqdm(rows, desc="generating", unit="clip", disable=not progress):
        if wav_is_done(out / f"{row.id}.wav"):
            summary.skipped_existing.append(row.id)
            continue
        try:
            cot = plan(row)
            text = cot.render(cot_style) if cot is not None else ""
            result = pipe.generate(row.video, cot=text, duration=row.duration, seed=seed, steps=steps,
                                   cfg_scale=cfg_scale)
        except PrismAudioError as e:
            summary.failed[row.id] = str(e)
            continue
        try:
            _write_clip(out, row.id, cot, result.audio, result.sample_rate)
        except PrismAudioError as e:
            summary.failed[row.id] = str(e)
            continue
        summary.done.append(row.id)
    return summary
