"""Training pairs for object-focused refinement, derived from the procedural corpus.

A refine pair is what the model sees at inference (the ROI crop of the video, the existing mixture
as a fully visible audio context, a CoT about the object) and what it must produce: that source's
own stem. The corpus does not store stems; they are rebuilt exactly by re-rendering the clip from
its (seed, index), since every clip is a pure function of them (`procedural/synth/writer.make_clip`).

The ROI is ONE box per clip and source, as a user's box or click gives one: the union of the
source's rendered pixels over the frames where it is visible (`segmenter.source_mask`), padded by
`pad` px. Box and stem come from the same scene graph, so the pair is exact ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import PrismAudioError
from .roi import Box, crop_frames
from .segmenter import source_mask

ROI_PAD_PX = 2


@dataclass
class RefinePair:
    clip_id: str
    source: int  # index in the scene graph's sources
    object_class: str
    box: Box
    side: float  # mean x in [-1, 1] over the visible frames
    roi_frames: Tensor  # [T, 3, size, size] float32 in [0, 1]
    context: Tensor  # [2, S] the clip's mixture (the existing track)
    target: Tensor  # [2, S] this source's direct-sound stem (the mixture's scale)


def source_box(scene: dict, index: int, pad: int = ROI_PAD_PX) -> Box:
    """The union of source `index`'s rendered pixels over its visible frames, padded, in the frame."""
    size = int(scene["size"])
    seen = np.zeros((size, size), bool)
    for f in range(int(scene["num_frames"])):
        if scene["sources"][index]["positions"]["visible"][f]:
            seen |= source_mask(scene, index, f)
    rows, cols = np.flatnonzero(seen.any(1)), np.flatnonzero(seen.any(0))
    if not len(rows):
        raise PrismAudioError(f"source {index} of the scene is never visible: no ROI")
    return Box(max(0, int(cols[0]) - pad), max(0, int(rows[0]) - pad),
               min(size, int(cols[-1]) + 1 + pad), min(size, int(rows[-1]) + 1 + pad))


def refine_pairs(row: dict, frames: np.ndarray, audio: np.ndarray, stems: list[np.ndarray], size: int) -> list[RefinePair]:
    """One pair per source of a clip, from `make_clip`'s (row, frames [T, H, W, 3] uint8, mixture
    [2, S], stems); `size` is the ROI side the video encoders read."""
    scene = row["scene"]
    if len(stems) != len(scene["sources"]):
        raise PrismAudioError(f"{row.get('id')}: {len(stems)} stems for {len(scene['sources'])} sources")
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    mix = torch.as_tensor(np.asarray(audio, np.float32))
    out = []
    for i, (src, stem) in enumerate(zip(scene["sources"], stems)):
        box = source_box(scene, i)
        vis = np.asarray(src["positions"]["visible"], bool)
        side = float(np.asarray(src["positions"]["x"], float)[vis].mean())
        out.append(RefinePair(row["id"], i, src["class"], box, side, crop_frames(video, box, size), mix,
                              torch.as_tensor(np.asarray(stem, np.float32))))
    return out


def refine_pairs_for_clip(seed: int, index: int, cfg: dict, size: int) -> list[RefinePair]:
    """Re-render clip `index` of the corpus made with `seed` and `cfg` (duration, fps, size,
    sample_rate: the `synth` settings) and return its refine pairs."""
    from .world import WRITER_MODULE, world_module

    row, frames, audio, stems = world_module(WRITER_MODULE).make_clip(int(seed), int(index), dict(cfg))
    return refine_pairs(row, frames, audio, stems, size)
