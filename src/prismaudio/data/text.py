"""The text condition of a clip, rendered one way for training, extraction and generation alike.

A model trained on features from `prismaudio extract` must see exactly the text that the training
stages feed from the manifest and that `prismaudio generate` feeds from a plan, or the CoT it was
trained on is not the CoT it is given. Every path therefore renders through `condition_text`, and
the four-part CoT through `CoT.render` (`cot/core.py`).
"""

from __future__ import annotations

import hashlib

from ..errors import PrismAudioError
from .manifest import COT_KEYS, ManifestRow

STYLES = ("multi", "monolithic", "random", "caption", "none")


def clip_seed(seed: int, clip_id: str) -> int:
    """A per-clip seed independent of batching and order (latent noise, the random-CoT shuffle)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{clip_id}".encode()).digest()[:8], "little") & (2**63 - 1)


def _cot_parts(row: ManifestRow) -> dict[str, str]:
    if not row.cot or not any((row.cot.get(k) or "").strip() for k in COT_KEYS):
        raise PrismAudioError(f"clip {row.id!r} has no CoT")
    return {k: row.cot.get(k) or "" for k in COT_KEYS}


def condition_text(row: ManifestRow, style: str, seed: int = 0) -> str:
    """One clip's text in `style`; a clip that lacks what the style needs raises `PrismAudioError`.

    "multi": the four labelled parts in the paper's order (semantic, temporal, aesthetic, spatial);
    "monolithic": the row's `cot_monolithic`; "random": the sentences of all four parts shuffled
    across parts, deterministic per (seed, clip); "caption": the caption; "none": the empty text.
    """
    if style == "none":
        return ""
    if style == "caption":
        return row.caption.strip()
    if style == "monolithic":
        if row.cot_monolithic and row.cot_monolithic.strip():
            return row.cot_monolithic.strip()
        raise PrismAudioError(f"clip {row.id!r} has no cot_monolithic")
    if style not in ("multi", "random"):
        raise PrismAudioError(f"unknown text style {style!r} (choose from {', '.join(STYLES)})")
    from ..cot.core import CoT

    cot = CoT(**_cot_parts(row))
    return cot.render("random", seed=clip_seed(seed, row.id)) if style == "random" else cot.render("multi")


def stage_style(stage: str, variant: str) -> str:
    """The text style a training stage conditions on: the caption (foundation) or the CoT variant."""
    return variant if stage == "cot" else "caption"
