"""The `synchformer` encoder against the upstream fixtures (`synchformer_visual`, `synchformer_preprocess`; the
DeSync model's `synchformer_desync` is tests/test_upstream_desync.py): every shape comes from the fixture tensors
and every setting from its config.json, so the same tests hold for other fixtures of the same layout. Select with
`pytest -k upstream`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from prismaudio.config import EncoderSpec
from prismaudio.encoders import build_encoder
from prismaudio.encoders.synchformer import (
    VISUAL_PREFIX,
    SynchformerSyncEncoder,
    center_crop,
    preprocess_frames,
    resize_shorter_uint8,
)
from prismaudio.errors import PrismAudioError

REL_TOL = 1e-5  # the bar: 1e-5 x the reference's max magnitude


def _fixture(ref: Path, name: str) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    d = ref / "upstream_fixtures" / name
    if not d.is_dir():
        pytest.skip(f"upstream fixture {d} not present")
    cfg = json.loads((d / "config.json").read_text())
    return d, cfg, load_file(str(d / cfg["inputs_file"])), load_file(str(d / cfg["outputs_file"]))


def _tol(ref: torch.Tensor, recommended: float | None) -> float:
    """The tighter of 1e-5 x max|ref| and the fixture's recommended absolute tolerance."""
    rel = REL_TOL * float(ref.abs().max())
    return rel if recommended is None else min(rel, float(recommended))


def _max_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape, (tuple(out.shape), tuple(ref.shape))
    return float((out.float() - ref.float()).abs().max())


def _visual_encoder(d: Path, cfg: dict[str, Any]) -> SynchformerSyncEncoder:
    """The encoder exactly as a pipeline builds it: the registry, an EncoderSpec, the .pth path."""
    params = {"path": str(d / cfg["weights_file"]), "dim": cfg["embed_dim"], "heads": cfg["num_heads"],
              "size": cfg["image_size"], "segment_frames": cfg["num_frames"],
              "tubelet": cfg["patch_size_temporal"]}
    enc = build_encoder(EncoderSpec("synchformer", params), modality="sync")
    assert isinstance(enc, SynchformerSyncEncoder)
    return enc


