"""Accuracy of the offline CoT planner against the procedural corpus's scene graphs.

Usage: python benchmarks/bench_cot_offline.py [--corpus /tmp/judge_corpus] [--split test]
           [--out bench_cot_offline.json] [--metrics src/prismaudio/assets/visual_classifier/metrics.json]
           [--classifier DIR (default: the shipped visual_classifier asset)]

Per clip the planner's estimated scene graph (what its four CoT sentences are rendered from) is
compared with the true one:
- temporal: every true event (all sources) is matched one-to-one to the nearest predicted event of
  any source; hit when |dt| <= 40 ms (one frame at 25 fps). Recall over all events; precision too.
- spatial: predicted sources are matched to true ones (Hungarian on mean |x| difference over frames
  both are visible, accepted < 0.15). Per *static* true source: correct when matched and
  `side_of(mean x)` agrees; a missed source counts as wrong. Also per clip (every static source right),
  direction phrase for moving sources, and distance word for matched sources.
- semantic: single-event clips: the true class is among the predicted classes ("named"), and the
  predicted set is exactly that class ("exact"); multi-event clips: class recall and precision.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from prismaudio.procedural.planner import default_classifier, estimate_scene
from prismaudio.procedural.synth.cot import distance_word, side_of

TOL_S = 0.04 + 1e-9


def _xs(src: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(src["positions"]["x"], float), np.asarray(src["positions"]["visible"], bool)


def match_sources(pred: list[dict], true: list[dict]) -> dict[int, int]:
    """{true index: predicted index} by mean |x| difference over co-visible frames (< 0.15)."""
    if not pred or not true:
        return {}
    cost = np.full((len(true), len(pred)), 9.0)
    for i, t in enumerate(true):
        tx, tv = _xs(t)
        for j, p in enumerate(pred):
            px, pv = _xs(p)
            both = tv & pv
            if both.any():
                cost[i, j] = float(np.abs(tx[both] - px[both]).mean())
    return {int(i): int(j) for i, j in zip(*linear_sum_assignment(cost)) if cost[i, j] < 0.15}


def event_hits(pred_t: list[float], true_t: list[float]) -> int:
    """One-to-one matches within TOL_S, closest pairs first."""
    pairs = sorted((abs(p - t), i, j) for i, t in enumerate(true_t) for j, p in enumerate(pred_t) if abs(p - t) <= TOL_S)
    used_i, used_j, hits = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_i and j not in used_j:
            used_i.add(i)
            used_j.add(j)
            hits += 1
    return hits


def _move_phrase(src: dict[str, Any]) -> str:
    x, v = _xs(src)
    x = x[v]
    return f"{side_of(x[0])}->{side_of(x[-1])}"


def score_clip(args: tuple[str, dict[str, Any], str | None, str]) -> dict[str, Any]:
    video, true, subset, clf = args
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    pred = estimate_scene(video, clf)
    sec = time.perf_counter() - t0
    ts, ps = true["sources"], pred["sources"]
    true_t = [e["time"] for s in ts for e in s["events"]]
    pred_t = [e["time"] for s in ps for e in s["events"]]
    m = match_sources(ps, ts)
    static = [i for i, s in enumerate(ts) if not s["moving"]]
    side_ok = [i in m and side_of(_xs(ps[m[i]])[0][_xs(ps[m[i]])[1]].mean()) == side_of(_xs(ts[i])[0][_xs(ts[i])[1]].mean())
               for i in static]
    moving = [i for i, s in enumerate(ts) if s["moving"]]
    move_ok = [i in m and _move_phrase(ps[m[i]]) == _move_phrase(ts[i]) for i in moving]
    dist_ok = [distance_word(ps[j]["distance"]) == distance_word(ts[i]["distance"]) for i, j in m.items()]
    tc, pc = {s["class"] for s in ts}, {s["class"] for s in ps}
    return {"subset": subset, "events": len(true_t), "hits": event_hits(pred_t, true_t), "pred_events": len(pred_t),
            "static": len(static), "side_ok": int(sum(side_ok)), "moving": len(moving), "move_ok": int(sum(move_ok)),
            "matched": len(m), "dist_ok": int(sum(dist_ok)), "true_classes": sorted(tc), "pred_classes": sorted(pc),
            "n_true": len(tc), "class_hits": len(tc & pc), "n_pred": len(pc), "seconds": sec}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    s = lambda k, rs=rows: sum(r[k] for r in rs)
    single = [r for r in rows if r["subset"] == "single"]
    multi = [r for r in rows if r["subset"] != "single"]
    return {
        "clips": len(rows), "single_event_clips": len(single), "multi_event_clips": len(multi),
        "temporal_event_recall_40ms": s("hits") / max(1, s("events")),
        "temporal_event_precision_40ms": s("hits") / max(1, s("pred_events")),
        "events": s("events"), "predicted_events": s("pred_events"),
        "spatial_side_accuracy_per_static_source": s("side_ok") / max(1, s("static")),
        "static_sources": s("static"),
        "spatial_side_accuracy_per_clip": float(np.mean([r["side_ok"] == r["static"] for r in rows if r["static"]])),
        "spatial_direction_accuracy_moving": s("move_ok") / max(1, s("moving")), "moving_sources": s("moving"),
        "distance_word_accuracy_matched": s("dist_ok") / max(1, s("matched")),
        "semantic_single_named": float(np.mean([r["true_classes"][0] in r["pred_classes"] for r in single])) if single else None,
        "semantic_single_exact": float(np.mean([r["pred_classes"] == r["true_classes"] for r in single])) if single else None,
        "semantic_multi_class_recall": s("class_hits", multi) / max(1, s("n_true", multi)) if multi else None,
        "semantic_multi_class_precision": s("class_hits", multi) / max(1, s("n_pred", multi)) if multi else None,
        "seconds_per_clip": s("seconds") / max(1, len(rows)),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/judge_corpus"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--n", type=int, default=0, help="first n clips of the split (0: all)")
    ap.add_argument("--classifier", type=Path, default=default_classifier())
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench_cot_offline.json"))
    ap.add_argument("--metrics", type=Path, default=None, help="also store the summary under 'benchmark' here")
    a = ap.parse_args()
    rows = [json.loads(line) for line in (a.corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == a.split]
    rows = rows[: a.n] if a.n else rows
    jobs = [(str(a.corpus / r["video"]), r["scene"], r.get("subset"), str(a.classifier)) for r in rows]
    t0 = time.time()
    with mp.get_context("fork").Pool(a.workers) as pool:
        per_clip = pool.map(score_clip, jobs, chunksize=4)
    summary = {"corpus": str(a.corpus), "split": a.split, "wall_seconds": round(time.time() - t0, 1), **summarise(per_clip)}
    a.out.write_text(json.dumps({"summary": summary, "clips": [{"id": r["id"], **c} for r, c in zip(rows, per_clip)]},
                                indent=1) + "\n")
    for k, v in summary.items():
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")
    if a.metrics is not None:
        old = json.loads(a.metrics.read_text()) if a.metrics.exists() else {}
        old["benchmark"] = summary
        a.metrics.write_text(json.dumps(old, indent=2) + "\n")
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
