"""Real metric adapters (CLAP, Audiobox Aesthetics, VGGish, PaSST) with tiny random weights written to tmp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from prismaudio.errors import PrismAudioError
from prismaudio.metrics.backends import backend_role, build_backend

transformers = pytest.importorskip("transformers")
from safetensors.torch import save_file

WORDS = ["a", "dog", "barks", "car", "engine", "rain", "falls", "music", "plays", "!"]


def _tokenizer(d: Path, gpt2: bool) -> None:
    """A tiny word-level fast tokenizer saved next to the model (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["!", "<|endoftext|>", "<unk>"] if gpt2 else ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(special + [w for w in WORDS if w not in special])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    if gpt2:
        fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|endoftext|>", pad_token="!")
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                       unk_token="<unk>")
    fast.save_pretrained(str(d))


def _tiny_audio_config(**kw):
    from transformers import ClapAudioConfig

    return ClapAudioConfig(spec_size=64, num_mel_bins=16, patch_size=4, patch_stride=[4, 4], hidden_size=32,
                           depths=[1, 1], num_attention_heads=[2, 2], window_size=4, projection_dim=16,
                           enable_fusion=False, patch_embeds_hidden_size=16, **kw)


def _feature_extractor(sr: int):
    from transformers import ClapFeatureExtractor

    return ClapFeatureExtractor(feature_size=16, sampling_rate=sr, hop_length=sr // 100, max_length_s=2,
                                fft_window_size=1024)


@pytest.fixture(scope="module")
def laion_dir(tmp_path_factory) -> Path:
    from transformers import ClapConfig, ClapModel, ClapTextConfig

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("laion")
    tc = ClapTextConfig(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, projection_dim=16, max_position_embeddings=40)
    cfg = ClapConfig(text_config=tc.to_dict(), audio_config=_tiny_audio_config().to_dict(), projection_dim=16)
    ClapModel(cfg).save_pretrained(str(d))
    _feature_extractor(48_000).save_pretrained(str(d))
    _tokenizer(d, gpt2=False)
    return d


def _tiny_htsat(mel_sr: int):
    from prismaudio.metrics.adapters.htsat import HTSAT, HTSATConfig

    cfg = HTSATConfig(embed_dim=8, depths=(1, 1), num_heads=(1, 2), window_size=4, spec_size=128, mel_bins=32,
                      n_fft=512, hop_size=320 if mel_sr == 32_000 else 480, num_classes=5)
    return HTSAT(cfg, mel_sr=mel_sr)


MSCLAP_OPTS = {"spec_size": 128, "duration": 2.0}
LAION_OPTS = {"spec_size": 128, "max_len": 96_000}


