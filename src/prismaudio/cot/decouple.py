"""Monolithic CoT -> four decoupled modules (PrismAudio Appendix D.2, "Multi-dimensional CoT
Transformation").

The paper turns Gemini's CoT captions into the four modules with a text LLM and the prompt below.
`decouple` does that with any OpenAI-compatible chat client, and repairs what the LLM gets wrong:
modules it leaves out are filled from a rule-based decoupler, which is also the whole answer when no
client is given or the LLM call fails. The rules assign each sentence by cues (timestamps and
sequencing words -> temporal; sides, distance, motion -> spatial; quality, reverb, noise ->
aesthetic; everything else -> semantic), so they work offline and deterministically.
"""

from __future__ import annotations

import re
import warnings
from typing import Protocol

from ..errors import PrismAudioError
from .core import MODULES, CoT, CoTParseError, split_sentences

# Appendix D.2, verbatim (the paper's Markdown bold kept as **...**).
DECOUPLE_PROMPT = (
    "Transform the following Chain-of-Thought description into four separate, decoupled CoT modules. "
    "Extract and reorganize the content into: "
    "**Semantic CoT:** Extract only the semantic content (audio events, objects, actions, characteristics). "
    "Format as a focused reasoning text for semantic audio generation. "
    "**Temporal CoT:** Extract only the temporal content (sequencing, timing, onset, duration, temporal "
    "relationships). Format as a focused reasoning text for temporal synchronization. "
    "**Aesthetic CoT:** Extract only the aesthetic content (naturalness, fidelity, quality, perceptual aspects). "
    "Format as a focused reasoning text for aesthetic audio generation. "
    "**Spatial CoT:** Extract only the spatial content (directional placement, left-right distribution, "
    "distance, movement). Format as a focused reasoning text for spatial audio generation. "
    "Ensure each CoT module is self-contained and focused solely on its respective dimension, without "
    "cross-dimensional references."
)

# Our addition (not in the paper): a machine-readable answer format, so parsing is unambiguous.
JSON_ANSWER_INSTRUCTION = (
    'Answer with only a JSON object with exactly the string keys "semantic", "temporal", "aesthetic" and '
    '"spatial", one per module.'
)


class ChatLike(Protocol):
    """Anything with `chat(messages) -> str` (OpenAI chat-completions messages); see planners.ChatClient."""

    def chat(self, messages: list[dict]) -> str: ...


# ------------------------------------------------------------------------------ rule-based

_PREAMBLE = re.compile(
    r"^\s*(?:let me think[^.:]*[.:]|thinking about what[^.:]*[.:]|to generate the audio,|considering the scene,"
    r"|(?:ok(?:ay)?|sure|alright)[,.!]\s*)\s*",
    re.IGNORECASE,
)
_TIMESTAMP = re.compile(r"\b\d+(?:\.\d+)?\s*(?:s|sec|secs|seconds?|ms|milliseconds?)\b|\bframe\s+\d+|\b\d+:\d{2}\b", re.IGNORECASE)
_CUES: dict[str, list[tuple[re.Pattern[str], float]]] = {
    "temporal": [
        (_TIMESTAMP, 3.0),
        (re.compile(r"\b(?:onset|synchroni[sz]ed?|simultaneous(?:ly)?|in sync|immediately|afterwards|"
                    r"(?:first|second|third|fourth|fifth|last|final|next) (?:event|sound|hit|impact)|duration|"
                    r"seconds?|beginning|at the start|at the end|sequence|followed by|precedes)\b", re.IGNORECASE), 1.5),
        (re.compile(r"\b(?:when|after|before|then|until|while|during|once again|later|earlier)\b", re.IGNORECASE), 0.5),
    ],
    "spatial": [
        (re.compile(r"\b(?:left|right|cent(?:re|er)|middle|stereo|panned|pan(?:ning)?|direction(?:al)?)\b", re.IGNORECASE), 2.0),
        (re.compile(r"\b(?:close|near(?:by)?|far(?: away)?|distance|distant|foreground|nearer|farther|further|"
                    r"approach(?:es|ing)?|recedes?|toward|towards)\b", re.IGNORECASE), 1.5),
        (re.compile(r"\b(?:moves?|moving|travels?|passes)\b", re.IGNORECASE), 0.5),
    ],
    "aesthetic": [
        (re.compile(r"\b(?:quality|fidelity|reverb\w*|noise|noisy|hiss|static|clean|(?:un)?distort\w*|clipp\w*|"
                    r"muffled|band-?limited|low-passed|natural(?:ness)?|realistic|richness|recording|severity|"
                    r"degraded|artifacts?|echo|acoustics?|mix|balanced)\b", re.IGNORECASE), 2.0),
        # also timbre words ("a clear, crisp ring" is semantic): alone they only tie the semantic prior
        (re.compile(r"\b(?:clear|crisp|bright|rich)\b", re.IGNORECASE), 1.0),
    ],
}
_SEMANTIC_PRIOR = 1.0  # semantic is the default: another module must beat this to take a sentence


