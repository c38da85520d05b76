"""One interface and one registry for every feature encoder (video, sync, text).

The pipeline only talks to `Encoder`: it asks a video/sync encoder which frame rate and size it
wants (`fps`, `size`), decodes the clip once for all of them (`io.video.read_frames_multi`), and
gets tokens back. Text encoders turn strings into zero-padded token sequences. Real adapters
(VideoPrism, Synchformer, T5-Gemma, CLIP) plug in with `@register_encoder("name")`, exactly like
the built-in light encoders, and are built from a config `EncoderSpec(name, params)`.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from ..config import EncoderSpec
from ..errors import PrismAudioError
from ..io.video import FrameSpec

MODALITIES = ("video", "sync", "text")


@dataclass(frozen=True)
class TextTruncation:
    """What a text encoder's token limit leaves out of one text (see `Encoder.truncation`)."""

    kept: int  # tokens the encoder reads, special tokens included
    total: int  # tokens of the whole text, special tokens included
    dropped: str  # the text from the first token that is not read
    mid_word: bool = False  # the cut falls inside a word (its first part is read)

    def message(self, what: str = "CoT") -> str:
        """One line: tokens kept / total and the first dropped words."""
        words = self.dropped.split()
        head = ("..." if self.mid_word else "") + " ".join(words[:8]) + (" ..." if len(words) > 8 else "")
        return (f"the {what} is {self.total} text-encoder tokens; only the first {self.kept} are read, so "
                f"{len(words)} words are dropped, from \"{head}\"")


def hf_truncation(tokenizer: Any, text: str, max_length: int) -> TextTruncation | None:
    """The `TextTruncation` of a Hugging Face fast tokenizer that truncates `text` to `max_length`
    tokens (special tokens included), from the tokenizer's own truncated encoding and its offsets."""
    full = tokenizer(text, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    if len(full) <= max_length:
        return None
    cut = tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=True,
                    return_offsets_mapping=True, verbose=False)
    special = set(tokenizer.all_special_ids)
    ends = [end for i, (_, end) in zip(cut["input_ids"], cut["offset_mapping"]) if i not in special]
    start = ends[-1] if ends else 0
    mid = 0 < start < len(text) and not text[start - 1].isspace() and not text[start].isspace()
    return TextTruncation(kept=len(cut["input_ids"]), total=len(full), dropped=text[start:].lstrip(), mid_word=mid)


