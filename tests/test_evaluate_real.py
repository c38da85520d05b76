"""`prismaudio evaluate --judges real --real-config FILE`: the documented example config, a missing or
broken backend reported once with n/a columns (never a crash, never a silent offline stand-in), and
config mistakes as one-line errors."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from prismaudio.errors import PrismAudioError
from prismaudio.metrics.backends import _BACKENDS, BACKEND_PROVIDERS, register_backend
from prismaudio.metrics.evaluate import evaluate
from prismaudio.metrics.real_config import OFFICIAL_BACKENDS, ROLES, load_real_config, parse_real_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "configs" / "eval" / "real.yaml"


class ConstClap:
    """A clap backend whose score is the clip's RMS (so GT and a copy agree)."""

    def __init__(self, path: str):
        if not Path(path).is_file():
            raise PrismAudioError(f"backend 'test_eval_clap': {path} does not exist")

    def score(self, audio, sr, texts):
        return audio.pow(2).mean((1, 2)).sqrt()


class BrokenSync:
    """A desync backend whose checkpoint exists but fails to load."""

    def __init__(self, path: str):
        self.path = path

    def load(self):
        raise RuntimeError(f"unexpected EOF while reading {self.path}")

    def desync(self, frames, audio, sr):  # pragma: no cover - must never be called
        raise AssertionError("a backend that failed to load was used")


