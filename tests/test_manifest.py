"""Manifest schema parsing: JSONL, CSV, VGGSound and AudioCanvas lists, problems, atomic writing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prismaudio.data.manifest import (
    ManifestRow,
    read_audiocanvas,
    read_manifest,
    read_vggsound_list,
    vggsound_id,
    write_manifest,
)
from prismaudio.errors import PrismAudioError

COT = {"semantic": "a dog", "temporal": "barks twice", "aesthetic": "dry", "spatial": "left"}


def synth_row(i: int, **kw) -> dict:
    d = {
        "id": f"clip{i:03d}", "video": f"videos/clip{i:03d}.mp4", "audio": f"audio/clip{i:03d}.wav",
        "split": "train", "subset": "single", "duration": 1.0, "sample_rate": 16000, "fps": 25,
        "caption": "a dog barks", "cot": COT, "cot_monolithic": "A dog barks twice on the left.",
        "scene": {"objects": [{"kind": "dog"}]},
    }
    d.update(kw)
    return d


def test_jsonl_full_schema(tmp_path: Path) -> None:
    m = tmp_path / "data" / "manifest.jsonl"
    m.parent.mkdir()
    m.write_text("\n".join(json.dumps(synth_row(i)) for i in range(3)) + "\n")
    rows, problems = read_manifest(m)
    assert problems == []
    assert [r.id for r in rows] == ["clip000", "clip001", "clip002"]
    r = rows[0]
    assert r.video == m.parent / "videos/clip000.mp4"
    assert r.audio == m.parent / "audio/clip000.wav"
    assert r.cot == COT and r.cot_monolithic.startswith("A dog")
    assert (r.split, r.subset, r.duration, r.caption) == ("train", "single", 1.0, "a dog barks")
    assert r.scene == {"objects": [{"kind": "dog"}]}
    assert r.extra == {"sample_rate": 16000, "fps": 25}


def test_jsonl_minimal_and_absolute(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "a", "video": "/abs/a.mp4"}) + "\n" + json.dumps({"id": 7, "video": "b.mp4", "subset": None}) + "\n")
    rows, problems = read_manifest(m)
    assert problems == []
    assert rows[0].video == Path("/abs/a.mp4") and rows[0].audio is None and rows[0].cot is None
    assert rows[1].id == "7" and rows[1].subset is None and rows[1].caption == ""


def test_broken_rows_are_problems(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    lines = [
        json.dumps(synth_row(0)),
        "{not json",
        json.dumps({"video": "x.mp4"}),  # no id
        json.dumps({"id": "novideo"}),
        json.dumps(synth_row(0)),  # duplicate
        json.dumps(synth_row(1, split="dev")),
        json.dumps(synth_row(2, duration="long")),
        json.dumps(synth_row(3, id="../evil")),
        json.dumps([1, 2]),
        "",
        json.dumps(synth_row(4)),
    ]
    m.write_text("\n".join(lines) + "\n")
    rows, problems = read_manifest(m)
    assert [r.id for r in rows] == ["clip000", "clip004"]
    assert len(problems) == 8
    text = "\n".join(problems)
    for needle in ("m.jsonl:2: bad JSON", ":3: missing id", "missing video", "duplicate id 'clip000'", "split", "duration",
                   "file name", ":9: expected a JSON object"):
        assert needle in text


def test_csv_manifest(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text(
        "id,video,audio,caption,split,cot_semantic,cot_temporal,cot_aesthetic,cot_spatial,duration,fps\n"
        "a,v/a.mp4,a/a.wav,\"rain, heavy\",val,rain,steady,soft,all around,2.5,25\n"
        "b,v/b.mp4,,,test,,,,,,\n"
        ",v/c.mp4,,,,,,,,,\n"
        "d,,,,,,,,,,\n"
        "e,v/e.mp4,,,train,,,,,,,extra\n"
    )
    rows, problems = read_manifest(m)
    assert [r.id for r in rows] == ["a", "b"]
    a, b = rows
    assert a.caption == "rain, heavy" and a.split == "val" and a.duration == 2.5 and a.audio == tmp_path / "a/a.wav"
    assert a.cot == {"semantic": "rain", "temporal": "steady", "aesthetic": "soft", "spatial": "all around"}
    assert a.extra == {"fps": "25"}
    assert b.audio is None and b.cot is None and b.duration is None
    assert len(problems) == 3 and any(":6: 1 more cell" in p for p in problems)


def test_vggsound_list(tmp_path: Path) -> None:
    lst = tmp_path / "vggsound.csv"
    lst.write_text(
        "---g-f_I2yQ,1,people marching,test\n"
        "--0PQM4-hqg,30,\"waterfall burbling, river\",train\n"
        "bad,notanumber,x,train\n"
        "--0PQM4-hqg,30,dup,train\n"
        "short\n"
    )
    rows, problems = read_vggsound_list(lst, "clips", audio_dir=tmp_path / "wav")
    assert [r.id for r in rows] == ["---g-f_I2yQ_000001", "--0PQM4-hqg_000030"]
    assert vggsound_id("abc", 5) == "abc_000005"
    r = rows[1]
    assert r.video == tmp_path / "clips" / "--0PQM4-hqg_000030.mp4"
    assert r.audio == tmp_path / "wav" / "--0PQM4-hqg_000030.wav"
    assert r.caption == "waterfall burbling, river" and r.split == "train" and r.duration == 10.0
    assert r.extra["start_seconds"] == 30
    assert len(problems) == 3
    rows, _ = read_vggsound_list(lst, "/data/vgg")
    assert rows[0].audio is None and rows[0].video == Path("/data/vgg/---g-f_I2yQ_000001.mp4")


def test_vggsound_header_is_skipped(tmp_path: Path) -> None:
    lst = tmp_path / "v.csv"
    lst.write_text("youtube_id,start_seconds,label,split\nabc,0,dog,train\n")
    rows, problems = read_vggsound_list(lst, "v")
    assert [r.id for r in rows] == ["abc_000000"] and problems == []


def test_audiocanvas_json_and_jsonl(tmp_path: Path) -> None:
    items = [
        {"video_id": "ac1", "text": "a bell", "semantic": "bell", "temporal": "rings once", "aesthetic": "bright", "spatial": "center"},
        {"id": "ac2", "caption": "wind", "cot": {"semantic": "wind"}, "video": "own/ac2.mkv", "split": "test"},
        {"caption": "no id"},
    ]
    j = tmp_path / "ac.json"
    j.write_text(json.dumps(items))
    rows, problems = read_audiocanvas(j, video_dir="vids")
    assert [r.id for r in rows] == ["ac1", "ac2"]
    assert rows[0].video == tmp_path / "vids/ac1.mp4" and rows[0].caption == "a bell"
    assert rows[0].cot == {"semantic": "bell", "temporal": "rings once", "aesthetic": "bright", "spatial": "center"}
    assert rows[1].video == tmp_path / "own/ac2.mkv" and rows[1].cot == {"semantic": "wind"}
    assert len(problems) == 1 and "missing id" in problems[0]
    jl = tmp_path / "ac.jsonl"
    jl.write_text("\n".join(json.dumps(d) for d in items[:1]) + "\n")
    rows, problems = read_audiocanvas(jl)  # no video_dir and no video path: a problem
    assert rows == [] and "video_dir" in problems[0]


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv"])
def test_write_read_round_trip(tmp_path: Path, name: str) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(synth_row(i, sample_rate="16000", fps="25")) for i in range(2)) + "\n")
    rows, _ = read_manifest(src)
    rows.append(ManifestRow(id="plain", video=tmp_path / "p.mp4"))
    out = tmp_path / name
    write_manifest(out, rows)
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]
    if name.endswith(".jsonl"):
        assert json.loads(out.read_text().splitlines()[0])["video"] == "videos/clip000.mp4"
    back, problems = read_manifest(out)
    assert problems == []
    assert back == rows


def test_unreadable_manifest_raises(tmp_path: Path) -> None:
    with pytest.raises(PrismAudioError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl")
    bad = tmp_path / "bin.jsonl"
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(PrismAudioError, match="UTF-8"):
        read_manifest(bad)
