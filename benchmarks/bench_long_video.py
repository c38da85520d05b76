"""Issue 18 item 3/4 for long videos: windowed generation (`prismaudio.longform`) measured against
the procedural ground truth, and its time and memory on a 10-minute video.

    python benchmarks/bench_long_video.py [--model DIR|preset:NAME] [--n-long 2] [--long-duration 60]
        [--n-short 20] [--steps N] [--planner offline|none] [--seams context,crossfade]
        [--timing 60,300,600] [--timing-model preset:tiny] [--out runs/bench_long_video.json]

Quality: 60 s videos vs 4 s clips of the procedural test split. `--long-source concat` (default)
makes each 60 s video from 15 consecutive 4 s test clips (picture, sound and scene graph joined
end to end): the same content alone and inside a long video, so the comparison isolates the
windowing (the generation windows straddle the clip cuts). `--long-source synth` uses
`prismaudio synth --duration 60` clips instead: a synth scene has <= 4 sources with <= 3 events
each whatever its length, so a 60 s clip holds ~3-10 events and most windows have none to score.

* per evaluation segment (the long track cut into consecutive segments of the model's window
  length; the 4 s clips are one segment each): the share of ground-truth events with a detected
  onset within 40 ms and the median onset error (`metrics.groundtruth.onset_errors`), and class
  recall of the sources sounding in the segment (the semantic judge's posterior > 0.5;
  `groundtruth.class_recall`). Target: the long video's per-segment means within 10 % of the 4 s
  clips' (a 60 s synth clip has <= ~10 events, so most of its segments hold none: those count for
  class recall only).
* seams: spectral flux (positive log-magnitude STFT differences) within +-50 ms of each seam (where
  a window's new audio begins) divided by the flux elsewhere; the same ratio on the ground-truth
  audio at the same times is the reference (1.0 = the seams stand out no more than the sound does).
  The global ratio is dominated by any event that happens to fall near a seam in sparse audio, so
  the local one is reported too: per seam, the flux within +-50 ms over the flux 50-500 ms away,
  median over seams.
  Reported per seam mode: "context" (the default: the previous tail as audio context) and
  "crossfade" (independent windows, equal-power crossfade).

Time and memory: for each --timing duration D, a fresh process generates sound for a D-second
moving-square test pattern (--timing-size px, 25 fps, written frame by frame) with --timing-model
and reports wall time, windows, frames decoded and peak RSS (`resource.getrusage`). The frames are
streamed, so peak RSS minus the output track (8 bytes per stereo sample) stays flat with D.

On a random model (`preset:tiny`) the quality numbers are meaningless: the smoke run only checks
that the benchmark runs end to end; the real numbers come from the trained model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

RECALL_P = 0.5  # a class counts as heard when the judge's posterior exceeds this
ONSET_MS = 40.0
SEAM_MS = 50.0
TOLERANCE = 0.10  # "within 10 % of a 4 s clip's"


# ------------------------------------------------------------------------------ measures
def load_wav(path: Path) -> tuple[torch.Tensor, int]:
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return torch.from_numpy(x.T.copy()), int(sr)


def segment_scene(scene: dict, a: float, b: float) -> dict:
    """The scene restricted to [a, b) on a clock starting at a: events inside, and the sources
    sounding there (an impact / tonal source with an event inside, a continuous / texture one
    started before b)."""
    sources = []
    for s in scene["sources"]:
        events = [dict(e, time=e["time"] - a) for e in s["events"] if a <= e["time"] < b]
        sustained = s["family"] in ("continuous", "texture") and min(e["time"] for e in s["events"]) < b
        if events or sustained:
            sources.append(dict(s, events=events))
    return dict(scene, sources=sources, duration=b - a)


def spectral_flux(audio: torch.Tensor, sr: int, hop: int) -> np.ndarray:
    """Per-frame flux of the mono mix: sum over bins of the positive rise of log(1 + |STFT|)."""
    mono = audio.float().mean(0)
    spec = torch.stft(mono, n_fft=4 * hop, hop_length=hop, window=torch.hann_window(4 * hop), center=True,
                      return_complex=True).abs()
    logm = torch.log1p(spec)
    flux = (logm[:, 1:] - logm[:, :-1]).clamp_min(0).sum(0)
    return torch.cat([flux[:1] * 0, flux]).numpy()


def seam_ratio(audio: torch.Tensor, sr: int, seams_s: list[float], radius_ms: float = SEAM_MS) -> float:
    """Mean flux within `radius_ms` of the seams / mean flux elsewhere (NaN without seams)."""
    if not seams_s:
        return math.nan
    hop = max(1, sr // 125)  # 8 ms frames
    flux = spectral_flux(audio, sr, hop)
    t = np.arange(len(flux)) * hop / sr
    near = np.zeros(len(flux), bool)
    for s in seams_s:
        near |= np.abs(t - s) <= radius_ms / 1000
    if not near.any() or near.all():
        return math.nan
    rest = float(flux[~near].mean())
    return float(flux[near].mean()) / rest if rest > 0 else math.nan


def local_seam_ratio(audio: torch.Tensor, sr: int, seams_s: list[float], radius_ms: float = SEAM_MS,
                     around_ms: float = 500.0) -> float:
    """Median over seams of (flux within `radius_ms`) / (flux between `radius_ms` and `around_ms` away)."""
    if not seams_s:
        return math.nan
    hop = max(1, sr // 125)
    flux = spectral_flux(audio, sr, hop)
    t = np.arange(len(flux)) * hop / sr
    ratios = []
    for s in seams_s:
        d = np.abs(t - s)
        near, ring = flux[d <= radius_ms / 1000], flux[(d > radius_ms / 1000) & (d <= around_ms / 1000)]
        if len(near) and len(ring) and ring.mean() > 0:
            ratios.append(float(near.mean() / ring.mean()))
    return float(np.median(ratios)) if ratios else math.nan


class Judge:
    """The semantic judge's class posteriors, by class name."""

    def __init__(self, path: Path | None) -> None:
        from prismaudio.metrics.judges import load_judge
        from prismaudio.metrics.offline import judge_path

        self.judge = load_judge(judge_path("semantic", path))

    @torch.no_grad()
    def heard(self, audio: torch.Tensor, sr: int) -> list[str]:
        p = self.judge.class_posteriors(audio.unsqueeze(0), sr)[0]
        return [c for c, v in zip(self.judge.classes, p.tolist()) if v > RECALL_P]