for _name, _role, _cls in (("test_eval_clap", "clap", ConstClap), ("test_eval_sync", "desync", BrokenSync)):
    if _name not in _BACKENDS:
        register_backend(_name, _role)(_cls)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 procedural clips (2 s, 48 px) and random offline judges."""
    from prismaudio.metrics.judges import QualityJudge, SemanticJudge, SyncJudge
    from prismaudio.procedural.synth import run_synth
    from prismaudio.procedural.synth.vocab import CLASS_NAMES

    root = tmp_path_factory.mktemp("evalreal")
    torch.manual_seed(0)
    for kind, cls in (("semantic", SemanticJudge), ("sync", SyncJudge), ("quality", QualityJudge)):
        (cls(CLASS_NAMES) if cls is SemanticJudge else cls()).eval().save(root / "judges" / kind)
    manifest = run_synth(root / "corpus", n=3, seed=1, workers=1, duration=2.0, size=48, progress=False)
    return root, manifest


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_example_config_names_every_role_and_official_reward():
    cfg = load_real_config(EXAMPLE)
    assert set(cfg.roles) == set(ROLES)
    assert set(cfg.rewards) == set(OFFICIAL_BACKENDS)
    for spec in [*cfg.roles.values(), *cfg.rewards.values()]:
        assert spec.backend in BACKEND_PROVIDERS and spec.params.get("path"), spec
    for name, (_, backend) in OFFICIAL_BACKENDS.items():
        assert cfg.reward_spec(name).backend == backend
    text = EXAMPLE.read_text()
    for key in [*ROLES, *OFFICIAL_BACKENDS]:  # every entry carries its comment
        line = next(x for x in text.splitlines() if x.strip().startswith(f"{key}:"))
        assert "#" in line, line


def test_example_config_with_absent_files_gives_na_columns_said_once(corpus, caplog):
    root, manifest = corpus
    caplog.set_level(logging.WARNING)
    report, res = evaluate(manifest, {}, judges="real", real_config=load_real_config(EXAMPLE), split="all",
                           include_gt=False, progress=False, judges_dir=root / "judges")
    lines = [w for w in _warnings(caplog) if "unavailable" in w]
    assert len(lines) == len(ROLES)  # one line per configured backend, not one per clip
    assert all("does not exist" in w or "cannot import" in w or "not available" in w for w in lines), lines
    cell = report.cells["all"]["GT"]
    for col in ("CLAP", "DeSync", "PQ", "PC", "CE", "CU", "CRW", "FD", "KL"):
        assert cell[col].n == 0 and cell[col].render() == "n/a", col
        assert report.modes[col].endswith("unavailable")
    assert cell["GCC"].n > 0  # needs no backend
    assert {st["status"] for st in res.backends.values()} == {"unavailable"}
    md = report.to_markdown()
    assert "### Notes" in md and "clap backend laion_clap unavailable" in md
    assert all(r["CLAP"].startswith("backend unavailable") for r in res.reasons["GT"].values())


def test_partial_config_broken_backend_and_offline_fallback_are_said(corpus, tmp_path, caplog):
    root, manifest = corpus
    ckpt = tmp_path / "w.bin"
    ckpt.write_bytes(b"\0")
    cfg = parse_real_config({"clap": {"backend": "test_eval_clap", "path": str(ckpt)},
                             "desync": {"backend": "test_eval_sync", "path": str(ckpt)}})
    caplog.set_level(logging.WARNING)
    report, res = evaluate(manifest, {}, judges="real", real_config=cfg, split="all", include_gt=False,
                           progress=False, judges_dir=root / "judges")
    warns = _warnings(caplog)
    broken = [w for w in warns if "desync backend test_eval_sync unavailable" in w]
    assert len(broken) == 1 and "unexpected EOF" in broken[0]
    fallback = [w for w in warns if "offline judge" in w]
    assert len(fallback) == 1 and all(r in fallback[0] for r in ("aesthetics", "embedder", "classifier"))
    assert report.modes["CLAP"] == "test_eval_clap" and report.modes["PQ"] == "judge_quality"
    assert report.modes["DeSync"] == "test_eval_sync, unavailable"
    clap = [c["CLAP"] for c in res["GT"]]
    assert all(math.isfinite(v) and v > 0 for v in clap)
    assert report.cells["all"]["GT"]["DeSync"].n == 0 and report.cells["all"]["GT"]["PQ"].n == 3
    assert res.backends["aesthetics"]["status"] == "offline fallback"
    assert "offline judge judge_quality used" in report.to_markdown()


def test_config_mistakes_are_one_error(corpus, tmp_path):
    root, manifest = corpus
    bad = [
        ({"clapp": "ms_clap"}, "unknown key"),
        ({"clap": {"backend": "synchformer_desync"}}, "plays the 'desync' role"),
        ({"clap": {"backend": "nope"}}, "unknown metric backend 'nope'"),
        ({"clap": {"backend": "test_eval_clap", "path": "x", "colour": 1}}, "unknown parameter"),
        ({"clap": 3}, "must be a mapping"),
        ({"rewards": {"official_semantic": {"backend": "ms_clap", "path": None}}}, "must be a file path"),
    ]
    for data, msg in bad:
        with pytest.raises(PrismAudioError, match=msg):
            evaluate(manifest, {}, judges="real", real_config=data, split="all", progress=False,
                     judges_dir=root / "judges")
    f = tmp_path / "r.yaml"
    f.write_text("clap: [unclosed\n")
    with pytest.raises(PrismAudioError, match="not valid YAML") as e:
        load_real_config(f)
    assert "\n" not in str(e.value)
    with pytest.raises(PrismAudioError, match="cannot read real config"):
        load_real_config(tmp_path / "absent.yaml")


def test_relative_paths_resolve_against_the_yaml_folder(tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "w.pth").write_bytes(b"x")
    f = tmp_path / "real.yaml"
    f.write_text("clap: {backend: ms_clap, path: ck/w.pth}\ndesync: {backend: synchformer_desync, path: absent.pth}\n")
    cfg = load_real_config(f)
    assert cfg.roles["clap"].params["path"] == str(tmp_path / "ck" / "w.pth")
    assert cfg.roles["desync"].params["path"] == "absent.pth"
    assert cfg.reward_spec("official_semantic").backend == "ms_clap"  # the role entry serves the reward


class NativeSync:
    """A desync backend that asks for native uint8 frames (as the Synchformer adapter does) and records them."""

    seen: list = []

    def __init__(self, path: str | None = None):
        pass

    def frame_spec(self):
        from prismaudio.io.video import FrameSpec

        return FrameSpec(25, None)

    def desync(self, frames, audio, sr):
        NativeSync.seen.append((frames.dtype, tuple(frames.shape)))
        return torch.zeros(frames.shape[0])


if "test_eval_native_sync" not in _BACKENDS:
    register_backend("test_eval_native_sync", "desync")(NativeSync)


def test_desync_backend_gets_the_frames_it_asks_for(corpus):
    root, manifest = corpus
    NativeSync.seen.clear()
    report, _ = evaluate(manifest, {}, judges="real", real_config={"desync": "test_eval_native_sync"}, split="all",
                         include_gt=False, progress=False, judges_dir=root / "judges", limit=1)
    assert NativeSync.seen == [(torch.uint8, (1, 50, 3, 48, 48))]  # 2 s at 25 fps, the corpus's native 48 px
    assert report.cells["all"]["GT"]["DeSync"].mean == 0.0
