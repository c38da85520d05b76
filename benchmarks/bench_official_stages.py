"""Time and peak memory of each stage of the official pipeline at release size, for one 9 s clip.

    python benchmarks/bench_official_stages.py [--out runs/bench_official_stages.json] [--stages ...]

Why: a user planning to run the released weights needs to know where the time and the memory of
`prismaudio generate` go (issue 15, item 7), and the released encoder files are not available here.
Timing does not depend on the weight values, so every network is built at the released sizes with
random weights and driven through the code path `generate` uses:

* decode: `probe_video` + ONE `read_frames_multi` pass for 4 fps and 25 fps native uint8 frames of a
  synthetic 640x360, 29.97 fps H.264 MP4 (9 s, written here with PyAV);
* videoprism: a random transformers `VideoPrismVideoModel` of LvT-large size saved with
  `save_pretrained`, loaded and run by `prismaudio.encoders.videoprism.VideoPrismVideoEncoder`
  (36 frames at 4 fps);
* synchformer: a random `SyncVisualBranch` (768 wide, 12 blocks, 12 heads) saved in the released key
  layout, loaded and run by `SynchformerSyncEncoder` (225 frames at 25 fps = 27 segments);
* t5gemma: a random T5-Gemma L encoder (`T5GemmaEncoderModel`) in memory on ~150 random token ids
  (the CoT length; no tokenizer files exist here, tokenisation costs milliseconds);
* dit: `PrismAudioPipeline.from_preset("paper")`, condition MLPs + `sample_latents` (24 Euler steps,
  CFG 5, as `generate` and `benchmarks/bench_inference.py` run it) on random condition tokens of the
  official shapes;
* vae: the `paper` Oobleck VAE decoding 194 latent frames (9 s);
* mux: `save_wav` + `mux_audio` of 9 s of 44.1 kHz stereo into the MP4, as the CLI writes them.

Each stage runs in its own subprocess (`--stage NAME`, same script), so its peak RSS
(`ru_maxrss`) is its own; an idle subprocess that imported the same modules gives the baseline,
and both the raw peak and peak minus baseline are reported. A stage whose full run would exceed
its budget is measured on fewer segments / steps and extrapolated linearly; such figures carry
`"extrapolated_from"`. fp32, `torch.inference_mode()`, `torch.set_num_threads(--threads)`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

STAGES = ("decode", "videoprism", "synchformer", "t5gemma", "dit", "vae", "mux")
PREPARE = ("make_video", "make_videoprism", "make_synchformer")
DURATION = 9.0
WIDTH, HEIGHT, FPS = 640, 360, Fraction(30000, 1001)
TEXT_TOKENS = 150  # ~ one CoT plan in T5-Gemma tokens; the DiT stage uses the same text length
SYNC_PROBE_SEGMENTS = 3

# Release sizes. VideoPrism LvT-large as converted for transformers (videoprism-lvt-large-f8r288:
# 8 frames; T = 36 always interpolates the temporal positions, so 8 vs 16 changes no cost).
VIDEOPRISM = {"image_size": 288, "num_frames": 8, "tubelet_size": [1, 18, 18], "hidden_size": 1024,
              "num_attention_heads": 16, "intermediate_size": 4096, "num_spatial_layers": 24,
              "num_temporal_layers": 4, "num_auxiliary_layers": 2}
SYNCHFORMER = {"dim": 768, "depth": 12, "heads": 12}
# google/t5gemma-l-l-ul2-it encoder (T5 "large" shape under Gemma 2): 570,524,672 values with these.
T5GEMMA = {"vocab_size": 256000, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24,
           "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 64, "query_pre_attn_scalar": 64,
           "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}


# --------------------------------------------------------------------------------------------------
# Inside a stage subprocess
# --------------------------------------------------------------------------------------------------
def import_all(threads: int) -> None:
    """The modules every stage imports, so the idle baseline holds the same libraries."""
    import av  # noqa: F401
    import torch
    import transformers  # noqa: F401
    from transformers import T5GemmaEncoderModel, VideoPrismVideoModel  # noqa: F401

    import prismaudio.encoders.synchformer
    import prismaudio.encoders.videoprism
    import prismaudio.io.audio
    import prismaudio.io.video
    import prismaudio.pipeline  # noqa: F401

    torch.set_num_threads(threads)


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def make_video(work: Path) -> dict[str, Any]:
    """A 9 s 640x360 29.97 fps H.264 MP4 with moving content (a static clip would decode unrealistically fast)."""
    import av
    import numpy as np

    path = work / "clip.mp4"
    n = round(DURATION * FPS)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 64, size=(HEIGHT, WIDTH, 1), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(n):
            img = np.stack([(xs + 4 * i) % 256, (ys + 2 * i) % 256, (xs + ys + 6 * i) % 256], -1).astype(np.uint8)
            x0 = (7 * i) % (WIDTH - 80)
            img[140:220, x0:x0 + 80] = 255
            img = img // 2 + texture
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    return {"video": str(path), "frames": n, "bytes": path.stat().st_size}


def make_videoprism(work: Path) -> dict[str, Any]:
    """A random LvT-large `VideoPrismVideoModel` written with `save_pretrained` (what the encoder loads)."""
    import torch
    from transformers import VideoPrismVideoModel, VideoPrismVisionConfig

    torch.manual_seed(0)
    model = VideoPrismVideoModel(VideoPrismVisionConfig(**VIDEOPRISM))
    d = work / "videoprism"
    model.save_pretrained(d)
    size = sum(f.stat().st_size for f in d.iterdir())
    return {"dir": str(d), "values": sum(p.numel() for p in model.parameters()), "bytes": size}


def make_synchformer(work: Path) -> dict[str, Any]:
    """A random visual branch at release size, saved in the released `vfeat_extractor.` layout."""
    import torch

    from prismaudio.encoders.synchformer import VISUAL_PREFIX, SyncVisualBranch

    torch.manual_seed(0)
    net = SyncVisualBranch(**SYNCHFORMER)
    path = work / "synchformer_state_dict.pth"
    torch.save({VISUAL_PREFIX + k: v for k, v in net.state_dict().items()}, path)
    return {"path": str(path), "values": sum(p.numel() for p in net.parameters()), "bytes": path.stat().st_size}


def stage_decode(work: Path, budget_s: float) -> dict[str, Any]:
    """probe_video + one read_frames_multi pass at 4 and 25 fps (native uint8), as extract_features does."""
    from prismaudio.io.video import FrameSpec, probe_video, read_frames_multi

    video = work / "clip.mp4"
    info, probe_s = timed(lambda: probe_video(video))
    (v, s), decode_s = timed(lambda: read_frames_multi(video, [FrameSpec(4.0, None), FrameSpec(25.0, None)],
                                                       duration=DURATION))
    return {"time_s": probe_s + decode_s, "probe_s": probe_s, "decode_s": decode_s,
            "video_duration_s": info.duration, "frames_4fps": list(v.shape), "frames_25fps": list(s.shape)}


def frames_at(work: Path, fps: float) -> Any:
    """Native uint8 frames of the clip at `fps` for a stage's input (untimed)."""
    from prismaudio.io.video import FrameSpec, read_frames_multi

    return read_frames_multi(work / "clip.mp4", [FrameSpec(fps, None)], duration=DURATION)[0]