@pytest.fixture(scope="module")
def msclap_file(tmp_path_factory) -> Path:
    """A tiny MS-CLAP 2023 release file ({'model': sd}, old GPT-2 buffers) with a GPT-2-style tokenizer in gpt2/."""
    from transformers import GPT2Config, GPT2Model

    from prismaudio.metrics.adapters.clap_nets import MSClapNet

    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("msclap")
    gpt2 = GPT2Model(GPT2Config(vocab_size=16, n_embd=32, n_layer=1, n_head=2, n_positions=128, bos_token_id=None,
                                eos_token_id=None))
    sd = MSClapNet(_tiny_htsat(32_000), gpt2, 24).state_dict()
    sd["caption_encoder.base.h.0.attn.bias"] = torch.ones(1, 1, 128, 128, dtype=torch.bool).tril()
    sd["caption_encoder.base.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save({"model": sd}, str(d / "CLAP_weights_2023.pth"))
    (d / "gpt2").mkdir()
    _tokenizer(d / "gpt2", gpt2=True)
    return d / "CLAP_weights_2023.pth"


@pytest.fixture(scope="module")
def laion_file(tmp_path_factory) -> Path:
    """A tiny laion_clap release .pt ({'epoch', 'state_dict': {'module.*'}} with position_ids), tokenizer beside."""
    from transformers import RobertaConfig, RobertaModel

    from prismaudio.metrics.adapters.clap_nets import LaionClapNet

    torch.manual_seed(2)
    d = tmp_path_factory.mktemp("laion_release")
    roberta = RobertaModel(RobertaConfig(vocab_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=80, type_vocab_size=1,
                                         pad_token_id=1))
    sd = {f"module.{k}": v for k, v in LaionClapNet(_tiny_htsat(48_000), roberta, 16).state_dict().items()}
    sd["module.text_branch.embeddings.position_ids"] = torch.arange(80)[None]
    torch.save({"epoch": 1, "state_dict": sd}, str(d / "tiny_laion.pt"))
    _tokenizer(d, gpt2=False)
    return d / "tiny_laion.pt"


def _audio(b: int = 2, c: int = 2, sr: int = 16_000, seconds: float = 1.5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(b, c, int(sr * seconds), generator=g)


TEXTS = ["a dog barks", "rain falls"]


CLAP_CASES = {"laion_clap_hf": ("laion_clap", "laion_dir", {}), "laion_clap": ("laion_clap", "laion_file", LAION_OPTS),
              "ms_clap": ("ms_clap", "msclap_file", MSCLAP_OPTS)}


@pytest.mark.parametrize("case", sorted(CLAP_CASES))
def test_clap_shapes_norm_score_roundtrip(case, request):
    name, fixture, opts = CLAP_CASES[case]
    path = request.getfixturevalue(fixture)
    assert backend_role(name) == "clap"
    clap = build_backend(name, path=str(path), **opts)
    stereo = _audio(sr=22_050)  # non-native rate, stereo
    a = clap.embed_audio(stereo, 22_050)
    t = clap.embed_text(TEXTS)
    assert a.shape[0] == 2 and t.shape == a.shape
    assert torch.allclose(a.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(a[0], a[1], atol=1e-4) and not torch.allclose(t[0], t[1], atol=1e-4)
    s = clap.score(stereo, 22_050, TEXTS)
    assert s.shape == (2,) and bool(((s >= -1) & (s <= 1)).all())
    assert torch.allclose(s, (a * t).sum(-1), atol=1e-5)
    one = clap.embed_audio(stereo[1], 22_050)  # [C, S] one clip = its row of the batch
    assert torch.allclose(one, a[1:], atol=1e-4)
    again = build_backend(name, path=str(path), **opts)  # fresh load from disk: identical outputs
    assert torch.allclose(again.embed_audio(stereo, 22_050), a, atol=1e-6)
    assert torch.allclose(again.embed_text(TEXTS), t, atol=1e-6)
    with pytest.raises(PrismAudioError):
        clap.score(stereo, 22_050, TEXTS[:1])


def test_msclap_tokens_channels_and_similarity(msclap_file):
    """msclap's text rule (text + ' <|endoftext|>', '!' padding to text_len, no truncation, pooled at the last
    non-'!' token), its channel flattening, and similarity = exp(logit_scale) * cosine."""
    from prismaudio.metrics.adapters.clap import official_semantic_reward

    clap = build_backend("ms_clap", path=str(msclap_file), text_len=12, **MSCLAP_OPTS)
    vocab = clap.tokenizer.get_vocab()
    ids, mask = clap.tokenize(["a dog barks"])
    want = [vocab[w] for w in ("a", "dog", "barks", "<|endoftext|>")]
    assert ids.shape == (1, 12) and ids[0, :4].tolist() == want and ids[0, 4:].eq(vocab["!"]).all()
    assert mask[0].tolist() == [1] * 4 + [0] * 8
    long = " ".join(["rain"] * 30)
    ids2, _ = clap.tokenize(["a dog barks", long])
    assert ids2.shape == (2, 31)  # not truncated to text_len, as msclap
    assert torch.allclose(clap.embed_text_ids(ids2[:1], (ids2[:1] != 0).long()), clap.embed_text(["a dog barks"]),
                          atol=1e-6)  # extra right padding changes nothing (causal GPT-2)
    x = _audio(b=1, c=2, sr=44_100, seconds=0.5)
    flat = clap.preprocess(x, 44_100)  # L then R, tiled to duration
    assert torch.equal(flat[0, : 2 * x.shape[-1]], x[0].reshape(-1))
    a, t = clap.embed_audio(x, 44_100), clap.embed_text(["a dog barks"])
    sim = clap.similarity(x, 44_100, ["a dog barks"])
    assert torch.allclose(sim, clap.logit_scale * (a * t).sum(-1), atol=1e-5)
    assert torch.allclose(official_semantic_reward(clap, x, 44_100, ["a dog barks"]), sim / 80, atol=1e-7)


@pytest.mark.parametrize("name", ["laion_clap", "ms_clap", "audiobox_aesthetics", "vggish", "passt"])
def test_missing_path_is_one_clear_error(name, tmp_path):
    with pytest.raises(PrismAudioError, match="path"):
        build_backend(name)
    with pytest.raises(PrismAudioError, match="does not exist"):
        build_backend(name, path=str(tmp_path / "nope"))


def test_clap_wrong_keys(msclap_file, tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"foo.weight": torch.zeros(3)}}, str(bad))
    with pytest.raises(PrismAudioError, match="not an MS-CLAP 2023 checkpoint.*missing key"):
        build_backend("ms_clap", path=str(bad)).embed_text(TEXTS)
    sd = torch.load(str(msclap_file), weights_only=True)["model"]
    sd["audio_encoder.projection.linear1.weight"] = torch.zeros(3, 3)
    torch.save({"model": sd}, str(bad))
    with pytest.raises(PrismAudioError, match="audio_encoder.projection.linear1.weight.*shape"):
        build_backend("ms_clap", path=str(bad), **MSCLAP_OPTS).load()
    (tmp_path / "other.pt").write_bytes(b"")
    with pytest.raises(PrismAudioError, match="exactly one"):  # a directory must hold a single weight file
        build_backend("ms_clap", path=str(tmp_path))


@pytest.mark.slow
def test_htsat_release_sizes_read_back_from_tensors():
    """The release HTSATs (MS-CLAP: HTSAT-tiny 96 / [2,2,6,2]; LAION: HTSAT-base 128 / [2,2,12,2]) are sized
    from their state dicts alone, and the frozen front end of a fresh model is torchlibrosa's."""
    from prismaudio.metrics.adapters.htsat import HTSAT, HTSATConfig, htsat_config_from_state_dict

    for cfg, width in ((HTSATConfig(), 768), (HTSATConfig(embed_dim=128, depths=(2, 2, 12, 2), hop_size=480), 1024)):
        sd = HTSAT(cfg).state_dict()
        assert htsat_config_from_state_dict(sd, hop_size=cfg.hop_size) == cfg and cfg.num_features == width
        assert sd["tscam_conv.weight"].shape[2:] == (2, 3) and sd["layers.3.blocks.1.attn.qkv.weight"].shape[1] == width


# ---------------------------------------------------------------- Audiobox Aesthetics

# tiny WavLM: 2 conv layers (hop 80), 2 transformer layers; strides are not in a checkpoint, so they are given
TINY_CONV = [(8, 10, 8), (8, 3, 10)]
TINY_WAVLM = {"conv_layers": tuple(TINY_CONV), "embed_dim": 16, "ffn_dim": 32, "layers": 2, "heads": 2,
              "conv_pos": 8, "conv_pos_groups": 2, "num_buckets": 16, "max_distance": 40}
TARGET = {a: {"mean": 5.5, "std": 1.5} for a in ("CE", "CU", "PC", "PQ")}


def _aes(path, **kw):
    return build_backend("audiobox_aesthetics", path=str(path), conv_feature_layers=TINY_CONV, max_distance=40,
                         window_s=1.0, **kw)


@pytest.fixture(scope="module")
def aes_ckpt(tmp_path_factory) -> Path:
    """A release-layout checkpoint.pt ({'state_dict': {'model.*'}, 'model_cfg', 'target_transform'})."""
    from prismaudio.metrics.adapters.aesthetics import _AesModel
    from prismaudio.metrics.adapters.wavlm import WavLMConfig

    torch.manual_seed(2)
    model = _AesModel(WavLMConfig(**TINY_WAVLM), nth_layer=3, head_layers=1, normalize_embed=True)
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("aes") / "checkpoint.pt"
    torch.save({"state_dict": sd, "model_cfg": {"nth_layer": 3, "proj_num_layer": 1, "normalize_embed": True},
                "target_transform": TARGET}, str(path))
    return path


def test_aesthetics_axes_range_and_roundtrip(aes_ckpt, tmp_path):
    assert backend_role("audiobox_aesthetics") == "aesthetics"
    aes = _aes(aes_ckpt)
    audio = _audio(b=2, c=2, sr=22_050, seconds=1.6)  # stereo, non-native rate, 2 windows (the last padded)
    out = aes.score(audio, 22_050)
    assert set(out) == {"PQ", "PC", "CE", "CU"}
    for v in out.values():
        assert v.shape == (2,) and bool(((v >= 1) & (v <= 10)).all())
    assert not torch.allclose(out["CE"], out["PQ"])  # distinct heads
    raw = aes.score(audio, 22_050, clamp=False)
    assert all(torch.equal(out[a], raw[a].clamp(1, 10)) for a in out)
    again = _aes(aes_ckpt)
    for k, v in again.score(audio, 22_050).items():
        assert torch.allclose(v, out[k], atol=1e-5)
    one = aes.score(audio[1], 22_050)  # [C, S] accepted
    assert torch.allclose(one["PC"], out["PC"][1:], atol=1e-4)
    # the hub-export directory layout (config.json + model.safetensors with encoder.* keys) loads the same
    ck = torch.load(str(aes_ckpt), weights_only=True)
    d = tmp_path / "hub"
    d.mkdir()
    save_file({"encoder." + k[len("model."):]: v.contiguous() for k, v in ck["state_dict"].items()},
              str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({**ck["model_cfg"], "target_transform": TARGET}))
    hub = _aes(d)
    for k, v in hub.score(audio, 22_050).items():
        assert torch.allclose(v, out[k], atol=1e-5)


def test_aesthetics_padding_is_masked(aes_ckpt):
    """A padded last window scores as its valid part alone: zeros appended inside the window change nothing,
    and the clip score is the valid-fraction-weighted mean of its windows."""
    aes = _aes(aes_ckpt, clamp=False)
    x = _audio(b=1, c=1, sr=16_000, seconds=1.3)
    p1, v1 = aes.window_predictions(x, 16_000)
    assert v1.tolist() == [[16_000, 4_800]]
    p2, _ = aes.window_predictions(torch.nn.functional.pad(x, (0, 800)), 16_000)  # 800 real zeros: not padding
    assert not torch.allclose(p1[0, 1], p2[0, 1], atol=1e-6)
    # upstream's frame rule: a frame is padding only when ALL its samples are (ceil, not the conv-length floor)
    from prismaudio.metrics.adapters.wavlm import WavLM

    hop, frames = 80, 200
    for v in (1, 79, 80, 81, 4_800, 4_801, 16_000):
        pad = torch.arange(frames * hop + 37)[None] >= v  # + 37: the cut to a multiple of the frame count
        assert int((~WavLM.frame_padding(pad, frames)).sum()) == min(-(-v // hop), frames)
    s = aes.score(x, 16_000)
    mean, std = aes.target["CE"]
    expect = ((p1[0, :, 0] * std + mean) * torch.tensor([1.0, 0.3])).sum() / 1.3
    assert torch.allclose(s["CE"][0], expect, atol=1e-5)


def test_aesthetics_bad_checkpoints(aes_ckpt, tmp_path):
    ck = torch.load(str(aes_ckpt), weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": ck["state_dict"], "model_cfg": ck["model_cfg"]}, str(bad))
    with pytest.raises(PrismAudioError, match="target_transform"):
        _aes(bad).score(_audio(1), 16_000)
    sd = dict(ck["state_dict"])
    sd.pop("model.proj_layer.PQ.0.weight")
    torch.save({**ck, "state_dict": sd}, str(bad))
    with pytest.raises(PrismAudioError, match="missing.*proj_layer.PQ.0.weight"):
        _aes(bad).score(_audio(1), 16_000)


# ---------------------------------------------------------------- VGGish

TINY_VGG = {"channels": (4, 4, 8, 8, 8, 8), "hidden": 16}


def test_vggish_embed(tmp_path):
    from prismaudio.metrics.adapters.vggish import VGGishNet, vggish_mel_matrix

    torch.manual_seed(3)
    net = VGGishNet(False, TINY_VGG["channels"], TINY_VGG["hidden"])
    assert [k for k in net.state_dict() if k.endswith("weight")][:2] == ["features.0.weight", "features.3.weight"]
    assert "embeddings.4.weight" in net.state_dict()
    path = tmp_path / "vggish.pth"
    torch.save(net.state_dict(), str(path))
    vg = build_backend("vggish", path=str(path), **TINY_VGG)
    assert backend_role("vggish") == "embedder"
    audio = _audio(b=2, c=2, sr=32_000, seconds=2.0)
    e = vg.embed(audio, 32_000)
    assert e.shape == (2, 128) and torch.isfinite(e).all()
    assert torch.allclose(build_backend("vggish", path=str(path), **TINY_VGG).embed(audio, 32_000), e, atol=1e-6)
    assert vg.embed(_audio(b=1, c=1, seconds=0.3), 16_000).shape == (1, 128)  # shorter than one patch
    mel = vggish_mel_matrix()
    assert mel.shape == (257, 64) and float(mel[0].abs().sum()) == 0.0
    torch.save({"features.0.weight": torch.zeros(1)}, str(path))
    with pytest.raises(PrismAudioError, match="do not match"):
        build_backend("vggish", path=str(path), **TINY_VGG).embed(audio, 32_000)


# ---------------------------------------------------------------- PaSST

TINY_PASST = {"img_size": (32, 150), "patch_size": 8, "stride": 8, "embed_dim": 16, "depth": 1, "num_heads": 2,
              "num_classes": 527}


def test_passt_embed_and_logits(tmp_path):
    from prismaudio.metrics.adapters.passt import PaSSTNet, kaldi_mel_banks

    torch.manual_seed(4)
    net = PaSSTNet(**TINY_PASST)
    for p in net.parameters():  # the reference init zeroes tokens/positional embeddings; randomise all
        p.data.normal_(0, 0.2)
    keys = set(net.state_dict())
    assert {"cls_token", "dist_token", "new_pos_embed", "freq_new_pos_embed", "time_new_pos_embed",
            "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "head.0.weight",
            "head.1.weight", "head_dist.weight"} <= keys
    path = tmp_path / "passt.safetensors"
    save_file({f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}, str(path))  # wrapper prefix
    assert backend_role("passt") == "embedder" and backend_role("passt_classifier") == "classifier"
    emb = build_backend("passt", path=str(path), window_s=1.0, **TINY_PASST)
    audio = _audio(b=2, c=2, sr=16_000, seconds=1.5)  # 2 windows (1 s + 0.5 s would be dropped: < 1 s)
    e = emb.embed(audio, 16_000)
    lo = emb.logits(audio, 16_000)
    assert e.shape == (2, 16) and lo.shape == (2, 527) and torch.isfinite(lo).all()
    cls = build_backend("passt_classifier", path=str(path), window_s=1.0, **TINY_PASST)
    assert torch.allclose(cls.logits(audio, 16_000), lo, atol=1e-5)  # fresh load, same outputs
    assert torch.allclose(cls.embed(audio[0], 16_000), e[:1], atol=1e-4)  # [C, S] input
    assert emb.embed(_audio(b=1, c=1, seconds=0.05), 16_000).shape == (1, 16)  # shorter than a patch
    banks = kaldi_mel_banks(128, 1024, 32_000, 0.0, 15_500.0)
    assert banks.shape == (128, 513) and float(banks[:, -1].abs().sum()) == 0.0
    save_file({"blocks.0.attn.qkv.weight": torch.zeros(2)}, str(path))
    with pytest.raises(PrismAudioError, match="do not match"):
        build_backend("passt", path=str(path), **TINY_PASST).embed(audio, 16_000)
