"""Throughput of the procedural corpus generator and a byte-identity check of two runs.

Usage: python benchmarks/bench_synth.py [--n 200] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import filecmp
import tempfile
import time
from pathlib import Path

from prismaudio.procedural.synth import run_synth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [Path(tmp) / "a", Path(tmp) / "b"]
        rates = []
        for d in dirs:
            t0 = time.perf_counter()
            run_synth(d, args.n, args.seed, workers=args.workers, progress=False)
            rates.append(args.n / (time.perf_counter() - t0))
        files = sorted(str(p.relative_to(dirs[0])) for p in dirs[0].rglob("*") if p.is_file())
        _, mismatch, errors = filecmp.cmpfiles(dirs[0], dirs[1], files, shallow=False)
        print(f"synth: {args.n} clips x2, {args.workers} workers: {rates[0]:.1f} / {rates[1]:.1f} clips/s")
        print(f"byte-identical: {not mismatch and not errors} ({len(files)} files compared)")
        if mismatch or errors:
            raise SystemExit(f"runs differ: {(mismatch + errors)[:5]}")


if __name__ == "__main__":
    main()
