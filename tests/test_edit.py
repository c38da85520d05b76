"""`prismaudio.edit`: regions, boxes, instructions -> target CoT, audio conforming, each operation on a
tiny random model (what it keeps is exact whatever the weights), and `prismaudio edit`'s bad inputs
(one line, exit 2, nothing in --out)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from prismaudio.cot import CoT
from prismaudio.edit import (
    Box,
    Click,
    Region,
    conform_audio,
    crop_frames,
    default_vocabulary,
    edit,
    mask_box,
    parse_instruction,
    parse_object,
    parse_region,
    target_cot,
)
from prismaudio.edit.command import main as edit_main
from prismaudio.edit.ops import ClipInfo, mix_in, region_gain
from prismaudio.edit.roi import check_box, check_click, write_roi_video
from prismaudio.errors import PrismAudioError
from prismaudio.pipeline import PrismAudioPipeline

SR = 16000


@pytest.fixture(scope="module")
def pipe() -> PrismAudioPipeline:
    return PrismAudioPipeline.from_preset("tiny")


@pytest.fixture(scope="module")
def rows(corpus: Path) -> list[dict]:
    return [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def clip(corpus: Path, rows: list[dict]) -> tuple[Path, Path, dict]:
    row = rows[0]
    return corpus / row["video"], corpus / row["audio"], row


@pytest.fixture(scope="module")
def vocab():
    return default_vocabulary()


# ------------------------------------------------------------------------------------ parsing
def test_region_forms_and_refusals() -> None:
    assert parse_region("0.5:1.25", 2.0) == Region(0.5, 1.25)
    assert parse_region("1.5:", 2.0) == Region(1.5, 2.0)
    assert parse_region(":0.5", 2.0) == Region(0.0, 0.5)
    for text, why in [("1:0.5", "reversed"), ("1:1", "empty"), ("1.5:2.5", "outside"), ("-0.5:1", "outside"),
                      ("abc", "is not START:END"), ("1-2", "is not START:END"), (":", "is not START:END"),
                      ("1:2:3", "is not START:END"), ("nan:1", "is not START:END")]:
        with pytest.raises(PrismAudioError, match=why):
            parse_region(text, 2.0)


def test_object_box_and_click_checks() -> None:
    assert parse_object("1,2,30,40") == Box(1, 2, 30, 40)
    assert parse_object(" 3.5 , 4 ") == Click(3.5, 4.0)
    for text in ("1,2,3", "a,b", "", "1,2,3,4,5"):
        with pytest.raises(PrismAudioError, match="neither a box"):
            parse_object(text)
    assert check_box(Box(0, 0, 48, 48), 48, 48) == Box(0, 0, 48, 48)
    with pytest.raises(PrismAudioError, match="outside the 48x48 frame"):
        check_box(Box(10, 10, 60, 20), 48, 48)
    with pytest.raises(PrismAudioError, match="degenerate"):
        check_box(Box(10, 10, 11, 30), 48, 48)
    with pytest.raises(PrismAudioError, match="reversed or empty"):
        check_box(Box(20, 10, 10, 30), 48, 48)
    with pytest.raises(PrismAudioError, match="outside the 48x48 frame"):
        check_click(Click(48, 3), 48, 48)
    assert check_click(Click(47.5, 0), 48, 48) == Click(47.5, 0)


def test_mask_box_and_crop() -> None:
    m = np.zeros((10, 12), bool)
    m[3:6, 4:9] = True
    assert mask_box(m) == Box(4, 3, 9, 6)
    with pytest.raises(PrismAudioError, match="empty"):
        mask_box(np.zeros((4, 4), bool))
    frames = torch.zeros(2, 3, 10, 12, dtype=torch.uint8)
    frames[:, 0, 3:6, 4:9] = 255  # a red box: its crop is all red, at any size
    crop = crop_frames(frames, Box(4, 3, 9, 6), 8)
    assert crop.shape == (2, 3, 8, 8) and crop.dtype == torch.float32
    assert torch.allclose(crop[:, 0], torch.ones(2, 8, 8)) and float(crop[:, 1:].abs().max()) == 0.0


def test_roi_video_is_the_crop(tmp_path: Path, clip) -> None:
    from prismaudio.io.video import probe_video, read_frames_multi

    video, _, _ = clip
    box = Box(4, 6, 30, 40)
    out = write_roi_video(video, box, tmp_path / "roi.mkv", 32)
    info, roi = probe_video(video), probe_video(out)
    assert (roi.width, roi.height) == (32, 32) and abs(roi.fps - info.fps) < 1e-6
    assert abs(roi.duration - info.duration) <= 1.0 / info.fps + 1e-6
    src = read_frames_multi(video, [(info.fps, None)])[0]
    got = read_frames_multi(out, [(info.fps, None)])[0]
    want = (crop_frames(src, box, 32) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    assert got.shape == want.shape and int((got.int() - want.int()).abs().max()) <= 1  # lossless FFV1


# ------------------------------------------------------------------------------------ instructions
def test_instruction_op_and_object(vocab) -> None:
    ins = parse_instruction("add a metal clang", vocab)
    assert ins.op == "add" and ins.object.name == "metal"
    assert parse_instruction("Please remove the rain shower", vocab).object.name == "rain"
    assert parse_instruction("take away the glass marble", vocab).object.name == "glass"
    assert parse_instruction("regenerate this part", vocab).op == "inpaint"
    with pytest.raises(PrismAudioError, match="names no known object"):
        parse_instruction("remove the dog bark", vocab)
    with pytest.raises(PrismAudioError, match="names no known operation"):
        parse_instruction("make the bell sound nicer", vocab)
    with pytest.raises(PrismAudioError, match="says remove but --op is add"):
        parse_instruction("remove the bell", vocab, op="add")
    with pytest.raises(PrismAudioError, match="names 2 objects"):
        parse_instruction("add a bell and a drum", vocab)


def test_target_cot_remove_and_add_follow_the_plan(rows, vocab) -> None:
    row = next(r for r in rows if len({s["class"] for s in r["scene"]["sources"]}) >= 2)
    base = CoT.from_corpus(row)
    first, second = row["scene"]["sources"][0]["class"], row["scene"]["sources"][1]["class"]
    removed = target_cot(base, parse_instruction(f"remove the {first}", vocab))
    gone, kept = vocab.get(first), vocab.get(second)
    from prismaudio.edit.instruction import mentions

    text = removed.render("multi")
    assert not mentions(text, gone)  # nothing about the removed object is left
    assert mentions(removed.semantic, kept) and mentions(removed.spatial, kept)
    assert removed.aesthetic == base.aesthetic
    absent = next(c for c in vocab.classes if c.name not in {s["class"] for s in row["scene"]["sources"]})
    added = target_cot(base, parse_instruction(f"add a {absent.nouns[0]} on the left", vocab), Region(0.5, 1.5))
    assert added.semantic.startswith(base.semantic) and mentions(added.semantic, absent)
    assert "0.50 s" in added.temporal and "1.50 s" in added.temporal
    assert "left" in added.spatial and added.spatial.startswith(base.spatial)


# ------------------------------------------------------------------------------------ the audio
def test_conform_audio_repairs_and_refusals() -> None:
    info = ClipInfo(2.0, 25.0, 48, 48)
    mono = torch.randn(1, 2 * SR) * 0.1
    out, notes = conform_audio(mono, SR, info, SR, "inpaint")
    assert out.shape == (2, 2 * SR) and torch.equal(out[0], out[1]) and any("mono" in n for n in notes)
    out, notes = conform_audio(torch.randn(2, 2 * 22050) * 0.1, 22050, info, SR, "inpaint")
    assert out.shape == (2, 2 * SR) and any("22050 Hz" in n and "resampled" in n for n in notes)
    out, notes = conform_audio(torch.randn(2, 2 * SR - 100) * 0.1, SR, info, SR, "add")  # < one frame short
    assert out.shape == (2, 2 * SR) and float(out[:, -100:].abs().max()) == 0.0 and any("padded" in n for n in notes)
    with pytest.raises(PrismAudioError, match="shorter than the 2.000 s video by more than one frame"):
        conform_audio(torch.randn(2, SR), SR, info, SR, "inpaint")
    with pytest.raises(PrismAudioError, match="longer than the 2.000 s video"):
        conform_audio(torch.randn(2, 3 * SR), SR, info, SR, "extend")
    with pytest.raises(PrismAudioError, match=r"1.000 s long \(44100 samples at 44100 Hz\), shorter"):
        conform_audio(torch.randn(2, 44100), 44100, info, SR, "remove")  # another rate AND too short: refused
    out, _ = conform_audio(torch.randn(2, SR), SR, info, SR, "extend")  # extend continues a shorter one
    assert out.shape == (2, SR)
    with pytest.raises(PrismAudioError, match="3 channels"):
        conform_audio(torch.randn(3, 2 * SR), SR, info, SR, "inpaint")


def test_mix_in_keeps_the_existing_track_and_never_clips() -> None:
    existing = torch.full((1, 2, SR), 0.8)
    stem = torch.full((1, 2, SR), 0.9)
    gain = region_gain(SR, Region(0.25, 0.75), SR)
    out = mix_in(existing, stem, gain)
    assert float(out.abs().max()) <= 1.0 + 1e-7
    outside = gain == 0
    assert torch.equal(out[..., outside], existing[..., outside])
    assert float(out[0, 0, SR // 2]) > 0.99  # the stem is there inside, turned down to fit
    assert gain[4000 + 320:12000 - 320].min() == 1.0 and gain[:4000].max() == 0.0 and gain[12000:].max() == 0.0
    assert 0 < float(gain[4000]) < 0.01 and torch.all(gain[4000:4320].diff() > 0)  # a fade in, not a step


# ------------------------------------------------------------------------------------ the operations
def _exact_outside(out: torch.Tensor, ref: torch.Tensor, region: Region, margin_s: float = 0.021) -> None:
    a, b = round((region.start - margin_s) * SR), round((region.end + margin_s) * SR)
    assert torch.equal(out[:, : max(0, a)], ref[:, : max(0, a)])
    assert torch.equal(out[:, b:], ref[:, b:])


@pytest.mark.parametrize("op,kw", [
    ("inpaint", {"region": (0.5, 1.0)}),
    ("add", {"region": (0.5, 1.5), "instruction": "add a metal clang"}),
    ("remove", {"region": (0.25, 1.75), "instruction": "remove the wooden block"}),
])
def test_ops_keep_the_outside_exactly(pipe, clip, op, kw) -> None:
    video, wav, _ = clip
    ref = torch.from_numpy(sf.read(wav, dtype="float32", always_2d=True)[0].T.copy())
    r = edit(pipe, video, wav, op, steps=2, seed=3, **kw)
    assert r.audio.shape == ref.shape and r.video == Path(video)
    region = Region(*kw["region"])
    _exact_outside(r.audio, ref, region)
    a, b = region.samples(SR)
    assert not torch.equal(r.audio[:, a + 400:b - 400], ref[:, a + 400:b - 400])  # the inside was generated
    again = edit(pipe, video, wav, op, steps=2, seed=3, **kw)
    assert torch.equal(again.audio, r.audio)
    if op == "add":
        assert "metal" in r.plan.render("multi").lower()
    if op == "remove":
        assert "wood" not in r.plan.render("multi").lower()


def test_extend_covers_the_video_and_keeps_the_prefix(pipe, clip) -> None:
    video, wav, _ = clip
    ref = torch.from_numpy(sf.read(wav, dtype="float32", always_2d=True)[0].T.copy())
    short = ref[:, : SR]  # the first second: continue it to the video's 2 s
    r = edit(pipe, video, short, "extend", steps=2)
    assert r.audio.shape == ref.shape
    cut = round((1.0 - 0.021) * SR)
    assert torch.equal(r.audio[:, :cut], short[:, :cut])
    assert float(r.audio[:, SR + 400:].abs().max()) > 0  # generated past the end
    with pytest.raises(PrismAudioError, match="continues to the video's end"):
        edit(pipe, video, short, "extend", region=(0.5, 1.5), steps=2)


def test_refine_mixes_the_object_into_the_region(pipe, clip) -> None:
    video, wav, _ = clip
    ref = torch.from_numpy(sf.read(wav, dtype="float32", always_2d=True)[0].T.copy())
    r = edit(pipe, video, wav, "refine", region=(0.5, 1.5), object=(0, 0, 24, 40), steps=2)
    assert torch.equal(r.audio[:, : SR // 2], ref[:, : SR // 2]) and torch.equal(r.audio[:, 3 * SR // 2:], ref[:, 3 * SR // 2:])
    assert not torch.equal(r.audio[:, SR // 2 + 400: SR], ref[:, SR // 2 + 400: SR])
    assert "left" in r.plan.spatial  # the box is on the left half of the frame
    with pytest.raises(PrismAudioError, match="needs --object"):
        edit(pipe, video, wav, "refine", steps=2)
    with pytest.raises(PrismAudioError, match="needs a segmenter"):
        edit(pipe, video, wav, "refine", object=(10, 10), steps=2)


def test_refine_places_the_stem_at_the_box(pipe, clip) -> None:
    """placement="box" gives the refined stem the ITD sign of the box's side; the model's own image is kept
    with "model"; an unknown placement is refused."""
    from prismaudio.metrics.spatial import gcc_phat_itd

    video, wav, _ = clip
    ref = torch.from_numpy(sf.read(wav, dtype="float32", always_2d=True)[0].T.copy())
    a, b = SR // 2 + 400, 3 * SR // 2 - 400
    for box, sign in (((0, 0, 24, 40), 1.0), ((24, 0, 48, 40), -1.0)):  # left half: left leads (ITD > 0)
        r = edit(pipe, video, wav, "refine", region=(0.5, 1.5), object=box, steps=2)
        stem = (r.audio - ref)[:, a:b]
        assert np.sign(gcc_phat_itd(stem[0], stem[1], SR)) == sign
        assert torch.equal(r.audio[:, : SR // 2], ref[:, : SR // 2])
    m = edit(pipe, video, wav, "refine", region=(0.5, 1.5), object=(0, 0, 24, 40), steps=2, placement="model")
    assert not torch.equal(m.audio, r.audio)
    with pytest.raises(PrismAudioError, match="unknown placement"):
        edit(pipe, video, wav, "refine", object=(0, 0, 24, 40), steps=2, placement="centre")


def test_place_stem_sets_the_cues_of_the_position() -> None:
    """The stem's own delay is removed and the target one applied to a quarter of a sample (GCC-PHAT's
    parabolic peak is no finer); the gains are
    constant-power (energy kept) and a centred source keeps both channels equal."""
    from prismaudio.edit.place import HEAD_ITD_MAX_S, place_stem
    from prismaudio.metrics.spatial import gcc_phat_itd

    g = torch.Generator().manual_seed(0)
    dry = torch.randn(SR, generator=g) * torch.exp(-torch.arange(SR) / 1500.0)
    stem = torch.stack([torch.roll(dry, 7), dry])  # right leads by 7 samples: the wrong side for x < 0
    for x in (-0.9, -0.4, 0.3, 0.8):
        out = place_stem(stem, x, SR)
        assert abs(gcc_phat_itd(out[0], out[1], SR) - (-x * HEAD_ITD_MAX_S)) < 0.25 / SR
        assert float(out.pow(2).sum() / stem.pow(2).sum()) == pytest.approx(1.0, abs=0.01)
        louder = 0 if x < 0 else 1
        assert float(out[louder].pow(2).mean()) > float(out[1 - louder].pow(2).mean())
    centred = place_stem(stem, 0.0, SR)
    assert torch.allclose(centred[0], centred[1], atol=1e-5)
    assert place_stem(stem.unsqueeze(0).expand(3, -1, -1), 0.5, SR).shape == (3, 2, SR)
    with pytest.raises(ValueError, match="stereo"):
        place_stem(dry.unsqueeze(0), 0.5, SR)


# ------------------------------------------------------------------------------------ the command
def _run(argv: list[str], capsys) -> tuple[int, str]:
    with warnings.catch_warnings():
        code = edit_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _bad(argv: list[str], out: Path, capsys, match: str) -> None:
    steps = [] if "--steps" in argv else ["--steps", "1"]
    code, err = _run([*argv, "--out", out, "--model", "preset:tiny", *steps, "--planner", "none"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("prismaudio: error: ") and match in lines[0], err
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def wavs(tmp_path_factory, clip) -> dict[str, Path]:
    _, wav, _ = clip
    d = tmp_path_factory.mktemp("wavs")
    x, sr = sf.read(wav, dtype="float32", always_2d=True)
    sf.write(d / "short.wav", x[: sr // 2], sr)
    sf.write(d / "mono.wav", x[:, 0], sr)
    from prismaudio.io.audio import resample

    y = resample(torch.from_numpy(x.T.copy()), sr, 22050).numpy().T
    sf.write(d / "r22k.wav", y, 22050)
    sf.write(d / "r22k_short.wav", y[: len(y) // 2], 22050)
    (d / "bad.cot").write_text("just some words without any of the four parts\n")
    return {p.stem: p for p in d.iterdir()}


def test_cli_bad_inputs_one_line_exit_2_nothing_written(clip, wavs, tmp_path: Path, capsys) -> None:
    video, wav, _ = clip
    out = tmp_path / "out"
    base = [video, "--audio", wav]
    cases = [
        ([*base, "--op", "inpaint", "--region", "1.5:3"], "outside the clip"),
        ([*base, "--op", "inpaint", "--region", "1:1"], "is empty"),
        ([*base, "--op", "inpaint", "--region", "1.5:0.5"], "reversed"),
        ([*base, "--op", "inpaint", "--region", "one:two"], "is not START:END"),
        ([video, "--audio", wavs["short"], "--op", "inpaint", "--region", "0:0.2"], "shorter than the 2.000 s video"),
        ([video, "--audio", wavs["r22k_short"], "--op", "inpaint", "--region", "0:0.2"], "at 22050 Hz), shorter than"),
        ([*base, "--op", "refine", "--object", "0,0,60,20"], "outside the 48x48 frame"),
        ([*base, "--op", "refine", "--object", "5,5,6,30"], "degenerate"),
        ([*base, "--op", "refine", "--object", "50,3", "--segmenter", "scene"], "outside the 48x48 frame"),
        ([*base, "--op", "louder"], "unknown --op 'louder'"),
        ([*base, "--instruction", "make it nicer"], "names no known operation"),
        ([*base, "--instruction", "remove the dog bark"], "names no known object"),
        ([*base, "--op", "add", "--region", "0.5:1"], "needs --instruction TEXT"),
        ([*base, "--op", "remove", "--cot", f"@{wavs['bad']}"], "is not a CoT"),
        ([*base, "--op", "remove", "--cot", f"@{tmp_path / 'missing.cot'}"], "cannot read"),
        ([*base, "--op", "refine", "--object", "3,3", "--segmenter", str(tmp_path / "nosam")], "no such checkpoint"),
        ([*base, "--op", "refine", "--object", "0,0", "--segmenter", "scene"], "no object of the scene under the click"),
        ([*base, "--op", "inpaint", "--steps", "0"], "--steps must be a positive integer"),
        ([*base, "--op", "extend", "--region", "0.5:1.5"], "continues to the video's end"),
        ([*base, "--op", "add", "--instruction", "add a bell", "--cot", "Semantic: a bell"], "not both"),
    ]
    if not torch.cuda.is_available():
        cases.append(([*base, "--op", "inpaint", "--device", "cuda"], "no CUDA GPU is visible"))
    for argv, match in cases:
        _bad(argv, out, capsys, match)


def test_cli_writes_every_output_at_once(clip, wavs, tmp_path: Path, capsys) -> None:
    from prismaudio.io.video import probe_video

    video, wav, row = clip
    out = tmp_path / "edited"
    code, err = _run([video, "--audio", wavs["mono"], "--instruction", "add a bell", "--region", "0.5:1.5",
                      "--out", out, "--model", "preset:tiny", "--steps", "1", "--quiet"], capsys)
    assert code == 0, err
    assert "mono" in err and "warning" in err
    stem = Path(video).stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{ext}" for ext in ("wav", "mp4", "cot.txt", "cot.json", "edit.json"))
    rec = json.loads((out / f"{stem}.edit.json").read_text())
    assert rec["op"] == "add" and rec["object"] == "bell" and rec["region"] == [0.5, 1.5]
    cot = CoT.parse((out / f"{stem}.cot.json").read_text())
    assert "bell" in cot.semantic.lower()
    x, sr = sf.read(out / f"{stem}.wav", always_2d=True)
    assert sr == SR and x.shape == (2 * SR, 2)
    assert probe_video(out / f"{stem}.mp4").has_audio
    code, err = _run([video, "--audio", wavs["r22k"], "--op", "inpaint", "--region", "0.5:", "--out",
                      tmp_path / "resampled", "--model", "preset:tiny", "--steps", "1", "--planner", "none",
                      "--quiet"], capsys)
    assert code == 0, err
    assert "22050 Hz" in err and "resampled" in err


def test_python_m_entry_point(clip, tmp_path: Path) -> None:
    video, wav, _ = clip
    r = subprocess.run([sys.executable, "-m", "prismaudio.edit", str(video), "--audio", str(wav), "--op", "inpaint",
                        "--region", "3:4", "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "outside the clip" in r.stderr
    assert not (tmp_path / "o").exists()


def test_bench_edit_runs_end_to_end(tmp_path: Path) -> None:
    """benchmarks/bench_edit.py on a tiny random model: every op measured, the JSON written; the
    outside of an inpainted region is sample-exact whatever the weights."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_edit", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_edit.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    res = bench.run(bench.parse_args(["--model", "preset:tiny", "--n", "2", "--duration", "2", "--size", "48",
                                      "--steps", "1", "--out", str(out)]))
    saved = json.loads(out.read_text())
    assert saved["clips"] == 2 and set(saved["per_clip"]) == {"inpaint", "remove", "add", "refine"}
    assert res["summary"]["inpaint.outside_exact"] == 1.0 and saved["met"]["inpaint.outside_exact"] is True
    for key in ("add.class_recall", "refine.class_recall", "inpaint.onsets_within_40ms"):
        assert key in saved["summary"]
    for r in saved["per_clip"]["refine"]:
        assert 0 <= r["posterior"] <= 1 and len(r["box"]) == 4


def test_add_does_not_repeat_what_the_plan_says(vocab) -> None:
    base = CoT("A bell is struck twice.", "At 0.40 s the bell flashes.", "Clean.", "The bell is on the left.")
    added = target_cot(base, parse_instruction("add the bell", vocab), Region(0.2, 0.8), side=-0.5)
    assert added.semantic.count(".") == base.semantic.count(".") + 1  # only the instruction's own sentence
    assert added.temporal == base.temporal and added.spatial == base.spatial