def segment_measures(audio: torch.Tensor, sr: int, scene: dict, judge: Judge) -> dict[str, Any]:
    """Onset shares / errors and class recall of one segment (NaN where the segment has nothing to score)."""
    from prismaudio.metrics.groundtruth import class_recall, onset_errors

    n_events = sum(len(s["events"]) for s in scene["sources"])
    errs = onset_errors(audio, sr, scene).value if n_events else []
    errs = errs if isinstance(errs, list) else [math.nan] * n_events
    e = np.asarray(errs, float)
    hit = e[np.isfinite(e)]
    recall = class_recall(judge.heard(audio, sr), scene) if scene["sources"] else None
    return {"events": n_events,
            "onsets_within_40ms": float(np.mean(np.nan_to_num(e, nan=np.inf) <= ONSET_MS)) if n_events else math.nan,
            "onset_error_ms": float(np.median(hit)) if len(hit) else math.nan,
            "class_recall": recall.value if recall is not None and recall.reason is None else math.nan}


def _mean(values: list[float]) -> float:
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


def summarise(segments: list[dict]) -> dict[str, float]:
    return {"segments": len(segments), "events": int(sum(s["events"] for s in segments)),
            "onsets_within_40ms": _mean([s["onsets_within_40ms"] for s in segments]),
            "onset_error_ms": _mean([s["onset_error_ms"] for s in segments]),
            "class_recall": _mean([s["class_recall"] for s in segments])}


def within(long: float, short: float, higher_is_better: bool = True) -> bool | None:
    """Whether the long video's value is within TOLERANCE of the short clips' (or better)."""
    if math.isnan(long) or math.isnan(short):
        return None
    if higher_is_better:
        return bool(long >= (1 - TOLERANCE) * short - 1e-9)
    return bool(long <= (1 + TOLERANCE) * short + 1e-9)