def _decoded_clip(cfg: dict[str, Any], inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The fixture's model input: its stored uint8, nearest-upsampled, decoded as config.json says."""
    u8 = inputs[cfg["input_key"]]
    f = int(cfg["input_nearest_upsample_factor"])
    u8 = u8.repeat_interleave(f, -1).repeat_interleave(f, -2)
    return (u8.float() - cfg["input_u8_offset"]) / cfg["input_u8_divisor"]


def test_upstream_synchformer_visual_features_and_tokens(shared_reference: Path) -> None:
    d, cfg, inputs, outputs = _fixture(shared_reference, "synchformer_visual")
    assert cfg["input_layout"] == "B,S,T,C,H,W"
    enc = _visual_encoder(d, cfg)
    net = enc._load()
    assert (net.dim, len(net.blocks), net.heads) == (cfg["embed_dim"], cfg["depth"], cfg["num_heads"])
    clip = _decoded_clip(cfg, inputs)
    b, s = clip.shape[:2]
    x = clip.flatten(0, 1).permute(0, 2, 1, 3, 4)  # (B*S, C, T, H, W) as Synchformer.forward does
    with torch.no_grad():
        tokens = net.forward_features(x)
        feats = net(x).view(b, s, *outputs["features"].shape[2:])
    ref_t, ref_f = outputs["tokens_after_blocks"], outputs["features"]
    assert _max_err(tokens.view(ref_t.shape), ref_t) <= _tol(ref_t, cfg["recommended_atol"])
    assert _max_err(feats, ref_f) <= _tol(ref_f, cfg["recommended_atol"])


def test_upstream_synchformer_unused_keys_named_and_tolerated(shared_reference: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    d, cfg, _, _ = _fixture(shared_reference, "synchformer_visual")
    sd = torch.load(str(d / cfg["weights_file"]), map_location="cpu", weights_only=True)
    enc = _visual_encoder(d, cfg)
    with caplog.at_level(logging.INFO, logger="prismaudio.encoders.synchformer"):
        net = enc._load()
    used = {cfg["weights_keys_used_prefix"] + k for k in net.state_dict()}
    assert set(enc.unused_keys) == set(sd) - used
    assert any(k.startswith(cfg["weights_keys_used_prefix"] + "patch_embed.proj.") for k in enc.unused_keys)
    assert any(f"ignored {len(enc.unused_keys)} unused keys" in r.getMessage() for r in caplog.records)


def test_upstream_synchformer_preprocess_equals_torchvision(shared_reference: Path) -> None:
    _, cfg, inputs, outputs = _fixture(shared_reference, "synchformer_preprocess")
    assert cfg["input_dtype"] == "uint8" and cfg["resize_operates_on"] == "uint8"
    size, crop = int(cfg["resize_size"]), int(cfg["center_crop_size"])
    assert list(cfg["output_size"]) == [crop, crop]
    tol = cfg["recommended_atol"]
    for item in cfg["items"]:
        frames = inputs[item["input_key"]]
        ref_resized, ref_out = outputs[item["resized_output_key"]], outputs[item["output_key"]]
        resized = resize_shorter_uint8(frames, size)
        assert resized.dtype == torch.uint8 and resized.shape == ref_resized.shape
        assert tuple(resized.shape[-2:]) == (item["resized_height"], item["resized_width"])
        assert _max_err(resized, ref_resized) <= float(tol["resized_u8"])
        cropped = center_crop(resized, crop)
        top, left = item["crop_top"], item["crop_left"]
        assert torch.equal(cropped, resized[..., top : top + crop, left : left + crop])
        out = preprocess_frames(frames, crop)
        assert out.dtype == ref_out.dtype
        assert _max_err(out, ref_out) <= _tol(ref_out, tol["sync_frames"])


def test_upstream_synchformer_generation_path_on_native_uint8(shared_reference: Path) -> None:
    """encoder(native uint8 frames of odd size) == the upstream network on the upstream-preprocessed frames."""
    d, cfg, _, _ = _fixture(shared_reference, "synchformer_visual")
    _, pcfg, pin, pout = _fixture(shared_reference, "synchformer_preprocess")
    if pcfg["center_crop_size"] != cfg["image_size"]:
        pytest.skip("the preprocess fixture's crop differs from the visual fixture's input size")
    enc = _visual_encoder(d, cfg)
    assert enc.frame_spec()[:2] == (enc.fps, None) and enc.takes_uint8  # native uint8 frames
    net = enc._load()
    t = enc.segment_frames + enc.segment_step  # two segments
    for item in pcfg["items"]:
        frames, ref = pin[item["input_key"]], pout[item["output_key"]]
        idx = torch.arange(t) % frames.shape[0]  # every frame is transformed independently
        video = frames[idx][None]  # [1, T, 3, H, W] uint8 at native size
        out = enc(video)
        s = enc.num_segments(t)
        assert out.shape == (1, enc.output_length(t), cfg["embed_dim"]) and out.dtype == torch.float32
        pre = ref[idx].unfold(0, enc.segment_frames, enc.segment_step).permute(0, 1, 4, 2, 3)[:s]
        with torch.no_grad():
            expect = net(pre.contiguous()).reshape(1, -1, cfg["embed_dim"])
        assert _max_err(out, expect) <= _tol(expect, cfg["recommended_atol"])


def _tiny_file(d: Path, cfg: dict[str, Any], tmp: Path, edit: str) -> tuple[Path, str]:
    """The fixture's weights with one visual key removed or misshapen; returns (file, that key)."""
    sd = torch.load(str(d / cfg["weights_file"]), map_location="cpu", weights_only=True)
    key = next(k for k in sd if k.startswith(VISUAL_PREFIX + "blocks.0.norm1."))
    if edit == "missing":
        del sd[key]
    else:
        sd[key] = sd[key][:-1].clone()
    path = tmp / f"{edit}.pth"
    torch.save(sd, path)
    return path, key


@pytest.mark.parametrize("edit", ["missing", "misshapen"])
def test_upstream_synchformer_bad_state_dict_is_one_clear_error(shared_reference: Path, tmp_path: Path,
                                                               edit: str) -> None:
    d, cfg, _, _ = _fixture(shared_reference, "synchformer_visual")
    path, key = _tiny_file(d, cfg, tmp_path, edit)
    enc = build_encoder(EncoderSpec("synchformer", {
        "path": str(path), "dim": cfg["embed_dim"], "heads": cfg["num_heads"], "size": cfg["image_size"],
        "segment_frames": cfg["num_frames"], "tubelet": cfg["patch_size_temporal"]}))
    frames = torch.zeros(1, enc.segment_frames, 3, cfg["image_size"], cfg["image_size"], dtype=torch.uint8)
    with pytest.raises(PrismAudioError) as err:
        enc(frames)
    msg = str(err.value)
    assert str(path) in msg and key in msg and edit in msg and "\n" not in msg


def test_upstream_synchformer_video_shorter_than_one_segment(shared_reference: Path) -> None:
    d, cfg, _, _ = _fixture(shared_reference, "synchformer_visual")
    enc = _visual_encoder(d, cfg)
    t = enc.segment_frames - 1
    frames = torch.zeros(1, t, 3, cfg["image_size"], cfg["image_size"], dtype=torch.uint8)
    with pytest.raises(PrismAudioError) as err:
        enc(frames)
    msg = str(err.value)
    assert f"{enc.segment_frames / enc.fps:.2f} s" in msg and f"{t} frames" in msg and "\n" not in msg
    assert not enc.loaded  # refused before any weights are read
