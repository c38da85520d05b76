"""Captions and four-part chain-of-thought text written from the scene graph.

Every sentence has several templates and synonyms, chosen by the clip's own text RNG, so the
corpus does not teach one fixed phrasing. Parts: semantic (what sounds and how they sound),
temporal (when, tied to the visual cue), aesthetic (fidelity, degradation), spatial (side,
distance, movement).
"""

from __future__ import annotations

import numpy as np

from .vocab import BY_NAME

_CUE = {
    "impact": [["hits the floor", "lands on the floor", "touches the ground", "drops onto the floor"],
               ["bounces again", "comes down again", "hits the floor once more", "lands a second time"]],
    "strike": [["is struck and lights up", "flashes as it is hit", "is hit and glows", "lights up when struck"]],
    "start": [["appears", "comes into view", "shows up", "enters the scene"]],
}
_SOUND = {
    "impact": ["a {adj} knock", "a {adj} impact", "a {adj} hit", "a {adj} thump"],
    "strike": ["a {adj} tone", "a {adj} strike", "a {adj} note", "a {adj} ring"],
    "start": ["a {adj} sound", "a {adj} noise", "the {adj} sound", "a {adj} hum"],
}
_ORD = ["first", "second", "third", "fourth", "fifth"]


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def side_of(x: float) -> str:
    return "left" if x < -0.33 else "right" if x > 0.33 else "centre"


def distance_word(d: float) -> str:
    return "close" if d < 1.7 else "at a medium distance" if d < 2.6 else "far away"


def _noun(rng, src) -> str:
    return _pick(rng, BY_NAME[src["class"]].nouns)


def _adj(rng, src, k: int = 2) -> str:
    words = list(BY_NAME[src["class"]].timbre)
    idx = rng.permutation(len(words))[:k]
    return ", ".join(words[i] for i in sorted(idx))


def semantic(scene, rng) -> str:
    parts = []
    for src in scene["sources"]:
        noun, n = _noun(rng, src), len(src["events"])
        fam = src["family"]
        if fam == "impact":
            times = "once" if n == 1 else f"{n} times"
            parts.append(_pick(rng, [
                f"A {noun} falls and hits the floor {times}, making {_adj(rng, src)} impact sounds",
                f"The {noun} drops and strikes the ground {times}; each contact gives {_adj(rng, src)} knocks",
                f"There is a {noun} that lands {times} with {_adj(rng, src)} hits",
            ]))
        elif fam == "tonal":
            times = "once" if n == 1 else f"{n} times"
            parts.append(_pick(rng, [
                f"A {noun} is struck {times}, producing {_adj(rng, src)} tones",
                f"The {noun} rings out {times} with a {_adj(rng, src)} timbre",
                f"Someone hits a {noun} {times}; the sound is {_adj(rng, src)}",
            ]))
        elif fam == "continuous":
            parts.append(_pick(rng, [
                f"A {noun} makes a {_adj(rng, src)} continuous sound whose loudness follows its motion",
                f"The {noun} produces a {_adj(rng, src)} sound that swells when it moves faster",
                f"A {_adj(rng, src, 1)} {noun} sound grows and fades with its speed",
            ]))
        else:
            parts.append(_pick(rng, [
                f"The {noun} creates a {_adj(rng, src)} background texture",
                f"A {_adj(rng, src)} texture of {noun} fills the scene",
                f"There is a steady {_adj(rng, src, 1)} sound of {noun}",
            ]))
    return ". ".join(parts) + "."


def _timeline(scene):
    evs = []
    for src in scene["sources"]:
        for i, ev in enumerate(src["events"]):
            evs.append((ev["frame"], ev, i, src))
    return sorted(evs, key=lambda e: (e[0], e[3]["class"]))