# ------------------------------------------------------------------------------ quality
def synth_clips(root: Path, n: int, duration: float, args) -> list[dict]:
    from prismaudio.procedural.synth.writer import run_synth

    run_synth(root, n, seed=args.synth_seed, split="test", workers=1, duration=duration, size=args.size,
              progress=False)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [{"row": r, "video": root / r["video"], "wav": root / r["audio"]} for r in rows if r.get("split") == "test"]


def concat_clips(clips: list[dict], out: Path) -> dict:
    """One long video of `clips` end to end (H.264 frames re-encoded, the WAVs joined) and the
    scene graph of each part with its start time: {"video", "audio", "parts": [(start_s, scene)]}."""
    import av
    import soundfile as sf

    fps = clips[0]["row"]["scene"]["fps"]
    parts, audio, t = [], [], 0.0
    with av.open(str(out / "long.mp4"), "w") as dst:
        v = None
        n = 0
        for c in clips:
            with av.open(str(c["video"])) as src:
                for frame in src.decode(video=0):
                    if v is None:
                        v = dst.add_stream("libx264", rate=int(fps))
                        v.width, v.height, v.pix_fmt = frame.width, frame.height, "yuv420p"
                        v.options = {"preset": "ultrafast", "crf": "12", "keyint": str(int(2 * fps))}
                        v.codec_context.time_base = Fraction(1, int(fps))
                    img = frame.reformat(format="yuv420p")
                    img.pts, img.time_base = n, v.codec_context.time_base
                    n += 1
                    for pkt in v.encode(img):
                        dst.mux(pkt)
            wav, sr = load_wav(c["wav"])
            parts.append((t, c["row"]["scene"]))
            audio.append(wav)
            t += wav.shape[1] / sr
        for pkt in v.encode(None):
            dst.mux(pkt)
    track = torch.cat(audio, dim=1)
    sf.write(str(out / "long.wav"), track.T.numpy(), sr, subtype="PCM_16")
    return {"video": out / "long.mp4", "audio": out / "long.wav", "parts": parts}


def long_inputs(shorts: list[dict], args, tmp: Path) -> list[dict]:
    """The long videos with, per evaluation segment, (start, end, scene on the segment's clock)."""
    per = max(1, round(args.long_duration / args.short_duration))
    out = []
    if args.long_source == "concat":
        for k in range(args.n_long):
            group = shorts[k * per: (k + 1) * per]
            if len(group) < per:
                break
            d = tmp / f"long{k}"
            d.mkdir()
            j = concat_clips(group, d)
            segs = [(a, a + sc["duration"], sc) for a, sc in j["parts"]]
            out.append({"id": f"concat{k}", "video": j["video"], "wav": j["audio"], "segments": segs})
        return out
    for c in synth_clips(tmp / "long", args.n_long, args.long_duration, args):
        scene, w = c["row"]["scene"], args.short_duration
        n_seg = math.floor(scene["duration"] / w + 1e-9)
        segs = [(k * w, (k + 1) * w, segment_scene(scene, k * w, (k + 1) * w)) for k in range(n_seg)]
        out.append({"id": c["row"]["id"], "video": c["video"], "wav": c["wav"], "segments": segs})
    return out


