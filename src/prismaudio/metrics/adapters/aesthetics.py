"""`audiobox_aesthetics`: Meta's Audiobox Aesthetics predictor (PQ, PC, CE, CU) from a LOCAL checkpoint.

Release structure (facebookresearch/audiobox-aesthetics, `model/aes_wavlm.py`, `infer.py`; read, not copied):

* WavLM-Base encoder (fairseq/unilm layout: 12 layers, 768-d, group-norm conv front end, gated relative
  position bias with 320 buckets / max distance 800, post-LN) on 16 kHz mono audio; no waveform normalisation.
* the 13 hidden states (after the positional-conv + layer norm, then after each of the 12 layers) are mixed per
  axis with `softmax(layer_weights[axis])`, mean-pooled over non-padded frames, L2-normalised, and fed to a
  per-axis head `proj_layer[axis]` (one Linear 768 -> 1 in the release: `proj_num_layer=1`);
* the head output is de-normalised with the checkpoint's `target_transform[axis]` (``x * std + mean``);
* each clip is cut into 10 s windows (hop 10 s); the last window is zero-padded and masked; the clip score is
  the mean of its window scores weighted by each window's un-padded fraction.

We run the encoder as `transformers.WavLMModel` (same architecture) after renaming the fairseq keys with the
mapping of transformers' WavLM conversion script (`_FAIRSEQ_TO_HF`). The hidden states are captured with hooks
on `encoder.layer_norm` and on each encoder layer, which are exactly the 13 tensors the release stacks.

Checkpoint (``path``):
* the release's `checkpoint.pt` (``{"state_dict": {"model.wavlm_model.*", "model.proj_layer.*",
  "model.layer_weights.*"}, "model_cfg": {...}, "target_transform": {axis: {"mean", "std"}}}``), or
* a directory with `config.json` (the hub export's constructor args incl. `target_transform`) and
  `model.safetensors` (keys `encoder.wavlm_model.*`, `encoder.proj_layer.*`, `encoder.layer_weights.*`).

Verified: module structure, pooling, windowing and de-normalisation against the release's source text; HF
WavLM parameter names/shapes. Assumed (no real weights offline): numerical equality with the fairseq WavLM
(the conversion script's mapping is what HF uses for microsoft/wavlm-*), the frame padding mask (HF derives it
from conv output lengths, fairseq from "all samples padded" per frame; they can differ by one frame on the
last window), and heads with ``proj_num_layer > 1`` being Linear/GELU stacks (only 1 is used in the release).
Scores are clamped to 1..10 (the role's range; the release does not clamp) unless ``clamp=False``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import PrismAudioError
from ..backends import register_backend
from ._common import READ_ERRORS, load_state_dict, load_strict, mono_at, require_path

AXES = ("CE", "CU", "PC", "PQ")
SAMPLE_RATE = 16_000
_EXPECTED = ("the Audiobox Aesthetics checkpoint: the release's checkpoint.pt, or a directory with config.json "
             "(incl. target_transform) and model.safetensors")

# fairseq/unilm WavLM key fragment -> transformers WavLMModel key fragment (per encoder layer unless global)
_LAYER_MAP = {
    "self_attn.k_proj": "attention.k_proj", "self_attn.v_proj": "attention.v_proj",
    "self_attn.q_proj": "attention.q_proj", "self_attn.out_proj": "attention.out_proj",
    "self_attn.grep_linear": "attention.gru_rel_pos_linear", "self_attn.grep_a": "attention.gru_rel_pos_const",
    "self_attn.relative_attention_bias": "attention.rel_attn_embed", "self_attn_layer_norm": "layer_norm",
    "fc1": "feed_forward.intermediate_dense", "fc2": "feed_forward.output_dense",
    "final_layer_norm": "final_layer_norm",
}
_GLOBAL_MAP = {
    "post_extract_proj.": "feature_projection.projection.", "layer_norm.": "feature_projection.layer_norm.",
    "encoder.layer_norm.": "encoder.layer_norm.", "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
    "encoder.pos_conv.0.weight_g": "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
    "encoder.pos_conv.0.weight_v": "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
    "mask_emb": "masked_spec_embed",
}


def fairseq_wavlm_to_hf(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename fairseq/unilm WavLM keys (as inside the release's `wavlm_model.*`) to `transformers.WavLMModel`."""
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(\d+)\.(weight|bias)", k)
        if m:  # Sequential(conv, dropout, GroupNorm|LayerNorm?, GELU): index 0 = conv, 2 = norm
            sub = {"0": "conv", "2": "layer_norm"}.get(m.group(2))
            new = None if sub is None else f"feature_extractor.conv_layers.{m.group(1)}.{sub}.{m.group(3)}"
        elif (m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+?)(\.weight|\.bias)?", k)) and m.group(2) in _LAYER_MAP:
            new = f"encoder.layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}{m.group(3) or ''}"
        else:
            new = next((k.replace(a, b, 1) for a, b in _GLOBAL_MAP.items() if k.startswith(a)), None)
        if new is None:
            raise PrismAudioError(f"backend 'audiobox_aesthetics': unknown WavLM checkpoint key {k!r}")
        out[new] = v
    return out


