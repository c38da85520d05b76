"""The decomposed chain-of-thought (PrismAudio §3.2): four modules, their renderings and parsing.

Module order is the paper's: "The four specialized CoTs are then concatenated in this order"
(Semantic, Temporal, Aesthetic, Spatial) to form the multi-dimensional CoT text condition.
(The procedural corpus's `cot_monolithic` writes spatial before aesthetic; `render("monolithic")`
follows the paper.)

Renderings (`CoT.render`), one per Table 3 variant:

* ``"multi"`` (MultiCoT): one labelled line per module, ``Semantic: ...`` etc. Lossless: inside a
  part ``\\`` becomes ``\\\\``, a newline ``\\n`` and a carriage return ``\\r``, so the text is
  always exactly four lines and a part may contain anything (colons, the word "Temporal:", JSON).
  Ordinary text (no backslash, no newline) is left untouched, so the text encoder sees plain prose.
* ``"monolithic"`` (ThinkSound-style Monolithic CoT): the four parts as one paragraph.
* ``"random"`` (Random CoT, "structurally corrupted monolithic reasoning" that "contains the correct
  concepts but in a jumbled, illogical structure"): every sentence of every module, shuffled across
  modules by `random.Random(seed)` into one paragraph. Deterministic for a seed.
* ``"none"`` (Baseline, No CoT): the empty string.

Limits (why: a runaway LLM answer must not blow up memory or the text encoder, and a CoT far beyond
what any text encoder reads is a bug upstream): each module is cut to `MAX_MODULE_CHARS` and the
whole CoT to `MAX_TOTAL_CHARS` (longest modules cut first), at a word boundary, with a warning.
The text encoders cut again at their own token limit (MiniLM: 256 wordpieces, the documented
limit the `mini` model was trained with); `PrismAudioPipeline.generate` keeps that cut (same
features) and says in one warning what it drops (`Encoder.truncation`: tokens kept / total, the
first dropped words). `truncate_for_encoder` cuts at a word boundary beforehand instead.
"""

from __future__ import annotations

import json
import math
import random
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ..errors import PrismAudioError

MODULES: tuple[str, ...] = ("semantic", "temporal", "aesthetic", "spatial")
STYLES: tuple[str, ...] = ("multi", "monolithic", "random", "none")
MAX_MODULE_CHARS = 8_000
MAX_TOTAL_CHARS = 20_000
MAX_PARSE_CHARS = 1_000_000  # text beyond this is not even scanned (a broken upstream, not a CoT)
MINILM_TOKEN_LIMIT = 256  # all-MiniLM-L6-v2's max_length, [CLS] and [SEP] included

_LABEL = {m: m.capitalize() for m in MODULES}


class CoTParseError(PrismAudioError):
    """No CoT, or an incomplete one, in a text; `missing` lists absent modules, `partial` the found ones."""

    def __init__(self, message: str, missing: tuple[str, ...] = MODULES, partial: Mapping[str, str] | None = None):
        super().__init__(message)
        self.missing = tuple(missing)
        self.partial = dict(partial or {})


# ------------------------------------------------------------------------------ truncation


