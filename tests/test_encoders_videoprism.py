"""`videoprism` encoder on transformers' VideoPrism, with tiny RANDOM checkpoints saved to temp dirs.

Every size is read from the saved config (never the release's constants), so the same tests hold for
any checkpoint of the same layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from prismaudio.config import EncoderSpec, preset
from prismaudio.encoders import build_encoder
from prismaudio.errors import PrismAudioError

transformers = pytest.importorskip("transformers")
from transformers import (
    VideoPrismClipModel,
    VideoPrismConfig,
    VideoPrismVideoModel,
    VideoPrismVisionConfig,
    VideoPrismVisionModel,
)

VISION = {"image_size": 16, "num_frames": 4, "tubelet_size": [1, 4, 4], "hidden_size": 32, "num_attention_heads": 2,
          "intermediate_size": 64, "num_spatial_layers": 1, "num_temporal_layers": 1, "num_auxiliary_layers": 1}
TEXT = {"vocab_size": 40, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "max_position_embeddings": 16}


@pytest.fixture(scope="module")
def vp_dirs(tmp_path_factory) -> dict[str, Path]:
    """One tiny VideoPrismClipModel and one VideoPrismVideoModel checkpoint (different random weights)."""
    root = tmp_path_factory.mktemp("videoprism")
    torch.manual_seed(0)
    VideoPrismClipModel(VideoPrismConfig(vision_config=VISION, text_config=TEXT)).save_pretrained(root / "clip")
    torch.manual_seed(1)
    VideoPrismVideoModel(VideoPrismVisionConfig(**VISION)).save_pretrained(root / "video")
    return {"clip": root / "clip", "video": root / "video"}


def _vision_config(d: Path) -> dict:
    cfg = json.loads((d / "config.json").read_text())
    return cfg.get("vision_config", cfg)


def _hf_video_model(d: Path):
    """The reference: transformers' own video model from the same directory, loaded independently."""
    cfg = json.loads((d / "config.json").read_text())
    if cfg["model_type"] == "videoprism":
        return VideoPrismClipModel.from_pretrained(d, local_files_only=True).eval().video_model
    return VideoPrismVideoModel.from_pretrained(d, local_files_only=True).eval()


