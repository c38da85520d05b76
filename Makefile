# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The shipped models are package data (found through prismaudio.resources; $PRISMAUDIO_ASSETS overrides).
ASSETS := src/prismaudio/assets

# make web [WEB_ARGS="--port 8000 --model DIR"]: the web demo on http://127.0.0.1:7860 (Ctrl-C stops it).
WEB_ARGS ?=

.PHONY: setup demo web test test-slow bench judges visual-classifier train-default grpo-default paper-claims vae-ps-init vae-spec-init clean

# The venv is (re)built whenever pyproject.toml changes. torch is pinned first so pip takes the
# local CPU wheel (2.13.0) instead of resolving a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/prismaudio generate examples/example.mp4 --out outputs/demo

web: setup
	$(BIN)/python -m prismaudio.web $(WEB_ARGS)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/bench_inference.py
	$(BIN)/python benchmarks/bench_synth.py
	$(BIN)/python benchmarks/bench_metrics.py --corpus data/judge_corpus

# Reproduces the shipped offline judges (src/prismaudio/assets/judges/): corpus ~2 min, training ~15-25 min on 2 cores.
judges: setup
	$(BIN)/prismaudio synth --out data/judge_corpus --n 2400 --seed 0 --workers 2 --quiet
	$(BIN)/prismaudio train-judges --corpus data/judge_corpus --out $(ASSETS)/judges

# Reproduces the offline CoT planner's visual classifier (src/prismaudio/assets/visual_classifier/): ~12 min on 2 cores.
visual-classifier: setup
	$(BIN)/prismaudio synth --out data/judge_corpus --n 2400 --seed 0 --workers 2 --quiet
	$(BIN)/python -m prismaudio.procedural.train_visual --corpus data/judge_corpus --out $(ASSETS)/visual_classifier --train-clips 1000
	$(BIN)/python benchmarks/bench_cot_offline.py --corpus data/judge_corpus --metrics $(ASSETS)/visual_classifier/metrics.json

# Reproduces the shipped default model (src/prismaudio/assets/prismaudio-mini) from nothing: corpus, VAE, foundation,
# CoT fine-tune (+ the No-CoT ablation), the audio-context stage (the shipped model), float16 pack, evaluation, training summary. Resumable.
train-default: setup
	BIN=$(BIN) bash scripts/train_default.sh

# Fast-GRPO post-training of the trained default (needs `make train-default` first) with the before/after
# evaluation; ABLATIONS="semantic temporal aesthetic spatial nokl" adds the single-reward / no-KL runs.
grpo-default: setup
	BIN=$(BIN) bash scripts/post_train_default.sh

# The paper's Tables 3, 4, 12 and Figure 2 on the offline default, with bootstrap intervals
# -> docs/paper_claims.md (+ .json, figures). Needs `make grpo-default`; resumable; ~2.5 h on 2 cores.
paper-claims: setup
	BIN=$(BIN) bash scripts/paper_claims.sh

# Issue 17's candidate mini autoencoders (docs/training_notes.md): the model directories their VAE stages
# start from. vae-ps-init: the stage-0 stereo Oobleck (from make train-default) made mono, with parametric
# stereo; vae-spec-init: a fresh spectral codec with parametric stereo (configs/train/vae_spec_mini.yaml).
vae-ps-init: setup
	$(BIN)/python scripts/init_parametric_vae.py --from runs/vae_mini/final --out runs/vae_ps_init

vae-spec-init: setup
	$(BIN)/python scripts/init_parametric_vae.py --from $(ASSETS)/prismaudio-mini --out runs/vae_spec_init --codec spectral

clean:
	rm -rf $(VENV) outputs .pytest_cache
