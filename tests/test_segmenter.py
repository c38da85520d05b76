"""Click -> mask -> box: the SAM-family loader (a tiny random `SamConfig` saved to a temp dir, read
back with local_files_only), the scene-graph segmenter against the renderer's own pixels, and the
refine training pairs built from the corpus."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from prismaudio.edit.roi import Box, Click, check_box, mask_box
from prismaudio.edit.segmenter import SamSegmenter, SceneSegmenter, build_segmenter, source_at, source_mask
from prismaudio.errors import PrismAudioError


def _tiny_sam(root: Path, processor: bool = True) -> Path:
    """The smallest valid SAM: a 64 px image encoder (4x4 patches), 32-wide everything."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    cfg = SamConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, image_size=64,
                           patch_size=16, output_channels=32, window_size=2, global_attn_indexes=[1], num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, image_embedding_size=4,
                                   mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32,
                                 num_hidden_layers=2),
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SamModel(cfg).save_pretrained(root)
        if processor:
            ip = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
            SamProcessor(image_processor=ip).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory) -> Path:
    return _tiny_sam(tmp_path_factory.mktemp("sam"))


def _frame(h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(1)
    img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
    img[10:30, 20:44] = (230, 40, 40)
    return img


def test_sam_click_gives_a_frame_sized_mask_deterministically(sam_dir: Path) -> None:
    seg = SamSegmenter.from_dir(sam_dir)
    frame = _frame()
    mask = seg.segment(frame, Click(30, 20))
    assert mask.shape == frame.shape[:2] and mask.dtype == bool
    again = SamSegmenter.from_dir(sam_dir).segment(frame, Click(30, 20))
    assert np.array_equal(mask, again)  # same checkpoint, same click: the same mask
    if mask.any():  # a random model may select nothing; when it selects, the box lies in the frame
        box = mask_box(mask)
        assert check_box(Box(box.x0, box.y0, max(box.x1, box.x0 + 2), max(box.y1, box.y0 + 2)), 64, 48)
        assert 0 <= box.x0 < box.x1 <= 64 and 0 <= box.y0 < box.y1 <= 48
    other = seg.segment(_frame(96, 40), Click(5, 90))  # any frame shape: the mask follows it
    assert other.shape == (96, 40)


def test_sam_without_processor_config_uses_the_encoder_size(tmp_path: Path) -> None:
    root = _tiny_sam(tmp_path / "bare", processor=False)
    assert not (root / "processor_config.json").exists()
    mask = SamSegmenter.from_dir(root).segment(_frame(), Click(3, 3))
    assert mask.shape == (48, 64)


def test_sam_bad_checkpoints_are_one_line(tmp_path: Path, sam_dir: Path) -> None:
    with pytest.raises(PrismAudioError, match="no such checkpoint directory"):
        SamSegmenter.from_dir(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrismAudioError, match="no config.json"):
        SamSegmenter.from_dir(tmp_path / "empty")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(PrismAudioError, match="model_type 'bert' is not a SAM model"):
        SamSegmenter.from_dir(wrong)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for p in sam_dir.iterdir():
        (corrupt / p.name).write_bytes(p.read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(PrismAudioError, match="cannot load the SAM checkpoint") as e:
        SamSegmenter.from_dir(corrupt)
    assert "\n" not in str(e.value)
    (corrupt / "config.json").write_text("{not json")
    with pytest.raises(PrismAudioError, match="config.json is unreadable"):
        SamSegmenter.from_dir(corrupt)


# ------------------------------------------------------------------------------------ scene graph
@pytest.fixture(scope="module")
def rows(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]


def test_source_masks_are_the_rendered_pixels(rows) -> None:
    """Each source's mask covers exactly what the renderer painted for it: rendering the scene with
    and without that source differs only inside its mask (later sources may cover parts of it)."""
    from prismaudio.procedural.synth.render import render_frames

    checked = 0
    for row in rows[:4]:
        scene = row["scene"]
        full = render_frames(scene).astype(int)
        for i, src in enumerate(scene["sources"]):
            without = dict(scene, sources=[s for j, s in enumerate(scene["sources"]) if j != i])
            diff = np.abs(full - render_frames(without).astype(int)).max(-1) > 0
            for f in range(0, scene["num_frames"], 7):
                m = source_mask(scene, i, f)
                assert not (diff[f] & ~m).any(), (row["id"], i, f)  # nothing painted outside the mask
                if src["family"] != "texture" and m.any():  # the sprite itself: mostly visible and painted
                    assert diff[f][m].mean() > 0.5 or i < len(scene["sources"]) - 1
                checked += 1
    assert checked > 10


def test_scene_click_picks_the_object_under_it(rows) -> None:
    hits = 0
    for row in rows:
        scene = row["scene"]
        seg = SceneSegmenter(scene)
        for i, src in enumerate(scene["sources"]):
            f = next(k for k, v in enumerate(src["positions"]["visible"]) if v)
            own = source_mask(scene, i, f)
            on_top = own & ~np.any([source_mask(scene, j, f) for j in range(i + 1, len(scene["sources"]))] or
                                   [np.zeros_like(own)], axis=0)
            ys, xs = np.nonzero(on_top)
            if not len(ys):
                continue
            k = len(ys) // 2
            click, t = Click(float(xs[k]), float(ys[k])), f / scene["fps"]
            assert seg.source(click, t) == i
            assert seg.class_at(click, t) == src["class"]
            frame = np.zeros((scene["size"], scene["size"], 3), np.uint8)
            box = mask_box(seg.segment(frame, click, t))
            assert box == mask_box(own) and box.x0 <= xs[k] < box.x1 and box.y0 <= ys[k] < box.y1
            hits += 1
    assert hits >= len(rows)
    scene = rows[0]["scene"]
    assert source_at(scene, Click(0, 0), 0) is None  # the top-left corner is the room
    with pytest.raises(PrismAudioError, match="no object of the scene under the click"):
        SceneSegmenter(scene).source(Click(0, 0), 0.0)
    with pytest.raises(PrismAudioError, match="scene graph is 48 px square"):
        SceneSegmenter(scene).segment(np.zeros((10, 10, 3), np.uint8), Click(1, 1))


def test_build_segmenter_finds_the_corpus_manifest(corpus: Path, rows, tmp_path: Path) -> None:
    video = corpus / rows[2]["video"]
    seg = build_segmenter("scene", video)
    assert isinstance(seg, SceneSegmenter) and seg.scene == rows[2]["scene"]
    loose = tmp_path / "loose.mp4"
    loose.write_bytes(video.read_bytes())
    with pytest.raises(PrismAudioError, match="no manifest"):
        build_segmenter("scene", loose)
    with pytest.raises(PrismAudioError, match="is not a clip of"):
        build_segmenter("scene", loose, corpus / "manifest.jsonl")


# ------------------------------------------------------------------------------------ refine pairs
def test_refine_pairs_from_the_corpus(rows) -> None:
    from prismaudio.edit.pairs import refine_pairs_for_clip, source_box
    from prismaudio.procedural.synth.writer import make_clip

    cfg = {"duration": 2.0, "fps": 25.0, "size": 48, "sample_rate": 16000}  # the `corpus` fixture's synth
    row0, _, audio0, stems0 = make_clip(0, 0, cfg)
    assert row0["scene"] == rows[0]["scene"]  # the corpus clip is rebuilt exactly from (seed, index)
    idx = next(i for i, r in enumerate(rows) if len(r["scene"]["sources"]) >= 2)
    pairs = refine_pairs_for_clip(0, idx, cfg, size=32)
    scene = rows[idx]["scene"]
    assert [p.source for p in pairs] == list(range(len(scene["sources"])))
    _, _, audio, stems = make_clip(0, idx, cfg)
    for p, src, stem in zip(pairs, scene["sources"], stems):
        assert p.object_class == src["class"] and p.clip_id == rows[idx]["id"]
        assert p.roi_frames.shape == (scene["num_frames"], 3, 32, 32)
        assert torch.equal(p.target, torch.as_tensor(stem, dtype=torch.float32))
        assert torch.equal(p.context, torch.as_tensor(audio))
        assert float(p.target.abs().max()) > 0 and not torch.allclose(p.target, p.context)
        for f, vis in enumerate(src["positions"]["visible"]):
            if vis:
                inner = mask_box(source_mask(scene, p.source, f)) if source_mask(scene, p.source, f).any() else None
                assert inner is None or p.box.contains(inner), (f, inner, p.box)
        assert (p.side < -0.33) == (np.mean(np.asarray(src["positions"]["x"])[np.asarray(src["positions"]["visible"], bool)]) < -0.33)
        assert source_box(scene, p.source) == p.box


def test_edit_refine_with_a_click(corpus: Path, rows, sam_dir: Path, tmp_path: Path, capsys) -> None:
    """`prismaudio edit --op refine --object x,y`: the scene segmenter's box and class reach the edit
    record; a SAM checkpoint's mask box does too (whatever a random model selects)."""
    from prismaudio.edit.command import main as edit_main

    row = rows[0]
    scene, src = row["scene"], row["scene"]["sources"][-1]
    f = next(k for k, v in enumerate(src["positions"]["visible"]) if v)
    ys, xs = np.nonzero(source_mask(scene, len(scene["sources"]) - 1, f))
    click = f"{xs[len(xs) // 2]},{ys[len(ys) // 2]}"
    t = f / scene["fps"]
    base = [str(corpus / row["video"]), "--audio", str(corpus / row["audio"]), "--op", "refine", "--object", click,
            "--object-time", f"{t}", "--model", "preset:tiny", "--steps", "1", "--planner", "none", "--quiet"]
    assert edit_main([*base, "--segmenter", "scene", "--out", str(tmp_path / "scene")]) == 0, capsys.readouterr().err
    rec = json.loads((tmp_path / "scene" / f"{row['id']}.edit.json").read_text())
    assert rec["object"] == src["class"]
    assert rec["box"] == mask_box(source_mask(scene, len(scene["sources"]) - 1, round(t * scene["fps"]))).as_list()
    code = edit_main([*base, "--segmenter", str(sam_dir), "--out", str(tmp_path / "sam")])
    err = capsys.readouterr().err
    if code == 0:
        box = json.loads((tmp_path / "sam" / f"{row['id']}.edit.json").read_text())["box"]
        assert 0 <= box[0] < box[2] <= scene["size"] and 0 <= box[1] < box[3] <= scene["size"]
    else:  # the random model selected nothing: refused in one line, nothing written
        assert code == 2 and err.strip().count("\n") == 0 and "no object under the click" in err
        assert not (tmp_path / "sam").exists()
