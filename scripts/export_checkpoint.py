"""Export a GRPO checkpoint's EMA weights as a model directory (what the run's `final/` holds at its end).

    python scripts/export_checkpoint.py runs/grpo_default/multi/checkpoints/step-00000020 \
        --base runs/grpo_default/base --out runs/grpo_default/multi_short/final

Why: the ablations of `make grpo-default` run fewer iterations than the multi-reward run; that run's
own checkpoint at the same iteration (same seed, same prompts, only the reward mix differs) is their
like-for-like reference, without paying for a second multi-reward run.
"""

from __future__ import annotations

import argparse
import sys

from prismaudio.errors import PrismAudioError
from prismaudio.pipeline import PrismAudioPipeline
from prismaudio.harness import checkpoint as ckpt


def export(checkpoint: str, base: str, out: str) -> None:
    pipe = PrismAudioPipeline.from_pretrained(base)
    ckpt.check_compatible(ckpt.read_meta(checkpoint), pipe.config.to_dict(), "grpo", checkpoint)
    st = ckpt.load_state(checkpoint)
    sd = pipe.dit.state_dict()
    missing = [k for k in st.model if k not in sd]
    if missing:
        raise PrismAudioError(f"checkpoint {checkpoint} does not fit {base}: unknown weight {missing[0]}")
    weights = {k: st.ema.get(k, st.model.get(k, v)).to(v.dtype) for k, v in sd.items()}  # EMA, as final/ is
    pipe.dit.load_state_dict(weights, strict=True)
    pipe.save_pretrained(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a checkpoint directory (…/checkpoints/step-XXXXXXXX)")
    ap.add_argument("--base", required=True, help="the model the run started from (config, VAE, encoders)")
    ap.add_argument("--out", required=True, help="output model directory (replaced atomically)")
    args = ap.parse_args()
    try:
        export(args.checkpoint, args.base, args.out)
    except PrismAudioError as e:
        print(f"export_checkpoint: error: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
