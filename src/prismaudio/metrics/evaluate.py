"""`prismaudio evaluate`: the paper's table (CLAP, DeSync, PQ/PC/CE/CU, GCC, CRW, FD, KL) plus the
procedural benchmark's ground-truth measures, for the ground truth ("GT") and generated systems.

Per clip of the manifest's split and per system (a folder of ``<id>.wav`` / ``.flac`` / ``.mp3``,
or "GT" = the row's reference audio):

* ``CLAP``: clap backend cosine with the row's caption (else the CoT's semantic part).
* ``DeSync``: desync backend on the row's video frames at 25 fps (first / last 4.8 s windows).
* ``PQ``, ``PC`` (and ``CE``, ``CU`` when the aesthetics backend has them).
* ``GCC``: ``bewo`` mode: ``(mean ITD_ref - mean ITD_gen)^2 x 1000`` (seconds^2 x 1000) per file
  with BEWO's 100-window track (`itd_track_bewo`), so the column mean is exactly BEWO's GCC MSE
  (`gcc_mse_bewo`); ``paper`` mode: `gcc_distribution_distance_paper` (ms^2 + ms).
* ``CRW``: the same per-file BEWO formula with a crw backend's track (only when one is configured).
* ``KL``: ``KL(p_ref || p_gen)`` of the classifier's softmax posteriors, per clip (`kl_per_clip`).
* ``FD``: set level, per subset: Fréchet distance between the system's embeddings and the
  reference embeddings of the same subset (both sets need >= 2 clips, else n/a).
* With a scene graph (``include_gt``): ``onset_ms`` (median |onset error| of the clip's events; an event without a
  detected onset within 1 s counts as 1,000 ms),
  ``side_acc``, ``itd_err_ms``, ``class_recall`` (offline semantic judge posteriors > 0.5).

Nothing here crashes on one bad clip: a missing generated file makes that clip's metrics NaN (the
reason is kept and the count logged); mono audio makes the spatial measures NaN; silent audio makes
everything NaN; a wrong sample rate is resampled by each backend. Each audio file is decoded once per
system and each video once per clip. The NaN values are skipped by the report's statistics (its
``n`` counts the valid clips).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from .report import Report, build_report

log = logging.getLogger(__name__)

NAN = float("nan")
GT = "GT"
AUDIO_EXTS = (".wav", ".flac", ".mp3")
OFFLINE_BACKENDS = {"clap": "judge_clap", "desync": "judge_sync", "aesthetics": "judge_quality",
                    "embedder": "judge_embedder", "classifier": "judge_classifier"}
JUDGE_KIND = {"judge_clap": "semantic", "judge_sync": "sync", "judge_quality": "quality",
              "judge_embedder": "semantic", "judge_classifier": "semantic"}
ONSET_CAP_MS = 1000.0
ROLES = ("clap", "desync", "aesthetics", "crw", "embedder", "classifier")


class EvalResults(dict):
    """``{system: [clip dict, ...]}`` (the input of `build_report`: "id", "subset", METRIC: value)
    with the details: ``reasons[system][clip_id][metric]`` (why a value is NaN), ``missing[system]``
    (clip ids without a generated file), ``set_level`` (FD per subset) and ``modes``."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, dict[str, dict[str, str]]] = {}
        self.missing: dict[str, list[str]] = {}
        self.set_level: dict[str, dict[str, dict[str, float]]] = {}
        self.modes: dict[str, str] = {}


# ------------------------------------------------------------------------------- backends
def build_backends(judges: str = "offline", real_config: Mapping[str, Any] | None = None,
                   judges_dir: str | os.PathLike | None = None) -> dict[str, tuple[str, Any]]:
    """role -> (backend name, built backend). Offline judges for every role (no crw); with
    ``judges="real"`` each role of `real_config` ({"clap": {"backend": NAME, **params}, ...}) replaces it."""
    from .backends import backend_role, build_backend

    if judges not in ("offline", "real"):
        raise PrismAudioError(f"judges must be 'offline' or 'real', got {judges!r}")
    specs: dict[str, dict[str, Any]] = {r: {"backend": n} for r, n in OFFLINE_BACKENDS.items()}
    if judges == "real":
        cfg = dict(real_config or {})
        unknown = sorted(set(cfg) - set(ROLES))
        if unknown:
            raise PrismAudioError(f"real config: unknown role(s) {unknown}; roles: {', '.join(ROLES)}")
        for role, spec in cfg.items():
            if spec is None:
                continue
            if isinstance(spec, str):
                spec = {"backend": spec}
            if not isinstance(spec, Mapping) or not isinstance(spec.get("backend"), str):
                raise PrismAudioError(f"real config: role {role!r} needs {{'backend': NAME, ...params}}")
            specs[role] = dict(spec)
    elif real_config:
        log.warning("judges='offline': the real config is ignored")
    out: dict[str, tuple[str, Any]] = {}
    for role, spec in specs.items():
        params = {k: v for k, v in spec.items() if k != "backend"}
        name = spec["backend"]
        if backend_role(name) != role:
            raise PrismAudioError(f"backend {name!r} plays the {backend_role(name)!r} role, not {role!r}")
        if name in JUDGE_KIND and judges_dir is not None and "path" not in params:
            params["path"] = str(Path(judges_dir) / JUDGE_KIND[name])
        out[role] = (name, build_backend(name, **params))
    return out