def stage_videoprism(work: Path, budget_s: float) -> dict[str, Any]:
    """VideoPrismVideoEncoder on the saved random LvT-large: load, then 36 frames -> 36 x 1024."""
    from prismaudio.encoders.videoprism import VideoPrismVideoEncoder

    frames = frames_at(work, 4.0)[None]
    enc = VideoPrismVideoEncoder(path=str(work / "videoprism"))
    _, load_s = timed(enc._load)
    out, run_s = timed(lambda: enc(frames))
    return {"time_s": run_s, "load_s": load_s, "input": list(frames.shape), "output": list(out.shape),
            "values": sum(p.numel() for p in enc._loaded.parameters())}


def stage_synchformer(work: Path, budget_s: float) -> dict[str, Any]:
    """SynchformerSyncEncoder on the saved random release-size branch: 225 frames -> 27 segments -> 216 x 768.

    A 3-segment probe runs first; if 27 segments would exceed the budget, the figure is extrapolated.
    """
    from prismaudio.encoders.synchformer import SynchformerSyncEncoder

    frames = frames_at(work, 25.0)[None]
    enc = SynchformerSyncEncoder(path=str(work / "synchformer_state_dict.pth"), dim=SYNCHFORMER["dim"],
                                 heads=SYNCHFORMER["heads"])
    _, load_s = timed(enc._load)
    segments = enc.num_segments(frames.shape[1])
    probe_frames = enc.segment_frames + (SYNC_PROBE_SEGMENTS - 1) * enc.segment_step
    _, probe_s = timed(lambda: enc(frames[:, :probe_frames]))
    per_segment = probe_s / SYNC_PROBE_SEGMENTS
    row: dict[str, Any] = {"load_s": load_s, "segments": segments, "probe_segments": SYNC_PROBE_SEGMENTS,
                           "probe_s": probe_s, "input": list(frames.shape)}
    if per_segment * segments > budget_s:
        row.update(time_s=per_segment * segments, extrapolated_from=f"{SYNC_PROBE_SEGMENTS} segments")
    else:
        out, run_s = timed(lambda: enc(frames))
        row.update(time_s=run_s, output=list(out.shape))
    row["s_per_segment"] = row["time_s"] / segments
    return row