class _AesModel(nn.Module):
    """HF WavLM + per-axis layer weights and heads (the release's `WavlmAudioEncoderMultiOutput`)."""

    def __init__(self, wavlm_config: Any, nth_layer: int, head_layers: int, normalize_embed: bool):
        super().__init__()
        from transformers import WavLMModel

        self.wavlm = WavLMModel(wavlm_config)
        self.nth_layer = nth_layer
        self.normalize_embed = normalize_embed
        d = wavlm_config.hidden_size
        self.layer_weights = nn.ParameterDict({a: nn.Parameter(torch.full((nth_layer,), 1.0 / nth_layer)) for a in AXES})

        def head() -> nn.Sequential:
            mods: list[nn.Module] = []
            for i in range(head_layers):
                mods.append(nn.Linear(d, 1 if i == head_layers - 1 else d))
                if i < head_layers - 1:
                    mods.append(nn.GELU())
            return nn.Sequential(*mods)

        self.proj_layer = nn.ModuleDict({a: head() for a in AXES})

    def forward(self, wav: Tensor, mask: Tensor) -> dict[str, Tensor]:
        states: list[Tensor] = []
        hooks = [self.wavlm.encoder.layer_norm.register_forward_hook(lambda _m, _i, o: states.append(o))]
        hooks += [layer.register_forward_hook(lambda _m, _i, o: states.append(o[0] if isinstance(o, tuple) else o))
                  for layer in self.wavlm.encoder.layers]
        try:
            self.wavlm(wav, attention_mask=mask.long())
        finally:
            for h in hooks:
                h.remove()
        if len(states) < self.nth_layer:
            raise PrismAudioError(f"backend 'audiobox_aesthetics': nth_layer={self.nth_layer} but the WavLM "
                                  f"has only {len(states)} hidden states")
        stack = torch.stack(states[: self.nth_layer], dim=-1)  # [N, T, D, L]
        lengths = self.wavlm._get_feat_extract_output_lengths(mask.sum(-1)).long()
        fmask = (torch.arange(stack.shape[1], device=wav.device)[None] < lengths[:, None]).to(stack.dtype)
        preds = {}
        for a in AXES:
            emb = torch.einsum("ntdl,l->ntd", stack, torch.softmax(self.layer_weights[a], dim=-1))
            emb = (emb * fmask[..., None]).sum(1) / fmask.sum(1, keepdim=True).clamp(min=1)
            if self.normalize_embed:
                emb = nn.functional.normalize(emb, dim=-1)
            preds[a] = self.proj_layer[a](emb).squeeze(-1)
        return preds


