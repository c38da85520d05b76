"""RL post-training of PrismAudio (paper §3.3): Fast-GRPO / Flow-GRPO and preference baselines.

* `config`: `GRPOConfig` (strict YAML, `--set` overrides), defaults from Appendix D / the official code;
* `rollout`: group sampling with a shared ODE prefix and a random SDE window (eq. 1-2);
* `grpo`: advantages (eq. 6) and the clipped objective + KL (eq. 4, 7);
* `preference`: best-of-group SFT, Flow-RWR, Flow-DPO on the same groups (ReasonAudio §4.4);
* `weights`: content-aware reward weights λ_k per prompt;
* `trainer`: the loop on accelerate (`prismaudio grpo CONFIG [--resume] [--set k=v] [--out DIR]`).
"""

from .config import (
    GRPOConfig,
    LossConfig,
    SamplerConfig,
    grpo_config_from_dict,
    load_grpo_config,
)
from .grpo import (
    GRPOLoss,
    NonFiniteLossError,
    compute_advantages,
    grpo_loss,
    kl_to_reference,
)
from .preference import dpo_loss, rwr_loss, sft_loss
from .rollout import CountingVelocity, Rollout, rollout, window_log_prob
from .weights import content_weights, scene_cues

__all__ = [
    "CountingVelocity",
    "GRPOConfig",
    "GRPOLoss",
    "GRPOTrainer",
    "LossConfig",
    "NonFiniteLossError",
    "Rollout",
    "SamplerConfig",
    "compute_advantages",
    "content_weights",
    "dpo_loss",
    "grpo",
    "grpo_config_from_dict",
    "grpo_loss",
    "kl_to_reference",
    "load_grpo_config",
    "rollout",
    "rwr_loss",
    "scene_cues",
    "sft_loss",
    "window_log_prob",
]


def __getattr__(name: str):  # the trainer pulls in accelerate: import it only when asked
    if name in ("GRPOTrainer", "grpo"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
