"""scripts/paper_claims.py and metrics.bootstrap: each paper claim gets the verdict its numbers support."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from prismaudio.metrics.bootstrap import interval, paired

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "paper_claims.py"
ORDER = ("MultiCoT", "Monolithic", "Random", "No-CoT")


def test_paired_skips_missing_clips_and_sides_with_zero() -> None:
    base = {"a": 0.0, "b": 0.0, "c": 0.0, "d": float("nan"), "e": 1.0}
    other = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 5.0, "f": 9.0}
    d = paired(base, other, 500)
    assert d["n"] == 3 and math.isclose(d["mean"], 0.2) and d["above_zero"] and not d["below_zero"]
    assert 0.1 <= d["ci95"][0] <= d["ci95"][1] <= 0.3
    neg = paired(other, base, 500)
    assert neg["below_zero"] and math.isclose(neg["mean"], -0.2)
    x = interval([1.0] * 10)
    assert x["ci95"] == [1.0, 1.0] and x["n"] == 10


def _table3(runs: Path, means: dict[str, float], seed: int = 0, n: int = 120) -> None:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        difficulty = float(torch.rand((), generator=g))
        for s in ORDER:
            noise = 0.02 * float(torch.randn((), generator=g))
            rows.append({"system": s, "id": f"c{i}", "CLAP": means[s] + 0.3 * difficulty + noise,
                         "class_recall": means[s] + 0.3 * difficulty + noise})
    d = runs / "paper_claims" / "table3" / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "table.clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _claims(runs: Path, out: Path) -> dict:
    r = subprocess.run([sys.executable, str(SCRIPT), "--runs", str(runs), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.loads((out / "paper_claims.json").read_text())


def test_table3_order_met_reversed_and_missing(tmp_path: Path) -> None:
    good = dict(zip(ORDER, (0.6, 0.55, 0.5, 0.4)))
    _table3(tmp_path / "good", good, seed=0)
    _table3(tmp_path / "good", good, seed=1)
    c = _claims(tmp_path / "good", tmp_path / "out_good")
    assert c["table3"]["status"] == "met" and c["table3"]["seeds"] == ["seed0", "seed1"]
    assert (tmp_path / "out_good" / "images" / "paper_claims_table3.png").is_file()
    assert "**met**" in (tmp_path / "out_good" / "paper_claims.md").read_text()
    # the rest was not run: said so, not guessed
    assert {c[k]["status"] for k in ("table4", "table12", "figure2")} == {"not run"}

    swapped = dict(zip(ORDER, (0.55, 0.6, 0.5, 0.4)))  # Monolithic beats MultiCoT
    _table3(tmp_path / "bad", swapped)
    c = _claims(tmp_path / "bad", tmp_path / "out_bad")
    m = c["table3"]["metrics"]["CLAP"]
    assert m["status"] == "not met" and m["paired"]["MultiCoT - Monolithic"]["below_zero"]
    assert m["paired"]["MultiCoT - No-CoT"]["above_zero"]


def test_table12_needs_a_rise_and_a_cost(tmp_path: Path) -> None:
    ev = tmp_path / "grpo_default" / "eval"
    ev.mkdir(parents=True)
    ids = [f"c{i}" for i in range(100)]
    g = torch.Generator().manual_seed(0)
    base = {k: {i: float(v) for i, v in zip(ids, torch.rand(100, generator=g))}
            for k in ("semantic", "temporal", "aesthetic", "spatial", "total")}
    shift = lambda d, x: {k: {i: v + x for i, v in d[k].items()} for k in d}  # noqa: E731
    per_clip = {"before": base, "after": shift(base, 0.01), "nokl": shift(base, 0.05)}
    (ev / "rewards.json").write_text(json.dumps({"per_clip": per_clip}))
    rows = [{"system": s, "id": i, "class_recall": r, "side_acc": 1.0, "KL": k}
            for i in ids for s, r, k in (("after", 0.8, 1.0), ("nokl", 0.6, 1.5))]
    (ev / "table.clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cells = {"all": {s: {"FD": {"mean": fd}} for s, fd in (("before", 0.2), ("after", 0.21), ("nokl", 0.3))}}
    (ev / "table.json").write_text(json.dumps({"cells": cells}))
    t12 = _claims(tmp_path, tmp_path / "out")["table12"]
    assert t12["status"] == "met" and t12["FD_worse"] and t12["KL_worse"] and t12["class_recall_worse"]
    assert not t12["side_acc_worse"]

    rows = [{**r, "class_recall": 0.8, "KL": 1.0} for r in rows]  # no cost anywhere: the claim fails
    (ev / "table.clips.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cells["all"]["nokl"]["FD"]["mean"] = 0.2
    (ev / "table.json").write_text(json.dumps({"cells": cells}))
    assert _claims(tmp_path, tmp_path / "out2")["table12"]["status"] == "not met"
