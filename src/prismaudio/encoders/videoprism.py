"""`videoprism`: the official PrismAudio video features from transformers' VideoPrism (LOCAL directory).

Official features (reference `official_features.md`): VideoPrism LvT large
(`videoprism_lvt_public_v1_large`), frames at 4 fps, `frame_embeddings` = T x 1024, one
L2-normalised vector per frame. transformers >= 5 ships the model (`VideoPrismClipModel`,
`VideoPrismVideoModel`), so this adapter computes exactly that:

* `path` (required): a local directory written by `save_pretrained` (e.g. the LvT-large checkpoint
  converted for transformers, 8 frames, 288 px): `config.json` of a `VideoPrismClipModel` (its video
  side is used, the text tower is dropped after loading) or of a `VideoPrismVideoModel`, plus
  `model.safetensors` (or shards). Nothing is downloaded (`local_files_only=True`).
* `attn_chunk` (default 1024): attention runs this many query tokens at a time (transformers' eager
  attention up to float rounding, in bounded memory: the auxiliary layers attend over all T*P tokens).
* `fps` (default 4.0, official); `dtype` ("float32" default, "bfloat16", "float16") is what the HF
  model runs in. The output is always float32 `[B, T, D]` on the encoder's device, D = the
  checkpoint's `hidden_size` (1024 for LvT-large) = `output_dim`.

Preprocessing is the official one and lives here, so callers hand over native frames
(`takes_uint8 = True`; `frame_spec()` = fps, size None, FFmpeg's fps-filter selection): uint8
`[B, T, 3, H, W]` at any H x W is zero-padded to a centred square (`pad_left = pad_w // 2`,
`pad_top = pad_h // 2`, the rest right/bottom), resized to the checkpoint's `image_size` (288) with
`F.interpolate(mode='bilinear', align_corners=False)` on the uint8 tensor, on the CPU (torch's
uint8 bilinear kernel, as upstream ran it), then divided by 255; no mean/std normalisation. Float frames in [0, 1] are accepted too
and quantised to uint8 first (exact for frames that came from uint8 / 255).

Per-frame embeddings: the video model's `last_hidden_state` `[B, T*P, D]` (frame-major) is reshaped
to `[B*T, P, D]` and passed through the contrastive head (attention pooling) -> `head_layernorm` ->
L2 normalisation, so for T = 1 the vector equals the model's pooled video embedding. A clip whose T
differs from the checkpoint's `num_frames` runs with `interpolate_pos_encoding=True` (temporal
position interpolation). Clips run one at a time: the auxiliary layers attend over all T*P tokens
of a clip, so batching clips would multiply that memory without changing any result.

Frozen, lazily loaded, never in our `state_dict()`. A missing directory, a directory holding another
model type (T5, CLIP, ...) or a VideoPrism backbone without the contrastive head, and missing weights
are each one `PrismAudioError` line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import PrismAudioError
from .base import FrozenEncoder, positive_float, positive_int, register_encoder
from .t5 import quiet_hf, resolve_dtype

_EXPECTED = (
    "a local directory saved by transformers' save_pretrained of a VideoPrismClipModel (e.g. VideoPrism "
    "LvT-large, 8 frames, 288 px) or a VideoPrismVideoModel: config.json + model.safetensors"
)
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_CLIP_TYPE, _VIDEO_TYPE = "videoprism", "videoprism_vision_model"
_WITH_HEAD = ("VideoPrismClipModel", "VideoPrismVideoModel")


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """transformers' VideoPrism `l2norm` (x * rsqrt(|x|^2 + eps)), so T = 1 equals `pooler_output` bit for bit."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def pad_to_square(frames: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, C, S, S], S = max(H, W): zeros centred as the official code (extra pixel right/bottom)."""
    h, w = frames.shape[-2:]
    side = max(h, w)
    pad_h, pad_w = side - h, side - w
    if pad_h == 0 and pad_w == 0:
        return frames
    top, left = pad_h // 2, pad_w // 2
    return F.pad(frames, (left, pad_w - left, top, pad_h - top), mode="constant", value=0)


