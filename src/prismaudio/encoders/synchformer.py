"""`synchformer`: the Synchformer visual branch (MotionFormer), equal to upstream, on native uint8 frames.

What the official extraction computes (reference `official_features.md`, Synchformer section):
frames at 25 fps (uint8, native size) -> torchvision v2 `Resize(224, BICUBIC, antialias)` ->
`CenterCrop(224)` -> `ToDtype(float32, scale=True)` -> `Normalize(0.5, 0.5)`; segments of 16 frames
with step 8, S = (T - 16)//8 + 1; each segment -> 8 tokens x D (D = 768 released) -> [B, S * 8, D].

`preprocess_frames` reproduces the torchvision pipeline bit-exactly in pure torch: torch's
antialiased bicubic interpolation ON THE UINT8 TENSOR is the very kernel torchvision v2 calls for
uint8 input (separable, rounded and clamped to 0..255 after each pass), so the resize stays in uint8;
the longer side is truncated (`int(224 * long / short)`), the crop offsets use Python's round, and
the scaling multiplies by 1/255 (not a division) as `ToDtype(scale=True)` does.

`SyncVisualBranch` is the MotionFormer with divided space-time attention, in the released key layout
(`vfeat_extractor.` prefix in `synchformer_state_dict.pth`):
  * `patch_embed_3d.proj`: Conv3d 3 -> D, kernel = stride = (2, 16, 16): 8 x 14 x 14 tokens, time-major;
  * `cls_token`, `pos_embed` [1, 1 + 196, D] (CLS slot + one per spatial position, tiled over time),
    `temp_embed` [1, 8, D] (repeated over the 196 positions of each time slot; the CLS gets none);
  * `blocks.i`: x += timeattn(norm3(x)); x += attn(norm1(x)); x += mlp(norm2(x)) (`mlp.fc1/fc2`, GELU).
    In BOTH attentions the CLS query attends to every token, and each patch query attends to its group
    (the 8 tokens of its spatial position in `timeattn`, the 196 tokens of its frame in `attn`) plus the
    CLS key/value. Why it matters: without the CLS in both steps the outputs differ by ~0.4 (upstream 1.7);
  * after the blocks: drop the CLS, `norm`, then `spatial_attn_agg` per time slot (a learned CLS before
    the 196 tokens, one pre-norm GELU `nn.TransformerEncoderLayer`, CLS output) -> 8 tokens x D.
  Every LayerNorm (blocks, `norm`, `spatial_attn_agg`) uses eps = 1e-6, as upstream.
The unused 2-D `patch_embed.proj` and the audio / sync-transformer keys of the release are named
(one log line, `unused_keys`) and ignored. Sizes (D, depth, MLP width, patch, tubelet, grid) are read
from the tensor shapes; the head count cannot be, so it is the `heads` parameter (12 released).
The same module serves the DeSync metric (`prismaudio.metrics.adapters.desync`).
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import PrismAudioError
from ..io.weights import read_state_dict as read_foreign_state_dict
from .base import FrozenEncoder, positive_float, positive_int, register_encoder

log = logging.getLogger(__name__)

LN_EPS = 1e-6  # every LayerNorm of the upstream visual branch
VISUAL_PREFIX = "vfeat_extractor."
UNUSED_VISUAL = ("patch_embed.proj.",)  # present in the release, never used by the forward


# --------------------------------------------------------------------------------------------------
# Preprocessing (torchvision v2 Resize -> CenterCrop -> ToDtype(scale) -> Normalize, on uint8)
# --------------------------------------------------------------------------------------------------
def resize_shorter_uint8(frames: Tensor, size: int) -> Tensor:
    """uint8 [N, 3, H, W] -> uint8 with the shorter side = `size`, the longer truncated (v2 `Resize(size)`)."""
    h, w = frames.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    nh, nw = (size, new_long) if h <= w else (new_long, size)
    if (nh, nw) == (h, w):
        return frames
    return nn.functional.interpolate(frames, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)


def center_crop(frames: Tensor, size: int) -> Tensor:
    """[..., H, W] -> [..., size, size] with torchvision's offsets int(round((H - size) / 2))."""
    h, w = frames.shape[-2:]
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)  # Python round: ties to even
    return frames[..., top : top + size, left : left + size]


