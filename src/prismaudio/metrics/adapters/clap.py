"""CLAP backends from the RELEASE checkpoints: `ms_clap` (MS-CLAP 2023) and `laion_clap` (LAION-CLAP).

Both play the ``clap`` role: ``embed_audio(audio, sr) -> [B, D]`` and ``embed_text(texts) -> [B, D]``
(L2-normalised), ``score(audio, sr, texts) -> [B]`` = cosine of clip i with text i. ``audio`` is [B, C, S]
(or [C, S]) float at any rate. Nothing is downloaded; files are read with ``torch.load(weights_only=True)``.

``ms_clap``: ``path=`` Microsoft's ``CLAP_weights_2023.pth`` (``{'model': state_dict}``, release key names; or a
directory holding exactly one ``.pth`` / ``.pt``). Equal to PyPI msclap 1.3.4 ``CLAPWrapper(version='2023')``
(upstream fixture, tests/test_upstream_clap.py):

* audio (``load_audio_into_tensor``): resampled to 44.1 kHz with torchaudio's ``transforms.Resample`` (our
  `resample.resample_transform`), channels FLATTENED one after another (``reshape(-1)``; upstream does not mix a
  stereo file down, it concatenates L and R), tiled ``ceil(308700 / n)`` times and cut to 7 s. DIFFERENCE: a
  clip longer than 7 s (after flattening) is cropped at its START; upstream takes a random 7 s crop;
* HTSAT (`htsat.HTSAT`) with msclap's ``config.py`` front end (hop 320, mel matrix for 32 kHz, 50..14000 Hz,
  even though the audio is 44.1 kHz: an upstream quirk, kept), ``latent_output`` -> projection;
* text: GPT-2 tokenizer on ``text + ' <|endoftext|>'``, padded with '!' (id 0) to 77 tokens, NOT truncated (as
  msclap; longer texts keep all tokens, up to GPT-2's n_positions); the hidden state at ``count(ids != 0) - 1``.
  Upstream defect kept for equality: a real '!' token in the text is counted as padding, so the pooled position
  moves one token left per '!';
* ``similarity(audio, sr, texts) -> [B]`` = msclap ``compute_similarity`` for pairs:
  ``exp(logit_scale) * cos(audio_i, text_i)`` with the checkpoint's own ``logit_scale``.

``laion_clap``: ``path=`` the ``laion_clap`` ``.pt`` (``{'state_dict': {'module.<name>': ...}}``, HTSAT-base,
non-fusion, e.g. ``music_speech_audioset_epoch_15_esc_89.98.pt``), or a directory with exactly one ``.pt``, or
(kept because it costs little) a transformers ``ClapModel.save_pretrained`` directory. Equal to PyPI laion-clap
1.1.7 ``CLAP_Module(enable_fusion=False, amodel='HTSAT-base')``: ``get_audio_embedding_from_data(x,
use_tensor=True)`` (what av-benchmark calls) and ``get_text_embedding``:

* audio: mixed to mono (mean of channels: LAION takes mono; our choice for stereo), resampled to 48 kHz with
  torchaudio's functional ``resample`` (LAION itself does not resample), ``repeatpad``: tiled ``floor(480000 /
  n)`` times then ZERO-padded to 10 s (an 8 s clip gets 2 s of zeros; upstream behaviour). DIFFERENCE: a clip
  longer than 10 s is cropped at its start (upstream: a random crop). ``quantize=True`` adds the int16 round
  trip of the numpy path (``use_tensor=False``);
* HTSAT with hop 480, 48 kHz mel matrix; ``Linear -> ReLU -> Linear`` projection; L2 normalise;
* text: RoBERTa ``pooler_output`` -> projection -> L2 (tokens: ``padding='max_length', truncation=True,
  max_length=77``).

Tokenizers (only needed for ``embed_text`` on strings; ``embed_text_ids`` takes token ids): ``tokenizer=`` a
local HF tokenizer directory (GPT-2's for ms_clap, roberta-base's for laion_clap), else the first of
``<checkpoint dir>/gpt2`` (resp. ``roberta-base``), ``<checkpoint dir>/tokenizer``, ``<checkpoint dir>`` that
holds tokenizer files.

Sizes come from the checkpoint's tensors; the rest are keyword options (`MSClapOptions`, `LaionOptions`, with
the upstream values as defaults), so the tiny upstream fixtures and the real releases load the same way.

`official_semantic_reward` is the official PrismAudio semantic reward: MS-CLAP ``similarity / 80``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import PrismAudioError
from ...io.weights import read_state_dict
from ..backends import register_backend
from ._common import require_path
from .clap_nets import LAION_MODEL, MSCLAP_MODEL, laion_from_state_dict, msclap_from_state_dict
from .resample import resample, resample_transform

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
OFFICIAL_REWARD_DIVISOR = 80.0


def _options(cls: type, backend: str, given: dict[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    bad = sorted(set(given) - names)
    if bad:
        raise PrismAudioError(f"backend {backend!r}: unknown option(s) {bad}; options: {sorted(names)}")
    opts = cls(**given)
    for f in fields(cls):
        v = getattr(opts, f.name)
        positive = f.name in _POSITIVE
        if positive and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise PrismAudioError(f"backend {backend!r}: option {f.name} must be a positive number, got {v!r}")
    return opts


_POSITIVE = {"sampling_rate", "sample_rate", "duration", "max_len", "hop_size", "spec_size", "text_len",
             "resample_lowpass_filter_width", "resample_rolloff"}


@dataclass(frozen=True)
class MSClapOptions:
    """What `CLAP_weights_2023.pth` does not carry; defaults = msclap's config_2023.yml / config.py."""

    sampling_rate: int = 44_100
    duration: float = 7.0
    hop_size: int = 320
    spec_size: int = 256
    patch_stride: int | tuple[int, int] = 4
    htsat_layer_norm_eps: float = 1e-5
    bn_eps: float = 1e-5
    text_len: int = 77
    gpt2_n_head: int | None = None  # None: n_embd // 64 (= 12 for 'gpt2')
    gpt2_layer_norm_epsilon: float = 1e-5
    gpt2_activation: str = "gelu_new"
    projection_layer_norm_eps: float = 1e-5
    resample_lowpass_filter_width: int = 6
    resample_rolloff: float = 0.99
    eos_suffix: str = " <|endoftext|>"
    pad_token: str = "!"

    @property
    def num_samples(self) -> int:
        return int(round(self.duration * self.sampling_rate))


