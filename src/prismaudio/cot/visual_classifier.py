"""A tiny CNN that names the class of one tracked object from a crop of it.

A planner that segments and tracks objects itself (the offline planner of `prismaudio.procedural`)
only needs this model to say *what* each tracked object is. Input: the object's bounding box,
padded to a square, masked to its own pixels (so the room colour, which is random per clip, carries
no signal) and resized to `crop` x `crop`, RGB + mask = 4 channels. Output: logits over the classes
its checkpoint lists. One object has one class (softmax); a clip's multi-label answer is the set of
its objects' classes.

Checkpoints follow the judges' format (`metrics/judges.py`): a directory with `config.json`
({"model": "visual_classifier", "config": {...}, "classes": [...]}) + `model.safetensors`, loaded
strictly. The class names travel with the weights, so this module knows no vocabulary of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import PrismAudioError
from ..io.weights import load_state_into, read_model_dir, save_model_dir

KIND = "visual_classifier"


def make_crop(frame: np.ndarray, mask: np.ndarray, size: int = 32) -> Tensor:
    """[4, size, size] float32 crop of the object `mask` marks in `frame` ([H, W, 3] in [0, 1]).

    The bounding box is padded to a square around its centre (keeping the aspect ratio, a shape cue)
    with zeros outside the frame; pixels outside the mask are zeroed.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise PrismAudioError("cannot crop an empty object mask")
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(r1 - r0, c1 - c0) + 2
    cr, cc = (r0 + r1) // 2, (c0 + c1) // 2
    top, left = cr - side // 2, cc - side // 2
    img = np.concatenate([frame * mask[..., None], mask[..., None].astype(frame.dtype)], axis=2)
    out = np.zeros((side, side, 4), np.float32)
    H, W = mask.shape
    a0, a1, b0, b1 = max(0, top), min(H, top + side), max(0, left), min(W, left + side)
    out[a0 - top:a1 - top, b0 - left:b1 - left] = img[a0:a1, b0:b1]
    t = torch.from_numpy(out).permute(2, 0, 1)[None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class VisualClassifier(nn.Module):
    """Crop [B, 4, crop, crop] -> class logits [B, len(classes)]. Three conv blocks + global mean/max pool."""

    defaults: ClassVar[dict[str, Any]] = {"width": 24, "crop": 32, "n_classes": None}  # None: len(classes)

    def __init__(self, classes: Sequence[str], **config: Any):
        super().__init__()
        unknown = set(config) - set(self.defaults)
        if unknown:
            raise PrismAudioError(f"visual classifier: unknown config keys {sorted(unknown)}")
        self.classes = tuple(str(c) for c in classes)
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise PrismAudioError(f"visual classifier: classes must be distinct names, got {list(self.classes)}")
        self.config = {**self.defaults, **config}
        if self.config["n_classes"] is None:
            self.config["n_classes"] = len(self.classes)
        if int(self.config["n_classes"]) != len(self.classes):
            raise PrismAudioError(f"visual classifier: n_classes {self.config['n_classes']} but "
                                  f"{len(self.classes)} class names")
        w = int(self.config["width"])
        self.net = nn.Sequential(_block(4, w), _block(w, 2 * w), _block(2 * w, 4 * w))
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(8 * w, int(self.config["n_classes"])))

    @property
    def crop(self) -> int:
        return int(self.config["crop"])

    def forward(self, x: Tensor) -> Tensor:
        h = self.net(x)
        return self.head(torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1))

    @torch.no_grad()
    def probs(self, crops: Tensor) -> Tensor:
        """[B, len(classes)] class posteriors (eval mode, no grad)."""
        was = self.training
        self.eval()
        out = self(crops).softmax(-1)
        self.train(was)
        return out

    def save(self, out_dir: str | Path) -> Path:
        return save_model_dir(out_dir, self, {"model": KIND, "config": self.config, "classes": list(self.classes)})

    @classmethod
    def load(cls, path: str | Path) -> VisualClassifier:
        p = Path(path)
        meta, state = read_model_dir(p, "visual classifier")
        if meta.get("model") != KIND:
            raise PrismAudioError(f"{p} holds a '{meta.get('model')}' model, not a '{KIND}'")
        classes, config = meta.get("classes"), meta.get("config", {})
        if not isinstance(classes, list) or not classes:
            raise PrismAudioError(f"visual classifier {p}: config.json lists no classes")
        if not isinstance(config, dict):
            raise PrismAudioError(f"visual classifier {p}: config.json's 'config' is not an object")
        model = cls(classes, **config)
        return load_state_into(model, state, p, "visual classifier").eval()