def classify_sentence(sentence: str) -> str:
    """The module whose cues score highest in `sentence` (semantic when none beats the prior)."""
    scores = {"semantic": _SEMANTIC_PRIOR}
    for module, cues in _CUES.items():
        scores[module] = sum(w for pat, w in cues if pat.search(sentence))
    return max(MODULES, key=lambda m: (scores.get(m, 0.0), m == "semantic"))


def assign_sentences(monolithic: str) -> list[tuple[str, str]]:
    """(sentence, module) for every sentence of `monolithic`, a leading preamble removed."""
    text = _PREAMBLE.sub("", " ".join(monolithic.split()), count=1)
    text = re.sub(r"^[a-z]", lambda m: m.group().upper(), text)
    return [(s, classify_sentence(s)) for s in split_sentences(text)]


def rule_based_decouple(monolithic: str) -> CoT:
    """Sentences grouped by `classify_sentence`, in their original order; modules without any are ""."""
    if not isinstance(monolithic, str) or not monolithic.strip():
        raise PrismAudioError("cannot decouple an empty CoT")
    parts: dict[str, list[str]] = {m: [] for m in MODULES}
    for sentence, module in assign_sentences(monolithic):
        parts[module].append(sentence)
    return CoT(**{m: " ".join(v) for m, v in parts.items()})


# ------------------------------------------------------------------------------ LLM


def decouple(monolithic: str, client: ChatLike | None = None) -> CoT:
    """Four modules from a monolithic CoT: the paper's LLM prompt via `client`, repaired per module by
    the rule-based decoupler; rule-based only when `client` is None or the LLM fails (with a warning)."""
    if not isinstance(monolithic, str) or not monolithic.strip():
        raise PrismAudioError("cannot decouple an empty CoT")
    fallback = rule_based_decouple(monolithic)
    if client is None:
        return fallback
    messages = [{"role": "user", "content": f"{DECOUPLE_PROMPT}\n\n{JSON_ANSWER_INSTRUCTION}\n\n{monolithic}"}]
    try:
        answer = client.chat(messages)
        found = CoT.parse(answer, allow_missing=True)
    except CoTParseError as e:
        warnings.warn(f"LLM decoupling answer unusable ({e}); using the rule-based decoupler", stacklevel=2)
        return fallback
    except PrismAudioError as e:
        warnings.warn(f"LLM decoupling failed ({e}); using the rule-based decoupler", stacklevel=2)
        return fallback
    missing = [m for m in MODULES if not getattr(found, m).strip()]
    if missing:
        warnings.warn(f"LLM decoupling left out {', '.join(missing)}; filled by the rule-based decoupler", stacklevel=2)
    return CoT(**{m: getattr(fallback if m in missing else found, m) for m in MODULES})
