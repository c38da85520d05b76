"""The AudioCanvas class vocabulary: one entry per sound class, with its look and its sound family.

`family` decides how a class behaves: "impact" objects fall and hit the floor (the sound starts at
the contact frame), "tonal" objects flash when struck, "continuous" objects appear and move (their
loudness follows their speed), "texture" regions appear and keep sounding. Looks (shape, colour,
texture) are distinct per class so a video encoder can tell the classes apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SoundClass:
    name: str
    label: str  # short human name used in captions
    family: str  # impact | tonal | continuous | texture
    shape: str  # circle | square | triangle | diamond | rect | ellipse | cloud | leaf
    color: tuple[float, float, float]
    texture: str  # solid | stripes | checker | dots | rings
    nouns: tuple[str, ...]  # synonyms for the CoT
    timbre: tuple[str, ...]  # adjectives describing the sound


CLASSES: tuple[SoundClass, ...] = (
    SoundClass("wood", "wooden block", "impact", "square", (0.62, 0.40, 0.18), "stripes",
               ("wooden block", "block of wood", "wood cube"), ("dry", "short", "hollow", "woody")),
    SoundClass("metal", "metal ball", "impact", "circle", (0.78, 0.80, 0.84), "rings",
               ("metal ball", "steel ball", "metallic sphere"), ("bright", "ringing", "metallic", "clanging")),
    SoundClass("glass", "glass marble", "impact", "circle", (0.35, 0.90, 0.88), "dots",
               ("glass marble", "glass bead", "small glass ball"), ("high", "glassy", "crisp", "tinkling")),
    SoundClass("rubber", "rubber ball", "impact", "circle", (0.92, 0.20, 0.22), "solid",
               ("rubber ball", "red ball", "bouncy ball"), ("dull", "low", "soft", "thudding")),
    SoundClass("bell", "bell", "tonal", "triangle", (0.95, 0.82, 0.20), "solid",
               ("bell", "brass bell", "small bell"), ("sustained", "clear", "harmonic", "ringing")),
    SoundClass("drum", "drum", "tonal", "square", (0.95, 0.55, 0.10), "rings",
               ("drum", "tom drum", "hand drum"), ("punchy", "deep", "booming", "short")),
    SoundClass("xylophone", "xylophone bar", "tonal", "rect", (0.70, 0.35, 0.90), "stripes",
               ("xylophone bar", "wooden bar", "marimba key"), ("pure", "woody", "bright", "plucked")),
    SoundClass("gong", "gong", "tonal", "circle", (0.85, 0.60, 0.30), "rings",
               ("gong", "large gong", "bronze gong"), ("shimmering", "long", "low", "swelling")),
    SoundClass("engine", "engine", "continuous", "rect", (0.20, 0.75, 0.30), "checker",
               ("engine", "motor", "small vehicle"), ("rumbling", "droning", "buzzing", "low")),
    SoundClass("whoosh", "whoosh", "continuous", "ellipse", (0.30, 0.50, 0.98), "stripes",
               ("flying disc", "fast object", "swooshing shape"), ("airy", "rushing", "swishing", "breathy")),
    SoundClass("rain", "rain", "texture", "cloud", (0.70, 0.78, 0.92), "dots",
               ("rain", "rain shower", "downpour"), ("pattering", "hissing", "steady", "granular")),
    SoundClass("wind", "wind", "texture", "leaf", (0.60, 0.92, 0.55), "stripes",
               ("wind", "gust of wind", "breeze"), ("blowing", "whistling", "gusty", "soft")),
)

BY_NAME = {c.name: c for c in CLASSES}
FAMILIES = ("impact", "tonal", "continuous", "texture")
CLASS_NAMES = tuple(c.name for c in CLASSES)  # the order of every class head trained on this world
