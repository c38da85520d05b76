"""`audiobox_aesthetics`: Meta's Audiobox Aesthetics predictor (CE, CU, PC, PQ) from a LOCAL checkpoint.

Computes what `audiobox_aesthetics.infer.AesPredictor.forward` computes (PyPI 0.0.4; facts in
`shared/reference/upstream_fixtures/audiobox_aesthetics/facts.md`), checked against its fixture:

* every channel resampled to 16 kHz with torchaudio's default resampler (`resample.resample`), then averaged;
* 10 s windows at 0, 10 s, ... while start < length, each zero-padded to 10 s with a sample padding mask and
  weighted by its un-padded fraction;
* WavLM (`wavlm.WavLM`, the release's key names; a frame is padding when all its samples are), the
  layer results (encoder input + each layer, `nth_layer` of them) mixed per axis by
  ``softmax(layer_weights[axis])``, mean over valid frames (denominator clamped at 1), L2-normalised
  (`normalize_embed`), head ``proj_layer[axis]`` (Linear D -> 1);
* ``pred * std + mean`` with the checkpoint's `target_transform`, then the window-weighted mean per clip.

Upstream does not clamp; the `aesthetics` role promises 1..10, so `score` clamps unless ``clamp=False``
(`clamp=False` is upstream's number). The release checkpoint loads as downloaded:

* `checkpoint.pt`: ``{"state_dict": {"model.wavlm_model.*", "model.proj_layer.*", "model.layer_weights.*"},
  "model_cfg": {...}, "target_transform": {axis: {"mean", "std"}}}`` (read with ``weights_only=True``), or
* a directory with `config.json` (the hub export's constructor args incl. `target_transform`) and
  `model.safetensors` (keys `encoder.wavlm_model.*`, `encoder.proj_layer.*`, `encoder.layer_weights.*`).

WavLM sizes are read from the tensors; the conv strides and relative-position `max_distance` are not stored
and default to upstream's (``conv_feature_layers`` / ``max_distance`` override them).

Official PrismAudio aesthetic REWARD (`official_aesthetic_reward`): ``(CE + CU - PC + PQ) / 40`` of these
unclamped axis values; the metric reports the four axes themselves.
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
from .wavlm import DEFAULT_MAX_DISTANCE, WavLM, WavLMConfig, parse_conv_feature_layers

AXES = ("CE", "CU", "PC", "PQ")
SAMPLE_RATE = 16_000
NAME = "audiobox_aesthetics"
_EXPECTED = ("the Audiobox Aesthetics checkpoint: the release's checkpoint.pt, or a directory with config.json "
             "(incl. target_transform) and model.safetensors")


def official_aesthetic_reward(axes: dict[str, Any]) -> Tensor:
    """The official PrismAudio aesthetic reward, ``(CE + CU - PC + PQ) / 40``, from `score(..., clamp=False)`
    values (a dict with the four axes, tensors or floats); float64 like the reward's python floats."""
    missing = [a for a in AXES if a not in axes]
    if missing:
        raise PrismAudioError(f"official_aesthetic_reward: missing axes {missing} (need {', '.join(AXES)})")
    v = {a: torch.as_tensor(axes[a], dtype=torch.float64) for a in AXES}
    return (v["CE"] + v["CU"] - v["PC"] + v["PQ"]) / 40


