"""The config pieces every run shares, and strict YAML loading for any run config dataclass.

A YAML file lists only what differs from the defaults; unknown keys fail with their dotted path
(a typo must never silently fall back to a default), `--set a.b=c` overrides are checked against
the same types after being applied, and relative paths resolve against the YAML file's folder.
`train/config.py` (the training stages) and `rl/config.py` (GRPO and the preference baselines)
both load through `load_run_config`, so the two cannot drift.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from ..config import PRESETS, apply_overrides, from_dict, read_config_file
from ..errors import PrismAudioError

SCHEDULES = ("cosine", "constant")


@dataclass
class DataConfig:
    """Where the clips come from: a corpus manifest decoded once into memory (and `cache_dir`),
    or, for the flow stages, the per-clip files of `prismaudio extract` (`features`)."""

    manifest: str = ""  # corpus manifest.jsonl (or its directory); relative to the config file
    split: str | None = "train"  # rows of this split only (null = every row)
    limit: int | None = None  # at most this many clips (the first ones, in manifest / id order)
    duration: float | None = None  # clip length in seconds (null = the model's duration)
    cache_dir: str | None = None  # persist the decoded in-memory dataset here (reused when it matches)
    seed: int = 0  # per-clip draws: the fixed posterior sample z = mean + std * eps, the random-CoT shuffle
    features: str | None = None  # a `prismaudio extract` output directory: train on its features (frozen encoders)


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


Check = Callable[[bool, str], None]


def checker(prefix: str) -> Check:
    """`check(ok, message)` raising `PrismAudioError(f"{prefix}: {message}")` when not ok."""

    def check(ok: bool, message: str) -> None:
        if not ok:
            raise PrismAudioError(f"{prefix}: {message}")

    return check


def validate_optim(o: OptimConfig, check: Check) -> None:
    """Every optimiser / schedule field, for every run kind (each is honoured by `harness.optim`)."""
    check(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be > 0, got {o.lr}")
    check(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    check(o.eps > 0 and math.isfinite(o.eps), f"optim.eps must be > 0, got {o.eps}")
    check(o.warmup_steps >= 0 and o.grad_clip >= 0 and o.weight_decay >= 0, "optim warmup_steps, grad_clip, weight_decay must be >= 0")
    check(o.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {o.schedule!r}")
    check(0.0 <= o.min_lr_ratio <= 1.0, "optim.min_lr_ratio must be in [0, 1]")


def validate_data(d: DataConfig, check: Check) -> None:
    check(bool(d.manifest) or bool(d.features), "data.manifest (or data.features) is required")
    check(d.duration is None or d.duration > 0, f"data.duration must be > 0, got {d.duration}")
    check(d.limit is None or d.limit > 0, f"data.limit must be > 0, got {d.limit}")


class RunConfig(Protocol):
    model: str
    data: DataConfig

    def to_dict(self) -> dict[str, Any]: ...


C = TypeVar("C", bound=RunConfig)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


_EXP_FLOAT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+\s*$")


def yaml_float(item: str) -> str:
    """`lr=3e-4` -> `lr=0.0003`: YAML 1.1 reads "3e-4" (no dot) as a string, a classic trap."""
    key, eq, value = item.partition("=")
    return f"{key}={float(value)!r}" if eq and _EXP_FLOAT.match(value) else item


def config_from_mapping(cls: type[C], data: dict[str, Any], overrides: Sequence[str] | None,
                        validate: Callable[[C], C], what: str, replace_whole: Sequence[str] = ()) -> C:
    """Defaults <- `data` (strict) <- `overrides` (dotted keys, YAML values, type-checked).

    Mappings named in `replace_whole` replace the default whole instead of merging into it
    (listing GRPO `rewards:` selects exactly those rewards).
    """
    if not isinstance(data, dict):
        raise PrismAudioError(f"{what}: expected a mapping at the top level, got {type(data).__name__}")
    from_dict(cls, copy.deepcopy(data))  # unknown keys / wrong types in the file itself, with their path
    base = cls().to_dict()
    for key in replace_whole:
        if key in data:
            base[key] = {}
    merged = deep_merge(base, data)
    apply_overrides(merged, [yaml_float(o) for o in overrides or []])
    return validate(from_dict(cls, merged))


def is_preset(name: str) -> bool:
    return name in PRESETS or name.startswith("preset:")


def resolve_path(value: str, base: Path) -> str:
    """`value` relative to `base` when it exists there, else as given (relative to the cwd)."""
    q = Path(value).expanduser()
    if q.is_absolute() or not (base / q).exists():
        return str(q)
    return str(base / q)


def load_run_config(path: str | Path, from_mapping: Callable[[dict[str, Any], Sequence[str] | None], C],
                    overrides: Sequence[str] | None, what: str) -> C:
    """Read a YAML run config with `from_mapping`; one `PrismAudioError` naming the file on any
    problem. Relative `data.manifest` / `data.cache_dir` / `data.features` / `model` paths are
    taken relative to the YAML file's folder when they exist there, else to the working directory."""
    p = Path(path)
    data = read_config_file(p, what, yaml_syntax=True) or {}
    try:
        cfg = from_mapping(data, overrides)
    except PrismAudioError as e:
        raise PrismAudioError(f"{p}: {e}") from None
    base = p.resolve().parent
    d = cfg.data
    if d.manifest:
        d.manifest = resolve_path(d.manifest, base)
    if d.cache_dir:
        d.cache_dir = resolve_path(d.cache_dir, base)
    if d.features:
        d.features = resolve_path(d.features, base)
    if not is_preset(cfg.model):
        cfg.model = resolve_path(cfg.model, base)
    return cfg