def preprocess_frames(frames: Tensor, size: int) -> Tensor:
    """Official VideoPrism input: uint8 [B, T, 3, H, W] -> float32 [B, T, 3, size, size] in [0, 1] (CPU)."""
    b, t, c, h, w = frames.shape
    x = frames.detach().to("cpu")
    if x.dtype != torch.uint8:  # float [0, 1] frames: back to the uint8 the official resize sees
        x = (x.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    x = pad_to_square(x.reshape(b * t, c, h, w))
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x.float() / 255.0).reshape(b, t, c, size, size)


_CHUNKED = "prismaudio_chunked_eager"


def chunked_eager_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                            attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                            softcap: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """transformers' VideoPrism eager attention (soft-capped logits), computed `chunk` queries at a time.

    The auxiliary layers attend over all T*P tokens of a clip: eager attention materialises
    [heads, T*P, T*P] float32 logits (5.4 GB per copy for 9 s of LvT-large), so query chunks bound
    that memory. Each query row sees the same operations (equal to eager up to float summation order,
    ~1e-7); sequences up to the chunk length run eager's exact path. SDPA has no logit soft-capping.
    """
    chunk = int(getattr(module.config, "prismaudio_attn_chunk", 0) or query.shape[2])
    if scaling is None:
        scaling = module.head_dim**-0.5
    outs = []
    for start in range(0, query.shape[2], chunk):
        weights = torch.matmul(query[:, :, start:start + chunk], key.transpose(2, 3)) * scaling
        if softcap is not None:
            weights = torch.tanh(weights / softcap) * softcap
        if attention_mask is not None:
            weights = weights + attention_mask[:, :, start:start + chunk]
        weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
        if dropout and module.training:
            weights = F.dropout(weights, p=dropout)
        outs.append(torch.matmul(weights, value))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def _register_chunked_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_CHUNKED, chunked_eager_attention)


def _interpolate_time_in_float32(module: torch.nn.Module) -> None:
    """Run transformers' temporal position interpolation in float32 on this instance, then cast back.

    Its antialiased bilinear resize has no bfloat16/float16 CPU kernel; the same op in float32 is
    what a float32 model computes, so reduced-precision models get the float32 positions, rounded.
    """

    def interpolate_pos_encoding(embeddings: Tensor) -> Tensor:
        source = module.position_embeddings
        if embeddings.shape[1] == source.shape[1]:
            return source
        out = F.interpolate(source.float().unsqueeze(1), size=(embeddings.shape[1], source.shape[-1]),
                            mode="bilinear", antialias=True)
        return out.squeeze(1).to(embeddings.dtype)

    module.interpolate_pos_encoding = interpolate_pos_encoding


def _read_config(d: Path) -> dict[str, Any]:
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PrismAudioError(f"encoder 'videoprism': no readable config.json in {d}; expected {_EXPECTED}") from None
    if not isinstance(config, dict):
        raise PrismAudioError(f"encoder 'videoprism': {d}/config.json is not a JSON object; expected {_EXPECTED}")
    return config


