"""Training and evaluating the offline judges (`metrics/judges.py`) on the procedural corpus.

It lives with the procedural world because it needs that world's ground truth: its class
vocabulary (stored in the semantic judge's config.json, so the judges themselves need no
vocabulary), its scene graphs as targets and its own `degrade` for augmentation.

Reproduce (2 CPU cores; corpus ~2 min, training + evaluation ~15 min), or `prismaudio train-judges`:

    python -c "from prismaudio.procedural.synth import run_synth; run_synth('/tmp/judge_corpus', n=2400, seed=0, workers=2)"
    python -c "from prismaudio.procedural.train_judges import train_judges; print(train_judges('/tmp/judge_corpus', '/tmp/judges'))"

The train split trains all three judges (decoded mono audio and 16x16 frames cached in memory); the test split
evaluates them and `metrics.json` is written beside the checkpoints (`semantic/`, `sync/`, `quality/`):
- semantic_top1: top-1 retrieval, on single-event test clips, of the clip's class prompt
  ("the sound of a <label>.") among the prompts of every class in the test set;
- sync_within_one_step: every test clip shifted by every grid step k (-10..10), |predicted - k| <= 1 step;
- pq_spearman_severity_degraded_only: Spearman of predicted PQ with degradation severity on the degraded
  test clips (the meaningful figure: PQ should fall as severity rises); pq_spearman_severity: the same on
  all test clips with clean = 0 -- about 3/4 of the clips are clean and tied at 0, which caps |rho| near
  0.78 even for a perfect ranking (clean above every degraded clip, degraded in severity order).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import PrismAudioError
from ..io.files import Staging, check_output_dir
from ..metrics.judges import (
    N_LAGS,
    QualityJudge,
    SemanticJudge,
    SyncJudge,
    frames_to_tensor,
    offset_label,
    pc_target,
    pq_target,
    shift_audio,
)
from .synth.sounds import degrade
from .synth.vocab import BY_NAME, CLASS_NAMES

_IDX = {n: i for i, n in enumerate(CLASS_NAMES)}


def class_prompt(labels: list[str]) -> str:
    return "the sound of " + " and ".join(f"a {lab}" for lab in labels) + "."


def _label_of(name: str) -> str:
    return BY_NAME[name].label


@dataclass
class JudgeData:
    rows: list[dict]
    mono: Tensor  # [N, S] float32, 16 kHz
    frames: Tensor  # [N, T, 3, size, size] uint8
    stereo: Tensor | None = None  # [N, 2, S] float32 (kept for the quality judge's degradation augmentation)

    @classmethod
    def from_clips(cls, clips: list, size: int = 16) -> JudgeData:
        """From `make_clip` outputs (row, frames [T, H, W, 3] uint8, audio [2, S], stems), in memory."""
        rows = [c[0] for c in clips]
        stereo = torch.stack([torch.from_numpy(np.asarray(c[2], np.float32)) for c in clips])
        frames = torch.cat([_to_u8(frames_to_tensor(c[1], size)) for c in clips])
        return cls(rows, stereo.mean(1), frames, stereo)

    @classmethod
    def from_manifest(cls, manifest, split: str, size: int = 16, limit: int | None = None) -> JudgeData:
        from ..io.audio import load_audio
        from ..io.video import read_frames

        path = Path(manifest)
        if path.is_dir():
            path = path / "manifest.jsonl"
        if not path.is_file():
            raise PrismAudioError(f"no manifest at {path}")
        rows = usable_rows(path, split)[:limit]  # the shared reader: a bad line is a warning, not a crash
        if not rows:
            raise PrismAudioError(f"{path}: no usable '{split}' clips (with audio and a scene graph)")
        stereo, frames = [], []
        for r in rows:
            dur = float(r.get("duration") or 4.0)
            audio, _ = load_audio(r["audio"], 16000, channels=2)
            n = round(dur * 16000)
            stereo.append(F.pad(audio, (0, max(0, n - audio.shape[-1])))[:, :n])
            frames.append(_to_u8(read_frames(r["video"], 25, size, duration=dur)[None]))
        stereo_t = torch.stack(stereo)
        return cls(rows, stereo_t.mean(1), torch.cat(frames), stereo_t)

    def classes(self, i: int) -> list[str]:
        return sorted({s["class"] for s in self.rows[i]["scene"]["sources"]})

    def texts(self, i: int) -> list[str]:
        r = self.rows[i]
        return [r["caption"], r["cot"]["semantic"], class_prompt([_label_of(c) for c in self.classes(i)])]

    def multi_hot(self, idx) -> Tensor:
        out = torch.zeros(len(idx), len(CLASS_NAMES))
        for j, i in enumerate(idx):
            for c in self.classes(int(i)):
                out[j, _IDX[c]] = 1.0
        return out


def usable_rows(path: Path, split: str) -> list[dict]:
    """The `split` rows of a corpus manifest as dicts with absolute paths, read by the shared
    `data.manifest` reader; bad lines and rows without audio or scene graph are warned about
    (stderr) and skipped, as in every other command."""
    import warnings

    from ..data.manifest import read_manifest

    rows, problems = read_manifest(path)
    for p in problems:
        warnings.warn(f"skipping bad manifest row: {p}", stacklevel=2)
    out = []
    for row in rows:
        if row.split != split:
            continue
        sources = (row.scene or {}).get("sources")
        if row.audio is None or not isinstance(sources, list) or not all(isinstance(x, dict) and "class" in x
                                                                        for x in sources) or not (row.cot or {}).get("semantic"):
            warnings.warn(f"skipping clip {row.id!r} of {path}: no audio, scene graph or CoT (not a synth corpus row)",
                          stacklevel=2)
            continue
        d = row.to_dict()
        d["video"], d["audio"] = row.video, row.audio
        out.append(d)
    return out


def _to_u8(x: Tensor) -> Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def _optim(model, steps: int, lr: float):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(1, steps))))
    return opt, sched


def _gain(g: torch.Generator, n: int) -> Tensor:
    return torch.exp((torch.rand(n, 1, generator=g) * 2 - 1) * 0.7)


def fit_semantic(judge: SemanticJudge, data: JudgeData, steps: int, batch: int = 48, lr: float = 2e-3,
                 seed: int = 0, log: Callable | None = None) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    texts = [data.texts(i) for i in range(len(data.rows))]
    judge.text_features([t for ts in texts for t in ts])  # fill the cache once
    opt, sched = _optim(judge, steps, lr)
    judge.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(data.rows), (min(batch, len(data.rows)),), generator=g)
        pick = torch.randint(3, (len(idx),), generator=g)
        feats = judge.text_features([texts[int(i)][int(k)] for i, k in zip(idx, pick)])
        out = judge.loss(data.mono[idx] * _gain(g, len(idx)), feats, data.multi_hot(idx))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        sched.step()
        losses.append(float(out["loss"].detach()))
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"semantic {step}: loss {losses[-1]:.3f} nce {float(out['nce']):.3f} bce {float(out['bce']):.3f}")
    return losses


def sync_batch(data: JudgeData, idx: Tensor, ks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(frames, audio [B, 1, S] shifted by ks grid steps, labels ks + 10)."""
    audio = torch.stack([shift_audio(data.mono[int(i)], int(k)) for i, k in zip(idx, ks)])[:, None]
    labels = torch.tensor([offset_label(int(k)) for k in ks])
    return data.frames[idx], audio, labels