def stage_t5gemma(work: Path, budget_s: float) -> dict[str, Any]:
    """A random T5-Gemma L encoder (in memory) on TEXT_TOKENS random token ids -> L x 1024."""
    import torch
    from transformers import T5GemmaConfig, T5GemmaEncoderModel

    torch.manual_seed(0)
    config = T5GemmaConfig(encoder=dict(T5GEMMA), decoder=dict(T5GEMMA), vocab_size=T5GEMMA["vocab_size"])
    config.is_encoder_decoder = False
    model, build_s = timed(lambda: T5GemmaEncoderModel(config).eval().requires_grad_(False))
    ids = torch.randint(5, T5GEMMA["vocab_size"], (1, TEXT_TOKENS), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    out, run_s = timed(lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state)
    return {"time_s": run_s, "build_random_s": build_s, "tokens": TEXT_TOKENS, "output": list(out.shape),
            "values": sum(p.numel() for p in model.parameters()),
            "attn_implementation": getattr(model.config, "_attn_implementation", None)}


class _Stop(Exception):
    """Raised from the progress callback once the sampled steps suffice for an extrapolation."""


def stage_dit(work: Path, budget_s: float) -> dict[str, Any]:
    """`paper` condition MLPs + 24-step CFG sampling of 194 latents, as generate / bench_inference run it.

    The progress callback times every step; if 2 steps project past the budget, sampling stops there.
    """
    import torch

    from prismaudio.pipeline import PrismAudioPipeline

    pipe, build_s = timed(lambda: PrismAudioPipeline.from_preset("paper", seed=0))
    cfg = pipe.config
    n = cfg.latent_length(DURATION)
    g = torch.Generator().manual_seed(0)
    video = torch.randn(1, int(4 * DURATION), cfg.conditioner.video_dim, generator=g)
    text = torch.randn(1, TEXT_TOKENS, cfg.conditioner.text_dim, generator=g)
    sync = torch.randn(1, 216, cfg.conditioner.sync_dim, generator=g)
    cond, cond_s = timed(lambda: pipe.conditioner(video, text, sync, latent_length=n))
    steps, probe = cfg.sampling.steps, 2
    marks: list[float] = []

    def progress(i: int, total: int) -> None:
        marks.append(time.perf_counter())
        if i == probe and (marks[-1] - t0) / probe * total > budget_s:
            raise _Stop

    t0 = time.perf_counter()
    row: dict[str, Any] = {"build_s": build_s, "conditioner_s": cond_s, "latent_frames": n, "steps": steps,
                           "cfg_scale": cfg.sampling.cfg_scale, "text_tokens": TEXT_TOKENS,
                           "params_dit": sum(p.numel() for p in pipe.dit.parameters())}
    try:
        lat = pipe.sample_latents(cond, seed=0, steps=steps, cfg_scale=cfg.sampling.cfg_scale, progress=progress)
        row.update(sampling_s=marks[-1] - t0, output=list(lat.shape))
    except _Stop:
        row.update(sampling_s=(marks[-1] - t0) / probe * steps, extrapolated_from=f"{probe} steps")
    row["s_per_step"] = row["sampling_s"] / steps
    row["time_s"] = cond_s + row["sampling_s"]
    return row


def stage_vae(work: Path, budget_s: float) -> dict[str, Any]:
    """The `paper` Oobleck VAE decoding 194 latent frames (9 s of 44.1 kHz stereo)."""
    import torch

    from prismaudio.config import preset
    from prismaudio.model.vae import OobleckVAE

    cfg = preset("paper")
    torch.manual_seed(0)
    vae, build_s = timed(lambda: OobleckVAE(cfg.vae).eval())
    n = cfg.latent_length(DURATION)
    lat = torch.randn(1, cfg.dit.io_channels, n, generator=torch.Generator().manual_seed(0))
    audio, run_s = timed(lambda: vae.decode(lat))
    return {"time_s": run_s, "build_s": build_s, "latent": list(lat.shape), "output": list(audio.shape),
            "values": sum(p.numel() for p in vae.parameters())}


def stage_mux(work: Path, budget_s: float) -> dict[str, Any]:
    """save_wav + mux_audio of 9 s of 44.1 kHz stereo into the clip, as `prismaudio generate` writes them."""
    import torch

    from prismaudio.io.audio import save_wav
    from prismaudio.io.video import mux_audio

    sr = 44100
    audio = 0.1 * torch.randn(2, int(DURATION * sr), generator=torch.Generator().manual_seed(0))
    _, wav_s = timed(lambda: save_wav(work / "out.wav", audio, sr))
    _, mux_s = timed(lambda: mux_audio(work / "clip.mp4", audio, sr, work / "out.mp4"))
    return {"time_s": mux_s, "wav_write_s": wav_s, "mux_s": mux_s, "mp4_bytes": (work / "out.mp4").stat().st_size}


RUNNERS: dict[str, Callable[[Path, float], dict[str, Any]]] = {
    "decode": stage_decode, "videoprism": stage_videoprism, "synchformer": stage_synchformer,
    "t5gemma": stage_t5gemma, "dit": stage_dit, "vae": stage_vae, "mux": stage_mux,
}
PREPARERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "make_video": make_video, "make_videoprism": make_videoprism, "make_synchformer": make_synchformer,
}


