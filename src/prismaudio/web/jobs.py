"""The web demo's work, free of any UI: its temporary folder, upload checks, planning and one
generation job (WAV + MP4 + spectrogram + CoT JSON), all through the same functions as
`prismaudio generate` (cli.resolve_cot / planner_options, io.audio, io.video, io.spectrogram).

Everything the demo writes lives in one `Workspace` folder, removed when the server stops.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cot import MODULES, CoT
from ..errors import PrismAudioError

# the video suffixes `prismaudio generate FOLDER` accepts
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".webm", ".avi")
Progress = Callable[[float, str], None]
MB = 1024 * 1024  # upload limits are in MiB, as gradio's own size check counts them


class Workspace:
    """One private temporary folder: gradio's uploads/cache (`gradio/`), our jobs (`jobs/<n>/`) and
    the process's other temporary files (`tmp/`).

    Old jobs beyond `keep_jobs` are deleted as new ones start, so a long-running demo's disk use
    stays bounded; `close()` removes the whole folder.
    """

    def __init__(self, parent: str | Path | None = None, keep_jobs: int = 16) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="prismaudio-demo-", dir=parent)).resolve()
        self.gradio_dir = self.root / "gradio"
        self.jobs_dir = self.root / "jobs"
        self.tmp_dir = self.root / "tmp"
        for d in (self.gradio_dir, self.jobs_dir, self.tmp_dir):
            d.mkdir()
        self.keep_jobs = max(1, int(keep_jobs))
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def new_job(self) -> Path:
        with self._lock:
            job = self.jobs_dir / f"{next(self._count):05d}"
            job.mkdir()
            old = sorted(p for p in self.jobs_dir.iterdir() if p.is_dir())[: -self.keep_jobs]
        for p in old:
            shutil.rmtree(p, ignore_errors=True)
        return job

    def contains(self, path: str | Path) -> bool:
        return Path(path).resolve().is_relative_to(self.root)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def human_size(n: int) -> str:
    return f"{n / MB:.3g} MB" if n >= MB else f"{n / 1024:.3g} KB"


def check_video(path: str | Path | None, max_bytes: int) -> Any:
    """The upload as a probed video (`io.video.VideoInfo`), or a PrismAudioError saying why not."""
    from ..io.video import probe_video

    if path is None:
        raise PrismAudioError("no video: upload one or pick the example")
    p = Path(path)
    if not p.is_file():
        raise PrismAudioError(f"{p.name} is not a file")
    size = p.stat().st_size
    if size > max_bytes:
        raise PrismAudioError(f"{p.name} is {human_size(size)}; this demo accepts videos up to "
                              f"{human_size(max_bytes)} (--max-upload-mb)")
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise PrismAudioError(f"{p.name} is not a video file (accepted: {' '.join(VIDEO_SUFFIXES)})")
    try:
        return probe_video(p)
    except PrismAudioError as e:  # its message names the server-side path: the user knows the file by its name
        raise PrismAudioError(f"{p.name} is not a readable video: {str(e).replace(str(p), p.name)}") from None


def plan_cot(video: str | Path, planner: str, options: str = "", caption: str = "") -> tuple[CoT, tuple[str, ...]]:
    """The planner's CoT for the video, exactly as `prismaudio cot --planner NAME` plans it, and the
    warnings it raised on the way (e.g. footage outside what the offline planner knows), for the page.

    `options` holds `key=value` pairs (space separated), the `--planner-opt` items.
    """
    from ..cli import resolve_cot

    if planner == "none":
        raise PrismAudioError("planner 'none' plans nothing; choose offline, openai or local")
    args = argparse.Namespace(cot=None, planner=planner, planner_opt=(options or "").split(),
                              caption=(caption or "").strip() or None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cot = resolve_cot(args, Path(video))
    return cot, tuple(dict.fromkeys(str(w.message) for w in caught))


def cot_from_boxes(*parts: str) -> CoT | None:
    """The four edited boxes as a CoT (None when all are blank: the unconditioned text)."""
    if len(parts) != len(MODULES):
        raise PrismAudioError(f"expected {len(MODULES)} CoT parts, got {len(parts)}")
    parts = tuple((p or "").strip() for p in parts)
    if not any(parts):
        return None
    return CoT(**dict(zip(MODULES, parts)))


def cot_from_text(text: str) -> CoT | None:
    """A CoT typed as text, read as `generate --cot TEXT` reads it: labelled text, Markdown or JSON
    (missing parts left empty), anything else split by the rule-based decoupler. Unlike the CLI's
    `--cot`, `@FILE` is never read: the text comes from a browser."""
    from ..cot import CoTParseError, rule_based_decouple

    if not (text or "").strip():
        return None
    try:
        return CoT.parse(text)
    except CoTParseError as e:
        if any(v.strip() for v in (e.partial or {}).values()):
            return CoT.parse(text, allow_missing=True)
        return rule_based_decouple(text)


@dataclass(frozen=True)
class JobResult:
    folder: Path
    wav: Path
    mp4: Path
    png: Path
    cot_json: Path | None
    duration: float
    seconds: float  # wall time of the job
    notes: tuple[str, ...] = ()  # warnings raised while generating, shown in the page

    @property
    def downloads(self) -> list[str]:
        return [str(p) for p in (self.wav, self.mp4, self.cot_json) if p is not None]


class Generator:
    """One loaded pipeline shared by every browser session; jobs run one at a time."""

    def __init__(self, pipe: Any, workspace: Workspace, cot_style: str = "multi") -> None:
        self.pipe = pipe
        self.workspace = workspace
        self.cot_style = cot_style
        self._lock = threading.Lock()

    def run(self, video: str | Path, cot: CoT | None, steps: int, cfg: float, seed: int,
            progress: Progress | None = None, name: str | None = None) -> JobResult:
        """Generate, then write `<name>.wav/.mp4/.png/.cot.json` into a fresh job folder."""
        from ..io.audio import save_wav
        from ..io.spectrogram import save_spectrogram_png
        from ..io.video import mux_audio

        steps, seed = int(steps), int(seed)
        if steps <= 0:
            raise PrismAudioError(f"steps must be a positive integer, got {steps}")
        report = progress or (lambda frac, desc: None)
        video = Path(video)
        name = name or video.stem
        t0 = time.perf_counter()
        with self._lock:
            report(0.0, "encoding the video and the CoT")

            def step(i: int, total: int) -> None:
                report(0.05 + 0.85 * i / total, f"sampling step {i}/{total}")

            text = cot.render(self.cot_style) if cot is not None else ""
            with warnings.catch_warnings(record=True) as caught:  # e.g. what the text encoder's limit cut
                warnings.simplefilter("always")
                result = self.pipe.generate(video, cot=text, seed=seed, steps=steps, cfg_scale=float(cfg),
                                            progress=step)
        notes = tuple(dict.fromkeys(str(w.message) for w in caught))
        report(0.92, "writing WAV, MP4 and spectrogram")
        job = self.workspace.new_job()
        wav, mp4, png = job / f"{name}.wav", job / f"{name}.mp4", job / f"{name}.png"
        save_wav(wav, result.audio, result.sample_rate)
        mux_audio(video, result.audio, result.sample_rate, mp4)
        save_spectrogram_png(png, result.audio, result.sample_rate, title=f"{name}  seed {seed}")
        cot_json = None
        if cot is not None:
            cot_json = job / f"{name}.cot.json"
            cot_json.write_text(cot.to_json() + "\n", encoding="utf-8")
        report(1.0, "done")
        return JobResult(job, wav, mp4, png, cot_json, result.duration, time.perf_counter() - t0, notes)
