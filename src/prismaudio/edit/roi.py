"""Where an edit applies: time regions, boxes and clicks in the frame, masks -> boxes, and the
region-of-interest (ROI) video that object-focused refinement (ThinkSound stage 2) encodes.

Every parser and check raises one-line `PrismAudioError`s naming the flag, so the CLI can refuse
bad input before any model is loaded. Pixel boxes are half-open: columns x0..x1-1, rows y0..y1-1.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import PrismAudioError

MIN_BOX_PX = 2  # a box narrower or shorter than this selects no object (degenerate)
DEFAULT_ROI_SIZE = 224  # side of the ROI video when no encoder asks for a square size
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"


# ------------------------------------------------------------------------------------ time regions
@dataclass(frozen=True)
class Region:
    """[start, end) in seconds of the clip."""

    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start

    def samples(self, sample_rate: int) -> tuple[int, int]:
        """[a, b) in samples (rounded), as the context masks use them."""
        return round(self.start * sample_rate), round(self.end * sample_rate)


def parse_region(text: str, duration: float, what: str = "--region") -> Region:
    """`A:B` seconds; `A:` runs to the clip's end and `:B` starts at 0. Refused: anything that is not
    two numbers around one colon, a region outside [0, duration], an empty or reversed one."""
    m = re.fullmatch(rf"\s*({_NUMBER})?\s*:\s*({_NUMBER})?\s*", text or "")
    if m is None or (m.group(1) is None and m.group(2) is None):
        raise PrismAudioError(f"{what} {text!r} is not START:END in seconds (e.g. 1.5:2.5, 1.5: or :2.5)")
    a = float(m.group(1)) if m.group(1) is not None else 0.0
    b = float(m.group(2)) if m.group(2) is not None else float(duration)
    return check_region(Region(a, b), duration, what)


def check_region(region: Region, duration: float, what: str = "--region") -> Region:
    """The region, or one line saying why it does not fit a clip of `duration` seconds."""
    a, b = region.start, region.end
    if not (math.isfinite(a) and math.isfinite(b)):
        raise PrismAudioError(f"{what} {a:g}:{b:g} must be finite seconds")
    if b < a:
        raise PrismAudioError(f"{what} {a:g}:{b:g} is reversed (its end is before its start)")
    if b == a:
        raise PrismAudioError(f"{what} {a:g}:{b:g} is empty")
    tol = 1e-6
    if a < -tol or b > duration + tol:
        raise PrismAudioError(f"{what} {a:g}:{b:g} is outside the clip (0:{duration:g} s)")
    return Region(max(0.0, a), min(float(duration), b))


# ------------------------------------------------------------------------------------ boxes, clicks
@dataclass(frozen=True)
class Box:
    """A pixel box [x0, x1) x [y0, y1) in the frame."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2

    def side(self, frame_width: int) -> float:
        """The box centre as x in [-1, 1] (left edge -1, right edge +1), the scene graph's convention."""
        return 2 * self.centre[0] / frame_width - 1

    def contains(self, other: "Box") -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and other.x1 <= self.x1 and other.y1 <= self.y1

    def as_list(self) -> list[int]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass(frozen=True)
class Click:
    """A point (x, y) in pixels; the segmenter turns it into the object's mask."""

    x: float
    y: float


def parse_object(text: str, what: str = "--object") -> Box | Click:
    """`x0,y0,x1,y1` (a box, pixels) or `x,y` (a click)."""
    parts = [p.strip() for p in (text or "").split(",")]
    if len(parts) not in (2, 4) or not all(re.fullmatch(_NUMBER, p) for p in parts):
        raise PrismAudioError(f"{what} {text!r} is neither a box x0,y0,x1,y1 nor a click x,y (pixels)")
    v = [float(p) for p in parts]
    if not all(math.isfinite(x) for x in v):
        raise PrismAudioError(f"{what} {text!r} must be finite pixel coordinates")
    if len(v) == 2:
        return Click(v[0], v[1])
    return Box(*(int(round(x)) for x in v))


def check_box(box: Box, width: int, height: int, what: str = "--object") -> Box:
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        raise PrismAudioError(f"{what} box {','.join(map(str, box.as_list()))} is reversed or empty (x0 < x1 and y0 < y1)")
    if box.x0 < 0 or box.y0 < 0 or box.x1 > width or box.y1 > height:
        raise PrismAudioError(f"{what} box {','.join(map(str, box.as_list()))} is outside the {width}x{height} frame")
    if box.width < MIN_BOX_PX or box.height < MIN_BOX_PX:
        raise PrismAudioError(f"{what} box {','.join(map(str, box.as_list()))} is degenerate "
                              f"({box.width}x{box.height} px; at least {MIN_BOX_PX}x{MIN_BOX_PX})")
    return box


def check_click(click: Click, width: int, height: int, what: str = "--object") -> Click:
    if not (0 <= click.x < width and 0 <= click.y < height):
        raise PrismAudioError(f"{what} click {click.x:g},{click.y:g} is outside the {width}x{height} frame")
    return click


def mask_box(mask: np.ndarray | Tensor, what: str = "the mask") -> Box:
    """The bounding box of a binary [H, W] mask; an empty mask selects nothing (one line)."""
    m = np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask).astype(bool)
    if m.ndim != 2:
        raise PrismAudioError(f"{what} must be [H, W], got shape {m.shape}")
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if not len(rows):
        raise PrismAudioError(f"{what} is empty: no object under the click")
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


# ------------------------------------------------------------------------------------ ROI frames
def crop_frames(frames: Tensor, box: Box, size: int) -> Tensor:
    """Frames [T, 3, H, W] (uint8 or float in [0, 1]) cropped to `box` and resized (bilinear,
    antialiased) to [T, 3, size, size] float32 in [0, 1]: the ROI as the video encoders see it."""
    x = frames[:, :, box.y0:box.y1, box.x0:box.x1]
    x = x.float() / 255.0 if not frames.is_floating_point() else x.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp_(0.0, 1.0)


def roi_size(pipe) -> int:
    """The largest square side the pipeline's encoders read (their own resize then only shrinks)."""
    sizes = []
    for enc in (pipe.video_encoder, pipe.sync_encoder):
        spec = enc.frame_spec() if hasattr(enc, "frame_spec") else None
        if spec is not None and spec.size is not None:
            sizes.append(int(spec.size))
    side = max(sizes) if sizes else DEFAULT_ROI_SIZE
    return side + side % 2  # even sides for any video codec


def write_roi_video(video: str | os.PathLike, box: Box, out: str | os.PathLike, size: int,
                    duration: float | None = None) -> Path:
    """The clip cropped to `box` and resized to size x size, at the source frame rate, losslessly
    (FFV1 in Matroska: the encoders see the crop's exact pixels). Why a file: the pipeline's
    frame sampling (rates, selection rule) then applies to the ROI exactly as to a whole video."""
    import av

    from ..io.video import probe_video, read_frames_multi

    info = probe_video(video)
    frames = read_frames_multi(video, [(info.fps, None)], duration=duration)[0]
    crop = crop_frames(frames, box, size)
    pixels = (crop * 255 + 0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    out = Path(out)
    with av.open(str(out), "w", format="matroska") as c:
        s = c.add_stream("ffv1", rate=Fraction(info.fps).limit_denominator(1001))
        s.width = s.height = size
        s.pix_fmt = "bgr0"
        for i, f in enumerate(pixels):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    return out
