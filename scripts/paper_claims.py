"""The PrismAudio paper's claims, checked on the offline default (`make paper-claims`, issue 17 item 4).

    python scripts/paper_claims.py [--runs runs] [--out docs]

Reads what `scripts/paper_claims.sh` ran and writes OUT/paper_claims.md, OUT/paper_claims.json and
OUT/images/paper_claims_{table3,fig2}.png. Every claim is a direction, checked with a 95 % bootstrap
interval over test clips (`prismaudio.metrics.bootstrap`): a claim is *met* when each interval it needs
lies on the claimed side of zero, *direction only* when the point estimates agree but an interval spans
zero, *not met* otherwise, *not run* when its runs are missing.

- Table 3 (runs/paper_claims/table3/seed*/table.clips.jsonl, `scripts/cot_variants.sh`): MultiCoT >
  Monolithic > Random > No-CoT on CLAP and on class recall; per-clip scores averaged over the seeds.
- Table 4 (runs/grpo_default/eval/rewards.json, `ABLATIONS=... scripts/post_train_default.sh`): each
  single-reward run raises its own reward over the base; the four-reward run raises all four.
- Table 12 (same, the `nokl` run): without the KL term the optimised rewards rise further than with
  it, while FD / KL or a ground-truth measure (class recall, side accuracy) gets worse.
- Figure 2 (runs/paper_claims/fig2/seed*.json, `benchmarks/bench_grpo.py`): Fast-GRPO reaches Flow-GRPO's
  final training reward in less wall clock, in every seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from prismaudio.metrics.bootstrap import interval, paired

DIMENSIONS = ("semantic", "temporal", "aesthetic", "spatial")
TABLE3 = ("MultiCoT", "Monolithic", "Random", "No-CoT")  # the paper's order, best first
TABLE3_METRICS = ("CLAP", "class_recall")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def verdict(diffs: list[dict], sign: int = 1) -> str:
    """`met` when every interval is on the claimed side of zero, `direction only` when the means are."""
    side = "above_zero" if sign > 0 else "below_zero"
    if all(d[side] for d in diffs):
        return "met"
    if all(sign * d["mean"] > 0 for d in diffs):
        return "direction only"
    return "not met"


def per_clip(rows: list[dict[str, Any]], system: str, metric: str) -> dict[str, float]:
    return {r["id"]: r[metric] for r in rows if r["system"] == system and r.get(metric) is not None}


def table3(runs: Path) -> dict[str, Any]:
    seeds = sorted((runs / "paper_claims" / "table3").glob("seed*/table.clips.jsonl"))
    if not seeds:
        return {"status": "not run", "why": "no runs/paper_claims/table3/seed*/table.clips.jsonl (scripts/cot_variants.sh)"}
    tables = [read_jsonl(p) for p in seeds]
    out: dict[str, Any] = {"seeds": [p.parent.name for p in seeds], "metrics": {}}
    for metric in TABLE3_METRICS:
        # per clip, the mean over the seeds that scored it in every system
        by_sys = {}
        for s in TABLE3:
            runs_s = [per_clip(t, s, metric) for t in tables]
            ids = set.intersection(*(set(r) for r in runs_s))
            by_sys[s] = {i: statistics.fmean(r[i] for r in runs_s) for i in ids}
        means = {s: interval(list(v.values())) for s, v in by_sys.items()}
        for s in TABLE3:
            means[s]["per_seed"] = [statistics.fmean(per_clip(t, s, metric).values()) for t in tables]
        steps = {f"{a} - {b}": paired(by_sys[b], by_sys[a]) for a, b in zip(TABLE3, TABLE3[1:])}
        steps["MultiCoT - No-CoT"] = paired(by_sys["No-CoT"], by_sys["MultiCoT"])
        out["metrics"][metric] = {"systems": means, "paired": steps,
                                  "status": verdict([steps[f"{a} - {b}"] for a, b in zip(TABLE3, TABLE3[1:])])}
    statuses = {m["status"] for m in out["metrics"].values()}
    out["status"] = statuses.pop() if len(statuses) == 1 else "mixed"
    return out


def clip_rows(eval_dir: Path) -> list[dict[str, Any]]:
    p = eval_dir / "table.clips.jsonl"
    return read_jsonl(p) if p.is_file() else []


def table4(runs: Path) -> dict[str, Any]:
    rewards_path = runs / "grpo_default" / "eval" / "rewards.json"
    if not rewards_path.is_file():
        return {"status": "not run", "why": f"no {rewards_path} (make grpo-default)"}
    r = json.loads(rewards_path.read_text())
    clips, base = r["per_clip"], r["per_clip"]["before"]
    summary = _summary(runs)
    rows: dict[str, Any] = {}
    for dim in DIMENSIONS:
        name = f"only_{dim}"
        if name not in clips:
            rows[name] = {"status": "not run"}
            continue
        d = {k: paired(base[k], clips[name][k]) for k in (*DIMENSIONS, "total")}
        rows[name] = {"iterations": _iterations(summary, name), "paired": d, "status": verdict([d[dim]]),
                      "claim": f"raises {dim}"}
    for name in ("after", "multi_short"):
        if name in clips:
            d = {k: paired(base[k], clips[name][k]) for k in (*DIMENSIONS, "total")}
            rows[name] = {"iterations": _iterations(summary, "multi" if name == "after" else name), "paired": d,
                          "status": verdict([d[k] for k in DIMENSIONS]), "claim": "raises all four"}
    done = [v["status"] for v in rows.values() if v["status"] != "not run"]
    return {"rows": rows, "status": "met" if done and all(s == "met" for s in done) else ("not run" if not done else "not met")}


def table12(runs: Path) -> dict[str, Any]:
    ev = runs / "grpo_default" / "eval"
    rewards_path = ev / "rewards.json"
    r = json.loads(rewards_path.read_text()) if rewards_path.is_file() else {}
    if "nokl" not in r.get("per_clip", {}):
        return {"status": "not run", "why": "no nokl system in runs/grpo_default/eval/rewards.json "
                                            "(ABLATIONS=nokl scripts/post_train_default.sh)"}
    with_kl, no_kl = r["per_clip"]["after"], r["per_clip"]["nokl"]
    rewards = {k: paired(with_kl[k], no_kl[k]) for k in (*DIMENSIONS, "total")}
    rows = clip_rows(ev)
    truth = {m: paired(per_clip(rows, "after", m), per_clip(rows, "nokl", m)) for m in ("class_recall", "side_acc", "KL")}
    table = json.loads((ev / "table.json").read_text())["cells"]["all"]
    fd = {s: table[s]["FD"]["mean"] for s in ("before", "after", "nokl")}
    summary = _summary(runs)
    drift = {s: summary.get("training", {}).get(s, {}).get("weight_drift") for s in ("multi", "nokl")}
    rises = rewards["total"]["above_zero"]
    worse = (fd["nokl"] > fd["after"], truth["KL"]["above_zero"], truth["class_recall"]["below_zero"],
             truth["side_acc"]["below_zero"])
    status = "met" if rises and any(worse) else ("direction only" if rewards["total"]["mean"] > 0 and any(worse) else "not met")
    return {"paired_nokl_minus_kl": rewards, "ground_truth_nokl_minus_kl": truth, "FD": fd, "weight_drift": drift,
            "rewards_rise": rises, "FD_worse": worse[0], "KL_worse": worse[1], "class_recall_worse": worse[2],
            "side_acc_worse": worse[3], "status": status}


def figure2(runs: Path, images: Path) -> dict[str, Any]:
    seeds = sorted((runs / "paper_claims" / "fig2").glob("seed*.json"))
    if not seeds:
        return {"status": "not run", "why": "no runs/paper_claims/fig2/seed*.json (benchmarks/bench_grpo.py)"}
    res = [json.loads(p.read_text()) for p in seeds]
    per_seed = []
    for p, d in zip(seeds, res):
        t = d["summary"].get("time_to_flow_final_reward", {})
        per_seed.append({"seed": p.stem, "speedup": d["summary"].get("speedup_fast_over_flow"), **t})
    _plot_fig2(res, images / "paper_claims_fig2.png")
    reached = [s.get("reached_faster", False) for s in per_seed]
    status = "met" if len(seeds) >= 3 and all(reached) else ("not met" if len(seeds) >= 3 else "not met (< 3 seeds)")
    return {"seeds": per_seed, "reached_faster_in": f"{sum(reached)}/{len(reached)}", "status": status,
            "speedup_per_iteration": statistics.fmean(s["speedup"] for s in per_seed if s["speedup"])}


def _summary(runs: Path) -> dict[str, Any]:
    p = runs / "grpo_default" / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def _iterations(summary: dict[str, Any], name: str) -> int | None:
    return summary.get("training", {}).get(name, {}).get("iterations")


def _plot_fig2(res: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    colors = {"fast": "tab:blue", "flow": "tab:orange"}
    for i, d in enumerate(res):
        for run in d["runs"]:
            c = run["curve"]
            k = 3
            sm = [statistics.fmean(c["reward"][max(0, j + 1 - k): j + 1]) for j in range(len(c["reward"]))]
            label = f"{run['mode'].capitalize()}-GRPO" if i == 0 else None
            ax.plot(c["wall_clock"], sm, color=colors[run["mode"]], alpha=0.8, marker="o", ms=3, label=label)
    ax.set_xlabel("wall clock (s)")
    ax.set_ylabel("training reward (trailing mean of 3)")
    ax.set_title(f"Figure 2 on prismaudio-mini: {len(res)} seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_table3(t3: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TABLE3_METRICS), figsize=(7, 3))
    for ax, metric in zip(axes, TABLE3_METRICS):
        sys_ = t3["metrics"][metric]["systems"]
        m = [sys_[s]["mean"] for s in TABLE3]
        err = [[sys_[s]["mean"] - sys_[s]["ci95"][0] for s in TABLE3], [sys_[s]["ci95"][1] - sys_[s]["mean"] for s in TABLE3]]
        ax.bar(range(len(TABLE3)), m, yerr=err, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(TABLE3)), TABLE3, fontsize=7)
        ax.set_title(metric, fontsize=9)
        ax.set_ylim(min(m) * 0.8, max(1.0, max(m) * 1.05))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fmt(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def markdown(c: dict[str, Any]) -> str:
    L = ["# The paper's claims on the offline default", "",
         "Written by `make paper-claims` (`scripts/paper_claims.sh` runs the experiments, `scripts/paper_claims.py` "
         "writes this page and `paper_claims.json`). Each difference is a paired mean over test clips with its 95 % "
         "bootstrap interval. **met**: every interval the claim needs is on the claimed side of zero; **direction "
         "only**: the means agree, an interval spans zero; **not met**: a mean goes the other way.", ""]
    t3 = c["table3"]
    L += ["## Table 3: CoT variants (MultiCoT > Monolithic > Random > No-CoT)", ""]
    if t3["status"] == "not run":
        L += [f"Not run: {t3['why']}.", ""]
    else:
        L += [f"Seeds: {', '.join(t3['seeds'])}; four CoT fine-tunes from one foundation (`scripts/cot_variants.sh`), "
              "each generated with its own CoT rendering on the test split.", "",
              "| | " + " | ".join(TABLE3) + " | " + " | ".join(f"{a} − {b}" for a, b in zip(TABLE3, TABLE3[1:]))
              + " | MultiCoT − No-CoT | claim |",
              "|---|" + "---:|" * (2 * len(TABLE3)) + "---|"]
        for metric, m in t3["metrics"].items():
            cells = [f"{m['systems'][s]['mean']:.3f}" for s in TABLE3]
            cells += [fmt(m["paired"][f"{a} - {b}"]) for a, b in zip(TABLE3, TABLE3[1:])]
            cells.append(fmt(m["paired"]["MultiCoT - No-CoT"]))
            L.append(f"| {metric} | " + " | ".join(cells) + f" | **{m['status']}** |")
        L += ["", "![Table 3](images/paper_claims_table3.png)", ""]
    t4 = c["table4"]
    L += ["## Table 4: single rewards vs the four-reward mix (Fast-GRPO from the same base)", ""]
    if t4["status"] == "not run" and "rows" not in t4:
        L += [f"Not run: {t4['why']}.", ""]
    else:
        L += ["Paired difference from the base on the test split (`runs/grpo_default/eval/rewards.json`).", "",
              "| run | iterations | claim | " + " | ".join(DIMENSIONS) + " | status |", "|---|---:|---|" + "---:|" * 4 + "---|"]
        for name, row in t4["rows"].items():
            if row["status"] == "not run":
                L.append(f"| {name} | | | " + " | ".join("–" for _ in DIMENSIONS) + " | not run |")
                continue
            L.append(f"| {name} | {row['iterations']} | {row['claim']} | "
                     + " | ".join(fmt(row["paired"][k]) for k in DIMENSIONS) + f" | **{row['status']}** |")
        L.append("")
    t12 = c["table12"]
    L += ["## Table 12: without the KL term", ""]
    if t12["status"] == "not run":
        L += [f"Not run: {t12['why']}.", ""]
    else:
        p, g = t12["paired_nokl_minus_kl"], t12["ground_truth_nokl_minus_kl"]
        L += ["No-KL minus with-KL, same iterations and prompts (paired over test clips):", "",
              "| measure | no KL − KL |", "|---|---:|"]
        L += [f"| reward {k} | {fmt(p[k])} |" for k in (*DIMENSIONS, "total")]
        L += [f"| {k} | {fmt(g[k])} |" for k in g]
        L += [f"| FD (before / with KL / no KL) | {t12['FD']['before']:.4f} / {t12['FD']['after']:.4f} / {t12['FD']['nokl']:.4f} |",
              f"| weight drift (with KL / no KL) | {_pct(t12['weight_drift']['multi'])} / {_pct(t12['weight_drift']['nokl'])} |",
              "", f"Claim (rewards rise while FD, KL or a ground-truth measure worsens): **{t12['status']}**.", ""]
    f2 = c["figure2"]
    L += ["## Figure 2: Fast-GRPO vs Flow-GRPO against wall clock", ""]
    if f2["status"] == "not run":
        L += [f"Not run: {f2['why']}.", ""]
    else:
        L += ["| seed | Flow-GRPO final reward | at (s) | Fast-GRPO reaches it at (s) | Fast final | speed-up per iteration |",
              "|---|---:|---:|---:|---:|---:|"]
        for s in f2["seeds"]:
            hit = f"{s['fast_wall_clock_to_reach']:.0f}" if s.get("fast_wall_clock_to_reach") is not None else "never"
            L.append(f"| {s['seed']} | {s['flow_final_reward']:.3f} | {s['flow_wall_clock']:.0f} | {hit} | "
                     f"{s['fast_final_reward']:.3f} | {s['speedup']:.1f}x |")
        L += ["", f"Reached faster in {f2['reached_faster_in']} seeds: **{f2['status']}**.", "",
              "![Figure 2](images/paper_claims_fig2.png)", ""]
    return "\n".join(L)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f} %"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs", help="the runs folder paper_claims.sh wrote (default runs)")
    ap.add_argument("--out", default="docs", help="where paper_claims.md / .json / images go (default docs)")
    args = ap.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    try:
        claims = {"table3": table3(runs), "table4": table4(runs), "table12": table12(runs),
                  "figure2": figure2(runs, out / "images")}
    except (KeyError, ValueError, json.JSONDecodeError) as e:
        print(f"paper_claims: the runs under {runs} are incomplete or malformed: {e}", file=sys.stderr)
        return 2
    if claims["table3"]["status"] != "not run":
        _plot_table3(claims["table3"], out / "images" / "paper_claims_table3.png")
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_claims.json").write_text(json.dumps(claims, indent=1) + "\n")
    (out / "paper_claims.md").write_text(markdown(claims))
    for k, v in claims.items():
        print(f"{k}: {v['status']}")
    print(f"wrote {out / 'paper_claims.md'} and {out / 'paper_claims.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
