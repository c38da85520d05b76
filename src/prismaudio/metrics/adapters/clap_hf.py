"""`laion_clap` from a transformers ``ClapModel.save_pretrained`` + ``ClapProcessor.save_pretrained`` directory.

Kept beside the release-file path (`clap.LaionClap`) because HF's converted LAION checkpoints
(laion/clap-htsat-unfused, larger_clap_music_and_speech) are a common local format. NOT checked against
upstream: transformers' ClapFeatureExtractor and ClapAudioModel are HF's port, and audio is resampled with
our own `io.audio.resample`. Audio is mixed to mono, resampled to the extractor's rate and cut to its first
``max_length_s`` (upstream crops randomly); shorter clips are repeat-padded. Fused checkpoints use the
"fusion" features, unfused ones "rand_trunc".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import PrismAudioError
from ._common import mono_at

_EXPECTED = ("a local directory from ClapModel/ClapProcessor.save_pretrained (config.json, model.safetensors, "
             "preprocessor_config.json, tokenizer files)")
_TOKENIZERS = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model", "vocab.txt")


class HFLaionClap:
    role = "clap"
    name = "laion_clap"

    def __init__(self, path: str, device: str = "cpu", text_max_length: int = 77):
        d = Path(path)
        try:
            json.loads((d / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise PrismAudioError(f"backend 'laion_clap': no readable config.json in {d}; expected {_EXPECTED}") from None
        missing = [n for n, ok in (("weights", any(d.glob("*.safetensors")) or (d / "pytorch_model.bin").is_file()),
                                   ("preprocessor_config.json", (d / "preprocessor_config.json").is_file()),
                                   ("tokenizer files", any((d / t).is_file() for t in _TOKENIZERS))) if not ok]
        if missing:
            raise PrismAudioError(f"backend 'laion_clap': {d} lacks {', '.join(missing)}; expected {_EXPECTED}")
        self.model_dir, self.device, self.text_max_length = d, torch.device(device), int(text_max_length)
        self._parts: Any = None

    def load(self) -> tuple[Any, Any, Any]:
        if self._parts is None:
            from transformers import AutoTokenizer, ClapFeatureExtractor, ClapModel

            from ...encoders.t5 import quiet_hf

            d = str(self.model_dir)
            try:
                with quiet_hf():
                    model, info = ClapModel.from_pretrained(d, local_files_only=True, output_loading_info=True)
                    fe = ClapFeatureExtractor.from_pretrained(d, local_files_only=True)
                    tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
                raise PrismAudioError(f"backend 'laion_clap': cannot load {d}: {e}") from None
            bad = {k: sorted(v)[:5] for k, v in info.items()
                   if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
            if bad:
                raise PrismAudioError(f"backend 'laion_clap': weights in {d} do not match ClapModel: {bad}")
            self._parts = fe, tok, model.eval().requires_grad_(False).to(self.device)
        return self._parts

    @torch.no_grad()
    def embed_audio(self, audio: Tensor, sr: int) -> Tensor:
        fe, _, model = self.load()
        wav = mono_at(audio, sr, int(fe.sampling_rate), self.name)[:, : int(fe.nb_max_samples)]
        fusion = bool(model.config.audio_config.enable_fusion)
        feats = fe([w.numpy() for w in wav.cpu()], sampling_rate=int(fe.sampling_rate), return_tensors="pt",
                   truncation="fusion" if fusion else "rand_trunc", padding="repeatpad")
        feats = {k: v.to(self.device) for k, v in feats.items() if k in ("input_features", "is_longer")}
        return nn.functional.normalize(model.get_audio_features(**feats).pooler_output.float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> Tensor:
        from .clap import _texts

        _, tok, model = self.load()
        batch = tok(_texts(texts, self.name), padding=True, truncation=True, max_length=self.text_max_length,
                    return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return nn.functional.normalize(model.get_text_features(**batch).pooler_output.float(), dim=-1).cpu()

    @torch.no_grad()
    def score(self, audio: Tensor, sr: int, texts: list[str]) -> Tensor:
        a, t = self.embed_audio(audio, sr), self.embed_text(texts)
        if a.shape[0] != t.shape[0]:
            raise PrismAudioError(f"backend {self.name!r}: {a.shape[0]} clips but {t.shape[0]} texts (paired)")
        return (a * t).sum(-1).clamp(-1.0, 1.0)
