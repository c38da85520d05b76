"""Train the offline planner's visual classifier on a procedural corpus.

Crops come from the planner's *own* tracker run on the corpus videos (so training sees exactly the
crops inference sees, H.264 artefacts and all); each track is labelled with the scene-graph source it
follows (`match_tracks`). Train on the train split, pick the epoch by val accuracy, report val.

Reproduce the shipped checkpoint (took 11.4 min on 2 busy shared CPU cores; ~5 of it decoding + tracking):

    prismaudio synth --out /tmp/judge_corpus --n 2400 --seed 0 --workers 2
    python -m prismaudio.procedural.train_visual --corpus /tmp/judge_corpus \
        --out src/prismaudio/assets/visual_classifier --train-clips 1000

(`--train-clips` omitted uses all 1,920 train clips, ~2x the time.) Then measure with
`python benchmarks/bench_cot_offline.py --metrics src/prismaudio/assets/visual_classifier/metrics.json`.
The class names are this world's vocabulary; they are saved in the checkpoint's config.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..cot.visual_classifier import VisualClassifier
from ..errors import PrismAudioError
from ..io.files import atomic_path
from .planner import Analysis, analyse_frames, load_frames, track_crops
from .synth.render import radius
from .synth.vocab import CLASS_NAMES

MATCH_PX = 6.0  # mean centre distance (px) below which a track follows a ground-truth source


def gt_centres(scene: dict[str, Any], src: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre col, centre row, visible) per frame of a scene-graph source, as the renderer draws it."""
    size = scene["size"]
    floor_row = round(scene["floor"] * size)
    r = radius(src, size)
    x = np.asarray(src["positions"]["x"], float)
    y = np.asarray(src["positions"]["y"], float)
    col = np.round((x + 1) / 2 * (size - 1))
    row = floor_row - 1 - np.round(y * size) - r if src["family"] != "texture" else np.full_like(x, r + 2)
    return col, row, np.asarray(src["positions"]["visible"], bool)


def match_tracks(an: Analysis, scene: dict[str, Any]) -> dict[int, int]:
    """{track index: source index} by mean centre distance over co-visible frames (Hungarian, < MATCH_PX)."""
    srcs = scene["sources"]
    if not an.tracks or not srcs:
        return {}
    cost = np.full((len(an.tracks), len(srcs)), 1e3)
    for i, tr in enumerate(an.tracks):
        row = (tr.top + tr.bottom) / 2
        for j, s in enumerate(srcs):
            col, grow, vis = gt_centres(scene, s)
            both = tr.seen & vis
            if both.sum() >= 2:
                cost[i, j] = float(np.hypot(tr.col[both] - col[both], row[both] - grow[both]).mean())
    return {int(i): int(j) for i, j in zip(*linear_sum_assignment(cost)) if cost[i, j] < MATCH_PX}


def _clip_crops(args: tuple[str, dict[str, Any], int]) -> tuple[torch.Tensor, list[int]]:
    video, scene, n = args
    torch.set_num_threads(1)
    frames, fps = load_frames(video)
    an = analyse_frames(frames, fps)
    xs, ys = [], []
    for i, j in match_tracks(an, scene).items():
        c = track_crops(an, an.tracks[i], n=n)
        xs.append(c)
        ys += [CLASS_NAMES.index(scene["sources"][j]["class"])] * len(c)
    return (torch.cat(xs) if xs else torch.zeros(0, 4, 32, 32)), ys


def collect(corpus: Path, splits: dict[str, int | None], n_per_track: int,
            workers: int = 2) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Labelled crops per split of `corpus` (manifest.jsonl with scene graphs); `splits` maps a split to
    how many of its clips to use (None: all). One worker pool for all splits, forked before the parent
    runs any torch op (forking after torch's thread pool has run can hang the children)."""
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    jobs, owner = [], []
    for split, n in splits.items():
        mine = [r for r in rows if r["split"] == split][:n]
        if not mine:
            raise PrismAudioError(f"corpus {corpus} has no '{split}' clips")
        jobs += [(str(corpus / r["video"]), r["scene"], n_per_track) for r in mine]
        owner += [split] * len(mine)
    with mp.get_context("fork").Pool(workers) as pool:
        out = []
        for k, o in enumerate(pool.imap(_clip_crops, jobs, chunksize=4), start=1):
            out.append(o)
            if k % 200 == 0 or k == len(jobs):
                print(f"{k}/{len(jobs)} clips analysed", file=sys.stderr)
    res = {}
    for split in splits:
        mine = [o for o, s in zip(out, owner) if s == split]
        res[split] = (torch.cat([o[0] for o in mine]), torch.tensor([c for o in mine for c in o[1]], dtype=torch.long))
    return res


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(x), generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain = 1 + 0.08 * (torch.rand(len(x), 3, 1, 1, generator=g) - 0.5)
    return torch.cat([(x[:, :3] * gain).clamp(0, 1), x[:, 3:]], 1)


def accuracy(model: VisualClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 512]).argmax(-1) for i in range(0, len(x), 512)])
    return float((pred == y).float().mean())


def fit(x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor, epochs: int = 12,
        seed: int = 0, width: int = 24, log=print) -> tuple[VisualClassifier, dict[str, Any]]:
    """Adam + cosine schedule; returns the best-val-accuracy model and its history."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = VisualClassifier(CLASS_NAMES, width=width, crop=int(x.shape[-1]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * max(1, (len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    best, best_state, hist = -1.0, None, []
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        tot = 0.0
        for i in range(0, len(x), 128):
            b = perm[i:i + 128]
            loss = F.cross_entropy(model(_augment(x[b], g)), y[b], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(b)
        acc = accuracy(model, xv, yv)
        hist.append({"epoch": ep + 1, "train_loss": round(tot / len(x), 4), "val_crop_accuracy": round(acc, 4)})
        log(f"epoch {ep + 1}: loss {tot / len(x):.4f}, val crop accuracy {acc:.4f}")
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), {"history": hist, "best_val_crop_accuracy": round(best, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prismaudio.procedural.train_visual", description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", required=True, type=Path, help="synth corpus (manifest.jsonl, video/)")
    ap.add_argument("--out", required=True, type=Path, help="checkpoint directory to write")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--width", type=int, default=24)
    ap.add_argument("--crops-per-track", type=int, default=4)
    ap.add_argument("--train-clips", type=int, default=None, help="use the first N train clips (default: all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        t0 = time.time()
        data = collect(a.corpus, {"train": a.train_clips, "val": None}, a.crops_per_track, a.workers)
        (x, y), (xv, yv) = data["train"], data["val"]
        print(f"crops: train {len(x)}, val {len(xv)} ({time.time() - t0:.0f} s)", file=sys.stderr)
        model, info = fit(x, y, xv, yv, a.epochs, a.seed, a.width, log=lambda m: print(m, file=sys.stderr))
        model.save(a.out)
        metrics_path = a.out / "metrics.json"
        old = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
        old["training"] = {"corpus": str(a.corpus), "train_clips": a.train_clips or "all", "train_crops": len(x), "val_crops": len(xv),
                           "epochs": a.epochs, "width": a.width, "seed": a.seed,
                           "params": sum(p.numel() for p in model.parameters()),
                           "seconds": round(time.time() - t0, 1), **info}
        with atomic_path(metrics_path) as tmp:
            Path(tmp).write_text(json.dumps(old, indent=2) + "\n")
        print(f"saved {a.out} (best val crop accuracy {info['best_val_crop_accuracy']:.4f})", file=sys.stderr)
    except PrismAudioError as e:
        print(f"train_visual: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
