"""Two CPU processes (gloo DDP through accelerate, launched by torchrun) stay in lock-step.

Each rank draws different batches and different noise (its own generator), so without gradient
all-reduce the weights would drift apart after one step; the per-rank hashes gathered into
`train_summary.json` must therefore agree only if accelerate's DDP really synchronised them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path



REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "train" / "tiny_smoke.yaml"


def test_two_cpu_processes_keep_identical_weights(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "prismaudio.cli", "train", str(CONFIG), "--out", str(out), "--quiet",
           "--set", f"data.manifest={corpus / 'manifest.jsonl'}", "--set", f"data.cache_dir={corpus / 'cache'}",
           "--set", "max_steps=3", "--set", "checkpoint_every=3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["step"] == 3
    hashes = summary["rank_weight_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1] and summary["ranks_in_sync"]
    # both generators were checkpointed (each rank draws its own noise)
    from safetensors.torch import load_file

    rng = load_file(out / "checkpoints" / "step-00000003" / "rng.safetensors")
    assert {"train.rank0", "train.rank1"} <= set(rng)
    assert not bool((rng["train.rank0"] == rng["train.rank1"]).all())