def preprocess_frames(frames: Tensor, size: int = 224, resize: int | None = None) -> Tensor:
    """uint8 [N, 3, H, W] (RGB) -> float32 [N, 3, size, size] in [-1, 1], equal to the official sync_transform.

    The shorter side is first resized to `resize` (default `size`: av-benchmark / the official
    extraction); the official sync REWARD resizes to 256 and crops 224 (`resize=256, size=224`).
    """
    if frames.dtype != torch.uint8:
        raise PrismAudioError(f"synchformer preprocessing takes uint8 frames, got {frames.dtype}")
    if min(frames.shape[-2:]) == 0:
        raise PrismAudioError(f"synchformer: empty frames {tuple(frames.shape)}")
    resize = size if resize is None else resize
    if resize < size:
        raise PrismAudioError(f"synchformer: cannot crop {size} px out of frames resized to {resize} px")
    x = center_crop(resize_shorter_uint8(frames, resize), size)
    return (x.to(torch.float32) * (1.0 / 255.0) - 0.5) / 0.5


def to_uint8(frames: Tensor) -> Tensor:
    """uint8 passes through; float frames in [0, 1] are quantised (round(x * 255)) to enter the uint8 path."""
    if frames.dtype == torch.uint8:
        return frames
    if not frames.is_floating_point():
        raise PrismAudioError(f"synchformer: frames must be uint8 or float in [0, 1], got {frames.dtype}")
    return (frames.float() * 255.0).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------------------------------
# MotionFormer visual branch
# --------------------------------------------------------------------------------------------------
def _box(**modules: nn.Module) -> nn.Module:
    """A plain container, so state-dict keys follow the upstream nesting (e.g. `patch_embed_3d.proj`)."""
    box = nn.Module()
    for name, mod in modules.items():
        box.add_module(name, mod)
    return box


class DividedAttention(nn.Module):
    """Attention within groups (time or space) with the CLS token in every group and attending to all."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, t: int, s: int, over_time: bool) -> Tensor:
        """x [N, 1 + t*s, D] (CLS, then time-major patches) -> same shape."""
        n, l, d = x.shape
        h, e = self.heads, d // self.heads
        q, k, v = self.qkv(x).view(n, l, 3, h, e).permute(2, 0, 3, 1, 4)  # each [N, h, L, e]
        sdpa = nn.functional.scaled_dot_product_attention
        cls_out = sdpa(q[:, :, :1], k, v)  # the CLS query sees every token of every frame

        def grouped(z: Tensor) -> Tensor:  # [N, h, t*s, e] -> [N*h*G, g, e]
            z = z.reshape(n, h, t, s, e)
            if over_time:  # one group per spatial position: its t tokens
                z = z.transpose(2, 3)
            return z.reshape(-1, z.shape[3], e)

        groups = s if over_time else t
        qg, kg, vg = grouped(q[:, :, 1:]), grouped(k[:, :, 1:]), grouped(v[:, :, 1:])
        kc = k[:, :, :1].unsqueeze(2).expand(n, h, groups, 1, e).reshape(-1, 1, e)
        vc = v[:, :, :1].unsqueeze(2).expand(n, h, groups, 1, e).reshape(-1, 1, e)
        out = sdpa(qg, torch.cat([kc, kg], 1), torch.cat([vc, vg], 1))  # patches see their group + CLS
        out = out.view(n, h, groups, -1, e)
        if over_time:
            out = out.transpose(2, 3)
        out = torch.cat([cls_out, out.reshape(n, h, t * s, e)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(n, l, d))


class DividedSpaceTimeBlock(nn.Module):
    """Upstream block order: time attention (norm3), space attention (norm1), MLP (norm2); eps 1e-6."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, eps=LN_EPS) for _ in range(3))
        self.attn = DividedAttention(dim, heads)
        self.timeattn = DividedAttention(dim, heads)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, mlp_hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(mlp_hidden, dim))

    def forward(self, x: Tensor, t: int, s: int) -> Tensor:
        x = x + self.timeattn(self.norm3(x), t, s, over_time=True)
        x = x + self.attn(self.norm1(x), t, s, over_time=False)
        return x + self.mlp(self.norm2(x))


