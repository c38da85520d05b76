"""Training data for the stages: decoded once from a corpus manifest, or read from extracted features.

From a manifest (`data.manifest`): decoding video on a CPU costs far more than a training step of
the mini model, so every clip is decoded exactly once: frames at each light encoder's (fps, size)
kept as uint8, the frozen VAE's latent (one fixed posterior sample per clip, seeded by clip id like
`data/extract.py`) and the frozen text encoder's features (computed once per unique text). The
result can be persisted to `data.cache_dir` as one safetensors file keyed by everything it depends
on, so a resumed or repeated run skips decoding. Broken manifest rows and undecodable clips are
skipped and reported.

From features (`data.features`, the official recipe for frozen encoders at scale): the per-clip
files of `prismaudio extract`, read lazily (a real corpus's features need not fit in memory), after
checking that every file was made with this model's encoders and VAE and with this stage's text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from ..data.datasets import ClipDataset, feature_path, fit_length, list_feature_ids, read_feature_file, read_feature_meta
from ..data.manifest import ManifestRow, read_manifest
from ..data.text import clip_seed, condition_text, stage_style
from ..errors import PrismAudioError
from ..harness.config import DataConfig
from ..io.files import atomic_path
from ..io.weights import fingerprint
from ..resources import world_module

Log = Callable[[str], None]
CACHE_FORMAT = "prismaudio-train-data-2"


# ------------------------------------------------------------------------------ rows + text
def load_rows(cfg: DataConfig, log: Log) -> list[ManifestRow]:
    """Manifest rows of the configured split (bad rows reported, then skipped)."""
    path = Path(cfg.manifest)
    if path.is_dir():
        path = path / "manifest.jsonl"
    rows, problems = read_manifest(path)
    for p in problems:
        log(f"skipping bad manifest row: {p}")
    if cfg.split is not None:
        rows = [r for r in rows if r.split == cfg.split]
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if not rows:
        raise PrismAudioError(f"no usable clips of split {cfg.split!r} in {path}")
    return rows


def render_text(row: ManifestRow, stage: str, variant: str, seed: int) -> str:
    """The text condition of one clip: the caption (foundation) or the CoT variant (stage cot);
    see `data.text.condition_text` for the styles."""
    return condition_text(row, stage_style(stage, variant), seed)


# ------------------------------------------------------------------------------ datasets
class AudioClips(Dataset):
    """Stage 0 items: {"audio": [A, S] float32} (the stage crops randomly from it)."""

    def __init__(self, audio: Tensor, ids: Sequence[str]) -> None:
        self.audio = audio
        self.ids = list(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"audio": self.audio[i]}


@dataclass
class FlowClips(Dataset):
    """Stage 1-2 items: uint8 frames for both encoders, the latent and the text features."""

    video: Tensor  # uint8 [M, Tv, 3, s, s]
    sync: Tensor  # uint8 [M, Ts, 3, s, s]
    latent: Tensor  # float32 [M, C, N]
    text_index: Tensor  # long [M] -> texts
    texts: list[Tensor]  # unique texts' features [Li, Dt]
    text_strings: list[str]
    ids: list[str]
    duration: float
    pairs: "EditPairs | None" = None  # add / remove pairs of the audio-context tasks (issue 18)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"video": self.video[i], "sync": self.sync[i], "latent": self.latent[i],
                "text": self.texts[int(self.text_index[i])]}
        if self.pairs is not None:
            item.update(self.pairs.item(i, self.texts))
        return item


@dataclass
class EditPairs:
    """Per clip, its mixes without one source (latents) for the add / remove context tasks.

    Pair p belongs to clip `clip[p]`: `latent[p]` is that clip without source `source[p]`,
    audible over latent frames [region[p, 0], region[p, 1]), and `text_index[p]` is the text of
    that mix (the CoT written for the scene without the source: the remove task's target).
    """

    latent: Tensor  # float32 [P, C, N]
    clip: Tensor  # long [P]
    source: Tensor  # long [P]
    region: Tensor  # long [P, 2] latent frames
    text_index: Tensor  # long [P] -> FlowClips.texts
    max_pairs: int  # K: the most pairs of one clip (items are padded to it)
    by_clip: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.by_clip:
            self.by_clip = [[] for _ in range(int(self.clip.max()) + 1 if len(self.clip) else 0)]
            for p, c in enumerate(self.clip.tolist()):
                self.by_clip[c].append(p)

    def item(self, i: int, texts: list[Tensor]) -> dict[str, Tensor]:
        """{"pair_latent" [K, C, N], "pair_region" [K, 2], "pair_count" [], "pair_text" [K, L, Dt]}."""
        ps = self.by_clip[i] if i < len(self.by_clip) else []
        k = max(1, self.max_pairs)
        c, n = self.latent.shape[1:]
        lat = torch.zeros(k, c, n)
        reg = torch.zeros(k, 2, dtype=torch.long)
        feats = [texts[int(self.text_index[p])] for p in ps]
        dt = texts[0].shape[-1]
        text = torch.zeros(k, max([f.shape[0] for f in feats] + [1]), dt)
        for j, p in enumerate(ps):
            lat[j], reg[j] = self.latent[p], self.region[p]
            text[j, : feats[j].shape[0]] = feats[j]
        return {"pair_latent": lat, "pair_region": reg, "pair_count": torch.tensor(len(ps)), "pair_text": text}


def collate_flow(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack a batch; text features are zero-padded to the longest (MiniLM pads with zeros too)."""
    texts = [it["text"] for it in items]
    padded = texts[0].new_zeros(len(texts), max(t.shape[0] for t in texts), texts[0].shape[-1])
    for i, t in enumerate(texts):
        padded[i, : t.shape[0]] = t
    out = {k: torch.stack([it[k] for it in items]) for k in ("video", "sync", "latent")}
    out["text"] = padded
    if "pair_latent" in items[0]:
        for k in ("pair_latent", "pair_region", "pair_count"):
            out[k] = torch.stack([it[k] for it in items])
        pt = [it["pair_text"] for it in items]
        text = pt[0].new_zeros(len(pt), pt[0].shape[0], max(t.shape[1] for t in pt), pt[0].shape[-1])
        for i, t in enumerate(pt):
            text[i, :, : t.shape[1]] = t
        out["pair_text"] = text
    return out


# ------------------------------------------------------------------------------ building
def _to_uint8(frames: Tensor) -> Tensor:
    if frames.dtype == torch.uint8:  # native frames of an encoder that takes them as decoded
        return frames
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8)


