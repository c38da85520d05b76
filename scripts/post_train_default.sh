#!/usr/bin/env bash
# Fast-GRPO post-training of the default model (`make grpo-default`), issue 7 / paper §3.3.2:
#   base = the CoT fine-tune exported by `make train-default` (runs/cot_mini/final)
#   -> multi-reward Fast-GRPO (configs/grpo/fast_grpo_mini.yaml, the official reward mix)
#   -> optional ablations from the same base: each reward alone, and no KL (paper Tables 4 and 12)
#   -> generation on the test split + `prismaudio evaluate` + mean rewards, before vs after
#   -> runs/grpo_default/summary.json (targets stated next to the measured values).
# Knobs (environment): ITERS (multi-reward run, default 300), ABLATIONS ("semantic temporal aesthetic
# spatial nokl" or a subset; default none), ABL_ITERS (default = ITERS), LIMIT (test clips, default all).
# Every step is resumable: finished runs/generations are skipped, a killed run resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PA="$BIN/prismaudio"
CORPUS=data/corpus
BASE=${BASE:-runs/cot_mini/final}
ITERS=${ITERS:-300}
ABL_ITERS=${ABL_ITERS:-$ITERS}
ABLATIONS=${ABLATIONS:-}
LIMIT=${LIMIT:-}
OUT=runs/grpo_default
EVAL=$OUT/eval
mkdir -p "$EVAL"
[ -f "$BASE/config.json" ] || { echo "post_train_default: $BASE not found: run 'make train-default' first" >&2; exit 2; }
stamp() { date +%s >"$OUT/$1.time"; }

grpo_run() {  # grpo_run NAME ITERATIONS [--set ...]
    local name=$1 iters=$2
    shift 2
    if [ -f "$OUT/$name/final/config.json" ]; then echo "== grpo $name: done"; return; fi
    echo "== grpo $name ($iters iterations) -> $OUT/$name"
    "$PA" grpo configs/grpo/fast_grpo_mini.yaml --out "$OUT/$name" --resume --set "model=$BASE" \
        --set "iterations=$iters" "$@" >>"$OUT/$name.log" 2>&1
    stamp "$name"
}
generate() {  # generate NAME MODEL
    local name=$1 model=$2
    if [ -f "$EVAL/$name.done" ]; then return; fi
    "$PA" generate --manifest "$CORPUS/manifest.jsonl" --split test ${LIMIT:+--limit "$LIMIT"} \
        --model "$model" --out "$EVAL/$name" --quiet
    touch "$EVAL/$name.done"
}

stamp start
grpo_run multi "$ITERS"
declare -a systems=("before=$BASE" "after=$OUT/multi/final")
for abl in $ABLATIONS; do
    case $abl in
        semantic|temporal|aesthetic|spatial)
            sets=()
            for k in semantic temporal aesthetic spatial; do
                [ "$k" = "$abl" ] && sets+=(--set "rewards.$k=1.0") || sets+=(--set "rewards.$k=0.0")
            done
            grpo_run "only_$abl" "$ABL_ITERS" "${sets[@]}"
            systems+=("only_$abl=$OUT/only_$abl/final") ;;
        nokl)
            grpo_run nokl "$ABL_ITERS" --set loss.beta=0.0
            systems+=("nokl=$OUT/nokl/final") ;;
        *) echo "post_train_default: unknown ablation '$abl'" >&2; exit 2 ;;
    esac
done

echo "== evaluation on the test split"
gen_args=()
for s in "${systems[@]}"; do
    name=${s%%=*}
    generate "$name" "${s#*=}"
    gen_args+=(--generated "$name=$EVAL/$name")
done
"$PA" evaluate --manifest "$CORPUS/manifest.jsonl" "${gen_args[@]}" --out "$EVAL/table" --quiet >"$EVAL/table.stdout"
"$BIN/python" benchmarks/score_rewards.py --manifest "$CORPUS/manifest.jsonl" "${gen_args[@]}" \
    --out "$EVAL/rewards.json" >"$EVAL/rewards.stdout"
stamp eval
"$BIN/python" scripts/grpo_summary.py --out "$OUT"
echo "== done: $OUT/multi/final (summary: $OUT/summary.json)"
