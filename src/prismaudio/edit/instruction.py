"""Instruction -> operation + object, and the four CoT modules rewritten for the edit's target
(ThinkSound stage 3: "the MLLM translates these natural language instructions into precise audio
processing operations through CoT reasoning").

Offline and deterministic: an instruction ("add a metal clang on the left", "remove the rain")
names one operation by its verb and one object of the vocabulary by a class name, label or noun.
The target CoT is the plan of the existing video with that object added / removed / in focus:
`remove` drops every sentence about the object from each module (the training pairs' remove
target is the CoT of the scene without that source); `add` appends the instruction's own sentences,
sorted into modules by the rule-based decoupler, and a corpus-style sentence (what it sounds like,
when, where) to each module that neither the plan nor the instruction already says it in (the
video shows the object, so the offline planner's plan often names it already).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..cot import MODULES, CoT, rule_based_decouple, split_sentences
from ..errors import PrismAudioError
from .roi import Region

OPS: tuple[str, ...] = ("inpaint", "extend", "add", "remove", "refine")
# verb phrases -> operation (longest first when matching; "take away" before "take")
VERBS: dict[str, tuple[str, ...]] = {
    "add": ("add", "adds", "adding", "insert", "inserts", "put in", "include", "introduce", "overlay", "mix in"),
    "remove": ("remove", "removes", "removing", "delete", "erase", "take away", "take out", "get rid of",
               "eliminate", "mute", "silence", "drop", "cut out", "strip"),
    "inpaint": ("inpaint", "regenerate", "redo", "re-generate", "fill in", "fill", "repair", "fix", "replace"),
    "extend": ("extend", "continue", "lengthen", "prolong", "carry on"),
    "refine": ("refine", "focus on", "enhance", "emphasise", "emphasize", "sharpen", "improve"),
}


@dataclass(frozen=True)
class ObjectClass:
    """One nameable sound source: what an instruction may call it and how the CoT describes it."""

    name: str
    label: str
    nouns: tuple[str, ...]
    timbre: tuple[str, ...]
    family: str = ""

    def words(self) -> tuple[str, ...]:
        """Every phrase that names this object, longest first."""
        return tuple(sorted({self.name, self.label, *self.nouns}, key=lambda w: (-len(w), w)))


@dataclass(frozen=True)
class Vocabulary:
    classes: tuple[ObjectClass, ...]

    def get(self, name: str) -> ObjectClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise PrismAudioError(f"unknown object class {name!r} (known: {', '.join(c.name for c in self.classes)})")

    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)


def default_vocabulary() -> Vocabulary:
    """The procedural world's sound classes (`procedural/synth/vocab.py`), found by module name."""
    from .world import VOCAB_MODULE, world_module

    vocab = world_module(VOCAB_MODULE)
    return Vocabulary(tuple(ObjectClass(c.name, c.label, tuple(c.nouns), tuple(c.timbre), c.family)
                            for c in vocab.CLASSES))


@dataclass(frozen=True)
class Instruction:
    """A parsed instruction: the operation, the object it names (None for inpaint / extend when it
    names none) and the text itself (its descriptive sentences enter the CoT)."""

    op: str
    object: ObjectClass | None
    text: str


def _phrase(p: str) -> re.Pattern[str]:
    words = r"\s+".join(re.escape(w) for w in p.split())
    return re.compile(rf"(?<![\w-]){words}(?![\w-])", re.IGNORECASE)


def find_op(text: str) -> str | None:
    """The operation whose verb comes first in `text` (None when it names none)."""
    hits = []
    for op, verbs in VERBS.items():
        for v in verbs:
            m = _phrase(v).search(text)
            if m:
                hits.append((m.start(), -len(v), op))
    return min(hits)[2] if hits else None


def find_objects(text: str, vocab: Vocabulary) -> list[ObjectClass]:
    """The vocabulary's objects named in `text`, in order of appearance (each once). A phrase
    claimed by a longer name ("glass marble" vs "marble") is not counted twice."""
    spans: list[tuple[int, int, ObjectClass]] = []
    for cls in vocab.classes:
        for w in cls.words():
            for m in _phrase(w).finditer(text):
                spans.append((m.start(), m.end(), cls))
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    taken: list[tuple[int, int]] = []
    out: list[ObjectClass] = []
    for a, b, cls in spans:
        if any(a < tb and ta < b for ta, tb in taken):
            continue
        taken.append((a, b))
        if cls not in out:
            out.append(cls)
    return out


