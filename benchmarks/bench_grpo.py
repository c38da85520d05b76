"""Fast-GRPO vs Flow-GRPO: wall-clock per iteration (sampling / reward / policy update), policy NFE
per sample, and reward-versus-wall-clock curves.

    python benchmarks/bench_grpo.py [--iters 5] [--flow-iters N] [--group 16] [--steps 24] [--window 2]
                                    [--rewards loudness] [--model DIR|mini] [--corpus DIR]

Both runs use the `mini` model (the shipped prismaudio-mini asset when it exists, else random `mini` weights:
the timings are then real but the reward curves mean little; the output says which), the same
corpus, seed, T, G, prompts per iteration, lr and update count per iteration (grad_accum = window
steps, so each runs one optimizer step per chunk of `--group` rows); they differ only in the
sampler (Fast: shared ODE prefix + SDE window of w; Flow: SDE at all T steps, own noise per member)
and hence in the window steps trained on (w vs T). Sampling time includes the VAE decode.
Rewards default to the four paper rewards when the shipped offline judges (judges asset) exist,
else `loudness`. `--flow-iters` gives Flow-GRPO its own iteration count (its iterations are ~5x
longer), and the summary reports when Fast-GRPO's reward (mean of the last `--smooth` iterations)
first reaches Flow-GRPO's final one, in wall-clock seconds of each.
Writes runs/bench_grpo.json and runs/bench_grpo.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from prismaudio.resources import asset_path

REPO = Path(__file__).resolve().parents[1]
FOUR = ["semantic", "temporal", "aesthetic", "spatial"]
OFFICIAL_WEIGHTS = {"semantic": 1.0, "temporal": 0.6, "aesthetic": 0.1, "spatial": 0.4}


def default_rewards() -> list[str]:
    judges = asset_path("judges")
    return FOUR if judges.is_dir() and any(judges.iterdir()) else ["loudness"]


def default_model() -> tuple[str, bool]:
    trained = asset_path("prismaudio-mini")
    return (str(trained), True) if (trained / "config.json").is_file() else ("mini", False)


def ensure_corpus(path: Path, n: int) -> Path:
    manifest = path / "manifest.jsonl"
    if not manifest.is_file():
        from prismaudio.cli import main as cli_main

        if cli_main(["synth", "--out", str(path), "--n", str(n), "--duration", "4", "--size", "64",
                     "--workers", "1", "--quiet"]) != 0:
            raise SystemExit("could not synthesise the benchmark corpus")
    return manifest


def run_mode(mode: str, args: argparse.Namespace, manifest: Path, model: str, rewards: list[str]) -> dict[str, Any]:
    from prismaudio.rl import grpo_config_from_dict
    from prismaudio.rl.trainer import GRPOTrainer

    window = args.steps if mode == "flow" else args.window
    iters = args.flow_iters if mode == "flow" and args.flow_iters else args.iters
    cfg = grpo_config_from_dict({
        "model": model, "text": "cot", "seed": args.seed,
        "data": {"manifest": str(manifest), "split": None, "cache_dir": str(manifest.parent / "cache")},
        "sampler": {"mode": mode, "steps": args.steps, "window": window},
        "rewards": {r: OFFICIAL_WEIGHTS.get(r, 1.0) for r in rewards},
        "group_size": args.group, "prompts_per_iter": args.prompts, "micro_batch": args.group,
        "grad_accum": window, "iterations": iters, "checkpoint_every": 10**6,
    })
    with tempfile.TemporaryDirectory(prefix=f"bench-grpo-{mode}-") as out:
        tr = GRPOTrainer(cfg, out, log=lambda _m: None)
        records, clock = [], 0.0
        for i in range(iters):
            t0 = time.perf_counter()
            rec = tr.iteration()
            clock += time.perf_counter() - t0
            rec["wall_clock"] = clock
            records.append(rec)
            print(f"{mode} iter {i + 1}/{iters}: reward {rec['reward']:.4g}  sampling {rec['time_sampling']:.2f}s "
                  f"reward {rec['time_reward']:.2f}s update {rec['time_update']:.2f}s  policy NFE/sample "
                  f"{rec['nfe_policy_per_sample']:.3g}", flush=True)

    def mean(key: str) -> float:
        return statistics.fmean(r[key] for r in records)

    return {
        "mode": mode, "steps": args.steps, "window": window, "group": args.group, "prompts": args.prompts,
        "seconds_per_iteration": {"sampling": mean("time_sampling"), "reward": mean("time_reward"),
                                  "update": mean("time_update"),
                                  "total": mean("time_sampling") + mean("time_reward") + mean("time_update")},
        "policy_nfe_per_sample": {"rollout": mean("nfe_rollout_per_sample"), "update": mean("nfe_policy_per_sample"),
                                  "total": mean("nfe_rollout_per_sample") + mean("nfe_policy_per_sample")},
        "curve": {"wall_clock": [r["wall_clock"] for r in records], "reward": [r["reward"] for r in records]},
        "iterations": records,
    }


def smoothed(rewards: list[float], k: int) -> list[float]:
    """Trailing mean over the last k iterations (single-iteration rewards are noisy: one prompt)."""
    return [statistics.fmean(rewards[max(0, i + 1 - k) : i + 1]) for i in range(len(rewards))]


def time_to_reach(fast: dict[str, Any], flow: dict[str, Any], k: int) -> dict[str, Any]:
    """Wall clock at which Fast-GRPO's smoothed reward first reaches Flow-GRPO's final smoothed reward."""
    target = smoothed(flow["curve"]["reward"], k)[-1]
    flow_time = flow["curve"]["wall_clock"][-1]
    fast_r = smoothed(fast["curve"]["reward"], k)
    hit = next((t for t, r in zip(fast["curve"]["wall_clock"], fast_r) if r >= target), None)
    return {"flow_final_reward": target, "flow_wall_clock": flow_time, "fast_wall_clock_to_reach": hit,
            "fast_final_reward": fast_r[-1], "smooth": k,
            "reached_faster": hit is not None and hit < flow_time}


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        label = f"{'Fast' if res['mode'] == 'fast' else 'Flow'}-GRPO (w={res['window']})"
        ax.plot(res["curve"]["wall_clock"], res["curve"]["reward"], marker="o", label=label)
    ax.set_xlabel("wall-clock (s)")
    ax.set_ylabel("mean reward (valid samples)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--flow-iters", type=int, default=None, help="Flow-GRPO iterations (default: --iters)")
    p.add_argument("--smooth", type=int, default=3, help="trailing mean for the time-to-reach comparison")
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--prompts", type=int, default=1, help="unique prompts per iteration")
    p.add_argument("--rewards", nargs="+", default=None, help="reward names (default: see module doc)")
    p.add_argument("--model", default=None, help="model directory or preset (default: see module doc)")
    p.add_argument("--corpus", default=str(REPO / "runs" / "bench_grpo_corpus"))
    p.add_argument("--corpus-size", type=int, default=8)
    p.add_argument("--modes", nargs="+", default=["fast", "flow"], choices=["fast", "flow"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on shared CPUs)")
    p.add_argument("--json", default=str(REPO / "runs" / "bench_grpo.json"))
    p.add_argument("--png", default=str(REPO / "runs" / "bench_grpo.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rewards = args.rewards or default_rewards()
    if args.model is None:
        model, trained = default_model()
    else:
        model, trained = args.model, args.model not in ("mini", "tiny", "paper")
    note = "trained model" if trained else "RANDOM weights (prismaudio-mini asset not found): timings are real, rewards are not meaningful"
    print(f"bench_grpo: model {model} ({note}); rewards {rewards}; T={args.steps} w={args.window} G={args.group}",
          flush=True)
    manifest = ensure_corpus(Path(args.corpus), args.corpus_size)
    results = [run_mode(m, args, manifest, model, rewards) for m in args.modes]
    summary = {r["mode"]: {k: r[k] for k in ("seconds_per_iteration", "policy_nfe_per_sample")} for r in results}
    by_mode = {r["mode"]: r for r in results}
    if len(by_mode) == 2:
        f, s = by_mode["fast"]["seconds_per_iteration"]["total"], by_mode["flow"]["seconds_per_iteration"]["total"]
        summary["speedup_fast_over_flow"] = s / f
        summary["time_to_flow_final_reward"] = time_to_reach(by_mode["fast"], by_mode["flow"], args.smooth)
    out = {"model": model, "trained_weights": trained, "note": note, "rewards": rewards,
           "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": args.threads,
           "summary": summary, "runs": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    plot(results, Path(args.png), f"{Path(model).name} ({'trained' if trained else 'random'}), T={args.steps}, "
         f"G={args.group}, rewards {'+'.join(rewards)}")
    print(json.dumps(summary, indent=1))
    print(f"wrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
