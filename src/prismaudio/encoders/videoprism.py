"""`videoprism`: the official video encoder contract, served from a LOCAL `torch.export` program.

Official features (reference §3): VideoPrism `videoprism_lvt_public_v1_large` on 288x288 RGB frames
sampled at 4 fps (`int(4 * duration)` frames, last frame repeated if short); `frame_embeddings`,
1024-d per frame -> 36 x 1024 for 9 s.

What works, honestly: VideoPrism is a JAX/Flax model and there is no official PyTorch port, so
this package does NOT contain a VideoPrism architecture and cannot read the released Flax weights
(nor a `.safetensors` conversion of them). What it does support is a user-made export:

* `path` (required): a `.pt2` file written by `torch.export.save` of a module that maps
  `frames [B, T, 3, size, size]` float RGB in [0, 1] (this adapter resizes/crops to `size`; the
  exported module must do VideoPrism's own input scaling) to `[B, T, output_dim]` per-frame
  embeddings. Export it with dynamic B and T dimensions so any clip length works.
* `fps` = 4.0, `size` = 288, `output_dim` = 1024 (the paper preset's `video_dim`).

The exported program runs on the device it was exported for (CPU by default); outputs follow the
encoder's device/dtype. Frozen, lazily loaded, never in our `state_dict()`. Without a valid file
construction raises one `PrismAudioError` naming the expected file, so a pipeline can say which
encoder is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from .base import FrozenEncoder, positive_float, positive_int, register_encoder
from .clip import resize_center_crop

_EXPECTED = (
    "a local .pt2 file from torch.export.save of a PyTorch port of VideoPrism 'videoprism_lvt_public_v1_large' "
    "mapping frames [B, T, 3, 288, 288] in [0, 1] to per-frame embeddings [B, T, 1024] "
    "(no PyTorch VideoPrism ships with prismaudio; the Flax weights or a .safetensors of them cannot be used directly)"
)


@register_encoder("videoprism")
class VideoPrismVideoEncoder(FrozenEncoder):
    """Frozen VideoPrism (exported program): frames at 4 fps, 288x288 -> [B, T, 1024]."""

    modality = "video"

    def __init__(self, path: str | None = None, fps: float = 4.0, size: int = 288, output_dim: int = 1024):
        super().__init__()
        if path is None or path == "":
            raise PrismAudioError(f"encoder 'videoprism' needs params.path: {_EXPECTED}")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise PrismAudioError(f"encoder 'videoprism': {self.path} not found; expected {_EXPECTED}")
        if self.path.suffix != ".pt2":
            raise PrismAudioError(f"encoder 'videoprism': {self.path} is not a .pt2 export; expected {_EXPECTED}")
        self.fps = positive_float("fps", fps, "videoprism")
        self.size = positive_int("size", size, "videoprism")
        self.output_dim = positive_int("output_dim", output_dim, "videoprism")

    def _build(self) -> Any:
        try:
            program = torch.export.load(str(self.path)).module()
        except Exception as e:  # noqa: BLE001 - any unreadable export is a user error
            raise PrismAudioError(f"cannot load the VideoPrism export {self.path}: {e}") from None
        for p in program.parameters():
            p.requires_grad_(False)
        return program

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        if not isinstance(frames, Tensor) or frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[1] == 0:
            shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise PrismAudioError(f"VideoPrismVideoEncoder expects frames [B, T>0, 3, H, W], got {shape}")
        program = self._load()
        b, t, c, h, w = frames.shape
        params = list(program.parameters())
        run_device = params[0].device if params else torch.device("cpu")
        x = resize_center_crop(frames.reshape(b * t, c, h, w).float().to(run_device), self.size)
        try:
            y = program(x.view(b, t, c, self.size, self.size))
        except Exception as e:  # noqa: BLE001 - shape guards of the export surface here
            raise PrismAudioError(f"the VideoPrism export {self.path} failed on frames {tuple(frames.shape)}: {e}") from None
        if not isinstance(y, Tensor) or tuple(y.shape) != (b, t, self.output_dim):
            got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
            raise PrismAudioError(
                f"the VideoPrism export {self.path} returned {got}, expected [B, T, {self.output_dim}] = {(b, t, self.output_dim)}"
            )
        probe = self._device_probe
        return y.to(device=probe.device, dtype=probe.dtype if probe.dtype.is_floating_point else torch.float32)
