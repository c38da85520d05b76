"""The CoT-steering benchmark's rewrite (benchmarks/bench_cot_steer.py): what a user would edit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_cot_steer", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cot_steer.py")
steer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(steer)


def test_every_class_steers_to_another_class_of_its_family() -> None:
    from prismaudio.procedural.synth.vocab import BY_NAME, CLASSES

    for c in CLASSES:
        dst = steer.steer_target(c.name)
        assert dst != c.name and BY_NAME[dst].family == c.family


@pytest.mark.parametrize("src", ["metal", "bell", "engine", "rain"])
def test_rewrite_leaves_no_name_or_timbre_word_of_the_old_class(src: str) -> None:
    from prismaudio.procedural.synth.vocab import BY_NAME

    s = BY_NAME[src]
    dst = BY_NAME[steer.steer_target(src)]
    text = " ".join(f"The {n.upper() if i % 2 else n} sounds {w}." for i, (n, w) in enumerate(zip(s.nouns, s.timbre)))
    out = steer.rewrite_class(text + " Ballroom floor.", src, dst.name)
    low = out.lower()
    for word in (s.label, *s.nouns, *(w for w in s.timbre if w not in dst.timbre)):
        assert f" {word.lower()} " not in f" {low.replace('.', ' ')} ", (word, out)
    assert dst.label in out and "Ballroom floor." in out  # whole words only: "ball" in "Ballroom" stays