def parse_instruction(text: str, vocab: Vocabulary, op: str | None = None) -> Instruction:
    """`text` -> (operation, object). `op` (the --op flag), when given, must agree with the verb;
    add / remove / refine need exactly one known object. One line on anything else."""
    if not isinstance(text, str) or not text.strip():
        raise PrismAudioError("--instruction is empty")
    said = find_op(text)
    if said is None and op is None:
        raise PrismAudioError(f"the instruction {text.strip()!r} names no known operation "
                              f"({', '.join(OPS)}: e.g. 'add a metal clang', 'remove the rain')")
    if said is not None and op is not None and said != op:
        raise PrismAudioError(f"the instruction says {said} but --op is {op}")
    which = op or said
    assert which is not None
    objects = find_objects(text, vocab)
    if which in ("add", "remove", "refine"):
        if not objects:
            raise PrismAudioError(f"the instruction {text.strip()!r} names no known object to {which} "
                                  f"(known: {', '.join(vocab.names())})")
        if len(objects) > 1:
            raise PrismAudioError(f"the instruction names {len(objects)} objects ({', '.join(o.name for o in objects)}); "
                                  f"{which} one at a time")
    return Instruction(which, objects[0] if objects else None, " ".join(text.split()))


# ------------------------------------------------------------------------------------ the target CoT
def mentions(sentence: str, cls: ObjectClass) -> bool:
    return any(_phrase(w).search(sentence) for w in cls.words())


def _side_words(x: float) -> str:
    """x in [-1, 1] -> the corpus's side words (`procedural/synth/cot.side_of`'s thresholds)."""
    return "on the left" if x < -0.33 else "on the right" if x > 0.33 else "in the centre"


def _drop(text: str, cls: ObjectClass) -> str:
    return " ".join(s for s in split_sentences(text) if not mentions(s, cls))


def _join(*parts: str) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


def _description(text: str, verbs_of: str) -> str:
    """The instruction without its leading verb, as a sentence ('add a metal clang' -> 'A metal clang.')."""
    body = text.strip()
    for v in sorted(VERBS[verbs_of], key=len, reverse=True):
        verb = r"\s+".join(map(re.escape, v.split()))
        m = re.match(r"\s*(?:please\s+)?" + verb + r"\b\s*", body, re.IGNORECASE)
        if m:
            body = body[m.end():]
            break
    body = body.strip().rstrip(".!?")
    if not body:
        return ""
    return body[0].upper() + body[1:] + "."


def object_sentences(cls: ObjectClass, region: Region | None, side: float | None) -> dict[str, str]:
    """Corpus-style sentences about `cls` for the semantic / temporal / spatial modules."""
    noun = cls.nouns[0] if cls.nouns else cls.label
    timbre = ", ".join(cls.timbre[:2]) if cls.timbre else "clear"
    out = {"semantic": f"A {noun} makes {timbre} sounds."}
    if region is not None:
        out["temporal"] = f"Between {region.start:.2f} s and {region.end:.2f} s, the {noun} is heard as it appears in the video."
    if side is not None:
        out["spatial"] = f"The {noun} is {_side_words(side)}."
    return out


def target_cot(base: CoT | None, instruction: Instruction, region: Region | None = None,
               side: float | None = None) -> CoT:
    """The four modules for the edit's target. `base` is the plan of the existing video (None: no
    plan, the target is built from the instruction alone); `side` the object's x in [-1, 1] when a
    box / click locates it."""
    cls, op = instruction.object, instruction.op
    if base is None:
        base_parts = {m: "" for m in MODULES}
    else:
        base_parts = base.to_dict()
    if op == "refine" and cls is None:  # a box alone: the plan, with the sound in focus located
        if side is None:
            return base if base is not None else CoT("", "", "", "The sound in focus is in the centre.")
        focus = f"The sound in focus is {_side_words(side)}."
        return CoT(base_parts["semantic"], base_parts["temporal"], base_parts["aesthetic"],
                   _join(base_parts["spatial"], focus))
    if op in ("inpaint", "extend") or cls is None:
        if base is None:
            desc = _description(instruction.text, op)
            if not desc:
                raise PrismAudioError(f"nothing to condition on: the instruction {instruction.text!r} describes no sound")
            return rule_based_decouple(desc)
        return base
    if op == "remove":
        parts = {m: _drop(base_parts[m], cls) for m in MODULES}
        if not any(parts.values()):
            parts["semantic"] = "Only the room's quiet background is heard."
        return CoT(**parts)
    own = object_sentences(cls, region, side)
    desc = _description(instruction.text, op)
    from_text = rule_based_decouple(desc).to_dict() if desc else {m: "" for m in MODULES}
    if op == "add":
        parts = {}
        for m in MODULES:
            add = from_text[m]
            if m in own and not mentions(add, cls) and not mentions(base_parts[m], cls):  # the plan may see it
                add = _join(add, own[m])
            parts[m] = _join(base_parts[m], add)
        return CoT(**parts)
    # refine: the object in focus; what the plan says about it, else its own sentences
    parts = {}
    for m in MODULES:
        about = " ".join(s for s in split_sentences(base_parts[m]) if mentions(s, cls))
        if m == "aesthetic":
            about = base_parts[m]
        parts[m] = _join(about or own.get(m, ""), from_text[m] if not mentions(about, cls) else "")
    return CoT(**parts)
