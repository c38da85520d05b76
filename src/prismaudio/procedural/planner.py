"""Offline CoT planner: reads a silent video itself and writes the four-part chain-of-thought.

No language model and no network: classical image analysis finds and tracks the objects and their
visual events, a tiny CNN (`cot/visual_classifier.py`, the shipped `visual_classifier` asset) names
each object, and the corpus's own sentence generator (`synth/cot.py`) renders an *estimated scene
graph*, so the text has exactly the training distribution's style. It lives with the procedural
world because every step assumes that world (its room, floor line, sprites and vocabulary); the
core finds it as the planner named "offline" through `cot.planners`' table of built-in plugins.

Analysis, per clip (decoded at its native frame rate and size):
- background: per-row median colour over all columns and frames (the room is flat per row; objects
  cover a minority of any row), foreground = colour distance > `FG_THRESH` above the floor line,
  cleaned by a 3x3 opening (removes the 1-px rain/wind streaks) and split into connected components;
- tracking: components are linked frame to frame by position + colour (Hungarian assignment);
  objects never vanish once visible, so a track that is lost (occlusion) resumes when seen again;
- events: a track that first appears after frame 0 *starts* there; one that moves vertically and
  reaches the floor line has an *impact* at each frame its bottom row arrives on the floor from
  >= 3 px above; otherwise it is a struck object and each brightness jump is a *strike* (flash);
- spatial: bounding-box centre column -> x in [-1, 1] (same mapping as the renderer), side by
  `cot.side_of`; the sprite's radius (inverted from its extents with the renderer's own shape
  masks) -> distance, since the renderer scales sprites with distance;
- aesthetic: the corpus's clean-recording sentence: degradations are audio-only and the video cannot
  show them, so none is ever claimed.

It is built for corpus-style scenes (flat room, floor line at `scene.FLOOR`, one sprite per source).
Footage outside that world is recognised (`DomainReport`: no floor line, a room that is not flat,
too many objects, or a visual classifier that is unsure of what it sees) and gets a short neutral
plan (or the caption as its Semantic part) with one warning line, instead of corpus sentences about
imaginary sources. Every plan is bounded like the corpus's own: at most `MAX_SOURCES` sources,
`MAX_EVENTS_PER_SOURCE` events each and `MAX_EVENTS` in all (the corpus has <= 4, <= 3 and <= 10),
and `MAX_WORDS` words (the corpus's longest CoTs have ~240).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from ..cot.core import CoT, split_sentences
from ..cot.planners import Planner, register_planner
from ..cot.visual_classifier import VisualClassifier, make_crop
from ..errors import PrismAudioError
from ..io.files import check_input_file
from ..io.video import probe_video, read_frames
from ..resources import asset_path
from .synth import cot as corpus_cot
from .synth.render import shape_mask
from .synth.scene import FLOOR
from .synth.vocab import BY_NAME, CLASS_NAMES, CLASSES

CLASSIFIER_ASSET = "visual_classifier"
PARTS = ("semantic", "temporal", "aesthetic", "spatial")

MAX_SIZE = 192  # px analysed at most (the corpus is 96 px; keeps memory bounded on large videos)
FG_THRESH = 0.1  # max-channel colour distance from the row background (room colours differ by >= 0.18)
MIN_AREA = 9  # px; the smallest sprite (radius 3) covers >= 25
LINK_DIST = 20.0  # px per frame; the fastest motion (falls, whooshes) is ~12 px/frame
COLOUR_MATCH = 0.08  # a component this close in colour re-joins a lost track wherever it is
MIN_TRACK_FRAMES = 3  # shorter tracks are segmentation debris
CONTACT_TOL = 2  # px: bottom row within this of the floor line counts as touching it
DROP_MIN = 3  # px: an impact needs the object this far higher one frame earlier
FALL_MIN = 8  # px of vertical travel that makes an object a falling one (drops are >= 0.36 H)
FLASH_JUMP = 0.12  # mean-brightness rise of a strike frame (the renderer whitens by 85 %)
FAMILY_PRIOR = 0.05  # weight of classes whose family contradicts the observed behaviour
# bounds on a plan (why: a plan describes the corpus's scenes, never an open-ended list)
MAX_SOURCES = 4  # the corpus has at most 4 sources per clip
MAX_EVENTS_PER_SOURCE = 4  # ... at most 3 impacts / strikes per source
MAX_EVENTS = 12  # ... at most 10 events per clip
MAX_WORDS = 300  # ... and CoTs of at most ~240 words
# the domain check: what makes footage look like the procedural world (calibrated on the corpus,
# whose clips all pass, and on 1280x720 natural-texture clips, which all fail)
FLOOR_SEARCH = (0.7, 0.95)  # the floor line is searched in this band of the frame height (corpus: 0.82)
MIN_FLOOR_STEP = 0.05  # max-channel colour step between the room and the floor (corpus: >= 0.12)
MAX_OFF_ROWS = 0.2  # fraction of room / floor rows whose colour differs from the room's (flat: ~0)
MAX_FOREGROUND = 0.3  # fraction of the room covered by objects (corpus: <= 0.17)
MAX_GROUND = 0.05  # fraction of the floor off its row colour (corpus: objects stay above it: ~0)
MAX_TRACKS = 2 * MAX_SOURCES  # more tracked objects than this is texture, not sprites
MIN_CONFIDENCE = 0.55  # median classifier max-posterior over objects (corpus: >= 0.64)
_KIND = {"impact": "impact", "tonal": "strike", "continuous": "start", "texture": "start"}
_BEHAVIOUR_FAMILIES = {"impact": ("impact",), "tonal": ("tonal",), "start": ("continuous", "texture")}


@dataclass(eq=False)  # identity: tracks are compared and removed from lists by who they are
class Track:
    """One object over time; arrays are [T] with NaN where the object was not seen."""

    first: int
    col: np.ndarray
    bottom: np.ndarray
    top: np.ndarray
    width: np.ndarray
    height: np.ndarray
    lum: np.ndarray
    area: np.ndarray
    edge: np.ndarray  # bool: the box touches the left/right frame border (width is clipped)
    comp: dict[int, int] = field(default_factory=dict)  # frame -> component label
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> own pixels, where merged
    boxes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)  # frame -> (r0, r1, c0, c1)
    colour: np.ndarray | None = None
    _colours: list[np.ndarray] = field(default_factory=list)
    last: tuple[int, float, float] = (0, 0.0, 0.0)  # (frame, centroid row, centroid col)
    last_area: float = 0.0  # component area at `last` (clean or merged)
    ref_area: float | None = None  # area at the last clean (unmerged) observation
    merged: set[int] = field(default_factory=set)  # frames where it was part of a bigger component

    @property
    def seen(self) -> np.ndarray:
        return ~np.isnan(self.col)


@dataclass
class Analysis:
    """What the video shows: tracks, their behaviour and events, and the frames they came from."""

    frames: np.ndarray  # [T, H, W, 3] float32
    labels: np.ndarray  # [T, H, W] int32 component labels
    fps: float
    floor_row: int
    tracks: list[Track]
    behaviour: list[str]  # per track: impact | tonal | start
    events: list[list[int]]  # per track: event frames for its behaviour


# ---------------------------------------------------------------------------------------------
# decoding and segmentation


def load_frames(path: str | Path) -> tuple[np.ndarray, float]:
    """([T, S, S, 3] float32 frames at the native rate, S = native size capped at MAX_SIZE, fps);
    one-line errors on bad input. Geometry is relative to the frame, so downscaling keeps it."""
    p = check_input_file(path, "video")
    info = probe_video(p)
    size = int(min(max(info.width, info.height), MAX_SIZE))
    frames = read_frames(p, info.fps, size, duration=info.duration)
    return frames.permute(0, 2, 3, 1).numpy(), float(info.fps)


def row_background(frames: np.ndarray) -> np.ndarray:
    """[H, 3] per-row median colour over all columns and frames: the room, where it is flat per row."""
    T, H, W, _ = frames.shape
    return np.median(frames.transpose(1, 0, 2, 3).reshape(H, T * W, 3), axis=1)


def segment(frames: np.ndarray, bg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels [T, H, W], number of components per frame, floor row) of the foreground above the floor."""
    T, H, W, _ = frames.shape
    floor_row = round(FLOOR * H)
    bg = row_background(frames) if bg is None else bg
    fg = np.abs(frames - bg[None, :, None]).max(-1) > FG_THRESH
    fg[:, floor_row:] = False
    fg = ndimage.binary_opening(fg, structure=np.ones((1, 3, 3), bool))
    labels = np.zeros(fg.shape, np.int32)
    counts = np.zeros(T, np.int64)
    for f in range(T):
        labels[f], counts[f] = ndimage.label(fg[f], structure=np.ones((3, 3), bool))
    return labels, counts, floor_row


