"""The official pipeline end to end with tiny random encoders of each real kind: a tiny
transformers VideoPrism video model, a tiny T5-Gemma with a Gemma tokenizer, and the upstream-layout
Synchformer state dict of ../shared/reference/upstream_fixtures/synchformer_visual (its released key
layout, random weights), all behind a small network with the official condition layout (8 sync tokens
per segment). `prismaudio generate --model DIR` runs on real MP4 files of odd sizes and frame rates
and writes a WAV of the clip's length, bit-identical for a seed."""

from __future__ import annotations

import json
import string
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from prismaudio.cli import main as cli_main
from prismaudio.config import EncodersConfig, EncoderSpec, preset
from prismaudio.io.video import probe_video
from prismaudio.pipeline import PrismAudioPipeline

transformers = pytest.importorskip("transformers")


# ------------------------------------------------------------------------------ tiny upstream kinds
def _videoprism(d: Path) -> int:
    from transformers import VideoPrismVideoModel, VideoPrismVisionConfig

    torch.manual_seed(0)
    cfg = VideoPrismVisionConfig(image_size=16, num_frames=4, tubelet_size=[1, 4, 4], hidden_size=32,
                                 num_attention_heads=2, intermediate_size=64, num_spatial_layers=1,
                                 num_temporal_layers=1, num_auxiliary_layers=1)
    VideoPrismVideoModel(cfg).save_pretrained(d)
    return cfg.hidden_size


def _t5gemma(d: Path) -> int:
    from transformers import GemmaTokenizer, T5GemmaConfig, T5GemmaForConditionalGeneration

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in "\u2581" + string.ascii_letters + string.digits + ".,;:'!?-()":
        vocab.setdefault(ch, len(vocab))
    tok = GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, add_eos_token=True)
    tok.save_pretrained(d)
    torch.manual_seed(1)
    mod = {"vocab_size": len(tok), "hidden_size": 24, "intermediate_size": 48, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 12, "pad_token_id": 0,
           "bos_token_id": 2, "eos_token_id": 1}
    T5GemmaForConditionalGeneration(T5GemmaConfig(encoder=mod, decoder=mod, vocab_size=len(tok))).save_pretrained(d)
    return mod["hidden_size"]


def _video(path: Path, w: int, h: int, rate: Fraction, seconds: float, vfr: bool = False) -> Path:
    """A moving bright square on a dark field (H.264, yuv420p)."""
    rng = np.random.default_rng(5)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        tb = Fraction(1, 90000)
        s.codec_context.time_base = tb
        t, i = Fraction(0), 0
        while t < seconds:
            img = np.full((h, w, 3), 20, np.uint8)
            x = int((w - 40) * float(t) / seconds)
            img[h // 3 : h // 3 + 40, x : x + 40] = 230
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = round(t / tb), tb
            t += Fraction(1, [30, 15, 60, 24][int(rng.integers(4))]) if vfr else 1 / rate
            i += 1
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, shared_reference: Path) -> Path:
    root = tmp_path_factory.mktemp("official_e2e")
    sync_fixture = shared_reference / "upstream_fixtures" / "synchformer_visual"
    facts = json.loads((sync_fixture / "config.json").read_text())
    video_dim = _videoprism(root / "videoprism")
    text_dim = _t5gemma(root / "t5gemma")
    cfg = preset("tiny")
    cfg.encoders = EncodersConfig(
        video=EncoderSpec("videoprism", {"path": str(root / "videoprism")}),
        sync=EncoderSpec("synchformer", {"path": str(sync_fixture / facts["weights_file"]),
                                         "dim": facts["embed_dim"], "heads": facts["num_heads"]}),
        text=EncoderSpec("t5gemma", {"path": str(root / "t5gemma")}),
    )
    c = cfg.conditioner
    c.video_dim, c.text_dim, c.sync_dim = video_dim, text_dim, facts["embed_dim"]
    c.sync_tokens_per_segment = facts["temporal_resolution"]  # 8 tokens per 16-frame segment, as released
    PrismAudioPipeline.from_config(cfg, seed=0).save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("odd_videos")
    return {
        "landscape_29.97": _video(d / "landscape.mp4", 640, 360, Fraction(30000, 1001), 1.2),
        "portrait_60": _video(d / "portrait.mp4", 320, 480, Fraction(60), 1.0),
        "vfr": _video(d / "vfr.mp4", 352, 288, Fraction(30), 1.1, vfr=True),
    }


def test_upstream_kinds_model_dir_records_its_encoders(model_dir: Path) -> None:
    pipe = PrismAudioPipeline.from_pretrained(model_dir)
    assert [type(e).__name__ for e in (pipe.video_encoder, pipe.sync_encoder, pipe.text_encoder)] == [
        "VideoPrismVideoEncoder", "SynchformerSyncEncoder", "T5GemmaTextEncoder"]
    assert not (model_dir / "encoders.safetensors").exists()  # checkpoints are referenced, never copied


@pytest.mark.parametrize("name", ["landscape_29.97", "portrait_60", "vfr"])
def test_generate_runs_the_official_pipeline_on_odd_videos(model_dir: Path, clips: dict[str, Path],
                                                            tmp_path: Path, name: str) -> None:
    video = clips[name]
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert cli_main(["generate", str(video), "--model", str(model_dir), "--cot",
                         "Semantic: a square slides.\nTemporal: steady.\nAesthetic: clean.\nSpatial: left to right.",
                         "--steps", "3", "--seed", "7", "--out", str(out), "--quiet"]) == 0
        outs.append(out / f"{video.stem}.wav")
    audio, sr = sf.read(outs[0], dtype="float32")
    cfg = PrismAudioPipeline.from_pretrained(model_dir).config
    duration = probe_video(video).duration
    hop = cfg.vae.downsampling_ratio  # samples per latent frame
    # exactly the clip's length: the latent length is rounded up to whole hops, the audio then trimmed
    expected = round(duration * sr)
    assert sr == cfg.sample_rate and audio.ndim == 2 and audio.shape[1] == 2
    assert audio.shape[0] == expected and abs(audio.shape[0] - duration * sr) <= hop
    assert np.isfinite(audio).all() and float(np.abs(audio).max()) > 0
    assert outs[0].read_bytes() == outs[1].read_bytes()  # deterministic for a seed


def test_a_clip_shorter_than_one_sync_segment_is_one_line(model_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    short = _video(tmp_path / "short.mp4", 320, 240, Fraction(25), 0.5)
    out = tmp_path / "out"
    assert cli_main(["generate", str(short), "--model", str(model_dir), "--planner", "none",
                     "--steps", "2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(short) in err[0] and "0.64 s" in err[0] and "Traceback" not in err[0]
    assert not out.exists() or not any(out.iterdir())