def truncate_words(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at the last whitespace when one is near the end."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = max(cut.rfind(" "), cut.rfind("\n"), cut.rfind("\t"))
    if space >= limit * 0.8:  # a word boundary close to the limit; else a hard cut (one giant "word")
        cut = cut[:space]
    return cut.rstrip()


def _water_level(lengths: list[int], total: int) -> int:
    """Largest cap c with sum(min(len, c)) <= total: cuts the longest modules first."""
    lo, hi = 0, max(lengths)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(min(n, mid) for n in lengths) <= total:
            lo = mid
        else:
            hi = mid - 1
    return lo


def truncate_for_encoder(text: str, tokenizer_limit: int = MINILM_TOKEN_LIMIT, tokenizer: Any = None) -> str:
    """`text` cut at a word boundary so it fits a text encoder's `tokenizer_limit` tokens, with a warning.

    The encoders truncate silently (MiniLM at 256 wordpieces including [CLS]/[SEP]); cutting here
    makes the loss visible and keeps whole words. With a Hugging Face fast `tokenizer` the count is
    exact (two tokens are reserved for special tokens); without one it is a conservative estimate:
    every word or punctuation mark counts as ceil(len / 4) tokens, which over-counts English
    wordpieces, so the result never exceeds the real limit by much and usually fits.
    """
    if tokenizer_limit < 3:
        raise PrismAudioError(f"tokenizer_limit must be at least 3, got {tokenizer_limit}")
    budget = tokenizer_limit - 2
    end: int | None = None
    if tokenizer is not None:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        if len(offsets) > budget:
            end = int(offsets[budget - 1][1])
    else:
        used = 0
        for m in re.finditer(r"\w+|[^\w\s]", text):
            used += max(1, math.ceil(len(m.group()) / 4))
            if used > budget:
                end = m.start()
                break
    if end is None:
        return text
    cut = text[:end]
    if end < len(text) and not text[end].isspace() and re.search(r"\s", cut):  # mid-word: drop the partial word
        cut = re.sub(r"\S+$", "", cut)
    cut = cut.rstrip()
    warnings.warn(f"CoT text truncated from {len(text)} to {len(cut)} characters to fit {tokenizer_limit} "
                  "encoder tokens", stacklevel=2)
    return cut


# ------------------------------------------------------------------------------ escaping


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), s, flags=re.DOTALL)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of prose: split after . ! ? followed by space and a capital/digit ("1.20 s" stays whole)."""
    text = " ".join(text.split())
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s] if text else []


# ------------------------------------------------------------------------------ the CoT


@dataclass(frozen=True)
class CoT:
    """Four-module CoT (Semantic, Temporal, Aesthetic, Spatial); parts may be "" but not all of them.

    Construction validates types and Unicode and applies the size limits (module docstring).
    """

    semantic: str
    temporal: str
    aesthetic: str
    spatial: str

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, str):
                raise PrismAudioError(f"CoT.{f.name} must be a string, got {type(v).__name__}")
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise PrismAudioError(f"CoT.{f.name} is not valid Unicode (lone surrogate at {e.start})") from None
        if not any(getattr(self, m).strip() for m in MODULES):
            raise PrismAudioError("empty CoT: all four modules (semantic, temporal, aesthetic, spatial) are blank")
        parts = {m: getattr(self, m) for m in MODULES}
        for m, v in parts.items():
            if len(v) > MAX_MODULE_CHARS:
                warnings.warn(f"CoT {m} module has {len(v)} characters; truncated to {MAX_MODULE_CHARS}", stacklevel=3)
                parts[m] = truncate_words(v, MAX_MODULE_CHARS)
        total = sum(len(v) for v in parts.values())
        if total > MAX_TOTAL_CHARS:
            cap = _water_level([len(v) for v in parts.values()], MAX_TOTAL_CHARS)
            warnings.warn(f"CoT has {total} characters; modules truncated to {cap} each (limit "
                          f"{MAX_TOTAL_CHARS} in total)", stacklevel=3)
            parts = {m: truncate_words(v, cap) for m, v in parts.items()}
        for m, v in parts.items():
            if v is not getattr(self, m):
                object.__setattr__(self, m, v)

    # -------------------------------------------------------------- renderings

    def render(self, style: str = "multi", seed: int = 0) -> str:
        """The text condition for one Table 3 variant: "multi", "monolithic", "random" or "none"."""
        if style == "multi":
            return "\n".join(f"{_LABEL[m]}: {_escape(getattr(self, m))}" for m in MODULES)
        if style == "monolithic":
            return " ".join(" ".join(getattr(self, m).split()) for m in MODULES if getattr(self, m).strip())
        if style == "random":
            sentences = [s for m in MODULES for s in split_sentences(getattr(self, m))]
            random.Random(seed).shuffle(sentences)
            return " ".join(sentences)
        if style == "none":
            return ""
        raise PrismAudioError(f"unknown CoT style {style!r}; expected one of {', '.join(STYLES)}")

    def to_dict(self) -> dict[str, str]:
        return {m: getattr(self, m) for m in MODULES}

    def to_json(self) -> str:
        """Lossless JSON object with the four keys (UTF-8 text, not ASCII-escaped)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    # -------------------------------------------------------------- constructors

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], allow_missing: bool = False) -> CoT:
        """From a {module: text} mapping (keys as in `MODULES`); extra keys are ignored."""
        if not isinstance(d, Mapping):
            raise PrismAudioError(f"a CoT must be a mapping of {', '.join(MODULES)} to text, got {type(d).__name__}")
        missing = tuple(m for m in MODULES if not (isinstance(d.get(m), str) and d[m].strip()))
        bad = [m for m in MODULES if m in d and not isinstance(d[m], str)]
        if bad:
            raise PrismAudioError(f"CoT module(s) {', '.join(bad)} must be strings")
        if missing and not allow_missing:
            raise CoTParseError(f"CoT is missing module(s): {', '.join(missing)}", missing,
                                {m: d[m] for m in MODULES if m not in missing})
        return cls(**{m: d.get(m) or "" for m in MODULES})

    @classmethod
    def from_corpus(cls, row_cot: Mapping[str, Any]) -> CoT:
        """From a manifest row's `cot` dict (or the row itself, which holds it under "cot")."""
        if isinstance(row_cot, Mapping) and "cot" in row_cot and isinstance(row_cot["cot"], Mapping):
            row_cot = row_cot["cot"]
        return cls.from_dict(row_cot)

    @classmethod
    def from_bytes(cls, data: bytes, allow_missing: bool = False, errors: str = "strict") -> CoT:
        """Parse UTF-8 bytes (a BOM is skipped). `errors="strict"` raises a PrismAudioError naming the
        first bad byte's offset; `errors="replace"` puts U+FFFD in place of undecodable bytes."""
        if errors not in ("strict", "replace"):
            raise PrismAudioError(f"errors must be 'strict' or 'replace', got {errors!r}")
        try:
            text = bytes(data).decode("utf-8-sig", errors=errors)
        except UnicodeDecodeError as e:
            raise PrismAudioError(f"CoT text is not valid UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} "
                                  "(decode with errors='replace' to substitute U+FFFD)") from None
        return cls.parse(text, allow_missing=allow_missing)

    @classmethod
    def parse(cls, text: str, allow_missing: bool = False) -> CoT:
        """A CoT from labelled text, Markdown headings, JSON (maybe nested under "cot", in prose or a
        code fence), or `render("multi")` output (decoded losslessly).

        Raises `CoTParseError` (a PrismAudioError) when no module is found, or when some are missing
        and `allow_missing` is False (then `.missing` names them); with `allow_missing=True` absent
        modules are "". Text in the exact `render("multi")` shape (four lines, canonical labels in
        order) is read with its backslash escapes decoded; any other labelled text is taken as is.
        """
        if not isinstance(text, str):
            raise PrismAudioError(f"CoT.parse expects a string, got {type(text).__name__}")
        if len(text) > MAX_PARSE_CHARS:
            warnings.warn(f"CoT text of {len(text)} characters; only the first {MAX_PARSE_CHARS} are parsed", stacklevel=2)
            text = text[:MAX_PARSE_CHARS]
        found = _parse_any(text)
        if not found:
            preview = " ".join(text.split())[:120]
            raise CoTParseError("could not parse a CoT: no semantic/temporal/aesthetic/spatial sections found "
                                f"(expected labelled text, Markdown headings or JSON); text starts: {preview!r}")
        return cls.from_dict(found, allow_missing=allow_missing)