def fit_sync(judge: SyncJudge, data: JudgeData, steps: int, batch: int = 32, lr: float = 2e-3,
             seed: int = 0, log: Callable | None = None) -> list[float]:
    g = torch.Generator().manual_seed(seed + 1)
    opt, sched = _optim(judge, steps, lr)
    judge.train()
    losses = []
    half = N_LAGS // 2
    for step in range(steps):
        idx = torch.randint(len(data.rows), (min(batch, len(data.rows)),), generator=g)
        ks = torch.randint(-half, half + 1, (len(idx),), generator=g)
        frames, audio, labels = sync_batch(data, idx, ks)
        loss = F.cross_entropy(judge.logits(frames, audio * _gain(g, len(idx))[:, :, None], 16000), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"sync {step}: loss {losses[-1]:.3f}")
    return losses


def quality_targets(data: JudgeData, idx, degradations: list | None = None) -> Tensor:
    """(PQ, PC) targets; `degradations[j]` (when given) replaces the scene's degradation of sample j."""
    rows = [data.rows[int(i)] for i in idx]
    degs = degradations or [r["scene"]["degradation"] for r in rows]
    return torch.tensor([[pq_target(d), pc_target(len(r["scene"]["sources"]))] for r, d in zip(rows, degs)],
                        dtype=torch.float32)


