#!/usr/bin/env bash
# Fast-GRPO post-training of the default model (`make grpo-default`), issue 7 / paper §3.3.2:
#   base = the shipped CoT model packed by `make train-default` (src/prismaudio/assets/prismaudio-mini)
#   -> multi-reward Fast-GRPO (configs/grpo/fast_grpo_mini.yaml, the official reward mix)
#   -> optional ablations from the same base: each reward alone, and no KL (paper Tables 4 and 12)
#   -> generation on the test split + `prismaudio evaluate` + mean rewards, before vs after
#   -> runs/grpo_default/summary.json (targets stated next to the measured values)
#   -> SHIP=1 (default): the post-trained model packed over src/prismaudio/assets/prismaudio-mini, keeping the base's
#      metrics.json (plus a "post_training" section) and training_summary.png, adding grpo_summary.png.
# Knobs (environment):
#   ITERS      multi-reward run (default 100)
#   ABLATIONS  any of "short semantic temporal aesthetic spatial nokl" (default all; "" for none): each
#              reward alone, `nokl` = the multi-reward run (ITERS, all prompts) with beta = 0, and
#              `short` = the multi-reward mix on the ablations' budget, their
#              like-for-like reference (exported from multi's checkpoint at ABL_ITERS when ABL_CLIPS is ""
#              and that checkpoint exists: the same prompts; else trained like the others)
#   ABL_ITERS  iterations of each single-reward ablation (default 12)
#   ABL_CLIPS  ablations draw prompts from the first ABL_CLIPS train clips (default 320; "" = all):
#              start-up encodes every clip's condition, and a short run sees only 2 x ABL_ITERS prompts
#   LIMIT      test clips to generate and evaluate (default all)
#   BASE       model to post-train (default src/prismaudio/assets/prismaudio-mini); SHIP_TO (default src/prismaudio/assets/prismaudio-mini)
# Every step is resumable: finished runs/generations are skipped, a killed run resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PA="$BIN/prismaudio"
CORPUS=data/corpus
BASE=${BASE:-src/prismaudio/assets/prismaudio-mini}
SHIP=${SHIP:-1}
SHIP_TO=${SHIP_TO:-src/prismaudio/assets/prismaudio-mini}
ITERS=${ITERS:-100}
ABL_ITERS=${ABL_ITERS:-12}
ABLATIONS=${ABLATIONS-short semantic temporal aesthetic spatial nokl}
ABL_CLIPS=${ABL_CLIPS-320}
LIMIT=${LIMIT:-}
OUT=runs/grpo_default
EVAL=$OUT/eval
mkdir -p "$EVAL"
[ -f "$BASE/config.json" ] || { echo "post_train_default: $BASE not found: run 'make train-default' first" >&2; exit 2; }
if [ ! -f "$OUT/base/config.json" ]; then  # a copy: shipping replaces src/prismaudio/assets/prismaudio-mini at the end
    if grep -q '"post_training"' "$BASE/metrics.json" 2>/dev/null; then
        echo "post_train_default: $BASE is already post-trained; run 'make train-default' for the CoT base, or set BASE" >&2
        exit 2
    fi
    rm -rf "$OUT/base.tmp" && cp -r "$BASE" "$OUT/base.tmp" && mv "$OUT/base.tmp" "$OUT/base"
fi
BASE=$OUT/base
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
grpo_run multi "$ITERS" --set keep_last=1000  # keep every checkpoint: `short` exports one
declare -a systems=("before=$BASE" "after=$OUT/multi/final")
for abl in $ABLATIONS; do
    case $abl in
        semantic|temporal|aesthetic|spatial)
            sets=()
            for k in semantic temporal aesthetic spatial; do
                [ "$k" = "$abl" ] && sets+=(--set "rewards.$k=1.0") || sets+=(--set "rewards.$k=0.0")
            done
            grpo_run "only_$abl" "$ABL_ITERS" "${sets[@]}" ${ABL_CLIPS:+--set "data.limit=$ABL_CLIPS"}
            systems+=("only_$abl=$OUT/only_$abl/final") ;;
        short)
            step=$OUT/multi/checkpoints/$(printf 'step-%08d' "$ABL_ITERS")
            if [ -z "$ABL_CLIPS" ] && [ -d "$step" ] && [ ! -f "$OUT/multi_short/final/config.json" ]; then
                echo "== multi_short: multi's checkpoint at iteration $ABL_ITERS"
                mkdir -p "$OUT/multi_short"
                head -n "$ABL_ITERS" "$OUT/multi/metrics.jsonl" >"$OUT/multi_short/metrics.jsonl"
                "$BIN/python" scripts/export_checkpoint.py "$step" --base "$BASE" --out "$OUT/multi_short/final"
            fi
            grpo_run multi_short "$ABL_ITERS" ${ABL_CLIPS:+--set "data.limit=$ABL_CLIPS"}
            systems+=("multi_short=$OUT/multi_short/final") ;;
        nokl)  # Table 12: the multi-reward run itself without its KL term (same iterations and prompts)
            grpo_run nokl "$ITERS" --set loss.beta=0.0
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
if [ "$SHIP" = 1 ]; then
    keep=$(mktemp -d)
    cp "$BASE/metrics.json" "$BASE/training_summary.png" "$keep/" 2>/dev/null || true
    "$BIN/python" scripts/pack_model.py "$OUT/multi/final" "$SHIP_TO"
    cp "$keep"/* "$SHIP_TO/" 2>/dev/null || true
    rm -rf "$keep"
    "$BIN/python" scripts/grpo_summary.py --out "$OUT" --ship "$SHIP_TO"
    echo "== shipped: $SHIP_TO"
fi
echo "== done: $OUT/multi/final (summary: $OUT/summary.json)"