@dataclass(frozen=True)
class LaionOptions:
    """What the laion_clap `.pt` does not carry; defaults = laion_clap's HTSAT-base audio_cfg and tokenizer."""

    sample_rate: int = 48_000
    max_len: int = 480_000
    hop_size: int = 480
    spec_size: int = 256
    patch_stride: int | tuple[int, int] = 4
    htsat_layer_norm_eps: float = 1e-5
    bn_eps: float = 1e-5
    quantize: bool = False
    text_len: int = 77
    roberta_num_attention_heads: int | None = None  # None: hidden // 64 (= 12 for roberta-base)
    roberta_layer_norm_eps: float = 1e-5
    roberta_hidden_act: str = "gelu"
    roberta_pad_token_id: int = 1
    roberta_bos_token_id: int = 0
    roberta_eos_token_id: int = 2
    resample_lowpass_filter_width: int = 6
    resample_rolloff: float = 0.99


def _batch(audio: Any, sr: Any, backend: str) -> tuple[Tensor, int]:
    """[B, C, S] float32 (a [C, S] clip gets a batch axis) and the rate, with one clear error for bad input."""
    if not isinstance(audio, Tensor):
        raise PrismAudioError(f"backend {backend!r} expects audio as a torch.Tensor [B, C, S] or [C, S]")
    if audio.ndim == 2:
        audio = audio.unsqueeze(0)
    if audio.ndim != 3 or audio.shape[-1] == 0 or audio.shape[1] == 0:
        raise PrismAudioError(f"backend {backend!r} expects non-empty audio [B, C, S] or [C, S], got {tuple(audio.shape)}")
    if isinstance(sr, bool) or not isinstance(sr, numbers.Integral) or sr <= 0:
        raise PrismAudioError(f"backend {backend!r}: sample rate must be a positive integer, got {sr!r}")
    return audio.float(), int(sr)