def temporal(scene, rng) -> str:
    out = []
    for j, (_, ev, i, src) in enumerate(_timeline(scene)):
        cue = _pick(rng, _CUE[ev["kind"]][min(i, len(_CUE[ev["kind"]]) - 1)])
        snd = _pick(rng, _SOUND[ev["kind"]]).format(adj=_adj(rng, src, 1))
        noun, t = _noun(rng, src), ev["time"]
        out.append(_pick(rng, [
            f"At {t:.2f} s, when the {noun} {cue}, {snd} is heard",
            f"{snd[0].upper() + snd[1:]} at {t:.2f} s, exactly as the {noun} {cue}",
            f"The {_ORD[min(j, 4)]} event comes at {t:.2f} s: the {noun} {cue} and {snd} follows immediately",
            f"Around frame {ev['frame']} ({t:.2f} s) the {noun} {cue}, synchronised with {snd}",
        ]))
    return ". ".join(out) + "."


def aesthetic(scene, rng) -> str:
    deg = scene["degradation"]
    if deg is None:
        return _pick(rng, [
            "The audio should sound clean and natural, with a believable room reverberation.",
            "High fidelity: no noise or distortion, just the natural sound of the room.",
            "The recording is clear and undistorted, with a natural amount of reverb.",
        ])
    s = deg["severity"]
    level = "slight" if s < 0.4 else "noticeable" if s < 0.7 else "strong"
    what = {"noise": _pick(rng, ["background hiss", "broadband noise", "static noise"]),
            "clipping": _pick(rng, ["clipping distortion", "harsh clipping", "overdriven, clipped peaks"]),
            "bandlimit": _pick(rng, ["a muffled, band-limited sound", "missing high frequencies", "a dull, low-passed tone"])}[deg["kind"]]
    return _pick(rng, [
        f"The quality is degraded by {level} {what} (severity {s:.2f}).",
        f"Fidelity suffers from {what}, {level} in degree (severity {s:.2f}).",
        f"There is {level} {what} in the recording, severity {s:.2f}, so it sounds less natural.",
    ])


def spatial(scene, rng) -> str:
    out = []
    for src in scene["sources"]:
        x = np.asarray(src["positions"]["x"], float)[np.asarray(src["positions"]["visible"], bool)]
        noun, dist = _noun(rng, src), distance_word(src["distance"])
        if src["moving"] and side_of(x[0]) != side_of(x[-1]):
            a, b = side_of(x[0]), side_of(x[-1])
            out.append(_pick(rng, [f"The {noun} moves from the {a} toward the {b}, {dist}",
                                   f"The {noun}, {dist}, travels from {a} to {b}",
                                   f"Moving {a} to {b}, the {noun} is {dist}"]))
        else:
            side = side_of(float(x.mean()))
            where = "in the centre" if side == "centre" else f"on the {side}"
            move = " and moves around" if src["moving"] else ""
            out.append(_pick(rng, [f"The {noun} is {where}, {dist}{move}",
                                   f"{where.capitalize()} and {dist}, the {noun} is heard{move}",
                                   f"The sound of the {noun} comes from {'the centre' if side == 'centre' else 'the ' + side}, {dist}{move}"]))
    return ". ".join(out) + "."


def caption(scene, rng) -> str:
    bits = []
    for src in scene["sources"]:
        n = len(src["events"])
        verb = {"impact": "bounces" if n > 1 else "hits the floor", "tonal": "rings" if n == 1 else f"rings {n} times",
                "continuous": "moves", "texture": "falls" if src["class"] == "rain" else "blows"}[src["family"]]
        x = np.asarray(src["positions"]["x"], float)[np.asarray(src["positions"]["visible"], bool)]
        side = side_of(float(x.mean()))
        bits.append(f"a {_noun(rng, src)} {verb} {'in the centre' if side == 'centre' else 'on the ' + side}")
    text = " while ".join(bits) if len(bits) == 2 else ", ".join(bits)
    return text[0].upper() + text[1:] + "."


def write_cot(scene, rng) -> tuple[str, dict, str]:
    """(caption, {semantic, temporal, aesthetic, spatial}, monolithic paragraph)."""
    parts = {"semantic": semantic(scene, rng), "temporal": temporal(scene, rng),
             "aesthetic": aesthetic(scene, rng), "spatial": spatial(scene, rng)}
    cap = caption(scene, rng)
    intro = _pick(rng, ["Let me think about the audio for this video.", "To generate the audio,",
                        "Thinking about what should be heard:", "Considering the scene,"])
    mono = " ".join([intro, parts["semantic"], parts["temporal"], parts["spatial"], parts["aesthetic"]])
    return cap, parts, mono