# ------------------------------------------------------------------------------ parsing


def _canonical(text: str) -> dict[str, str] | None:
    """`render("multi")` output (optionally with a final newline / CRLF line ends) -> exact parts."""
    body = text.removesuffix("\n")
    lines = body.split("\n")
    if len(lines) != 4:
        return None
    lines = [ln.removesuffix("\r") for ln in lines]
    out = {}
    for m, ln in zip(MODULES, lines, strict=True):
        head = f"{_LABEL[m]}: "
        if not (ln.startswith(head) or ln == head.rstrip()):
            return None
        out[m] = _unescape(ln[len(head):])
    return out


_KEY = re.compile(r"^\W*(semantic|temporal|aesthetic|spatial)(?:[\s_-]*(?:cot|dimension|module|reasoning|analysis))?\W*$", re.IGNORECASE)


def _from_json_obj(obj: Any, depth: int = 0) -> dict[str, str]:
    """Module texts from a decoded JSON value: keys matched case-insensitively ("Semantic CoT",
    "semantic_cot"...), values strings or lists of strings; nested objects ("cot": {...}) searched."""
    if depth > 4:
        return {}
    if isinstance(obj, list):
        for item in obj:
            got = _from_json_obj(item, depth + 1)
            if got:
                return got
        return {}
    if not isinstance(obj, dict):
        return {}
    out: dict[str, str] = {}
    for k, v in obj.items():
        km = _KEY.match(str(k))
        if not km:
            continue
        if isinstance(v, str):
            out[km.group(1).lower()] = v
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            out[km.group(1).lower()] = " ".join(x.strip() for x in v)
    if out:
        return out
    for k in sorted(obj, key=lambda k: str(k).lower() != "cot"):  # "cot" first, then any nested object
        got = _from_json_obj(obj[k], depth + 1)
        if got:
            return got
    return {}