def _components(frame: np.ndarray, lab: np.ndarray, n: int) -> list[dict[str, Any]]:
    out = []
    if n == 0:
        return out
    idx = np.arange(1, n + 1)
    area = ndimage.sum_labels(np.ones_like(lab), lab, idx)
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None or area[k - 1] < MIN_AREA:
            continue
        m = lab[sl] == k
        pix = frame[sl][m]
        rr, cc = np.nonzero(m)
        out.append({"label": k, "area": float(area[k - 1]), "r": float(rr.mean() + sl[0].start),
                    "c": float(cc.mean() + sl[1].start), "colour": pix.mean(0), "lum": float(pix.mean()),
                    "box": (sl[0].start, sl[0].stop, sl[1].start, sl[1].stop)})
    return out


def _new_track(T: int, f: int) -> Track:
    nan = lambda: np.full(T, np.nan)
    return Track(first=f, col=nan(), bottom=nan(), top=nan(), width=nan(), height=nan(), lum=nan(), area=nan(),
                 edge=np.zeros(T, bool))


def _observe(tr: Track, f: int, c: dict[str, Any], W: int) -> None:
    """Record a matched component; if it is much bigger than the object was, the object is merged with
    another one there: keep it visible but leave its geometry and brightness unmeasured."""
    r0, r1, c0, c1 = c["box"]
    tr.comp[f] = c["label"]
    tr.boxes[f] = (r0, r1, c0, c1)
    tr.last, tr.last_area = (f, c["r"], c["c"]), c["area"]
    sliding = c0 == 0 or c1 == W or bool(tr.edge[~np.isnan(tr.col)][-1:].any())
    if tr.ref_area is not None and c["area"] >= 1.3 * tr.ref_area + 2 * MIN_AREA and not sliding:
        tr.merged.add(f)
        return
    tr.ref_area = c["area"]
    tr.col[f], tr.bottom[f], tr.top[f] = (c0 + c1 - 1) / 2, r1 - 1, r0
    tr.width[f], tr.height[f], tr.lum[f], tr.area[f] = c1 - c0, r1 - r0, c["lum"], c["area"]
    tr.edge[f] = c0 == 0 or c1 == W
    if len(tr._colours) < 3:
        tr._colours.append(c["colour"])
        tr.colour = np.mean(tr._colours, 0)