def quality(pipe, args, judge: Judge, tmp: Path) -> dict[str, Any]:
    from prismaudio.longform import LongformConfig, generate_long

    planner = None if args.planner == "none" else args.planner
    per = max(1, round(args.long_duration / args.short_duration))
    n_short = max(args.n_short, per * args.n_long) if args.long_source == "concat" else args.n_short
    shorts = synth_clips(tmp / "short", n_short, args.short_duration, args)
    longs = long_inputs(shorts, args, tmp)
    t0 = time.perf_counter()
    short_segments = []
    for c in shorts:
        r = pipe.generate(c["video"], steps=args.steps, cfg_scale=args.cfg, seed=args.seed, planner=planner)
        short_segments.append(segment_measures(r.audio, r.sample_rate, c["row"]["scene"], judge))
    out: dict[str, Any] = {"window_s": pipe.config.duration, "long_source": args.long_source,
                           "short": summarise(short_segments), "short_seconds": round(time.perf_counter() - t0, 2),
                           "modes": {}}
    for mode in [m.strip() for m in args.seams.split(",") if m.strip()]:
        cfg = LongformConfig(use_context=mode == "context")
        segments, per_clip = [], []
        ratios: dict[str, list[float]] = {"gen": [], "truth": [], "gen_local": [], "truth_local": []}
        t0 = time.perf_counter()
        for c in longs:
            r = generate_long(pipe, c["video"], steps=args.steps, cfg_scale=args.cfg, seed=args.seed,
                              planner=planner, config=cfg)
            sr = r.sample_rate
            ref, ref_sr = load_wav(c["wav"])
            clip_segments = [segment_measures(r.audio[:, round(a * sr): round(b * sr)], sr, sc, judge)
                             for a, b, sc in c["segments"] if b <= r.duration + 1e-6]
            seams = [(w.start + w.keep) / sr for w in r.windows[1:]]
            row = {"id": c["id"], "windows": len(r.windows), "seams": r.seams,
                   "seam_flux_ratio": seam_ratio(r.audio, sr, seams),
                   "seam_flux_ratio_truth": seam_ratio(ref, ref_sr, seams),
                   "seam_flux_local": local_seam_ratio(r.audio, sr, seams),
                   "seam_flux_local_truth": local_seam_ratio(ref, ref_sr, seams), "segments": clip_segments}
            for key, name in (("gen", "seam_flux_ratio"), ("truth", "seam_flux_ratio_truth"),
                              ("gen_local", "seam_flux_local"), ("truth_local", "seam_flux_local_truth")):
                ratios[key].append(row[name])
            segments += clip_segments
            per_clip.append(row)
        s = summarise(segments)
        ref_s = out["short"]
        out["modes"][mode] = {
            "long": s, "seam_flux_ratio": _mean(ratios["gen"]), "seam_flux_ratio_truth": _mean(ratios["truth"]),
            "seam_flux_local": _mean(ratios["gen_local"]), "seam_flux_local_truth": _mean(ratios["truth_local"]),
            "within_10pct": {"onsets_within_40ms": within(s["onsets_within_40ms"], ref_s["onsets_within_40ms"]),
                             "onset_error_ms": within(s["onset_error_ms"], ref_s["onset_error_ms"], False),
                             "class_recall": within(s["class_recall"], ref_s["class_recall"])},
            "seconds": round(time.perf_counter() - t0, 2), "per_clip": per_clip}
    return out


# ------------------------------------------------------------------------------ time and memory
def write_test_pattern(path: Path, seconds: float, size: int, fps: int = 25) -> Path:
    """A moving bright square on gray, H.264, written frame by frame (constant memory)."""
    import av

    n = int(seconds * fps)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "28", "keyint": str(2 * fps)}
        base = np.full((size, size, 3), 90, np.uint8)
        side = max(2, size // 8)
        for i in range(n):
            img = base.copy()
            x = int((size - side) * (0.5 + 0.5 * math.sin(2 * math.pi * i / (3 * fps))))
            y = int((size - side) * (i % (2 * fps)) / (2 * fps))
            img[y: y + side, x: x + side] = 230
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def timing_child(video: str, model: str | None, steps: int) -> dict[str, Any]:
    """Run in a fresh process: one windowed generation, its time and the process's peak RSS."""
    import resource

    from prismaudio.cli import load_pipeline
    from prismaudio.longform import generate_long

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pipe = load_pipeline(model)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = generate_long(pipe, video, steps=steps, planner=None)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"duration_s": r.duration, "windows": len(r.windows), "seams": r.seams, "seconds": round(seconds, 2),
            "seconds_per_window": round(seconds / len(r.windows), 4), "frames_decoded": r.frames_decoded,
            "peak_rss_mib": round(peak / 1024, 1), "rss_after_load_mib": round(rss_model / 1024, 1),
            "rss_at_start_mib": round(rss0 / 1024, 1),
            "track_mib": round(r.audio.numel() * 4 / 2**20, 1),
            "peak_rss_minus_track_mib": round(peak / 1024 - r.audio.numel() * 4 / 2**20, 1)}


