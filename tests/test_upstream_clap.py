"""MS-CLAP 2023 and LAION-CLAP against the upstream fixtures (../shared/reference/upstream_fixtures).

Every shape comes from the fixture's tensors and every setting from its config.json, so the same tests pass on
any fixture of the same layout. Tolerance: 1e-5 x max|upstream| per output, 1e-4 for clips that were resampled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from prismaudio.errors import PrismAudioError
from prismaudio.metrics.backends import build_backend

pytest.importorskip("transformers")
from safetensors.torch import load_file  # noqa: E402

TOL, TOL_RESAMPLED = 1e-5, 1e-4


def _fixture(ref: Path, name: str) -> tuple[Path, dict[str, Any], dict, dict]:
    d = ref / "upstream_fixtures" / name
    cfg = json.loads((d / "config.json").read_text())
    return d, cfg, load_file(str(d / cfg["inputs_file"])), load_file(str(d / cfg["outputs_file"]))


def _check(name: str, ours: torch.Tensor, ref: torch.Tensor, rel: torch.Tensor | float = TOL) -> None:
    """|ours - ref| <= rel x max|ref| (rel per leading row when a tensor); prints the measured error."""
    ours = ours.detach().float().cpu().reshape(ref.shape)
    err = (ours - ref).abs().reshape(ref.shape[0], -1).amax(-1) if ref.ndim else (ours - ref).abs().reshape(1)
    scale = ref.abs().max().clamp(min=1e-12)
    rel_t = torch.as_tensor(rel, dtype=torch.float32).expand(err.shape)
    print(f"{name}: max abs err {float(err.max()):.3g}, relative {float(err.max() / scale):.3g}")
    assert bool((err <= rel_t * scale).all()), f"{name}: errors {err.tolist()} > {(rel_t * scale).tolist()}"


def _msclap_options(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"sampling_rate": cfg["sampling_rate"], "duration": cfg["duration"], "hop_size": cfg["stft_hop"],
            "spec_size": cfg["htsat_spec_size"], "patch_stride": tuple(cfg["htsat_patch_stride"]),
            "htsat_layer_norm_eps": cfg["htsat_layer_norm_eps"], "bn_eps": cfg["bn_eps"],
            "text_len": cfg["text_len"], "gpt2_n_head": cfg["gpt2_n_head"],
            "gpt2_layer_norm_epsilon": cfg["gpt2_layer_norm_epsilon"], "gpt2_activation": cfg["gpt2_activation"],
            "projection_layer_norm_eps": cfg["projection_layer_norm_eps"],
            "resample_lowpass_filter_width": cfg["resample_lowpass_filter_width"],
            "resample_rolloff": cfg["resample_rolloff"]}


def _laion_options(cfg: dict[str, Any], quantize: bool = False) -> dict[str, Any]:
    return {"sample_rate": cfg["sample_rate"], "max_len": cfg["max_len"], "hop_size": cfg["hop_size"],
            "spec_size": cfg["htsat_spec_size"], "patch_stride": tuple(cfg["htsat_patch_stride"]),
            "htsat_layer_norm_eps": cfg["htsat_layer_norm_eps"], "bn_eps": cfg["bn_eps"], "quantize": quantize,
            "text_len": cfg["text_len"], "roberta_num_attention_heads": cfg["roberta_num_attention_heads"],
            "roberta_layer_norm_eps": cfg["roberta_layer_norm_eps"], "roberta_hidden_act": cfg["roberta_hidden_act"],
            "roberta_pad_token_id": cfg["roberta_pad_token_id"], "roberta_bos_token_id": cfg["roberta_bos_token_id"],
            "roberta_eos_token_id": cfg["roberta_eos_token_id"]}


def _front_end_preconditions(cfg: dict[str, Any], n_fft_key: str) -> None:
    """The protocol our front end implements (a fixture with another one is not of this layout)."""
    assert (cfg["window"], cfg["center"], cfg["pad_mode"], cfg["power"]) == ("hann_periodic", True, "reflect", 2.0)
    assert (cfg["ref"], cfg["top_db"], cfg["mel_scale"], cfg["mel_norm"]) == (1.0, None, "slaney", "slaney")
    assert cfg["htsat_time_interp_mode"] == "bicubic_align_corners"
    assert cfg[n_fft_key] > 0


# ---------------------------------------------------------------- MS-CLAP 2023


@pytest.fixture(scope="module")
def msclap(shared_reference):
    d, cfg, inp, out = _fixture(shared_reference, "msclap_2023")
    clap = build_backend("ms_clap", path=str(d / cfg["weights_file"]), **_msclap_options(cfg))
    clap.load()
    return clap, cfg, inp, out


def _msclap_wave(cfg: dict[str, Any], inp: dict, clip: dict[str, Any]) -> torch.Tensor:
    return inp[clip["input_key"]].float() / cfg["pcm_divisor"]  # [C, S]


@pytest.fixture(scope="module")
def msclap_audio(msclap):
    """Upstream's per-file loop: (embedding, HTSAT output) of each clip."""
    clap, cfg, inp, _ = msclap
    return [clap.audio_outputs(_msclap_wave(cfg, inp, c), c["sample_rate"]) for c in cfg["clips"]]


