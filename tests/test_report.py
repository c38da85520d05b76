"""Evaluation table assembly."""

from __future__ import annotations

import json
import math

import pytest

from prismaudio.errors import PrismAudioError
from prismaudio.metrics.report import build_report, load_report, summarize


def _data():
    return {
        "ours": [
            {"id": "a", "subset": "single", "clap": 0.4, "DeSync": 0.5, "GCC": 2.0, "onset_ms": 10.0},
            {"id": "b", "subset": "single", "clap": 0.6, "DeSync": float("nan"), "GCC": 4.0, "onset_ms": None},
            {"id": "c", "subset": "multi", "clap": 0.2, "DeSync": 0.7, "GCC": 6.0},
        ],
        "GT": [
            {"id": "a", "subset": "single", "clap": 0.5, "onset_ms": 1.0},
            {"id": "c", "subset": "multi", "clap": 0.3, "onset_ms": 3.0},
        ],
    }


def test_summarize_nan_aware():
    s = summarize([1.0, 2.0, 3.0, float("nan"), None, float("inf"), "x"])
    assert (s.mean, s.n) == (2.0, 3) and s.std == pytest.approx(1.0)
    assert summarize([5.0]).std == 0.0
    empty = summarize([float("nan")])
    assert empty.n == 0 and empty.render() == "n/a"


def test_report_numbers_and_subsets():
    rep = build_report(_data(), set_level={"ours": {"all": {"FD": 1.5}}}, modes={"GCC": "bewo", "fd": "PANNs"})
    assert rep.systems == ["GT", "ours"]
    assert rep.subsets == ["all", "single", "multi"]
    assert rep.columns == ["CLAP", "DeSync", "GCC", "FD", "onset_ms"]
    all_ours = rep.cells["all"]["ours"]
    assert all_ours["CLAP"].mean == pytest.approx(0.4) and all_ours["CLAP"].std == pytest.approx(0.2)
    assert all_ours["DeSync"].n == 2 and all_ours["DeSync"].mean == pytest.approx(0.6)
    assert all_ours["FD"].mean == 1.5 and all_ours["FD"].std is None
    assert rep.cells["single"]["ours"]["onset_ms"].n == 1
    assert "onset_ms" not in rep.cells["multi"]["ours"]  # never measured there: rendered n/a
    assert rep.cells["single"]["ours"]["CLAP"].mean == pytest.approx(0.5)
    assert rep.cells["multi"]["GT"]["CLAP"].mean == pytest.approx(0.3)
    assert rep.header("GCC") == "GCC (bewo) ↓" and rep.header("CLAP") == "CLAP ↑"
    assert rep.header("FD") == "FD (PANNs) ↓"


def test_markdown_and_json_roundtrip(tmp_path):
    rep = build_report(_data(), modes={"GCC": "bewo"})
    md = rep.to_markdown()
    header = next(line for line in md.splitlines() if line.startswith("| System"))
    for col in ("CLAP ↑", "DeSync ↓", "GCC (bewo) ↓", "onset_ms ↓"):
        assert col in header
    assert header.index("CLAP") < header.index("DeSync") < header.index("GCC") < header.index("onset_ms")
    assert "| GT | 0.40 ± 0.14 |" in md
    assert "n/a" in md  # GT has no DeSync
    assert "### Subset: multi" in md
    rep.write(tmp_path / "table.md", tmp_path / "table.json")
    assert (tmp_path / "table.md").read_text(encoding="utf-8") == md
    data = json.loads((tmp_path / "table.json").read_text(encoding="utf-8"))
    assert data["cells"]["all"]["GT"]["CLAP"] == {"mean": pytest.approx(0.4), "std": pytest.approx(0.1414, abs=1e-4), "n": 2}
    assert data["headers"][2] == "GCC (bewo) ↓"
    back = load_report(tmp_path / "table.json")
    assert back == rep
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_errors():
    with pytest.raises(PrismAudioError, match="not a mapping"):
        build_report({"x": [1.0]})
    with pytest.raises(PrismAudioError, match="both per clip and per set"):
        build_report({"x": [{"id": 1, "FD": 1.0}]}, set_level={"x": {"all": {"FD": 2.0}}})
    rep = build_report({"x": [{"id": 1, "subset": "weird", "KL": math.nan}]})
    assert rep.subsets == ["all", "weird"] and rep.cells["all"]["x"]["KL"].n == 0


def test_set_level_counts_and_notes_roundtrip(tmp_path):
    notes = {"backends": {"clap": {"backend": "ms_clap", "status": "unavailable", "reason": "no file x.pth"},
                          "desync": {"backend": "judge_sync", "status": "offline fallback", "reason": None}},
             "fd": {"ours": {"all": {"n": 5, "n_reference": 6, "n_clips": 6, "reason": None}}},
             "nan_reasons": {"ours": [
                 {"reason": "silent audio", "metrics": ["CLAP", "KL"], "clips": ["a"], "n_clips": 1},
                 {"reason": "backend unavailable: clap (ms_clap)", "metrics": ["CLAP"], "clips": ["a", "b"], "n_clips": 2}]}}
    rep = build_report(_data(), set_level={"ours": {"all": {"FD": {"value": 2.0, "n": 5}}}})
    rep.notes = notes
    assert rep.cells["all"]["ours"]["FD"].render() == "2.00 (n=5)"
    md = rep.to_markdown()
    assert "clap backend ms_clap unavailable" in md and "offline judge judge_sync used" in md
    assert "ours: FD over 5 of 6 clips (reference: 6)" in md
    assert "NaN in CLAP, KL for 1 clip(s): silent audio" in md
    assert "backend unavailable: clap" not in md  # said once, by the backend line
    rep.write(tmp_path / "t.md", tmp_path / "t.json")
    assert load_report(tmp_path / "t.json") == rep
    with pytest.raises(PrismAudioError, match="count must be an int"):
        build_report(_data(), set_level={"ours": {"all": {"FD": {"value": 1.0, "n": "5"}}}})