class CLSAggregation(nn.TransformerEncoderLayer):
    """Upstream's spatial aggregation: a learned CLS before the tokens, one pre-norm layer, CLS output."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__(dim, heads, ffn, dropout=0.0, activation="gelu", layer_norm_eps=LN_EPS,
                         batch_first=True, norm_first=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]


class SyncVisualBranch(nn.Module):
    """Segments [N, 3, F, H, W] (normalised to [-1, 1]) -> [N, F // tubelet, dim], released key layout."""

    def __init__(self, dim: int = 768, depth: int = 12, heads: int = 12, patch_size: int = 16, tubelet: int = 2,
                 segment_frames: int = 16, size: int = 224, mlp_ratio: float = 4.0,
                 mlp_hidden: int | None = None, agg_ffn: int | None = None) -> None:
        super().__init__()
        if dim % heads or segment_frames % tubelet or size % patch_size:
            raise PrismAudioError(
                f"synchformer: dim ({dim}) % heads ({heads}), segment_frames ({segment_frames}) % tubelet "
                f"({tubelet}) and size ({size}) % patch_size ({patch_size}) must all be 0")
        hidden = int(dim * mlp_ratio) if mlp_hidden is None else mlp_hidden
        self.dim, self.heads, self.patch_size, self.tubelet = dim, heads, patch_size, tubelet
        self.grid_t, self.grid_s = segment_frames // tubelet, (size // patch_size) ** 2
        self.segment_frames, self.size = segment_frames, size
        kernel = (tubelet, patch_size, patch_size)
        self.patch_embed_3d = _box(proj=nn.Conv3d(3, dim, kernel_size=kernel, stride=kernel))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_s, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, self.grid_t, dim))
        self.blocks = nn.ModuleList(DividedSpaceTimeBlock(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.spatial_attn_agg = CLSAggregation(dim, heads, hidden if agg_ffn is None else agg_ffn)
        for p in (self.cls_token, self.pos_embed, self.temp_embed, self.spatial_attn_agg.cls_token):
            nn.init.trunc_normal_(p, std=0.02)

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor], heads: int, where: Any) -> SyncVisualBranch:
        """Build with every size read from the (prefix-free) visual tensors, load them strictly.

        Missing, misshapen or unknown visual keys are one `PrismAudioError` naming `where`.
        """
        sd = {k: v for k, v in sd.items() if not k.startswith(UNUSED_VISUAL)}
        need = ("patch_embed_3d.proj.weight", "pos_embed", "temp_embed", "blocks.0.mlp.fc1.weight",
                "spatial_attn_agg.linear1.weight")
        absent = [k for k in need if k not in sd]
        if absent:
            raise PrismAudioError(
                f"Synchformer weights {where}: not the released visual-branch layout, missing "
                f"{[VISUAL_PREFIX + k for k in absent]}")
        conv = sd["patch_embed_3d.proj.weight"]
        if conv.ndim != 5 or conv.shape[1] != 3 or conv.shape[3] != conv.shape[4]:
            raise PrismAudioError(f"Synchformer weights {where}: {VISUAL_PREFIX}patch_embed_3d.proj.weight has "
                                  f"shape {tuple(conv.shape)}, expected [D, 3, tubelet, patch, patch]")
        dim, tubelet, patch = int(conv.shape[0]), int(conv.shape[2]), int(conv.shape[3])
        n_pos = int(sd["pos_embed"].shape[1]) - 1 if sd["pos_embed"].ndim == 3 else -1
        grid = math.isqrt(max(n_pos, 0))
        if n_pos <= 0 or grid * grid != n_pos or sd["temp_embed"].ndim != 3:
            raise PrismAudioError(
                f"Synchformer weights {where}: pos_embed {tuple(sd['pos_embed'].shape)} / temp_embed "
                f"{tuple(sd['temp_embed'].shape)} are not [1, 1 + grid^2, D] / [1, t, D]")
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
        if dim % heads:
            raise PrismAudioError(f"Synchformer weights {where}: width {dim} is not divisible by heads={heads}")
        net = cls(dim=dim, depth=depth, heads=heads, patch_size=patch, tubelet=tubelet,
                  segment_frames=int(sd["temp_embed"].shape[1]) * tubelet, size=grid * patch,
                  mlp_hidden=int(sd["blocks.0.mlp.fc1.weight"].shape[0]),
                  agg_ffn=int(sd["spatial_attn_agg.linear1.weight"].shape[0]))
        own = net.state_dict()
        missing = sorted(set(own) - set(sd))
        unknown = sorted(set(sd) - set(own))
        shapes = [f"{VISUAL_PREFIX}{k} {tuple(sd[k].shape)} != {tuple(v.shape)}"
                  for k, v in own.items() if k in sd and sd[k].shape != v.shape]
        if missing or unknown or shapes:
            parts = [f"missing {[VISUAL_PREFIX + k for k in missing[:5]]}{' ...' if len(missing) > 5 else ''}"
                     if missing else "", f"unexpected {[VISUAL_PREFIX + k for k in unknown[:5]]}" if unknown else "",
                     f"misshapen {shapes[:3]}" if shapes else ""]
            raise PrismAudioError(f"Synchformer weights {where} do not match the visual branch "
                                  f"(D={dim}, depth={depth}): {'; '.join(p for p in parts if p)}")
        net.load_state_dict(sd, strict=True)
        return net

    def positions(self) -> Tensor:
        """[1, 1 + t*s, D]: CLS slot, then spatial table tiled over time + temporal table per time slot."""
        tiled = self.pos_embed[:, 1:].repeat(1, self.grid_t, 1) + self.temp_embed.repeat_interleave(self.grid_s, 1)
        return torch.cat([self.pos_embed[:, :1], tiled], dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """[N, 3, F, H, W] -> tokens after the blocks, before `norm`: [N, 1 + t*s, D] (CLS first)."""
        if tuple(x.shape[1:]) != (3, self.segment_frames, self.size, self.size):
            raise PrismAudioError(f"Synchformer visual branch expects [N, 3, {self.segment_frames}, {self.size}, "
                                  f"{self.size}] segments, got {tuple(x.shape)}")
        tok = self.patch_embed_3d.proj(x).flatten(2).transpose(1, 2)  # [N, t*h*w, D], time-major
        tok = torch.cat([self.cls_token.expand(tok.shape[0], -1, -1), tok], dim=1) + self.positions()
        for block in self.blocks:
            tok = block(tok, self.grid_t, self.grid_s)
        return tok

    def forward(self, x: Tensor) -> Tensor:
        tok = self.norm(self.forward_features(x)[:, 1:])
        n, _, d = tok.shape
        agg = self.spatial_attn_agg(tok.reshape(n * self.grid_t, self.grid_s, d))
        return agg.view(n, self.grid_t, d)


# --------------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A plain (or "state_dict"/"model"-wrapped) state dict from torch.load(weights_only=True) or safetensors."""
    return read_foreign_state_dict(path, "the Synchformer weights")


def split_visual(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """(visual tensors without the `vfeat_extractor.` prefix, the unused keys by their full names).

    A file without any prefixed key is taken as a visual-only state dict.
    """
    if not any(k.startswith(VISUAL_PREFIX) for k in sd):
        vis, unused = dict(sd), []
    else:
        vis = {k[len(VISUAL_PREFIX):]: v for k, v in sd.items() if k.startswith(VISUAL_PREFIX)}
        unused = [k for k in sd if not k.startswith(VISUAL_PREFIX)]
    unused += [VISUAL_PREFIX + k for k in vis if k.startswith(UNUSED_VISUAL)]
    return {k: v for k, v in vis.items() if not k.startswith(UNUSED_VISUAL)}, unused


def load_visual_branch(path: Path, heads: int) -> tuple[SyncVisualBranch, list[str]]:
    """The visual branch of a released-layout file (frozen, eval) and the keys it ignored (logged once)."""
    vis, unused = split_visual(read_state_dict(path))
    net = SyncVisualBranch.from_state_dict(vis, heads, path)
    if unused:
        groups = Counter(".".join(k.split(".")[:2]) if k.startswith(VISUAL_PREFIX) else k.split(".")[0]
                         for k in unused)
        log.info("synchformer: %s: ignored %d unused keys (%s)", path, len(unused),
                 ", ".join(f"{g}.* x{n}" for g, n in groups.items()))
    return net.eval().requires_grad_(False), unused


# --------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------
@register_encoder("synchformer")
class SynchformerSyncEncoder(FrozenEncoder):
    """Frozen Synchformer visual branch: native uint8 frames at 25 fps -> [B, S * 8, D]."""

    modality = "sync"
    takes_uint8 = True  # wants native-resolution uint8 frames: the resize must be torchvision's uint8 one

    def __init__(self, path: str | None = None, fps: float = 25.0, size: int = 224, dim: int = 768,
                 heads: int = 12, segment_frames: int = 16, segment_step: int = 8, tubelet: int = 2,
                 batch_segments: int = 16):
        super().__init__()
        if path is None or path == "":
            raise PrismAudioError(
                "encoder 'synchformer' needs params.path: the released synchformer_state_dict.pth (or any state "
                "dict in its key layout, read with torch.load(weights_only=True)); weights are never downloaded")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise PrismAudioError(f"encoder 'synchformer': weights file {self.path} not found")
        self.fps = positive_float("fps", fps, "synchformer")
        self.crop_size = positive_int("size", size, "synchformer")
        self.size = None  # frame_spec() -> (fps, None): native uint8 frames; the crop size is `crop_size`
        self.output_dim = positive_int("dim", dim, "synchformer")
        self.heads = positive_int("heads", heads, "synchformer")
        self.segment_frames = positive_int("segment_frames", segment_frames, "synchformer")
        self.segment_step = positive_int("segment_step", segment_step, "synchformer")
        self.tubelet = positive_int("tubelet", tubelet, "synchformer")
        if self.segment_frames % self.tubelet:
            raise PrismAudioError(f"encoder 'synchformer': segment_frames {segment_frames} % tubelet {tubelet} != 0")
        self.tokens_per_segment = self.segment_frames // self.tubelet
        self.batch_segments = positive_int("batch_segments", batch_segments, "synchformer")
        self.unused_keys: list[str] = []

    def _too_short(self, num_frames: int) -> PrismAudioError:
        return PrismAudioError(
            f"synchformer: the video has {num_frames} frames at {self.fps:g} fps ({num_frames / self.fps:.2f} s); "
            f"one Synchformer segment needs {self.segment_frames} frames ({self.segment_frames / self.fps:.2f} s)")

    def num_segments(self, num_frames: int) -> int:
        if num_frames < self.segment_frames:
            raise self._too_short(num_frames)
        return (num_frames - self.segment_frames) // self.segment_step + 1

    def output_length(self, num_frames: int) -> int:
        return self.num_segments(num_frames) * self.tokens_per_segment

    def _build(self) -> SyncVisualBranch:
        net, self.unused_keys = load_visual_branch(self.path, self.heads)
        declared = (self.output_dim, self.segment_frames, self.tubelet, self.crop_size)
        found = (net.dim, net.segment_frames, net.tubelet, net.size)
        if declared != found:
            raise PrismAudioError(
                f"Synchformer weights {self.path} hold a visual branch with (dim, segment_frames, tubelet, size) = "
                f"{found}, but the encoder is configured with {declared}; set params accordingly")
        return net

    def segment(self, frames: Tensor) -> Tensor:
        """[B, T, 3, H, W] -> [B, S, 3, segment_frames, H, W] (windows of 16 frames, step 8)."""
        seg = frames.unfold(1, self.segment_frames, self.segment_step)  # [B, S, 3, H, W, F]
        return seg.permute(0, 1, 2, 5, 3, 4)

    @torch.no_grad()
    def forward(self, frames: Tensor) -> Tensor:
        """uint8 (or float in [0, 1]) [B, T, 3, H, W] at 25 fps, any H x W -> float32 [B, S * 8, D]."""
        if not isinstance(frames, Tensor) or frames.ndim != 5 or frames.shape[2] != 3:
            shape = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise PrismAudioError(f"SynchformerSyncEncoder expects frames [B, T, 3, H, W], got {shape}")
        b, t, c, h, w = frames.shape
        s = self.num_segments(t)
        net = self._load()
        device = self._device_probe.device
        if next(net.parameters()).device != device:
            net.to(device)
        # on the CPU: torch's uint8 antialiased bicubic is the kernel torchvision uses (exact integers)
        flat = preprocess_frames(to_uint8(frames.reshape(b * t, c, h, w).cpu()), self.crop_size)
        seg = self.segment(flat.view(b, t, c, self.crop_size, self.crop_size))[:, :s]  # a view: no copy
        chunks = [seg[i, j : j + self.batch_segments] for i in range(b) for j in range(0, s, self.batch_segments)]
        out = torch.cat([net(chunk.to(device).contiguous()) for chunk in chunks])
        return out.reshape(b, s * self.tokens_per_segment, self.output_dim).float()
