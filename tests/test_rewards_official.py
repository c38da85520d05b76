"""The official reward variants: registry names, preset, real-config paths and their wiring to the adapter
functions (whose numbers the adapters' upstream fixture tests check)."""

from __future__ import annotations

import math

import pytest
import torch

from prismaudio import rewards as R
from prismaudio.errors import PrismAudioError
from prismaudio.metrics import official_rewards as O
from prismaudio.metrics import real_config
from prismaudio.metrics.adapters import aesthetics as aes_mod
from prismaudio.metrics.adapters import clap as clap_mod
from prismaudio.metrics.adapters import desync as desync_mod
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
    """`official_itd`: "ITDs" read off the clip (crw = 1000 x its first left sample, gcc = 1000 x its first
    right sample), counting the calls."""

    calls = 0

    def __init__(self, path: str):
        self.path = path

    def official_itd(self, audio, sr):
        FakeCRW.calls += 1
        return {"crw_itd_ms": torch.tensor(1000.0 * float(audio[0, 0]), dtype=torch.float64),
                "gcc_itd_ms": torch.tensor(1000.0 * float(audio[1, 0]), dtype=torch.float64)}


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

    monkeypatch.setattr(clap_mod, "official_semantic_reward", semantic_fn, raising=False)
    monkeypatch.setattr(desync_mod, "official_sync_reward", sync_fn, raising=False)
    monkeypatch.setattr(aes_mod, "official_aesthetic_reward",
                        lambda s: (s["CE"] + s["CU"] - s["PC"] + s["PQ"]) / 40, raising=False)
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


def test_spatial_scores_each_clip_against_its_reference_once(fake_config):
    g = torch.Generator().manual_seed(1)
    ref = 0.01 * torch.randn(2, 2, 4000, generator=g)
    gen = 0.01 * torch.randn(4, 2, 4000, generator=g)
    gen[2] = 0.0  # silent: NaN, never measured
    refs = torch.stack([ref[0], ref[0], ref[0], ref[1]])  # a group sharing its reference, then another
    FakeCRW.calls = 0
    out = R.get_reward("official_spatial")(gen, SR, R.RewardContext(reference_audio=refs))
    assert FakeCRW.calls == 3 + 2  # three valid clips, two distinct references
    for i in (0, 1, 3):
        d_crw = 1000 * float(gen[i, 0, 0] - refs[i, 0, 0])
        d_gcc = 1000 * float(gen[i, 1, 0] - refs[i, 1, 0])
        assert float(out[i]) == pytest.approx(-(5 * d_crw ** 2 / 2 + 5 * d_gcc ** 2) / 2, rel=1e-5)
    assert math.isnan(out[2])
    with pytest.raises(PrismAudioError, match="reference audio"):
        R.get_reward("official_spatial")(gen, SR, R.RewardContext())
    with pytest.raises(PrismAudioError, match="stereo"):
        R.get_reward("official_spatial")(gen[:, :1], SR, R.RewardContext(reference_audio=refs[:, :1]))


def test_official_aesthetic_on_the_release_checkpoint_upstream(shared_reference):
    """The real adapter through the real config: the release-layout checkpoint.pt of the upstream fixture
    gives (CE + CU - PC + PQ) / 40 of AesPredictor's unclamped scores (some axes are > 10 there)."""
    import json

    from safetensors.torch import load_file

    d = shared_reference / "upstream_fixtures" / "audiobox_aesthetics"
    cfg = json.loads((d / "config.json").read_text())
    inp, out = load_file(d / cfg["inputs_file"]), load_file(d / cfg["outputs_file"])
    col = {a: i for i, a in enumerate(cfg["axes"])}
    tol = 4 * cfg["recommended_atol"]["scores"] / 40  # four axes, each within the fixture's tolerance
    real_config.set_active({"rewards": {"official_aesthetic": str(d / cfg["weights_file"])}})
    O.clear_cache()
    try:
        assert float(out["scores"].abs().max()) > 10  # so a clamped axis would show
        for i, item in enumerate(cfg["items"]):
            x = inp[item["input_key"]].float() / cfg["pcm_divisor"]
            r = R.get_reward("official_aesthetic")(x[None], item["sample_rate"], R.RewardContext())
            s = out["scores"][i].double()
            expected = (s[col["CE"]] + s[col["CU"]] - s[col["PC"]] + s[col["PQ"]]) / 40
            assert abs(float(r[0]) - float(expected)) <= tol, item["name"]
    finally:
        real_config.set_active(None)
        O.clear_cache()


def test_judge_backed_semantic_reward_on_ms_clap_is_the_official_number():
    """`semantic` with the ms_clap backend is MS-CLAP's similarity / 80 (it used to assume a x100 logit:
    1.25 cos); an explicit scale still gives scale * cos."""
    from prismaudio.metrics import semantic

    class MsClapLike:
        name = "ms_clap"

        def similarity(self, audio, sr, texts):
            return torch.full((audio.shape[0],), 40.0)

        def score(self, audio, sr, texts):
            return torch.full((audio.shape[0],), 0.5)

    audio = _delayed(0, 4000)[None].repeat(2, 1, 1)
    ctx = R.RewardContext(texts=["a", "b"])
    try:
        semantic.configure(MsClapLike())
        assert R.get_reward("semantic")(audio, SR, ctx).tolist() == [0.5, 0.5]  # 40 / 80
        semantic.configure(MsClapLike(), scale=3.0)
        assert R.get_reward("semantic")(audio, SR, ctx).tolist() == [1.5, 1.5]  # 3 * cos
    finally:
        semantic.configure()
