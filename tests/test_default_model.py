"""The shipped offline default (the `prismaudio-mini` asset): size budget, format, and that it is used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors import safe_open

from prismaudio.cli import default_model_dir
from prismaudio.cli import main as cli_main
from prismaudio.pipeline import PrismAudioPipeline

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "src" / "prismaudio" / "assets"
MODEL = ASSETS / "prismaudio-mini"
EXAMPLE = REPO / "examples" / "example.mp4"


def test_everything_shipped_under_assets_fits_the_25_mb_budget() -> None:
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total <= 25 * 2**20, f"src/prismaudio/assets/ holds {total / 2**20:.1f} MB"


def test_default_model_is_the_packed_mini_with_its_training_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRISMAUDIO_MODEL", raising=False)
    monkeypatch.delenv("PRISMAUDIO_ASSETS", raising=False)
    assert default_model_dir() == MODEL
    cfg = json.loads((MODEL / "config.json").read_text())
    assert cfg["preset"] == "mini" and cfg["encoders"]["text"]["name"] == "minilm"
    with safe_open(str(MODEL / "model.safetensors"), "pt") as f:  # float16 on disk
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # noqa: SIM118
    assert (MODEL / "training_summary.png").stat().st_size > 1000
    summary = json.loads((MODEL / "metrics.json").read_text())
    assert {"vae", "table", "targets", "cot_claim", "wall_clock"} <= set(summary)
    # The summary describes the weights shipped: a post-training section and its curves exist exactly
    # when the shipped weights are the Fast-GRPO post-trained ones (`make grpo-default` writes both).
    post = summary.get("post_training")
    assert (post is not None) == (MODEL / "grpo_summary.png").is_file()
    if post is not None:
        assert post["algorithm"] == "Fast-GRPO" and post["training"]["multi"]["finished"]
        assert {"before", "after"} <= set(post["rewards_test"]) and (MODEL / "grpo_summary.png").stat().st_size > 1000
    assert summary["stages"]["cot_multi"]["steps"] > 0 and summary["table"]["all"]["MultiCoT"]["class_recall"] > 0
    pipe = PrismAudioPipeline.from_pretrained(MODEL)
    assert all(p.dtype == torch.float32 for p in pipe.parameters())


def test_make_demo_command_uses_the_trained_default(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PRISMAUDIO_MODEL", raising=False)
    assert cli_main(["generate", str(EXAMPLE), "--out", str(tmp_path), "--quiet", "--steps", "8"]) == 0
    assert "randomly initialised" not in capsys.readouterr().err
    audio, sr = sf.read(tmp_path / "example.wav")
    assert sr == 16000 and audio.ndim == 2 and audio.shape[1] == 2
    rms = float((audio**2).mean() ** 0.5)
    assert 1e-3 < rms < 0.7  # a trained model makes sound, neither silence nor clipped noise


def test_assets_root_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prismaudio.resources import asset_path

    monkeypatch.delenv("PRISMAUDIO_MODEL", raising=False)
    monkeypatch.delenv("PRISMAUDIO_ASSETS", raising=False)
    assert asset_path("judges") == ASSETS / "judges"
    monkeypatch.setenv("PRISMAUDIO_ASSETS", str(tmp_path))
    assert asset_path("visual_classifier") == tmp_path / "visual_classifier"
    assert default_model_dir() is None  # the override holds no prismaudio-mini
    (tmp_path / "prismaudio-mini").mkdir()
    (tmp_path / "prismaudio-mini" / "config.json").write_text("{}")
    assert default_model_dir() == tmp_path / "prismaudio-mini"
