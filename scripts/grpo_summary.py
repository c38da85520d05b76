"""Before/after summary of Fast-GRPO post-training (written by `scripts/post_train_default.sh`).

    python scripts/grpo_summary.py --out runs/grpo_default [--ship src/prismaudio/assets/prismaudio-mini]

Reads OUT/eval/rewards.json (mean test-split rewards, `benchmarks/score_rewards.py`), OUT/eval/table.json
(`prismaudio evaluate`) and each run's metrics.jsonl; writes OUT/summary.json, where every issue target
(each reward dimension up, weighted total +10 % relative, FD no more than 10 % worse) sits next to the
measured value; the ablations it finds (only_<reward>, nokl, multi_short: `ABLATIONS=...`) go into
OUT/summary.json["ablations"] with the paper's directions checked (Table 4: a single reward raises its
own dimension and trades others away; Table 12: without the KL term the policy drifts further from the
reference, measured as the relative L2 distance of the DiT weights from OUT/base); and OUT/reward_curves.png (training reward per iteration, every run). `--ship DIR` records
the summary as DIR/metrics.json["post_training"] and the curves as DIR/grpo_summary.png, beside the
shipped model.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

DIMENSIONS = ("semantic", "temporal", "aesthetic", "spatial")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def curves(out: Path, runs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in runs:
        rows = read_jsonl(out / name / "metrics.jsonl")
        if rows:
            ax.plot([r["iteration"] for r in rows], [r["reward"] for r in rows], label=name, alpha=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean training reward (its own weights)")
    ax.set_title("Fast-GRPO on prismaudio-mini")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reward_curves.png", dpi=80)
    plt.close(fig)


def weight_drift(base: Path, model: Path) -> float | None:
    """||theta - theta_base|| / ||theta_base|| over the DiT weights (the KL term's job is to bound this drift)."""
    from safetensors.torch import load_file

    a_path, b_path = model / "model.safetensors", base / "model.safetensors"
    if not (a_path.is_file() and b_path.is_file()):
        return None
    a, b = load_file(str(a_path)), load_file(str(b_path))
    keys = [k for k in b if k in a and a[k].shape == b[k].shape and b[k].is_floating_point()]
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys)
    den = sum(float(b[k].double().pow(2).sum()) for k in keys)
    return (num / den) ** 0.5 if den else None


def ablations(out: Path, rewards: dict[str, dict[str, float]], cells: dict[str, Any]) -> dict[str, Any]:
    """Test-split change of every reward dimension against `before`, per ablation run (paper Tables 4, 12)."""
    before = rewards["before"]
    fd_b = cells.get("before", {}).get("FD", {}).get("mean")
    res: dict[str, Any] = {}
    for name, r in rewards.items():
        if not (name.startswith("only_") or name in ("nokl", "multi_short")):
            continue
        delta = {d: r[d] - before[d] for d in (*DIMENSIONS, "total")}
        fd = cells.get(name, {}).get("FD", {}).get("mean")
        rows = read_jsonl(out / name / "metrics.jsonl")
        entry: dict[str, Any] = {"delta_vs_before": delta, "fd": fd,
                                 "fd_relative_change": None if fd is None or not fd_b else (fd - fd_b) / fd_b,
                                 "weight_drift": weight_drift(out / "base", out / name / "final"),
                                 "iterations": len(rows)}
        if name.startswith("only_"):
            own = name[len("only_"):]
            others = [d for d in DIMENSIONS if d != own]
            entry["own_dimension_improves"] = delta[own] > 0
            entry["others_that_drop"] = [d for d in others if delta[d] < 0]
        res[name] = entry
    ref, nokl = res.get("multi_short"), res.get("nokl")
    if ref and nokl and ref["weight_drift"] is not None and nokl["weight_drift"] is not None:
        nokl["drifts_further_than_with_kl"] = nokl["weight_drift"] > ref["weight_drift"]
        if ref["fd"] is not None and nokl["fd"] is not None:
            nokl["fd_worse_than_with_kl"] = nokl["fd"] > ref["fd"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/grpo_default")
    ap.add_argument("--ship", default=None, help="shipped model directory to record the summary in")
    args = ap.parse_args()
    out = Path(args.out)
    if args.ship:
        return ship(out, Path(args.ship))
    scored = json.loads((out / "eval" / "rewards.json").read_text())
    rewards = scored["systems"]
    paired = scored.get("paired", {}).get("after", {}) if scored.get("paired_vs") == "before" else {}
    table = json.loads((out / "eval" / "table.json").read_text())
    cells = table["cells"].get("all", {})
    before, after = rewards["before"], rewards["after"]
    fd_b = cells.get("before", {}).get("FD", {}).get("mean")
    fd_a = cells.get("after", {}).get("FD", {}).get("mean")
    rel = (after["total"] - before["total"]) / abs(before["total"]) if before["total"] else None
    # Issue 17 item 5: each reward's paired 95 % interval (after - before, over test clips) above zero;
    # a rewards.json without per-clip scores (older runs) falls back to the means.
    targets: dict[str, Any] = {}
    for d in DIMENSIONS:
        t = {"before": before[d], "after": after[d]}
        if d in paired:
            t.update(diff=paired[d]["mean"], ci95=paired[d]["ci95"], met=paired[d]["above_zero"])
        else:
            t["met"] = after[d] > before[d]
        targets[f"{d}_improves"] = t
    targets["total_relative_gain"] = {"before": before["total"], "after": after["total"], "value": rel,
                                      "target": ">= 0.10", "met": None if rel is None else rel >= 0.10}
    fd_rel = None if fd_b in (None, 0) or fd_a is None else (fd_a - fd_b) / fd_b
    targets["fd_relative_change"] = {"before": fd_b, "after": fd_a, "value": fd_rel, "target": "<= 0.10",
                                     "met": None if fd_rel is None else fd_rel <= 0.10}
    runs = sorted(p.name for p in out.iterdir() if (p / "metrics.jsonl").is_file())
    training = {}
    for name in runs:
        s = out / name / "grpo_summary.json"
        rows = read_jsonl(out / name / "metrics.jsonl")
        training[name] = {"iterations": len(rows),
                          "seconds_per_iteration": (sum(r.get("time_sampling", 0) + r.get("time_reward", 0)
                                                        + r.get("time_update", 0) for r in rows) / len(rows))
                          if rows else None,
                          "finished": s.is_file(), "weight_drift": weight_drift(out / "base", out / name / "final")}
    curves(out, runs)
    summary = {"rewards_test": rewards, "table_all": {sys: {m: st.get("mean") for m, st in row.items()}
                                                      for sys, row in cells.items()},
               "targets": targets, "ablations": ablations(out, rewards, cells), "training": training}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(targets, indent=1))
    return 0


def ship(out: Path, model: Path) -> int:
    """Record OUT/summary.json as model/metrics.json["post_training"] (written atomically)."""
    summary = json.loads((out / "summary.json").read_text())
    path = model / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics["post_training"] = {"algorithm": "Fast-GRPO", "command": "make grpo-default",
                                "config": "configs/grpo/fast_grpo_mini.yaml", **summary}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=1) + "\n")
    tmp.replace(path)
    shutil.copyfile(out / "reward_curves.png", model / "grpo_summary.png")
    print(f"recorded the post-training summary in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
