"""Writing the corpus: per clip an MP4 (H.264 + AAC stereo) and a 16-bit WAV, atomically, then
`manifest.jsonl` (rows sorted by id) once every clip is done. Clips are independent (one RNG
family per (seed, index)), so any number of worker processes gives byte-identical output.

All or nothing per clip: a clip whose WAV cannot be written loses its MP4 too, and a run that
fails (a full disk) removes the temp files and half clips of its workers and writes no manifest,
so every file left is a complete clip and a manifest, when there is one, lists only whole clips.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from ...errors import PrismAudioError
from ...io.files import atomic_path, sweep_stale
from .cot import write_cot
from .render import render_frames
from .scene import SPLITS, assign_split, clip_id, clip_rngs, sample_scene
from .sounds import render_audio

_X264 = {"preset": "ultrafast", "crf": "12", "threads": "1"}


def encode_mp4(path: Path, frames: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int) -> None:
    """H.264 (yuv420p, single-threaded x264, fixed preset: deterministic) + AAC stereo, atomically."""
    from fractions import Fraction

    with atomic_path(path) as tmp:
        with av.open(tmp, "w", format="mp4") as c:
            v = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            v.width, v.height = frames.shape[2], frames.shape[1]
            v.pix_fmt = "yuv420p"
            v.options = dict(_X264)
            v.codec_context.thread_count = 1
            a = c.add_stream("aac", rate=sample_rate, layout="stereo")
            a.bit_rate = 96_000
            a.options = {"aac_coder": "fast"}
            for i, f in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(f, format="rgb24")
                vf.pts = i
                c.mux(v.encode(vf))
            c.mux(v.encode(None))
            # one frame for the whole clip: PyAV re-chunks it to the codec's frame size itself
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio), format="fltp", layout="stereo")
            af.sample_rate, af.pts = sample_rate, 0
            c.mux(a.encode(af))
            c.mux(a.encode(None))


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    buf = io.BytesIO()  # encoded in memory, written with Python I/O: a full disk is a real OSError
    sf.write(buf, audio.T, sample_rate, subtype="PCM_16", format="WAV")
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buf.getbuffer())


def quantize16(audio: np.ndarray) -> np.ndarray:
    """The exact samples a 16-bit WAV stores, as float32 (so the MP4 carries the same content)."""
    return (np.round(np.clip(audio, -1, 1) * 32767) / 32767).astype(np.float32)


def make_clip(seed: int, index: int, cfg: dict) -> tuple[dict, np.ndarray, np.ndarray, list[np.ndarray]]:
    """(manifest row without paths, frames, 16-bit-exact audio, stems) of clip `index`."""
    split, subset = assign_split(seed, index)
    scene = sample_scene(seed, index, cfg["duration"], cfg["fps"], cfg["size"], cfg["sample_rate"],
                         subset if split == "test" else None)
    _, audio_rng, text_rng = clip_rngs(seed, index)
    audio, stems = render_audio(scene, audio_rng)
    frames = render_frames(scene)
    cap, cot, mono = write_cot(scene, text_rng)
    row = {"id": clip_id(index), "split": split, "subset": subset, "duration": scene["duration"],
           "sample_rate": scene["sample_rate"], "fps": scene["fps"], "caption": cap, "cot": cot,
           "cot_monolithic": mono, "scene": scene}
    return row, frames, quantize16(audio), stems


def _work(args) -> dict:
    seed, index, cfg, out = args
    row, frames, audio, _ = make_clip(seed, index, cfg)
    out = Path(out)
    video, wav = f"video/{row['id']}.mp4", f"audio/{row['id']}.wav"
    try:
        encode_mp4(out / video, frames, audio, cfg["fps"], cfg["sample_rate"])
        try:
            write_wav(out / wav, audio, cfg["sample_rate"])
        except BaseException:
            (out / video).unlink(missing_ok=True)
            raise
    except (OSError, RuntimeError, av.FFmpegError) as e:  # a plain, picklable error for the pool
        why = getattr(e, "strerror", None) or str(e)
        raise PrismAudioError(f"cannot write clip {row['id']} into {out}: {why}") from None
    return {"id": row["id"], "video": video, "audio": wav, **{k: v for k, v in row.items() if k != "id"}}


def select_ids(n: int, seed: int, split: str | None) -> list[int]:
    """The first `n` clip indices (of `split`, when given): ids keep their content across filters."""
    if split is None:
        return list(range(n))
    out, i = [], 0
    while len(out) < n:
        if assign_split(seed, i)[0] == split:
            out.append(i)
        i += 1
    return out


def run_synth(out_dir, n: int, seed: int, split: str | None = None, workers: int = 2, duration: float = 4.0,
              fps: float = 25, size: int = 96, sample_rate: int = 16000, progress: bool = True) -> Path:
    """Generate `n` clips into `out_dir` and return the path of its `manifest.jsonl`."""
    if split is not None and split not in SPLITS:
        raise PrismAudioError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    if int(n) != n or n < 1:
        raise PrismAudioError(f"number of clips must be a positive integer, got {n}")
    if not (duration >= 1.5 and fps > 0 and size >= 32 and sample_rate >= 8000):
        raise PrismAudioError("synth needs duration >= 1.5 s, fps > 0, size >= 32 px and sample_rate >= 8000 Hz")
    out = Path(out_dir)
    for sub in ("video", "audio"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    cfg = {"duration": float(duration), "fps": float(fps), "size": int(size), "sample_rate": int(sample_rate)}
    jobs = [(int(seed), i, cfg, str(out)) for i in select_ids(int(n), int(seed), split)]
    rows: list[dict] = []
    t0 = time.time()
    if workers <= 1:
        it = map(_work, jobs)
        pool = None
    else:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(workers)
        it = pool.imap_unordered(_work, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))
    try:
        for row in it:
            rows.append(row)
            if progress and (len(rows) % 50 == 0 or len(rows) == len(jobs)):
                rate = len(rows) / max(time.time() - t0, 1e-9)
                print(f"synth: {len(rows)}/{len(jobs)} clips ({rate:.1f} clips/s)", file=sys.stderr)
    except PrismAudioError as e:
        _stop_pool(pool, finished=False)
        _remove_half_clips(out, [clip_id(j[1]) for j in jobs], {r["id"] for r in rows})
        raise PrismAudioError(f"{e}; stopped after {len(rows)} of {len(jobs)} clips, no manifest written") from None
    except BaseException:
        _stop_pool(pool, finished=False)
        _remove_half_clips(out, [clip_id(j[1]) for j in jobs], {r["id"] for r in rows})
        raise
    _stop_pool(pool, finished=True)
    rows.sort(key=lambda r: r["id"])
    manifest = out / "manifest.jsonl"
    with atomic_path(manifest) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r, separators=(",", ":")) + "\n")
    return manifest


def _stop_pool(pool, finished: bool) -> None:
    if pool is not None:
        pool.close() if finished else pool.terminate()
        pool.join()


def _remove_half_clips(out: Path, ids: list[str], complete: set[str]) -> None:
    """After a failed run: the killed workers' temp files, and every clip of this run that is not
    a complete MP4 + WAV pair (an MP4 whose WAV never came)."""
    for sub in ("video", "audio"):
        sweep_stale(out / sub)
    for cid in ids:
        mp4, wav = out / "video" / f"{cid}.mp4", out / "audio" / f"{cid}.wav"
        if cid in complete or (mp4.is_file() and wav.is_file()):
            continue
        mp4.unlink(missing_ok=True)
        wav.unlink(missing_ok=True)
