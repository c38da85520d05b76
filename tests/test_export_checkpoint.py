"""scripts/export_checkpoint.py turns a GRPO checkpoint into the model its run would have exported at
that iteration: exporting step 1 of a 2-iteration run equals, tensor by tensor, the final/ of a
1-iteration run with the same seed (and differs from the 2-iteration final/ it took its config from)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prismaudio.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "grpo" / "tiny_smoke.yaml"


def _grpo(corpus: Path, out: Path, iterations: int) -> None:
    torch.set_num_threads(1)
    assert cli_main(["grpo", str(CONFIG), "--out", str(out), "--quiet",
                     "--set", f"data.manifest={corpus / 'manifest.jsonl'}", "--set", f"data.cache_dir={corpus / 'cache'}",
                     "--set", f"iterations={iterations}", "--set", "keep_last=5"]) == 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export_corpus")
    assert cli_main(["synth", "--out", str(out), "--n", "4", "--duration", "2", "--size", "48",
                     "--workers", "1", "--quiet"]) == 0
    return out


def test_export_of_step_one_matches_a_one_iteration_run(corpus: Path, tmp_path: Path) -> None:
    two, one, exported = tmp_path / "two", tmp_path / "one", tmp_path / "exported"
    _grpo(corpus, two, 2)
    _grpo(corpus, one, 1)
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "export_checkpoint.py"),
                          str(two / "checkpoints" / "step-00000001"), "--base", str(two / "final"),
                          "--out", str(exported)], check=False, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got, want = load_file(exported / "model.safetensors"), load_file(one / "final" / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    later = load_file(two / "final" / "model.safetensors")
    assert any(not torch.equal(got[k], later[k]) for k in want)


def test_export_refuses_a_missing_checkpoint(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "export_checkpoint.py"), str(tmp_path / "nope"),
                          "--base", str(tmp_path), "--out", str(tmp_path / "out")],
                         check=False, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("export_checkpoint: error:")
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()
