"""Offline CoT planner: events, sides, caption override, bad input, classifier checkpoint round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from prismaudio.cot.visual_classifier import VisualClassifier, make_crop
from prismaudio.errors import PrismAudioError
from prismaudio.procedural import planner as offline
from prismaudio.procedural.planner import (
    analyse_video,
    caption_classes,
    estimate_scene,
    render_parts,
    scene_from_frames,
)
from prismaudio.procedural.synth import make_clip
from prismaudio.procedural.synth.cot import side_of
from prismaudio.procedural.synth.vocab import BY_NAME, CLASS_NAMES
from prismaudio.procedural.synth.writer import encode_mp4

CFG = {"duration": 4.0, "fps": 25.0, "size": 96, "sample_rate": 16000}
# seed-0 corpus clips with one source: 0 wood (1 impact, left), 13 metal (1 impact, right), 3 drum (2 strikes, right)
CLIPS = {"wood_left": 0, "metal_right": 13, "drum_right": 3}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, tuple[str, dict]]:
    out = tmp_path_factory.mktemp("offline_cot")
    res = {}
    for name, i in CLIPS.items():
        row, frames, audio, _ = make_clip(0, i, CFG)
        path = out / f"{name}.mp4"
        encode_mp4(path, frames, audio, CFG["fps"], CFG["sample_rate"])
        res[name] = (str(path), row["scene"])
    return res


@pytest.fixture(scope="module")
def model() -> VisualClassifier:
    """A fixed random classifier: the tests here check the analysis, not the classifier's training."""
    torch.manual_seed(0)
    return VisualClassifier(CLASS_NAMES).eval()


def _times(scene: dict) -> list[float]:
    return sorted(e["time"] for s in scene["sources"] for e in s["events"])


def _mean_x(src: dict) -> float:
    x, v = np.asarray(src["positions"]["x"]), np.asarray(src["positions"]["visible"], bool)
    return float(x[v].mean())


@pytest.mark.parametrize("name", ["wood_left", "metal_right", "drum_right"])
def test_event_times_within_40ms(clips, model, name):
    path, true = clips[name]
    pred = estimate_scene(path, model)
    assert len(pred["sources"]) == 1
    pt, tt = _times(pred), _times(true)
    assert len(pt) == len(tt)
    assert np.abs(np.array(pt) - np.array(tt)).max() <= 0.04 + 1e-9
    assert pred["sources"][0]["family"] == true["sources"][0]["family"]  # behaviour wins over a random classifier


def test_temporal_sentence_carries_the_detected_time(clips, model):
    path, true = clips["wood_left"]
    parts = analyse_video(path, classifier=model)
    assert set(parts) == {"semantic", "temporal", "aesthetic", "spatial"}
    t = true["sources"][0]["events"][0]["time"]
    assert any(f"{t + d:.2f} s" in parts["temporal"] for d in (-0.04, 0.0, 0.04))


@pytest.mark.parametrize("name,side", [("wood_left", "left"), ("metal_right", "right")])
def test_side_of_static_source(clips, model, name, side):
    path, true = clips[name]
    assert side_of(_mean_x(true["sources"][0])) == side
    pred = estimate_scene(path, model)
    assert side_of(_mean_x(pred["sources"][0])) == side
    assert abs(_mean_x(pred["sources"][0]) - _mean_x(true["sources"][0])) < 0.03  # one pixel of quantisation
    assert f"the {side}" in analyse_video(path, classifier=model)["spatial"]


def test_caption_overrides_semantic(clips, model):
    path, _ = clips["wood_left"]
    scene = estimate_scene(path, model, caption="A small brass bell is struck.")
    assert [s["class"] for s in scene["sources"]] == ["bell"]
    sem = render_parts(scene, 0, "A small brass bell is struck.")["semantic"]
    assert any(n in sem for n in BY_NAME["bell"].nouns)
    free = analyse_video(path, caption="something rattles in a box", classifier=model)
    assert free["semantic"] == "Something rattles in a box."


def test_caption_classes_prefers_longest_synonym():
    assert caption_classes("A metal ball hits a wooden bar, then rain.") == ["metal", "xylophone", "rain"]
    assert caption_classes("two bells and a red ball") == ["bell", "rubber"]
    assert caption_classes("nothing known here") == []


def test_aesthetic_never_claims_a_degradation(clips, model):
    text = analyse_video(clips["metal_right"][0], classifier=model)["aesthetic"].lower()
    assert not any(w in text for w in ("degraded", "clipping", "hiss", "muffled", "severity"))


