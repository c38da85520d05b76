"""Decomposed chain-of-thought (PrismAudio §3.2): the four-module `CoT`, its Table 3 renderings,
parsing, the monolithic -> modules decoupler (Appendix D.2) and the video -> CoT planners
(the "offline" planner is a plugin of `prismaudio.procedural`, imported when first asked for)."""

from .core import (
    MAX_MODULE_CHARS,
    MAX_TOTAL_CHARS,
    MINILM_TOKEN_LIMIT,
    MODULES,
    STYLES,
    CoT,
    CoTParseError,
    split_sentences,
    truncate_for_encoder,
)
from .decouple import (
    DECOUPLE_PROMPT,
    assign_sentences,
    classify_sentence,
    decouple,
    rule_based_decouple,
)
from .planners import (
    COT_PROMPT,
    ChatClient,
    LocalVLMPlanner,
    OpenAIPlanner,
    Planner,
    build_planner,
    get_planner,
    list_planners,
    register_planner,
)

__all__ = [
    "COT_PROMPT", "DECOUPLE_PROMPT", "MAX_MODULE_CHARS", "MAX_TOTAL_CHARS", "MINILM_TOKEN_LIMIT", "MODULES", "STYLES",
    "ChatClient", "CoT", "CoTParseError", "LocalVLMPlanner", "OpenAIPlanner", "Planner", "assign_sentences",
    "build_planner", "classify_sentence", "decouple", "get_planner", "list_planners", "register_planner",
    "rule_based_decouple", "split_sentences", "truncate_for_encoder",
]