def reference_preprocess(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Hand-written official preprocessing: zero canvas, centred paste, uint8 bilinear resize, /255."""
    b, t, c, h, w = frames.shape
    side = max(h, w)
    canvas = torch.zeros(b * t, c, side, side, dtype=torch.uint8)
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, :, top:top + h, left:left + w] = frames.reshape(b * t, c, h, w)
    out = F.interpolate(canvas, size=(size, size), mode="bilinear", align_corners=False)
    assert out.dtype == torch.uint8  # torch resizes uint8 natively on CPU, as upstream ran it
    return (out.float() / 255).reshape(b, t, c, size, size)


def reference_frame_embeddings(video, pixels: torch.Tensor) -> torch.Tensor:
    """Per-frame head on the video model's tokens, written out from the model's public parts."""
    b, t = pixels.shape[:2]
    with torch.no_grad():
        hidden = video(pixel_values_videos=pixels, interpolate_pos_encoding=True).last_hidden_state
        tokens = hidden.reshape(b * t, hidden.shape[1] // t, hidden.shape[2])
        pooled = video.head_layernorm(video.head(tokens)[0]).reshape(b, t, -1)
    return pooled * torch.rsqrt((pooled * pooled).sum(-1, keepdim=True) + 1e-6)


def _frames(b: int, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, h, w), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("kind", ["clip", "video"])
def test_videoprism_loads_through_registry(vp_dirs, kind: str) -> None:
    d = vp_dirs[kind]
    vision = _vision_config(d)
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(d)}), modality="video")
    spec = enc.frame_spec()
    assert enc.takes_uint8 is True and (spec[0], spec[1]) == (4.0, None)  # 4 fps, native frames
    assert enc.output_dim == vision["hidden_size"] and enc.image_size == vision["image_size"]
    assert not enc.loaded  # lazy: config only at build time
    out = enc(_frames(2, 3, 10, 14))
    assert enc.loaded and out.shape == (2, 3, vision["hidden_size"]) and out.dtype == torch.float32
    assert enc.state_dict() == {} and list(enc.parameters()) == []
    enc.train()
    assert not enc.training and not enc.trainable
    assert build_encoder(EncoderSpec("videoprism", {"path": str(d), "fps": 2})).frame_spec()[:2] == (2.0, None)


@pytest.mark.parametrize("kind", ["clip", "video"])
def test_videoprism_single_frame_equals_pooled_embedding(vp_dirs, kind: str) -> None:
    d = vp_dirs[kind]
    size = _vision_config(d)["image_size"]
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(d)}))
    frames = _frames(1, 1, 12, 20, seed=3)
    with torch.no_grad():
        pooled = _hf_video_model(d)(pixel_values_videos=reference_preprocess(frames, size),
                                    interpolate_pos_encoding=True).pooler_output
    assert torch.equal(enc(frames), pooled.reshape(1, 1, -1))


@pytest.mark.parametrize("kind", ["clip", "video"])
def test_videoprism_any_frame_count_interpolates_positions(vp_dirs, kind: str) -> None:
    d = vp_dirs[kind]
    vision = _vision_config(d)
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(d)}))
    ref_model = _hf_video_model(d)
    for t in (vision["num_frames"], vision["num_frames"] + 3, 2):
        frames = _frames(1, t, 9, 13, seed=t)
        out = enc(frames)
        ref = reference_frame_embeddings(ref_model, reference_preprocess(frames, vision["image_size"]))
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(1, t), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError):  # without interpolation transformers cannot take another T
        ref_model(pixel_values_videos=torch.rand(1, vision["num_frames"] + 3, 3, vision["image_size"],
                                                 vision["image_size"]))


@pytest.mark.parametrize("hw", [(360, 640), (480, 320), (17, 30), (31, 16), (16, 16)])
def test_videoprism_preprocessing_matches_official_reference(hw: tuple[int, int]) -> None:
    from prismaudio.encoders.videoprism import pad_to_square, preprocess_frames

    h, w = hw
    frames = _frames(1, 2, h, w, seed=h + w)
    for size in (288, 16):
        got = preprocess_frames(frames, size)
        assert got.dtype == torch.float32 and got.shape == (1, 2, 3, size, size)
        assert torch.equal(got, reference_preprocess(frames, size))
        assert torch.equal(preprocess_frames(frames.float() / 255, size), got)  # float [0, 1] input is the same
    padded = pad_to_square(frames[0])
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2  # the extra pixel of an odd pad goes right / bottom
    assert padded.shape[-2:] == (side, side) and torch.equal(padded[..., top:top + h, left:left + w], frames[0])
    assert int(padded.sum()) == int(frames[0].sum())  # the rest is zeros


def test_videoprism_native_frames_end_to_end(vp_dirs) -> None:
    d = vp_dirs["clip"]
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(d)}))
    frames = _frames(1, 3, 360, 640, seed=7)
    ref = reference_frame_embeddings(_hf_video_model(d), reference_preprocess(frames, _vision_config(d)["image_size"]))
    torch.testing.assert_close(enc(frames), ref, atol=1e-6, rtol=0)


def test_videoprism_is_deterministic_and_batch_independent(vp_dirs) -> None:
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(vp_dirs["video"])}))
    frames = _frames(2, 5, 24, 18, seed=11)
    out = enc(frames)
    assert torch.equal(out, enc(frames))
    assert torch.equal(out[1:], enc(frames[1:]))
    assert not torch.allclose(out[0], out[1])
    again = build_encoder(EncoderSpec("videoprism", {"path": str(vp_dirs["video"])}))
    assert torch.equal(out, again(frames))


def test_videoprism_chunked_attention_matches_eager(vp_dirs) -> None:
    """Query-chunked attention (bounded memory for long clips) gives transformers' eager result."""
    frames = _frames(1, 6, 20, 30, seed=9)
    full = build_encoder(EncoderSpec("videoprism", {"path": str(vp_dirs["clip"])}))(frames)
    patches = (_vision_config(vp_dirs["clip"])["image_size"] // _vision_config(vp_dirs["clip"])["tubelet_size"][1]) ** 2
    chunked = build_encoder(EncoderSpec("videoprism", {"path": str(vp_dirs["clip"]), "attn_chunk": patches // 2 - 1}))
    torch.testing.assert_close(chunked(frames), full, atol=1e-6, rtol=0)
    with pytest.raises(PrismAudioError, match="attn_chunk"):
        build_encoder(EncoderSpec("videoprism", {"path": str(vp_dirs["clip"]), "attn_chunk": 0}))


def test_videoprism_bf16_runs_and_returns_float32(vp_dirs) -> None:
    frames = _frames(1, 3, 20, 20, seed=5)
    ref = build_encoder(EncoderSpec("videoprism", {"path": str(vp_dirs["clip"])}))(frames)
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(vp_dirs["clip"]), "dtype": "bfloat16"}))
    out = enc(frames)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0)
    from prismaudio.encoders.videoprism import _interpolate_time_in_float32

    temporal = _hf_video_model(vp_dirs["clip"]).vision_model.temporal_embeddings  # float32: the same op exactly
    x = torch.zeros(2, _vision_config(vp_dirs["clip"])["num_frames"] + 5, 32)
    expected = temporal.interpolate_pos_encoding(x)
    _interpolate_time_in_float32(temporal)
    assert torch.equal(temporal.interpolate_pos_encoding(x), expected)


def test_videoprism_defaults_follow_checkpoint_config(tmp_path: Path) -> None:
    """Width, image size and frame count come from config.json: an LvT-large layout gives the paper's 1024."""
    vision = dict(VISION, hidden_size=preset("paper").conditioner.video_dim, image_size=288, num_frames=8)
    VideoPrismConfig(vision_config=vision, text_config=TEXT).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(tmp_path)}))
    assert (enc.output_dim, enc.image_size, enc.num_frames) == (vision["hidden_size"], 288, 8)
    with pytest.raises(PrismAudioError, match="cannot load the VideoPrism checkpoint"):
        enc(_frames(1, 1, 8, 8))


