"""Throughput of the metric suite and of the four rewards (issue 4 targets), on this machine.

1. `prismaudio evaluate` over N clips of 4 s (default 1,000) of a procedural corpus, one generated
   system (the reference audio delayed by 60 ms, every other clip with its channels swapped, so no
   metric is trivially zero) plus the GT row, every column the offline judges produce, GCC in
   `paper` mode; the exact BEWO GCC track is timed separately on a subset and extrapolated.
2. BEWO GCC (`--spatial-mode bewo`): seconds per track of the original implementation
   (`itd_track_bewo_reference`, three float32 FFTs per frame) and of the fast exact one
   (`itd_track_bewo`: the numba backend when installed, and the torch backend on the same clip),
   same clips, same run, interleaved; identity (max |diff| of the tracks: 0.0, NaN where silent on
   both sides) on every clip, how many frames the fast path handed back to the reference
   arithmetic, and the projected time of 1,000 clips of 4 s for one system, with and without the
   reference-track cache. `--bewo-only` runs just this part (default: 20 clips of the corpus).
3. The four rewards (semantic, temporal, aesthetic, spatial) on a group of 16 clips vs the time the
   `mini` DiT takes to sample those 16 clips with 24 steps and CFG (random weights: same FLOPs).

    python benchmarks/bench_metrics.py --corpus /tmp/judge_corpus [--n 1000] [--judges DIR (default: the shipped judges asset)]
    python benchmarks/bench_metrics.py --corpus /tmp/bewo_corpus --bewo-only [--bewo-n 20] [--threads 1]

The corpus is made with `prismaudio synth --out DIR --n 1000` if it does not exist.
Writes runs/bench_metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from prismaudio.resources import asset_path

ROOT = Path(__file__).resolve().parents[1]


def make_generated(corpus: Path, rows: list[dict], out: Path) -> None:
    from prismaudio.io.audio import load_audio, save_wav

    out.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        dst = out / f"{r['id']}.wav"
        if dst.exists():
            continue
        audio, sr = load_audio(corpus / r["audio"], sample_rate=None, channels=2)
        d = int(0.06 * sr)
        audio = torch.nn.functional.pad(audio, (d, 0))[:, : audio.shape[-1]]
        if i % 2:
            audio = audio.flip(0)
        save_wav(dst, audio, sr)


def bench_evaluate(corpus: Path, n: int, judges: Path) -> dict:
    from prismaudio.io.audio import load_audio
    from prismaudio.metrics.evaluate import evaluate
    from prismaudio.metrics.spatial import itd_track_bewo

    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()][:n]
    manifest = ROOT / "runs" / "bench_metrics_manifest.jsonl"
    manifest.parent.mkdir(exist_ok=True)
    manifest.write_text("".join(json.dumps({**r, "video": str(corpus / r["video"]), "audio": str(corpus / r["audio"])})
                                + "\n" for r in rows))
    gen = ROOT / "runs" / "bench_metrics_generated"
    make_generated(corpus, rows, gen)
    t = time.perf_counter()
    report, _ = evaluate(manifest, {"delayed": gen}, split="all", spatial_mode="paper", progress=False,
                         judges_dir=judges)
    t_eval = time.perf_counter() - t
    sub = rows[: min(10, len(rows))]
    t = time.perf_counter()
    for r in sub:
        a, sr = load_audio(corpus / r["audio"], sample_rate=None, channels=2)
        itd_track_bewo(a, sr)
    per_track = (time.perf_counter() - t) / len(sub)
    return {"n_clips": len(rows), "evaluate_paper_mode_s": round(t_eval, 1),
            "evaluate_per_clip_s": round(t_eval / len(rows), 4),
            "bewo_exact_track_s": round(per_track, 3),  # the fast exact path (itd_track_bewo)
            "bewo_exact_extra_for_n_clips_s": round(per_track * 2 * len(rows), 1),
            "markdown": report.to_markdown()}


def _track_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| over the track, inf where exactly one side is NaN (silent window), 0 where both are."""
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return float("inf")
    ok = ~torch.isnan(a)
    return float((a[ok] - b[ok]).abs().max()) if bool(ok.any()) else 0.0


