#!/usr/bin/env bash
# Reproduce the shipped offline default `src/prismaudio/assets/prismaudio-mini` from nothing (`make train-default`):
#   corpus -> VAE (stage 0: a spectral codec with parametric stereo, 4,000 steps, then to 8,000 with a
#   20x KL weight) -> foundation (stage 1, captions: 1,000 steps, then continued to 4,500 with a fresh
#   cosine) -> CoT fine-tune (stage 2), twice from the same foundation: `multi` (the shipped model) and
#   `none` (the No-CoT ablation) -> float16 pack -> evaluation on the test split -> training summary
#   (loss PNG + metrics JSON) beside the model. The two-phase VAE and foundation are how the shipped
#   weights were made (docs/training_notes.md: the shipped VAE was also warm-started from an earlier
#   learned-phase codec run, which this script does not repeat).
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
steps_done() { "$BIN/python" -c "import json,sys; print(json.load(open(sys.argv[1]))['step'])" "$1/train_summary.json" 2>/dev/null || echo 0; }
extend() {  # extend NAME CONFIG OUT STEPS [--set ...]: continue a finished stage to STEPS steps
    local name=$1 config=$2 out=$3 steps=$4
    shift 4
    if [ "$(steps_done "$out")" -ge "$steps" ]; then echo "== $name: done ($steps steps)"; return; fi
    echo "== $name -> $out ($steps steps)"
    "$PA" train "$config" --out "$out" --resume --set max_steps="$steps" "$@" >>"$LOG/$name.log" 2>&1
}

stamp start
if [ ! -f "$CORPUS/manifest.jsonl" ]; then
    echo "== corpus -> $CORPUS"
    "$PA" synth --out "$CORPUS" --n 2400 --seed 0 --workers 2 --quiet
fi
stamp corpus
[ -f runs/vae_spec_init/config.json ] || "$BIN/python" scripts/init_parametric_vae.py --from "$MODEL" \
    --out runs/vae_spec_init --codec spectral >>"$LOG/vae.log" 2>&1
stage vae configs/train/vae_spec_mini.yaml runs/vae_mini
extend vae2 configs/train/vae_spec_mini.yaml runs/vae_mini 8000 --set vae.kl_weight=2.0e-3
stamp vae
stage foundation configs/train/foundation_mini.yaml runs/foundation_mini
extend foundation2 configs/train/foundation_mini.yaml runs/foundation_mini 4500
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
# The audio-context stage (issue 18: inpaint / extend / add / remove) continues the MultiCoT model;
# it is the shipped model (it also generates better from the video alone: docs/training_notes.md).
stage context configs/train/context_mini.yaml runs/context_mini --set model=runs/cot_mini/final --set max_steps=1500
stamp cot
"$BIN/python" scripts/pack_model.py runs/context_mini/final "$MODEL"
rm -f "$MODEL/grpo_summary.png"  # describes the weights before this retrain; make grpo-default rewrites it
stamp pack

echo "== evaluation on the test split"
EVAL=runs/eval_default
mkdir -p "$EVAL"
"$BIN/python" benchmarks/bench_vae.py --model "$MODEL" --corpus "$CORPUS" --out "$EVAL/vae.json" \
    --write "$EVAL/vae_recon" >>"$LOG/eval.log" 2>&1
"$PA" generate --manifest "$CORPUS/manifest.jsonl" --split test --model "$MODEL" --out "$EVAL/shipped" --quiet
"$PA" generate --manifest "$CORPUS/manifest.jsonl" --split test --model runs/cot_mini/final --out "$EVAL/multicot" --quiet
"$PA" generate --manifest "$CORPUS/manifest.jsonl" --split test --model runs/cot_none_mini/final \
    --planner none --out "$EVAL/nocot" --quiet
"$PA" evaluate --manifest "$CORPUS/manifest.jsonl" --generated "Shipped=$EVAL/shipped" --generated "MultiCoT=$EVAL/multicot" \
    --generated "No-CoT=$EVAL/nocot" --generated "VAE-recon=$EVAL/vae_recon" --out "$EVAL/table" --quiet \
    >"$EVAL/table.stdout"
stamp eval
"$BIN/python" scripts/training_summary.py --runs runs --eval "$EVAL" --times "$LOG" --out "$MODEL"
echo "== done: $MODEL"