@register_encoder("videoprism")
class VideoPrismVideoEncoder(FrozenEncoder):
    """Frozen VideoPrism (transformers): native uint8 frames at 4 fps -> per-frame embeddings [B, T, D]."""

    modality = "video"
    takes_uint8 = True  # native-resolution uint8 frames: the official pad / resize is ours
    frame_rule = "ffmpeg"  # FFmpeg's fps filter, as the official extraction selects frames

    def __init__(self, path: str | None = None, fps: float = 4.0, dtype: str = "float32", attn_chunk: int = 1024):
        super().__init__()
        if path is None or path == "":
            raise PrismAudioError(f"encoder 'videoprism' needs params.path: {_EXPECTED}; weights are never downloaded")
        d = Path(path).expanduser()
        if not d.is_dir():
            kind = "not a directory" if d.exists() else "not found"
            raise PrismAudioError(f"encoder 'videoprism': {d} {kind}; expected {_EXPECTED}")
        config = _read_config(d)
        model_type = config.get("model_type")
        arch = config.get("architectures") or []
        if model_type not in (_CLIP_TYPE, _VIDEO_TYPE):
            what = f"{model_type!r}" + (f" ({', '.join(map(str, arch))})" if arch else "")
            raise PrismAudioError(f"encoder 'videoprism': {d} holds a {what} checkpoint, not VideoPrism; expected {_EXPECTED}")
        if arch and not any(a in _WITH_HEAD for a in arch):
            raise PrismAudioError(
                f"encoder 'videoprism': {d} holds a {', '.join(map(str, arch))} checkpoint without the contrastive "
                f"head that frame embeddings need; expected {_EXPECTED}"
            )
        vision = config.get("vision_config") if model_type == _CLIP_TYPE else config
        if not isinstance(vision, dict) or "hidden_size" not in vision or "image_size" not in vision:
            raise PrismAudioError(f"encoder 'videoprism': {d}/config.json has no vision hidden_size/image_size; expected {_EXPECTED}")
        if not any((d / w).is_file() for w in _WEIGHTS) and not any(d.glob("*.safetensors")):
            raise PrismAudioError(f"encoder 'videoprism': no weights in {d}; expected {_EXPECTED}")
        size = vision["image_size"]
        if isinstance(size, (list, tuple)):
            if len(size) != 2 or size[0] != size[1]:
                raise PrismAudioError(f"encoder 'videoprism': {d} has a non-square image_size {size}; the official input is square")
            size = size[0]
        self.model_dir = d
        self.is_clip = model_type == _CLIP_TYPE
        self.image_size = int(size)
        self.num_frames = int(vision.get("num_frames", 16))
        self.output_dim = int(vision["hidden_size"])
        self.fps = positive_float("fps", fps, "videoprism")
        self.size = None  # frame_spec() -> (fps, None): native frames, padding and resizing happen here
        self.dtype = resolve_dtype(dtype, "videoprism")
        self.attn_chunk = positive_int("attn_chunk", attn_chunk, "videoprism")

    def _build(self) -> Any:
        from transformers import VideoPrismClipModel, VideoPrismVideoModel

        cls = VideoPrismClipModel if self.is_clip else VideoPrismVideoModel
        _register_chunked_attention()
        with quiet_hf():
            try:
                model, info = cls.from_pretrained(
                    str(self.model_dir), local_files_only=True, dtype=self.dtype, output_loading_info=True,
                    attn_implementation=_CHUNKED,
                )
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is a user error, named in one line
                why = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise PrismAudioError(f"cannot load the VideoPrism checkpoint from {self.model_dir}: {why}") from None
        prefix = "video_model." if self.is_clip else ""
        missing = sorted(k for k in info.get("missing_keys", ()) if k.startswith(prefix))
        if missing:
            raise PrismAudioError(
                f"VideoPrism checkpoint {self.model_dir} lacks {len(missing)} video weights, e.g. {', '.join(missing[:3])}"
            )
        video = model.video_model if self.is_clip else model
        del model  # the text tower of a CLIP checkpoint is never used
        video.config.prismaudio_attn_chunk = self.attn_chunk  # read by chunked_eager_attention
        if self.dtype != torch.float32:
            _interpolate_time_in_float32(video.vision_model.temporal_embeddings)
        video.eval().requires_grad_(False)
        return video

    @torch.no_grad()
    def frame_embeddings(self, pixels: Tensor) -> Tensor:
        """[1, T, 3, S, S] model input -> [1, T, D] float32: the head on each frame's tokens, LayerNorm, L2."""
        video = self._load()
        t = pixels.shape[1]
        out = video(pixel_values_videos=pixels, interpolate_pos_encoding=t != self.num_frames)
        hidden = out.last_hidden_state  # [1, T*P, D], frame-major
        tokens = hidden.reshape(t, hidden.shape[1] // t, hidden.shape[2])
        pooled = video.head_layernorm(video.head(tokens)[0])  # [T, 1, D]
        return l2_normalize(pooled.float()).reshape(1, t, -1)

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        if not isinstance(frames, Tensor) or frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[1] == 0:
            shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise PrismAudioError(f"VideoPrismVideoEncoder expects frames [B, T>0, 3, H, W] (uint8), got {shape}")
        if frames.dtype != torch.uint8 and not frames.dtype.is_floating_point:
            raise PrismAudioError(f"VideoPrismVideoEncoder expects uint8 (or float [0, 1]) frames, got {frames.dtype}")
        video = self._load()
        probe = self._device_probe
        if next(video.parameters()).device != probe.device:
            video.to(probe.device)
        pixels = preprocess_frames(frames, self.image_size)
        outs = [self.frame_embeddings(clip[None].to(device=probe.device, dtype=self.dtype)) for clip in pixels]
        return torch.cat(outs, dim=0).to(device=probe.device, dtype=torch.float32)
