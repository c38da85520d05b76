"""Training configuration: one `TrainConfig` dataclass tree, loaded strictly from YAML.

The data and optimiser sections and the strict loading (unknown keys fail with their dotted path,
`--set a.b=c` overrides are type-checked) are the run harness's, shared with `rl/config.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness.config import (
    DataConfig,
    OptimConfig,
    checker,
    config_from_mapping,
    load_run_config,
    validate_data,
    validate_optim,
)

STAGES = ("vae", "foundation", "cot")
COT_VARIANTS = ("none", "random", "monolithic", "multi")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class VAELossConfig:
    """Stage 0 objective: multi-resolution STFT + time-domain L1 + small KL (+ optional adversarial)."""

    crop_seconds: float = 1.0  # random audio crop per item (rounded to whole latent frames)
    stft_sizes: list[int] = field(default_factory=lambda: [2048, 1024, 512, 256, 128])
    stft_weight: float = 1.0
    stereo_weight: float = 1.0  # MR-STFT of L + R and L - R (stereo only): the stereo width
    phase_weight: float = 1.0  # inter-channel phase difference loss (stereo only): which side leads
    l1_weight: float = 1.0
    kl_weight: float = 1e-4
    adversarial: bool = False
    adv_weight: float = 0.1
    feature_weight: float = 1.0  # discriminator feature matching (only with adversarial)
    disc_sizes: list[int] = field(default_factory=lambda: [1024, 512, 256])
    disc_channels: int = 16


CONTEXT_TASKS = ("inpaint", "extend", "add", "remove")


@dataclass
class ContextTrainConfig:
    """Audio-context conditioning (issue 18), a block of the foundation / cot stages.

    With `enabled`, the DiT gets its zero-initialised context projection (a model trained without
    context starts unchanged) and every item draws one task: none (the context dropped, with
    probability `context_dropout`: its own CFG dropout, independent of the three condition masks),
    else inpaint / extend / add / remove with the relative `weights`. add / remove pairs are the
    corpus clip re-rendered without one source (`procedural/synth/pairs.py`), so they need a
    procedural corpus made with `corpus_seed`; clips without such pairs draw inpaint instead.
    A YAML `weights` mapping is merged into the defaults (1 each): set a task to 0 to leave it out.
    """

    enabled: bool = False
    context_dropout: float = 0.2
    weights: dict[str, float] = field(default_factory=lambda: {"inpaint": 1.0, "extend": 1.0, "add": 1.0, "remove": 1.0})
    region_s: list[float] = field(default_factory=lambda: [0.25, 1.5])  # inpaint: hidden region length range
    prefix: list[float] = field(default_factory=lambda: [0.2, 0.8])  # extend: kept prefix, fraction of the clip
    corpus_seed: int = 0  # `prismaudio synth --seed` of the corpus (to re-render it without a source)


@dataclass
class TrainConfig:
    """Everything one `prismaudio train` run needs; saved inside every checkpoint."""

    stage: str = "foundation"  # "vae" | "foundation" | "cot"
    model: str = "mini"  # a preset name, or a model directory (e.g. the export of the vae stage)
    out_dir: str = "runs/train"  # relative to the current directory; `--out` overrides
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    vae: VAELossConfig = field(default_factory=VAELossConfig)
    batch_size: int = 16  # per process
    grad_accum: int = 1
    max_steps: int = 1000  # optimizer steps
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) at step n (see harness.ema)
    checkpoint_every: int = 500
    keep_last: int = 3
    demo_every: int = 0  # 0 = no demos
    demo_steps: int = 12  # sampling steps of the flow demos
    log_every: int = 10
    seed: int = 0
    cot_variant: str = "multi"  # stage "cot": none | random | monolithic | multi
    modality_dropout: float = 0.1  # per-modality condition dropout (CFG training)
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    context: ContextTrainConfig = field(default_factory=ContextTrainConfig)  # audio-context tasks (issue 18)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_check = checker("config")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range and choice checks that the type checker in `from_dict` cannot express."""
    _check(cfg.stage in STAGES, f"stage must be one of {', '.join(STAGES)}, got {cfg.stage!r}")
    _check(cfg.cot_variant in COT_VARIANTS, f"cot_variant must be one of {', '.join(COT_VARIANTS)}, got {cfg.cot_variant!r}")
    _check(cfg.mixed_precision in PRECISIONS, f"mixed_precision must be one of {', '.join(PRECISIONS)}")
    validate_data(cfg.data, _check)
    _check(not (cfg.data.features and cfg.data.manifest),
           "give data.manifest or data.features, not both (set the other to '')")
    _check(not (cfg.data.features and cfg.data.cache_dir), "data.cache_dir caches decoded manifests; "
           "data.features is read directly")
    _check(cfg.data.features is None or cfg.stage != "vae",
           "data.features holds latents, not audio: the vae stage trains from data.manifest")
    _check(cfg.data.features is None or cfg.cot_variant != "random" or cfg.stage != "cot",
           "cot_variant random shuffles the CoT per clip: extracted features hold one fixed text; "
           "train it from data.manifest")
    for name in ("batch_size", "grad_accum", "max_steps", "checkpoint_every", "keep_last", "log_every", "demo_steps"):
        _check(getattr(cfg, name) > 0, f"{name} must be > 0, got {getattr(cfg, name)}")
    _check(cfg.demo_every >= 0, "demo_every must be >= 0")
    _check(0.0 <= cfg.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    _check(0.0 <= cfg.modality_dropout < 1.0, f"modality_dropout must be in [0, 1), got {cfg.modality_dropout}")
    validate_optim(cfg.optim, _check)
    c = cfg.context
    if c.enabled:
        _check(cfg.stage in ("foundation", "cot"), f"context training is a block of the foundation / cot stages, not {cfg.stage!r}")
        _check(not cfg.data.features, "context training re-renders and encodes audio: train it from data.manifest")
    _check(0.0 <= c.context_dropout < 1.0, f"context.context_dropout must be in [0, 1), got {c.context_dropout}")
    unknown = sorted(set(c.weights) - set(CONTEXT_TASKS))
    _check(not unknown, f"context.weights: unknown task(s) {', '.join(unknown)} (choose from {', '.join(CONTEXT_TASKS)})")
    _check(all(w >= 0 for w in c.weights.values()) and sum(c.weights.values()) > 0,
           "context.weights must be >= 0 with a positive sum")
    _check(len(c.region_s) == 2 and 0 < c.region_s[0] <= c.region_s[1], "context.region_s must be [min, max] seconds, 0 < min <= max")
    _check(len(c.prefix) == 2 and 0 < c.prefix[0] <= c.prefix[1] < 1, "context.prefix must be [min, max] fractions, 0 < min <= max < 1")
    v = cfg.vae
    _check(v.crop_seconds > 0, "vae.crop_seconds must be > 0")
    _check(bool(v.stft_sizes) and all(n >= 16 for n in v.stft_sizes), "vae.stft_sizes must be FFT sizes >= 16")
    _check(bool(v.disc_sizes) and all(n >= 16 for n in v.disc_sizes), "vae.disc_sizes must be FFT sizes >= 16")
    _check(v.disc_channels > 0, "vae.disc_channels must be > 0")
    weights = ("stft_weight", "stereo_weight", "phase_weight", "l1_weight", "kl_weight", "adv_weight", "feature_weight")
    _check(all(getattr(v, w) >= 0 for w in weights), f"vae loss weights ({', '.join(weights)}) must be >= 0")
    return cfg


def config_from_dict(data: dict[str, Any], overrides: Sequence[str] | None = None) -> TrainConfig:
    """Defaults <- `data` (strict) <- `overrides` (dotted keys, YAML values, type-checked)."""
    return config_from_mapping(TrainConfig, data, overrides, validate, "config")


def load_train_config(path: str | Path, overrides: Sequence[str] | None = None) -> TrainConfig:
    """Read a YAML training config (relative paths resolve against its folder; see `harness.config`)."""
    return load_run_config(path, config_from_dict, overrides, "training config")
