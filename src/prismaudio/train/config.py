"""Training configuration: one `TrainConfig` dataclass tree, loaded strictly from YAML.

A YAML file lists only what differs from the defaults; unknown keys fail with their dotted path
(a typo must never silently fall back to a default), and `--set a.b=c` overrides are checked
against the same types after being applied.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import apply_overrides, from_dict
from ..errors import PrismAudioError

STAGES = ("vae", "foundation", "cot")
COT_VARIANTS = ("none", "random", "monolithic", "multi")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class DataConfig:
    """Where the clips come from. The corpus is decoded once into memory (and into `cache_dir`)."""

    manifest: str = ""  # corpus manifest.jsonl (or its directory); relative to the config file
    split: str | None = "train"  # rows of this split only (null = every row)
    limit: int | None = None  # at most this many clips (the first ones, in manifest order)
    duration: float | None = None  # clip length in seconds (null = the model's duration)
    cache_dir: str | None = None  # persist the decoded in-memory dataset here (reused when it matches)
    seed: int = 0  # per-clip draws: the fixed posterior sample z = mean + std * eps, the random-CoT shuffle


@dataclass
class OptimConfig:
    """AdamW + linear warm-up then cosine decay (to `min_lr_ratio * lr`) or a constant LR."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-3
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm (0 = off)


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
    ema_warmup: bool = True  # decay min(ema_decay, (1 + n) / (10 + n)) at step n (see trainer.EMA)
    checkpoint_every: int = 500
    keep_last: int = 3
    demo_every: int = 0  # 0 = no demos
    demo_steps: int = 12  # sampling steps of the flow demos
    log_every: int = 10
    seed: int = 0
    cot_variant: str = "multi"  # stage "cot": none | random | monolithic | multi
    modality_dropout: float = 0.1  # per-modality condition dropout (CFG training)
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise PrismAudioError(f"config: {message}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range and choice checks that the type checker in `from_dict` cannot express."""
    _check(cfg.stage in STAGES, f"stage must be one of {', '.join(STAGES)}, got {cfg.stage!r}")
    _check(cfg.cot_variant in COT_VARIANTS, f"cot_variant must be one of {', '.join(COT_VARIANTS)}, got {cfg.cot_variant!r}")
    _check(cfg.optim.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}")
    _check(cfg.mixed_precision in PRECISIONS, f"mixed_precision must be one of {', '.join(PRECISIONS)}")
    _check(bool(cfg.data.manifest), "data.manifest is required")
    for name in ("batch_size", "grad_accum", "max_steps", "checkpoint_every", "keep_last", "log_every", "demo_steps"):
        _check(getattr(cfg, name) > 0, f"{name} must be > 0, got {getattr(cfg, name)}")
    _check(cfg.demo_every >= 0, "demo_every must be >= 0")
    _check(0.0 <= cfg.ema_decay < 1.0, f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    _check(0.0 <= cfg.modality_dropout < 1.0, f"modality_dropout must be in [0, 1), got {cfg.modality_dropout}")
    o = cfg.optim
    _check(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be > 0, got {o.lr}")
    _check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    _check(o.warmup_steps >= 0 and o.grad_clip >= 0 and o.weight_decay >= 0, "optim warmup_steps, grad_clip, weight_decay must be >= 0")
    _check(0.0 <= o.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]")
    d = cfg.data
    _check(d.duration is None or d.duration > 0, f"data.duration must be > 0, got {d.duration}")
    _check(d.limit is None or d.limit > 0, f"data.limit must be > 0, got {d.limit}")
    v = cfg.vae
    _check(v.crop_seconds > 0, "vae.crop_seconds must be > 0")
    _check(bool(v.stft_sizes) and all(n >= 16 for n in v.stft_sizes), "vae.stft_sizes must be FFT sizes >= 16")
    _check(bool(v.disc_sizes) and all(n >= 16 for n in v.disc_sizes), "vae.disc_sizes must be FFT sizes >= 16")
    _check(v.disc_channels > 0, "vae.disc_channels must be > 0")
    weights = ("stft_weight", "stereo_weight", "phase_weight", "l1_weight", "kl_weight", "adv_weight", "feature_weight")
    _check(all(getattr(v, w) >= 0 for w in weights), f"vae loss weights ({', '.join(weights)}) must be >= 0")
    return cfg


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_EXP_FLOAT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+\s*$")


def _yaml_float(item: str) -> str:
    """`lr=3e-4` -> `lr=0.0003`: YAML 1.1 reads "3e-4" (no dot) as a string, a classic trap."""
    key, eq, value = item.partition("=")
    return f"{key}={float(value)!r}" if eq and _EXP_FLOAT.match(value) else item


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> TrainConfig:
    """Defaults <- `data` (strict) <- `overrides` (dotted keys, YAML values, type-checked)."""
    if not isinstance(data, dict):
        raise PrismAudioError(f"config: expected a mapping at the top level, got {type(data).__name__}")
    from_dict(TrainConfig, data)  # unknown keys / wrong types in the file itself, with their path
    merged = _deep_merge(TrainConfig().to_dict(), data)
    apply_overrides(merged, [_yaml_float(o) for o in overrides or []])
    return validate(from_dict(TrainConfig, merged))


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config. A relative `data.manifest` / `data.cache_dir` / `model` path is
    taken relative to the YAML file's folder when it exists there, else to the working directory."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise PrismAudioError(f"cannot read training config {p}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise PrismAudioError(f"cannot parse training config {p}: {e}") from None
    try:
        cfg = config_from_dict(data, overrides)
    except PrismAudioError as e:
        raise PrismAudioError(f"{p}: {e}") from None
    base = p.resolve().parent
    cfg.data.manifest = _resolve(cfg.data.manifest, base)
    if cfg.data.cache_dir:
        cfg.data.cache_dir = _resolve(cfg.data.cache_dir, base)
    if not _is_preset(cfg.model):
        cfg.model = _resolve(cfg.model, base)
    return cfg


def _is_preset(name: str) -> bool:
    from ..config import PRESETS

    return name in PRESETS or name.startswith("preset:")


def _resolve(value: str, base: Path) -> str:
    q = Path(value).expanduser()
    if q.is_absolute() or not (base / q).exists():
        return str(q)
    return str(base / q)
