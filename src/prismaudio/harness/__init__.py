"""The run harness: everything a training or post-training run shares (see `run.RunHarness`).

* `config`: the shared `DataConfig` / `OptimConfig`, their validation, strict YAML loading;
* `optim`: AdamW + warm-up / cosine-or-constant schedule from an `OptimConfig`;
* `ema`: the float32 EMA with the official warm-up;
* `checkpoint`: atomic full-state checkpoint directories (no pickle);
* `run`: `RunHarness` (accelerator, resume policy, seeding, per-rank generators, save / restore,
  final export) and the `EpochSampler` data order.
"""

from .config import DataConfig, OptimConfig, load_run_config
from .ema import EMA
from .optim import build_optimizer, lr_lambda
from .run import (CHECKPOINTS, FINAL, EpochSampler, RunHarness, build_pipeline, print_log, seed_everything,
                  split_warnings)

__all__ = ["CHECKPOINTS", "EMA", "FINAL", "DataConfig", "EpochSampler", "OptimConfig", "RunHarness",
           "build_optimizer", "build_pipeline", "load_run_config", "lr_lambda", "print_log",
           "seed_everything", "split_warnings"]
