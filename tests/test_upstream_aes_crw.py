"""Audiobox Aesthetics, StereoCRW and the torchaudio-equal resampler against the upstream fixtures
(`shared/reference/upstream_fixtures/{audiobox_aesthetics,stereocrw}`), loading the weights in their release
formats. Every shape comes from the fixture tensors and every setting from its config.json, so the same tests
hold on other fixtures of the same layout. Tolerance: 1e-5 x max magnitude (1e-4 where a resampler is involved)."""

from __future__ import annotations

import json
import lzma
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prismaudio.errors import PrismAudioError
from prismaudio.metrics.adapters import _common
from prismaudio.metrics.adapters.aesthetics import AXES, official_aesthetic_reward
from prismaudio.metrics.adapters.resample import resample, resample_transform
from prismaudio.metrics.adapters.stereocrw import (
    ITDRewardConfig,
    crw_itd_rows,
    gcc_phat_itd_ms,
    official_itd_clip,
    official_itd_reward,
)
from prismaudio.metrics.adapters.wavlm import parse_conv_feature_layers
from prismaudio.metrics.backends import build_backend


def _close(got: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    """|got - ref| <= rel x max|ref| (the issue's tolerance), shapes equal."""
    assert got.shape == ref.shape
    err = (got.double() - ref.double()).abs().max().item()
    assert err <= rel * ref.double().abs().max().item(), f"max err {err:.3g} vs max |ref| {ref.abs().max():.3g}"


class Fixture:
    def __init__(self, root: Path, component: str):
        self.dir = root / "upstream_fixtures" / component
        self.cfg = json.loads((self.dir / "config.json").read_text())
        self.inputs = load_file(str(self.dir / self.cfg["inputs_file"]))
        self.outputs = load_file(str(self.dir / self.cfg["outputs_file"]))

    def pcm(self, key: str) -> torch.Tensor:
        return self.inputs[key].double() / self.cfg["pcm_divisor"]


@pytest.fixture(scope="module")
def aes_fx(shared_reference) -> Fixture:
    return Fixture(shared_reference, "audiobox_aesthetics")


@pytest.fixture(scope="module")
def crw_fx(shared_reference) -> Fixture:
    return Fixture(shared_reference, "stereocrw")


@pytest.fixture(scope="module")
def crw_release(crw_fx, tmp_path_factory) -> Path:
    """The user-facing `.pth.tar`, decompressed from the fixture's xz copy."""
    out = tmp_path_factory.mktemp("crw") / crw_fx.cfg["weights_raw_file"]
    with lzma.open(crw_fx.dir / crw_fx.cfg["weights_file"]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert out.stat().st_size == crw_fx.cfg["weights_raw_size_bytes"]
    return out


@pytest.fixture(scope="module")
def crw(crw_release):
    return build_backend("stereocrw", path=str(crw_release))


@pytest.fixture(scope="module")
def crw_clips(crw_fx) -> list[torch.Tensor]:
    """Each file read as the official reward reads it (scipy's FFT resample of 317,519 samples is the slow part)."""
    r = _reward_cfg(crw_fx.cfg)
    return [official_itd_clip(crw_fx.pcm(s["input_key"]), s["sample_rate"], r) for s in crw_fx.cfg["files"]]


def _reward_cfg(cfg: dict) -> ITDRewardConfig:
    return ITDRewardConfig(samp_sr=cfg["samp_sr"], clip_length=cfg["clip_length"], patch_num=cfg["patch_num"],
                           patch_stride=cfg["patch_stride"], max_delay=cfg["max_delay"], tau=cfg["tau"],
                           gcc_fft=cfg["gcc_fft"], read_ratio=cfg["read_ratio"],
                           mse_weight=cfg["reward_mse_weight"], band_mask_fill=cfg["band_mask_fill"],
                           gcc_eps=cfg["gcc_eps"])


# ------------------------------------------------------------------------------------------ resampler
def test_resample_properties():
    x = torch.randn(2, 3, 1000, generator=torch.Generator().manual_seed(0))
    assert resample(x, 16_000, 16_000) is x  # identity at equal rates (torchaudio returns the input)
    for orig, new in ((44_100, 16_000), (16_000, 44_100), (48_000, 44_100), (22_050, 16_000), (8_000, 16_000)):
        for n in (1, 7, 441, 1000):
            y = resample(x[..., :n], orig, new)
            assert y.shape == (2, 3, math.ceil(n * new / orig)), (orig, new, n)
    y = resample(x, 44_100, 16_000)  # any leading dims: rows are independent
    assert torch.allclose(y[1, 2], resample(x[1, 2], 44_100, 16_000), atol=1e-7)
    # a 1 kHz sine through 44.1 kHz -> 16 kHz is the same sine sampled at 16 kHz (away from the zero-padded
    # edges); one above the new Nyquist is removed
    t = torch.arange(44_100, dtype=torch.float64) / 44_100
    y = resample(torch.sin(2 * math.pi * 1000 * t), 44_100, 16_000)
    ref = torch.sin(2 * math.pi * 1000 * torch.arange(16_000, dtype=torch.float64) / 16_000)
    assert (y - ref)[200:-200].abs().max() < 1e-3
    assert resample(torch.sin(2 * math.pi * 12_000 * t), 44_100, 16_000)[200:-200].abs().max() < 5e-3
    with pytest.raises(PrismAudioError, match="positive integer"):
        resample(x, 0, 16_000)
    with pytest.raises(PrismAudioError, match="floating"):
        resample(torch.zeros(10, dtype=torch.int16), 44_100, 16_000)


def test_upstream_audiobox_resampler_and_mono(aes_fx):
    """torchaudio.functional.resample on every channel, then the channel mean (mono_at for this backend)."""
    cfg = aes_fx.cfg
    assert (cfg["resample_lowpass_filter_width"], cfg["resample_rolloff"]) == (6, 0.99)  # our defaults
    items = {it["name"]: it for it in cfg["items"]}
    assert cfg["mono16k_outputs"]
    for key in cfg["mono16k_outputs"]:
        it = items[key.removeprefix("mono16k_")]
        x = aes_fx.pcm(it["input_key"]).float()
        got = _common.mono_at(x, it["sample_rate"], cfg["sample_rate"], "audiobox_aesthetics")[0]
        _close(got, aes_fx.outputs[key])
        _close(resample(x, it["sample_rate"], cfg["sample_rate"]).mean(0), aes_fx.outputs[key])


def test_upstream_msclap_transform_resampler(shared_reference):
    """`resample_transform` = torchaudio.transforms.Resample (what MS-CLAP uses), on its fixture's waveform."""
    fx = Fixture(shared_reference, "msclap_2023")
    clips = {c["name"]: c for c in fx.cfg["clips"]}
    assert fx.cfg["audio_preprocessed_outputs"]
    for key in fx.cfg["audio_preprocessed_outputs"]:
        name = key.removeprefix("audio_preprocessed_").rsplit("_first", 1)[0]
        ref = fx.outputs[key]
        x = fx.pcm(clips[name]["input_key"]).float()
        got = resample_transform(x, clips[name]["sample_rate"], fx.cfg["sampling_rate"]).reshape(-1)[: ref.numel()]
        _close(got, ref)


# ------------------------------------------------------------------------------------------ Audiobox
def test_upstream_audiobox_loads_release_checkpoint_as_is(aes_fx):
    """The release checkpoint.pt loads with no option: sizes from its tensors, strides / max_distance upstream's."""
    cfg = aes_fx.cfg
    aes = build_backend("audiobox_aesthetics", path=str(aes_fx.dir / cfg["weights_file"]))
    w = aes.config
    assert [list(c) for c in w.conv_layers] == cfg["conv_feature_layers_parsed"]
    assert (w.embed_dim, w.ffn_dim, w.layers, w.heads) == (
        cfg["encoder_embed_dim"], cfg["encoder_ffn_embed_dim"], cfg["encoder_layers"], cfg["encoder_attention_heads"])
    assert (w.conv_pos, w.conv_pos_groups, w.num_buckets, w.max_distance, w.gru_rel_pos) == (
        cfg["conv_pos"], cfg["conv_pos_groups"], cfg["num_buckets"], cfg["max_distance"], cfg["gru_rel_pos"])
    assert w.hop == cfg["samples_per_frame"] and w.layer_norm_eps == cfg["layer_norm_eps"]
    assert aes._model.nth_layer == cfg["nth_layer"] == cfg["model_cfg"]["nth_layer"]
    assert aes.target == {a: (cfg["target_transform"][a]["mean"], cfg["target_transform"][a]["std"]) for a in AXES}
    assert list(AXES) == cfg["axes"]
    # upstream's conv_feature_layers string parses (literal grammar only, never eval'd) to the same layers
    assert [list(c) for c in parse_conv_feature_layers(cfg["conv_feature_layers"])] == cfg["conv_feature_layers_parsed"]
    for bad in ("__import__('os')", "[(32, 10, 5)] * 10**9", "[(32, 10)]"):
        with pytest.raises(PrismAudioError, match="conv_feature_layers"):
            parse_conv_feature_layers(bad)


def test_upstream_audiobox_windows_and_scores(aes_fx):
    """Per-window predictions (padded last windows), window bookkeeping and the per-item scores."""
    cfg, out = aes_fx.cfg, aes_fx.outputs
    aes = build_backend("audiobox_aesthetics", path=str(aes_fx.dir / cfg["weights_file"]), clamp=False,
                        window_s=cfg["window_seconds"], conv_feature_layers=cfg["conv_feature_layers"],
                        max_distance=cfg["max_distance"])
    assert aes.window == cfg["window_samples"] and cfg["hop_seconds"] == cfg["window_seconds"]
    preds, valid, index, scores, resampled = [], [], [], [], []
    for i, it in enumerate(cfg["items"]):
        x = aes_fx.pcm(it["input_key"]).float()
        assert tuple(x.shape) == (it["channels"], it["num_samples"])
        p, v = aes.window_predictions(x, it["sample_rate"])
        preds.append(p[0])
        valid.append(v[0])
        index += [i] * p.shape[1]
        resampled += [it["sample_rate"] != cfg["sample_rate"]] * p.shape[1]
        s = aes.combine(p, v)  # = aes.score(x, sr) without a second forward pass
        scores.append(torch.stack([s[a][0] for a in AXES]))
    preds, valid = torch.cat(preds), torch.cat(valid)
    assert preds.shape == out["window_preds_normalized"].shape and len(index) == cfg["num_windows"]
    assert index == out["window_item_index"].tolist()
    assert valid.tolist() == out["window_valid_samples"].tolist()
    torch.testing.assert_close(valid.double() / cfg["window_samples"], out["window_weight"], rtol=0,
                               atol=cfg["recommended_atol"]["window_weight"])
    ref = out["window_preds_normalized"]
    res = torch.tensor(resampled)
    scale = ref.abs().max().item()
    err = (preds - ref).abs().amax(-1)
    assert bool((err[~res] <= 1e-5 * scale).all()) and bool((err[res] <= 1e-4 * scale).all()), err
    got = torch.stack(scores)
    item_res = torch.tensor([it["sample_rate"] != cfg["sample_rate"] for it in cfg["items"]])
    serr = (got.double() - out["scores_float64_reported"]).abs().amax(-1)
    smax = out["scores_float64_reported"].abs().max().item()
    assert bool((serr[~item_res] <= 1e-5 * smax).all()) and bool((serr[item_res] <= 1e-4 * smax).all()), serr
    _close(got, out["scores"], rel=1e-4 if item_res.any() else 1e-5)
    # the official reward mix of these (unclamped) axes
    axes = {a: got[:, j] for j, a in enumerate(AXES)}
    ref_axes = {a: out["scores_float64_reported"][:, j] for j, a in enumerate(AXES)}
    _close(official_aesthetic_reward(axes), official_aesthetic_reward(ref_axes), rel=1e-4)
    expect = (ref_axes["CE"] + ref_axes["CU"] - ref_axes["PC"] + ref_axes["PQ"]) / 40
    assert torch.equal(official_aesthetic_reward(ref_axes), expect)


# ------------------------------------------------------------------------------------------ StereoCRW
def test_upstream_stereocrw_release_file_and_settings(crw_fx, crw_release, crw):
    """The .pth.tar reads with weights_only=True (an int epoch and tensors only) and loads strictly; the reward
    settings derived in ITDRewardConfig equal the fixture's."""
    cfg = crw_fx.cfg
    ck = torch.load(str(crw_release), map_location="cpu", weights_only=True)
    assert set(ck) == {"epoch", "state_dict"} and all(k.startswith(cfg["weights_prefix"]) for k in ck["state_dict"])
    net = crw.net
    assert len(net.state_dict()) == len(ck["state_dict"])
    assert net.net.fc.out_features == cfg["feat_dim"] and net.net.conv1.in_channels == cfg["conv1_in_channels"]
    assert [net.net.conv1.kernel_size[0], net.net.conv1.stride[0], net.net.conv1.padding[0]] == [
        cfg["conv1_kernel"], cfg["conv1_stride"], cfg["conv1_padding"]]
    assert [getattr(net.net, f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3, 4)] == cfg["resnet_widths"]
    assert (net.n_fft, net.win_length) == (cfg["n_fft"], cfg["win_length"])
    r = _reward_cfg(cfg)
    assert (r.patch_samples, r.total_samples, r.hop_length, r.max_delay_offset) == (
        cfg["patch_samples"], cfg["total_samples"], cfg["hop_length"], cfg["max_delay_offset"])
    assert (r.gcc_step, r.gcc_max_shift, 2 * r.gcc_fft) == (cfg["gcc_step"], cfg["gcc_max_shift"], cfg["gcc_rfft_n"])
    assert r.patch_num - 2 * r.max_delay_offset == cfg["crw_itd_rows"]


def test_upstream_stereocrw_clip_stft_and_features(crw_fx, crw, crw_clips):
    """Reading / tiling / FFT resampling of each file, the STFT image, and the features of a subset of patches
    (first, last, and a spread: the full 2 x 2 x 512 six-second patches are the slow end-to-end test)."""
    cfg, out = crw_fx.cfg, crw_fx.outputs
    r = _reward_cfg(cfg)
    assert len(cfg["files"]) == out["feat_left"].shape[0]
    for f, spec in enumerate(cfg["files"]):
        x = crw_fx.pcm(spec["input_key"])
        assert tuple(x.shape) == (2, spec["num_samples"])
        clip = crw_clips[f]
        assert clip.shape == (2, cfg["total_samples"]) and clip.dtype == torch.float32
        if f == 0:
            for c, side in enumerate(("left", "right")):
                ref = out[next(k for k in out if k.startswith(f"{side}_wave_item0_first"))]
                _close(clip[c, : ref.numel()], ref, rel=1e-4)
            stft = out["stft_left_item0_patch_first_last"]
            first_last = clip[0].unfold(-1, r.patch_samples, r.patch_stride)[[0, r.patch_num - 1]]
            img = crw.net.image(first_last, r.hop_length)
            assert list(img.shape[1:]) == cfg["stft_shape"]
            _close(img, stft, rel=1e-4)
        p = out["feat_left"].shape[1]
        sel = torch.tensor(sorted({0, 1, p // 3, p // 2, p - 2, p - 1}))
        left, right = crw.reward_features(clip, r, patches=sel)
        _close(left[0], out["feat_left"][f, sel], rel=1e-4)
        _close(right[0], out["feat_right"][f, sel], rel=1e-4)


def test_upstream_stereocrw_itd_gcc_and_reward(crw_fx, crw_clips):
    """CRW ITDs from the upstream features (band mask, softmax, soft lag, dropped rows, mean, pooled), the
    GCC-PHAT baseline of each clip, and the reward of generated file vs ground truth."""
    cfg, out = crw_fx.cfg, crw_fx.outputs
    r = _reward_cfg(cfg)
    rows = crw_itd_rows(out["feat_left"], out["feat_right"], r)
    _close(rows, out["crw_itd_per_patch"])
    _close(rows.mean(-1) * 1000, out["crw_itd_mean_ms"])
    pooled = torch.nn.functional.adaptive_avg_pool1d(rows[:, None], out["crw_itd_pooled256"].shape[-1])[:, 0]
    _close(pooled, out["crw_itd_pooled256"])
    gcc = torch.stack([gcc_phat_itd_ms(clip, r) for clip in crw_clips])
    _close(gcc, out["gcc_phat_itd_ms"])
    g, t = cfg["reward_gen_index"], cfg["reward_gt_index"]
    score = official_itd_reward({"crw_itd_ms": rows[g].mean() * 1000, "gcc_itd_ms": gcc[g]},
                                {"crw_itd_ms": rows[t].mean() * 1000, "gcc_itd_ms": gcc[t]}, r)
    _close(score.reshape(1), out["reward_score_gen0_vs_gt1"])


@pytest.mark.slow
def test_upstream_stereocrw_end_to_end(crw_fx, crw):
    """Each file end to end (read, resample, 512 six-second patches x 2 channels, ITDs, GCC): ~25 s on 2 idle
    cores (the network on 2 x 2 x 512 images of 128 x 128)."""
    cfg, out = crw_fx.cfg, crw_fx.outputs
    r = _reward_cfg(cfg)
    res = []
    for f, s in enumerate(cfg["files"]):
        res.append(crw.official_itd(crw_fx.pcm(s["input_key"]), s["sample_rate"], r))
        _close(res[-1]["feat_left"], out["feat_left"][f], rel=1e-4)
        _close(res[-1]["feat_right"], out["feat_right"][f], rel=1e-4)
        _close(res[-1]["crw_itd_per_patch"], out["crw_itd_per_patch"][f], rel=1e-4)
    _close(torch.stack([x["crw_itd_ms"] for x in res]), out["crw_itd_mean_ms"], rel=1e-4)
    _close(torch.stack([x["gcc_itd_ms"] for x in res]), out["gcc_phat_itd_ms"])
    score = official_itd_reward(res[cfg["reward_gen_index"]], res[cfg["reward_gt_index"]], r)
    _close(score.reshape(1), out["reward_score_gen0_vs_gt1"], rel=1e-4)


# ------------------------------------------------------------------------------------------ bad checkpoints
def _one_line_error(fn) -> str:
    with pytest.raises(PrismAudioError) as err:
        fn()
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_upstream_bad_checkpoints(aes_fx, crw_release, tmp_path):
    aes_file = aes_fx.dir / aes_fx.cfg["weights_file"]
    x = torch.zeros(1, 16_000)

    def aes(p):
        return lambda: build_backend("audiobox_aesthetics", path=str(p)).score(x, 16_000)

    def crw(p):
        return lambda: build_backend("stereocrw", path=str(p)).net

    # wrong model, both ways: the file and the first unexpected / missing key are named
    msg = _one_line_error(crw(aes_file))
    assert str(aes_file) in msg and "net.bn1.bias" in msg and "model.layer_weights.CE" in msg
    msg = _one_line_error(aes(crw_release))
    assert str(crw_release) in msg and "wavlm_model" in msg
    # truncated files
    for src, load in ((aes_file, aes), (crw_release, crw)):
        cut = tmp_path / f"cut_{src.name}"
        cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        assert str(cut) in _one_line_error(load(cut))
    # a missing key
    ck = torch.load(str(aes_file), weights_only=True)
    sd = dict(ck["state_dict"])
    gone = sorted(k for k in sd if k.startswith("model.proj_layer."))[0]
    del sd[gone]
    bad = tmp_path / "aes_missing.pt"
    torch.save({**ck, "state_dict": sd}, str(bad))
    msg = _one_line_error(aes(bad))
    assert str(bad) in msg and gone.removeprefix("model.") in msg
    ck = torch.load(str(crw_release), weights_only=True)
    sd = dict(ck["state_dict"])
    gone = sorted(sd)[0]
    del sd[gone]
    bad = tmp_path / "crw_missing.pth.tar"
    torch.save({**ck, "state_dict": sd}, str(bad))
    msg = _one_line_error(crw(bad))
    assert str(bad) in msg and gone.removeprefix("module.") in msg
    # a pickle of a non-tensor object is refused by weights_only (never unpickled), in one line
    evil = tmp_path / "object.pth.tar"
    torch.save({"epoch": 1, "state_dict": sd, "args": Path("/x")}, str(evil))
    assert str(evil) in _one_line_error(crw(evil))