class _AesModel(nn.Module):
    """WavLM + per-axis layer weights and heads (upstream `AesMultiOutput`, same attribute names)."""

    def __init__(self, cfg: WavLMConfig, nth_layer: int, head_layers: int, normalize_embed: bool):
        super().__init__()
        self.wavlm_model = WavLM(cfg)
        self.nth_layer, self.normalize_embed = nth_layer, normalize_embed
        d = cfg.embed_dim
        self.layer_weights = nn.ParameterDict({a: nn.Parameter(torch.full((nth_layer,), 1.0 / nth_layer)) for a in AXES})

        def head() -> nn.Sequential:  # the release has 1 layer; deeper heads assumed Linear/GELU stacks
            mods: list[nn.Module] = []
            for i in range(head_layers):
                mods.append(nn.Linear(d, 1 if i == head_layers - 1 else d))
                if i < head_layers - 1:
                    mods.append(nn.GELU())
            return nn.Sequential(*mods)

        self.proj_layer = nn.ModuleDict({a: head() for a in AXES})

    def forward(self, wav: Tensor, padding: Tensor) -> Tensor:
        """Windows [W, S] + sample padding [W, S] -> normalised predictions [W, 4] (axes in `AXES` order)."""
        results, fpad = self.wavlm_model(wav, padding)
        if len(results) < self.nth_layer:
            raise PrismAudioError(f"backend {NAME!r}: nth_layer={self.nth_layer} but the WavLM has only "
                                  f"{len(results)} layer results")
        stack = torch.stack(results[: self.nth_layer], dim=-1)  # [W, T, D, L]
        valid = (~fpad).to(stack.dtype)[..., None]
        preds = []
        for a in AXES:
            emb = (stack * torch.softmax(self.layer_weights[a], dim=-1)).sum(-1)
            emb = (emb * valid).sum(1) / valid.sum(1).clamp(min=1)
            if self.normalize_embed:
                emb = nn.functional.normalize(emb, dim=-1)
            preds.append(self.proj_layer[a](emb).squeeze(-1))
        return torch.stack(preds, dim=-1)


