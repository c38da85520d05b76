"""The official reward variants: registry names, preset, real-config paths, wiring, and the ITD reward
against the upstream StereoCRW fixture (`pytest -k upstream`)."""

from __future__ import annotations

import json
import lzma
import math

import numpy as np
import pytest
import torch

from prismaudio import rewards as R
from prismaudio.errors import PrismAudioError
from prismaudio.metrics import official_rewards as O
from prismaudio.metrics import real_config
from prismaudio.metrics.adapters import aesthetics as aes_mod
from prismaudio.metrics.adapters import clap as clap_mod
from prismaudio.metrics.adapters import desync as desync_mod
from prismaudio.metrics.adapters import stereocrw as crw_mod
from prismaudio.metrics.backends import _BACKENDS, register_backend

SR = 16000
OFFICIAL = ("official_semantic", "official_temporal", "official_aesthetic", "official_spatial")


class FakeClap:
    def __init__(self, path: str):
        self.path = path

    def load(self):
        pass


class FakeAes:
    def __init__(self, path: str, clamp: bool = True):
        self.path, self.clamp = path, clamp

    def score(self, audio, sr):
        rms = audio.pow(2).mean((1, 2)).sqrt()
        return {"CE": 4 + rms, "CU": 5 + rms, "PC": 2 + 0 * rms, "PQ": 6 + rms}


class FakeSync:
    def __init__(self, path: str):
        self.path = path


class FakeCRW:
    """`net`: each 96000-sample patch -> every 750th sample (128 values), so equal patches have equal
    features: a right channel delayed by d samples matches left patch i at right patch i + d."""

    tau = 0.05

    def __init__(self, path: str, hop_length: int = 30):
        self.path, self.hop_length = path, hop_length
        self.net = lambda patches: patches[:, ::750]


for _name, _role, _cls in (("test_official_clap", "clap", FakeClap), ("test_official_aes", "aesthetics", FakeAes),
                           ("test_official_sync", "desync", FakeSync), ("test_official_crw", "crw", FakeCRW)):
    if _name not in _BACKENDS:
        register_backend(_name, _role)(_cls)


@pytest.fixture
def fake_config(tmp_path, monkeypatch):
    """An active real config naming the fake backends (files that exist), and fake adapter functions."""
    ckpt = tmp_path / "weights.bin"
    ckpt.write_bytes(b"x")
    cfg = {"rewards": {"official_semantic": {"backend": "test_official_clap", "path": str(ckpt)},
                       "official_aesthetic": {"backend": "test_official_aes", "path": str(ckpt)},
                       "official_temporal": {"backend": "test_official_sync", "path": str(ckpt)},
                       "official_spatial": {"backend": "test_official_crw", "path": str(ckpt)}}}
    calls: list[tuple] = []

    def semantic_fn(clap, audio, sr, texts):
        calls.append(("semantic", audio.shape[0], tuple(texts)))
        return torch.tensor([len(t) / 80.0 for t in texts])

    def sync_fn(backend, src, audio, sr):
        calls.append(("sync", src if isinstance(src, str) else "frames", audio.shape[0]))
        return torch.full((audio.shape[0],), 0.25)

    def clip_fn(audio, sr):  # 16 kHz in, the 96511-sample reward clip out (tiled when shorter)
        x = audio.double()
        reps = math.ceil(96511 / x.shape[-1])
        return x.repeat(1, reps)[:, :96511]

    monkeypatch.setattr(clap_mod, "official_semantic_reward", semantic_fn, raising=False)
    monkeypatch.setattr(desync_mod, "official_sync_reward", sync_fn, raising=False)
    monkeypatch.setattr(aes_mod, "official_aesthetic_reward",
                        lambda s: (s["CE"] + s["CU"] - s["PC"] + s["PQ"]) / 40, raising=False)
    monkeypatch.setattr(crw_mod, "official_itd_clip", clip_fn, raising=False)
    real_config.set_active(cfg)
    O.clear_cache()
    yield calls
    real_config.set_active(None)
    O.clear_cache()


