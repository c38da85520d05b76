"""Judge-backed rewards (semantic / temporal / aesthetic / spatial) and the offline backends."""

from __future__ import annotations

import json

import pytest
import torch

from prismaudio.errors import PrismAudioError
from prismaudio.metrics import aesthetic, semantic, spatial_reward, temporal
from prismaudio.metrics.backends import build_backend
from prismaudio.metrics.judges import (
    OFFSET_GRID,
    QualityJudge,
    SemanticJudge,
    SyncJudge,
)
from prismaudio.metrics.offline import expected_abs_offset, judge_path, window_bounds
from prismaudio.procedural.synth.vocab import CLASS_NAMES
from prismaudio.rewards import RewardContext, compute_rewards, get_reward

SR = 16000
NAMES = ("semantic", "temporal", "aesthetic", "spatial")


@pytest.fixture(scope="session")
def judges_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("judges")
    torch.manual_seed(0)
    for kind, cls in (("semantic", SemanticJudge), ("sync", SyncJudge), ("quality", QualityJudge)):
        (cls(CLASS_NAMES) if cls is SemanticJudge else cls()).eval().save(out / kind)
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from prismaudio.procedural.synth import run_synth

    out = tmp_path_factory.mktemp("corpus")
    manifest = run_synth(out, n=12, seed=0, workers=1, progress=False)
    return manifest, [json.loads(line) for line in manifest.read_text().splitlines()]


@pytest.fixture(autouse=True)
def offline_judges(judges_dir):
    semantic.configure("judge_clap", path=str(judges_dir / "semantic"))
    temporal.configure("judge_sync", path=str(judges_dir / "sync"))
    aesthetic.configure("judge_quality", path=str(judges_dir / "quality"))
    spatial_reward.configure(None)
    yield
    for mod in (semantic, temporal, aesthetic, spatial_reward):
        mod.configure()


@pytest.fixture(scope="session")
def batch(corpus):
    from prismaudio.io.audio import load_audio
    from prismaudio.io.video import read_frames

    manifest, rows = corpus
    rows = rows[:3]
    audio = torch.stack([load_audio(manifest.parent / r["audio"], SR)[0] for r in rows])
    frames = [read_frames(manifest.parent / r["video"], 25, 16) for r in rows]
    paths = [str(manifest.parent / r["video"]) for r in rows]
    return audio, rows, frames, paths


def _ctx(batch, **kw):
    audio, rows, frames, _paths = batch
    base = {"texts": [r["caption"] for r in rows], "video_frames": list(frames), "reference_audio": audio.clone(),
                "scene_graphs": [r["scene"] for r in rows]}
    base.update(kw)
    return RewardContext(**base)


def test_each_reward_returns_finite_batch(batch):
    audio = batch[0]
    for name in NAMES:
        out = get_reward(name)(audio, SR, _ctx(batch))
        assert out.shape == (3,), name
        assert torch.isfinite(out).all(), (name, out)
    # ranges: cosine, (2 - |offset|) / 4, PQ / 10, -5 MSE (0 for the reference itself)
    assert (get_reward("semantic")(audio, SR, _ctx(batch)).abs() <= 1 + 1e-5).all()
    t = get_reward("temporal")(audio, SR, _ctx(batch))
    assert ((t >= 0) & (t <= 0.5 + 1e-6)).all()
    a = get_reward("aesthetic")(audio, SR, _ctx(batch))
    assert ((a >= 0.1 - 1e-6) & (a <= 1 + 1e-6)).all()
    assert torch.allclose(get_reward("spatial")(audio, SR, _ctx(batch)), torch.zeros(3))


def test_silent_clip_is_nan_and_excluded(batch):
    audio = batch[0].clone()
    audio[1] = 0
    ctx = _ctx(batch, reference_audio=batch[0].clone())
    for name in NAMES:
        out = get_reward(name)(audio, SR, ctx)
        assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all(), (name, out)
    res = compute_rewards(None, dict.fromkeys(NAMES, 1.0), audio, SR, ctx)
    assert res.valid.tolist() == [True, False, True]
    assert res.total[1] == 0 and torch.isfinite(res.total).all()


