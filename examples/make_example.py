"""Reproduce the bundled example clip `examples/example.mp4`.

A 4 s, 25 fps, 128x128 silent H.264 video: a ball drops, hits the floor at exactly 1.00 s and 2.60 s
(the frames where the sound should start) while drifting from left to right.  Deterministic: running
this script twice gives identical frames.

    python examples/make_example.py [--out examples/example.mp4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import av
import numpy as np

FPS, SIZE, SECONDS = 25, 128, 4.0
IMPACTS = (1.0, 2.6)  # seconds


def ball_height(t: float) -> float:
    """Height above the floor (0..1): free fall onto the floor at each impact, then a bounce."""
    prev = 0.0
    for hit in IMPACTS:
        if t < hit:
            span = hit - prev
            u = (t - prev) / span  # 0 at the top of the arc, 1 at the impact
            return 0.8 * (1.0 - u * u) if prev == 0.0 else 0.5 * (1.0 - (2 * u - 1) ** 2)
        prev = hit
    u = min(1.0, (t - prev) / 0.8)
    return 0.3 * (1.0 - (2 * u - 1) ** 2)


def frame(k: int) -> np.ndarray:
    t = k / FPS
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:] = (30, 34, 48)
    floor = int(SIZE * 0.85)
    img[floor:] = (90, 70, 50)
    r = 9
    cx = int(SIZE * (0.2 + 0.6 * t / SECONDS))
    cy = int(floor - r - ball_height(t) * (floor - 2 * r))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (220, 60, 40)
    return img


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).with_name("example.mp4")))
    out = ap.parse_args().out
    with av.open(out, "w") as c:
        s = c.add_stream("libx264", rate=FPS)
        s.width = s.height = SIZE
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "23", "preset": "medium"}
        for k in range(int(FPS * SECONDS)):
            for p in s.encode(av.VideoFrame.from_ndarray(frame(k), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
