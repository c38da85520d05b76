"""Video frames of a scene graph: flat room + floor, one textured shape per source.

Impact objects touch the floor exactly at their event frames (bottom row on the floor line) and are
at least ~4 px above it one frame earlier; tonal objects flash (near white) at their strike frames;
continuous objects and texture emitters become visible at their start frame. `cause_patch` says
where in the frame each event's visual cause can be checked.
"""

from __future__ import annotations

import numpy as np

from .vocab import BY_NAME


def radius(src: dict, size: int) -> int:
    if src["family"] == "texture":
        return max(3, round(size * 0.13 / src["distance"] ** 0.5))
    return max(3, round(size * 0.14 / src["distance"] ** 0.7))


def geometry(scene: dict, src: dict, frame: int) -> tuple[int, int, int]:
    """(centre column, bottom row, radius) of a source's shape in `frame`."""
    size = scene["size"]
    floor_row = round(scene["floor"] * size)
    r = radius(src, size)
    x = src["positions"]["x"][frame]
    cx = round((x + 1) / 2 * (size - 1))
    bottom = floor_row - 1 - round(src["positions"]["y"][frame] * size)
    return cx, bottom, r


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: int) -> np.ndarray:
    """Pixels of a class `shape` of radius r at offsets (dx, dy) from its centre (dy down positive;
    shapes span rows [-r, r]). Public because the offline planner inverts sprite size -> distance
    with the very masks the renderer draws."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r + r
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2 + 0.5)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "rect":
        return (np.abs(dx) <= 1.6 * r) & (dy >= r // 3 - r) & (dy <= r)
    if shape == "ellipse":
        return (dx / (1.8 * r)) ** 2 + (dy / (0.6 * r)) ** 2 <= 1
    if shape == "cloud":
        return ((dx / (1.7 * r)) ** 2 + (dy / (0.8 * r)) ** 2 <= 1) | ((dx + 0.6 * r) ** 2 + (dy + 0.4 * r) ** 2 <= (0.7 * r) ** 2)
    # leaf
    return ((dx / (1.5 * r)) ** 2 + (dy / (0.7 * r)) ** 2 <= 1) & (dy >= -r)


def _texture(kind: str, dx: np.ndarray, dy: np.ndarray, frame: int) -> np.ndarray:
    if kind == "stripes":
        return np.where(((dx + dy) // 3) % 2 == 0, 1.0, 0.65)
    if kind == "checker":
        return np.where(((dx // 3) + (dy // 3)) % 2 == 0, 1.0, 0.6)
    if kind == "dots":
        return np.where((dx % 4 == 0) & (dy % 4 == 0), 0.55, 1.0)
    if kind == "rings":
        return np.where((np.sqrt(dx * dx + dy * dy) // 2) % 2 == 0, 1.0, 0.7)
    return np.ones_like(dx, dtype=float)


def _draw_texture_region(img: np.ndarray, src: dict, scene: dict, frame: int, cx: int, top: int) -> None:
    """Rain streaks / wind dashes below the emitter, between it and the floor."""
    size = scene["size"]
    floor_row = round(scene["floor"] * size)
    half = round(size * 0.22 / src["distance"] ** 0.5)
    c0, c1 = max(0, cx - half), min(size, cx + half + 1)
    rows = np.arange(top, floor_row)[:, None]
    cols = np.arange(c0, c1)[None]
    if src["class"] == "rain":
        on = ((rows - 3 * frame + 2 * cols) % 9 == 0)
        color = np.array([0.55, 0.7, 1.0])
    else:
        on = (rows % 5 == 0) & ((cols + 4 * frame) % 10 < 6)
        color = np.array([0.8, 0.85, 0.8])
    region = img[top:floor_row, c0:c1]
    region[on] = 0.5 * region[on] + 0.5 * color


def _sprite(src: dict, size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(mask [h, w], colour [h, w, 3], half height r, half width w) of a source's shape, drawn once."""
    cls = BY_NAME[src["class"]]
    r = radius(src, size)
    w = 2 * r + 1 if cls.shape not in ("rect", "ellipse", "cloud", "leaf") else 2 * r + 2
    dy = np.arange(-r, r + 1)[:, None]
    dx = np.arange(-w, w + 1)[None]
    mask = shape_mask(cls.shape, dx, dy, r)
    tex = np.broadcast_to(_texture(cls.texture, dx, dy, 0), mask.shape)
    col = np.asarray(cls.color, np.float32)[None, None] * tex[..., None].astype(np.float32)
    return mask, col, r, w


def render_frames(scene: dict) -> np.ndarray:
    """[T, H, W, 3] uint8 frames."""
    size, T = scene["size"], scene["num_frames"]
    floor_row = round(scene["floor"] * size)
    base = np.empty((size, size, 3), np.float32)
    base[:] = scene["background"]
    base[floor_row:] = scene["floor_color"]
    sprites = [_sprite(src, size) for src in scene["sources"]]
    frames = np.empty((T, size, size, 3), np.float32)
    frames[:] = base
    for f in range(T):
        img = frames[f]
        for src, (mask, col, r, w) in zip(scene["sources"], sprites):
            if not src["positions"]["visible"][f]:
                continue
            cx, bottom, _ = geometry(scene, src, f)
            cy = bottom - r
            if src["family"] == "texture":
                cy = r + 2
                _draw_texture_region(img, src, scene, f, cx, cy + r)
            r0, r1 = max(0, cy - r), min(size, cy + r + 1)
            c0, c1 = max(0, cx - w), min(size, cx + w + 1)
            if r0 >= r1 or c0 >= c1:
                continue
            sub = (slice(r0 - cy + r, r1 - cy + r), slice(c0 - cx + w, c1 - cx + w))
            m, c = mask[sub], col[sub]
            for ev in src["events"]:
                if ev["kind"] == "strike" and 0 <= f - ev["frame"] < 6:
                    c = c + (1 - c) * (0.85 * np.exp(-(f - ev["frame"]) / 1.2))
            img[r0:r1, c0:c1][m] = c[m]
    frames *= 255
    frames += 0.5
    np.clip(frames, 0, 255, out=frames)
    return frames.astype(np.uint8)


def cause_patch(scene: dict, src: dict, event: dict) -> tuple[slice, slice]:
    """(rows, cols) of the pixels where the event's visual cause shows at its frame: the contact
    strip just above the floor (impact), the object's core (strike), the emitter (start)."""
    f = event["frame"]
    cx, bottom, r = geometry(scene, src, f)
    if src["family"] == "impact":
        return slice(bottom - 1, bottom + 1), slice(cx - 1, cx + 2)
    if src["family"] == "texture":
        return slice(max(0, r // 2 + 2), r + 3), slice(cx - 1, cx + 2)
    h = max(1, r // 3)
    return slice(bottom - r // 2 - h, bottom - r // 2 + 1), slice(cx - h, cx + h + 1)
