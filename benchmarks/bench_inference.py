"""Inference benchmark: parameters, peak RSS, wall time, real-time factor, FLOP/s.

    python benchmarks/bench_inference.py [--presets mini paper] [--steps 24] [--json out.json]
    python benchmarks/bench_inference.py --dtype-compare [--dtypes fp32 bf16] [--threads 2] [--json out.json]

For each preset (random weights, batch 1, CFG on, i.e. the DiT runs on a batch of 2): time the
24-step sampler (DiT) and the VAE decode for the preset's benchmark duration (`paper` 9 s, `mini`
4 s), count analytic matmul FLOPs per DiT step, and compare the achieved FLOP/s with a plain
square matmul measured in the same process. Encoders are excluded (feature extraction is a
separate stage, as in the paper's Table 1 timing).

`--dtype-compare`: `paper` 24-step CFG-5 sampling of 9 s in each `--dtypes` IN THE SAME PROCESS
(same weights, same fixed random condition tokens of the official shapes: video 36 x 1024, text
77 x 1024, sync 216 x 768; same noise), via `PrismAudioPipeline.to(dtype=...)` +
`sample_latents` exactly as `generate` runs them. The weights are the random `paper` preset with
every parameter re-drawn like the official fixtures (official_network.md §11), because the official
init zeroes every attention / FF output and would make any dtype look exact. Reports wall time per
dtype, the speedup over the first dtype, and the relative L2 / max error of the final latents
against it. The CPU's native support matters: bf16 / fp16 matmuls are fast only with AVX-512 BF16
/ AMX; on an AVX2-only CPU they are emulated (slower than fp32), which the report states.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from prismaudio.config import ModelConfig, preset
from prismaudio.model.conditioning import ConditionTokens
from prismaudio.pipeline import PrismAudioPipeline
from prismaudio.sampling import guided_velocity, inference_timesteps, sample_ode

DURATIONS = {"paper": 9.0, "mini": 4.0, "tiny": 1.0}
TEXT_TOKENS = {"paper": 77, "mini": 40, "tiny": 16}


def dit_flops_per_forward(cfg: ModelConfig, n: int, ctx: int, tv: int) -> float:
    """Matmul FLOPs (2 per multiply-add) of one DiT forward for one sample.

    n latent frames (+1 timestep token), ctx cross-attention tokens, tv video tokens.
    """
    d, c = cfg.dit.embed_dim, cfg.dit.io_channels
    t = n + 1
    hid = cfg.dit.ff_mult * d
    block = (
        2 * t * d * 3 * d + 4 * t * t * d + 2 * t * d * d  # self-attention: qkv, scores+values, out
        + 2 * t * d * d + 2 * ctx * d * 2 * d + 4 * t * ctx * d + 2 * t * d * d  # cross-attention
        + 2 * t * d * 2 * hid + 2 * t * hid * d  # SwiGLU
    )
    embeds = 2 * (ctx + tv + n) * 2 * d * d  # to_cond / to_add / to_sync MLPs (2 layers each)
    io = 2 * n * c * c * 2 + 2 * n * c * d + 2 * t * d * c  # 1x1 convs, project in/out
    temb = 2 * (2 * cfg.dit.num_fourier_features * d + d * d)
    return float(cfg.dit.depth * block + embeds + io + temb)


def matmul_flops_per_s(size: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * size**3 * reps / (time.perf_counter() - t0)


def redraw_like_fixtures(module: torch.nn.Module, seed: int = 1234) -> None:
    """Every parameter re-drawn as the official fixtures do (§11): norm gains 1 + 0.1 N, biases
    0.02 N, other >= 2-D weights N / sqrt(fan_in), the rest (gates, embeddings) 0.5 N."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if name.endswith("freqs"):
                p.copy_(z)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * z)
            elif name.endswith("bias"):
                p.copy_(0.02 * z)
            elif p.dim() >= 2 and name.endswith("weight"):
                p.copy_(z / (p.numel() / p.shape[0]) ** 0.5)
            else:
                p.copy_(0.5 * z)


def cpu_half_support() -> str:
    """Which native low-precision matmul this CPU has (torch's own probes; private, so guarded)."""
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_tile": "_is_amx_tile_supported",
              "amx_fp16": "_is_amx_fp16_supported"}
    found = []
    for label, fn in probes.items():
        probe = getattr(torch.cpu, fn, None)  # absent in some torch builds
        if probe is not None and probe():
            found.append(label)
    return ", ".join(found) or "none (bf16/fp16 matmuls are emulated)"