def run_stage(name: str, work: Path, budget_s: float, threads: int, result: Path) -> None:
    """Body of a `--stage` subprocess: import, run under inference_mode, write the row with peak RSS."""
    import torch

    import_all(threads)
    if name == "baseline":
        row: dict[str, Any] = {}
    elif name in PREPARERS:  # ordinary mode: these build and save the random weights
        row = PREPARERS[name](work)
    else:
        with torch.inference_mode():
            row = RUNNERS[name](work, budget_s)
    row["peak_rss_mb"] = peak_rss_mb()
    result.write_text(json.dumps(row))


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------
def spawn(name: str, work: Path, budget_s: float, threads: int) -> dict[str, Any]:
    """Run one stage in a fresh interpreter and return its row (wall time of the whole process added)."""
    result = work / f"{name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--work", str(work),
           "--budget-s", str(budget_s), "--threads", str(threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"stage {name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    row = json.loads(result.read_text())
    row["process_wall_s"] = wall
    print(f"[{name}] " + json.dumps(row), flush=True)
    return row


def machine() -> dict[str, Any]:
    """The facts that make these figures comparable: CPU model, vector ISA, threads, library versions."""
    import av
    import torch
    import transformers

    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), [])
    return {"cpu": model, "cores": os.cpu_count(), "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
            "transformers": transformers.__version__, "pyav": av.__version__, "python": platform.python_version()}


