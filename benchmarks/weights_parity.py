"""Fingerprint the weights that the vae, foundation and grpo stages produce on a tiny config.

A refactor of the training code must change no result: run this before the change with
`--write before.json`, after it with `--check before.json`; every stage's exported weights and
final checkpoint must hash the same (CPU, one thread, same seeds).

    python benchmarks/weights_parity.py --work /tmp/parity --write runs/parity_before.json
    python benchmarks/weights_parity.py --work /tmp/parity --check runs/parity_before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "configs" / "train" / "tiny_smoke.yaml"
GRPO = REPO / "configs" / "grpo" / "tiny_smoke.yaml"


def tensors_hash(path: Path) -> str:
    """Hash of a safetensors file's tensors (names, dtypes, shapes and bytes), not of its header."""
    h = hashlib.sha256()
    for k, v in sorted(load_file(path).items()):
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}".encode())
        h.update(v.contiguous().reshape(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def run_hashes(run: Path) -> dict[str, str]:
    out = {f"final/{p.name}": tensors_hash(p) for p in sorted((run / "final").glob("*.safetensors"))}
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        out[f"ckpt/{name}"] = tensors_hash(latest / name)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", type=Path)
    g.add_argument("--check", type=Path)
    a = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    corpus = a.work / "corpus"
    if not (corpus / "manifest.jsonl").exists():
        subprocess.run([sys.executable, "-m", "prismaudio.cli", "synth", "--out", str(corpus), "--n", "8",
                        "--duration", "2", "--size", "48", "--workers", "1", "--quiet"], check=True, env=env)
    common = ["--set", f"data.manifest={corpus / 'manifest.jsonl'}"]
    runs = {
        "vae": ["train", str(TRAIN), "--set", "stage=vae", "--set", "max_steps=4", "--set", "vae.crop_seconds=0.5"],
        "foundation": ["train", str(TRAIN)],
        "grpo": ["grpo", str(GRPO), "--set", "iterations=3"],
    }
    result: dict[str, dict[str, str]] = {}
    for name, argv in runs.items():
        out = a.work / f"run-{name}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        subprocess.run([sys.executable, "-m", "prismaudio.cli", *argv, *common, "--out", str(out), "--quiet"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        result[name] = run_hashes(out)
        print(name, json.dumps(result[name]))
    if a.write:
        a.write.parent.mkdir(parents=True, exist_ok=True)
        a.write.write_text(json.dumps(result, indent=1) + "\n")
        return 0
    before = json.loads(a.check.read_text())
    diff = [f"{s}:{k}" for s in before for k in before[s] if result.get(s, {}).get(k) != before[s][k]]
    print("identical" if not diff else f"DIFFERENT: {', '.join(diff)}")
    return 0 if not diff else 1


if __name__ == "__main__":
    sys.exit(main())
