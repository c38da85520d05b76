"""Before/after summary of Fast-GRPO post-training (written by `scripts/post_train_default.sh`).

    python scripts/grpo_summary.py --out runs/grpo_default

Reads OUT/eval/rewards.json (mean test-split rewards, `benchmarks/score_rewards.py`), OUT/eval/table.json
(`prismaudio evaluate`) and each run's metrics.jsonl; writes OUT/summary.json, where every issue target
(each reward dimension up, weighted total +10 % relative, FD no more than 10 % worse) sits next to the
measured value, and OUT/reward_curves.png (training reward per iteration, every run).
"""

from __future__ import annotations

import argparse
import json
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/grpo_default")
    args = ap.parse_args()
    out = Path(args.out)
    rewards = json.loads((out / "eval" / "rewards.json").read_text())["systems"]
    table = json.loads((out / "eval" / "table.json").read_text())
    cells = table["cells"].get("all", {})
    before, after = rewards["before"], rewards["after"]
    fd_b = cells.get("before", {}).get("FD", {}).get("mean")
    fd_a = cells.get("after", {}).get("FD", {}).get("mean")
    rel = (after["total"] - before["total"]) / abs(before["total"]) if before["total"] else None
    targets: dict[str, Any] = {f"{d}_improves": {"before": before[d], "after": after[d], "met": after[d] > before[d]}
                               for d in DIMENSIONS}
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
                          "finished": s.is_file()}
    curves(out, runs)
    summary = {"rewards_test": rewards, "table_all": {sys: {m: st.get("mean") for m, st in row.items()}
                                                      for sys, row in cells.items()},
               "targets": targets, "training": training}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(targets, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
