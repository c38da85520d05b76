"""RL post-training configuration: one `GRPOConfig` tree, loaded strictly from YAML.

Defaults are the paper's (Appendix D) and the official code's (official_network.md §10.6): T = 24
sampling steps, an SDE window of w = 2, group size 16, noise level 0.7, KL weight β = 0.04,
lr 1e-5 (AdamW, wd 1e-4, grad-clip 1), clip range 1e-4, advantage clip 5, CFG 5 in rollouts and in
the training forward, EMA decay min((1 + s)/(10 + s), 0.9). Unknown keys fail with their dotted
path, `--set a.b=c` overrides are type-checked (the run harness's loader, as `train/config.py`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..harness import config as runcfg
from ..harness.config import DataConfig, OptimConfig

MODES = ("fast", "flow")
ALGORITHMS = ("grpo", "sft", "rwr", "dpo")
TEXTS = ("cot", "caption")


@dataclass
class SamplerConfig:
    """Rollout sampler (paper eq. 1-2; official §10.1-10.3).

    mode "fast" (Fast-GRPO): ODE prefix shared by the group, SDE on a random window W(l) of width
    `window`, ODE after it. mode "flow" (Flow-GRPO): every step is SDE (the window is forced to
    all `steps` steps) and every group member has its own noise, no shared prefix.
    """

    mode: str = "fast"
    steps: int = 24
    window: int = 2
    noise_level: float = 0.7
    cfg_scale: float = 5.0
    sigma_min: float = 0.001  # official GRPO grid linspace(1, 0.001, T) + [0]
    max_window_start: int | None = None  # l ~ U{0..this}; None = T - w (paper eq. 1); official: T/2 = 12

    def effective_window(self) -> int:
        return self.steps if self.mode == "flow" else self.window


@dataclass
class LossConfig:
    """Eq. 6-7 constants. `global_std`: divide by the std of ALL rewards of the iteration (the
    official setting, §10.4) instead of the per-group std of eq. 6; `adv_eps` is its ε."""

    beta: float = 0.04  # KL weight (Appendix E.5)
    clip_range: float = 1e-4  # official base.py; the ratio is clipped to [1 - c, 1 + c]
    adv_clip: float = 5.0  # advantages clipped to [-adv_clip, adv_clip] at loss time
    global_std: bool = False
    adv_eps: float = 1e-4
    dpo_beta: float = 5.0  # Flow-DPO β (ReasonAudio Fig. 4: β = 5 best), per-element MSE scale
    rwr_temperature: float = 1.0  # Flow-RWR: softmax(r / τ) within a group


@dataclass
class GRPOConfig:
    """Everything one `prismaudio grpo` run needs; saved inside every checkpoint."""

    stage: str = "grpo"  # fixed: lets the harness (`harness/checkpoint.py`) refuse a checkpoint of another stage
    algorithm: str = "grpo"  # grpo | sft | rwr | dpo (preference.py, on the same sampled groups)
    model: str = "mini"  # a preset name (random weights), or a model directory (the CoT stage export)
    out_dir: str = "runs/grpo"
    text: str = "cot"  # text condition: the multi-dimensional CoT, or the caption
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(
        lr=1e-5, weight_decay=1e-4, warmup_steps=0, schedule="constant", grad_clip=1.0))
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    rewards: dict[str, float] = field(
        default_factory=lambda: {"semantic": 1.0, "temporal": 0.6, "aesthetic": 0.1, "spatial": 0.4})
    content_weights: bool = False  # per-prompt λ_k from the scene / CoT (weights.py)
    group_size: int = 16
    prompts_per_iter: int = 1  # unique prompts per iteration (per process)
    micro_batch: int = 16  # rows per policy forward in the update
    inner_epochs: int = 1
    grad_accum: int = 1  # micro-steps per optimizer update (micro-step = one window step of one chunk)
    iterations: int = 100
    ema_max_decay: float = 0.9  # decay = min((1 + s)/(10 + s), ema_max_decay), official ema.py
    ema_every: int = 1  # EMA update every k optimizer steps
    checkpoint_every: int = 10
    keep_last: int = 3
    log_every: int = 1
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def micro_steps_per_iteration(self) -> int:
        """GRPO: one micro-step per (inner epoch, window step, chunk of `micro_batch` rows);
        the preference losses: one per inner epoch (the whole batch at once)."""
        if self.algorithm != "grpo":
            return self.inner_epochs
        chunks = -(-self.prompts_per_iter * self.group_size // self.micro_batch)
        return self.inner_epochs * self.sampler.effective_window() * chunks

    def optimizer_steps(self) -> int:
        """Optimizer steps of the whole run: the length of a cosine `optim.schedule`."""
        return self.iterations * self.micro_steps_per_iteration() // self.grad_accum


_check = runcfg.checker("grpo config")


def validate(cfg: GRPOConfig) -> GRPOConfig:
    """Range checks, and the gradient-accumulation fix: updates happen exactly every `grad_accum`
    micro-steps and never straddle two sampling iterations (the official run's GA of 138 against
    24 micro-steps per epoch updated once per ~5.75 epochs, §10.6)."""
    s, lo = cfg.sampler, cfg.loss
    _check(cfg.stage == "grpo", f"stage must be 'grpo', got {cfg.stage!r}")
    _check(cfg.algorithm in ALGORITHMS, f"algorithm must be one of {', '.join(ALGORITHMS)}")
    _check(s.mode in MODES, f"sampler.mode must be one of {', '.join(MODES)}, got {s.mode!r}")
    _check(cfg.text in TEXTS, f"text must be one of {', '.join(TEXTS)}")
    runcfg.validate_data(cfg.data, _check)
    _check(bool(cfg.data.manifest), "data.manifest is required (rewards read each clip's video and scene)")
    _check(cfg.data.features is None, "data.features is for the flow training stages; GRPO decodes its "
           "clips from data.manifest")
    _check(s.steps > 0, "sampler.steps must be > 0")
    _check(1 <= s.effective_window() <= s.steps, f"sampler.window must be in [1, {s.steps}], got {s.window}")
    _check(s.noise_level > 0 and math.isfinite(s.noise_level), "sampler.noise_level must be > 0")
    _check(0 < s.sigma_min < 1, "sampler.sigma_min must be in (0, 1)")
    m = s.max_window_start
    _check(m is None or 0 <= m <= s.steps - s.effective_window(),
           f"sampler.max_window_start must be in [0, {s.steps - s.effective_window()}], got {m}")
    for name in ("group_size", "prompts_per_iter", "micro_batch", "inner_epochs", "grad_accum", "iterations",
                 "ema_every", "checkpoint_every", "keep_last", "log_every"):
        _check(getattr(cfg, name) > 0, f"{name} must be > 0, got {getattr(cfg, name)}")
    _check(cfg.group_size >= 2, "group_size must be >= 2 (advantages are relative to the group)")
    _check(lo.beta >= 0 and lo.clip_range > 0 and lo.adv_clip > 0 and lo.adv_eps > 0,
           "loss.beta >= 0, loss.clip_range, loss.adv_clip and loss.adv_eps > 0 required")
    _check(lo.dpo_beta > 0 and lo.rwr_temperature > 0, "loss.dpo_beta and loss.rwr_temperature must be > 0")
    _check(0.0 <= cfg.ema_max_decay < 1.0, "ema_max_decay must be in [0, 1)")
    _check(bool(cfg.rewards) and all(math.isfinite(w) for w in cfg.rewards.values()), "rewards: finite weights")
    runcfg.validate_optim(cfg.optim, _check)
    micro = cfg.micro_steps_per_iteration()
    _check(micro % cfg.grad_accum == 0,
           f"grad_accum {cfg.grad_accum} does not divide the {micro} micro-steps of one iteration "
           f"(inner_epochs x window steps x ceil(prompts_per_iter*group_size/micro_batch)); an update "
           "must not mix two iterations' rollouts")
    return cfg


def grpo_config_from_dict(data: dict[str, Any], overrides: Sequence[str] | None = None) -> GRPOConfig:
    """Defaults <- `data` (strict) <- `overrides`; a `rewards:` mapping replaces the default whole
    (listing rewards selects them)."""
    return runcfg.config_from_mapping(GRPOConfig, data, overrides, validate, "grpo config", replace_whole=("rewards",))


def load_grpo_config(path: str | Path, overrides: Sequence[str] | None = None) -> GRPOConfig:
    """Read a YAML config; relative paths resolve against the YAML's folder when they exist there."""
    return runcfg.load_run_config(path, grpo_config_from_dict, overrides, "grpo config")
