"""CLAP backends: `laion_clap` (LAION-CLAP via transformers) and `ms_clap` (MS-CLAP 2023 from transformers parts).

Both play the ``clap`` role: ``embed_audio(audio, sr) -> [B, D]`` and ``embed_text(texts) -> [B, D]``
(L2-normalised), ``score(audio, sr, texts) -> [B]`` = cosine of clip i with text i (-1..1). Models load lazily
from a LOCAL directory on first use; nothing is downloaded.

`laion_clap`: a directory written by ``ClapModel.save_pretrained`` + ``ClapProcessor.save_pretrained`` (HF's
converted LAION checkpoints, e.g. laion/clap-htsat-unfused or larger_clap_music_and_speech; av-benchmark uses
LAION's `music_speech_audioset_epoch_15_esc_89.98.pt`, which must first go through transformers'
`convert_clap_original_pytorch_to_hf.py`). Audio is mixed to mono, resampled to the feature extractor's rate
(48 kHz) and cut to its first ``max_length_s`` (10 s) so the result is deterministic (LAION / HF crop a random
10 s of longer clips); shorter clips are repeat-padded as in LAION's evaluation. Fused checkpoints use the
"fusion" features, unfused ones "rand_trunc" (no crop happens after our cut).

`ms_clap`: MS-CLAP 2023 = HTSAT audio encoder (768-d) + GPT-2 text encoder (768-d, hidden state of the last
non-pad token of ``text + " <|endoftext|>"``) + one projection per modality to 1024-d
(``layer_norm(l1(x) + l2(gelu(l1(x))))``, linears without bias). We build it from transformers parts:
`ClapAudioModel` (the HTSAT port; its ``pooler_output`` is HTSAT's average-pooled "embedding"), `GPT2Model` and
`MSClapProjection`. It loads a LOCAL directory with

* ``config.json``: ``{"audio_config": ClapAudioConfig kwargs, "text_config": GPT2Config kwargs,
  "projection_dim": 1024, "text_max_length": 77, "append_eos": true}``,
* ``preprocessor_config.json``: a `ClapFeatureExtractor` set to MS-CLAP's front end (44.1 kHz, 64 mels,
  n_fft 1024, hop 320, 50..8000 Hz, 7 s), GPT-2 tokenizer files (pad token "!" = id 0 as in msclap),
* ``model.safetensors`` with keys ``audio_encoder.*`` (ClapAudioModel), ``text_encoder.*`` (GPT2Model),
  ``audio_projection.{linear1,linear2,layer_norm}.*``, ``text_projection.*``.

LIMITATION (stated plainly): we do not ship a converter from Microsoft's raw `CLAP_weights_2023.pth`. Its
``caption_encoder.base.* -> text_encoder.*``, ``caption_encoder.projection.* -> text_projection.*`` and
``audio_encoder.projection.* -> audio_projection.*`` renames are trivial (`msclap_rename`), but its HTSAT keys
(``audio_encoder.base.htsat.*``) need the HTSAT -> ClapAudioModel mapping of transformers' CLAP conversion
script, which we could not verify offline; a raw checkpoint is refused with an error saying so. Also assumed,
not verified: the projection layout above, the equality of HF's ClapFeatureExtractor and msclap's torchlibrosa
front end for those parameters, and our deterministic first-7-s crop (msclap crops randomly).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import PrismAudioError
from ..backends import register_backend
from ._common import load_state_dict, load_strict, mono_at, require_path

_LAION_EXPECTED = ("a local directory from ClapModel/ClapProcessor.save_pretrained (config.json, model.safetensors, "
                   "preprocessor_config.json, tokenizer files)")
_MS_EXPECTED = ("a local MS-CLAP directory (config.json with audio_config/text_config/projection_dim, "
                "model.safetensors with audio_encoder.*/text_encoder.*/audio_projection.*/text_projection.* keys, "
                "preprocessor_config.json, GPT-2 tokenizer files)")
_TOKENIZERS = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")


def _check_dir(path: Any, backend: str, expected: str) -> tuple[Path, dict[str, Any]]:
    d = require_path(path, backend, expected)
    if not d.is_dir():
        raise PrismAudioError(f"backend {backend!r}: {d} is not a directory; expected {expected}")
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PrismAudioError(f"backend {backend!r}: no readable config.json in {d}; expected {expected}") from None
    missing = [n for n, ok in (("weights", any(d.glob("*.safetensors")) or (d / "pytorch_model.bin").is_file()),
                               ("preprocessor_config.json", (d / "preprocessor_config.json").is_file()),
                               ("tokenizer files", any((d / t).is_file() for t in _TOKENIZERS))) if not ok]
    if missing:
        raise PrismAudioError(f"backend {backend!r}: {d} lacks {', '.join(missing)}; expected {expected}")
    return d, config


class _ClapBackend:
    """Shared audio/text plumbing; subclasses implement `_build`, `_audio_embed` and `_text_embed`."""

    role = "clap"
    name = ""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self._parts: Any = None

    def _build(self) -> Any:
        raise NotImplementedError

    def _load(self) -> Any:
        if self._parts is None:
            from ...encoders.t5 import quiet_hf

            with quiet_hf():
                self._parts = self._build()
        return self._parts

    def _features(self, fe: Any, audio: Tensor, sr: int, fusion: bool) -> dict[str, Tensor]:
        """Mono, resampled, cut to the extractor's max length, then the HF CLAP log-mel features."""
        wav = mono_at(audio, sr, int(fe.sampling_rate), self.name)[:, : int(fe.nb_max_samples)]
        feats = fe([w.numpy() for w in wav.cpu()], sampling_rate=int(fe.sampling_rate), return_tensors="pt",
                   truncation="fusion" if fusion else "rand_trunc", padding="repeatpad")
        return {k: v.to(self.device) for k, v in feats.items() if k in ("input_features", "is_longer")}

    @staticmethod
    def _texts(texts: Any, backend: str) -> list[str]:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise PrismAudioError(f"backend {backend!r} expects a non-empty list of strings")
        return list(texts)

    @torch.no_grad()
    def embed_audio(self, audio: Tensor, sr: int) -> Tensor:
        return nn.functional.normalize(self._audio_embed(audio, sr).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        return nn.functional.normalize(self._text_embed(self._texts(texts, self.name)).float(), dim=-1).cpu()

    @torch.no_grad()
    def score(self, audio: Tensor, sr: int, texts: list[str]) -> Tensor:
        a = self.embed_audio(audio, sr)
        t = self.embed_text(texts)
        if a.shape[0] != t.shape[0]:
            raise PrismAudioError(f"backend {self.name!r}: {a.shape[0]} clips but {t.shape[0]} texts (paired)")
        return (a * t).sum(-1).clamp(-1.0, 1.0)

    def _audio_embed(self, audio: Tensor, sr: int) -> Tensor:
        raise NotImplementedError

    def _text_embed(self, texts: list[str]) -> Tensor:
        raise NotImplementedError


@register_backend("laion_clap", "clap")
class LaionClap(_ClapBackend):
    """LAION-CLAP through `transformers.ClapModel` from a local HF directory (see module docstring)."""

    name = "laion_clap"

    def __init__(self, path: str | None = None, device: str = "cpu", text_max_length: int = 77):
        super().__init__(device)
        self.model_dir, self.config = _check_dir(path, self.name, _LAION_EXPECTED)
        self.text_max_length = int(text_max_length)

    def _build(self) -> tuple[Any, Any, Any]:
        from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

        d = str(self.model_dir)
        try:
            model, info = ClapModel.from_pretrained(d, local_files_only=True, output_loading_info=True)
            fe = ClapFeatureExtractor.from_pretrained(d, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
            raise PrismAudioError(f"backend 'laion_clap': cannot load {d}: {e}") from None
        bad = {k: sorted(v)[:5] for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            raise PrismAudioError(f"backend 'laion_clap': weights in {d} do not match ClapModel: {bad}")
        return fe, tok, model.eval().requires_grad_(False).to(self.device)

    def _audio_embed(self, audio: Tensor, sr: int) -> Tensor:
        fe, _, model = self._load()
        feats = self._features(fe, audio, sr, bool(model.config.audio_config.enable_fusion))
        return model.get_audio_features(**feats).pooler_output

    def _text_embed(self, texts: list[str]) -> Tensor:
        _, tok, model = self._load()
        batch = tok(texts, padding=True, truncation=True, max_length=self.text_max_length, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return model.get_text_features(**batch).pooler_output


class MSClapProjection(nn.Module):
    """MS-CLAP's projection head: ``layer_norm(h + dropout(l2(gelu(h))))`` with ``h = l1(x)``."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out)

    def forward(self, x: Tensor) -> Tensor:
        h = self.linear1(x)
        return self.layer_norm(h + self.linear2(nn.functional.gelu(h)))


class MSClapNet(nn.Module):
    """HTSAT (`ClapAudioModel`) + GPT-2 + projections, the MS-CLAP 2023 layout in transformers parts."""

    def __init__(self, audio_config: dict[str, Any], text_config: dict[str, Any], projection_dim: int):
        super().__init__()
        from transformers import ClapAudioConfig, ClapAudioModel, GPT2Config, GPT2Model

        try:
            acfg, tcfg = ClapAudioConfig(**audio_config), GPT2Config(**text_config)
        except (TypeError, ValueError) as e:
            raise PrismAudioError(f"backend 'ms_clap': bad audio_config/text_config: {e}") from None
        self.audio_encoder = ClapAudioModel(acfg)
        self.text_encoder = GPT2Model(tcfg)
        self.audio_projection = MSClapProjection(acfg.patch_embeds_hidden_size * 2 ** (len(acfg.depths) - 1), projection_dim)
        self.text_projection = MSClapProjection(tcfg.n_embd, projection_dim)
        self.fusion = bool(acfg.enable_fusion)


def msclap_rename(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename the text side/projections of a raw msclap state dict; raw HTSAT keys are refused (see docstring)."""
    if any(k.startswith("audio_encoder.base.") for k in sd):
        raise PrismAudioError(
            "backend 'ms_clap': this is a raw msclap checkpoint (audio_encoder.base.htsat.* keys); converting its "
            "HTSAT weights to transformers' ClapAudioModel layout is not implemented here. Provide a converted "
            "directory (" + _MS_EXPECTED + ")")
    out = {}
    for k, v in sd.items():
        for a, b in (("caption_encoder.base.", "text_encoder."), ("caption_encoder.projection.", "text_projection."),
                     ("audio_encoder.projection.", "audio_projection.")):
            if k.startswith(a):
                k = b + k[len(a):]
                break
        out[k] = v
    return out


@register_backend("ms_clap", "clap")
class MSClap(_ClapBackend):
    """MS-CLAP 2023 from a converted local directory (see module docstring for the format and limitations)."""

    name = "ms_clap"

    def __init__(self, path: str | None = None, device: str = "cpu"):
        super().__init__(device)
        self.model_dir, self.config = _check_dir(path, self.name, _MS_EXPECTED)
        need = [k for k in ("audio_config", "text_config", "projection_dim") if k not in self.config]
        if need:
            raise PrismAudioError(f"backend 'ms_clap': {self.model_dir}/config.json lacks {need}; expected {_MS_EXPECTED}")
        self.text_max_length = int(self.config.get("text_max_length", 77))
        self.append_eos = bool(self.config.get("append_eos", True))

    def _build(self) -> tuple[Any, Any, MSClapNet]:
        from transformers import AutoTokenizer, ClapFeatureExtractor

        d = self.model_dir
        net = MSClapNet(dict(self.config["audio_config"]), dict(self.config["text_config"]),
                        int(self.config["projection_dim"]))
        sd = msclap_rename(load_state_dict(d, self.name, _MS_EXPECTED))
        own = net.state_dict()
        for k in own:  # non-persistent-in-spirit buffers a converted file may omit
            if k not in sd and (k.endswith(("position_ids", "num_batches_tracked")) or ".attn.bias" in k):
                sd[k] = own[k]
        load_strict(net, sd, self.name, d)
        try:
            fe = ClapFeatureExtractor.from_pretrained(str(d), local_files_only=True)
            tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PrismAudioError(f"backend 'ms_clap': cannot load the feature extractor/tokenizer in {d}: {e}") from None
        if tok.pad_token is None:
            tok.add_special_tokens({"pad_token": "!"})  # msclap's choice (GPT-2 id 0)
        tok.padding_side = "right"
        return fe, tok, net.eval().requires_grad_(False).to(self.device)

    def _audio_embed(self, audio: Tensor, sr: int) -> Tensor:
        fe, _, net = self._load()
        feats = self._features(fe, audio, sr, net.fusion)
        pooled = net.audio_encoder(**feats).pooler_output
        return net.audio_projection(pooled)

    def _text_embed(self, texts: list[str]) -> Tensor:
        _, tok, net = self._load()
        if self.append_eos:
            texts = [t + " <|endoftext|>" for t in texts]
        batch = tok(texts, padding="max_length", truncation=True, max_length=self.text_max_length,
                    return_tensors="pt")
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        hidden = net.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        last = (ids != tok.pad_token_id).sum(-1).clamp(min=1) - 1  # msclap: count of non-pad ids - 1
        return net.text_projection(hidden[torch.arange(ids.shape[0], device=ids.device), last])