def _delayed(d: int, n: int = 96600, seed: int = 0) -> torch.Tensor:
    """Stereo noise whose right channel is the left one delayed by `d` samples (left leads: ITD > 0)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n + 64, generator=g)
    return torch.stack([x[32:32 + n], x[32 - d:32 - d + n]])


def test_official_names_and_preset():
    assert set(OFFICIAL) <= set(R.REWARD_PROVIDERS)
    assert R.reward_preset("official") == {"official_temporal": 0.6, "official_semantic": 1.0,
                                           "official_spatial": 0.4, "official_aesthetic": 0.1}
    assert R.reward_preset("paper") == R.RewardConfig().weights
    for name in OFFICIAL:
        assert callable(R.get_reward(name))
    with pytest.raises(PrismAudioError, match="unknown reward preset"):
        R.reward_preset("nope")


def test_missing_config_or_checkpoint_is_one_error(tmp_path, monkeypatch, fake_config):
    audio = _delayed(0, 4000)[None]
    real_config.set_active(None)
    monkeypatch.delenv(real_config.ENV, raising=False)
    with pytest.raises(PrismAudioError, match="PRISMAUDIO_REAL_CONFIG"):
        R.compute_rewards(None, {"official_semantic": 1.0}, audio, SR, R.RewardContext(texts=["a"]))
    real_config.set_active({"clap": {"backend": "laion_clap", "path": "x"}})
    with pytest.raises(PrismAudioError, match="needs the local ms_clap checkpoint"):
        R.compute_rewards(None, {"official_semantic": 1.0}, audio, SR, R.RewardContext(texts=["a"]))
    missing = tmp_path / "CLAP_weights_2023.pth"
    yaml_file = tmp_path / "real.yaml"
    yaml_file.write_text(f"rewards:\n  official_semantic: {missing}\n")
    real_config.set_active(None)
    monkeypatch.setenv(real_config.ENV, str(yaml_file))  # the env var is the fallback
    with pytest.raises(PrismAudioError, match=str(missing)):
        R.prepare_rewards(["official_semantic"])
    with pytest.raises(PrismAudioError, match="unknown reward 'official_nope'"):
        real_config.parse_real_config({"rewards": {"official_nope": "x"}})


def test_semantic_aesthetic_temporal_wiring(fake_config):
    calls = fake_config
    audio = torch.stack([_delayed(0, 8000, s) for s in range(4)])
    audio[1] = 0.0  # silent -> NaN
    audio[2, 0, 10] = float("nan")  # non-finite -> NaN
    ctx = R.RewardContext(texts=["a dog", "x", "y", "a glass bottle"], video_paths=["v1.mp4", "v1.mp4", "v1.mp4", "v2.mp4"])
    weights = {k: w for k, w in R.reward_preset("official").items() if k != "official_spatial"}  # tested below
    res = R.compute_rewards(None, weights, audio, SR, ctx)
    sem = res.scores["official_semantic"]
    assert sem[0] == pytest.approx(5 / 80) and sem[3] == pytest.approx(14 / 80)
    assert math.isnan(sem[1]) and math.isnan(sem[2])
    rms = audio[[0, 3]].pow(2).mean((1, 2)).sqrt()
    assert res.scores["official_aesthetic"][[0, 3]] == pytest.approx(((13 + 3 * rms) / 40).tolist())
    assert res.scores["official_temporal"][[0, 3]].tolist() == [0.25, 0.25]
    # the semantic adapter saw only the valid clips; the sync adapter was called once per video file
    assert ("semantic", 2, ("a dog", "a glass bottle")) in calls
    assert sorted(c[1] for c in calls if c[0] == "sync") == ["v1.mp4", "v2.mp4"]
    assert res.valid.tolist() == [True, False, False, True]


def test_spatial_itd_sign_and_score(fake_config):
    ref = _delayed(0)
    gen = torch.stack([_delayed(0), _delayed(4), _delayed(-4)])
    backend = O.backend_for("official_spatial")
    assert backend.hop_length == O.ITD_HOP  # the reward's patch STFT hop is forced
    crw, gcc = O.itd_pair_ms(backend, gen[1], SR)
    assert gcc == pytest.approx(4 / 16, abs=1e-6)  # 4 samples at 16 kHz, left leads -> +0.25 ms
    assert crw == pytest.approx(4 / 16, abs=1e-3)
    out = R.get_reward("official_spatial")(gen, SR, R.RewardContext(reference_audio=torch.stack([ref] * 3)))
    assert out[0] == pytest.approx(0.0, abs=1e-9)
    expected = -(5 * 0.25 ** 2 / 2 + 5 * 0.25 ** 2) / 2
    assert out[1] == pytest.approx(expected, rel=1e-2) and out[2] == pytest.approx(expected, rel=1e-2)
    with pytest.raises(PrismAudioError, match="reference audio"):
        R.get_reward("official_spatial")(gen, SR, R.RewardContext())


# ------------------------------------------------------------------------------ upstream fixture
def _fixture(shared_reference):
    from safetensors.torch import load_file

    d = shared_reference / "upstream_fixtures" / "stereocrw"
    return d, json.loads((d / "config.json").read_text()), load_file(d / "inputs.safetensors"), \
        load_file(d / "outputs.safetensors")


def _reward_clip(pcm: torch.Tensor, rate: int, cfg: dict) -> np.ndarray:
    """The reward's file reading (facts.md): frames [0, int(1.2 clip rate)), tiled when shorter,
    scipy FFT resampling to 16 kHz, then the first patch + (patch_num - 1) * stride samples."""
    import scipy.signal

    x = pcm.double().numpy() / cfg["pcm_divisor"]
    stop = int(cfg["read_ratio"] * cfg["clip_length"] * rate)
    if x.shape[1] < stop:
        x = np.tile(x, (1, math.ceil(stop / x.shape[1])))
    x = x[:, :stop]
    if rate != cfg["samp_sr"]:
        x = scipy.signal.resample(x, int(x.shape[1] / rate * cfg["samp_sr"]), axis=1)
    return x[:, : cfg["total_samples"]]


def test_official_itd_gcc_and_crw_rows_upstream(shared_reference):
    _, cfg, inp, out = _fixture(shared_reference)
    tol = cfg["recommended_atol"]
    assert cfg["max_delay_offset"] == O.ITD_MAX_LAG and cfg["gcc_num_windows"] == O.GCC_WINDOWS
    assert cfg["gcc_rfft_n"] == O.GCC_NFFT and cfg["hop_length"] == O.ITD_HOP
    clips = [_reward_clip(inp[f["input_key"]], f["sample_rate"], cfg) for f in cfg["files"]]
    n = out["left_wave_item0_first1000"].numel()
    assert np.abs(clips[0][0, :n] - out["left_wave_item0_first1000"].double().numpy()).max() < tol["left_wave_item0_first1000"]
    gcc = [O.gcc_itd_ms(torch.from_numpy(c)) for c in clips]
    assert gcc == pytest.approx(out["gcc_phat_itd_ms"].tolist(), abs=tol["gcc_phat_itd_ms"])
    crw = []
    for i in range(len(clips)):
        rows = O.crw_itd_rows(out["feat_left"][i], out["feat_right"][i], cfg["tau"], cfg["max_delay_offset"],
                              cfg["samp_sr"], cfg["patch_stride"])
        assert rows.shape == out["crw_itd_per_patch"][i].shape
        assert (rows - out["crw_itd_per_patch"][i]).abs().max() <= tol["crw_itd_per_patch"]
        crw.append(float(rows.mean()) * 1000)
    assert crw == pytest.approx(out["crw_itd_mean_ms"].tolist(), abs=tol["crw_itd_mean_ms"])
    g, t = cfg["reward_gen_index"], cfg["reward_gt_index"]
    score = O.official_itd_score((crw[g], gcc[g]), (crw[t], gcc[t]))
    assert score == pytest.approx(float(out["reward_score_gen0_vs_gt1"]), abs=tol["reward_score_gen0_vs_gt1"])


@pytest.mark.slow
def test_official_itd_reward_end_to_end_upstream(shared_reference, tmp_path, monkeypatch):
    """The whole chain with the (random-weight) release-layout checkpoint: features, ITDs, score."""
    d, cfg, inp, out = _fixture(shared_reference)
    tol = cfg["recommended_atol"]
    ckpt = tmp_path / cfg["weights_raw_file"]
    ckpt.write_bytes(lzma.decompress((d / cfg["weights_file"]).read_bytes()))
    real_config.set_active({"rewards": {"official_spatial": str(ckpt)}})
    O.clear_cache()
    try:
        backend = O.backend_for("official_spatial")
        clips = [torch.from_numpy(_reward_clip(inp[f["input_key"]], f["sample_rate"], cfg)) for f in cfg["files"]]
        for i, c in enumerate(clips):
            left, right = O.crw_features(backend, c)
            assert (left - out["feat_left"][i]).abs().max() <= tol["feat_left"]
            assert (right - out["feat_right"][i]).abs().max() <= tol["feat_right"]
        monkeypatch.setattr(crw_mod, "official_itd_clip", lambda a, sr: a, raising=False)
        pairs = [O.itd_pair_ms(backend, c, cfg["samp_sr"]) for c in clips]
        g, t = cfg["reward_gen_index"], cfg["reward_gt_index"]
        assert O.official_itd_score(pairs[g], pairs[t]) == pytest.approx(
            float(out["reward_score_gen0_vs_gt1"]), abs=tol["reward_score_gen0_vs_gt1"])
    finally:
        real_config.set_active(None)
        O.clear_cache()
