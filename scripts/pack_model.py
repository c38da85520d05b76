"""Pack a trained model directory for shipping: float16 safetensors (half the bytes), same config.

    python scripts/pack_model.py runs/cot_mini/final src/prismaudio/assets/prismaudio-mini

`PrismAudioPipeline.from_pretrained` casts the weights back to float32, so the packed model runs
exactly like the float16-rounded original. The MiniLM text encoder is not copied (it is loaded
from its package).
"""

from __future__ import annotations

import argparse
import sys

import torch

from prismaudio.errors import PrismAudioError
from prismaudio.pipeline import PrismAudioPipeline


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="trained model directory (a stage's final/)")
    ap.add_argument("dst", help="output model directory (replaced atomically)")
    args = ap.parse_args()
    try:
        PrismAudioPipeline.from_pretrained(args.src).save_pretrained(args.dst, dtype=torch.float16)
    except PrismAudioError as e:
        print(f"pack_model: error: {e}", file=sys.stderr)
        return 2
    print(args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
