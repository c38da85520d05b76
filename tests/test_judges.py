"""Offline judges: checkpoint round trip, shapes, label construction, target mapping, short training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from prismaudio.errors import PrismAudioError
from prismaudio.metrics.judges import (
    OFFSET_GRID,
    QualityJudge,
    SemanticJudge,
    SyncJudge,
    load_judge,
    offset_label,
    pc_target,
    pq_target,
    shift_audio,
)
from prismaudio.procedural.synth import make_clip
from prismaudio.procedural.synth.vocab import CLASS_NAMES
from prismaudio.procedural.train_judges import (
    JudgeData,
    evaluate,
    fit_quality,
    fit_semantic,
    fit_sync,
)

CFG = {"duration": 4.0, "fps": 25, "size": 96, "sample_rate": 16000}
NAMES = tuple(f"class{i}" for i in range(12))  # the judges know no vocabulary: any names do


def _judge(cls):
    return cls(NAMES) if cls is SemanticJudge else cls()


@pytest.fixture(scope="module")
def data() -> JudgeData:
    return JudgeData.from_clips([make_clip(0, i, CFG) for i in range(24)])


def _inputs(b=2):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 100, 3, 16, 16, generator=g), torch.randn(b, 2, 64000, generator=g) * 0.1


@pytest.mark.parametrize("cls", [SyncJudge, QualityJudge, SemanticJudge])
def test_save_load_round_trip_bit_exact(tmp_path, cls):
    torch.manual_seed(0)
    judge = _judge(cls).eval()
    judge.save(tmp_path / "j")
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["config.json", "model.safetensors"]
    back = load_judge(tmp_path / "j")
    assert type(back) is cls
    if cls is SemanticJudge:
        assert back.classes == NAMES and json.loads((tmp_path / "j" / "config.json").read_text())["classes"] == list(NAMES)
    for k, v in judge.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    frames, audio = _inputs()
    with torch.no_grad():
        if cls is SyncJudge:
            assert torch.equal(judge.logits(frames, audio, 16000), back.logits(frames, audio, 16000))
        elif cls is QualityJudge:
            a, b = judge.score(audio, 16000), back.score(audio, 16000)
            assert all(torch.equal(a[k], b[k]) for k in ("PQ", "PC"))
        else:
            assert torch.equal(judge.embed_audio(audio, 16000), back.embed_audio(audio, 16000))


def test_strict_loading_rejects_mismatch(tmp_path):
    SyncJudge().save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "config.json").read_text())
    meta["config"]["dim"] = 16
    (tmp_path / "s" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(PrismAudioError):
        SyncJudge.load(tmp_path / "s")
    with pytest.raises(PrismAudioError):
        QualityJudge.load(tmp_path / "s")  # wrong kind
    with pytest.raises(PrismAudioError):
        load_judge(tmp_path / "missing")


def test_semantic_judge_classes_come_from_its_checkpoint(tmp_path):
    SemanticJudge(NAMES[:3]).save(tmp_path / "j")
    assert load_judge(tmp_path / "j").classes == NAMES[:3]
    meta = json.loads((tmp_path / "j" / "config.json").read_text())
    (tmp_path / "j" / "config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "classes"}))
    with pytest.raises(PrismAudioError, match="lists no classes"):
        load_judge(tmp_path / "j")
    with pytest.raises(PrismAudioError, match="n_classes 5 but 3 class names"):
        SemanticJudge(NAMES[:3], n_classes=5)


def test_shipped_semantic_judge_names_the_corpus_classes():
    from prismaudio.metrics.offline import default_judges_dir

    path = default_judges_dir() / "semantic"
    if not (path / "model.safetensors").is_file():
        pytest.skip("no shipped judges")
    assert load_judge(path).classes == CLASS_NAMES


def test_shapes():
    frames, audio = _inputs(3)
    sem, sync, qual = SemanticJudge(NAMES).eval(), SyncJudge().eval(), QualityJudge().eval()
    with torch.no_grad():
        assert sem.embed_audio(audio, 16000).shape == (3, 128)
        post = sem.class_posteriors(audio, 16000)
        assert post.shape == (3, 12) and ((post >= 0) & (post <= 1)).all()
        cos = sem.score(audio, 16000, ["rain", "a bell rings", "an engine"])
        assert cos.shape == (3,) and (cos.abs() <= 1 + 1e-5).all()
        off = sync.offset(frames, audio, 16000)
        assert off.shape == (3,) and all(any(abs(float(o) - float(g)) < 1e-6 for g in OFFSET_GRID) for o in off)
        # channels-last uint8 frames and a 48 kHz input are accepted too
        u8 = (frames.permute(0, 1, 3, 4, 2) * 255).to(torch.uint8)
        assert sync.offset(u8, torch.randn(3, 2, 192000) * 0.1, 48000).shape == (3,)
        q = qual.score(audio, 16000)
        assert set(q) == {"PQ", "PC"} and all(v.shape == (3,) and ((v >= 1) & (v <= 10)).all() for v in q.values())


def test_offset_grid_and_shift_labels_exact():
    assert OFFSET_GRID.shape == (21,)
    assert torch.allclose(OFFSET_GRID, torch.arange(-10, 11) * 0.2, atol=1e-6) and OFFSET_GRID[10] == 0
    x = torch.randn(2, 64000)
    for k in range(-10, 11):
        y = shift_audio(x, k)
        n = abs(k) * 3200
        assert offset_label(k) == k + 10 and abs(float(OFFSET_GRID[offset_label(k)]) - 0.2 * k) < 1e-6
        if k > 0:
            assert torch.equal(y[:, n:], x[:, :-n]) and not y[:, :n].any()
        elif k < 0:
            assert torch.equal(y[:, :-n], x[:, n:]) and not y[:, -n:].any()
        else:
            assert torch.equal(y, x)
    with pytest.raises(PrismAudioError):
        offset_label(11)


def test_quality_target_mapping():
    assert pq_target(None) == 10.0
    assert pq_target({"kind": "noise", "severity": 1.0}) == pytest.approx(1.0)
    assert pq_target({"kind": "clipping", "severity": 0.5}) == pytest.approx(5.5)
    assert [pc_target(n) for n in (1, 2, 3, 4, 5)] == [1.0, 4.0, 7.0, 10.0, 10.0]


def test_short_training_reduces_losses(data):
    torch.manual_seed(0)
    sem, sync, qual = SemanticJudge(CLASS_NAMES), SyncJudge(), QualityJudge()
    for fit, model in ((fit_semantic, sem), (fit_sync, sync), (fit_quality, qual)):
        losses = fit(model, data, steps=30, batch=12, lr=3e-3)
        assert np.mean(losses[-5:]) < np.mean(losses[:5]), (type(model).__name__, losses[:5], losses[-5:])
    m = evaluate(sem, sync, qual, JudgeData(data.rows[:6], data.mono[:6], data.frames[:6]))
    for key in ("semantic_top1", "sync_within_one_step", "pq_spearman_severity"):
        assert key in m


def test_train_judges_end_to_end_on_tiny_corpus(tmp_path):
    from prismaudio.procedural.synth import run_synth
    from prismaudio.procedural.train_judges import train_judges

    run_synth(tmp_path / "corpus", n=20, seed=0, workers=1, progress=False)
    m = train_judges(tmp_path / "corpus", tmp_path / "judges", semantic_steps=2, sync_steps=2, quality_steps=2, log=None)
    saved = json.loads((tmp_path / "judges" / "metrics.json").read_text())
    assert saved["n_train"] == m["n_train"] == 16 and saved["n_test"] == 2
    for kind in ("semantic", "sync", "quality"):
        assert type(load_judge(tmp_path / "judges" / kind)).kind == kind
    assert load_judge(tmp_path / "judges" / "semantic").classes == CLASS_NAMES
