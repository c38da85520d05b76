"""ClipDataset / FeatureDataset and resumable, crash-safe feature extraction on tiny clips."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from prismaudio.data.datasets import ClipDataset, FeatureDataset, read_feature_file
from prismaudio.data.extract import (
    FeatureModels,
    extract_features,
    render_cot_text,
)
from prismaudio.data.manifest import ManifestRow, read_manifest
from prismaudio.errors import PrismAudioError
from prismaudio.pipeline import PrismAudioPipeline

SR = 16000
COT = {"semantic": "a drum", "temporal": "hits on the beat", "aesthetic": "punchy", "spatial": "center"}


def make_video(path: Path, seconds: float = 1.0, fps: int = 10, size: int = 32) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.time_base = Fraction(1, fps)
        for i in range(round(seconds * fps)):
            img = np.full((size, size, 3), (i * 23) % 256, dtype=np.uint8)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def make_wav(path: Path, seconds: float, sr: int = SR, channels: int = 2, freq: float = 440.0) -> Path:
    t = np.arange(round(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    sf.write(str(path), np.stack([x] * channels, axis=1).astype(np.float32), sr)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A manifest folder: 3 good clips (audio short / exact / long, one at 22.05 kHz mono), a clip with a
    missing video, one with a corrupt video, one with a missing audio file, and a broken JSON line."""
    root = tmp_path_factory.mktemp("clips")
    (root / "v").mkdir()
    (root / "a").mkdir()
    rows = []
    for i, (secs, sr, ch) in enumerate([(0.5, SR, 2), (1.0, 22050, 1), (1.5, SR, 2)]):
        make_video(root / "v" / f"c{i}.mp4")
        make_wav(root / "a" / f"c{i}.wav", secs, sr, ch)
        rows.append({"id": f"c{i}", "video": f"v/c{i}.mp4", "audio": f"a/c{i}.wav", "split": "train", "subset": "single",
                     "duration": 1.0, "caption": f"drum {i}", "cot": COT, "cot_monolithic": "A punchy drum.", "scene": {}})
    (root / "v" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    rows.append({"id": "missing", "video": "v/nope.mp4", "audio": "a/c0.wav", "duration": 1.0})
    rows.append({"id": "corrupt", "video": "v/corrupt.mp4", "audio": "a/c0.wav", "duration": 1.0})
    rows.append({"id": "noaudio", "video": "v/c0.mp4", "audio": "a/none.wav", "duration": 1.0})
    lines = [json.dumps(r) for r in rows] + ["{broken"]
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def tiny() -> PrismAudioPipeline:
    return PrismAudioPipeline.from_preset("tiny", seed=1)


def test_render_cot_text() -> None:
    row = ManifestRow(id="x", video=Path("x.mp4"), caption="a drum", cot=COT, cot_monolithic="mono")
    text, src = render_cot_text(row, "multi")
    assert text == "Semantic: a drum\nTemporal: hits on the beat\nAesthetic: punchy\nSpatial: center" and src == "multi"
    assert render_cot_text(row, "monolithic") == ("mono", "monolithic")
    assert render_cot_text(row, "caption") == ("a drum", "caption")
    assert render_cot_text(row, "none") == ("", "none")
    bare = ManifestRow(id="y", video=Path("y.mp4"), caption="cap")
    assert render_cot_text(bare, "multi") == ("cap", "caption")
    with pytest.raises(PrismAudioError, match="cot_field"):
        render_cot_text(row, "bogus")


def test_clip_dataset_pads_crops_and_resamples(clips: Path) -> None:
    rows, problems = read_manifest(clips / "manifest.jsonl")
    assert len(rows) == 6 and len(problems) == 1
    ds = ClipDataset(rows[:3], SR, 1.0, [(8.0, 32), (25.0, 16)])
    short, mono, long = ds[0], ds[1], ds[2]
    for item in (short, mono, long):
        assert item["audio"].shape == (2, SR)
        assert [tuple(f.shape) for f in item["frames"]] == [(8, 3, 32, 32), (25, 3, 16, 16)]
        assert item["cot"] == COT and item["duration"] == 1.0
    assert short["audio_length"] == SR // 2
    assert short["audio"][:, SR // 2:].abs().max() == 0 and short["audio"][:, : SR // 2].abs().max() > 0.4
    assert mono["audio_length"] == SR and torch.equal(mono["audio"][0], mono["audio"][1])
    assert long["audio_length"] == SR and long["audio"][:, -100:].abs().max() > 0.1
    half = ClipDataset(rows[:1], SR, 0.5, [(8.0, 32)])[0]
    assert half["audio"].shape == (2, SR // 2) and half["frames"][0].shape[0] == 4
    ds_bad = ClipDataset(rows[3:], SR, 1.0, [(8.0, 32)])
    for i, what in enumerate(["not found", "corrupt", "not found"]):
        with pytest.raises(PrismAudioError, match=what):
            ds_bad[i]
    no_track = ManifestRow(id="silent", video=rows[0].video)  # no audio file: the video's track, absent here
    with pytest.raises(PrismAudioError, match="'silent'.*no audio stream"):
        ClipDataset([no_track], SR, 1.0, [(8.0, 32)])[0]


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}


def test_extract_resume_and_recovery(clips: Path, tiny: PrismAudioPipeline, tmp_path: Path) -> None:
    out = tmp_path / "feats"
    s = extract_features(clips / "manifest.jsonl", out, tiny, batch_size=2, progress=False)
    assert sorted(s.done) == ["c0", "c1", "c2"] and s.skipped_existing == []
    assert sorted(i for i, _ in s.failed) == ["corrupt", "missing", "noaudio"]
    assert len(s.problems) == 1 and "bad JSON" in s.problems[0]
    assert sorted(p.name for p in out.iterdir()) == ["c0.safetensors", "c1.safetensors", "c2.safetensors"]

    cfg = tiny.config
    t, meta = read_feature_file(out / "c0.safetensors")
    assert t["video_features"].shape == (8, 32) and t["sync_features"].shape == (25, 32)
    n = int(t["text_length"][0])
    assert t["text_features"].shape == (n, 384) and n > 10
    assert t["latent"].shape == t["latent_mean"].shape == (cfg.vae.latent_dim, cfg.latent_length(1.0))
    assert not torch.equal(t["latent"], t["latent_mean"])
    assert meta["preset"] == "tiny" and float(meta["duration"]) == 1.0 and meta["text"].startswith("Semantic: a drum\nTemporal:")
    assert meta["audio_length"] == str(SR // 2)

    # batching does not change the features; the sampled latent is seeded per clip
    one = tmp_path / "one"
    extract_features(clips / "manifest.jsonl", one, tiny, batch_size=1, progress=False)
    t1, _ = read_feature_file(one / "c0.safetensors")
    for k in t:
        torch.testing.assert_close(t[k], t1[k], atol=1e-4, rtol=1e-4)
    direct = tiny.extract_features(clips / "v" / "c0.mp4", meta["text"], 1.0)
    torch.testing.assert_close(t["video_features"], direct.video[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t["text_features"], direct.text[0, :n], atol=1e-4, rtol=1e-4)

    # second run: nothing recomputed
    before = _mtimes(out)
    s2 = extract_features(clips / "manifest.jsonl", out, tiny, batch_size=2, progress=False)
    assert s2.done == [] and sorted(s2.skipped_existing) == ["c0", "c1", "c2"] and len(s2.failed) == 3
    assert _mtimes(out) == before

    # simulated kill -9: a stray temp file and a truncated c1; c1 is recomputed, the rest kept
    (out / ".c2.abc123.part.safetensors").write_bytes(b"partial")
    good, good_meta = read_feature_file(out / "c1.safetensors")
    data = (out / "c1.safetensors").read_bytes()
    (out / "c1.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PrismAudioError):
        read_feature_file(out / "c1.safetensors")
    s3 = extract_features(clips / "manifest.jsonl", out, tiny, batch_size=2, progress=False)
    assert s3.done == ["c1"] and sorted(s3.skipped_existing) == ["c0", "c2"]
    after = _mtimes(out)
    assert after["c0.safetensors"] == before["c0.safetensors"] and after["c2.safetensors"] == before["c2.safetensors"]
    redone, redone_meta = read_feature_file(out / "c1.safetensors")
    assert redone_meta == good_meta
    for k in good:
        torch.testing.assert_close(redone[k], good[k], atol=1e-4, rtol=1e-4)

    # another cot_field (or model) invalidates the cache entry; FeatureDataset skips temp files
    s4 = extract_features(clips / "manifest.jsonl", out, tiny, progress=False, cot_field="caption")
    assert sorted(s4.done) == ["c0", "c1", "c2"]
    fd = FeatureDataset(out)
    assert fd.ids == ["c0", "c1", "c2"]
    item = fd[0]
    assert item["id"] == "c0" and item["text"] == "drum 0" and item["cot"] == COT and item["duration"] == 1.0
    with pytest.raises(PrismAudioError, match="not found"):
        FeatureDataset(out, ["zzz"])[0]
    (out / "c2.safetensors").write_bytes(b"junk")
    with pytest.raises(PrismAudioError, match="corrupt"):
        FeatureDataset(out, ["c2"])[0]


def test_extract_with_models_and_rows(clips: Path, tiny: PrismAudioPipeline, tmp_path: Path) -> None:
    rows, _ = read_manifest(clips / "manifest.jsonl")
    m = FeatureModels.from_pipeline(tiny)
    s = extract_features(rows[:1], tmp_path, models=m, progress=False, cot_field="none", duration=0.5)
    assert s.done == ["c0"]
    t, meta = read_feature_file(tmp_path / "c0.safetensors")
    assert t["video_features"].shape[0] == 4 and t["latent"].shape[-1] == tiny.config.latent_length(0.5)
    assert meta["text"] == "" and int(t["text_length"][0]) == 2  # [CLS] [SEP]
    with pytest.raises(PrismAudioError, match="exactly one"):
        extract_features(rows, tmp_path)
    with pytest.raises(PrismAudioError, match="batch size"):
        extract_features(rows, tmp_path, tiny, batch_size=0)


def test_cli_extract_prints_summary(clips: Path, tmp_path: Path, capsys) -> None:
    """The library returns a summary; the CLI prints it (one warning line per problem)."""
    from prismaudio.cli import main as cli_main

    code = cli_main(["extract", "--manifest", str(clips / "manifest.jsonl"), "--out", str(tmp_path / "o"),
                     "--model", "preset:tiny", "--batch-size", "4", "--cot-field", "multi", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and len(list((tmp_path / "o").glob("*.safetensors"))) == 3  # 3 clips failed
    assert "extracted 3, skipped 0 existing, failed 3, 1 bad manifest row(s)" in captured.out
    assert "skipped missing" in captured.err and "bad JSON" in captured.err
