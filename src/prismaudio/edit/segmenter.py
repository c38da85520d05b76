"""Click -> object mask -> box, for object-focused refinement (ThinkSound stage 2 uses Grounded SAM2).

Two segmenters behind one method, `segment(frame, click, time) -> [H, W] bool mask`:

* `SamSegmenter`: a SAM-family model (`SamModel` + `SamProcessor` layouts: sam-vit-base, SlimSAM)
  read through transformers from a LOCAL directory only (`local_files_only=True`, never a download).
  The click is one positive point; of SAM's three candidate masks the one with the highest
  predicted IoU is kept.
* `SceneSegmenter`: for procedural clips, the renderer's own mask of the object under the click,
  computed from the manifest row's scene graph with the renderer's sprite geometry: exact, and
  the truth the ROI benchmarks compare against. Later sources are drawn on top, so the last source
  covering the click wins, as in the picture.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..errors import PrismAudioError
from .roi import Click

SCENE = "scene"


class Segmenter(Protocol):
    def segment(self, frame: np.ndarray, click: Click, time: float = 0.0) -> np.ndarray:
        """[H, W] bool mask of the object under `click` in `frame` ([H, W, 3] uint8) at `time` s."""


# ------------------------------------------------------------------------------------ SAM
class SamSegmenter:
    """A SAM-family checkpoint directory (config.json + safetensors [+ processor config])."""

    def __init__(self, model, processor, device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.processor = processor
        self.device = torch.device(device)

    @classmethod
    def from_dir(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "SamSegmenter":
        """Load from `path` without touching the network; a missing or unreadable checkpoint is one line."""
        root = Path(path)
        if not root.is_dir():
            raise PrismAudioError(f"--segmenter {root}: no such checkpoint directory")
        if not (root / "config.json").is_file():
            raise PrismAudioError(f"--segmenter {root}: no config.json (not a SAM checkpoint directory)")
        try:
            cfg = json.loads((root / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PrismAudioError(f"--segmenter {root}: config.json is unreadable ({e})") from None
        if not isinstance(cfg, dict) or cfg.get("model_type") not in ("sam",):
            got = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
            raise PrismAudioError(f"--segmenter {root}: model_type {got!r} is not a SAM model (expected 'sam')")
        from transformers import SamModel, SamProcessor
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = SamModel.from_pretrained(root, local_files_only=True)
                processor = _processor(root, model.config, SamProcessor)
        except PrismAudioError:
            raise
        except Exception as e:  # noqa: BLE001 - corrupt weights / shapes: transformers raises many kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PrismAudioError(f"--segmenter {root}: cannot load the SAM checkpoint ({first[:200]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(model, processor, device)

    @torch.no_grad()
    def segment(self, frame: np.ndarray, click: Click, time: float = 0.0) -> np.ndarray:
        img = np.ascontiguousarray(frame, dtype=np.uint8)
        inputs = self.processor(images=img, input_points=[[[float(click.x), float(click.y)]]], return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model(**inputs, multimask_output=True)
        best = int(out.iou_scores[0, 0].argmax())
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu())
        mask = masks[0][0, best].numpy().astype(bool)
        if mask.shape != img.shape[:2]:
            raise PrismAudioError(f"the segmenter returned a {mask.shape} mask for a {img.shape[:2]} frame")
        return mask


def _processor(root: Path, config, processor_cls):
    """The checkpoint's processor, or SAM's preprocessing sized to its image encoder when it has
    none (some SAM exports ship weights + config only)."""
    if (root / "processor_config.json").is_file() or (root / "preprocessor_config.json").is_file():
        return processor_cls.from_pretrained(root, local_files_only=True)
    from transformers import SamImageProcessor

    side = int(config.vision_config.image_size)
    ip = SamImageProcessor(size={"longest_edge": side}, pad_size={"height": side, "width": side})
    return processor_cls(image_processor=ip)


# ------------------------------------------------------------------------------------ scene graph
def source_mask(scene: dict, index: int, frame: int) -> np.ndarray:
    """[H, W] bool: the pixels the renderer paints for source `index` in `frame` (its sprite, and a
    texture source's rain / wind region under the emitter); all False while it is invisible."""
    from .world import RENDER_MODULE, world_module

    render = world_module(RENDER_MODULE)
    size = int(scene["size"])
    src = scene["sources"][index]
    out = np.zeros((size, size), bool)
    if not src["positions"]["visible"][frame]:
        return out
    shape = _shape_of(src)
    cx, bottom, r = render.geometry(scene, src, frame)
    cy = r + 2 if src["family"] == "texture" else bottom - r
    rows, cols = np.mgrid[0:size, 0:size]
    dx, dy = cols - cx, rows - cy
    near = (np.abs(dy) <= r) & (np.abs(dx) <= 2 * r + 2)  # the sprite's own extent
    out |= near & render.shape_mask(shape, dx, dy, r)
    if src["family"] == "texture":  # the streak region between the emitter and the floor
        floor_row = round(scene["floor"] * size)
        half = round(size * 0.22 / src["distance"] ** 0.5)
        out[cy + r:floor_row, max(0, cx - half):min(size, cx + half + 1)] = True
    return out


def _shape_of(src: dict) -> str:
    from .world import VOCAB_MODULE, world_module

    return world_module(VOCAB_MODULE).BY_NAME[src["class"]].shape


def source_at(scene: dict, click: Click, frame: int) -> int | None:
    """Index of the topmost source whose rendered pixels cover `click` in `frame`, or None."""
    x, y = int(click.x), int(click.y)
    size = int(scene["size"])
    if not (0 <= x < size and 0 <= y < size):
        return None
    for i in reversed(range(len(scene["sources"]))):
        if source_mask(scene, i, frame)[y, x]:
            return i
    return None


class SceneSegmenter:
    """The renderer's own masks for a procedural clip (its manifest row's `scene`)."""

    def __init__(self, scene: dict) -> None:
        if not isinstance(scene, dict) or "sources" not in scene or "size" not in scene:
            raise PrismAudioError("--segmenter scene needs the clip's scene graph (a manifest row with 'scene')")
        self.scene = scene

    def frame_index(self, time: float) -> int:
        return int(min(max(0, round(time * self.scene["fps"])), self.scene["num_frames"] - 1))

    def source(self, click: Click, time: float = 0.0) -> int:
        i = source_at(self.scene, click, self.frame_index(time))
        if i is None:
            raise PrismAudioError(f"no object of the scene under the click {click.x:g},{click.y:g} "
                                  f"at {time:.2f} s (--segmenter scene)")
        return i

    def class_at(self, click: Click, time: float = 0.0) -> str:
        """The class name of the source under the click."""
        return str(self.scene["sources"][self.source(click, time)]["class"])

    def segment(self, frame: np.ndarray, click: Click, time: float = 0.0) -> np.ndarray:
        if frame.shape[:2] != (self.scene["size"], self.scene["size"]):
            raise PrismAudioError(f"--segmenter scene: the video is {frame.shape[1]}x{frame.shape[0]} but its "
                                  f"scene graph is {self.scene['size']} px square (another clip's manifest?)")
        return source_mask(self.scene, self.source(click, time), self.frame_index(time))


def scene_row(video: str | os.PathLike, manifest: str | os.PathLike | None = None) -> dict:
    """The manifest row of a corpus clip: `manifest`, or the corpus's own `manifest.jsonl` next to
    its `video/` folder; matched by the row's video path, else by the clip id (the file's stem)."""
    v = Path(video).resolve()
    path = Path(manifest) if manifest is not None else v.parent.parent / "manifest.jsonl"
    if not path.is_file():
        raise PrismAudioError(f"--segmenter scene: no manifest {path} (give --manifest for a clip outside its corpus)")
    by_id = None
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                if row.get("video") and (path.parent / row["video"]).resolve() == v:
                    return row
                if row.get("id") == v.stem:
                    by_id = row
    except (OSError, ValueError) as e:
        raise PrismAudioError(f"--segmenter scene: cannot read {path} ({e})") from None
    if by_id is None:
        raise PrismAudioError(f"--segmenter scene: {v.name} is not a clip of {path}")
    return by_id


def build_segmenter(spec: str, video: str | os.PathLike | None = None,
                    manifest: str | os.PathLike | None = None) -> Segmenter:
    """`scene` (the clip's scene graph) or a SAM checkpoint directory."""
    if spec == SCENE:
        if video is None:
            raise PrismAudioError("--segmenter scene needs the clip's video")
        return SceneSegmenter(scene_row(video, manifest)["scene"])
    return SamSegmenter.from_dir(spec)
