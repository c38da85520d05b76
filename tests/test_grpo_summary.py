"""scripts/grpo_summary.py: the before/after targets of `make grpo-default` are judged correctly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "grpo_summary.py"


def _make(out: Path, before: dict[str, float], after: dict[str, float], fd: tuple[float, float]) -> Path:
    (out / "eval").mkdir(parents=True)
    (out / "eval" / "rewards.json").write_text(json.dumps({"systems": {"before": before, "after": after}}))
    cells = {"all": {"before": {"FD": {"mean": fd[0]}}, "after": {"FD": {"mean": fd[1]}}}}
    (out / "eval" / "table.json").write_text(json.dumps({"cells": cells}))
    (out / "multi").mkdir()
    rows = [{"iteration": i + 1, "reward": 0.1 * i, "time_sampling": 1.0, "time_reward": 0.5, "time_update": 0.5}
            for i in range(4)]
    (out / "multi" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _summary(out: Path) -> dict:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, capture_output=True)
    return json.loads((out / "summary.json").read_text())


def test_targets_met_and_missed(tmp_path: Path) -> None:
    before = {"semantic": 0.4, "temporal": 0.5, "aesthetic": 0.7, "spatial": -0.5, "total": 0.5}
    good = {"semantic": 0.5, "temporal": 0.6, "aesthetic": 0.71, "spatial": -0.4, "total": 0.56}
    s = _summary(_make(tmp_path / "good", before, good, (0.60, 0.65)))
    t = s["targets"]
    assert all(t[f"{d}_improves"]["met"] for d in ("semantic", "temporal", "aesthetic", "spatial"))
    assert abs(t["total_relative_gain"]["value"] - 0.12) < 1e-9 and t["total_relative_gain"]["met"]
    assert abs(t["fd_relative_change"]["value"] - 0.05 / 0.60) < 1e-9 and t["fd_relative_change"]["met"]
    assert s["training"]["multi"] == {"iterations": 4, "seconds_per_iteration": 2.0, "finished": False}
    assert (tmp_path / "good" / "reward_curves.png").stat().st_size > 1000

    bad = {**good, "spatial": -0.6, "total": 0.54}  # spatial down, +8 % total, FD +20 %
    t = _summary(_make(tmp_path / "bad", before, bad, (0.60, 0.72)))["targets"]
    assert not t["spatial_improves"]["met"] and t["semantic_improves"]["met"]
    assert not t["total_relative_gain"]["met"] and not t["fd_relative_change"]["met"]