def _json_candidates(text: str) -> dict[str, str]:
    """The first JSON object in `text` (whole text, or embedded in prose) that holds any module."""
    stripped = text.strip()
    try:
        got = _from_json_obj(json.loads(stripped))
        if got:
            return got
    except ValueError:
        pass
    dec = json.JSONDecoder()
    tries = 0
    for m in re.finditer(r"[{\[]", text):
        tries += 1
        if tries > 200:  # pathological input: many braces, none a CoT
            break
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except ValueError:
            continue
        got = _from_json_obj(obj)
        if got:
            return got
    return {}


_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:(?:[-*+•]|\d{1,2}[.)])[ \t]+)?(?:\*\*|__)?[ \t]*"
    r"(semantic|temporal|aesthetic|spatial)"
    r"(?:[ \t]+(?:cot|dimension|module|reasoning|analysis))?[ \t]*(?:\*\*|__)?[ \t]*"
    r"(?:(?::|：|[ \t]+-[ \t])(?:[ \t]*(?:\*\*|__))?|(?=\r?$))",
    re.IGNORECASE | re.MULTILINE,
)
_INLINE = re.compile(
    r"(?:\*\*|__)[ \t]*(semantic|temporal|aesthetic|spatial)(?:[ \t]+(?:cot|dimension|module|reasoning|analysis))?"
    r"[ \t]*(?::[ \t]*(?:\*\*|__)|(?:\*\*|__)[ \t]*:)",
    re.IGNORECASE,
)


def _sections(text: str, pattern: re.Pattern[str]) -> dict[str, str]:
    marks = list(pattern.finditer(text))
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[m.end():end].strip()
        key = m.group(1).lower()
        if body:
            out[key] = f"{out[key]}\n{body}" if key in out else body
        else:
            out.setdefault(key, "")
    return {k: v for k, v in out.items() if v}


def _labelled(text: str) -> dict[str, str]:
    text = text.replace("\r\n", "\n")
    got = _sections(text, _HEADER)
    inline = _sections(text, _INLINE)
    return inline if len(inline) > len(got) else got


def _parse_any(text: str) -> dict[str, str]:
    got = _canonical(text)
    if got is not None and any(v.strip() for v in got.values()):
        return got
    fences = re.findall(r"```[^\n`]*\n(.*?)```", text, flags=re.DOTALL)
    best: dict[str, str] = {}
    for candidate in [*fences, text]:
        for method in (_json_candidates, _labelled):
            got = method(candidate)
            if len(got) == len(MODULES):
                return got
            if len(got) > len(best):
                best = got
    return best
