"""`prismaudio evaluate`: GT vs copies, missing / mono / silent / resampled files, the CLI."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from prismaudio.cli import main
from prismaudio.errors import PrismAudioError
from prismaudio.io.audio import load_audio, save_wav
from prismaudio.metrics.evaluate import evaluate
from prismaudio.metrics.judges import QualityJudge, SemanticJudge, SyncJudge
from prismaudio.procedural.synth.vocab import CLASS_NAMES

N = 4  # clips evaluated


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from prismaudio.procedural.synth import run_synth

    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    for kind, cls in (("semantic", SemanticJudge), ("sync", SyncJudge), ("quality", QualityJudge)):
        (cls(CLASS_NAMES) if cls is SemanticJudge else cls()).eval().save(root / "judges" / kind)
    manifest = run_synth(root / "corpus", n=N, seed=0, workers=1, progress=False)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for name in ("copy", "mono", "odd"):
        (root / name).mkdir()
    for i, r in enumerate(rows):
        src = manifest.parent / r["audio"]
        shutil.copy(src, root / "copy" / f"{r['id']}.wav")
        audio, sr = load_audio(src, None)
        save_wav(root / "mono" / f"{r['id']}.wav", audio.mean(0, keepdim=True), sr)
        if i == 0:
            save_wav(root / "odd" / f"{r['id']}.wav", torch.zeros_like(audio), sr)  # silent
        elif i == 1:
            from prismaudio.io.audio import resample

            save_wav(root / "odd" / f"{r['id']}.flac", resample(audio, sr, 22050), 22050)  # other rate
        elif i == 2:
            continue  # missing
        else:
            shutil.copy(src, root / "odd" / f"{r['id']}.wav")
    report, res = evaluate(manifest, {n: root / n for n in ("copy", "mono", "odd")}, split="all",
                           spatial_mode="paper", bewo_frame_stride=32, progress=False, judges_dir=root / "judges")
    return root, manifest, rows, report, res


def _col(res, system, metric):
    return [c.get(metric, math.nan) for c in res[system]]


def test_copy_matches_gt(setup):
    _, _, _rows, report, res = setup
    assert report.systems[:2] == ["GT", "copy"]
    for m in ("CLAP", "PQ", "PC", "DeSync"):
        gt, cp = _col(res, "GT", m), _col(res, "copy", m)
        assert all(math.isfinite(v) for v in gt) and gt == pytest.approx(cp, abs=1e-6), m
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in _col(res, "copy", "GCC"))
    assert all(abs(v) < 1e-6 for v in _col(res, "copy", "KL"))
    cell = report.cells["all"]["copy"]
    assert cell["CLAP"].n == N and cell["GCC"].mean == pytest.approx(0.0, abs=1e-12)
    assert cell["FD"].mean == pytest.approx(0.0, abs=1e-6)
    assert report.modes["GCC"].startswith("paper") and report.modes["CLAP"] == "judge_clap"
    assert {"onset_ms", "side_acc", "class_recall"} <= set(report.columns)


def test_missing_silent_resampled(setup):
    _, _, rows, report, res = setup
    assert res.missing["odd"] == [rows[2]["id"]]
    assert "missing generated file" in res.reasons["odd"][rows[2]["id"]]["CLAP"]
    assert math.isnan(res["odd"][0]["CLAP"]) and res.reasons["odd"][rows[0]["id"]]["CLAP"] == "silent audio"
    # 22.05 kHz FLAC is resampled by the backends: close to the GT values
    assert res["odd"][1]["CLAP"] == pytest.approx(res["GT"][1]["CLAP"], abs=0.05)
    assert res["odd"][3]["CLAP"] == pytest.approx(res["GT"][3]["CLAP"], abs=1e-6)
    assert report.cells["all"]["odd"]["CLAP"].n == 2
    assert "| odd |" in report.to_markdown()


def test_mono_spatial_nan_other_columns_present(setup):
    _, _, rows, report, res = setup
    assert all(math.isnan(v) for v in _col(res, "mono", "GCC"))
    assert "mono" in res.reasons["mono"][rows[0]["id"]]["GCC"]
    assert all(math.isfinite(v) for v in _col(res, "mono", "CLAP") + _col(res, "mono", "PQ"))
    assert report.cells["all"]["mono"]["GCC"].n == 0 and report.cells["all"]["mono"]["KL"].n == N


def test_cli_writes_report_and_bad_manifest_is_one_line(setup, tmp_path, capsys):
    root, manifest, *_ = setup
    out = tmp_path / "res" / "table"
    rc = main(["evaluate", "--manifest", str(manifest), "--generated", f"mine={root / 'copy'}", "--split", "all",
               "--limit", "2", "--bewo-frame-stride", "32", "--no-gt", "--judges-dir", str(root / "judges"),
               "--out", str(out), "--quiet"])
    assert rc == 0
    md, js = out.parent / "table.md", out.parent / "table.json"
    assert md.is_file() and js.is_file()
    data = json.loads(js.read_text())
    assert data["systems"] == ["GT", "mine"] and "onset_ms" not in data["columns"]
    assert "| mine |" in capsys.readouterr().out
    clips = [json.loads(x) for x in (out.parent / "table.clips.jsonl").read_text().splitlines()]
    assert sorted({c["system"] for c in clips}) == ["GT", "mine"] and len(clips) == 4
    mine = [c for c in clips if c["system"] == "mine"]
    assert data["cells"]["all"]["mine"]["CLAP"]["mean"] == pytest.approx(sum(c["CLAP"] for c in mine) / 2)
    rc = main(["evaluate", "--manifest", str(tmp_path / "nope.jsonl"), "--generated", str(root / "copy"),
               "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("prismaudio: error:")
    assert not (tmp_path / "x.md").exists()


# ------------------------------------------------------------------ issue 20 items 3, 5, 7
def _write_float_wav(path, audio, sr):
    import soundfile as sf

    sf.write(str(path), audio.T.numpy(), sr, subtype="FLOAT")


def test_nonfinite_audio_is_nan_everywhere_and_fd_uses_the_valid_clips(setup, tmp_path):
    """A NaN or Inf WAV is NaN with its reason in EVERY column (DeSync, GCC, onset, side, ITD were
    finite); FD is computed over the remaining valid clips and says how many."""
    from prismaudio.metrics.evaluate import summary_lines

    root, manifest, rows, *_ = setup
    bad = tmp_path / "bad"
    bad.mkdir()
    for i, r in enumerate(rows):
        src = manifest.parent / r["audio"]
        audio, sr = load_audio(src, None)
        if i < 2:
            audio[:, 4000 + 7 * i] = float("inf") if i == 0 else float("nan")
            _write_float_wav(bad / f"{r['id']}.wav", audio, sr)
        else:
            shutil.copy(src, bad / f"{r['id']}.wav")
    report, res = evaluate(manifest, {"bad": bad}, split="all", progress=False, judges_dir=root / "judges")
    for i in (0, 1):
        clip, reasons = res["bad"][i], res.reasons["bad"][rows[i]["id"]]
        cols = [k for k in clip if k not in ("id", "subset")]
        assert {"CLAP", "DeSync", "PQ", "PC", "GCC", "KL", "onset_ms", "side_acc", "itd_err_ms", "class_recall"} <= set(cols)
        assert all(math.isnan(clip[k]) for k in cols)
        assert {reasons[k] for k in cols} == {"non-finite audio (NaN/Inf samples)"}
    assert res["bad"][2]["CLAP"] == pytest.approx(res["GT"][2]["CLAP"], abs=1e-6)
    fd = report.cells["all"]["bad"]["FD"]
    assert fd.n == 2 and math.isfinite(fd.mean) and fd.render().endswith("(n=2)")
    assert res.fd_counts["bad"]["all"] == {"n": 2, "n_reference": N, "n_clips": N, "reason": None}
    group = next(g for g in report.notes["nan_reasons"]["bad"] if g["reason"].startswith("non-finite"))
    assert group["clips"] == [rows[0]["id"], rows[1]["id"]] and group["n_clips"] == 2
    lines = summary_lines(res)
    assert any(line.startswith("bad: FD over 2 of 4 clips") for line in lines)
    assert any("non-finite audio" in line and "2 clip(s)" in line for line in lines)


def test_every_nan_reason_is_listed_grouped_with_clip_ids():
    from prismaudio.metrics.evaluate import EvalResults, reason_groups, summary_lines

    res = EvalResults()
    res["s"] = []
    res.reasons["s"] = {f"c{i}": {"CLAP": why, "KL": why} for i, why in enumerate(
        ["silent audio", "silent audio", "empty audio (0 samples)", "cannot read generated file: bad header",
         "missing generated file out/c4.wav (.wav/.flac/.mp3)", "missing generated file out/c5.wav (.wav/.flac/.mp3)",
         "non-finite audio (NaN/Inf samples)", "audio shorter than 0.1 s (the shortest window the metrics analyse)"])}
    groups = reason_groups(res)["s"]
    assert len(groups) == 6  # not only the four commonest
    missing = next(g for g in groups if g["reason"].startswith("missing"))
    assert missing["reason"] == "missing generated file out/<id>.wav (.wav/.flac/.mp3)"
    assert missing["clips"] == ["c4", "c5"] and missing["metrics"] == ["CLAP", "KL"]
    assert groups[0]["n_clips"] == 2 and len(summary_lines(res)) == 6


def _parse(args):
    from prismaudio.cli import build_parser

    return build_parser().parse_args(["evaluate", *args])


def test_tiny_generated_wav_is_nan_with_reason_and_report_is_written(setup, tmp_path, capsys):
    """A generated WAV of <= 512 samples (a one-frame video's output) crashed evaluate with
    `max_pool1d() Invalid computed output size: 0`; now it is NaN with its reason."""
    from prismaudio.io.audio import save_wav
    from prismaudio.metrics.evaluate import run_cli

    root, manifest, rows, *_ = setup
    gen = tmp_path / "tiny"
    gen.mkdir()
    g = torch.Generator().manual_seed(0)
    for r, n in zip(rows[:2], (512, 1)):
        save_wav(gen / f"{r['id']}.wav", 0.3 * torch.randn(2, n, generator=g), 16000)
    out = tmp_path / "res" / "t"
    rc = run_cli(_parse(["--manifest", str(manifest), "--generated", str(gen), "--split", "all", "--limit", "2",
                         "--judges-dir", str(root / "judges"), "--out", str(out), "--quiet"]))
    assert rc == 0
    data = json.loads((out.parent / "t.json").read_text())
    group = next(g for g in data["notes"]["nan_reasons"]["tiny"] if "shorter than" in g["reason"])
    assert group["clips"] == [rows[0]["id"], rows[1]["id"]] and "class_recall" in group["metrics"]
    assert (out.parent / "t.md").is_file() and (out.parent / "t.clips.jsonl").is_file()
    assert "| tiny |" in capsys.readouterr().out


def test_unwritable_out_fails_before_the_work(tmp_path, monkeypatch):
    from prismaudio.metrics import evaluate as E

    manifest, gen = tmp_path / "manifest.jsonl", tmp_path / "gen"  # never read: --out fails first
    monkeypatch.setattr(E, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    (tmp_path / "t.json").mkdir()
    for out, msg in ((afile / "table", "is not a directory"), (afile / "sub" / "table", "is a file, not a directory"),
                     (tmp_path / "t", "is a directory")):
        with pytest.raises(PrismAudioError, match=msg):
            E.run_cli(_parse(["--manifest", str(manifest), "--generated", str(gen), "--out", str(out)]))
    assert afile.read_text() == "x" and not list(tmp_path.glob("t.md"))


@pytest.fixture
def small_fs(tmp_path):
    """Mount a tiny tmpfs (read-only, or 24 KiB) under tmp_path; skip where mounting is not allowed."""
    import subprocess

    mounted = []

    def mount(name, opts):
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", str(d)], capture_output=True)


def _tiny_report():
    from prismaudio.metrics.report import build_report

    per_clip = {"GT": [{"id": f"c{i}", "subset": "single", "CLAP": 0.1 * i} for i in range(2000)]}
    return build_report(per_clip), per_clip


def test_read_only_and_full_disk_write_nothing(small_fs):
    from prismaudio.metrics.evaluate import prepare_output, write_outputs

    ro = small_fs("ro", "ro,size=64k")
    with pytest.raises(PrismAudioError, match="not writable"):
        prepare_output(ro / "table")
    full = small_fs("full", "size=24k")
    report, per_clip = _tiny_report()
    prefix = prepare_output(full / "table")  # the folder is writable: the disk fills while writing
    with pytest.raises(PrismAudioError, match="nothing was written") as e:
        write_outputs(prefix, report, per_clip)
    assert "\n" not in str(e.value) and sorted(p.name for p in full.iterdir()) == []


def test_late_rename_failure_rolls_back_and_keeps_the_previous_report(tmp_path, monkeypatch):
    import errno
    import os

    from prismaudio.metrics import evaluate as E

    report, per_clip = _tiny_report()
    E.write_outputs(tmp_path / "t", report, per_clip)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["t.clips.jsonl", "t.json", "t.md"]
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # after the first new file is in place
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(E.os, "replace", replace)
    report2, per2 = _tiny_report()
    report2.modes["CLAP"] = "changed"
    with pytest.raises(PrismAudioError, match="No space left on device"):
        E.write_outputs(tmp_path / "t", report2, per2)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old set intact, no staging left


def test_evaluate_out_under_a_file_fails_before_the_work(tmp_path, monkeypatch, capsys):
    """`prismaudio evaluate` checks --out before any evaluation: an --out under a file is one line, exit 2."""
    from prismaudio.cli import main
    from prismaudio.metrics import evaluate as E

    monkeypatch.setattr(E, "evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    rc = main(["evaluate", "--manifest", str(tmp_path / "m.jsonl"), "--generated", str(tmp_path),
               "--out", str(afile / "table")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is not a directory" in err[0]