def _lateral(itd_samples: int = 8, n: int = 2 * SR, seed: int = 0) -> torch.Tensor:
    """Noise on the left: the right channel is the left one delayed by `itd_samples`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + itd_samples, generator=g) * 0.3
    return torch.stack([x[itd_samples:], x[:-itd_samples]])  # left leads


def test_spatial_reference_beats_its_channel_swap():
    ref = _lateral()[None]
    swapped = ref.flip(1)
    fn = get_reward("spatial")
    ctx = RewardContext(reference_audio=ref)
    same, swap = float(fn(ref, SR, ctx)), float(fn(swapped, SR, ctx))
    assert same == pytest.approx(0.0, abs=1e-6) and swap < -1.0  # (2 x 0.5 ms)^2 x 5 ~ -5
    # scene-graph fallback: the scene says "left, 0.5 ms"
    scene = {"sources": [{"class": "wood", "itd_s": 8 / SR, "gain": 0.3}]}
    ctx = RewardContext(scene_graphs=[scene])
    assert float(fn(ref, SR, ctx)) > float(fn(swapped, SR, ctx))
    assert float(fn(ref, SR, ctx)) > -0.05
    with pytest.raises(PrismAudioError, match="reference_audio or ctx.scene_graphs"):
        fn(ref, SR, RewardContext())
    res = compute_rewards(["spatial"], {"spatial": 0.4}, ref, SR, RewardContext())
    assert torch.isnan(res.scores["spatial"]).all() and not res.valid.any()


class _FakeCRW:
    name = "fake_crw"

    def itd_track(self, audio, sr):
        from prismaudio.metrics.spatial import itd_track_bewo

        return itd_track_bewo(audio, sr, frame_stride=64)


def test_spatial_official_form_with_crw_backend():
    ref = _lateral()[None]
    spatial_reward.configure(_FakeCRW())
    fn = get_reward("spatial")
    ctx = RewardContext(reference_audio=ref)
    assert float(fn(ref, SR, ctx)) == pytest.approx(0.0, abs=1e-6)
    assert float(fn(ref.flip(1), SR, ctx)) < -1.0


def test_temporal_uses_video_and_fails_clearly_without(batch):
    audio, _, frames, paths = batch
    fn = get_reward("temporal")
    a = fn(audio, SR, _ctx(batch))
    b = fn(audio, SR, _ctx(batch, video_frames=None, video_paths=paths))
    assert torch.allclose(a, b, atol=1e-5)
    # different frames -> different reward (the video is really used)
    c = fn(audio, SR, _ctx(batch, video_frames=[torch.rand_like(f) for f in frames]))
    assert not torch.allclose(a, c)
    with pytest.raises(PrismAudioError, match="video"):
        fn(audio, SR, _ctx(batch, video_frames=None))
    res = compute_rewards(["temporal"], {"temporal": 0.6}, audio, SR, _ctx(batch, video_frames=None))
    assert torch.isnan(res.scores["temporal"]).all() and "video" in res.log["excluded"][0]["reason"]


def test_expected_offset_and_windows(judges_dir):
    assert window_bounds(4.0) == [(0.0, 4.0), (0.0, 4.0)]
    assert window_bounds(10.0) == [(0.0, 4.8), (5.2, 10.0)]
    sharp = torch.full((1, 2, 21), -1e4)
    sharp[0, 0, 15] = sharp[0, 1, 5] = 0  # +1.0 s and -1.0 s
    assert float(expected_abs_offset(sharp)) == pytest.approx(1.0, abs=1e-5)
    flat = torch.zeros(1, 21)
    assert float(expected_abs_offset(flat)) == pytest.approx(float(OFFSET_GRID.abs().mean()), abs=1e-6)
    sync = build_backend("judge_sync", path=str(judges_dir / "sync"))
    frames, audio = torch.rand(2, 250, 3, 16, 16), torch.randn(2, 2, 10 * SR) * 0.1
    assert sync.logits(frames, audio, SR).shape == (2, 2, 21)
    assert sync.offsets(frames, audio, SR).shape == (2, 2)
    assert sync.desync(frames, audio, SR).shape == (2,)


class _Aes:
    def __init__(self, axes):
        self.axes = axes

    def score(self, audio, sr):
        return {k: torch.full((audio.shape[0],), v) for k, v in self.axes.items()}


def test_aesthetic_normalisations(batch):
    audio = batch[0]
    aesthetic.configure(_Aes({"PQ": 8.0, "PC": 3.0, "CE": 6.0, "CU": 7.0}))
    assert torch.allclose(get_reward("aesthetic")(audio, SR, _ctx(batch)), torch.full((3,), (6 + 7 - 3 + 8) / 40))
    aesthetic.configure(_Aes({"PQ": 8.0, "PC": 3.0}))
    assert torch.allclose(get_reward("aesthetic")(audio, SR, _ctx(batch)), torch.full((3,), 0.8))


class _Clap:
    name = "ms_clap"

    def score(self, audio, sr, texts):
        return torch.full((audio.shape[0],), 0.4)

    def similarity(self, audio, sr, texts):  # MS-CLAP: exp(logit_scale) * cos, here logit scale 100
        return 100 * self.score(audio, sr, texts)


def test_semantic_ms_clap_scale_and_cot_fallback(batch):
    audio, rows = batch[0], batch[1]
    semantic.configure(_Clap())
    assert torch.allclose(get_reward("semantic")(audio, SR, _ctx(batch)), torch.full((3,), 0.5))  # 100 * 0.4 / 80
    ctx = _ctx(batch, texts=None, cots=[r["cot"] for r in rows])
    assert torch.isfinite(get_reward("semantic")(audio, SR, ctx)).all()
    with pytest.raises(PrismAudioError, match="texts"):
        get_reward("semantic")(audio, SR, _ctx(batch, texts=None))


def test_missing_checkpoint_and_default_path(tmp_path, monkeypatch):
    with pytest.raises(PrismAudioError, match="train-judges"):
        build_backend("judge_quality", path=str(tmp_path / "nope"))
    monkeypatch.setenv("PRISMAUDIO_JUDGES", str(tmp_path / "j"))
    assert judge_path("sync") == tmp_path / "j" / "sync"
    monkeypatch.delenv("PRISMAUDIO_JUDGES")
    monkeypatch.delenv("PRISMAUDIO_ASSETS", raising=False)
    assert judge_path("sync").parts[-4:] == ("prismaudio", "assets", "judges", "sync")
    monkeypatch.setenv("PRISMAUDIO_ASSETS", str(tmp_path / "a"))  # replaces the shipped assets root
    assert judge_path("sync") == tmp_path / "a" / "judges" / "sync"