LABELS = {"decode": "video decode (4 + 25 fps, one pass)", "videoprism": "VideoPrism LvT-large (36 frames)",
          "synchformer": "Synchformer visual (27 segments)", "t5gemma": f"T5-Gemma L encoder ({TEXT_TOKENS} tokens)",
          "dit": "DiT: condition MLPs + 24 steps CFG", "vae": "VAE decode (194 latents)", "mux": "mux AAC into MP4"}


def table(rows: dict[str, dict[str, Any]], base_mb: float) -> str:
    """A Markdown table: stage, time, load, peak RSS, peak above the idle baseline, notes."""
    lines = ["| stage | time | load / build | peak RSS | above idle baseline | note |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        load = r.get("load_s", r.get("build_s", r.get("build_random_s")))
        note = f"extrapolated from {r['extrapolated_from']}" if "extrapolated_from" in r else ""
        lines.append(f"| {LABELS[name]} | {r['time_s']:.2f} s | {'' if load is None else f'{load:.1f} s'} | "
                     f"{r['peak_rss_mb'] / 1024:.2f} GiB | {(r['peak_rss_mb'] - base_mb) / 1024:.2f} GiB | {note} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_official_stages.json"))
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sync-budget-s", type=float, default=360.0, help="extrapolate Synchformer beyond this")
    ap.add_argument("--dit-budget-s", type=float, default=180.0, help="extrapolate DiT sampling beyond this")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (random weights, ~2.2 GB)")
    ap.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage
    ap.add_argument("--budget-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage is not None:
        run_stage(args.stage, args.work, args.budget_s, args.threads, args.work / f"{args.stage}.json")
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_stages_"))
    work.mkdir(parents=True, exist_ok=True)
    budgets = {"synchformer": args.sync_budget_s, "dit": args.dit_budget_s}
    t_start = time.perf_counter()
    try:
        needs = {"make_video": True, "make_videoprism": "videoprism" in args.stages,
                 "make_synchformer": "synchformer" in args.stages}
        prepared = {name: spawn(name, work, 0.0, args.threads) for name in PREPARE if needs[name]}
        base = spawn("baseline", work, 0.0, args.threads)
        rows = {name: spawn(name, work, budgets.get(name, 0.0), args.threads) for name in args.stages}
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    for r in rows.values():
        r["peak_above_baseline_mb"] = r["peak_rss_mb"] - base["peak_rss_mb"]
    report = {"machine": machine(), "threads": args.threads, "dtype": "float32", "duration_s": DURATION,
              "video": {"width": WIDTH, "height": HEIGHT, "fps": str(FPS), "codec": "h264"},
              "weights": "random (timing does not depend on the values)",
              "sizes": {"videoprism": VIDEOPRISM, "synchformer": SYNCHFORMER, "t5gemma_encoder": T5GEMMA},
              "baseline_peak_rss_mb": base["peak_rss_mb"], "prepare": prepared, "stages": rows,
              "total_stage_time_s": sum(r["time_s"] for r in rows.values()),
              "bench_wall_s": time.perf_counter() - t_start}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nidle baseline (same imports): {base['peak_rss_mb'] / 1024:.2f} GiB peak RSS")
    print(table(rows, base["peak_rss_mb"]))
    print(f"total of the stage times: {report['total_stage_time_s']:.1f} s; written {args.out}")


if __name__ == "__main__":
    main()