# ---------------------------------------------------------------------------------- helpers
def find_generated(folder: Path, clip_id: str) -> Path | None:
    for ext in AUDIO_EXTS:
        p = folder / f"{clip_id}{ext}"
        if p.is_file():
            return p
    return None


def _load(path: Path) -> tuple[Tensor, int]:
    from ..io.audio import load_audio

    return load_audio(path, sample_rate=None, channels=None)


def _silent(x: Tensor) -> bool:
    return x.numel() == 0 or float(x.abs().max()) <= 1e-6


def _f(x: Any) -> float:
    return float(torch.as_tensor(x).detach().cpu().double().reshape(-1)[0])


class _Clip:
    """Everything derived from one decoded audio clip that other clips/systems reuse."""

    def __init__(self, audio: Tensor, sr: int) -> None:
        self.audio, self.sr = audio, sr
        self.silent = _silent(audio)
        self.stereo = audio.shape[0] == 2
        self.cache: dict[str, Any] = {}

    def get(self, key: str, fn) -> Any:
        if key not in self.cache:
            try:
                self.cache[key] = (fn(), None)
            except Exception as e:  # noqa: BLE001 - one failing measure must not stop the run
                self.cache[key] = (None, f"{type(e).__name__}: {e}")
        return self.cache[key]


