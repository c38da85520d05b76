#!/usr/bin/env bash
# `make paper-claims` (issue 17 item 4): run the experiments behind docs/paper_claims.md, then write it.
#   Table 3    scripts/cot_variants.sh once per seed in SEEDS (~40 min each on 2 cores)
#   Table 4/12 scripts/post_train_default.sh with every ablation and SHIP=0 (the shipped model is untouched);
#              it resumes `make grpo-default`'s runs, so only what is missing trains (multi_short, nokl: ~30 min)
#   Figure 2   benchmarks/bench_grpo.py, Fast- vs Flow-GRPO from the CoT base, once per seed in FIG2_SEEDS
#              (~7 min each; run nothing else meanwhile: it measures wall clock)
#   report     scripts/paper_claims.py -> docs/paper_claims.md, docs/paper_claims.json, docs/images/paper_claims_*.png
# Needs `make grpo-default` first (its runs/grpo_default/base is the CoT base). Every stage resumes.
# Knobs (environment): SEEDS ("0 1"), FIG2_SEEDS ("0 1 2"), FIG2_ITERS (16 Fast-GRPO iterations; Flow-GRPO gets 3).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
SEEDS=${SEEDS:-0 1}
FIG2_SEEDS=${FIG2_SEEDS:-0 1 2}
FIG2_ITERS=${FIG2_ITERS:-16}
BASE=runs/grpo_default/base
[ -f "$BASE/config.json" ] || { echo "paper_claims: $BASE not found: run 'make grpo-default' first" >&2; exit 2; }

for s in $SEEDS; do
    echo "== Table 3, seed $s"
    SEED=$s BIN=$BIN bash scripts/cot_variants.sh
done
echo "== Tables 4 and 12"
ABLATIONS="short semantic temporal aesthetic spatial nokl" SHIP=0 BIN=$BIN bash scripts/post_train_default.sh
FIG2=runs/paper_claims/fig2
mkdir -p "$FIG2"
for s in $FIG2_SEEDS; do
    [ -f "$FIG2/seed$s.json" ] && continue
    echo "== Figure 2, seed $s"
    "$BIN/python" benchmarks/bench_grpo.py --model "$BASE" --iters "$FIG2_ITERS" --flow-iters 3 --threads 2 \
        --seed "$s" --json "$FIG2/seed$s.json.tmp" --png "$FIG2/seed$s.png" >"$FIG2/seed$s.log" 2>&1
    mv "$FIG2/seed$s.json.tmp" "$FIG2/seed$s.json"
done
"$BIN/python" scripts/paper_claims.py --runs runs --out docs