def bench_bewo(corpus: Path, n: int, with_torch_backend: bool = True) -> dict:
    """Original vs fast exact BEWO track on n clips, same process, interleaved per clip: seconds per
    track (wall and process CPU), ratio, identity (max |diff| of the tracks, must be 0.0), frames
    handed back to the reference arithmetic, and the projected time of 1,000 clips of 4 s."""
    import prismaudio.metrics.spatial as sp
    from prismaudio.io.audio import load_audio
    from prismaudio.metrics import _bewo_kernel

    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()][:n]
    redone: list[int] = []
    reference_frames = sp._bewo_window_itd

    def counting(left, right):
        redone.append(left.shape[0])
        return reference_frames(left, right)

    backend = "compiled" if _bewo_kernel.AVAILABLE else "torch"
    if rows:  # compile / warm up outside the timings
        a0, sr0 = load_audio(corpus / rows[0]["audio"], sample_rate=None, channels=None)
        sp.itd_track_bewo(a0[:, :16000], sr0)
    t_ref = t_fast = c_ref = c_fast = t_torch = c_torch = 0.0
    identical, frames, redo, max_diff, max_diff_torch, per_clip = 0, 0, 0, 0.0, 0.0, []
    for r in rows:
        audio, sr = load_audio(corpus / r["audio"], sample_rate=None, channels=None)
        w, c = time.perf_counter(), time.process_time()
        ref = sp.itd_track_bewo_reference(audio, sr)
        dw, dc = time.perf_counter() - w, time.process_time() - c
        t_ref, c_ref = t_ref + dw, c_ref + dc
        redone.clear()
        sp._bewo_window_itd = counting
        try:
            w, c = time.perf_counter(), time.process_time()
            fast = sp.itd_track_bewo(audio, sr)
            fw, fc = time.perf_counter() - w, time.process_time() - c
        finally:
            sp._bewo_window_itd = reference_frames
        t_fast, c_fast = t_fast + fw, c_fast + fc
        diff = _track_diff(ref, fast)
        max_diff = max(max_diff, diff)
        identical += diff == 0.0
        n_frames = len(set(sp.bewo_window_starts(audio.shape[-1] * 16000 // sr))) * (sp.BEWO_WIN - sp.BEWO_FRAME + 1)
        frames += n_frames
        redo += sum(redone)
        clip = {"id": r["id"], "reference_s": round(dw, 3), "fast_s": round(fw, 3), "max_abs_diff": diff,
                "frames": n_frames, "frames_recomputed": sum(redone)}
        if with_torch_backend and backend == "compiled":  # the path without numba, same clip
            orig = sp._bewo_fast_frame_itd
            sp._bewo_fast_frame_itd = lambda x, s: orig(x, s, backend="torch")
            try:
                w, c = time.perf_counter(), time.process_time()
                tb = sp.itd_track_bewo(audio, sr)
                t_torch, c_torch = t_torch + time.perf_counter() - w, c_torch + time.process_time() - c
            finally:
                sp._bewo_fast_frame_itd = orig
            clip["torch_backend_max_abs_diff"] = _track_diff(ref, tb)
            max_diff_torch = max(max_diff_torch, clip["torch_backend_max_abs_diff"])
        per_clip.append(clip)
    k = max(len(rows), 1)
    cpu_track = c_fast / k
    out = {"n_clips": len(rows), "threads": torch.get_num_threads(), "backend": backend,
           "reference_s_per_track": round(t_ref / k, 3), "fast_s_per_track": round(t_fast / k, 3),
           "speedup_wall": round(t_ref / max(t_fast, 1e-9), 2),
           "reference_cpu_s_per_track": round(c_ref / k, 3), "fast_cpu_s_per_track": round(cpu_track, 3),
           "speedup_cpu": round(c_ref / max(c_fast, 1e-9), 2),
           "identical_tracks": f"{identical}/{len(rows)}", "max_abs_track_diff": max_diff,
           "frames": frames, "frames_recomputed": redo,
           # one system, 1,000 clips of 4 s: a reference and a generated track per clip, or only the
           # generated one when the reference tracks come from the cache (bewo_cache, a warm directory);
           # "2 cores": CPU seconds / 2 (the windows of a track run on a 2-thread pool)
           "projected_1000_clips_s": {
               "no_cache_1_core": round(2000 * t_fast / k, 1), "no_cache_2_cores": round(2000 * cpu_track / 2, 1),
               "ref_cached_1_core": round(1000 * t_fast / k, 1), "ref_cached_2_cores": round(1000 * cpu_track / 2, 1),
               "reference_impl_no_cache_2_cores": round(2000 * (c_ref / k) / 2, 1)},
           "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None, "per_clip": per_clip}
    if with_torch_backend and backend == "compiled":
        out.update({"torch_backend_s_per_track": round(t_torch / k, 3), "torch_backend_cpu_s_per_track": round(c_torch / k, 3),
                    "torch_backend_speedup_cpu": round(c_ref / max(c_torch, 1e-9), 2),
                    "torch_backend_max_abs_track_diff": max_diff_torch})
    return out


def bench_rewards(corpus: Path, judges: Path) -> dict:
    from prismaudio.config import preset
    from prismaudio.io.audio import load_audio
    from prismaudio.io.video import read_frames
    from prismaudio.pipeline import PrismAudioPipeline
    from prismaudio.rewards import RewardContext, compute_rewards
    from prismaudio.sampling import guided_velocity, inference_timesteps, sample_ode

    os.environ["PRISMAUDIO_JUDGES"] = str(judges)
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()][:16]
    audio = torch.stack([load_audio(corpus / r["audio"], 16000, channels=2)[0][:, :64000] for r in rows])
    frames = [read_frames(corpus / r["video"], 25, 16, duration=4.0) for r in rows]
    ctx = RewardContext(texts=[r["caption"] for r in rows], video_frames=frames, reference_audio=audio.flip(1))
    weights = {"semantic": 1.0, "temporal": 0.6, "aesthetic": 0.1, "spatial": 0.4}
    compute_rewards(None, weights, audio, 16000, ctx)  # load the judges once (not timed, as in GRPO)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        res = compute_rewards(None, weights, audio, 16000, ctx)
        times.append(time.perf_counter() - t)
    per_reward = {}
    for name in weights:
        t = time.perf_counter()
        compute_rewards([name], {name: 1.0}, audio, 16000, ctx)
        per_reward[name] = round(time.perf_counter() - t, 3)

    cfg = preset("mini")
    pipe = PrismAudioPipeline.from_config(cfg).eval()
    with torch.no_grad():
        feats = pipe.extract_features(corpus / rows[0]["video"], cot=rows[0]["caption"], duration=4.0)
        cond16 = pipe.condition(feats).repeat_interleave(16)
        noise = torch.randn(16, cfg.dit.io_channels, cfg.latent_length(4.0), generator=torch.Generator().manual_seed(0))
        t = time.perf_counter()
        sample_ode(guided_velocity(pipe.dit, cond16, cfg.sampling.cfg_scale), noise, inference_timesteps(24))
        t_dit = time.perf_counter() - t
    return {"rewards_16_s_best": round(min(times), 3), "rewards_16_s_median": round(float(np.median(times)), 3),
            "per_reward_s": per_reward, "mini_dit_sample_16x24_s": round(t_dit, 2),
            "ratio": round(min(times) / t_dit, 4), "valid": int(res.valid.sum())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="/tmp/bench_corpus")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--judges", default=str(asset_path("judges")))
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--bewo-only", action="store_true", help="only the BEWO before/after part")
    ap.add_argument("--bewo-n", type=int, default=20, help="clips for the BEWO before/after part")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-torch-backend", action="store_true", help="BEWO part: skip timing the torch backend")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = Path(args.corpus)
    if not (corpus / "manifest.jsonl").exists():
        n = args.bewo_n if args.bewo_only else args.n
        subprocess.run([sys.executable, "-m", "prismaudio.cli", "synth", "--out", str(corpus), "--n", str(n),
                        "--workers", "2", "--quiet"], check=True)
    out = {"threads": torch.get_num_threads()}
    out["bewo"] = bench_bewo(corpus, args.bewo_n, with_torch_backend=not args.no_torch_backend)
    print(json.dumps({k: v for k, v in out["bewo"].items() if k != "per_clip"}, indent=2), flush=True)
    if args.bewo_only:
        dst = ROOT / "runs" / "bench_bewo.json"
        dst.parent.mkdir(exist_ok=True)
        dst.write_text(json.dumps(out, indent=2) + "\n")
        return 0
    out["rewards"] = bench_rewards(corpus, Path(args.judges))
    print(json.dumps(out["rewards"], indent=2), flush=True)
    if not args.skip_evaluate:
        out["evaluate"] = bench_evaluate(corpus, args.n, Path(args.judges))
        print(out["evaluate"].pop("markdown"))
        print(json.dumps(out["evaluate"], indent=2))
    dst = ROOT / "runs" / "bench_metrics.json"
    dst.parent.mkdir(exist_ok=True)
    dst.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
