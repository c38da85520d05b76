"""`t5` and `t5gemma`: frozen Hugging Face text encoders loaded from a LOCAL directory.

The official PrismAudio text features are the `last_hidden_state` of the T5-Gemma encoder
`google/t5gemma-l-l-ul2-it` (1024-d) over the raw CoT string (no template), tokenised with
`padding=True, truncation=False` (`AutoModelForSeq2SeqLM(...).get_encoder()`; our encoder-only load
gives identical outputs, tested on a tiny random T5-Gemma). These adapters reproduce that contract:

* Strings are encoded exactly as given: no template or prefix here. Length limits on long CoTs are
  the CoT layer's documented character caps (`cot.MAX_MODULE_CHARS`), never a tokenizer cut.
* Padding is forced to the right: Gemma tokenizers pad left by default, and T5-Gemma's position ids
  ignore the mask, so only right padding gives each string of a batch the features it has alone
  (the official code encodes one string per call).

* `path` (required) is a local directory written by `save_pretrained` / downloaded beforehand; it
  must hold `config.json`, the weights (`model.safetensors` or sharded `*.safetensors` /
  `pytorch_model.bin`) and the tokenizer files (`tokenizer.json` or `spiece.model`/`tokenizer.model`
  plus `tokenizer_config.json`). Nothing is ever downloaded (`local_files_only=True`).
* `max_length=None` (default, official) never truncates; an integer truncates to that many tokens.
* `dtype` ("float32", "bfloat16", "float16") is the dtype the HF model runs in; outputs are returned
  in the dtype/device the encoder was moved to (float32 by default).
* Output: `(hidden [B, L, D] zero beyond each length, lengths [B])`, right-aligned padding forced.
* Like `minilm`: the width comes from `config.json` at construction (cheap), the HF model is loaded
  lazily on first use and kept OUT of `state_dict()`/`parameters()` (never in our checkpoints).

`t5gemma` loads only the encoder: `T5GemmaEncoderModel` with `is_encoder_decoder=False` from the
full encoder-decoder checkpoint (keys `model.encoder.*`); if that leaves weights missing it falls
back to `T5GemmaForConditionalGeneration(...).get_encoder()`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from .base import FrozenEncoder, TextTruncation, hf_truncation, positive_int, register_encoder

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZERS = ("tokenizer.json", "spiece.model", "tokenizer.model", "vocab.txt")


def resolve_dtype(value: Any, encoder: str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.lower() in _DTYPES:
        return _DTYPES[value.lower()]
    raise PrismAudioError(f"encoder {encoder!r}: dtype must be one of {sorted(set(_DTYPES))}, got {value!r}")


def check_hf_dir(path: Any, encoder: str, what: str, tokenizer: bool) -> tuple[Path, dict[str, Any]]:
    """Validate a local HF model directory and return (dir, parsed config.json)."""
    expected = "config.json, model.safetensors (or pytorch_model.bin / a sharded index)"
    if tokenizer:
        expected += " and tokenizer files (tokenizer.json or spiece.model/tokenizer.model + tokenizer_config.json)"
    if path is None or path == "":
        raise PrismAudioError(
            f"encoder {encoder!r} needs params.path: a local directory with the {what} checkpoint "
            f"({expected}); weights are never downloaded"
        )
    d = Path(path).expanduser()
    if not d.is_dir():
        raise PrismAudioError(f"encoder {encoder!r}: {d} is not a directory; expected the {what} checkpoint ({expected})")
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PrismAudioError(f"encoder {encoder!r}: no readable config.json in {d}; expected {expected}") from None
    if not any((d / w).is_file() for w in _WEIGHTS) and not any(d.glob("*.safetensors")):
        raise PrismAudioError(f"encoder {encoder!r}: no weights in {d}; expected {expected}")
    if tokenizer and not any((d / t).is_file() for t in _TOKENIZERS):
        raise PrismAudioError(f"encoder {encoder!r}: no tokenizer files in {d}; expected {expected}")
    return d, config


class quiet_hf:
    """Silence HF logging/progress bars while loading a local model."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._log = hf_logging
        self._verbosity, self._bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        self._log.set_verbosity(self._verbosity)
        if self._bars:
            self._log.enable_progress_bar()