@register_backend("audiobox_aesthetics", "aesthetics")
class AudioboxAesthetics:
    """`score(audio [B, C, S] | [C, S], sr) -> {"PQ", "PC", "CE", "CU": [B]}` in 1..10 (see module docstring).

    ``wavlm_config`` overrides `transformers.WavLMConfig` fields (tiny models in tests; the release is the
    default WavLM-Base config); ``window_s`` is the window (= hop) length, 10 s in the release.
    """

    role = "aesthetics"

    def __init__(self, path: str | None = None, wavlm_config: dict[str, Any] | None = None, window_s: float = 10.0,
                 clamp: bool = True, device: str = "cpu"):
        self.path = require_path(path, "audiobox_aesthetics", _EXPECTED)
        self.wavlm_overrides = dict(wavlm_config or {})
        if not window_s > 0:
            raise PrismAudioError(f"backend 'audiobox_aesthetics': window_s must be > 0, got {window_s!r}")
        self.window = round(window_s * SAMPLE_RATE)
        self.clamp = bool(clamp)
        self.device = torch.device(device)
        self._model: _AesModel | None = None
        self._target: dict[str, tuple[float, float]] = {}

    def _read(self) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
        """(state dict with the `model.`/`encoder.` prefix removed, model config, target transform)."""
        p = self.path
        if p.is_dir():
            try:
                cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise PrismAudioError(f"backend 'audiobox_aesthetics': no readable config.json in {p}; "
                                      f"expected {_EXPECTED}") from None
            sd = load_state_dict(p, "audiobox_aesthetics", _EXPECTED)
            target = cfg.get("target_transform")
        else:
            try:
                ckpt = torch.load(str(p), map_location="cpu", weights_only=True)
            except READ_ERRORS as e:
                raise PrismAudioError(f"backend 'audiobox_aesthetics': cannot read {p}: {e}") from None
            if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
                raise PrismAudioError(f"backend 'audiobox_aesthetics': {p} has no state_dict; expected {_EXPECTED}")
            sd, cfg, target = ckpt["state_dict"], dict(ckpt.get("model_cfg") or {}), ckpt.get("target_transform")
        if not isinstance(target, dict) or not all(
                isinstance(target.get(a), dict) and {"mean", "std"} <= set(target[a]) for a in AXES):
            raise PrismAudioError(f"backend 'audiobox_aesthetics': {p} lacks target_transform (mean/std for "
                                  f"{', '.join(AXES)}); expected {_EXPECTED}")
        sd = {re.sub(r"^(model|encoder)\.", "", k): v for k, v in sd.items()}
        return sd, cfg, target

    def _load(self) -> _AesModel:
        if self._model is not None:
            return self._model
        from transformers import WavLMConfig

        sd, cfg, target = self._read()
        wav_sd = fairseq_wavlm_to_hf({k[len("wavlm_model."):]: v for k, v in sd.items() if k.startswith("wavlm_model.")})
        rest = {k: v for k, v in sd.items() if not k.startswith("wavlm_model.")}
        try:
            wcfg = WavLMConfig(**self.wavlm_overrides)
        except (TypeError, ValueError) as e:
            raise PrismAudioError(f"backend 'audiobox_aesthetics': bad wavlm_config: {e}") from None
        if not cfg.get("use_weighted_layer_sum", True):
            raise PrismAudioError("backend 'audiobox_aesthetics': checkpoints without use_weighted_layer_sum are "
                                  "not supported (the release uses it)")
        model = _AesModel(wcfg, int(cfg.get("nth_layer", wcfg.num_hidden_layers + 1)),
                          int(cfg.get("proj_num_layer", 1)), bool(cfg.get("normalize_embed", True)))
        wav_sd.setdefault("masked_spec_embed", model.wavlm.masked_spec_embed.detach().clone())  # training-only
        full = {**{f"wavlm.{k}": v for k, v in wav_sd.items()}, **rest}
        load_strict(model, full, "audiobox_aesthetics", self.path)
        self._target = {a: (float(target[a]["mean"]), float(target[a]["std"])) for a in AXES}
        self._model = model.eval().requires_grad_(False).to(self.device)
        return self._model

    @torch.no_grad()
    def score(self, audio: Tensor, sr: int) -> dict[str, Tensor]:
        model = self._load()
        wav = mono_at(audio, sr, SAMPLE_RATE, "audiobox_aesthetics").to(self.device)
        b, n = wav.shape
        win = self.window
        starts = list(range(0, n, win))
        chunks = torch.zeros(b, len(starts), win, device=self.device)
        masks = torch.zeros(b, len(starts), win, dtype=torch.bool, device=self.device)
        for j, s in enumerate(starts):
            seg = wav[:, s:s + win]
            chunks[:, j, : seg.shape[1]] = seg
            masks[:, j, : seg.shape[1]] = True
        weights = masks.float().sum(-1) / win  # [B, W] un-padded fraction of each window
        preds = model(chunks.flatten(0, 1), masks.flatten(0, 1))
        out = {}
        for a in ("PQ", "PC", "CE", "CU"):
            mean, std = self._target[a]
            val = preds[a].view(b, -1).float() * std + mean
            val = (val * weights).sum(-1) / weights.sum(-1)
            out[a] = val.clamp(1.0, 10.0).cpu() if self.clamp else val.cpu()
        return out

