"""`synchformer`: Synchformer-style visual sync features (official contract: 25 fps, 224x224, 8 x 768 per segment).

What the official pipeline computes (reference §3): frames at 25 fps, 224x224, normalised with
mean = std = 0.5, cut into segments of 16 frames with step 8 (S = (T - 16)//8 + 1), and each
segment gives 8 tokens x 768 from the Synchformer visual branch -> S * 8 tokens.

This module implements that segmenting around a clean re-implementation of the visual branch
(`SyncVisualBranch`): a ViT over 16 x 224 x 224 segments with
  * a 3-D patch embedding (tubelet 2 x 16 x 16 -> 8 x 14 x 14 tokens),
  * learned spatial (`pos_embed`, with a CLS slot) and temporal (`temp_embed`) position embeddings,
  * `depth` blocks of divided space-time attention (time attention per patch location, then space
    attention per frame with the CLS token shared across frames, then an MLP; pre-norm),
  * a final LayerNorm, and per temporal token a spatial aggregation: one transformer encoder layer
    over [agg_cls ; 196 patch tokens] whose CLS output is the token (-> 8 tokens per segment).

Weights: `path` is a LOCAL file read with `torch.load(weights_only=True)` (or a `.safetensors`
file). Accepted layouts: a plain state dict, or one under "state_dict"/"model"; keys may carry a
"vfeat_extractor." prefix (then every other key, e.g. the audio branch, is ignored). After the
prefix the keys must match `SyncVisualBranch.state_dict()` exactly (strict), i.e.
  patch_embed.{weight,bias}, cls_token, pos_embed, temp_embed,
  blocks.{i}.{norm_time,norm_space,norm_mlp}.{weight,bias},
  blocks.{i}.{time_attn,space_attn}.{qkv,proj}.{weight,bias},
  blocks.{i}.mlp.{fc1,fc2}.{weight,bias}, norm.{weight,bias},
  agg_cls, agg.* (torch.nn.TransformerEncoderLayer, batch_first, norm_first, GELU).
HONEST LIMITATION: this is our own naming. The released Synchformer checkpoint
(`24-01-04T16-39-21`, MotionFormer-based) uses different parameter names and details that were not
verified here, so loading it needs a key-conversion script that does not exist yet; the architecture
above follows the published description, but numerical parity with official features is untested.

Frozen, lazily loaded, never in our `state_dict()` (like `minilm`). Clips shorter than one segment
(T < 16) are padded by repeating the last frame, giving one segment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PrismAudioError
from .base import FrozenEncoder, positive_float, positive_int, register_encoder
from .clip import resize_center_crop


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, l, d = x.shape
        q, k, v = self.qkv(x).view(n, l, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(n, l, d))


class _DividedBlock(nn.Module):
    """Time attention (per patch location), space attention (per frame, shared CLS), MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_time, self.norm_space, self.norm_mlp = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.time_attn = _Attention(dim, heads)
        self.space_attn = _Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))

    def forward(self, cls: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        # cls [N, 1, D]; x [N, t, s, D]
        n, t, s, d = x.shape
        xt = x.transpose(1, 2).reshape(n * s, t, d)
        xt = xt + self.time_attn(self.norm_time(xt))
        x = xt.view(n, s, t, d).transpose(1, 2)
        xs = torch.cat([cls.unsqueeze(1).expand(n, t, 1, d), x], dim=2).reshape(n * t, s + 1, d)
        xs = xs + self.space_attn(self.norm_space(xs))
        xs = xs.view(n, t, s + 1, d)
        cls, x = xs[:, :, :1].mean(1), xs[:, :, 1:]
        seq = torch.cat([cls, x.reshape(n, t * s, d)], dim=1)
        seq = seq + self.mlp(self.norm_mlp(seq))
        return seq[:, :1], seq[:, 1:].reshape(n, t, s, d)


class SyncVisualBranch(nn.Module):
    """Segments [N, 3, F, H, W] (normalised) -> [N, F // tubelet, dim] spatially pooled temporal tokens."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, patch_size: int = 16, tubelet: int = 2,
                 segment_frames: int = 16, size: int = 224, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % heads or segment_frames % tubelet or size % patch_size:
            raise PrismAudioError("synchformer: dim % heads, segment_frames % tubelet and size % patch_size must be 0")
        self.tubelet, self.patch_size = tubelet, patch_size
        self.grid_t, self.grid_s = segment_frames // tubelet, (size // patch_size) ** 2
        self.patch_embed = nn.Conv3d(3, dim, kernel_size=(tubelet, patch_size, patch_size), stride=(tubelet, patch_size, patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_s, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, self.grid_t, dim))
        self.blocks = nn.ModuleList(_DividedBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.agg_cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.agg = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=int(dim * mlp_ratio), dropout=0.0,
                                              activation="gelu", batch_first=True, norm_first=True)
        for p in (self.cls_token, self.pos_embed, self.temp_embed, self.agg_cls):
            nn.init.trunc_normal_(p, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        tok = self.patch_embed(x)  # [N, D, t, h, w]
        n, d, t = tok.shape[:3]
        tok = tok.flatten(3).permute(0, 2, 3, 1)  # [N, t, s, D]
        tok = tok + self.pos_embed[:, 1:].unsqueeze(1) + self.temp_embed[:, :t].unsqueeze(2)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(n, 1, d)
        for block in self.blocks:
            cls, tok = block(cls, tok)
        tok = self.norm(tok)
        s = tok.shape[2]
        seq = torch.cat([self.agg_cls.expand(n * t, 1, d), tok.reshape(n * t, s, d)], dim=1)
        return self.agg(seq)[:, 0].view(n, t, d)


def _load_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a user error
        raise PrismAudioError(f"cannot read the Synchformer checkpoint {path}: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise PrismAudioError(f"Synchformer checkpoint {path} does not hold a state dict")
    prefix = "vfeat_extractor."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


@register_encoder("synchformer")
class SynchformerSyncEncoder(FrozenEncoder):
    """Frozen Synchformer visual branch: frames at 25 fps -> [B, S * tokens_per_segment, dim]."""

    modality = "sync"

    def __init__(self, path: str | None = None, fps: float = 25.0, size: int = 224, dim: int = 768, depth: int = 12,
                 heads: int = 12, patch_size: int = 16, tubelet: int = 2, segment_frames: int = 16,
                 segment_step: int = 8, mlp_ratio: float = 4.0, batch_segments: int = 16):
        super().__init__()
        if path is None or path == "":
            raise PrismAudioError(
                "encoder 'synchformer' needs params.path: a local visual-branch checkpoint (.pt/.pth read with "
                "torch.load(weights_only=True), or .safetensors) whose keys (optionally prefixed 'vfeat_extractor.') "
                "match prismaudio.encoders.synchformer.SyncVisualBranch; weights are never downloaded"
            )
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise PrismAudioError(f"encoder 'synchformer': checkpoint file {self.path} not found")
        self.fps = positive_float("fps", fps, "synchformer")
        self.size = positive_int("size", size, "synchformer")
        self.output_dim = positive_int("dim", dim, "synchformer")
        self.segment_frames = positive_int("segment_frames", segment_frames, "synchformer")
        self.segment_step = positive_int("segment_step", segment_step, "synchformer")
        self.tubelet = positive_int("tubelet", tubelet, "synchformer")
        self.tokens_per_segment = self.segment_frames // self.tubelet
        self.batch_segments = positive_int("batch_segments", batch_segments, "synchformer")
        self._arch = dict(dim=self.output_dim, depth=positive_int("depth", depth, "synchformer"),
                          heads=positive_int("heads", heads, "synchformer"),
                          patch_size=positive_int("patch_size", patch_size, "synchformer"), tubelet=self.tubelet,
                          segment_frames=self.segment_frames, size=self.size,
                          mlp_ratio=positive_float("mlp_ratio", mlp_ratio, "synchformer"))

    def num_segments(self, num_frames: int) -> int:
        return (max(num_frames, self.segment_frames) - self.segment_frames) // self.segment_step + 1

    def output_length(self, num_frames: int) -> int:
        return self.num_segments(num_frames) * self.tokens_per_segment

    def _build(self) -> SyncVisualBranch:
        net = SyncVisualBranch(**self._arch)
        sd = _load_state_dict(self.path)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise PrismAudioError(
                f"Synchformer checkpoint {self.path} does not match the configured architecture: "
                f"{len(missing)} missing (e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected "
                f"(e.g. {sorted(unexpected)[:3]}); see prismaudio.encoders.synchformer for the key layout"
            )
        net.eval().requires_grad_(False)
        return net

    def segment(self, frames: Tensor) -> Tensor:
        """[B, T, 3, H, W] -> [B, S, 3, segment_frames, H, W] (16-frame windows, step 8)."""
        t = frames.shape[1]
        if t < self.segment_frames:
            pad = frames[:, -1:].expand(-1, self.segment_frames - t, -1, -1, -1)
            frames = torch.cat([frames, pad], dim=1)
        seg = frames.unfold(1, self.segment_frames, self.segment_step)  # [B, S, 3, H, W, F]
        return seg.permute(0, 1, 2, 5, 3, 4)

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        if not isinstance(frames, Tensor) or frames.ndim != 5 or frames.shape[2] != 3 or frames.shape[1] == 0:
            shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise PrismAudioError(f"SynchformerSyncEncoder expects frames [B, T>0, 3, H, W], got {shape}")
        net = self._load()
        device = self._device_probe.device
        if next(net.parameters()).device != device:
            net.to(device)
        b, t, c, h, w = frames.shape
        flat = resize_center_crop(frames.reshape(b * t, c, h, w).float().to(device), self.size)
        flat = (flat - 0.5) / 0.5
        seg = self.segment(flat.view(b, t, c, self.size, self.size))
        s = seg.shape[1]
        seg = seg.reshape(b * s, c, self.segment_frames, self.size, self.size)
        out = torch.cat([net(chunk) for chunk in seg.split(self.batch_segments)])
        return out.reshape(b, s * self.tokens_per_segment, self.output_dim)