def _texts(texts: Any, backend: str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise PrismAudioError(f"backend {backend!r} expects a non-empty list of strings")
    return list(texts)


def _weights_file(path: Any, backend: str, expected: str) -> Path:
    p = require_path(path, backend, expected)
    if p.is_dir():
        cands = sorted([*p.glob("*.pth"), *p.glob("*.pt")])
        if len(cands) != 1:
            raise PrismAudioError(f"backend {backend!r}: need exactly one .pth/.pt file in {p}, found "
                                  f"{len(cands)}; expected {expected}")
        p = cands[0]
    return p


def _tokenizer_dir(given: Any, weights: Path, subdir: str, backend: str) -> Path:
    if given:
        d = Path(given).expanduser()
        if not d.is_dir():
            raise PrismAudioError(f"backend {backend!r}: tokenizer directory {d} does not exist")
        return d
    for d in (weights.parent / subdir, weights.parent / "tokenizer", weights.parent):
        if d.is_dir() and any((d / f).is_file() for f in _TOKENIZER_FILES):
            return d
    raise PrismAudioError(f"backend {backend!r}: no tokenizer for text input; pass tokenizer=DIR (a local "
                          f"{subdir} HF tokenizer directory) or put its files in {weights.parent / subdir}")


def _load_tokenizer(d: Path, backend: str) -> Any:
    from transformers import AutoTokenizer

    from ...encoders.t5 import quiet_hf

    try:
        with quiet_hf():
            return AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrismAudioError(f"backend {backend!r}: cannot load the tokenizer in {d}: {e}") from None


class _ReleaseClap:
    """Shared plumbing: lazy load, embeddings normalised on the CPU, paired cosine."""

    role = "clap"
    name = ""
    model = ""
    tokenizer_subdir = ""

    def __init__(self, path: Any, device: str, tokenizer: Any) -> None:
        self.file = _weights_file(path, self.name, self.model)
        self.device = torch.device(device)
        self._tokenizer_arg = tokenizer
        self._net: Any = None
        self._tok: Any = None

    def load(self) -> None:
        """Read and check the checkpoint now (it is otherwise read on first use)."""
        _ = self.net

    @property
    def net(self) -> Any:
        if self._net is None:
            try:
                self._net = self._build(read_state_dict(self.file, "checkpoint")).to(self.device)
            except PrismAudioError as e:
                raise PrismAudioError(f"backend {self.name!r}: {e}") from None
        return self._net

    def _build(self, sd: dict[str, Tensor]) -> nn.Module:
        raise NotImplementedError

    @property
    def tokenizer(self) -> Any:
        if self._tok is None:
            self._tok = self._prepare_tokenizer(_load_tokenizer(
                _tokenizer_dir(self._tokenizer_arg, self.file, self.tokenizer_subdir, self.name), self.name))
        return self._tok

    def _prepare_tokenizer(self, tok: Any) -> Any:
        return tok

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def preprocess(self, audio: Tensor, sr: int) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def audio_outputs(self, audio: Any, sr: int) -> tuple[Tensor, Any]:
        """(unnormalised-or-upstream embedding [B, D], HTSAT output) for raw audio, preprocessed as upstream."""
        wave = self.preprocess(*_batch(audio, sr, self.name))
        return self.net.audio_embed(wave.to(self.device))

    @torch.no_grad()
    def embed_audio(self, audio: Any, sr: int) -> Tensor:
        return nn.functional.normalize(self.audio_outputs(audio, sr)[0].float(), dim=-1).cpu()

    @torch.no_grad()
    def text_outputs(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Upstream's text embedding from token ids (the tokenizer's output, [B, L] each)."""
        return self.net.text_embed(input_ids.to(self.device).long(), attention_mask.to(self.device).long())

    @torch.no_grad()
    def embed_text_ids(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return nn.functional.normalize(self.text_outputs(input_ids, attention_mask).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        self.load()  # a bad checkpoint is reported before a missing tokenizer
        return self.embed_text_ids(*self.tokenize(_texts(texts, self.name)))

    @torch.no_grad()
    def score(self, audio: Any, sr: int, texts: list[str]) -> Tensor:
        a, t = self.embed_audio(audio, sr), self.embed_text(texts)
        if a.shape[0] != t.shape[0]:
            raise PrismAudioError(f"backend {self.name!r}: {a.shape[0]} clips but {t.shape[0]} texts (paired)")
        return (a * t).sum(-1).clamp(-1.0, 1.0)


@register_backend("ms_clap", "clap")
class MSClap(_ReleaseClap):
    """MS-CLAP 2023 from `CLAP_weights_2023.pth` (see the module docstring); options: `MSClapOptions`."""

    name = "ms_clap"
    model = MSCLAP_MODEL
    tokenizer_subdir = "gpt2"

    def __init__(self, path: str | None = None, device: str = "cpu", tokenizer: str | None = None, **options: Any):
        self.options: MSClapOptions = _options(MSClapOptions, self.name, options)
        super().__init__(path, device, tokenizer)

    def _build(self, sd: dict[str, Tensor]) -> nn.Module:
        o = self.options
        return msclap_from_state_dict(
            sd, self.file,
            htsat={"hop_size": o.hop_size, "spec_size": o.spec_size, "patch_stride": o.patch_stride,
                   "layer_norm_eps": o.htsat_layer_norm_eps, "bn_eps": o.bn_eps},
            text={"n_head": o.gpt2_n_head, "layer_norm_epsilon": o.gpt2_layer_norm_epsilon,
                  "activation": o.gpt2_activation},
            proj_eps=o.projection_layer_norm_eps)

    def preprocess(self, audio: Tensor, sr: int) -> Tensor:
        """msclap ``load_audio_into_tensor``: resample, flatten channels, tile to / crop at the start to 7 s."""
        o = self.options
        x = resample_transform(audio, sr, o.sampling_rate, o.resample_lowpass_filter_width, o.resample_rolloff)
        x = x.reshape(x.shape[0], -1)
        n, length = o.num_samples, x.shape[-1]
        if n >= length:
            x = x.repeat(1, math.ceil(n / length))
        return x[:, :n].contiguous()

    def _prepare_tokenizer(self, tok: Any) -> Any:
        tok.add_special_tokens({"pad_token": self.options.pad_token})
        tok.padding_side = "right"
        return tok

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        """msclap ``preprocess_text`` per text (``max_length=77, padding='max_length'``, no truncation), then
        right-padded to a common length (GPT-2 is causal and the pooled position ignores padding)."""
        tok, o = self.tokenizer, self.options
        limit = int(self.net.caption_encoder.base.config.n_positions)
        encs = [tok(t + o.eos_suffix, add_special_tokens=True, max_length=o.text_len, padding="max_length",
                    truncation=False) for t in texts]
        width = min(limit, max(len(e["input_ids"]) for e in encs))
        ids = torch.full((len(encs), width), int(tok.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(encs), width), dtype=torch.long)
        for i, e in enumerate(encs):
            row = e["input_ids"][:width]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = torch.tensor(e["attention_mask"][:width])
        return ids, mask

    @property
    def logit_scale(self) -> float:
        return float(self.net.logit_scale.exp())

    def compute_similarity(self, audio_embeddings: Tensor, text_embeddings: Tensor) -> Tensor:
        """msclap ``compute_similarity``: L2-normalise both, ``exp(logit_scale) * text @ audio.T``, transposed
        -> [n_audio, n_text]."""
        a = audio_embeddings / torch.norm(audio_embeddings, dim=-1, keepdim=True)
        t = text_embeddings / torch.norm(text_embeddings, dim=-1, keepdim=True)
        return (self.net.logit_scale.exp().cpu() * t.cpu() @ a.cpu().T).T

    @torch.no_grad()
    def similarity(self, audio: Any, sr: int, texts: list[str]) -> Tensor:
        """The diagonal of `compute_similarity` for paired clips and texts: ``exp(logit_scale) * cos`` -> [B]."""
        a = self.audio_outputs(audio, sr)[0]
        t = self.text_outputs(*self.tokenize(_texts(texts, self.name)))
        if a.shape[0] != t.shape[0]:
            raise PrismAudioError(f"backend {self.name!r}: {a.shape[0]} clips but {t.shape[0]} texts (paired)")
        return self.compute_similarity(a.float(), t.float()).diagonal().clone()


def official_semantic_reward(clap: Any, audio: Any, sr: int, texts: list[str]) -> Tensor:
    """The official PrismAudio semantic reward, [B]: MS-CLAP ``similarity / 80``, i.e.
    ``exp(logit_scale) * cos(audio_i, text_i) / 80`` with the checkpoint's logit_scale (msclap's
    ``compute_similarity``; the diagonal for paired clips and texts). `clap` must be an `ms_clap` backend."""
    if not callable(getattr(clap, "similarity", None)):
        raise PrismAudioError("the official semantic reward needs the ms_clap backend (MS-CLAP similarity / 80)")
    return clap.similarity(audio, sr, texts) / OFFICIAL_REWARD_DIVISOR


class LaionClap(_ReleaseClap):
    """LAION-CLAP (HTSAT-base, non-fusion) from the laion_clap `.pt` (see the module docstring)."""

    name = "laion_clap"
    model = LAION_MODEL
    tokenizer_subdir = "roberta-base"

    def __init__(self, path: str | None = None, device: str = "cpu", tokenizer: str | None = None, **options: Any):
        self.options: LaionOptions = _options(LaionOptions, self.name, options)
        super().__init__(path, device, tokenizer)

    def _build(self, sd: dict[str, Tensor]) -> nn.Module:
        o = self.options
        return laion_from_state_dict(
            sd, self.file,
            htsat={"hop_size": o.hop_size, "spec_size": o.spec_size, "patch_stride": o.patch_stride,
                   "layer_norm_eps": o.htsat_layer_norm_eps, "bn_eps": o.bn_eps},
            text={"num_heads": o.roberta_num_attention_heads, "layer_norm_eps": o.roberta_layer_norm_eps,
                  "hidden_act": o.roberta_hidden_act, "pad_token_id": o.roberta_pad_token_id,
                  "bos_token_id": o.roberta_bos_token_id, "eos_token_id": o.roberta_eos_token_id})

    def preprocess(self, audio: Tensor, sr: int) -> Tensor:
        """Mono, 48 kHz, (optional int16 round trip), then laion_clap ``repeatpad`` / start crop to max_len."""
        o = self.options
        x = resample(audio.mean(dim=1), sr, o.sample_rate, o.resample_lowpass_filter_width, o.resample_rolloff)
        if o.quantize:  # float32_to_int16 / int16_to_float32 of the numpy path
            x = (x.clamp(-1.0, 1.0) * 32767.0).to(torch.int16).float() / 32767.0
        n, length = o.max_len, x.shape[-1]
        if length < n:
            x = x.repeat(1, n // length)
            x = nn.functional.pad(x, (0, n - x.shape[-1]))
        return x[:, :n].contiguous()

    def tokenize(self, texts: list[str]) -> tuple[Tensor, Tensor]:
        batch = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.options.text_len,
                               return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]


@register_backend("laion_clap", "clap")
def laion_clap(path: str | None = None, device: str = "cpu", tokenizer: str | None = None, **options: Any) -> Any:
    """The release `.pt` (`LaionClap`), or a transformers ClapModel directory (`clap_hf.HFLaionClap`)."""
    p = Path(path).expanduser() if path else None
    if p is not None and p.is_dir() and (p / "config.json").is_file():
        from .clap_hf import HFLaionClap

        if options or tokenizer:
            raise PrismAudioError(f"backend 'laion_clap': {p} is a transformers ClapModel directory, which takes "
                                  f"no options (got {sorted([*options, *(['tokenizer'] if tokenizer else [])])})")
        return HFLaionClap(str(p), device)
    return LaionClap(path, device, tokenizer, **options)