class _HFTextEncoder(FrozenEncoder):
    """Shared lazy, frozen HF text encoder; subclasses define `_width` and `_load_model`."""

    modality = "text"
    encoder_name = ""
    what = ""

    def __init__(self, path: str | None = None, max_length: int | None = None, dtype: str = "float32"):
        super().__init__()
        name = self.encoder_name
        self.model_dir, config = check_hf_dir(path, name, self.what, tokenizer=True)
        self.output_dim = self._width(config)
        self.max_length = None if max_length is None else positive_int("max_length", max_length, name)
        self.dtype = resolve_dtype(dtype, name)

    def _width(self, config: dict[str, Any]) -> int:
        raise NotImplementedError

    def _load_model(self) -> Any:
        raise NotImplementedError

    def _build(self) -> tuple[Any, Any]:
        from transformers import AutoTokenizer

        with quiet_hf():
            try:
                tok = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
                model = self._load_model()
            except (OSError, ValueError, KeyError) as e:
                raise PrismAudioError(f"cannot load the {self.what} encoder from {self.model_dir}: {e}") from None
        tok.padding_side = "right"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        model.eval().requires_grad_(False)
        return (tok, model)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise PrismAudioError(f"encoder {self.encoder_name!r} expects a list of strings")
        probe = self._device_probe
        out_dtype = probe.dtype if probe.dtype.is_floating_point else torch.float32
        if not texts:
            return (torch.zeros(0, 0, self.output_dim, device=probe.device, dtype=out_dtype),
                    torch.zeros(0, dtype=torch.long, device=probe.device))
        tok, model = self._load()
        if next(model.parameters()).device != probe.device:
            model.to(probe.device)
        kw: dict[str, Any] = {"truncation": False} if self.max_length is None else {"truncation": True, "max_length": self.max_length}
        batch = tok(list(texts), padding=True, return_tensors="pt", **kw)
        ids = batch["input_ids"].to(probe.device)
        mask = batch["attention_mask"].to(probe.device)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden.to(out_dtype) * mask.unsqueeze(-1).to(out_dtype)
        return hidden, mask.sum(1).long()

    def truncation(self, text: str) -> TextTruncation | None:
        """What an integer `max_length` drops from `text` (None with the official `max_length=None`)."""
        if self.max_length is None:
            return None
        tok, _ = self._load()
        return hf_truncation(tok, text, self.max_length)

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        return self.encode_text(texts)


@register_encoder("t5")
class T5TextEncoder(_HFTextEncoder):
    """Frozen T5 encoder (`T5EncoderModel`), e.g. t5-base / flan-t5: texts -> ([B, L, d_model], lengths)."""

    encoder_name = "t5"
    what = "T5"

    def _width(self, config: dict[str, Any]) -> int:
        if "d_model" not in config:
            raise PrismAudioError(f"encoder 't5': {self.model_dir}/config.json has no d_model (not a T5 checkpoint?)")
        return int(config["d_model"])

    def _load_model(self) -> Any:
        from transformers import T5EncoderModel

        return T5EncoderModel.from_pretrained(str(self.model_dir), local_files_only=True, dtype=self.dtype)


@register_encoder("t5gemma")
class T5GemmaTextEncoder(_HFTextEncoder):
    """Frozen T5-Gemma encoder (official: google/t5gemma-l-l-ul2-it, 1024-d), no truncation by default."""

    encoder_name = "t5gemma"
    what = "T5-Gemma"

    def _width(self, config: dict[str, Any]) -> int:
        enc = config.get("encoder")
        if not isinstance(enc, dict) or "hidden_size" not in enc:
            raise PrismAudioError(
                f"encoder 't5gemma': {self.model_dir}/config.json has no encoder.hidden_size (not a T5-Gemma checkpoint?)"
            )
        return int(enc["hidden_size"])

    def _load_model(self) -> Any:
        from transformers import (
            AutoConfig,
            T5GemmaEncoderModel,
            T5GemmaForConditionalGeneration,
        )

        d = str(self.model_dir)
        config = AutoConfig.from_pretrained(d, local_files_only=True)
        full = bool(getattr(config, "is_encoder_decoder", True))
        config.is_encoder_decoder = False
        model, info = T5GemmaEncoderModel.from_pretrained(
            d, config=config, local_files_only=True, dtype=self.dtype, output_loading_info=True
        )
        if info.get("missing_keys"):
            if not full:
                raise PrismAudioError(f"T5-Gemma checkpoint in {d} lacks weights: {sorted(info['missing_keys'])[:5]}")
            model = T5GemmaForConditionalGeneration.from_pretrained(d, local_files_only=True, dtype=self.dtype).get_encoder()
        return model