class _Evaluator:
    def __init__(self, backends: dict[str, tuple[str, Any]], spatial_mode: str, bewo_frame_stride: int,
                 include_gt: bool, judges_dir: str | os.PathLike | None) -> None:
        self.b = {role: obj for role, (_, obj) in backends.items()}
        self.names = {role: name for role, (name, _) in backends.items()}
        self.spatial_mode, self.stride, self.include_gt = spatial_mode, int(bewo_frame_stride), include_gt
        self.judges_dir = judges_dir
        self._recall: Any = None
        self._recall_reason: str | None = None
        self.aes_axes: set[str] = set()

    # ---- per-audio features (reused between the reference and the systems)
    def bewo_mean(self, c: _Clip) -> float:
        from .spatial import itd_track_bewo

        return float(torch.nanmean(itd_track_bewo(c.audio, c.sr, frame_stride=self.stride)))

    def crw_mean(self, c: _Clip) -> float:
        t = torch.as_tensor(self.b["crw"].itd_track(c.audio, c.sr)).double()
        return float(torch.nanmean(t)) if torch.isfinite(t).any() else NAN

    def logits(self, c: _Clip) -> tuple[Tensor, str]:
        cl = self.b["classifier"]
        if hasattr(cl, "logits"):
            return torch.as_tensor(cl.logits(c.audio[None], c.sr)).detach().cpu().double(), "logits"
        p = torch.as_tensor(cl.posteriors(c.audio[None], c.sr)).detach().cpu().double()
        return p / p.sum(-1, keepdim=True).clamp_min(1e-12), "probs"

    def embed(self, c: _Clip) -> Tensor:
        e = self.b["embedder"]
        fn = e.embed if hasattr(e, "embed") else e
        return torch.as_tensor(fn(c.audio[None], c.sr)).detach().cpu().double()[0]

    def recall_classifier(self) -> Any:
        if self._recall is None and self._recall_reason is None:
            cl = self.b["classifier"]
            if self.names["classifier"] == "judge_classifier":
                self._recall = cl
            else:
                try:
                    from .offline import JudgeClassifier

                    path = str(Path(self.judges_dir) / "semantic") if self.judges_dir is not None else None
                    self._recall = JudgeClassifier(path=path)
                except PrismAudioError as e:
                    self._recall_reason = f"no offline semantic judge for class recall ({e})"
                    log.warning("class_recall disabled: %s", self._recall_reason)
        return self._recall

    # ---- one system on one clip
    def clip_metrics(self, gen: _Clip, ref: _Clip | None, frames: Tensor | None, frames_reason: str | None,
                     text: str | None, scene: dict | None, reasons: dict[str, str]) -> tuple[dict[str, float], Any]:
        m: dict[str, float] = {}
        emb = None

        def put(name: str, fn, why: str | None = None) -> None:
            if why is not None:
                m[name], reasons[name] = NAN, why
                return
            try:
                v = float(fn())
            except Exception as e:  # noqa: BLE001
                v, reasons[name] = NAN, f"{type(e).__name__}: {e}"
                log.debug("metric %s failed: %s", name, reasons[name])
            m[name] = v
            if not math.isfinite(v) and name not in reasons:
                reasons[name] = "not finite"

        silent = "silent audio" if gen.silent else None
        a, sr = gen.audio[None], gen.sr
        put("CLAP", lambda: _f(self.b["clap"].score(a, sr, [text])),
            silent or (None if text else "no caption or semantic CoT"))
        put("DeSync", lambda: _f(self.b["desync"].desync(frames[None], a, sr)),
            silent or (frames_reason if frames is None else None))
        if silent:
            for k in ("PQ", "PC", *sorted(self.aes_axes - {"PQ", "PC"})):
                m[k], reasons[k] = NAN, silent
        else:
            try:
                scores = self.b["aesthetics"].score(a, sr)
                for k, v in scores.items():
                    self.aes_axes.add(k)
                    m[k] = _f(v)
            except Exception as e:  # noqa: BLE001
                for k in ("PQ", "PC"):
                    m[k], reasons[k] = NAN, f"{type(e).__name__}: {e}"
        # spatial
        ref_why = None if ref is not None else "no reference audio"
        if ref is not None and ref.silent:
            ref_why = "silent reference audio"
        elif ref is not None and not ref.stereo:
            ref_why = "mono reference audio has no ITD"
        sp_why = silent or ("mono audio has no interaural time difference" if not gen.stereo else None) or ref_why
        if self.spatial_mode == "bewo":
            def gcc() -> float:
                (mr, er), (mg, eg) = ref.get("bewo", lambda: self.bewo_mean(ref)), gen.get("bewo", lambda: self.bewo_mean(gen))
                if er or eg:
                    raise PrismAudioError(er or eg)
                return (mr - mg) ** 2 * 1000.0
        else:
            def gcc() -> float:
                from ..io.audio import resample
                from .spatial import gcc_distribution_distance_paper

                g = gen.audio if gen.sr == ref.sr else resample(gen.audio, gen.sr, ref.sr)
                d = gcc_distribution_distance_paper(ref.audio, g, ref.sr)
                if d["reason"]:
                    reasons["GCC"] = d["reason"]
                return d["distance"]
        put("GCC", gcc, sp_why)
        if "crw" in self.b:
            def crw() -> float:
                (mr, er), (mg, eg) = ref.get("crw", lambda: self.crw_mean(ref)), gen.get("crw", lambda: self.crw_mean(gen))
                if er or eg:
                    raise PrismAudioError(er or eg)
                return (mr - mg) ** 2 * 1000.0
            put("CRW", crw, sp_why)

        def kl() -> float:
            from .distribution import kl_per_clip

            (lg, eg), (lr, er) = gen.get("logits", lambda: self.logits(gen)), ref.get("logits", lambda: self.logits(ref))
            if eg or er:
                raise PrismAudioError(eg or er)
            return float(kl_per_clip(lg[0], lr[0], inputs=lg[1])[0])
        put("KL", kl, silent or (ref_why if ref is None or ref.silent else None))
        if not gen.silent:
            emb, err = gen.get("embed", lambda: self.embed(gen))
            if err:
                reasons["FD"] = err
        if self.include_gt and scene:
            self.gt_measures(gen, scene, m, reasons)
        return m, emb

    def gt_measures(self, gen: _Clip, scene: dict, m: dict[str, float], reasons: dict[str, str]) -> None:
        from .groundtruth import (
            class_recall,
            itd_error,
            onset_errors,
            onset_summary,
            side_accuracy,
        )

        x = gen.audio.numpy()
        # Nearest detected onset per true event, searched within 1 s; an event with none counts as
        # ONSET_CAP_MS (a miss must worsen the clip's median, not vanish from it).
        meas = onset_errors(x, gen.sr, scene, radius_ms=ONSET_CAP_MS)
        if meas.reason:
            m["onset_ms"], reasons["onset_ms"] = NAN, meas.reason
        else:
            errs = [e if math.isfinite(e) else ONSET_CAP_MS for e in meas.value]
            m["onset_ms"] = onset_summary(errs)["median_ms"]
        for name, fn in (("side_acc", side_accuracy), ("itd_err_ms", itd_error)):
            r = fn(x, gen.sr, scene)
            m[name] = NAN if r.value is None else float(r.value)
            if r.reason:
                reasons[name] = r.reason
        cl = self.recall_classifier()
        if gen.silent:
            m["class_recall"], reasons["class_recall"] = NAN, "silent audio"
        elif cl is None:
            m["class_recall"], reasons["class_recall"] = NAN, self._recall_reason or "no classifier"
        else:
            post = torch.as_tensor(cl.posteriors(gen.audio[None], gen.sr))[0]
            pred = [n for n, p in zip(cl.class_names, post.tolist()) if p > 0.5]
            r = class_recall(pred, scene)
            m["class_recall"] = NAN if r.reason else float(r.value)
            if r.reason:
                reasons["class_recall"] = r.reason


