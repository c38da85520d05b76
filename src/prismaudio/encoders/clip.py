"""`clip`: frozen per-frame CLIP image features from a LOCAL Hugging Face CLIP vision checkpoint.

Not part of the official PrismAudio recipe (which uses VideoPrism); useful as an available
alternative video encoder. Parameters:

* `path` (required): a local directory with `config.json` + weights of a CLIP model
  (`CLIPModel` or `CLIPVisionModelWithProjection` saved with `save_pretrained`). Both layouts load:
  `CLIPVisionModelWithProjection` ignores the text tower. `preprocessor_config.json`, when present,
  supplies `image_mean`/`image_std`; otherwise the standard CLIP statistics are used.
* `fps` (default 4.0, like the official video features), `size` (default: the checkpoint's
  `image_size`, 224 for ViT-B/L-14).
* `output`: "embeds" (default: projected image embeddings, `projection_dim`), "pooled"
  (post-layernorm CLS, `hidden_size`) or "patches" (last-layer patch tokens without CLS, flattened
  over frames: T * (size/patch)^2 tokens of `hidden_size`).
* `dtype`: dtype the HF model runs in ("float32" default).

Preprocessing is done in torch (no torchvision / PIL): shortest side resized to `size` (bicubic,
antialiased), centre crop `size`x`size`, clamp to [0, 1], normalise with the CLIP mean/std.
Like the other frozen adapters, the HF model is loaded lazily and never enters `state_dict()`.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PrismAudioError
from .base import FrozenEncoder, positive_float, positive_int, register_encoder
from .t5 import check_hf_dir, quiet_hf, resolve_dtype

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_OUTPUTS = ("embeds", "pooled", "patches")


def resize_center_crop(x: Tensor, size: int) -> Tensor:
    """[N, 3, H, W] -> [N, 3, size, size]: shortest side to `size` (bicubic, antialias) then centre crop."""
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = nn.functional.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    return x.clamp(0.0, 1.0)


@register_encoder("clip")
class CLIPVideoEncoder(FrozenEncoder):
    """Frozen CLIP vision tower applied frame by frame: frames [B, T, 3, H, W] -> [B, T', D]."""

    modality = "video"

    def __init__(self, path: str | None = None, fps: float = 4.0, size: int | None = None,
                 output: str = "embeds", dtype: str = "float32", batch_frames: int = 64):
        super().__init__()
        self.model_dir, config = check_hf_dir(path, "clip", "CLIP vision", tokenizer=False)
        vision = config.get("vision_config", config)
        if "hidden_size" not in vision or "patch_size" not in vision:
            raise PrismAudioError(f"encoder 'clip': {self.model_dir}/config.json is not a CLIP (vision) config")
        if output not in _OUTPUTS:
            raise PrismAudioError(f"encoder 'clip': output must be one of {_OUTPUTS}, got {output!r}")
        self.output = output
        native = int(vision.get("image_size", 224))
        self.size = native if size is None else positive_int("size", size, "clip")
        self.fps = positive_float("fps", fps, "clip")
        self.patch_size = int(vision["patch_size"])
        if output == "embeds":
            self.output_dim = int(config.get("projection_dim", vision.get("projection_dim", 512)))
        else:
            self.output_dim = int(vision["hidden_size"])
        self.dtype = resolve_dtype(dtype, "clip")
        self.batch_frames = positive_int("batch_frames", batch_frames, "clip")
        mean, std = CLIP_MEAN, CLIP_STD
        try:
            pre = json.loads((self.model_dir / "preprocessor_config.json").read_text(encoding="utf-8"))
            mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
        except (OSError, ValueError):
            pass
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def output_length(self, num_frames: int) -> int:
        if self.output == "patches":
            return num_frames * (self.size // self.patch_size) ** 2
        return num_frames

    def _build(self) -> Any:
        from transformers import CLIPVisionModelWithProjection

        with quiet_hf():
            try:
                model = CLIPVisionModelWithProjection.from_pretrained(
                    str(self.model_dir), local_files_only=True, dtype=self.dtype
                )
            except (OSError, ValueError, KeyError) as e:
                raise PrismAudioError(f"cannot load the CLIP vision encoder from {self.model_dir}: {e}") from None
        model.eval().requires_grad_(False)
        return model

    def check_frames(self, frames: Tensor) -> Tensor:
        if not isinstance(frames, Tensor) or frames.ndim != 5 or frames.shape[2] != 3:
            shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise PrismAudioError(f"CLIPVideoEncoder expects frames [B, T, 3, H, W], got {shape}")
        if frames.shape[1] == 0:
            raise PrismAudioError("CLIPVideoEncoder got zero frames")
        return frames.float()

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        frames = self.check_frames(frames)
        b, t = frames.shape[:2]
        model = self._load()
        device = self.mean.device
        if next(model.parameters()).device != device:
            model.to(device)
        flat = frames.reshape(b * t, *frames.shape[2:]).to(device)
        outs = []
        for chunk in flat.split(self.batch_frames):
            x = (resize_center_crop(chunk, self.size) - self.mean) / self.std
            # interpolate_pos_encoding lets a non-native `size` work (the position table is resampled).
            res = model(pixel_values=x.to(self.dtype), interpolate_pos_encoding=self.size != model.config.image_size)
            if self.output == "embeds":
                outs.append(res.image_embeds)
            elif self.output == "pooled":
                outs.append(model.vision_model.post_layernorm(res.last_hidden_state[:, 0]))
            else:
                outs.append(res.last_hidden_state[:, 1:])
        y = torch.cat(outs).float()
        if self.output == "patches":
            return y.reshape(b, t * y.shape[1], y.shape[2])
        return y.reshape(b, t, -1)