def _row_tols(cfg: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([TOL if c["sample_rate"] == cfg["sampling_rate"] else TOL_RESAMPLED for c in cfg["clips"]])


def test_upstream_msclap_sizes_and_frozen_front_end(msclap):
    from prismaudio.metrics.adapters.htsat import slaney_mel, stft_kernels

    clap, cfg, _, out = msclap
    _front_end_preconditions(cfg, "stft_n_fft")
    h, g = clap.net.htsat.cfg, clap.net.caption_encoder.base.config
    assert (h.embed_dim, list(h.depths), list(h.num_heads)) == (cfg["htsat_embed_dim"], cfg["htsat_depths"],
                                                                cfg["htsat_num_heads"])
    assert (h.window_size, h.num_classes, h.num_features) == (cfg["htsat_window_size"], cfg["htsat_num_classes"],
                                                              cfg["htsat_num_features"])
    assert (list(h.patch_size), h.in_chans, h.freq_ratio, h.mlp_ratio, h.qkv_bias) == (
        [cfg["htsat_patch_size"]] * 2, cfg["htsat_in_chans"], cfg["htsat_freq_ratio"], cfg["htsat_mlp_ratio"],
        cfg["htsat_qkv_bias"])
    assert (h.max_frames, h.mel_bins, h.n_fft) == (cfg["htsat_time_interp_frames"], cfg["n_mels"], cfg["stft_n_fft"])
    assert (g.n_embd, g.n_layer, g.vocab_size, g.n_positions, g.n_inner) == (
        cfg["gpt2_n_embd"], cfg["gpt2_n_layer"], cfg["gpt2_vocab_size"], cfg["gpt2_n_positions"], cfg["gpt2_n_inner"])
    assert clap.net.audio_encoder.projection.linear1.out_features == cfg["d_proj"] == out["audio_embeddings"].shape[1]
    assert clap.options.num_samples == cfg["audio_num_samples"]
    assert abs(float(clap.net.logit_scale) - cfg["logit_scale_init"]) < 1e-6
    # the release file's frozen STFT kernels and mel matrix are what torchlibrosa / librosa build
    fe = clap.net.htsat
    real, imag = stft_kernels(cfg["stft_n_fft"])
    assert torch.allclose(fe.spectrogram_extractor.stft.conv_real.weight, real, atol=1e-6)
    assert torch.allclose(fe.spectrogram_extractor.stft.conv_imag.weight, imag, atol=1e-6)
    mel = slaney_mel(cfg["mel_sample_rate"], cfg["stft_n_fft"], cfg["n_mels"], cfg["fmin"], cfg["fmax"])
    assert torch.allclose(fe.logmel_extractor.melW, mel, atol=1e-6)


def test_upstream_msclap_preprocessing(msclap):
    clap, cfg, inp, out = msclap
    for c in cfg["clips"]:
        wave = _msclap_wave(cfg, inp, c)
        assert wave.shape[0] == c["channels"] and wave.shape[1] == c["num_samples"]
        pre = clap.preprocess(wave[None], c["sample_rate"])
        assert pre.shape == (1, cfg["audio_num_samples"])
        key = f"audio_preprocessed_{c['name']}_first"
        for k in [k for k in cfg.get("audio_preprocessed_outputs", []) if k.startswith(key)]:
            ref = out[k]
            _check(k, pre[0, : ref.shape[0]], ref, TOL)  # the resampler itself, at the tight tolerance
        if c["sample_rate"] == cfg["sampling_rate"] and c["channels"] == 1:  # tiling rule, exactly
            n = c["num_samples"]
            reps = -(-cfg["audio_num_samples"] // n)
            assert torch.equal(pre[0], wave[0].repeat(reps)[: cfg["audio_num_samples"]])


def test_upstream_msclap_audio(msclap, msclap_audio):
    _, cfg, _, out = msclap
    tols = _row_tols(cfg)
    assert out["logmel"].shape[2] == cfg["mel_frames"]
    _check("msclap logmel", torch.cat([o.logmel for _, o in msclap_audio]), out["logmel"], tols)
    _check("msclap htsat_latent", torch.cat([o.latent for _, o in msclap_audio]), out["htsat_latent"], tols)
    _check("msclap audio_embeddings", torch.cat([e for e, _ in msclap_audio]), out["audio_embeddings"], tols)


def test_upstream_msclap_text_and_similarity(msclap, msclap_audio):
    clap, cfg, inp, out = msclap
    ids, mask = inp["text_input_ids"], inp["text_attention_mask"]
    assert ids.shape[1] == cfg["text_len"] and (ids != cfg["text_pad_token_id"]).sum(-1).tolist() == cfg["text_lens"]
    text = clap.text_outputs(ids, mask)
    _check("msclap text_embeddings", text, out["text_embeddings"])
    audio = torch.cat([e for e, _ in msclap_audio])
    sim = clap.compute_similarity(audio, text)
    assert sim.shape == out["similarity"].shape
    _check("msclap similarity", sim, out["similarity"], _row_tols(cfg))


def test_upstream_msclap_official_semantic_reward(msclap, monkeypatch):
    """similarity / 80 through the string API (tokenizer replaced by the fixture's ids) = upstream diag / 80."""
    from prismaudio.metrics.adapters.clap import OFFICIAL_REWARD_DIVISOR, official_semantic_reward

    clap, cfg, inp, out = msclap
    i = next(j for j, c in enumerate(cfg["clips"]) if c["sample_rate"] == cfg["sampling_rate"])
    c = cfg["clips"][i]
    monkeypatch.setattr(clap, "tokenize", lambda texts: (inp["text_input_ids"][i:i + 1],
                                                         inp["text_attention_mask"][i:i + 1]))
    r = official_semantic_reward(clap, _msclap_wave(cfg, inp, c), c["sample_rate"], ["text"])
    assert r.shape == (1,)
    _check("msclap official reward", r, out["similarity"][i, i:i + 1] / OFFICIAL_REWARD_DIVISOR)
    with pytest.raises(PrismAudioError, match="ms_clap"):
        official_semantic_reward(object(), _msclap_wave(cfg, inp, c), c["sample_rate"], ["text"])


# ---------------------------------------------------------------- LAION-CLAP


@pytest.fixture(scope="module")
def laion(shared_reference):
    d, cfg, inp, out = _fixture(shared_reference, "laion_clap")
    assert not cfg["enable_fusion"] and cfg["data_filling"] == "repeatpad"
    clap = build_backend("laion_clap", path=str(d / cfg["weights_file"]), **_laion_options(cfg))
    clap.load()
    return clap, cfg, inp, out, d


def _laion_batch(cfg: dict[str, Any], inp: dict, b: dict[str, Any]) -> torch.Tensor:
    x = inp[b["input_key"]].float() / cfg["pcm_divisor"]  # [clips, samples], mono clips
    assert x.shape == (b["num_clips"], b["num_samples"])
    return x[:, None]


def test_upstream_laion_clap_sizes_and_preprocessing(laion):
    from prismaudio.metrics.adapters.htsat import slaney_mel

    clap, cfg, inp, _, _ = laion
    _front_end_preconditions(cfg, "window_size")
    h, r = clap.net.audio_branch.cfg, clap.net.text_branch.config
    assert (h.embed_dim, list(h.depths), list(h.num_heads), h.num_classes, h.num_features) == (
        cfg["htsat_embed_dim"], cfg["htsat_depths"], cfg["htsat_num_heads"], cfg["htsat_num_classes"],
        cfg["embed_dim"])
    assert (h.window_size, h.n_fft, h.mel_bins, h.max_frames) == (cfg["htsat_window_size"], cfg["window_size"],
                                                                  cfg["mel_bins"], cfg["htsat_time_interp_frames"])
    assert (r.vocab_size, r.hidden_size, r.num_hidden_layers, r.intermediate_size, r.max_position_embeddings,
            r.type_vocab_size) == (cfg["roberta_vocab_size"], cfg["roberta_hidden_size"],
                                   cfg["roberta_num_hidden_layers"], cfg["roberta_intermediate_size"],
                                   cfg["roberta_max_position_embeddings"], cfg["roberta_type_vocab_size"])
    assert clap.net.audio_projection[0].out_features == cfg["joint_embed_shape"]
    mel = slaney_mel(cfg["sample_rate"], cfg["window_size"], cfg["mel_bins"], cfg["fmin"], cfg["fmax"])
    assert torch.allclose(clap.net.audio_branch.logmel_extractor.melW, mel, atol=1e-6)
    for b in cfg["batches"]:  # repeatpad: floor(max_len / n) copies, then zeros
        x = _laion_batch(cfg, inp, b)
        pre = clap.preprocess(x, cfg["sample_rate"])
        n, reps = b["num_samples"], cfg["max_len"] // b["num_samples"]
        assert pre.shape == (b["num_clips"], cfg["max_len"])
        assert torch.equal(pre[:, : n * reps], x[:, 0].repeat(1, reps)) and not pre[:, n * reps:].any()


def test_upstream_laion_clap_audio_tensor_path(laion):
    clap, cfg, inp, out, _ = laion
    for b in cfg["batches"]:
        emb, h = clap.audio_outputs(_laion_batch(cfg, inp, b), cfg["sample_rate"])
        assert out[f"logmel_{b['name']}_row0"].shape[2] == cfg["mel_frames"]
        _check(f"laion logmel_{b['name']}_row0", h.logmel[:1], out[f"logmel_{b['name']}_row0"])
        _check(f"laion htsat_latent_{b['name']}", h.latent, out[f"htsat_latent_{b['name']}"])
        _check(f"laion audio_embed_tensor_{b['name']}", emb, out[f"audio_embed_tensor_{b['name']}"])
        assert torch.allclose(clap.embed_audio(_laion_batch(cfg, inp, b)[:1], cfg["sample_rate"]), emb[:1].cpu(),
                              atol=1e-6)


def test_upstream_laion_clap_audio_numpy_path(laion):
    _, cfg, inp, out, d = laion
    clap = build_backend("laion_clap", path=str(d / cfg["weights_file"]), **_laion_options(cfg, quantize=True))
    for b in cfg["batches"]:
        emb, _ = clap.audio_outputs(_laion_batch(cfg, inp, b), cfg["sample_rate"])
        _check(f"laion audio_embed_numpy_{b['name']}", emb, out[f"audio_embed_numpy_{b['name']}"])


def test_upstream_laion_clap_text(laion):
    clap, cfg, inp, out, _ = laion
    ids, mask = inp["text_input_ids"], inp["text_attention_mask"]
    assert ids.shape[1] == cfg["text_len"] and mask.sum(-1).tolist() == cfg["text_lens"]
    _check("laion text_embed", clap.text_outputs(ids, mask), out["text_embed"])


# ---------------------------------------------------------------- bad checkpoints


def _one_line_error(name: str, path: Path, options: dict[str, Any], *needles: str) -> None:
    with pytest.raises(PrismAudioError) as e:
        build_backend(name, path=str(path), **options).load()
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    for n in needles:
        assert n in msg, msg


def test_upstream_msclap_bad_checkpoints(shared_reference, tmp_path):
    d, cfg, _, _ = _fixture(shared_reference, "msclap_2023")
    ld, lcfg, _, _ = _fixture(shared_reference, "laion_clap")
    opts = _msclap_options(cfg)
    good = d / cfg["weights_file"]
    _one_line_error("ms_clap", ld / lcfg["weights_file"], opts, "missing key", "audio_encoder.base.htsat.")
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _one_line_error("ms_clap", cut, opts, "cannot read")
    full = torch.load(str(good), weights_only=True)
    sd = dict(full["model"])
    gone = "audio_encoder.projection.linear2.weight"
    sd.pop(gone)
    torch.save({"model": sd}, str(tmp_path / "missing.pth"))
    _one_line_error("ms_clap", tmp_path / "missing.pth", opts, f"missing key {gone!r}")
    sd = {**full["model"], "caption_encoder.base.extra.weight": torch.zeros(1)}
    torch.save({"model": sd}, str(tmp_path / "extra.pth"))
    _one_line_error("ms_clap", tmp_path / "extra.pth", opts, "unexpected key 'caption_encoder.base.extra.weight'")
    # the old GPT-2 buffers are optional: a file without them loads too
    sd = {k: v for k, v in full["model"].items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert len(sd) < len(full["model"])
    torch.save({"model": sd}, str(tmp_path / "nobuf.pth"))
    build_backend("ms_clap", path=str(tmp_path / "nobuf.pth"), **opts).load()
    with pytest.raises(PrismAudioError, match="unknown option"):
        build_backend("ms_clap", path=str(good), hopsize=1)
    with pytest.raises(PrismAudioError, match="tokenizer"):  # strings need a tokenizer; none beside the file
        shutil.copy(good, tmp_path / "alone.pth")
        build_backend("ms_clap", path=str(tmp_path / "alone.pth"), **opts).embed_text(["a dog"])


def test_upstream_laion_clap_bad_checkpoints(shared_reference, tmp_path):
    d, cfg, _, _ = _fixture(shared_reference, "laion_clap")
    md, mcfg, _, _ = _fixture(shared_reference, "msclap_2023")
    opts = _laion_options(cfg)
    good = d / cfg["weights_file"]
    _one_line_error("laion_clap", md / mcfg["weights_file"], opts, "missing key", "audio_branch.")
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    _one_line_error("laion_clap", cut, opts, "cannot read")
    full = torch.load(str(good), weights_only=True)
    prefix = cfg["weights_prefix"]
    sd = dict(full["state_dict"])
    gone = "text_branch.pooler.dense.weight"
    sd.pop(prefix + gone)
    torch.save({**full, "state_dict": sd}, str(tmp_path / "missing.pt"))
    _one_line_error("laion_clap", tmp_path / "missing.pt", opts, f"missing key {gone!r}")
    sd = {k: v for k, v in full["state_dict"].items() if not k.endswith("position_ids")}  # optional entry
    torch.save({**full, "state_dict": sd}, str(tmp_path / "noids.pt"))
    build_backend("laion_clap", path=str(tmp_path / "noids.pt"), **opts).load()