def test_frames_and_file_agree(clips, model):
    """Decoding at the native rate: the rendered frames and the H.264 file give the same events."""
    row, frames, _, _ = make_clip(0, CLIPS["drum_right"], CFG)
    a = scene_from_frames(frames.astype(np.float32) / 255, CFG["fps"], model)
    b = estimate_scene(clips["drum_right"][0], model)
    assert _times(a) == _times(b) == _times(row["scene"])


def test_bad_inputs_raise_one_clear_error(tmp_path, model):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video at all" * 100)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    audio_only = tmp_path / "tone.wav"
    sf.write(audio_only, np.zeros(1600, np.float32), 16000)
    for path, words in [(junk, "corrupt"), (empty, "empty"), (audio_only, "no video stream"),
                        (tmp_path / "missing.mp4", "not found")]:
        with pytest.raises(PrismAudioError, match=words) as e:
            analyse_video(path, classifier=model)
        assert "\n" not in str(e.value)


def test_checkpoint_round_trip_identical(tmp_path, clips, model):
    model.save(tmp_path / "vc")
    assert sorted(p.name for p in (tmp_path / "vc").iterdir()) == ["config.json", "model.safetensors"]
    back = VisualClassifier.load(tmp_path / "vc")
    for k, v in model.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    x = torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.probs(x), back.probs(x))
    path = clips["metal_right"][0]
    assert analyse_video(path, classifier=model) == analyse_video(path, classifier=back)
    meta = json.loads((tmp_path / "vc" / "config.json").read_text())
    (tmp_path / "vc" / "config.json").write_text(json.dumps({**meta, "model": "semantic"}))
    with pytest.raises(PrismAudioError, match="not a 'visual_classifier'"):
        VisualClassifier.load(tmp_path / "vc")


def test_classifier_classes_come_from_its_checkpoint(tmp_path, clips):
    VisualClassifier(["a", "b", "c"]).save(tmp_path / "vc")
    assert VisualClassifier.load(tmp_path / "vc").classes == ("a", "b", "c")
    with pytest.raises(PrismAudioError, match="trained on other classes"):
        offline.OfflinePlanner(classifier_path=tmp_path / "vc")
    meta = json.loads((tmp_path / "vc" / "config.json").read_text())
    (tmp_path / "vc" / "config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "classes"}))
    with pytest.raises(PrismAudioError, match="lists no classes"):
        VisualClassifier.load(tmp_path / "vc")


def test_crop_is_masked_and_square():
    frame = np.full((20, 30, 3), 0.2, np.float32)
    mask = np.zeros((20, 30), bool)
    mask[5:9, 10:20] = True
    frame[mask] = (1.0, 0.0, 0.0)
    c = make_crop(frame, mask, 16)
    assert c.shape == (4, 16, 16)
    assert float(c[1:3].abs().max()) < 1e-6  # only the object's red survives; the room colour is masked out
    assert float(c[0].max()) > 0.9 and float(c[3].max()) > 0.9


@pytest.mark.skipif(not (offline.default_classifier() / "model.safetensors").exists(), reason="no shipped checkpoint")
def test_shipped_classifier_names_the_objects(clips):
    size = sum(p.stat().st_size for p in offline.default_classifier().iterdir())
    assert size < 2_000_000
    for name, (path, true) in clips.items():
        pred = estimate_scene(path)
        assert [s["class"] for s in pred["sources"]] == [true["sources"][0]["class"]], name
    assert len(CLASS_NAMES) == 12


def test_offline_planner_registered(clips, tmp_path, model):
    from prismaudio.cot import Planner, build_planner, get_planner, list_planners

    assert "offline" in list_planners() and get_planner("offline") is offline.OfflinePlanner
    model.save(tmp_path / "vc")
    planner = build_planner("offline", classifier_path=tmp_path / "vc", seed=0)
    assert isinstance(planner, Planner)
    with pytest.warns(UserWarning, match="visual classifier confidence"):  # a random classifier is unsure
        cot = planner.plan(clips["wood_left"][0], caption="A bell rings.")
    assert cot.semantic == "A bell rings." and cot.temporal == offline.NEUTRAL["temporal"]
    shipped = build_planner("offline", seed=0)  # the trained classifier: in domain, the full analysis
    cot = shipped.plan(clips["wood_left"][0], caption="A bell rings.")
    parts = analyse_video(clips["wood_left"][0], caption="A bell rings.", classifier=shipped.classifier)
    assert shipped.last_report.in_domain
    assert (cot.semantic, cot.temporal, cot.aesthetic, cot.spatial) == tuple(parts[k] for k in offline.PARTS)