def test_videoprism_bad_directories_are_one_line_errors(vp_dirs, tmp_path: Path) -> None:
    def err(path) -> str:
        with pytest.raises(PrismAudioError) as info:
            build_encoder(EncoderSpec("videoprism", {} if path is None else {"path": str(path)}))
        msg = str(info.value)
        assert "\n" not in msg
        return msg

    assert "needs params.path" in err(None)
    assert "not found" in err(tmp_path / "nope")
    (tmp_path / "file.safetensors").write_bytes(b"")
    assert "not a directory" in err(tmp_path / "file.safetensors")
    (tmp_path / "empty").mkdir()
    assert "config.json" in err(tmp_path / "empty")
    for model_type, arch in [("t5", "T5EncoderModel"), ("clip", "CLIPModel"), ("t5gemma", "T5GemmaForConditionalGeneration")]:
        other = tmp_path / model_type
        other.mkdir()
        (other / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": [arch]}))
        shutil.copy(vp_dirs["video"] / "model.safetensors", other / "model.safetensors")
        msg = err(other)
        assert f"'{model_type}'" in msg and "not VideoPrism" in msg
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    shutil.copy(vp_dirs["clip"] / "config.json", noweights / "config.json")
    assert "no weights" in err(noweights)
    backbone = tmp_path / "backbone"  # a VideoPrismVisionModel has no contrastive head
    VideoPrismVisionModel(VideoPrismVisionConfig(**VISION)).save_pretrained(backbone)
    assert "without the contrastive head" in err(backbone)


def test_videoprism_missing_video_weights_are_named(vp_dirs, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(vp_dirs["video"] / "model.safetensors"))
    save_file({k: v for k, v in sd.items() if not k.startswith("head.")}, str(tmp_path / "model.safetensors"))
    shutil.copy(vp_dirs["video"] / "config.json", tmp_path / "config.json")
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(tmp_path)}))
    with pytest.raises(PrismAudioError, match=r"lacks \d+ video weights, e\.g\. head\."):
        enc(_frames(1, 1, 8, 8))


def test_videoprism_rejects_bad_frames(vp_dirs) -> None:
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(vp_dirs["video"])}))
    for bad in (torch.zeros(1, 0, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 2, 1, 8, 8, dtype=torch.uint8),
                torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 2, 3, 8, 8, dtype=torch.int32)):
        with pytest.raises(PrismAudioError, match="VideoPrismVideoEncoder expects"):
            enc(bad)
