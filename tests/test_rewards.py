"""Reward registry, weighted combination (eq. 5), failure exclusion, strict config."""

from __future__ import annotations

import math

import pytest
import torch

from prismaudio import rewards as R
from prismaudio.errors import PrismAudioError


@pytest.fixture
def fake_rewards():
    """Register throw-away rewards and remove them afterwards."""
    added = []

    def add(name, fn):
        R.register_reward(name)(fn)
        added.append(name)

    yield add
    for name in added:
        R._REGISTRY.pop(name, None)


def _audio(b=4, s=800):
    g = torch.Generator().manual_seed(0)
    return 0.1 * torch.randn(b, 2, s, generator=g)


def test_registry_lookup_and_unknown_name():
    assert "loudness" in R.available_rewards()
    assert callable(R.get_reward("loudness"))
    with pytest.raises(PrismAudioError, match="unknown reward 'nope'"):
        R.get_reward("nope")
    with pytest.raises(PrismAudioError, match="already registered"):
        R.register_reward("loudness")(lambda a, sr, c: a.sum())


def test_loudness_reward_peaks_at_target():
    sr = 16000
    t = torch.arange(sr) / sr
    sine = torch.sin(2 * math.pi * 440 * t).expand(1, 2, -1)  # RMS = 1/sqrt(2) -> -3.01 dBFS
    target_gain = 10 ** ((-20.0 + 3.0103) / 20)
    r = R.get_reward("loudness")(torch.cat([sine * target_gain, sine]), sr, R.RewardContext())
    assert r.shape == (2,)
    assert r[0].item() == pytest.approx(0.0, abs=1e-3)
    assert r[1].item() == pytest.approx(-(20 - 3.0103), abs=1e-3)


def test_weighted_sum_equals_manual(fake_rewards):
    fake_rewards("t_a", lambda a, sr, c: a.abs().mean(dim=(1, 2)))
    fake_rewards("t_b", lambda a, sr, c: torch.arange(a.shape[0], dtype=torch.float32))
    audio = _audio()
    res = R.compute_rewards(["t_a", "t_b", "loudness"], {"t_a": 2.0, "t_b": 0.5, "loudness": 0.1}, audio, 16000)
    manual = 2.0 * audio.abs().mean(dim=(1, 2)) + 0.5 * torch.arange(4.0) + 0.1 * R.get_reward("loudness")(audio, 16000, None)
    torch.testing.assert_close(res.total, manual, rtol=1e-5, atol=1e-5)
    assert res.valid.all() and res.log["excluded"] == [] and res.log["n_valid"] == 4
    # RewardMix with a mapping gives the same total
    torch.testing.assert_close(R.RewardMix({"t_a": 2.0, "t_b": 0.5, "loudness": 0.1})(audio, 16000).total, res.total)


def test_nan_sample_is_excluded_with_reason(fake_rewards):
    fake_rewards("t_nan", lambda a, sr, c: torch.tensor([1.0, float("nan"), 2.0, float("inf")]))
    fake_rewards("t_one", lambda a, sr, c: torch.ones(a.shape[0]))
    res = R.compute_rewards(None, {"t_nan": 1.0, "t_one": 1.0}, _audio(), 16000)
    assert res.valid.tolist() == [True, False, True, False]
    assert torch.isfinite(res.total).all()
    assert res.total.tolist() == [2.0, 0.0, 3.0, 0.0]
    assert sorted(e["sample"] for e in res.log["excluded"]) == [1, 3]
    assert all(e["reward"] == "t_nan" and "non-finite" in e["reason"] for e in res.log["excluded"])
    assert res.log["mean"]["t_nan"] == pytest.approx(1.5)


def test_raising_reward_excludes_batch_and_logs(fake_rewards):
    def boom(a, sr, c):
        raise RuntimeError("judge exploded")

    fake_rewards("t_boom", boom)
    fake_rewards("t_one", lambda a, sr, c: torch.ones(a.shape[0]))
    res = R.compute_rewards(["t_boom", "t_one"], {"t_boom": 1.0, "t_one": 1.0}, _audio(3), 16000)
    assert not res.valid.any()
    assert torch.isnan(res.scores["t_boom"]).all()
    assert {e["sample"] for e in res.log["excluded"]} == {0, 1, 2}
    assert all("judge exploded" in e["reason"] for e in res.log["excluded"])
    # with weight 0 the failing reward is reported but excludes nobody
    res0 = R.compute_rewards(None, {"t_boom": 0.0, "t_one": 1.0}, _audio(3), 16000)
    assert res0.valid.all() and res0.total.tolist() == [1.0, 1.0, 1.0]


def test_wrong_shape_is_a_failure_and_missing_weight_an_error(fake_rewards):
    fake_rewards("t_bad", lambda a, sr, c: torch.ones(7))
    res = R.compute_rewards(None, {"t_bad": 1.0}, _audio(2), 16000)
    assert not res.valid.any() and "7 values" in res.log["excluded"][0]["reason"]
    with pytest.raises(PrismAudioError, match="no weight"):
        R.compute_rewards(["t_bad"], {}, _audio(2), 16000)
    with pytest.raises(PrismAudioError, match="different rewards"):
        R.combine_rewards({"a": torch.ones(2)}, {"b": 1.0})


def test_context_check():
    with pytest.raises(PrismAudioError, match="texts"):
        R.compute_rewards(None, {"loudness": 1.0}, _audio(2), 16000, R.RewardContext(texts=["x"]))


def test_group_advantages_skip_excluded():
    """The excluded samples of `combine_rewards` get no advantage in eq. 6 (rl.grpo)."""
    from prismaudio.rl.grpo import compute_advantages

    total = torch.tensor([1.0, 2.0, 3.0, 100.0, 5.0, 5.0])
    valid = torch.tensor([True, True, True, False, True, False])
    adv = compute_advantages(total, valid, 3, eps=1e-6)
    expect = (torch.tensor([1.0, 2.0, 3.0]) - 2.0) / (math.sqrt(2 / 3) + 1e-6)
    torch.testing.assert_close(adv[:3], expect)
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]  # excluded, and a group with one valid sample


def test_reward_config_defaults_and_strict_loading():
    cfg = R.RewardConfig()
    assert cfg.weights == {"semantic": 1.0, "temporal": 0.6, "aesthetic": 0.1, "spatial": 0.4}
    cfg = R.reward_config_from_dict({"weights": {"loudness": 1, "semantic": 0.5}})
    assert cfg.weights == {"loudness": 1.0, "semantic": 0.5}
    with pytest.raises(PrismAudioError, match="unknown key"):
        R.reward_config_from_dict({"weights": {}, "wieghts": {}})
    with pytest.raises(PrismAudioError, match="expected a number"):
        R.reward_config_from_dict({"weights": {"semantic": "high"}})