@register_backend(NAME, "aesthetics")
class AudioboxAesthetics:
    """`score(audio [B, C, S] | [C, S], sr) -> {"PQ", "PC", "CE", "CU": [B]}` (see module docstring).

    ``window_s`` is the window (= hop) length, 10 s upstream; ``conv_feature_layers`` (upstream's string or
    [(dim, kernel, stride), ...]) and ``max_distance`` give what a checkpoint does not store.
    """

    role = "aesthetics"

    def __init__(self, path: str | None = None, window_s: float = 10.0, clamp: bool = True,
                 conv_feature_layers: str | list | None = None, max_distance: int = DEFAULT_MAX_DISTANCE,
                 device: str = "cpu"):
        self.path = require_path(path, NAME, _EXPECTED)
        if not window_s > 0:
            raise PrismAudioError(f"backend {NAME!r}: window_s must be > 0, got {window_s!r}")
        self.window = round(window_s * SAMPLE_RATE)
        self.clamp = bool(clamp)
        self.strides = None if conv_feature_layers is None else tuple(
            s for _, _, s in parse_conv_feature_layers(conv_feature_layers))
        self.max_distance = int(max_distance)
        self.device = torch.device(device)
        self._model: _AesModel | None = None
        self.target: dict[str, tuple[float, float]] = {}

    def _read(self) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
        """(state dict with the `model.`/`encoder.` prefix removed, model config, target transform)."""
        p = self.path
        if p.is_dir():
            try:
                cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                raise PrismAudioError(f"backend {NAME!r}: no readable config.json in {p}; expected {_EXPECTED}") from None
            sd = load_state_dict(p, NAME, _EXPECTED)
            target = cfg.get("target_transform")
        else:
            try:
                ckpt = torch.load(str(p), map_location="cpu", weights_only=True)
            except READ_ERRORS as e:
                from ...io.weights import load_error_reason

                raise PrismAudioError(f"backend {NAME!r}: cannot read {p}: {load_error_reason(e)}") from None
            if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
                raise PrismAudioError(f"backend {NAME!r}: {p} has no state_dict; expected {_EXPECTED}")
            sd, cfg, target = ckpt["state_dict"], dict(ckpt.get("model_cfg") or {}), ckpt.get("target_transform")
        if not all(isinstance(v, Tensor) for v in sd.values()):
            raise PrismAudioError(f"backend {NAME!r}: {p}: state_dict holds non-tensor entries")
        sd = {re.sub(r"^(model|encoder)\.", "", k): v for k, v in sd.items()}
        if not any(k.startswith("wavlm_model.") for k in sd):
            first = next(iter(sorted(sd)), "<none>")
            raise PrismAudioError(f"backend {NAME!r}: {p} is not an Audiobox Aesthetics checkpoint: missing "
                                  f"'model.wavlm_model.*' keys, unexpected {first!r}")
        if not isinstance(target, dict) or not all(
                isinstance(target.get(a), dict) and {"mean", "std"} <= set(target[a]) for a in AXES):
            raise PrismAudioError(f"backend {NAME!r}: {p} lacks target_transform (mean/std for "
                                  f"{', '.join(AXES)}); expected {_EXPECTED}")
        return sd, cfg, target

    def _load(self) -> _AesModel:
        if self._model is not None:
            return self._model
        sd, cfg, target = self._read()
        wav_sd = {k[len("wavlm_model."):]: v for k, v in sd.items() if k.startswith("wavlm_model.")}
        wcfg = WavLMConfig.from_state_dict(wav_sd, self.strides, self.max_distance,
                                           where=f"backend {NAME!r}: {self.path}")
        if not cfg.get("use_weighted_layer_sum", True):
            raise PrismAudioError(f"backend {NAME!r}: checkpoints without use_weighted_layer_sum are not "
                                  "supported (the release uses it)")
        model = _AesModel(wcfg, int(cfg.get("nth_layer", wcfg.layers + 1)), int(cfg.get("proj_num_layer", 1)),
                          bool(cfg.get("normalize_embed", True)))
        sd.setdefault("wavlm_model.mask_emb", model.wavlm_model.mask_emb.detach().clone())  # training-only
        load_strict(model, sd, NAME, self.path)
        self.target = {a: (float(target[a]["mean"]), float(target[a]["std"])) for a in AXES}
        self._model = model.eval().requires_grad_(False).to(self.device)
        return self._model

    @property
    def config(self) -> WavLMConfig:
        """The WavLM sizes of the loaded checkpoint (loads it)."""
        return self._load().wavlm_model.cfg

    def windows(self, wav: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mono 16 kHz [B, S] -> (windows [B, W, win], sample padding [B, W, win], valid samples [B, W])."""
        b, n = wav.shape
        win = self.window
        starts = list(range(0, n, win))
        chunks = wav.new_zeros(b, len(starts), win)
        valid = torch.zeros(b, len(starts), dtype=torch.long)
        for j, s in enumerate(starts):
            seg = wav[:, s:s + win]
            chunks[:, j, : seg.shape[1]] = seg
            valid[:, j] = seg.shape[1]
        padding = torch.arange(win)[None, None] >= valid[..., None]
        return chunks, padding.to(wav.device), valid

    @torch.no_grad()
    def window_predictions(self, audio: Tensor, sr: int) -> tuple[Tensor, Tensor]:
        """(normalised predictions [B, W, 4] before the target transform, valid samples [B, W])."""
        model = self._load()
        wav = mono_at(audio, sr, SAMPLE_RATE, NAME).to(self.device)
        chunks, padding, valid = self.windows(wav)
        preds = model(chunks.flatten(0, 1), padding.flatten(0, 1))
        return preds.view(*chunks.shape[:2], len(AXES)).float().cpu(), valid

    def score(self, audio: Tensor, sr: int, clamp: bool | None = None) -> dict[str, Tensor]:
        """Per-clip axes [B] (float32): window-weighted mean of ``pred * std + mean``."""
        return self.combine(*self.window_predictions(audio, sr), clamp=clamp)

    def combine(self, preds: Tensor, valid: Tensor, clamp: bool | None = None) -> dict[str, Tensor]:
        """`window_predictions` -> per-clip axes: inverse target transform, then weights = valid / window."""
        weights = valid.float() / self.window
        out = {}
        for i, a in enumerate(AXES):
            mean, std = self.target[a]
            val = preds[..., i] * std + mean
            val = (val * weights).sum(-1) / weights.sum(-1)
            out[a] = val.clamp(1.0, 10.0) if (self.clamp if clamp is None else clamp) else val
        return {a: out[a] for a in ("PQ", "PC", "CE", "CU")}
