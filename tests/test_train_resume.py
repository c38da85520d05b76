"""A run killed with SIGKILL after its first checkpoint and resumed ends bit-identical (CPU) to an
uninterrupted run: weights, EMA, optimizer state and the exported model, tensor by tensor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "train" / "tiny_smoke.yaml"
MAX_STEPS = 6  # tiny_smoke.yaml


def _cmd(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "prismaudio.cli", "train", str(CONFIG), "--out", str(out),
            "--set", f"data.manifest={corpus / 'manifest.jsonl'}", "--set", f"data.cache_dir={corpus / 'cache'}",
            *extra]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every run; two runs share 2 cores


def _wait(proc: subprocess.Popen, done, what: str) -> None:
    deadline = time.time() + 300
    while not done():
        assert proc.poll() is None or done(), f"run ended before {what}: {proc.stderr.read().decode()[-2000:]}"
        assert time.time() < deadline, f"no {what} within 300 s"
        time.sleep(0.01)


def _tensors(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    last = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    files = {f"ckpt/{n}": last / n for n in ("model.safetensors", "ema.safetensors", "optimizer.safetensors",
                                             "rng.safetensors")}  # every saved state file, RNGs included
    files.update({f"final/{p.name}": p for p in (run / "final").glob("*.safetensors")})
    return {k: load_file(p) for k, p in files.items()}


def test_sigkill_then_resume_is_bit_identical(corpus: Path, tmp_path: Path) -> None:
    full, killed = tmp_path / "full", tmp_path / "killed"
    # the uninterrupted run decodes the corpus into the data cache; the other run starts once it exists
    ref = subprocess.Popen(_cmd(corpus, full, "--quiet"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    _wait(ref, lambda: any((corpus / "cache").glob("flow-*.safetensors")), "the data cache")

    proc = subprocess.Popen(_cmd(corpus, killed, "--quiet"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    latest = killed / "checkpoints" / "latest"
    _wait(proc, latest.exists, "the first checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    step = int(latest.read_text().strip().split("-")[1])
    assert step < MAX_STEPS, "the run finished before it could be killed; the test proves nothing"
    assert not (killed / "final").exists()

    resumed = subprocess.run(_cmd(corpus, killed, "--resume"), check=False, capture_output=True, text=True,
                             timeout=600, env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"(step {step}, " in resumed.stdout and "resumed from" in resumed.stdout  # not a fresh start
    assert ref.wait(timeout=600) == 0, ref.stderr.read().decode()[-3000:]
    ref.stderr.close()
    a, b = _tensors(full), _tensors(killed)
    meta = [json.loads((r / "checkpoints" / (r / "checkpoints" / "latest").read_text().strip() / "state.json").read_text())
            for r in (full, killed)]
    for key in ("step", "epoch", "position", "scheduler", "python_rng", "numpy_rng", "optimizer"):
        assert meta[0][key] == meta[1][key], f"state.json {key} differs after resume"
    assert a.keys() == b.keys() and len(a["ckpt/model.safetensors"]) > 10
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), f"{name}:{k} differs after resume"
    # the run actually trained: live weights moved away from the EMA
    assert any(not torch.equal(a["ckpt/model.safetensors"][k], a["ckpt/ema.safetensors"][k].to(v.dtype))
               for k, v in a["ckpt/model.safetensors"].items() if v.is_floating_point())
