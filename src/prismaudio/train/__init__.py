"""Training on `accelerate`: stage 0 (VAE), stage 1 (foundation flow model), stage 2 (CoT fine-tune).

`prismaudio train CONFIG [--resume] [--set key=value ...] [--out DIR]` runs one stage from a YAML
config (see `configs/train/`); `train()` is the same from Python.
"""

from .config import TrainConfig, config_from_dict, load_train_config
from .trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "config_from_dict", "load_train_config", "train"]
