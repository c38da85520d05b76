"""`prismaudio evaluate`: GT vs copies, missing / mono / silent / resampled files, the CLI."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from prismaudio.cli import main
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
                           bewo_frame_stride=32, progress=False, judges_dir=root / "judges")
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