def timing(args, tmp: Path) -> list[dict[str, Any]]:
    out = []
    for d in [float(x) for x in args.timing.split(",") if x.strip()]:
        video = write_test_pattern(tmp / f"pattern_{int(d)}.mp4", d, args.timing_size)
        cmd = [sys.executable, __file__, "--timing-child", str(video), "--steps", str(args.timing_steps)]
        if args.timing_model:
            cmd += ["--model", args.timing_model]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            raise SystemExit(f"bench_long_video: timing run for {d:g} s failed: {res.stderr.strip()[-500:]}")
        row = json.loads(res.stdout.strip().splitlines()[-1])
        row["video_mib"] = round(video.stat().st_size / 2**20, 2)
        row["decoded_video_if_all_frames_mib"] = round(d * 25 * args.timing_size ** 2 * 3 / 2**20, 1)
        print(f"timing {d:6.0f} s: {row['windows']} windows in {row['seconds']:.1f} s, peak RSS {row['peak_rss_mib']:.0f} MiB "
              f"({row['peak_rss_minus_track_mib']:.0f} MiB without the {row['track_mib']:.0f} MiB track)", file=sys.stderr)
        video.unlink()
        out.append(row)
    return out


# ------------------------------------------------------------------------------ main
def run(args) -> dict[str, Any]:
    from prismaudio.cli import load_pipeline

    result: dict[str, Any] = {"model": args.model or "default", "steps": args.steps, "cfg": args.cfg,
                              "seed": args.seed, "planner": args.planner}
    with tempfile.TemporaryDirectory(prefix="bench-long-") as d:
        tmp = Path(d)
        if not args.skip_quality:
            pipe = load_pipeline(args.model)
            judge = Judge(Path(args.judges) if args.judges else None)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result["quality"] = quality(pipe, args, judge, tmp)
            q = result["quality"]
            print(f"4 s clips: {q['short']}")
            for mode, m in q["modes"].items():
                print(f"{mode:9s} long: {m['long']}  seam flux ratio {m['seam_flux_ratio']:.3f} "
                      f"(ground truth {m['seam_flux_ratio_truth']:.3f}), local {m['seam_flux_local']:.3f} "
                      f"(ground truth {m['seam_flux_local_truth']:.3f})  within 10 %: {m['within_10pct']}")
        if args.timing:
            result["timing"] = timing(args, tmp)
            result["timing_model"] = args.timing_model or "default"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory or preset:NAME (default: the shipped model)")
    p.add_argument("--n-long", type=int, default=2, help="long test videos")
    p.add_argument("--long-source", choices=["concat", "synth"], default="concat",
                   help="long videos made of consecutive 4 s test clips (default) or synth --duration 60 clips")
    p.add_argument("--long-duration", type=float, default=60.0)
    p.add_argument("--n-short", type=int, default=30, help="4 s test clips (concat: at least 15 per long video)")
    p.add_argument("--short-duration", type=float, default=4.0)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--synth-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--planner", default="offline", help="offline (per window) or none")
    p.add_argument("--seams", default="context,crossfade", help="seam modes to measure")
    p.add_argument("--judges", default=None, help="semantic judge directory (default: the shipped judges asset)")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--timing", default="60,600", help="comma-separated video lengths (s) for time / memory ('' = none)")
    p.add_argument("--timing-model", default="preset:tiny", help="model for the time / memory runs")
    p.add_argument("--timing-steps", type=int, default=2)
    p.add_argument("--timing-size", type=int, default=256, help="test pattern side in px")
    p.add_argument("--timing-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default="runs/bench_long_video.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    if a.timing_child:
        print(json.dumps(timing_child(a.timing_child, a.model, a.steps or 2)))
    else:
        run(a)
