"""scripts/grpo_summary.py: the before/after targets of `make grpo-default` are judged correctly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

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
    assert s["training"]["multi"] == {"iterations": 4, "seconds_per_iteration": 2.0, "finished": False,
                                      "weight_drift": None}
    assert (tmp_path / "good" / "reward_curves.png").stat().st_size > 1000

    bad = {**good, "spatial": -0.6, "total": 0.54}  # spatial down, +8 % total, FD +20 %
    t = _summary(_make(tmp_path / "bad", before, bad, (0.60, 0.72)))["targets"]
    assert not t["spatial_improves"]["met"] and t["semantic_improves"]["met"]
    assert not t["total_relative_gain"]["met"] and not t["fd_relative_change"]["met"]


def test_ablation_directions_and_ship(tmp_path: Path) -> None:
    before = {"semantic": 0.4, "temporal": 0.5, "aesthetic": 0.7, "spatial": -0.5, "total": 0.5}
    after = {"semantic": 0.45, "temporal": 0.55, "aesthetic": 0.72, "spatial": -0.45, "total": 0.56}
    out = _make(tmp_path / "abl", before, after, (0.60, 0.62))
    systems = {"before": before, "after": after,
               "only_semantic": {**before, "semantic": 0.5, "temporal": 0.45, "total": 0.52},
               "multi_short": {**before, "semantic": 0.42, "total": 0.51},
               "nokl": {**before, "semantic": 0.44, "total": 0.53}}
    (out / "eval" / "rewards.json").write_text(json.dumps({"systems": systems}))
    cells = {"all": {"before": {"FD": {"mean": 0.60}}, "after": {"FD": {"mean": 0.62}},
                     "multi_short": {"FD": {"mean": 0.61}}, "nokl": {"FD": {"mean": 0.70}}}}
    (out / "eval" / "table.json").write_text(json.dumps({"cells": cells}))
    (out / "base").mkdir()
    save_file({"w": torch.ones(4, 4)}, str(out / "base" / "model.safetensors"))
    for name, step in (("multi_short", 0.1), ("nokl", 0.3)):  # drift = step (relative L2)
        (out / name / "final").mkdir(parents=True)
        save_file({"w": torch.full((4, 4), 1.0 + step)}, str(out / name / "final" / "model.safetensors"))
        rows = [{"iteration": i + 1, "reward": 0.5, "kl": 0.0} for i in range(6)]
        (out / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    abl = _summary(out)["ablations"]
    assert set(abl) == {"only_semantic", "multi_short", "nokl"}
    sem = abl["only_semantic"]
    assert sem["own_dimension_improves"] and sem["others_that_drop"] == ["temporal"]
    assert abs(sem["delta_vs_before"]["semantic"] - 0.1) < 1e-9
    assert abs(abl["nokl"]["weight_drift"] - 0.3) < 1e-6 and abs(abl["multi_short"]["weight_drift"] - 0.1) < 1e-6
    assert abl["nokl"]["drifts_further_than_with_kl"] and abl["nokl"]["fd_worse_than_with_kl"]
    assert abs(abl["nokl"]["fd_relative_change"] - 0.1 / 0.6) < 1e-9

    model = tmp_path / "model"
    model.mkdir()
    (model / "metrics.json").write_text(json.dumps({"table": {"kept": 1}}))
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--ship", str(model)], check=True,
                   capture_output=True)
    shipped = json.loads((model / "metrics.json").read_text())
    assert shipped["table"] == {"kept": 1}  # the base model's own record survives
    assert shipped["post_training"]["targets"]["semantic_improves"]["met"]
    assert (model / "grpo_summary.png").stat().st_size > 1000


def test_paired_interval_decides_each_reward(tmp_path: Path) -> None:
    """With per-clip scores (score_rewards' `paired`), a reward counts as improved only when its paired
    95 % interval lies above zero, not when its mean merely rose."""
    sys.path.insert(0, str(SCRIPT.parents[1] / "benchmarks"))
    from score_rewards import paired_differences

    g = torch.Generator().manual_seed(0)
    ids = [f"c{i}" for i in range(200)]
    base = {k: {i: float(v) for i, v in zip(ids, torch.rand(200, generator=g))} for k in ("semantic", "temporal")}
    other = {"semantic": {i: v + 0.05 for i, v in base["semantic"].items()},  # a clear, consistent rise
             "temporal": {i: v + float(n) for (i, v), n in zip(base["temporal"].items(),  # noise, mean ~ 0
                                                                 0.3 * torch.randn(200, generator=g))}}
    d = paired_differences(base, other, 1000)
    assert abs(d["semantic"]["mean"] - 0.05) < 1e-6 and d["semantic"]["above_zero"]
    assert d["temporal"]["ci95"][0] < 0 < d["temporal"]["ci95"][1] and not d["temporal"]["above_zero"]

    before = {"semantic": 0.4, "temporal": 0.5, "aesthetic": 0.7, "spatial": -0.5, "total": 0.5}
    after = {"semantic": 0.5, "temporal": 0.51, "aesthetic": 0.71, "spatial": -0.4, "total": 0.56}
    out = _make(tmp_path / "paired", before, after, (0.60, 0.61))
    paired = {k: {"mean": 0.01, "ci95": [0.001, 0.02], "n": 200, "above_zero": True}
              for k in ("semantic", "aesthetic", "spatial")}
    paired["temporal"] = {"mean": 0.01, "ci95": [-0.01, 0.03], "n": 200, "above_zero": False}
    (out / "eval" / "rewards.json").write_text(json.dumps({"systems": {"before": before, "after": after},
                                                           "paired_vs": "before", "paired": {"after": paired}}))
    t = _summary(out)["targets"]
    assert not t["temporal_improves"]["met"] and t["temporal_improves"]["ci95"] == [-0.01, 0.03]
    assert all(t[f"{d}_improves"]["met"] for d in ("semantic", "aesthetic", "spatial"))
