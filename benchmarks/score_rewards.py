"""Mean GRPO rewards (semantic / temporal / aesthetic / spatial and the weighted total, eq. 5) of
generated audio on a manifest split: the before/after numbers of RL post-training.

    python benchmarks/score_rewards.py --manifest data/corpus/manifest.jsonl \
        --generated before=runs/eval/before --generated after=runs/eval/after --out runs/rewards.json

Each system is a folder of `<id>.wav` (as written by `prismaudio generate --manifest`). The rewards
get the same context as in `prismaudio grpo` (caption, CoT, video, scene graph, reference audio),
the weights are the official mix unless --weights is given. Prints a Markdown table; writes JSON
with each clip's rewards and, for every system against the first one (`--generated before=...`
first), the paired difference of each mean with a 95 % bootstrap interval over clips.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from prismaudio.metrics.bootstrap import paired

OFFICIAL = {"semantic": 1.0, "temporal": 0.6, "aesthetic": 0.1, "spatial": 0.4}


def paired_differences(base: dict[str, dict[str, float]], other: dict[str, dict[str, float]],
                       resamples: int, seed: int = 0) -> dict[str, dict]:
    """Per reward: mean of (other - base) over the clips both scored, and its 95 % bootstrap interval."""
    return {k: paired(base[k], other[k], resamples, seed) for k in base if set(base[k]) & set(other.get(k, {}))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--generated", action="append", required=True, metavar="NAME=DIR")
    ap.add_argument("--weights", default=None, help="JSON {reward: weight} (default: the official mix)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=None, help="JSON output")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the paired differences")
    args = ap.parse_args()

    from prismaudio.data.manifest import read_manifest
    from prismaudio.io.audio import load_audio
    from prismaudio.rewards import RewardContext, compute_rewards

    weights = json.loads(args.weights) if args.weights else OFFICIAL
    rows, _ = read_manifest(args.manifest)
    rows = [r for r in rows if r.split == args.split]
    result: dict[str, dict[str, float]] = {}
    clips: dict[str, dict[str, dict[str, float]]] = {}  # system -> reward -> clip id -> value
    for item in args.generated:
        name, _, folder = item.partition("=")
        per: dict[str, list[float]] = {k: [] for k in [*weights, "total"]}
        by_clip: dict[str, dict[str, float]] = {k: {} for k in per}
        for start in range(0, len(rows), args.batch):
            chunk = [r for r in rows[start : start + args.batch] if (Path(folder) / f"{r.id}.wav").is_file()]
            if not chunk:
                continue
            audio = [load_audio(Path(folder) / f"{r.id}.wav", None, channels=2) for r in chunk]
            sr = audio[0][1]
            gen = torch.stack([a for a, _ in audio])
            ref = torch.stack([load_audio(r.audio, sr, channels=2)[0][..., : gen.shape[-1]] for r in chunk])
            ctx = RewardContext(texts=[r.caption or None for r in chunk], cots=[r.cot for r in chunk],
                                video_paths=[str(r.video) for r in chunk], scene_graphs=[r.scene for r in chunk],
                                reference_audio=ref)
            res = compute_rewards(list(weights), weights, gen, sr, ctx)
            for k, v in res.scores.items():
                per[k] += [float(x) for x in v]
                by_clip[k].update({r.id: float(x) for r, x in zip(chunk, v) if math.isfinite(float(x))})
            per["total"] += [float(t) for t, ok in zip(res.total, res.valid) if ok]
            by_clip["total"].update({r.id: float(t) for r, t, ok in zip(chunk, res.total, res.valid) if ok})
        clips[name] = by_clip
        result[name] = {k: (sum(x for x in v if math.isfinite(x)) / max(1, sum(math.isfinite(x) for x in v)))
                        for k, v in per.items()}
        result[name]["n"] = len(per["total"])
    cols = [*weights, "total"]
    print("| system | " + " | ".join(cols) + " | n |")
    print("|---|" + "---:|" * (len(cols) + 1))
    for name, r in result.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + f" | {r['n']} |")
    names = list(result)
    paired = {n: paired_differences(clips[names[0]], clips[n], args.resamples) for n in names[1:]}
    for name, diff in paired.items():
        print(f"\n{name} - {names[0]}, paired over clips (95 % bootstrap interval):")
        for k, d in diff.items():
            print(f"  {k:10s} {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]  n={d['n']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"weights": weights, "systems": result, "paired_vs": names[0],
                                              "paired": paired, "per_clip": clips}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
