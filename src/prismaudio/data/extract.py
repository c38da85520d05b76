"""Pre-extract training features: one safetensors file per clip, resumable and crash-safe.

`<out>/<id>.safetensors` holds (float32, batch axis removed):

* `video_features` [Tv, Dv], `sync_features` [Ts, Ds] - the raw video / sync encoder tokens,
* `text_features` [L, Dt] (trimmed to the text's real length) and `text_length` [1] int64,
* `latent_mean`, `latent_std`, `latent` [C, N] - the VAE posterior of the reference audio and one
  sample z = mean + std * eps, eps from a generator seeded by (seed, clip id), so a clip's latent
  does not depend on batching or order. N = `config.latent_length(duration)` (the audio is cropped
  or zero-padded to N * downsampling samples). All three are already divided by `latent_scale`.

Metadata (strings): format, version, id, duration, sample_rate, preset, model_hash (of the
trainable encoder and VAE weights), video_encoder / sync_encoder / text_encoder, cot_field,
text_source, text, cot (JSON), caption, split, subset, seed, latent_length, audio_length.

A file is written to a hidden temp name and renamed (`os.replace`), so a killed run never leaves a
partial `<id>.safetensors`; on the next run, files that exist and load completely with the same
model and text settings are skipped, anything else (truncated, foreign, other model) is recomputed.
Rows whose video/audio is missing or corrupt are reported in the summary and never get a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..encoders.base import Encoder
from ..errors import PrismAudioError
from ..io.files import atomic_path, sweep_stale
from ..io.weights import fingerprint
from .datasets import (
    FEATURE_FORMAT,
    FEATURE_VERSION,
    ClipDataset,
    feature_path,
    fit_length,
    read_feature_file,
)
from .manifest import ManifestRow, read_manifest
from .text import clip_seed, condition_text

PathLike = str | os.PathLike
COT_FIELDS = ("multi", "monolithic", "caption", "none")


# ------------------------------------------------------------------------------- CoT text
def render_cot_text(row: ManifestRow, style: str = "multi") -> tuple[str, str]:
    """(text for the text encoder, its source) for one clip, rendered by `data.text.condition_text`
    (the training stages' and generation's renderer), with fallbacks so every clip gets a text:

    * "multi": the four CoT modules as `CoT.render("multi")` (four labelled lines); falls back to
      `cot_monolithic`, then `caption`.
    * "monolithic": `cot_monolithic`, falling back to the caption.
    * "caption": the caption. "none": "" (unconditioned text).
    The source is "multi", "monolithic", "caption" or "none" (what was actually used).
    """
    if style not in COT_FIELDS:
        raise PrismAudioError(f"unknown cot_field {style!r} (choose from {', '.join(COT_FIELDS)})")
    for source in {"multi": ("multi", "monolithic", "caption"), "monolithic": ("monolithic", "caption"),
                   "caption": ("caption",), "none": ("none",)}[style]:
        try:
            text = condition_text(row, source)
        except PrismAudioError:
            continue
        if text or source == "none":
            return text, source
    return "", "none"


# ------------------------------------------------------------------------------- models
@dataclass
class FeatureModels:
    """What extraction needs: the three encoders, the VAE and the audio rate."""

    video: Encoder
    sync: Encoder
    text: Encoder
    vae: torch.nn.Module
    sample_rate: int
    preset: str = "custom"
    max_duration: float | None = None

    @classmethod
    def from_pipeline(cls, pipe: Any) -> FeatureModels:
        pipe._require_encoders()
        c = pipe.config
        return cls(pipe.video_encoder, pipe.sync_encoder, pipe.text_encoder, pipe.vae, c.sample_rate, c.preset, c.max_duration)

    def latent_length(self, duration: float) -> int:
        return max(1, round(self.sample_rate / self.vae.downsampling_ratio * duration))

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def names(self) -> dict[str, str]:
        return {f"{k}_encoder": _encoder_name(getattr(self, k)) for k in ("video", "sync", "text")}

    def fingerprint(self) -> str:
        """Hash of the weights that shape the features (trainable encoders + VAE) and the encoder names."""
        return fingerprint(self.video, self.sync, self.vae, extra=[self.preset, self.sample_rate, self.names()])


def _encoder_name(enc: Encoder) -> str:
    return type(enc).__name__


# ------------------------------------------------------------------------------- summary
@dataclass
class ExtractSummary:
    done: list[str] = field(default_factory=list)
    skipped_existing: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    problems: list[str] = field(default_factory=list)  # manifest rows that could not be parsed

    def line(self) -> str:
        s = f"extracted {len(self.done)}, skipped {len(self.skipped_existing)} existing, failed {len(self.failed)}"
        if self.problems:
            s += f", {len(self.problems)} bad manifest row(s)"
        return s


def _is_done(path: Path, expect: dict[str, str]) -> bool:
    """True when `path` is a complete feature file made with the same model and text settings."""
    if not path.is_file():
        return False
    try:
        _, meta = read_feature_file(path)
    except PrismAudioError:
        return False
    return all(meta.get(k) == v for k, v in expect.items())


# ------------------------------------------------------------------------------- extraction
def extract_features(
    manifest: PathLike | Sequence[ManifestRow],
    out_dir: PathLike,
    pipeline: Any = None,
    *,
    models: FeatureModels | None = None,
    batch_size: int = 8,
    progress: bool = True,
    cot_field: str = "multi",
    duration: float | None = None,
    seed: int = 0,
) -> ExtractSummary:
    """Extract features for every clip of `manifest` (a path or rows) into `out_dir`.

    Give either a `PrismAudioPipeline` or `models` (encoders + VAE). `duration` fixes every clip's
    length (default: the row's `duration`, else the video's). Clips are decoded one by one and
    encoded in batches of up to `batch_size` clips of equal length. Never raises for a bad clip:
    see `ExtractSummary.failed`.
    """
    if (pipeline is None) == (models is None):
        raise PrismAudioError("give exactly one of a pipeline or FeatureModels to extract_features")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PrismAudioError(f"batch size must be a positive integer, got {batch_size!r}")
    if cot_field not in COT_FIELDS:
        raise PrismAudioError(f"unknown cot_field {cot_field!r} (choose from {', '.join(COT_FIELDS)})")
    m = models if models is not None else FeatureModels.from_pipeline(pipeline)
    summary = ExtractSummary()
    if isinstance(manifest, (str, os.PathLike)):
        rows, summary.problems = read_manifest(manifest)
    else:
        rows = list(manifest)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PrismAudioError(f"cannot create output directory {out}: {e.strerror or e}") from None
    sweep_stale(out)  # temp files a killed run left behind
    expect = {"format": FEATURE_FORMAT, "version": FEATURE_VERSION, "model_hash": m.fingerprint(), "cot_field": cot_field}
    data = ClipDataset(
        rows, m.sample_rate, duration, [m.video.frame_spec(), m.sync.frame_spec()],
        channels=m.vae.cfg.audio_channels, max_duration=m.max_duration,
    )
    from tqdm import tqdm

    bar = tqdm(total=len(rows), desc="extract", unit="clip", disable=not progress)
    pending: list[tuple[ManifestRow, dict[str, Any]]] = []
    try:
        for i, row in enumerate(rows):
            if _is_done(feature_path(out, row.id), expect):
                summary.skipped_existing.append(row.id)
            else:
                try:
                    pending.append((row, data[i]))
                except PrismAudioError as e:
                    summary.failed.append((row.id, str(e)))
                if len(pending) >= batch_size:
                    _flush(pending, m, out, expect, cot_field, seed, summary)
                    pending = []
            bar.update(1)
            bar.set_postfix(done=len(summary.done), failed=len(summary.failed), refresh=False)
        _flush(pending, m, out, expect, cot_field, seed, summary)
    finally:
        bar.close()
    return summary


@torch.no_grad()
def _flush(
    pending: list[tuple[ManifestRow, dict[str, Any]]], m: FeatureModels, out: Path, expect: dict[str, str],
    cot_field: str, seed: int, summary: ExtractSummary,
) -> None:
    """Encode decoded clips, grouped by equal shapes, and write one file per clip."""
    groups: dict[tuple, list[tuple[ManifestRow, dict[str, Any]]]] = {}
    for row, item in pending:
        key = (tuple(tuple(f.shape) for f in item["frames"]), tuple(item["audio"].shape))
        groups.setdefault(key, []).append((row, item))
    for group in groups.values():
        try:
            tensors = _encode_group(group, m, cot_field)
        except PrismAudioError as e:
            summary.failed.extend((row.id, f"encoding failed: {e}") for row, _ in group)
            continue
        for (row, item), (feats, text, source) in zip(group, tensors):
            feats = _sample_latent(feats, seed, row.id)
            meta = dict(expect)
            meta.update(m.names())
            meta.update(
                id=row.id, duration=repr(float(item["duration"])), sample_rate=str(m.sample_rate), preset=m.preset,
                text=text, text_source=source, cot=json.dumps(row.cot) if row.cot else "", caption=row.caption,
                split=row.split or "", subset=row.subset or "", seed=str(int(seed)),
                latent_length=str(feats["latent"].shape[-1]), audio_length=str(int(item["audio_length"])),
            )
            path = feature_path(out, row.id)
            try:
                with atomic_path(path) as tmp:
                    save_file(feats, tmp, metadata=meta)
            except (OSError, PrismAudioError) as e:
                summary.failed.append((row.id, f"cannot write {path}: {e}"))
                continue
            summary.done.append(row.id)


def _encode_group(
    group: list[tuple[ManifestRow, dict[str, Any]]], m: FeatureModels, cot_field: str
) -> list[tuple[dict[str, Tensor], str, str]]:
    dev = m.device
    fv = torch.stack([item["frames"][0] for _, item in group]).to(dev)
    fs = torch.stack([item["frames"][1] for _, item in group]).to(dev)
    video = m.video(fv).float().cpu()
    sync = m.sync(fs).float().cpu()
    rendered = [render_cot_text(row, cot_field) for row, _ in group]
    hidden, lengths = m.text.encode_text([t for t, _ in rendered])
    hidden, lengths = hidden.float().cpu(), lengths.long().cpu()
    n = m.latent_length(group[0][1]["duration"])
    audio = torch.stack([item["audio"] for _, item in group]).to(dev)
    audio = fit_length(audio, n * m.vae.downsampling_ratio)
    mean, std = m.vae.encode_moments(audio)
    scale = float(m.vae.cfg.latent_scale)
    mean, std = (mean / scale).float().cpu(), (std / scale).float().cpu()
    results = []
    for i, (text, source) in enumerate(rendered):
        length = int(lengths[i])
        feats = {
            "video_features": video[i].contiguous(),
            "sync_features": sync[i].contiguous(),
            "text_features": hidden[i, :length].contiguous(),
            "text_length": torch.tensor([length], dtype=torch.long),
            "latent_mean": mean[i].contiguous(),
            "latent_std": std[i].contiguous(),
        }
        results.append((feats, text, source))
    return results


def _sample_latent(feats: dict[str, Tensor], seed: int, clip_id: str) -> dict[str, Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(clip_seed(seed, clip_id))
    eps = torch.randn(feats["latent_mean"].shape, generator=gen, dtype=torch.float32)
    feats["latent"] = (feats["latent_mean"] + feats["latent_std"] * eps).contiguous()
    return feats