def degrade_batch(data: JudgeData, idx: Tensor, rng: np.random.Generator, p: float) -> tuple[Tensor, list]:
    """Mono batch where each CLEAN clip is, with probability `p`, degraded afresh by the corpus's own
    `degrade` (random kind, severity ~ U(0.15, 1), on the stereo mix as the renderer does). Why: the
    corpus degrades only ~25% of its clips, too few for the judge to calibrate three kinds of damage
    against one another; re-drawing the same generative process gives unlimited labelled examples."""
    mono, degs = [], []
    for i in idx.tolist():
        deg = data.rows[i]["scene"]["degradation"]
        if data.stereo is not None and deg is None and rng.random() < p:
            deg = {"kind": str(rng.choice(["noise", "clipping", "bandlimit"])),
                   "severity": float(rng.uniform(0.15, 1.0))}
            x = np.clip(degrade(data.stereo[i].numpy().astype(np.float64), deg, rng), -1, 1)
            mono.append(torch.from_numpy(x.astype(np.float32)).mean(0))
        else:
            mono.append(data.mono[i])
        degs.append(deg)
    return torch.stack(mono), degs


def fit_quality(judge: QualityJudge, data: JudgeData, steps: int, batch: int = 48, lr: float = 2e-3,
                seed: int = 0, log: Callable | None = None, augment: float = 0.6) -> list[float]:
    g = torch.Generator().manual_seed(seed + 2)
    rng = np.random.default_rng(seed + 2)
    opt, sched = _optim(judge, steps, lr)
    judge.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(data.rows), (min(batch, len(data.rows)),), generator=g)
        mono, degs = degrade_batch(data, idx, rng, augment)
        pred = judge.predict_mono(mono * _gain(g, len(idx)))
        loss = F.mse_loss((pred - 1) / 9, (quality_targets(data, idx, degs) - 1) / 9)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log and (step % 100 == 0 or step == steps - 1):
            log(f"quality {step}: loss {losses[-1]:.4f}")
    return losses


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