def dtype_compare(dtypes: list[str], steps: int, seed: int = 0) -> dict:
    """`paper` sampling of 9 s in each dtype, same process / weights / conditions / noise."""
    from prismaudio.pipeline import INFERENCE_DTYPES

    cfg = preset("paper")
    dur = DURATIONS["paper"]
    n = cfg.latent_length(dur)
    pipe = PrismAudioPipeline.from_preset("paper", seed=0)
    redraw_like_fixtures(pipe.dit)
    redraw_like_fixtures(pipe.conditioner, seed=4321)
    g = torch.Generator().manual_seed(5678)
    video = torch.randn(1, int(4 * dur), cfg.conditioner.video_dim, generator=g)
    text = torch.randn(1, TEXT_TOKENS["paper"], cfg.conditioner.text_dim, generator=g)
    sync = torch.randn(1, 216, cfg.conditioner.sync_dim, generator=g)
    master = {k: v.clone() for k, v in pipe.state_dict().items()}  # fp32 weights, re-cast per dtype
    rows, ref = [], None
    for name in dtypes:
        pipe.load_state_dict(master)
        pipe.to(dtype=INFERENCE_DTYPES[name])
        with torch.no_grad():
            t0 = time.perf_counter()
            cond = pipe.conditioner(video, text, sync, latent_length=n)
            lat = pipe.sample_latents(cond, seed=seed, steps=steps, cfg_scale=cfg.sampling.cfg_scale)
            wall = time.perf_counter() - t0
        row = {"dtype": name, "wall_s": wall, "s_per_step": wall / steps, "finite": bool(torch.isfinite(lat).all())}
        if ref is None:
            ref, ref_wall = lat.float(), wall
        else:
            d = lat.float() - ref
            row["speedup_vs_" + dtypes[0]] = ref_wall / wall
            row["rel_l2_vs_" + dtypes[0]] = (d.norm() / ref.norm()).item()
            row["max_abs_err_vs_" + dtypes[0]] = d.abs().max().item()
        rows.append(row)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    pipe.to(dtype=torch.float32)
    return {"preset": "paper", "duration_s": dur, "latent_frames": n, "steps": steps,
            "cfg_scale": cfg.sampling.cfg_scale, "weights": "paper preset re-drawn like the official fixtures",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_half": cpu_half_support(),
            "results": rows}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench(name: str, steps: int, repeats: int) -> dict:
    cfg = preset(name)
    dur = DURATIONS[name]
    pipe = PrismAudioPipeline.from_config(cfg, seed=0)
    n = cfg.latent_length(dur)
    g = torch.Generator().manual_seed(0)
    tv, lt = max(1, int(4 * dur if name == "paper" else 8 * dur)), TEXT_TOKENS[name]
    with torch.no_grad():
        video = torch.randn(1, tv, cfg.conditioner.video_dim, generator=g)
        text = torch.randn(1, lt, cfg.conditioner.text_dim, generator=g)
        ts = 216 if name == "paper" else int(25 * dur)
        sync = torch.randn(1, ts, cfg.conditioner.sync_dim, generator=g)
        cond: ConditionTokens = pipe.conditioner(video, text, sync, latent_length=n)
    params_dit = sum(p.numel() for p in pipe.dit.parameters())
    params_cond = sum(p.numel() for p in pipe.conditioner.parameters())
    params_vae = sum(p.numel() for p in pipe.vae.parameters())

    dit_times, vae_times = [], []
    for r in range(repeats):
        with torch.no_grad():
            noise = torch.randn(1, cfg.dit.io_channels, n, generator=torch.Generator().manual_seed(r))
            t0 = time.perf_counter()
            lat = sample_ode(guided_velocity(pipe.dit, cond, cfg.sampling.cfg_scale), noise, inference_timesteps(steps))
            t1 = time.perf_counter()
            pipe.vae.decode(lat)
            t2 = time.perf_counter()
        dit_times.append(t1 - t0)
        vae_times.append(t2 - t1)
    dit_t, vae_t = min(dit_times), min(vae_times)  # best of `repeats`: the machine is shared and noisy
    flops_step = 2 * dit_flops_per_forward(cfg, n, cond.cross.shape[1], tv)  # CFG: batch of 2
    return {
        "preset": name,
        "duration_s": dur,
        "latent_frames": n,
        "steps": steps,
        "params_dit_plus_conditioner": params_dit + params_cond,
        "params_vae": params_vae,
        "dit_sampling_s": dit_t,
        "vae_decode_s": vae_t,
        "total_s": dit_t + vae_t,
        "total_s_median": statistics.median(a + b for a, b in zip(dit_times, vae_times)),
        "real_time_factor": (dit_t + vae_t) / dur,
        "dit_flops_per_step": flops_step,
        "dit_achieved_flops_per_s": flops_step * steps / dit_t,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=["mini", "paper"])
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per preset (best is reported)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--dtype-compare", action="store_true",
                    help="instead: paper 9 s sampling in each --dtypes in the same run (speedup, latent rel. L2)")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (--dtype-compare: 2)")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.threads or args.dtype_compare:
        torch.set_num_threads(args.threads or 2)
    if args.dtype_compare:
        out = dtype_compare(args.dtypes, args.steps)
        out.update(torch=torch.__version__, threads=torch.get_num_threads())
        print(f"cpu: {out['cpu_capability']}, native half-precision matmul: {out['cpu_native_half']}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(out, f, indent=1)
        return
    mm = matmul_flops_per_s()
    rows = []
    for name in args.presets:
        row = bench(name, args.steps, 1 if name == "paper" else args.repeats)
        row["matmul_flops_per_s"] = mm
        row["flops_fraction_of_matmul"] = row["dit_achieved_flops_per_s"] / mm
        rows.append(row)
        print(
            f"{name:6s} params(DiT+cond)={row['params_dit_plus_conditioner']:,} vae={row['params_vae']:,} "
            f"N={row['latent_frames']} | DiT {row['steps']} steps {row['dit_sampling_s']:.3f} s + "
            f"VAE {row['vae_decode_s']:.3f} s = {row['total_s']:.3f} s best, {row['total_s_median']:.3f} s median "
            f"(RTF {row['real_time_factor']:.3f}) | "
            f"{row['dit_flops_per_step'] / 1e9:.1f} GFLOP/step, "
            f"{row['dit_achieved_flops_per_s'] / 1e9:.1f} GFLOP/s = {100 * row['flops_fraction_of_matmul']:.0f}% "
            f"of matmul {mm / 1e9:.1f} GFLOP/s | peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": rows}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
