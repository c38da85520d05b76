"""`prismaudio evaluate`: the paper's table (CLAP, DeSync, PQ/PC/CE/CU, GCC, CRW, FD, KL) plus the
procedural benchmark's ground-truth measures, for the ground truth ("GT") and generated systems.

Per clip of the manifest's split and per system (a folder of ``<id>.wav`` / ``.flac`` / ``.mp3``,
or "GT" = the row's reference audio):

* ``CLAP``: clap backend cosine with the row's caption (else the CoT's semantic part).
* ``DeSync``: desync backend on the row's video frames at 25 fps (first / last 4.8 s windows), decoded as
  the backend asks (`frame_spec()`: native frames for Synchformer, which resizes and crops them itself).
* ``PQ``, ``PC`` (and ``CE``, ``CU`` when the aesthetics backend has them).
* ``GCC``: ``bewo`` mode: ``(mean ITD_ref - mean ITD_gen)^2 x 1000`` (seconds^2 x 1000) per file
  with BEWO's 100-window track (`itd_track_bewo`), so the column mean is exactly BEWO's GCC MSE
  (`gcc_mse_bewo`); ``paper`` mode: `gcc_distribution_distance_paper` (ms^2 + ms).
* ``CRW``: the same per-file BEWO formula with a crw backend's track (only when one is configured).
* ``KL``: ``KL(p_ref || p_gen)`` of the classifier's softmax posteriors, per clip (`kl_per_clip`).
* ``FD``: set level, per subset: Fréchet distance between the embeddings of the system's valid clips
  and the reference embeddings of the same subset (both sets need >= 2 clips, else n/a); the cell
  shows the number of generated clips it was computed over.
* With a scene graph (``include_gt``): ``onset_ms`` (median |onset error| of the clip's events; an event without a
  detected onset within 1 s counts as 1,000 ms),
  ``side_acc``, ``itd_err_ms``, ``class_recall`` (offline semantic judge posteriors > 0.5).

Backends: ``judges="offline"`` uses the offline judges (no crw); ``judges="real"`` the backends of a
real config (`real_config`: one ``{backend, path, ...}`` per role). A configured backend whose file
is absent or fails to load is reported once (one log line) and its columns are n/a; a role the
config does not name uses its offline judge, and one log line says so. The report's headers name
every column's backend.

Nothing here crashes on one bad clip: every value is NaN with its reason (kept per clip and
grouped in the report's notes). A missing generated file, audio that is empty, holds NaN / Inf
samples, is shorter than `MIN_AUDIO_S` or is silent, gives NaN in every column; mono audio makes the
spatial measures NaN; a wrong sample rate is resampled by each backend. Each audio file is decoded
once per system and each video once per clip. The report's statistics skip NaN values (its ``n``
counts the valid clips).

Output (`prepare_output` / `write_outputs`): ``PREFIX.md``, ``PREFIX.json`` and ``PREFIX.clips.jsonl``,
checked writable before the work and published all together or not at all.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import PrismAudioError
from .real_config import ROLES, BackendSpec, RealConfig, parse_real_config
from .real_config import load_real_config as _load_real_config
from .report import UNAVAILABLE, Report, build_report

log = logging.getLogger(__name__)

NAN = float("nan")
GT = "GT"
AUDIO_EXTS = (".wav", ".flac", ".mp3")
OFFLINE_BACKENDS = {"clap": "judge_clap", "desync": "judge_sync", "aesthetics": "judge_quality",
                    "embedder": "judge_embedder", "classifier": "judge_classifier"}
JUDGE_KIND = {"judge_clap": "semantic", "judge_sync": "sync", "judge_quality": "quality",
              "judge_embedder": "semantic", "judge_classifier": "semantic"}
ONSET_CAP_MS = 1000.0
MIN_AUDIO_S = 0.1  # shorter clips get NaN: below the shortest analysis window (GCC's 0.1 s segments)
GT_METRICS = ("onset_ms", "side_acc", "itd_err_ms", "class_recall")
OUTPUT_SUFFIXES = (".md", ".json", ".clips.jsonl")


class EvalResults(dict):
    """``{system: [clip dict, ...]}`` (the input of `build_report`: "id", "subset", METRIC: value)
    with the details: ``reasons[system][clip_id][metric]`` (why a value is NaN), ``missing[system]``
    (clip ids without a generated file), ``set_level`` (FD per subset, ``{"value", "n"}``),
    ``fd_counts[system][subset]`` (generated / reference clips FD used), ``modes`` and ``backends``
    (per role: backend name, status, reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[str, dict[str, dict[str, str]]] = {}
        self.missing: dict[str, list[str]] = {}
        self.set_level: dict[str, dict[str, dict[str, Any]]] = {}
        self.fd_counts: dict[str, dict[str, dict[str, Any]]] = {}
        self.modes: dict[str, str] = {}
        self.backends: dict[str, dict[str, Any]] = {}


# ------------------------------------------------------------------------------- backends
@dataclass
class BackendSet:
    """role -> built backend (None when unavailable), its name, and why the unavailable ones are."""

    objs: dict[str, Any] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    fallback: list[str] = field(default_factory=list)  # roles the real config left to offline judges

    def status(self) -> dict[str, dict[str, Any]]:
        out = {}
        for role, name in self.names.items():
            st = "unavailable" if role in self.unavailable else "offline fallback" if role in self.fallback else "ok"
            out[role] = {"backend": name, "status": st, "reason": self.unavailable.get(role)}
        return out


ROLE_COLUMNS = {"clap": ("CLAP",), "desync": ("DeSync",), "aesthetics": ("PQ", "PC", "CE", "CU"),
                "crw": ("CRW",), "embedder": ("FD",), "classifier": ("KL",)}


def _check_spec(role: str, spec: BackendSpec) -> None:
    """Config mistakes (unknown backend, wrong role, unknown parameter) are errors, not n/a columns.
    A known backend whose module cannot be imported passes here and is reported unavailable."""
    from .backends import backend_params, backend_role, is_known

    if not is_known(spec.backend):
        backend_role(spec.backend)  # raises: unknown backend, naming the known ones
    try:
        actual = backend_role(spec.backend)
    except PrismAudioError:
        return  # cannot import its adapter: unavailable (see build_backends)
    if actual != role:
        raise PrismAudioError(f"real config {spec.where or role}: backend {spec.backend!r} plays the "
                              f"{actual!r} role, not {role!r}")
    accepted = backend_params(spec.backend)
    unknown = sorted(set(spec.params) - accepted) if accepted is not None else []
    if unknown:
        raise PrismAudioError(f"real config {spec.where or role}: backend {spec.backend!r}: unknown parameter(s) "
                              f"{unknown}; accepted: {sorted(accepted or ())}")


def build_backends(judges: str = "offline", real_config: RealConfig | Mapping[str, Any] | None = None,
                   judges_dir: str | os.PathLike | None = None) -> BackendSet:
    """The backends of an evaluation. ``offline``: the offline judges (a missing judge is an error).
    ``real``: each role of `real_config`, built and loaded now; one whose file is absent or fails to
    load is logged once and left out (its columns are n/a); roles it does not name use the offline
    judges (logged once)."""
    from .backends import build_backend, preload

    if judges not in ("offline", "real"):
        raise PrismAudioError(f"judges must be 'offline' or 'real', got {judges!r}")
    cfg = parse_real_config(real_config) if real_config is not None else RealConfig()
    if judges == "offline" and (cfg.roles or cfg.rewards):
        log.warning("judges='offline': the real config is ignored")
    specs: dict[str, BackendSpec] = {r: BackendSpec(n, {}, r) for r, n in OFFLINE_BACKENDS.items()}
    out = BackendSet()
    if judges == "real":
        for role, spec in cfg.roles.items():
            _check_spec(role, spec)
            specs[role] = spec
        out.fallback = [r for r in OFFLINE_BACKENDS if r not in cfg.roles]
        if out.fallback:
            log.warning("the real config names no backend for %s: using the offline judge(s) %s",
                        ", ".join(out.fallback), ", ".join(OFFLINE_BACKENDS[r] for r in out.fallback))
    for role in ROLES:
        if role not in specs:
            continue
        spec = specs[role]
        params = dict(spec.params)
        if spec.backend in JUDGE_KIND and judges_dir is not None and "path" not in params:
            params["path"] = str(Path(judges_dir) / JUDGE_KIND[spec.backend])
        out.names[role] = spec.backend
        if judges == "offline":
            out.objs[role] = build_backend(spec.backend, **params)
            continue
        try:
            obj = build_backend(spec.backend, **params)
            preload(obj)
            out.objs[role] = obj
        except Exception as e:  # noqa: BLE001 - a missing / broken checkpoint: n/a columns, said once
            why = str(e) if isinstance(e, PrismAudioError) else f"{type(e).__name__}: {e}"
            out.unavailable[role] = " ".join(why.split())
            out.objs[role] = None
            log.warning("%s backend %s unavailable, its column(s) %s are n/a: %s", role, spec.backend,
                        "/".join(ROLE_COLUMNS[role]), out.unavailable[role])
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


def _f(x: Any) -> float:
    return float(torch.as_tensor(x).detach().cpu().double().reshape(-1)[0])


def audio_problem(x: Tensor, sr: int) -> str | None:
    """Why a decoded clip [C, S] cannot be measured at all (every column NaN), or None."""
    if x.numel() == 0:
        return "empty audio (0 samples)"
    if not bool(torch.isfinite(x).all()):
        return "non-finite audio (NaN/Inf samples)"
    if x.shape[-1] < MIN_AUDIO_S * sr:
        return f"audio shorter than {MIN_AUDIO_S:g} s (the shortest window the metrics analyse)"
    if float(x.abs().max()) <= 1e-6:
        return "silent audio"
    return None


class _Clip:
    """Everything derived from one decoded audio clip that other clips/systems reuse."""

    def __init__(self, audio: Tensor, sr: int) -> None:
        self.audio, self.sr = audio, sr
        self.problem = audio_problem(audio, sr)
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
    def __init__(self, backends: BackendSet, spatial_mode: str, bewo_frame_stride: int,
                 include_gt: bool, judges_dir: str | os.PathLike | None,
                 bewo_cache_dir: str | os.PathLike | None = None) -> None:
        from .bewo_cache import BewoTrackCache

        self.bewo_cache = BewoTrackCache(bewo_cache_dir)  # reference tracks: once per content (and run)
        self.bs = backends
        self.b = backends.objs
        self.names = backends.names
        self.spatial_mode, self.stride, self.include_gt = spatial_mode, int(bewo_frame_stride), include_gt
        self.judges_dir = judges_dir
        self._recall: Any = None
        self._recall_reason: str | None = None
        self.aes_axes: list[str] = ["PQ", "PC"] if self.names.get("aesthetics") == "judge_quality" \
            else ["PQ", "PC", "CE", "CU"]

    def missing(self, role: str) -> str | None:
        """The NaN reason of a role's columns when its backend is unavailable, else None."""
        if role in self.bs.unavailable:
            return f"{UNAVAILABLE}: {role} ({self.names[role]})"
        return None

    def columns(self, scene: Any) -> list[str]:
        cols = ["CLAP", "DeSync", *self.aes_axes, "GCC", *(["CRW"] if "crw" in self.b else []), "KL"]
        return cols + (list(GT_METRICS) if self.include_gt and scene else [])

    # ---- per-audio features (reused between the reference and the systems)
    def bewo_mean(self, c: _Clip) -> float:
        return float(torch.nanmean(self.bewo_cache.track(c.audio, c.sr, frame_stride=self.stride)))

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
        emb = torch.as_tensor(fn(c.audio[None], c.sr)).detach().cpu().double()[0]
        if not bool(torch.isfinite(emb).all()):
            raise PrismAudioError("the embedder returned a non-finite embedding")
        return emb

    def recall_classifier(self) -> Any:
        if self._recall is None and self._recall_reason is None:
            cl = self.b.get("classifier")
            if self.names.get("classifier") == "judge_classifier" and cl is not None:
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
        if gen.problem:
            for k in self.columns(scene):
                m[k], reasons[k] = NAN, gen.problem
            return m, None

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

        a, sr = gen.audio[None], gen.sr
        put("CLAP", lambda: _f(self.b["clap"].score(a, sr, [text])),
            self.missing("clap") or (None if text else "no caption or semantic CoT"))
        put("DeSync", lambda: _f(self.b["desync"].desync(frames[None], a, sr)),
            self.missing("desync") or (frames_reason if frames is None else None))
        why = self.missing("aesthetics")
        scores: dict[str, Any] = {}
        if why is None:
            try:
                scores = dict(self.b["aesthetics"].score(a, sr))
            except Exception as e:  # noqa: BLE001
                why = f"{type(e).__name__}: {e}"
        for k in scores:
            if k not in self.aes_axes:
                self.aes_axes.append(k)
        for k in self.aes_axes:
            put(k, lambda k=k: _f(scores[k]), why or (None if k in scores else f"the backend has no {k} axis"))
        # spatial (and KL): need the reference
        ref_why = None
        if ref is None:
            ref_why = "no reference audio"
        elif ref.problem:
            ref_why = f"reference: {ref.problem}"
        sp_why = ("mono audio has no interaural time difference" if not gen.stereo else None) or ref_why
        if sp_why is None and not ref.stereo:
            sp_why = "mono reference audio has no ITD"
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
            put("CRW", crw, self.missing("crw") or sp_why)

        def kl() -> float:
            from .distribution import kl_per_clip

            (lg, eg), (lr, er) = gen.get("logits", lambda: self.logits(gen)), ref.get("logits", lambda: self.logits(ref))
            if eg or er:
                raise PrismAudioError(eg or er)
            return float(kl_per_clip(lg[0], lr[0], inputs=lg[1])[0])
        put("KL", kl, self.missing("classifier") or ref_why)
        emb = None
        if self.b.get("embedder") is not None:
            emb, err = gen.get("embed", lambda: self.embed(gen))
            if err:
                reasons["FD"] = err
        if self.include_gt and scene:
            self.gt_measures(gen, scene, m, reasons)
        return m, emb

    def gt_measures(self, gen: _Clip, scene: dict, m: dict[str, float], reasons: dict[str, str]) -> None:
        from .groundtruth import class_recall, itd_error, onset_errors, onset_summary, side_accuracy

        x = gen.audio.numpy()

        def guarded(name: str, fn) -> None:
            try:
                value, why = fn()
            except Exception as e:  # noqa: BLE001 - a measure that cannot run is NaN with its reason
                value, why = None, f"{type(e).__name__}: {e}"
            m[name] = NAN if value is None else float(value)
            if why:
                reasons[name] = why
            elif not math.isfinite(m[name]):
                reasons[name] = "not finite"

        def onset() -> tuple[float | None, str | None]:
            # Nearest detected onset per true event, searched within 1 s; an event with none counts as
            # ONSET_CAP_MS (a miss must worsen the clip's median, not vanish from it).
            meas = onset_errors(x, gen.sr, scene, radius_ms=ONSET_CAP_MS)
            if meas.reason:
                return None, meas.reason
            errs = [e if math.isfinite(e) else ONSET_CAP_MS for e in meas.value]
            return onset_summary(errs)["median_ms"], None

        def simple(fn):
            def run() -> tuple[float | None, str | None]:
                r = fn(x, gen.sr, scene)
                return r.value, r.reason
            return run

        def recall() -> tuple[float | None, str | None]:
            cl = self.recall_classifier()
            if cl is None:
                return None, self._recall_reason or "no classifier"
            post = torch.as_tensor(cl.posteriors(gen.audio[None], gen.sr))[0]
            r = class_recall([n for n, p in zip(cl.class_names, post.tolist()) if p > 0.5], scene)
            return (None, r.reason) if r.reason else (r.value, None)

        guarded("onset_ms", onset)
        guarded("side_acc", simple(side_accuracy))
        guarded("itd_err_ms", simple(itd_error))
        guarded("class_recall", recall)


# ---------------------------------------------------------------------------------- evaluate
def evaluate(
    manifest: str | os.PathLike,
    generated: Mapping[str, str | os.PathLike],
    judges: str = "offline",
    real_config: RealConfig | Mapping[str, Any] | None = None,
    split: str | None = "test",
    limit: int | None = None,
    spatial_mode: str = "bewo",
    bewo_frame_stride: int = 1,
    bewo_cache_dir: str | os.PathLike | None = None,
    include_gt: bool = True,
    progress: bool = True,
    judges_dir: str | os.PathLike | None = None,
) -> tuple[Report, EvalResults]:
    """Evaluate GT and every generated system over the manifest's `split` ("all" / None: every row).

    `generated` maps a system name to its folder. `judges_dir` overrides the offline judges'
    folder (default `$PRISMAUDIO_JUDGES` or the shipped ``judges`` asset). Returns the report
    (with the notes: backends, FD counts, grouped NaN reasons) and the per-clip values (`EvalResults`).
    """
    from tqdm import tqdm

    from ..data.manifest import read_manifest
    from ..io.video import read_frames_multi
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
    ev = _Evaluator(backends, spatial_mode, bewo_frame_stride, include_gt, judges_dir, bewo_cache_dir)
    desync = ev.b.get("desync")
    # what the desync backend decodes: its own `frame_spec()` (the Synchformer adapter: native uint8 frames at
    # 25 fps, resized / cropped by its protocol), else square frames of its `frame_size` / `size`
    frame_spec = desync.frame_spec() if callable(getattr(desync, "frame_spec", None)) else \
        (FPS, int(getattr(desync, "frame_size", getattr(desync, "size", 224))))
    res = EvalResults()
    res.backends = backends.status()
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
        frames, frames_reason = None, ev.missing("desync")
        if desync is not None:
            try:
                frames, frames_reason = read_frames_multi(row.video, [frame_spec])[0], None
            except PrismAudioError as e:
                frames, frames_reason = None, f"video: {e}"
        text = semantic_text(row.caption, row.cot)
        if ref is not None and not ref.problem and ev.b.get("embedder") is not None:
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
                for k in ev.columns(row.scene):
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

    # FD per subset (set level), over the valid clips of each side
    subsets = ["all"] + sorted({s for s, _ in ref_embeds} | {s for v in embeds.values() for s, _ in v})
    n_rows = {sub: sum(1 for r in rows if sub == "all" or (r.subset or "unspecified") == sub) for sub in subsets}
    for system in systems:
        res.set_level[system], res.fd_counts[system] = {}, {}
        for sub in subsets:
            g = [e for s, e in embeds[system] if sub == "all" or s == sub]
            r = [e for s, e in ref_embeds if sub == "all" or s == sub]
            fd, why = NAN, ev.missing("embedder")
            if why is None and (len(g) < 2 or len(r) < 2):
                why = f"FD needs >= 2 valid clips on each side (generated {len(g)}, reference {len(r)})"
            elif why is None:
                try:
                    fd = frechet_distance(torch.stack(g), torch.stack(r))
                except PrismAudioError as e:
                    why = str(e)
            if not math.isfinite(fd) and len(g) >= 2 and len(r) >= 2 and ev.missing("embedder") is None:
                log.warning("FD %s/%s: %s", system, sub, why)
            res.set_level[system][sub] = {"FD": {"value": fd, "n": len(g)}}
            res.fd_counts[system][sub] = {"n": len(g), "n_reference": len(r), "n_clips": n_rows[sub], "reason": why}
    for system, ids in res.missing.items():
        if ids:
            log.warning("system %s: %d of %d generated file(s) missing (their metrics are NaN)",
                        system, len(ids), len(rows))

    def mode(role: str) -> str:
        name = ev.names[role]
        return f"{name}, unavailable" if role in backends.unavailable else name

    modes = {"CLAP": mode("clap"), "DeSync": mode("desync")}
    for k in ev.aes_axes:
        modes[k] = mode("aesthetics")
    modes["GCC"] = spatial_mode if spatial_mode == "paper" or bewo_frame_stride == 1 else \
        f"bewo, frame stride {bewo_frame_stride}"
    if "crw" in ev.b:
        modes["CRW"] = mode("crw")
    modes["FD"] = mode("embedder")
    modes["KL"] = mode("classifier")
    res.modes = modes
    report = build_report(dict(res), res.set_level, modes=modes, gt_name=GT)
    report.notes = report_notes(res)
    return report, res


def load_real_config(path: str | os.PathLike) -> RealConfig:
    """A YAML / JSON file mapping roles to {"backend": NAME, **params} (see `real_config`)."""
    return _load_real_config(path)


# ---------------------------------------------------------------------------------- reasons
def reason_groups(res: EvalResults) -> dict[str, list[dict[str, Any]]]:
    """Every NaN reason per system, grouped: ``[{"reason", "metrics", "clips", "n_clips"}]``, most
    clips first. A reason that names its clip (a file path) is grouped with the clip id as ``<id>``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for system, per in res.reasons.items():
        groups: dict[str, dict[str, Any]] = {}
        for clip_id, reasons in per.items():
            for metric, why in reasons.items():
                key = why.replace(str(clip_id), "<id>") if clip_id else why
                g = groups.setdefault(key, {"reason": key, "metrics": [], "clips": []})
                if metric not in g["metrics"]:
                    g["metrics"].append(metric)
                if clip_id not in g["clips"]:
                    g["clips"].append(clip_id)
        rows = sorted(groups.values(), key=lambda g: (-len(g["clips"]), g["reason"]))
        for g in rows:
            g["n_clips"] = len(g["clips"])
        if rows:
            out[system] = rows
    return out


def report_notes(res: EvalResults) -> dict[str, Any]:
    """The report's notes: backend status, FD clip counts, grouped NaN reasons (JSON-ready)."""
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return {
        "backends": res.backends,
        "fd": {s: {sub: {k: clean(v) for k, v in c.items()} for sub, c in per.items()}
               for s, per in res.fd_counts.items()},
        "nan_reasons": reason_groups(res),
    }


def summary_lines(res: EvalResults) -> list[str]:
    """Human-readable notes: FD over fewer clips than evaluated, and EVERY NaN reason per system
    (grouped, with its clip count and columns). Unavailable backends are not repeated here (they were
    reported once when loading)."""
    out = []
    for system, per in res.fd_counts.items():
        c = per.get("all")
        if c and c["n"] < c["n_clips"] and c["reason"] is None:
            out.append(f"{system}: FD over {c['n']} of {c['n_clips']} clips (reference: {c['n_reference']})")
    for system, groups in reason_groups(res).items():
        for g in groups:
            if g["reason"].startswith(UNAVAILABLE):
                continue
            out.append(f"{system}: NaN -- {g['reason']} -- {g['n_clips']} clip(s): {', '.join(g['metrics'])}")
    return out


# ---------------------------------------------------------------------------------- output
def output_paths(prefix: str | os.PathLike) -> list[Path]:
    """PREFIX.md, PREFIX.json, PREFIX.clips.jsonl."""
    out = Path(prefix)
    if not out.name or out.name in (".", ".."):
        raise PrismAudioError(f"--out {prefix!r}: expected a file prefix such as results/table")
    return [out.parent / (out.name + s) for s in OUTPUT_SUFFIXES]


def prepare_output(prefix: str | os.PathLike) -> Path:
    """Check, before any work, that the three outputs can be written (`io.files.check_output_dir` on
    their folder: no file on its way, a file can be created there; none of the outputs is a folder),
    create the folder and sweep what a killed earlier run left there. Returns the prefix."""
    from ..io.files import check_output_dir, sweep_stale

    paths = output_paths(prefix)
    folder = paths[0].parent
    for p in paths:
        if p.is_dir():
            raise PrismAudioError(f"--out {prefix}: {p} is a directory")
    check_output_dir(folder, "--out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrismAudioError(f"--out {prefix}: cannot create {folder} ({e.strerror or e})") from None
    sweep_stale(folder)
    return Path(prefix)


def _clip_rows(results: Mapping[str, list[dict[str, Any]]]) -> str:
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return "".join(json.dumps({"system": system, **{k: clean(v) for k, v in clip.items()}}) + "\n"
                   for system, clips in results.items() for clip in clips)


def write_outputs(prefix: str | os.PathLike, report: Report, results: Mapping[str, list[dict[str, Any]]]) -> list[Path]:
    """Write PREFIX.md, PREFIX.json and PREFIX.clips.jsonl all-or-nothing: all three are staged in a
    hidden folder beside them (same filesystem) and renamed into place only when every write
    succeeded; earlier versions are kept aside and restored if a rename fails. An OS error (a full
    disk) is one `PrismAudioError` and leaves none of the new files."""
    paths = output_paths(prefix)
    folder = paths[0].parent
    texts = [report.to_markdown(), json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n",
             _clip_rows(results)]
    from ..io.files import STAGING_PREFIX

    try:  # the name carries our pid: `io.files.sweep_stale` removes it if we are killed
        stage = Path(tempfile.mkdtemp(dir=folder, prefix=f"{STAGING_PREFIX}{os.getpid()}-"))
    except OSError as e:
        raise PrismAudioError(f"cannot write the report in {folder}: {e.strerror or e}") from None
    moved: list[tuple[Path, Path | None]] = []  # (published, its previous version kept in stage)
    try:
        staged = []
        for p, text in zip(paths, texts):
            tmp = stage / p.name
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            staged.append(tmp)
        for p, tmp in zip(paths, staged):
            old = None
            if p.exists():
                old = stage / f"{p.name}.previous"
                os.replace(p, old)
            moved.append((p, old))
            os.replace(tmp, p)
    except OSError as e:
        for p, old in reversed(moved):
            try:
                if p.exists():
                    p.unlink()
                if old is not None:
                    os.replace(old, p)
            except OSError:
                pass
        raise PrismAudioError(f"cannot write the report {paths[0].with_suffix('')}.*: "
                              f"{e.strerror or e}; nothing was written") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return paths


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parse_generated(items: list[str]) -> dict[str, str]:
    """``[NAME=]DIR`` items -> {name: dir}; NAME defaults to the folder's name."""
    out: dict[str, str] = {}
    for item in items:
        name, eq, folder = item.partition("=")
        if not eq or not name or os.sep in name or Path(item).is_dir():
            name, folder = Path(item.rstrip("/\\")).name, item
        if not folder:
            raise PrismAudioError(f"--generated {item!r}: expected [NAME=]DIR")
        if name in out:
            raise PrismAudioError(f"--generated: system name {name!r} given twice")
        out[name] = folder
    return out


def run_cli(args: argparse.Namespace) -> int:
    """The body of ``prismaudio evaluate`` (the CLI's `cmd_evaluate` calls it): checks, output
    location, evaluation, all-or-nothing writes, the table on stdout and the notes on stderr
    (--quiet: no progress bar and no notes; warnings still go to stderr)."""
    if args.limit is not None and args.limit <= 0:
        raise PrismAudioError(f"--limit must be a positive integer, got {args.limit}")
    if args.bewo_frame_stride <= 0:
        raise PrismAudioError(f"--bewo-frame-stride must be a positive integer, got {args.bewo_frame_stride}")
    if args.real_config and args.judges != "real":
        raise PrismAudioError("--real-config needs --judges real")
    if args.judges == "real" and not args.real_config:
        raise PrismAudioError("--judges real needs --real-config FILE (see configs/eval/real.yaml)")
    # warnings (an unavailable backend, said once) reach stderr also with --quiet, as in every command
    logging.basicConfig(level=logging.WARNING, format="prismaudio: warning: %(message)s")
    real = load_real_config(args.real_config) if args.real_config else None
    generated = parse_generated(args.generated)
    prefix = prepare_output(args.out)  # before the work
    report, results = evaluate(
        args.manifest, generated, judges=args.judges, real_config=real,
        split=None if args.split == "all" else args.split, limit=args.limit, spatial_mode=args.spatial_mode,
        bewo_frame_stride=args.bewo_frame_stride, include_gt=not args.no_gt, progress=not args.quiet,
        judges_dir=args.judges_dir, bewo_cache_dir=args.bewo_cache,
    )
    write_outputs(prefix, report, results)
    print(report.to_markdown())
    if not args.quiet:
        for line in summary_lines(results):
            print(f"prismaudio: note: {line}", file=sys.stderr)
    return 0


__all__ = ["MIN_AUDIO_S", "BackendSet", "EvalResults", "audio_problem", "build_backends", "evaluate",
           "find_generated", "load_real_config", "output_paths", "parse_generated", "prepare_output", "reason_groups",
           "report_notes", "run_cli", "summary_lines", "write_outputs"]