class Encoder(nn.Module):
    """Base class. Subclasses set `modality`, `output_dim`, `trainable` and, for video/sync, `fps`/`size`.

    Video/sync: `forward(frames [B, T, 3, H, W]) -> tokens [B, T', output_dim]`; frames are sampled at
    `fps` by `frame_rule` (see `io.video`), either `size`x`size` float in [0, 1] or, when
    `takes_uint8` (size None), uint8 at the video's native resolution, for encoders that must
    resize and pad exactly as their upstream code does. Each encoder does its own normalisation so
    callers never need to know an encoder's pixel statistics.
    Text: `encode_text(list[str]) -> (hidden [B, L, output_dim] zero-padded, lengths [B] long)`.
    Frozen encoders (`trainable = False`) have no gradients and stay in eval mode under `.train()`.
    """

    modality: ClassVar[str] = ""
    output_dim: int = 0
    fps: float | None = None
    size: int | None = None
    trainable: bool = True
    takes_uint8: ClassVar[bool] = False  # forward takes native-resolution uint8 frames (size None)
    frame_rule: ClassVar[str] = "ffmpeg"  # FFmpeg's fps filter, as the official extraction

    def frame_spec(self) -> FrameSpec:
        """What `read_frames_multi` must decode for this encoder; only video/sync encoders have one."""
        if self.modality not in ("video", "sync") or self.fps is None or (self.size is None and not self.takes_uint8):
            raise PrismAudioError(f"{type(self).__name__} is a {self.modality or 'non-frame'} encoder and reads no frames")
        return FrameSpec(float(self.fps), None if self.size is None else int(self.size), self.frame_rule)

    def output_length(self, num_frames: int) -> int:
        """Tokens produced for `num_frames` input frames (identity for one-token-per-frame encoders)."""
        return num_frames

    def encode_text(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        raise PrismAudioError(f"{type(self).__name__} is a {self.modality} encoder, not a text encoder")

    def truncation(self, text: str) -> TextTruncation | None:
        """What `encode_text([text])` leaves out at the encoder's token limit (None: nothing, or no limit)."""
        return None

    def freeze(self) -> "Encoder":
        """Make the encoder a fixed feature extractor: no grads, eval mode for good."""
        self.trainable = False
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "Encoder":
        return super().train(mode and self.trainable)

    def check_frames(self, frames: Tensor) -> Tensor:
        """Validate [B, T, 3, H, W]; frames of another size are resized (antialiased) to `size`."""
        if not isinstance(frames, Tensor) or frames.ndim != 5 or frames.shape[2] != 3:
            shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise PrismAudioError(f"{type(self).__name__} expects frames [B, T, 3, H, W], got {shape}")
        if frames.shape[1] == 0:
            raise PrismAudioError(f"{type(self).__name__} got zero frames")
        b, t, c, h, w = frames.shape
        if self.size is not None and (h, w) != (self.size, self.size):
            flat = frames.reshape(b * t, c, h, w).float()
            flat = nn.functional.interpolate(flat, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            frames = flat.reshape(b, t, c, self.size, self.size)
        return frames.float()

    def extra_repr(self) -> str:
        rate = f", fps={self.fps}, size={self.size}" if self.modality in ("video", "sync") else ""
        return f"modality={self.modality}, output_dim={self.output_dim}{rate}, trainable={self.trainable}"


E = TypeVar("E", bound=Callable[..., Encoder])

class FrozenEncoder(Encoder):
    """A pretrained encoder loaded lazily from a local path, frozen, never in our `state_dict()`.

    The loaded model lives outside the registered children (so checkpoints never copy it and
    `parameters()` is empty), is built on first use by `_build()` (so constructing a pipeline is
    cheap), and an empty non-persistent buffer tells which device/dtype the pipeline moved us to.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trainable = False
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)
        object.__setattr__(self, "_loaded", None)
        object.__setattr__(self, "_lock", threading.Lock())

    def _build(self) -> Any:
        """Load the external model (called once, under a lock)."""
        raise NotImplementedError

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def _load(self) -> Any:
        with self._lock:
            if self._loaded is None:
                object.__setattr__(self, "_loaded", self._build())
            return self._loaded

_REGISTRY: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str) -> Callable[[E], E]:
    """Class (or factory) decorator: make `name` buildable from an `EncoderSpec`."""

    def deco(factory: E) -> E:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"encoder name {name!r} is already registered by {_REGISTRY[name]!r}")
        modality = getattr(factory, "modality", None)
        if isinstance(factory, type) and modality not in MODALITIES:
            raise ValueError(f"encoder class {factory.__name__} must set modality to one of {MODALITIES}")
        _REGISTRY[name] = factory
        return factory

    return deco


def list_encoders(modality: str | None = None) -> list[str]:
    """Registered names (optionally only those of one modality), sorted."""
    return sorted(n for n, f in _REGISTRY.items() if modality is None or getattr(f, "modality", None) == modality)


def build_encoder(spec: EncoderSpec | dict[str, Any], modality: str | None = None) -> Encoder:
    """Instantiate a registered encoder; unknown names or parameters raise `PrismAudioError`.

    `modality`, when given, is checked, so a text encoder configured as `video` fails at build time.
    """
    if isinstance(spec, dict):
        spec = EncoderSpec(name=spec.get("name", ""), params=dict(spec.get("params") or {}))
    name, params = spec.name, dict(spec.params or {})
    valid = ", ".join(list_encoders(modality)) or "none"
    if name not in _REGISTRY:
        kind = f"{modality} " if modality else ""
        raise PrismAudioError(f"unknown {kind}encoder {name!r} (valid: {valid})")
    factory = _REGISTRY[name]
    declared = getattr(factory, "modality", None)
    if modality is not None and declared is not None and declared != modality:
        raise PrismAudioError(f"encoder {name!r} is a {declared} encoder and cannot be used for {modality} (valid: {valid})")
    try:
        inspect.signature(factory).bind(**params)
    except TypeError:
        accepted = [p for p in inspect.signature(factory).parameters if p not in ("self", "args", "kwargs")]
        raise PrismAudioError(
            f"encoder {name!r}: bad parameter(s) {sorted(params)} (accepted: {', '.join(accepted) or 'none'})"
        ) from None
    enc = factory(**params)
    if not isinstance(enc, Encoder):
        raise PrismAudioError(f"encoder {name!r} factory returned {type(enc).__name__}, not an Encoder")
    if modality is not None and enc.modality != modality:
        raise PrismAudioError(f"encoder {name!r} is a {enc.modality} encoder and cannot be used for {modality}")
    return enc


def positive_int(name: str, value: Any, encoder: str) -> int:
    """Validate an integer constructor parameter (configs come from YAML, so check types)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PrismAudioError(f"encoder {encoder!r}: {name} must be a positive integer, got {value!r}")
    return value


def positive_float(name: str, value: Any, encoder: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise PrismAudioError(f"encoder {encoder!r}: {name} must be a positive number, got {value!r}")
    return float(value)


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
