"""`prismaudio generate --manifest`: one WAV per clip of a split, resumable, broken clips reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf

from prismaudio.cli import main as cli_main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gen_corpus")
    assert cli_main(["synth", "--out", str(out), "--n", "10", "--duration", "2", "--size", "48",
                     "--workers", "1", "--quiet"]) == 0
    return out


def _ids(corpus: Path, split: str) -> list[str]:
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [r["id"] for r in rows if r["split"] == split]


def test_every_clip_of_the_split_gets_a_wav_and_its_plan(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    args = ["generate", "--manifest", str(corpus / "manifest.jsonl"), "--split", "train", "--limit", "3",
            "--model", "preset:tiny", "--steps", "2", "--out", str(out), "--quiet", "--manifest-cot"]
    assert cli_main(args) == 0
    ids = _ids(corpus, "train")[:3]
    assert sorted(p.name for p in out.glob("*.wav")) == sorted(f"{i}.wav" for i in ids)
    for i in ids:
        audio, sr = sf.read(out / f"{i}.wav")
        assert sr == 16000 and audio.shape == (32000, 2)  # the clip's own 2 s, stereo
        row = next(json.loads(x) for x in (corpus / "manifest.jsonl").read_text().splitlines() if i in x)
        assert json.loads((out / f"{i}.cot.json").read_text())["semantic"] == row["cot"]["semantic"]
    # a second run skips what exists (resumable) and rewrites nothing
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli_main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp


def test_a_broken_clip_is_reported_and_the_others_still_run(corpus: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rows = [json.loads(line) for line in (corpus / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = [dict(r, video=str(corpus / r["video"]), audio=str(corpus / r["audio"])) for r in rows[:2]]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    rows[0] = dict(rows[0], video=str(bad))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "gen"
    code = cli_main(["generate", "--manifest", str(manifest), "--split", "all", "--model", "preset:tiny",
                     "--steps", "2", "--out", str(out), "--quiet", "--planner", "none"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"clip {rows[0]['id']}:" in err and "Traceback" not in err
    assert [p.name for p in out.glob("*.wav")] == [f"{rows[1]['id']}.wav"]
    assert not list(out.glob(".*part*"))  # no half-written file


def test_manifest_and_video_together_is_one_clear_error(corpus: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    video = next((corpus / "video").glob("*.mp4"))
    assert cli_main(["generate", str(video), "--manifest", str(corpus / "manifest.jsonl"), "--out", str(tmp_path)]) == 2
    assert "drop the video" in capsys.readouterr().err


def test_a_folder_of_videos_loads_the_model_once(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`generate DIR`: every video file of the folder, one model load; a broken file is reported, the
    rest still run (exit 1), other files are ignored."""
    import shutil

    import prismaudio.cli as cli

    folder = tmp_path / "videos"
    folder.mkdir()
    for p in sorted((corpus / "video").glob("*.mp4"))[:2]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.mp4").write_bytes(b"not a video")
    (folder / "notes.txt").write_text("ignored")
    loads = []
    real = cli.load_pipeline
    monkeypatch.setattr(cli, "load_pipeline", lambda spec: loads.append(spec) or real(spec))
    out = tmp_path / "out"
    code = cli_main(["generate", str(folder), "--model", "preset:tiny", "--planner", "none", "--steps", "2",
                     "--out", str(out), "--quiet"])
    assert code == 1 and len(loads) == 1
    stems = sorted(p.stem for p in folder.glob("*.mp4") if p.name != "broken.mp4")
    assert sorted(p.stem for p in out.glob("*.wav")) == stems
    assert "clip broken:" in capsys.readouterr().err
    assert cli_main(["generate", str(tmp_path / "out"), "--model", "preset:tiny", "--out", str(tmp_path / "o2"),
                     "--quiet", "--planner", "none"]) == 2  # a folder with no video files: one line


def test_a_zero_byte_or_unreadable_wav_is_redone(corpus: Path, tmp_path: Path) -> None:
    """Issue 20 item 10: a 0-byte <id>.wav (a disk that filled, a copy that failed) counted as done."""
    from prismaudio.batch import wav_is_done

    out = tmp_path / "gen"
    out.mkdir()
    ids = _ids(corpus, "train")[:2]
    (out / f"{ids[0]}.wav").write_bytes(b"")
    (out / f"{ids[1]}.wav").write_bytes(b"RIFF\x00\x00")
    assert not wav_is_done(out / f"{ids[0]}.wav") and not wav_is_done(out / f"{ids[1]}.wav")
    assert cli_main(["generate", "--manifest", str(corpus / "manifest.jsonl"), "--split", "train", "--limit", "2",
                     "--model", "preset:tiny", "--steps", "1", "--out", str(out), "--quiet", "--manifest-cot"]) == 0
    for i in ids:
        assert wav_is_done(out / f"{i}.wav") and sf.info(str(out / f"{i}.wav")).frames == 32000


def test_no_plan_is_left_when_its_wav_cannot_be_written(corpus: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20 item 10: the .cot.json of a clip whose WAV write failed stayed behind."""
    import prismaudio.batch as batch
    from prismaudio.errors import PrismAudioError

    def full_disk(path, *a, **k):
        raise PrismAudioError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(batch, "save_wav", full_disk)
    out = tmp_path / "gen"
    code = cli_main(["generate", "--manifest", str(corpus / "manifest.jsonl"), "--split", "train", "--limit", "1",
                     "--model", "preset:tiny", "--steps", "1", "--out", str(out), "--quiet", "--manifest-cot"])
    assert code == 1 and "No space left on device" in capsys.readouterr().err
    assert list(out.iterdir()) == []