def _pseudo_component(frame: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    rr, cc = np.nonzero(mask)
    pix = frame[mask]
    return {"label": -1, "area": float(mask.sum()), "r": float(rr.mean()), "c": float(cc.mean()),
            "colour": pix.mean(0), "lum": float(pix.mean()),
            "box": (int(rr.min()), int(rr.max()) + 1, int(cc.min()), int(cc.max()) + 1)}


def _merged_birth(tr: Track, c: dict[str, Any], labels: np.ndarray, f: int, lost: list[Track]) -> np.ndarray | None:
    """Pixels of an object that appeared *touching* `tr` at frame f (its component suddenly grew and
    no other track was lost into it), else None. Without this an object born against another one
    would only be found when they separate, with a wrong start time."""
    lf = tr.last[0]
    if lf != f - 1 or c["area"] < 1.3 * tr.last_area + 2 * MIN_AREA or tr.edge[lf] or lf not in tr.comp:
        return None
    r0, r1, c0, c1 = c["box"]
    if any(r0 <= o.last[1] < r1 and c0 <= o.last[2] < c1 for o in lost):
        return None
    now = labels[f] == c["label"]
    before = ndimage.binary_dilation(labels[lf] == tr.comp[lf], iterations=2)
    new = ndimage.binary_opening(now & ~before, structure=np.ones((3, 3), bool))
    return new if new.sum() >= 2 * MIN_AREA else None


def _observe_mask(tr: Track, f: int, frame: np.ndarray, mask: np.ndarray, W: int) -> None:
    _observe(tr, f, _pseudo_component(frame, mask), W)
    tr.masks[f] = mask


def _chroma(c: np.ndarray) -> np.ndarray:
    """Colour / its sum: the sprite textures only scale a class's colour, so this is one value per object."""
    return c / (c.sum(-1, keepdims=True) + 1e-6)


def _split_observe(frame: np.ndarray, comp: np.ndarray, involved: list[Track], f: int, W: int,
                   skip_new: bool = False) -> bool:
    """Split a component that holds several touching objects by nearest chromaticity to each track's
    colour and observe each part; False (nothing observed) when their colours are too alike to split."""
    refs = np.stack([_chroma(t.colour) for t in involved])
    if len(refs) > 1 and min(np.abs(a - b).max() for k, a in enumerate(refs) for b in refs[k + 1:]) < 0.04:
        return False
    rr, cc = np.nonzero(comp)
    owner = np.abs(_chroma(frame[rr, cc])[:, None] - refs[None]).sum(-1).argmin(1)
    parts = []
    for k in range(len(involved)):
        m = np.zeros_like(comp)
        m[rr[owner == k], cc[owner == k]] = True
        parts.append(ndimage.binary_opening(m, structure=np.ones((2, 2), bool)) if m.sum() > 4 * MIN_AREA else m)
    if any(p.sum() < MIN_AREA for p in parts):
        return False
    for k, (t, m) in enumerate(zip(involved, parts)):
        if skip_new and k == len(involved) - 1:
            t.masks[f] = m  # the newborn was already observed from its new pixels; keep the cleaner mask
            continue
        _observe_mask(t, f, frame, m, W)
    return True


def _split_parent(tracks: list[Track], c: dict[str, Any], f: int) -> Track | None:
    """The track whose previous-frame box held this new component's centre: a merged pair came apart
    (an object that merely appears *next to* another one is outside that box)."""
    for tr in tracks:
        b = tr.boxes.get(f - 1)
        if b is not None and b[0] - 2 <= c["r"] < b[1] + 2 and b[2] - 2 <= c["c"] < b[3] + 2:
            return tr
    return None


def track(frames: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> list[Track]:
    """Link each frame's components to the running tracks (Hungarian on position + colour cost)."""
    T, _, W, _ = frames.shape
    tracks: list[Track] = []
    for f in range(T):
        comps = _components(frames[f], labels[f], int(counts[f]))
        if not comps:
            continue
        cost = np.full((len(tracks), len(comps)), 1e6)
        for i, tr in enumerate(tracks):
            lf, lr, lc = tr.last
            for j, c in enumerate(comps):
                dpos = float(np.hypot(c["r"] - lr, c["c"] - lc))
                dcol = float(np.abs(c["colour"] - tr.colour).max())
                if dpos < LINK_DIST * min(f - lf, 3) or dcol < COLOUR_MATCH:
                    cost[i, j] = dpos / LINK_DIST + dcol / 0.2
        matched: dict[int, int] = {}
        if tracks:
            for i, j in zip(*linear_sum_assignment(cost)):
                if cost[i, j] < 1e6:
                    matched[int(j)] = int(i)
        unmatched = [tr for i, tr in enumerate(tracks) if i not in matched.values()]
        lost = [tr for tr in unmatched if tr.last[0] == f - 1]
        for j, i in matched.items():
            tr, c = tracks[i], comps[j]
            r0, r1, c0, c1 = c["box"]
            inside = [o for o in unmatched if o.last[0] >= f - 3 and r0 - 4 <= o.last[1] < r1 + 4
                      and c0 - 4 <= o.last[2] < c1 + 4]
            comp_mask = labels[f] == c["label"]
            if inside and _split_observe(frames[f], comp_mask, [tr, *inside], f, W):
                for o in inside:
                    unmatched.remove(o)
                continue
            born = _merged_birth(tr, c, labels, f, lost)
            if born is None:
                _observe(tr, f, c, W)
                continue
            nt = _new_track(T, f)
            _observe_mask(nt, f, frames[f], born, W)
            tracks.append(nt)
            if not _split_observe(frames[f], comp_mask, [tr, nt], f, W, skip_new=True):
                _observe(tr, f, c, W)
        for j, c in enumerate(comps):
            if j not in matched:
                tr = _new_track(T, f)
                parent = _split_parent(tracks, c, f)
                if parent is not None:  # it was there all along, merged with `parent`
                    tr.first = parent.first
                _observe(tr, f, c, W)
                tracks.append(tr)
    return [tr for tr in tracks if tr.seen.sum() >= MIN_TRACK_FRAMES or tr.masks]


# ---------------------------------------------------------------------------------------------
# behaviour and events


def _prev_seen(tr: Track, f: int, max_gap: int = 2) -> int | None:
    for g in range(f - 1, max(-1, f - 1 - max_gap), -1):
        if tr.seen[g]:
            return g
    return None


def impact_frames(tr: Track, floor_row: int) -> list[int]:
    """Frames where the object's bottom arrives on the floor line from >= DROP_MIN px above."""
    out = []
    for f in np.flatnonzero(tr.seen):
        if tr.bottom[f] < floor_row - 1 - CONTACT_TOL:
            continue
        g = _prev_seen(tr, int(f), max_gap=8)  # it may have been hidden in a merge on the way down
        if g is not None and tr.bottom[g] <= tr.bottom[f] - DROP_MIN:
            out.append(int(f))
    return out


def flash_frames(tr: Track) -> list[int]:
    """Onsets of brightness jumps (the strike flash decays within ~5 frames; strikes are >= 10 apart)."""
    lum = tr.lum
    out: list[int] = []
    for f in np.flatnonzero(tr.seen):
        g = _prev_seen(tr, int(f))
        if g is None or lum[f] - lum[g] < FLASH_JUMP:
            continue
        if out and f - out[-1] < 5:
            continue
        out.append(int(f))
    if not out and tr.seen.sum() > 1:  # every struck object in the corpus is struck at least once
        d = np.diff(np.where(tr.seen, lum, np.nan))
        if np.isfinite(d).any():
            out.append(int(np.nanargmax(d)) + 1)
    return out


def behaviour_of(tr: Track, floor_row: int) -> str:
    """impact | tonal | start, from how the object behaves (not from how it looks)."""
    if tr.first > 0:
        return "start"
    clean = tr.seen.copy()
    clean[list(tr.masks)] = False  # parts of split merges can have ragged outlines
    b = tr.bottom[clean if clean.any() else tr.seen]
    if np.ptp(b) >= FALL_MIN and b.max() >= floor_row - 1 - CONTACT_TOL:
        return "impact"
    return "tonal"


def events_for(tr: Track, family: str, floor_row: int) -> list[int]:
    if family == "impact":
        return impact_frames(tr, floor_row)
    if family == "tonal":
        return flash_frames(tr)
    return [tr.first]


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        raise PrismAudioError(f"frames must be [T, H, W, 3], got {tuple(frames.shape)}")
    return np.ascontiguousarray(frames, dtype=np.float32)


def analyse_frames(frames: np.ndarray, fps: float, bg: np.ndarray | None = None) -> Analysis:
    """Segment, track and find events in [T, H, W, 3] float frames in [0, 1]."""
    frames = _check_frames(frames)
    labels, counts, floor_row = segment(frames, bg)
    tracks = track(frames, labels, counts)
    beh = [behaviour_of(tr, floor_row) for tr in tracks]
    ev = [events_for(tr, {"start": "continuous"}.get(b, b), floor_row) for tr, b in zip(tracks, beh)]
    return Analysis(frames, labels, float(fps), floor_row, tracks, beh, ev)


# ---------------------------------------------------------------------------------------------
# is this the procedural world?


@dataclass
class DomainReport:
    """How much a video looks like the procedural world (each measure against its bound above)."""

    floor_step: float  # colour step at the strongest horizontal edge of the floor band
    off_rows: float  # fraction of room / floor rows far from their flat colour
    foreground: float  # fraction of the room (above the floor) covered by objects
    ground: float = 0.0  # fraction of the floor (below the line) off its row colour: texture
    n_tracks: int | None = None  # tracked objects (None: not tracked, the room already failed)
    confidence: float | None = None  # median classifier max-posterior over the tracked objects

    @property
    def reasons(self) -> list[str]:
        """What is wrong, in words (empty: in domain)."""
        out = []
        if self.floor_step < MIN_FLOOR_STEP:
            out.append("no floor line")
        if self.off_rows > MAX_OFF_ROWS or self.foreground > MAX_FOREGROUND or self.ground > MAX_GROUND:
            out.append("not a flat room")
        if self.n_tracks is not None and self.n_tracks > MAX_TRACKS:
            out.append(f"{self.n_tracks} moving regions")
        if self.confidence is not None and self.confidence < MIN_CONFIDENCE:
            out.append(f"visual classifier confidence {self.confidence:.2f} < {MIN_CONFIDENCE}")
        return out

    @property
    def in_domain(self) -> bool:
        return not self.reasons


def room_report(frames: np.ndarray, bg: np.ndarray) -> DomainReport:
    """The room measures of a `DomainReport`: a floor line (the strongest step between row colours
    in `FLOOR_SEARCH`, wherever it is: footage need not put it at `FLOOR`), rows of one flat colour
    above and below it, and objects that cover a minority of the room."""
    T, H, W, _ = frames.shape
    k = max(2, H // 32)
    lo, hi = max(k, int(FLOOR_SEARCH[0] * H)), min(H - k, int(FLOOR_SEARCH[1] * H))
    steps = [float(np.abs(np.median(bg[r:r + k], 0) - np.median(bg[r - k:r], 0)).max()) for r in range(lo, hi + 1)]
    if not steps:  # a frame a few rows high
        return DomainReport(0.0, 1.0, 1.0)
    floor = lo + int(np.argmax(steps))
    room, ground = bg[: floor - 1], bg[floor + 1:]
    off = sum(int((np.abs(part - np.median(part, 0)).max(-1) > FG_THRESH).sum()) for part in (room, ground))
    fg = np.abs(frames[:, : floor - 1] - room[None, :, None]).max(-1) > FG_THRESH
    tex = np.abs(frames[:, floor + 1:] - ground[None, :, None]).max(-1) > FG_THRESH
    return DomainReport(floor_step=max(steps), off_rows=off / max(1, len(room) + len(ground)),
                        foreground=float(fg.mean()) if fg.size else 1.0, ground=float(tex.mean()) if tex.size else 0.0)


# ---------------------------------------------------------------------------------------------
# classification, distance, scene graph


def track_crops(an: Analysis, tr: Track, n: int = 4, size: int = 32) -> torch.Tensor:
    """[k, 4, size, size] crops of `tr` at up to `n` clean frames (typical area, not flashing, not at
    the frame edge), spread over its life."""
    seen = np.flatnonzero(tr.seen)
    area, lum = tr.area[seen], tr.lum[seen]
    ok = (np.abs(area - np.median(area)) <= 0.25 * np.median(area)) & (lum <= np.median(lum) + FLASH_JUMP / 2)
    ok &= ~tr.edge[seen]
    pick = seen[ok] if ok.any() else seen
    pick = pick[np.linspace(0, len(pick) - 1, min(n, len(pick))).round().astype(int)]
    return torch.stack([make_crop(an.frames[f], _own_mask(an, tr, int(f)), size) for f in pick])


def _own_mask(an: Analysis, tr: Track, f: int) -> np.ndarray:
    return tr.masks[f] if f in tr.masks else an.labels[f] == tr.comp[f]


@functools.cache
def _extents(shape: str, r: int) -> tuple[int, int]:
    """(width, height) in px of the renderer's `shape` at radius r."""
    w = 2 * r + 1 if shape not in ("rect", "ellipse", "cloud", "leaf") else 2 * r + 2
    m = shape_mask(shape, np.arange(-w, w + 1)[None], np.arange(-r, r + 1)[:, None], r)
    rows, cols = np.nonzero(m)
    return int(np.ptp(cols) + 1), int(np.ptp(rows) + 1)


def estimate_distance(tr: Track, cls: str, size: int) -> float:
    """Invert the renderer's radius(distance) law from the object's median extents."""
    spec = BY_NAME[cls]
    seen = tr.seen
    w = np.nanmedian(tr.width[seen & ~tr.edge]) if (seen & ~tr.edge).any() else np.nan
    h = np.nanmedian(tr.height[seen])
    errs = []
    for r in range(3, max(4, size // 2)):
        ew, eh = _extents(spec.shape, r)
        errs.append((abs(ew - w) if np.isfinite(w) else 0.0) + abs(eh - h))
    r = 3 + int(np.argmin(errs))
    k, p = (0.13, 0.5) if spec.family == "texture" else (0.14, 0.7)
    # geometric centre of the distance interval that rounds to this radius
    d_near = (k * size / (r + 0.5)) ** (1 / p)
    d_far = (k * size / max(r - 0.5, 0.5)) ** (1 / p)
    return float(np.clip(np.sqrt(d_near * d_far), 1.0, 3.5))


_TERMS = sorted(((t.lower(), c.name) for c in CLASSES for t in (*c.nouns, c.label, c.name)),
                key=lambda t: -len(t[0]))


def caption_classes(caption: str) -> list[str]:
    """Corpus classes a caption names, in order of mention (longest synonym wins: 'metal ball')."""
    text, found = caption.lower(), []
    for term, name in _TERMS:
        for m in re.finditer(rf"\b{re.escape(term)}s?\b", text):
            found.append((m.start(), name))
            text = text[:m.start()] + " " * (m.end() - m.start()) + text[m.end():]
    out: list[str] = []
    for _, name in sorted(found):
        if name not in out:
            out.append(name)
    return out


def assign_classes(probs: np.ndarray, behaviour: list[str], allowed: list[str] | None = None) -> list[str]:
    """Class per track: classifier posteriors x behaviour prior (a falling object is an impact class...);
    with `allowed` (a caption's classes) tracks take those classes, one each, by the same score."""
    prior = np.array([[1.0 if c.family in _BEHAVIOUR_FAMILIES[b] else FAMILY_PRIOR for c in CLASSES]
                      for b in behaviour]).reshape(len(behaviour), len(CLASSES))
    score = np.log(np.clip(probs * prior, 1e-12, None))
    names = [CLASS_NAMES[int(i)] for i in score.argmax(1)] if len(behaviour) else []
    if allowed:
        cols = [CLASS_NAMES.index(a) for a in allowed]
        rows, picks = linear_sum_assignment(-score[:, cols])
        for i, j in zip(rows, picks):
            names[i] = allowed[j]
    return names


def scene_graph(an: Analysis, classes: list[str]) -> dict[str, Any]:
    """An estimated scene graph with the fields `synth/cot.py` reads."""
    T, H, _, _ = an.frames.shape
    sources = []
    for tr, cls in sorted(zip(an.tracks, classes), key=lambda t: (t[0].first, np.nanmean(t[0].col))):
        fam = BY_NAME[cls].family
        frames = events_for(tr, fam, an.floor_row) if fam in ("impact", "tonal") else [tr.first]
        frames = frames[:MAX_EVENTS_PER_SOURCE]
        idx = np.arange(T)
        seen = tr.seen
        col = np.interp(idx, idx[seen], tr.col[seen])
        x = np.round(col / (H - 1) * 2 - 1, 4)
        visible = idx >= tr.first
        vis_x = x[visible & seen]
        sources.append({
            "class": cls, "label": BY_NAME[cls].label, "family": fam,
            "events": [{"time": round(k / an.fps, 6), "frame": int(k), "kind": _KIND[fam]} for k in frames],
            "positions": {"x": x.tolist(), "y": [0.0] * T, "visible": visible.astype(int).tolist()},
            "moving": bool(np.ptp(vis_x) > 3.0 / (H - 1)),  # > 1.5 px of travel
            "distance": round(estimate_distance(tr, cls, H), 3),
        })
    _bound_events(sources)
    return {"duration": T / an.fps, "fps": an.fps, "num_frames": T, "size": H, "floor": FLOOR,
            "sources": sources, "degradation": None}


def _bound_events(sources: list[dict[str, Any]], limit: int = MAX_EVENTS) -> None:
    """Drop the latest event of the source with the most events until the clip has <= `limit`."""
    while sum(len(s["events"]) for s in sources) > limit:
        max(sources, key=lambda s: len(s["events"]))["events"].pop()


def bound_tracks(an: Analysis, probs: np.ndarray, limit: int = MAX_SOURCES) -> tuple[Analysis, np.ndarray]:
    """The `limit` objects seen longest (then: most confidently classified), in their original order."""
    if len(an.tracks) <= limit:
        return an, probs
    order = sorted(range(len(an.tracks)), key=lambda i: (-int(an.tracks[i].seen.sum()), -float(probs[i].max())))
    keep = sorted(order[:limit])
    pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
    return dataclasses.replace(an, tracks=pick(an.tracks), behaviour=pick(an.behaviour), events=pick(an.events)), probs[keep]


def bound_words(parts: dict[str, str], limit: int = MAX_WORDS) -> dict[str, str]:
    """`parts` with the last sentence of the longest part dropped until they hold <= `limit` words
    (a part keeps at least its first sentence, cut to whole words if that alone is too long)."""
    words = lambda t: len(t.split())  # noqa: E731
    out = dict(parts)
    while (total := sum(words(t) for t in out.values())) > limit:
        key = max(out, key=lambda k: words(out[k]))
        sentences = split_sentences(out[key])
        if len(sentences) > 1:
            out[key] = " ".join(sentences[:-1])
        elif (n := words(out[key])) > 1:  # every word count falls, so this ends
            out[key] = " ".join(out[key].split()[: max(1, n - (total - limit))])
        else:  # one word per part is the floor
            break
    return out


_EMPTY = {"semantic": "No sound source can be seen in the video.",
          "temporal": "No visible event marks a sound onset.",
          "spatial": "No source position can be seen."}


def render_parts(scene: dict[str, Any], seed: int = 0, caption: str | None = None) -> dict[str, str]:
    """The four CoT parts from `scene` with the corpus generator; a caption naming no corpus class
    becomes the Semantic part itself."""
    rng = np.random.Generator(np.random.PCG64(seed))
    aesthetic = corpus_cot.aesthetic(scene, rng)
    if scene["sources"]:
        parts = {"semantic": corpus_cot.semantic(scene, rng), "temporal": corpus_cot.temporal(scene, rng),
                 "aesthetic": aesthetic, "spatial": corpus_cot.spatial(scene, rng)}
    else:
        parts = {**_EMPTY, "aesthetic": aesthetic}
    if caption is not None and caption.strip() and not caption_classes(caption):
        parts["semantic"] = _sentence(caption)
    return bound_words({k: parts[k] for k in PARTS})


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


NEUTRAL = {"semantic": "The ambient sound of the scene shown in the video.",
           "temporal": "No visible event marks a sound onset; the sound continues through the clip.",
           "spatial": "The sound is centred and diffuse."}


def neutral_parts(caption: str | None = None, seed: int = 0) -> dict[str, str]:
    """The short plan for footage outside the procedural world: nothing it cannot see is claimed;
    a caption, when given, is the Semantic part."""
    rng = np.random.Generator(np.random.PCG64(seed))
    parts = {**NEUTRAL, "aesthetic": corpus_cot.aesthetic({"degradation": None}, rng)}
    if caption is not None and caption.strip():
        parts["semantic"] = bound_words({"s": _sentence(caption)}, MAX_WORDS // 2)["s"]
    return {k: parts[k] for k in PARTS}


def default_classifier() -> Path:
    """The shipped visual classifier (`resources.asset_path`, so `$PRISMAUDIO_ASSETS` applies)."""
    return asset_path(CLASSIFIER_ASSET)


def check_classifier(model: VisualClassifier, where: str | Path = "given") -> VisualClassifier:
    """`model`, if its classes are this world's vocabulary in order (the behaviour prior and the
    sentences map posteriors to vocabulary classes by index); else one clear error."""
    if model.classes != CLASS_NAMES:
        raise PrismAudioError(f"visual classifier {where} was trained on other classes: {list(model.classes)}")
    return model


def load_classifier(path: str | Path) -> VisualClassifier:
    """Load a visual classifier checkpoint and check it names this world's classes."""
    return check_classifier(VisualClassifier.load(path), path)


@functools.lru_cache(maxsize=4)
def _load_classifier(path: str) -> VisualClassifier:
    return load_classifier(path)


def estimate_scene(video: str | Path, classifier: VisualClassifier | str | Path | None = None,
                   caption: str | None = None) -> dict[str, Any]:
    """Analyse a video file and return its estimated scene graph."""
    frames, fps = load_frames(video)
    return scene_from_frames(frames, fps, classifier, caption)


def _classifier(classifier: VisualClassifier | str | Path | None) -> VisualClassifier:
    if isinstance(classifier, VisualClassifier):
        return check_classifier(classifier)
    return _load_classifier(str(classifier if classifier is not None else default_classifier()))


def _estimate(frames: np.ndarray, fps: float, model: VisualClassifier, caption: str | None,
              report: DomainReport | None = None, bg: np.ndarray | None = None) -> dict[str, Any] | None:
    """The bounded scene graph; with `report`, its object measures are filled in and None is
    returned when they put the footage outside the procedural world."""
    an = analyse_frames(frames, fps, bg)
    if an.tracks:
        probs = np.stack([model.probs(track_crops(an, tr, size=model.crop)).mean(0).numpy() for tr in an.tracks])
    else:
        probs = np.zeros((0, len(CLASSES)))
    if report is not None:
        report.n_tracks = len(an.tracks)
        report.confidence = float(np.median(probs.max(1))) if len(probs) else None
        if report.reasons:
            return None
    an, probs = bound_tracks(an, probs)
    allowed = caption_classes(caption) if caption else None
    return scene_graph(an, assign_classes(probs, an.behaviour, allowed))


def scene_from_frames(frames: np.ndarray, fps: float, classifier: VisualClassifier | str | Path | None = None,
                      caption: str | None = None) -> dict[str, Any]:
    """Estimated scene graph of [T, H, W, 3] frames in [0, 1] (see `estimate_scene`); no domain check."""
    scene = _estimate(_check_frames(frames), fps, _classifier(classifier), caption)
    assert scene is not None
    return scene


def plan_frames(frames: np.ndarray, fps: float, classifier: VisualClassifier | str | Path | None = None,
                caption: str | None = None, seed: int = 0) -> tuple[dict[str, str], DomainReport]:
    """(the four CoT parts, the domain report) of [T, H, W, 3] frames: corpus sentences for footage
    of the procedural world, else `neutral_parts` (the room is checked before any tracking)."""
    frames = _check_frames(frames)
    model = _classifier(classifier)
    bg = row_background(frames)
    report = room_report(frames, bg)
    scene = None if report.reasons else _estimate(frames, fps, model, caption, report, bg)
    if scene is None:
        return neutral_parts(caption, seed), report
    return render_parts(scene, seed, caption), report


def analyse_video(video: str | Path, caption: str | None = None,
                  classifier: VisualClassifier | str | Path | None = None, seed: int = 0) -> dict[str, str]:
    """{semantic, temporal, aesthetic, spatial} for a video file; a caption overrides Semantic."""
    return render_parts(estimate_scene(video, classifier, caption), seed, caption)


def out_of_domain_message(video: str | os.PathLike, report: DomainReport, caption: str | None) -> str:
    """The one warning line for footage outside the procedural world."""
    fallback = "the caption as its Semantic part" if caption and caption.strip() else "a short neutral plan"
    return (f"offline planner: {Path(video).name} does not look like the procedural world it was built for "
            f"({', '.join(report.reasons)}); planned {fallback} instead (give --caption, or use "
            "--planner openai / local for real footage)")


# ---------------------------------------------------------------------------------------------
# planner registration


@register_planner("offline")
class OfflinePlanner(Planner):
    """Planner "offline": the four CoT parts from the video alone (no LLM, no network)."""

    def __init__(self, classifier_path: str | Path | None = None, seed: int = 0):
        self.classifier_path = Path(classifier_path) if classifier_path is not None else default_classifier()
        self.seed = int(seed)
        self.classifier = load_classifier(self.classifier_path)
        self.last_report: DomainReport | None = None  # of the latest `plan`

    # seconds per decoded frame on 2 CPU cores (measured: a 4 s 128 px clip plans in ~1.2 s, a 2 s
    # 1280x720 one in ~4.3 s): a fixed analysis cost plus decoding and downscaling each pixel
    SECONDS_PER_FRAME, SECONDS_PER_PIXEL = 0.012, 6e-8

    def estimate_seconds(self, video_path: str | os.PathLike) -> float | None:
        """A rough planning time for `video_path` (callers show it for long clips), None if unreadable."""
        try:
            info = probe_video(video_path)
        except PrismAudioError:
            return None
        frames = info.duration * info.fps
        return float(frames * (self.SECONDS_PER_FRAME + info.width * info.height * self.SECONDS_PER_PIXEL))

    def plan_frames(self, frames: np.ndarray, fps: float, caption: str | None = None) -> CoT:
        """The plan of already decoded [T, H, W, 3] frames (a window of a long video: no second decode);
        `last_report` says whether they looked like the procedural world."""
        parts, self.last_report = plan_frames(frames, fps, self.classifier, caption, self.seed)
        return CoT(**parts)

    def out_of_domain_message(self, video: str | os.PathLike, caption: str | None = None) -> str:
        """The warning line for the latest plan's footage outside the procedural world."""
        assert self.last_report is not None
        return out_of_domain_message(video, self.last_report, caption)

    def plan(self, video_path: str | os.PathLike, caption: str | None = None) -> CoT:
        """The four CoT parts of the video; a caption naming corpus classes fixes the object classes.
        Footage outside the procedural world gets `neutral_parts` and one warning (`last_report` says why)."""
        frames, fps = load_frames(video_path)
        parts, self.last_report = plan_frames(frames, fps, self.classifier, caption, self.seed)
        if not self.last_report.in_domain:
            warnings.warn(out_of_domain_message(video_path, self.last_report, caption), stacklevel=2)
        return CoT(**parts)
