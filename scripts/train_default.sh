#!/usr/bin/env bash
# Reproduce the shipped offline default `src/prismaudio/assets/prismaudio-mini` from nothing (`make train-default`):
#   corpus -> VAE (stage 0) -> foundation (stage 1, captions) -> CoT fine-tune (stage 2), twice from
#   the same foundation: `multi` (the shipped model) and `none` (the No-CoT ablation) -> float16 pack
#   -> evaluation on the test split -> training summary (loss PNG + metrics JSON) beside the model.
# Every step is resumable: re-running the script continues where it stopped (finished stages are
# skipped, a killed stage resumes from its last checkpoint). Budget on 2 CPU cores: see README.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PA="$BIN/prismaudio"
CORPUS=data/corpus
MODEL=${MODEL_OUT:-src/prismaudio/assets/prismaudio-mini}
LOG=runs/train_default
mkdir -p "$LOG"
stamp() { date +%s >"$LOG/$1.time"; }
stage() {  # stage NAME CONFIG OUT [--set ...]: run (or resume) one training stage unless exported
    local name=$1 config=$2 out=$3
    shift 3
    if [ -f "$out/final/config.json" ]; then echo "== $name: done ($out/final)"; return; fi
    echo "== $name -> $out"
    "$PA" train "$config" --out "$out" --resume "$@" >>"$LOG/$name.log" 2>&1
}

stamp start
if [ ! -f "$CORPUS/manifest.jsonl" ]; then
    echo "== corpus -> $CORPUS"
    "$PA" synth --out "$CORPUS" --n 2400 --seed 0 --workers 2 --quiet
fi
stamp corpus
stage vae configs/train/vae_mini.yaml runs/vae_mini
stamp vae
stage foundation configs/train/foundation_mini.yaml runs/foundation_mini
stamp foundation
# The two CoT variants run side by side, one core each (same total work, half the wall clock of
# running them one after the other with two threads each on this tiny model).
# cot_mini.yaml fine-tunes the shipped model by default; here both start from this run's foundation.
FOUNDATION=runs/foundation_mini/final
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 stage cot_multi configs/train/cot_mini.yaml runs/cot_mini \
    --set model=$FOUNDATION &
multi=$!
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 stage cot_none configs/train/cot_mini.yaml runs/cot_none_mini \
    --set model=$FOUNDATION --set cot_variant=none &
none=$!
wait $multi
wait $none
stamp cot
"$BIN/python" scripts/pack_model.py runs/cot_mini/final "$MODEL"
stamp pack

echo "== evaluation on the test split"
EVAL=runs/eval_default
mkdir -p "$EVAL"
"$BIN/python" benchmarks/bench_vae.py --model "$MODEL" --corpus "$CORPUS" --out "$EVAL/vae.json" \
    --write "$EVAL/vae_recon" >>"$LOG/eval.log" 2>&1
"$PA" generate --manifest "$CORPUS/manifest.jsonl" --split test --model "$MODEL" --out "$EVAL/multicot" --quiet
"$PA" generate --manifest "$CORPUS/manifest.jsonl" --split test --model runs/cot_none_mini/final \
    --planner none --out "$EVAL/nocot" --quiet
"$PA" evaluate --manifest "$CORPUS/manifest.jsonl" --generated "MultiCoT=$EVAL/multicot" \
    --generated "No-CoT=$EVAL/nocot" --generated "VAE-recon=$EVAL/vae_recon" --out "$EVAL/table" --quiet \
    >"$EVAL/table.stdout"
stamp eval
"$BIN/python" scripts/training_summary.py --runs runs --eval "$EVAL" --times "$LOG" --out "$MODEL"
echo "== done: $MODEL"