def _cache_key(rows: Sequence[ManifestRow], parts: dict[str, Any]) -> str:
    h = hashlib.sha1(json.dumps(parts, sort_keys=True).encode())
    for r in rows:
        for p in (r.video, r.audio):
            if p is not None and Path(p).exists():
                st = Path(p).stat()
                h.update(f"{r.id}:{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def build_audio_clips(rows: Sequence[ManifestRow], sample_rate: int, duration: float, log: Log) -> AudioClips:
    """Decode each clip's reference audio once (no frames)."""
    ds = ClipDataset(rows, sample_rate, duration, video_specs=[])
    audio, ids = [], []
    for i, row in enumerate(rows):
        try:
            audio.append(ds[i]["audio"])
            ids.append(row.id)
        except PrismAudioError as e:
            log(f"skipping clip: {e}")
    if not audio:
        raise PrismAudioError("every clip failed to decode; nothing to train on")
    return AudioClips(torch.stack(audio), ids)


@torch.no_grad()
def build_flow_clips(pipe: Any, rows: Sequence[ManifestRow], cfg: DataConfig, stage: str, variant: str,
                     log: Log, pairs_seed: int | None = None) -> FlowClips:
    """Decode, encode (frozen VAE, frozen text encoder) and keep everything in memory.

    The cache holds only what is expensive and text-independent (frames, latents), so the
    foundation stage, every CoT variant and GRPO share one decode of the corpus; the text
    features (a few seconds of MiniLM) are recomputed per run. With `pairs_seed` (the corpus's
    synth seed; the audio-context stage) the add / remove pairs are built too (`build_edit_pairs`),
    cached beside it under the same key.
    """
    c = pipe.config
    duration = float(cfg.duration if cfg.duration is not None else c.duration)
    specs = [pipe.video_encoder.frame_spec(), pipe.sync_encoder.frame_spec()]
    key_parts = {"format": CACHE_FORMAT, "duration": duration, "specs": specs, "sr": c.sample_rate,
                 "data_seed": cfg.seed, "vae": fingerprint(pipe.vae), "ids": [r.id for r in rows]}
    cache = Path(cfg.cache_dir) / f"flow-{_cache_key(rows, key_parts)}.safetensors" if cfg.cache_dir else None
    clips = _read_cache(cache) if cache is not None and cache.is_file() else None
    if clips is not None:
        log(f"loaded {len(clips[3])} clips from the data cache {cache}")
    else:
        clips = _decode_clips(pipe, rows, cfg, duration, log)
        if cache is not None:
            _write_cache(cache, clips, log)
    video, sync, latent, ids = clips
    by_id = {r.id: r for r in rows}
    keep, strings = [], []
    for i, clip_id in enumerate(ids):
        try:
            strings.append(render_text(by_id[clip_id], stage, variant, cfg.seed))
        except PrismAudioError as e:
            log(f"skipping clip: {e}")
            continue
        keep.append(i)
    if not keep:
        raise PrismAudioError("no clip has the text this stage needs; nothing to train on")
    if len(keep) < len(ids):
        sel = torch.tensor(keep)
        video, sync, latent, ids = video[sel], sync[sel], latent[sel], [ids[i] for i in keep]
    pair_parts = None
    if pairs_seed is not None:
        pair_cache = cache.with_name(f"pairs-s{pairs_seed}-{cache.name[len('flow-'):]}") if cache is not None else None
        # built over every decoded clip (the cache is shared by all stages), then mapped onto this stage's clips
        lat, pair_ids, src, region = build_edit_pairs(pipe, [by_id[i] for i in clips[3]], duration, cfg.seed,
                                                      pairs_seed, pair_cache, log)
        pos = {clip_id: i for i, clip_id in enumerate(ids)}
        sel = [p for p, clip_id in enumerate(pair_ids) if clip_id in pos]
        index = torch.tensor(sel, dtype=torch.long)
        pair_parts = (lat[index], torch.tensor([pos[pair_ids[p]] for p in sel], dtype=torch.long), src[index],
                      region[index])
        pair_texts = []
        for p_clip, p_src in zip(pair_parts[1].tolist(), pair_parts[2].tolist()):
            pair_texts.append(render_text(_row_without(by_id[ids[p_clip]], p_src, pairs_seed), stage, variant, cfg.seed))
        strings_all = strings + pair_texts
    else:
        strings_all = strings
    unique = sorted(set(strings_all))
    feats = []
    for start in range(0, len(unique), 32):
        hidden, lengths = pipe.text_encoder.encode_text(unique[start : start + 32])
        feats += [h[: int(n)].float().clone() for h, n in zip(hidden, lengths)]
    position = {s: i for i, s in enumerate(unique)}
    index = torch.tensor([position[s] for s in strings], dtype=torch.long)
    pairs = None
    if pair_parts is not None:
        lat, clip, src, region = pair_parts
        counts = torch.bincount(clip, minlength=len(ids)) if len(clip) else torch.zeros(len(ids), dtype=torch.long)
        pairs = EditPairs(lat, clip, src, region, torch.tensor([position[s] for s in pair_texts], dtype=torch.long),
                          int(counts.max()) if len(clip) else 0)
    return FlowClips(video, sync, latent, index, feats, unique, ids, duration, pairs)


# ------------------------------------------------------------------------------ edit pairs (issue 18)
PAIRS_FORMAT = "prismaudio-edit-pairs-2"
Pairs = tuple[Tensor, list[str], Tensor, Tensor]  # latent [P, C, N], clip id per pair, source [P], region [P, 2]


def _row_without(row: ManifestRow, source: int, corpus_seed: int) -> ManifestRow:
    """The row of a clip's scene without source `source`: its caption and CoT rewritten by the
    corpus's own writer on the clip's text RNG (the remove task's target text)."""
    write_cot = world_module("prismaudio.procedural.synth.cot").write_cot
    clip_index = world_module("prismaudio.procedural.synth.pairs").clip_index
    clip_rngs = world_module("prismaudio.procedural.synth.scene").clip_rngs

    assert row.scene is not None
    scene = dict(row.scene)
    scene["sources"] = [s for j, s in enumerate(row.scene["sources"]) if j != source]
    cap, cot, mono = write_cot(scene, clip_rngs(corpus_seed, clip_index(row.id))[2])
    return dataclasses.replace(row, caption=cap, cot=cot, cot_monolithic=mono)


@torch.no_grad()
def build_edit_pairs(pipe: Any, rows: Sequence[ManifestRow], duration: float, data_seed: int, corpus_seed: int,
                     cache: Path | None, log: Log) -> Pairs:
    """For every clip of a procedural corpus with two or more sources, each source left out
    (`procedural.synth.pairs.render_pairs`), encoded by the frozen VAE with the clip's own latent
    noise (so target and context latents differ only through the source). Clips that cannot be
    re-rendered (no scene graph, another sample rate, or a WAV that the re-render does not match:
    a corpus of another seed) are reported and get no pairs."""
    if cache is not None and cache.is_file():
        got = _read_pairs(cache)
        if got is not None:
            log(f"loaded {len(got[1])} edit pairs from the data cache {cache}")
            return got
    from ..io.audio import load_audio
    pairs_module = world_module("prismaudio.procedural.synth.pairs")  # the corpus plugin, by name
    clip_index, render_pairs = pairs_module.clip_index, pairs_module.render_pairs

    c = pipe.config
    n_lat = c.latent_length(duration)
    ratio = pipe.vae.downsampling_ratio
    lat, clip, src, region = [], [], [], []
    skipped: list[str] = []
    for i, row in enumerate(rows):
        scene = row.scene
        if not scene or len(scene.get("sources", [])) < 2 or row.audio is None:
            continue
        try:
            if int(scene["sample_rate"]) != c.sample_rate:
                raise PrismAudioError(f"its sample rate {scene['sample_rate']} Hz is not the model's {c.sample_rate} Hz")
            full, pairs = render_pairs(scene, corpus_seed, clip_index(row.id))
            wav, _ = load_audio(row.audio, None, full.shape[0])
            if wav.shape[-1] != full.shape[-1] or float((wav - torch.from_numpy(full)).abs().max()) > 1.5 / 32767:
                raise PrismAudioError(f"its WAV is not the scene rendered with corpus seed {corpus_seed}")
        except (PrismAudioError, KeyError, TypeError, ValueError) as e:
            skipped.append(f"{row.id}: {e}")
            continue
        audio = torch.stack([fit_length(torch.from_numpy(p.audio), n_lat * ratio) for p in pairs])
        mean, std = pipe.vae.encode_moments(audio.to(next(pipe.vae.parameters()).device))
        gen = torch.Generator().manual_seed(clip_seed(data_seed, row.id))
        eps = torch.randn(mean[0].shape, generator=gen)  # the clip's own latent noise (`_decode_clips`)
        z = (mean.cpu() + std.cpu() * eps) / c.vae.latent_scale
        for p, zk in zip(pairs, z):
            a, b = p.region
            lat.append(zk.contiguous())
            clip.append(row.id)
            src.append(p.index)
            region.append([min(n_lat, a // ratio), min(n_lat, -(-b // ratio))])
    if skipped:
        log(f"no add/remove pairs for {len(skipped)} clip(s), e.g. {skipped[0]}")
    if lat:
        out: Pairs = (torch.stack(lat), clip, torch.tensor(src), torch.tensor(region, dtype=torch.long))
    else:
        out = (torch.zeros(0, c.dit.io_channels, n_lat), [], torch.zeros(0, dtype=torch.long),
               torch.zeros(0, 2, dtype=torch.long))
    log(f"edit pairs: {len(out[1])} mixes without one source from {len(set(clip))} clip(s)")
    if cache is not None:
        tensors = {"latent": out[0], "source": out[2], "region": out[3]}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache) as tmp:
                save_file({k: v.contiguous() for k, v in tensors.items()}, tmp,
                          metadata={"format": PAIRS_FORMAT, "clips": json.dumps(out[1])})
        except (OSError, PrismAudioError) as e:
            log(f"warning: could not write the data cache {cache}: {e}")
    return out


def _read_pairs(path: Path) -> Pairs | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != PAIRS_FORMAT:
                return None
            t = {k: f.get_tensor(k).clone() for k in ("latent", "source", "region")}
        clips = json.loads(meta["clips"])
        if not isinstance(clips, list) or len(clips) != len(t["source"]):
            return None
        return t["latent"], [str(c) for c in clips], t["source"], t["region"]
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError):
        return None


Decoded = tuple[Tensor, Tensor, Tensor, list[str]]  # video uint8, sync uint8, latent, ids


def _decode_clips(pipe: Any, rows: Sequence[ManifestRow], cfg: DataConfig, duration: float, log: Log) -> Decoded:
    c = pipe.config
    n_lat = c.latent_length(duration)
    ratio = pipe.vae.downsampling_ratio
    specs = [pipe.video_encoder.frame_spec(), pipe.sync_encoder.frame_spec()]
    ds = ClipDataset(rows, c.sample_rate, duration, specs, channels=c.vae.audio_channels)
    video, sync, latent, ids = [], [], [], []
    for i, row in enumerate(rows):
        try:
            item = ds[i]
        except PrismAudioError as e:
            log(f"skipping clip {row.id!r}: {e}" if row.id not in str(e) else f"skipping clip: {e}")
            continue
        audio = fit_length(item["audio"], n_lat * ratio).unsqueeze(0)
        mean, std = pipe.vae.encode_moments(audio)
        gen = torch.Generator().manual_seed(clip_seed(cfg.seed, row.id))
        z = mean[0] + std[0] * torch.randn(mean[0].shape, generator=gen)
        scale = c.vae.latent_scale
        latent.append((z / scale if scale != 1.0 else z).contiguous())
        video.append(_to_uint8(item["frames"][0]))
        sync.append(_to_uint8(item["frames"][1]))
        ids.append(row.id)
    if not ids:
        raise PrismAudioError("every clip failed to decode; nothing to train on")
    return torch.stack(video), torch.stack(sync), torch.stack(latent), ids


def _write_cache(path: Path, clips: Decoded, log: Log) -> None:
    video, sync, latent, ids = clips
    tensors = {"video": video, "sync": sync, "latent": latent}
    meta = {"format": CACHE_FORMAT, "ids": json.dumps(ids)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata=meta)
    except (OSError, PrismAudioError) as e:  # a cache is an optimisation: warn, never fail the run
        log(f"warning: could not write the data cache {path}: {e}")


def _read_cache(path: Path) -> Decoded | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                return None
            t = {k: f.get_tensor(k).clone() for k in ("video", "sync", "latent")}
        return t["video"], t["sync"], t["latent"], json.loads(meta["ids"])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError):
        return None  # unreadable cache: rebuild it


# ------------------------------------------------------------------------------ extracted features
class FeatureClips(Dataset):
    """Flow-stage items from `prismaudio extract` files: the encoders' outputs instead of frames.

    Item: {"video_features" [Tv, Dv], "sync_features" [Ts, Ds], "latent" [C, N], "text" [L, Dt],
    "index" (position in `ids`)}; each file is read when its item is asked for.
    """

    def __init__(self, root: Path, ids: Sequence[str], duration: float) -> None:
        self.root = root
        self.ids = list(ids)
        self.duration = duration

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        t, _ = read_feature_file(feature_path(self.root, self.ids[i]))
        return {"video_features": t["video_features"], "sync_features": t["sync_features"], "latent": t["latent"],
                "text": t["text_features"], "index": torch.tensor(i)}


def collate_features(items: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Stack a batch of `FeatureClips` items; text features zero-padded to the longest."""
    out = collate_flow([{"video": it["video_features"], "sync": it["sync_features"], "latent": it["latent"],
                         "text": it["text"]} for it in items])
    out["video_features"], out["sync_features"] = out.pop("video"), out.pop("sync")
    out["index"] = torch.stack([it["index"] for it in items])
    return out


def build_feature_clips(pipe: Any, cfg: DataConfig, stage: str, variant: str, log: Log) -> FeatureClips:
    """Check an extracted set against this model and stage, then index it (no tensor is read yet).

    Refused as a whole: files made with other encoder / VAE weights (`model_hash`) or another text
    encoder, or with another text than this stage conditions on (`cot_field`). Skipped and
    reported: unreadable files, clips whose text fell back to another source (e.g. a clip with no
    CoT in a `multi` set), clips of another split or duration.
    """
    from ..data.extract import FeatureModels

    root = Path(cfg.features or "")
    style = stage_style(stage, variant)
    models = FeatureModels.from_pipeline(pipe)
    expect = {"model_hash": models.fingerprint(), "text_encoder": models.names()["text_encoder"], "cot_field": style}
    ids, durations = [], []
    for clip_id in list_feature_ids(root):
        try:
            meta = read_feature_meta(feature_path(root, clip_id))
        except PrismAudioError as e:
            log(f"skipping clip: {e}")
            continue
        wrong = [k for k, v in expect.items() if meta.get(k) != v]
        if wrong:
            k = wrong[0]
            raise PrismAudioError(
                f"feature file {feature_path(root, clip_id)} has {k} {meta.get(k)!r}, this run needs {expect[k]!r}: "
                + ("extract with this model (`prismaudio extract --model ...`)" if k != "cot_field"
                   else f"extract with `--cot-field {style}` for stage {stage!r}"))
        if meta.get("text_source") != style:
            log(f"skipping clip {clip_id!r}: its text is the {meta.get('text_source')!r}, not the {style!r}")
            continue
        if cfg.split is not None and meta.get("split") != cfg.split:
            continue
        ids.append(clip_id)
        durations.append(float(meta["duration"]))
    if not ids:
        raise PrismAudioError(f"no usable feature files of split {cfg.split!r} in {root}")
    duration = float(cfg.duration) if cfg.duration is not None else durations[0]
    keep = [i for i, d in zip(ids, durations) if abs(d - duration) < 1e-9]
    if len(keep) < len(ids):
        log(f"skipping {len(ids) - len(keep)} clip(s) whose duration is not {duration:g} s (a batch needs one length)")
    if cfg.limit is not None:
        keep = keep[: cfg.limit]
    if not keep:
        raise PrismAudioError(f"no feature file in {root} has duration {duration:g} s")
    return FeatureClips(root, keep, duration)
