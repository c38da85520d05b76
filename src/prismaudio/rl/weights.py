"""Content-aware reward weights λ_k per prompt (eq. 5 with prompt-dependent λ).

Why: the official mix (0.6 sync + 1.0 CLAP + 0.4 ITD + 0.1 aesthetic) is one trade-off for every
clip, but a scene with one static, centred source carries almost no spatial signal, while a
drum roll of many onsets is where synchrony errors are audible. The rule moves weight towards the
dimensions a scene actually exercises, then rescales so Σ_k λ_k equals the base sum (the reward
scale, and hence a global-std advantage, stays comparable across prompts):

* temporal ×(1 + 0.5·min(n_onsets - 1, 4)/4)      — up to ×1.5 for ≥ 5 onsets;
* spatial  ×(1 + 0.5·min(|x̄|/0.5, 1) + 0.5·moving) — up to ×2 for a lateral, moving source;
* semantic, aesthetic and any other reward ×1.

Evidence, in order of trust: the synthetic scene graph (`events` per source, the mean visible
horizontal position x ∈ [-1, 1], `moving`), else the temporal / spatial CoT text (counted onset
cues; "left"/"right" and motion words). Without either, the base weights are returned unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["SceneCues", "content_weights", "scene_cues"]

_ONSET = re.compile(r"\b(hit|hits|strike|strikes|struck|impact|impacts|knock|knocks|clap|claps|step|steps|"
                    r"bang|bangs|onset|onsets|beat|beats|then|again|each|twice|times|repeated(?:ly)?)\b", re.IGNORECASE)
_LATERAL = re.compile(r"\b(left|right|lateral|side)\b", re.IGNORECASE)
_MOVING = re.compile(r"\b(mov\w*|pan\w*|across|travel\w*|passes|passing|approach\w*|recede\w*|sweep\w*)\b", re.IGNORECASE)


@dataclass
class SceneCues:
    onsets: int  # number of sound onsets (>= 1 when known)
    lateral: float  # |mean horizontal position| in [0, 1] (0 = centred)
    moving: bool


def _from_scene(scene: Mapping[str, Any]) -> SceneCues | None:
    sources = [s for s in scene.get("sources", []) if isinstance(s, Mapping)]
    if not sources:
        return None
    onsets = sum(len(s.get("events") or []) for s in sources)
    lateral, moving = 0.0, False
    for s in sources:
        pos = s.get("positions") or {}
        xs = [x for x, v in zip(pos.get("x", []), pos.get("visible", [1] * len(pos.get("x", [])))) if v]
        if xs:
            lateral = max(lateral, abs(sum(xs) / len(xs)))
        moving = moving or bool(s.get("moving"))
    return SceneCues(max(1, onsets), min(1.0, lateral), moving)


def _cot_part(cot: Any, key: str) -> str:
    if cot is None:
        return ""
    if isinstance(cot, str):
        return cot
    if isinstance(cot, Mapping):
        return str(cot.get(key) or "")
    return str(getattr(cot, key, "") or "")


def _from_cot(cot: Any) -> SceneCues | None:
    temporal, spatial = _cot_part(cot, "temporal"), _cot_part(cot, "spatial")
    if not (temporal or spatial):
        return None
    onsets = 1 + len(_ONSET.findall(temporal)) + len(re.findall(r"\b\d+(?:\.\d+)?\s*s\b", temporal))
    lateral = 1.0 if _LATERAL.search(spatial) else 0.0
    return SceneCues(onsets, lateral, bool(_MOVING.search(spatial)))


def scene_cues(scene: Mapping[str, Any] | None = None, cot: Any = None) -> SceneCues | None:
    """The cues of one prompt: from its scene graph when it has sources, else from its CoT."""
    if isinstance(scene, Mapping):
        cues = _from_scene(scene)
        if cues is not None:
            return cues
    return _from_cot(cot)


def content_weights(base: Mapping[str, float], scene: Mapping[str, Any] | None = None,
                    cot: Any = None) -> dict[str, float]:
    """λ_k for one prompt: the base weights reshaped by the rule above, same total."""
    out = {k: float(v) for k, v in base.items()}
    cues = scene_cues(scene, cot)
    if cues is None:
        return out
    mult = {"temporal": 1 + 0.5 * min(cues.onsets - 1, 4) / 4,
            "spatial": 1 + 0.5 * min(cues.lateral / 0.5, 1.0) + 0.5 * float(cues.moving)}
    raw = {k: v * mult.get(k, 1.0) for k, v in out.items()}
    s_base, s_raw = sum(out.values()), sum(raw.values())
    if s_raw == 0 or s_base == 0:
        return out
    return {k: v * s_base / s_raw for k, v in raw.items()}