@torch.no_grad()
def evaluate(sem: SemanticJudge, sync: SyncJudge, qual: QualityJudge, data: JudgeData, chunk: int = 64) -> dict:
    for m in (sem, sync, qual):
        m.eval()
    N = len(data.rows)
    classes = sorted({c for i in range(N) for c in data.classes(i)}, key=_IDX.get)
    prompts = sem.embed_text([class_prompt([_label_of(c)]) for c in classes])
    emb, post, qp = [], [], []
    for s in range(0, N, chunk):
        e, lc = sem.embed_mono(data.mono[s:s + chunk])
        emb.append(e), post.append(torch.sigmoid(lc)), qp.append(qual.predict_mono(data.mono[s:s + chunk]))
    emb, post, qp = torch.cat(emb), torch.cat(post), torch.cat(qp)
    single = [i for i in range(N) if len(data.classes(i)) == 1]
    multi = [i for i in range(N) if len(data.classes(i)) > 1]
    retr = (emb[single] @ prompts.T).argmax(1)
    top1 = float(np.mean([classes[int(r)] == data.classes(i)[0] for r, i in zip(retr, single)])) if single else float("nan")
    head = float(np.mean([CLASS_NAMES[int(post[i].argmax())] == data.classes(i)[0] for i in single])) if single else float("nan")
    recall = []
    for i in multi:
        want = {_IDX[c] for c in data.classes(i)}
        got = set(post[i].topk(len(want)).indices.tolist())
        recall.append(len(want & got) / len(want))
    half = N_LAGS // 2
    hits, exact = [], []
    for k in range(-half, half + 1):
        for s in range(0, N, chunk):
            idx = torch.arange(s, min(N, s + chunk))
            frames, audio, labels = sync_batch(data, idx, torch.full((len(idx),), k))
            pred = sync.logits(frames, audio, 16000).argmax(1)
            hits += ((pred - labels).abs() <= 1).tolist()
            exact += (pred == labels).tolist()
    sev = np.array([(r["scene"]["degradation"] or {}).get("severity", 0.0) for r in data.rows])
    pq, pc = qp[:, 0].numpy(), qp[:, 1].numpy()
    deg = sev > 0
    nsrc = np.array([len(r["scene"]["sources"]) for r in data.rows])
    return {
        "n_test": N, "n_single": len(single), "n_multi": len(multi), "n_degraded": int(deg.sum()),
        "semantic_top1": top1, "semantic_class_head_top1": head,
        "semantic_multi_class_recall": float(np.mean(recall)) if recall else float("nan"),
        "sync_within_one_step": float(np.mean(hits)), "sync_exact": float(np.mean(exact)),
        "pq_spearman_severity": _spearman(pq, sev),
        "pq_spearman_severity_degraded_only": _spearman(pq[deg], sev[deg]),
        "pq_mae": float(np.mean(np.abs(pq - (10 - 9 * sev)))),
        "pc_spearman_sources": _spearman(pc, nsrc),
    }


def train_judges(corpus, out_dir, semantic_steps: int = 1200, sync_steps: int = 1500, quality_steps: int = 1500,
                 seed: int = 0, limit: int | None = None, log: Callable | None = print) -> dict:
    """Train the three judges on the corpus's train split, evaluate on its test split, save
    `out_dir/{semantic,sync,quality}/` and `out_dir/metrics.json`; returns the metrics."""
    check_output_dir(out_dir)  # before the decoding and the training, not after
    torch.manual_seed(seed)
    t0 = time.time()
    train = JudgeData.from_manifest(corpus, "train", limit=limit)
    test = JudgeData.from_manifest(corpus, "test", limit=limit)
    if log:
        log(f"decoded {len(train.rows)} train / {len(test.rows)} test clips in {time.time() - t0:.0f} s")
    sem, sync, qual = SemanticJudge(CLASS_NAMES), SyncJudge(), QualityJudge()
    times = {}
    for name, fit, model, steps in (("semantic", fit_semantic, sem, semantic_steps), ("sync", fit_sync, sync, sync_steps),
                                    ("quality", fit_quality, qual, quality_steps)):
        t = time.time()
        fit(model, train, steps, seed=seed, log=log)
        times[name] = round(time.time() - t, 1)
    metrics = evaluate(sem, sync, qual, test)
    metrics.update({"n_train": len(train.rows), "steps": {"semantic": semantic_steps, "sync": sync_steps,
                    "quality": quality_steps}, "train_seconds": times, "seed": seed})
    with Staging(out_dir) as staging:  # the three judges and metrics.json appear together or not at all
        for name, model in (("semantic", sem), ("sync", sync), ("quality", qual)):
            model.save(staging.path(name))
        staging.path("metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        staging.publish()
    if log:
        log(json.dumps(metrics, indent=2))
    return metrics