# ---------------------------------------------------------------------------------- evaluate
def evaluate(
    manifest: str | os.PathLike,
    generated: Mapping[str, str | os.PathLike],
    judges: str = "offline",
    real_config: Mapping[str, Any] | None = None,
    split: str | None = "test",
    limit: int | None = None,
    spatial_mode: str = "paper",
    bewo_frame_stride: int = 1,
    include_gt: bool = True,
    progress: bool = True,
    judges_dir: str | os.PathLike | None = None,
) -> tuple[Report, EvalResults]:
    """Evaluate GT and every generated system over the manifest's `split` ("all" / None: every row).

    `generated` maps a system name to its folder. `judges_dir` overrides the offline judges'
    folder (default `$PRISMAUDIO_JUDGES` or the shipped ``judges`` asset). Returns the report and the
    per-clip values (`EvalResults`).
    """
    from tqdm import tqdm

    from ..data.manifest import read_manifest
    from ..io.video import read_frames
    from .distribution import frechet_distance
    from .judges import FPS
    from .semantic import semantic_text

    if spatial_mode not in ("bewo", "paper"):
        raise PrismAudioError(f"spatial mode must be 'bewo' or 'paper', got {spatial_mode!r}")
    if int(bewo_frame_stride) < 1:
        raise PrismAudioError(f"bewo frame stride must be >= 1, got {bewo_frame_stride}")
    if limit is not None and int(limit) < 1:
        raise PrismAudioError(f"limit must be a positive integer, got {limit}")
    rows, problems = read_manifest(manifest)
    for p in problems:
        log.warning("manifest: %s", p)
    if split not in (None, "all"):
        rows = [r for r in rows if r.split == split]
    if limit is not None:
        rows = rows[: int(limit)]
    if not rows:
        raise PrismAudioError(f"no clip of split {split!r} in manifest {manifest}")
    systems: dict[str, Path | None] = {GT: None}
    for name, folder in generated.items():
        if name == GT:
            raise PrismAudioError(f"system name {GT!r} is reserved for the reference audio")
        p = Path(folder)
        if not p.is_dir():
            raise PrismAudioError(f"generated folder not found: {p}")
        systems[str(name)] = p

    backends = build_backends(judges, real_config, judges_dir)
    ev = _Evaluator(backends, spatial_mode, bewo_frame_stride, include_gt, judges_dir)
    frame_size = int(getattr(ev.b["desync"], "frame_size", getattr(ev.b["desync"], "size", 224)))
    res = EvalResults()
    for s in systems:
        res[s], res.reasons[s], res.missing[s] = [], {}, []
    embeds: dict[str, list[tuple[str, Tensor]]] = {s: [] for s in systems}
    ref_embeds: list[tuple[str, Tensor]] = []

    for row in tqdm(rows, desc="evaluate", unit="clip", disable=not progress):
        subset = row.subset or "unspecified"
        ref: _Clip | None = None
        ref_reason = None
        if row.audio is None:
            ref_reason = "the manifest row has no reference audio"
        else:
            try:
                ref = _Clip(*_load(row.audio))
            except PrismAudioError as e:
                ref_reason = f"reference audio: {e}"
        if ref_reason:
            log.warning("clip %s: %s", row.id, ref_reason)
        try:
            frames, frames_reason = read_frames(row.video, FPS, frame_size), None
        except PrismAudioError as e:
            frames, frames_reason = None, f"video: {e}"
        text = semantic_text(row.caption, row.cot)
        if ref is not None and not ref.silent:
            e, _ = ref.get("embed", lambda r=ref: ev.embed(r))
            if e is not None:
                ref_embeds.append((subset, e))
        for system, folder in systems.items():
            reasons: dict[str, str] = {}
            clip: dict[str, Any] = {"id": row.id, "subset": row.subset}
            if system == GT:
                gen, why = ref, ref_reason
            else:
                path = find_generated(folder, row.id)
                gen, why = None, None
                if path is None:
                    why = f"missing generated file {folder / (row.id + '.wav')} (.wav/.flac/.mp3)"
                    res.missing[system].append(row.id)
                else:
                    try:
                        gen = _Clip(*_load(path))
                    except PrismAudioError as e:
                        why = f"cannot read generated file: {e}"
            if gen is None:
                for k in ("CLAP", "DeSync", "PQ", "PC", "GCC", "KL") + (("CRW",) if "crw" in ev.b else ()):
                    clip[k] = NAN
                    reasons[k] = why or "no audio"
            else:
                metrics, emb = ev.clip_metrics(gen, ref, frames, frames_reason, text, row.scene, reasons)
                clip.update(metrics)
                if emb is not None:
                    embeds[system].append((subset, emb))
            res[system].append(clip)
            if reasons:
                res.reasons[system][row.id] = reasons

    # FD per subset (set level)
    subsets = ["all"] + sorted({s for s, _ in ref_embeds} | {s for v in embeds.values() for s, _ in v})
    for system in systems:
        res.set_level[system] = {}
        for sub in subsets:
            g = [e for s, e in embeds[system] if sub == "all" or s == sub]
            r = [e for s, e in ref_embeds if sub == "all" or s == sub]
            fd = NAN
            if len(g) >= 2 and len(r) >= 2:
                try:
                    fd = frechet_distance(torch.stack(g), torch.stack(r))
                except PrismAudioError as e:
                    log.warning("FD %s/%s: %s", system, sub, e)
            res.set_level[system][sub] = {"FD": fd}
    for system, ids in res.missing.items():
        if ids:
            log.warning("system %s: %d of %d generated file(s) missing (their metrics are NaN)",
                        system, len(ids), len(rows))

    modes = {"CLAP": ev.names["clap"], "DeSync": ev.names["desync"]}
    for k in ("PQ", "PC", "CE", "CU"):
        if k in ev.aes_axes or k in ("PQ", "PC"):
            modes[k] = ev.names["aesthetics"]
    modes["GCC"] = spatial_mode if spatial_mode == "paper" or bewo_frame_stride == 1 else \
        f"bewo, frame stride {bewo_frame_stride}"
    if "crw" in ev.b:
        modes["CRW"] = ev.names["crw"]
    modes["FD"] = ev.names["embedder"]
    modes["KL"] = ev.names["classifier"]
    res.modes = modes
    report = build_report(dict(res), res.set_level, modes=modes, gt_name=GT)
    return report, res


def load_real_config(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON or YAML file mapping roles to {"backend": NAME, **params}."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise PrismAudioError(f"cannot read real config {p}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise PrismAudioError(f"real config {p} is not valid JSON/YAML: {e}") from None
    if not isinstance(data, dict):
        raise PrismAudioError(f"real config {p} must be a mapping of roles to backends")
    return data


def summary_lines(res: EvalResults) -> list[str]:
    """Short human-readable notes: missing files and the most frequent NaN reasons per system."""
    out = []
    for system, ids in res.missing.items():
        if ids:
            out.append(f"{system}: {len(ids)} generated file(s) missing: {', '.join(ids[:5])}"
                       + (" ..." if len(ids) > 5 else ""))
    for system, per in res.reasons.items():
        counts: dict[str, int] = {}
        for reasons in per.values():
            for metric, why in reasons.items():
                key = f"{metric}: {why.split(':')[0] if why.startswith('missing') else why}"
                counts[key] = counts.get(key, 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:4]
        if top:
            out.append(f"{system}: NaN values -- " + "; ".join(f"{k} ({n})" for k, n in top))
    return out


__all__ = ["EvalResults", "build_backends", "evaluate", "find_generated", "load_real_config", "summary_lines"]
