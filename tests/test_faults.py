"""kill -9 at a random point of the per-clip long jobs, then resume: the result is bitwise the
uninterrupted run's, file for file, with no temp file left (issue 20). `train` and `grpo` have
theirs in test_train_resume.py / test_grpo_resume.py; these are `extract` and `generate --manifest`.

The kill lands a random 0-400 ms after the first finished output appears (seeded, so a failure can
be replayed with PRISMAUDIO_FAULT_SEED), i.e. anywhere in a later clip's decode, compute or write.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prismaudio.cli import main as cli_main
from prismaudio.pipeline import PrismAudioPipeline

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SEED = int(os.environ.get("PRISMAUDIO_FAULT_SEED", "20"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 16-clip corpus (enough that a run is still going when killed, on a quiet machine too) (1.5 s, 48 px) and a tiny model directory."""
    root = tmp_path_factory.mktemp("faults")
    assert cli_main(["synth", "--out", str(root / "corpus"), "--n", "16", "--duration", "1.5", "--size", "48",
                     "--workers", "1", "--quiet"]) == 0
    PrismAudioPipeline.from_preset("tiny", seed=0).save_pretrained(root / "tiny")
    return root / "corpus" / "manifest.jsonl", root / "tiny"


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _kill_after_first(cmd: list[str], out: Path, suffix: str, total: int, rng: random.Random) -> int:
    """Start `cmd`, SIGKILL it a random moment after its first `suffix` output; the outputs it had."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    deadline = time.time() + 300
    while not (out.is_dir() and any(p.suffix == suffix and not p.name.startswith(".") for p in out.iterdir())):
        assert proc.poll() is None, f"the run ended before its first output: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, "no output within 300 s"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.4))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = sum(1 for p in out.iterdir() if p.suffix == suffix and not p.name.startswith("."))
    assert done < total, "the run finished before it was killed; the test proves nothing (raise the clip count)"
    return done


def _resume_and_compare(cmd_for, full: Path, killed: Path, suffix: str, total: int, rng: random.Random) -> None:
    r = subprocess.run(cmd_for(full), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _kill_after_first(cmd_for(killed), killed, suffix, total, rng)
    r = subprocess.run(cmd_for(killed), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _files(full), _files(killed)
    assert sum(1 for n in a if n.endswith(suffix)) == total
    assert sorted(a) == sorted(b), f"different files after resume: {sorted(set(a) ^ set(b))}"  # no temp left
    for name in a:
        assert _content(killed / name) == _content(full / name), f"{name} differs from the uninterrupted run's"


def _content(path: Path):
    """A file's bytes; for safetensors its tensors' bytes and its metadata, since the library writes
    the metadata keys in a per-process hash order (so the bytes of two identical saves differ)."""
    if path.suffix != ".safetensors":
        return path.read_bytes()
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        tensors = {k: (str(t.dtype), tuple(t.shape), t.numpy().tobytes()) for k in f.keys() for t in [f.get_tensor(k)]}
        return tensors, f.metadata()


def test_generate_manifest_kill9_resume_bitwise(setup: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, model = setup

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "prismaudio.cli", "generate", "--manifest", str(manifest), "--split", "all",
                "--manifest-cot", "--model", str(model), "--steps", "2", "--out", str(out), "--quiet"]

    _resume_and_compare(cmd, tmp_path / "full", tmp_path / "killed", ".wav", 16, random.Random(SEED))


def test_extract_kill9_resume_bitwise(setup: tuple[Path, Path], tmp_path: Path) -> None:
    manifest, model = setup

    def cmd(out: Path) -> list[str]:  # one clip per batch: a resumed run's batches equal the full run's
        return [sys.executable, "-m", "prismaudio.cli", "extract", "--manifest", str(manifest), "--model",
                str(model), "--batch-size", "1", "--out", str(out), "--quiet"]

    _resume_and_compare(cmd, tmp_path / "full", tmp_path / "killed", ".safetensors", 16, random.Random(SEED + 1))
