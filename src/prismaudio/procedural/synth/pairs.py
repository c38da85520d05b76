"""Edit training pairs (issue 18): a corpus clip re-rendered with one source left out.

`render_pairs(scene, seed, index)` replays `sounds.render_audio` on the clip's own audio RNG
(`scene.clip_rngs(seed, index)[1]`, consumed in the same order: room IR, every source's dry
signal, the degradation noise), so the full mix equals the corpus WAV to 16-bit precision, and
builds each "mix without source k" from the same parts with the FULL mix's normalisation scale
and degradation noise. Target and context of an add / remove pair therefore differ by exactly
that source: outside `SourcePair.support` (where source k's direct sound or reverb can be
non-zero) the two mixes are bit-identical.

Two deliberate differences from the writer, both below 16-bit precision: the band-limit
degradation is a direct (local) box convolution instead of a running cumsum, so a change in one
region cannot leak rounding noise into the rest of the clip; and the per-source reverb is
subtracted from the full reverb, which is zeroed outside the source's support.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from ...errors import PrismAudioError
from .scene import ITD_MAX_S, clip_rngs
from .sounds import room_ir, source_dry, spatialize, wet_level
from .writer import quantize16

AUDIBLE = 10 ** (-60 / 20)  # |contribution| above -60 dBFS marks where a source is heard


@dataclass
class SourcePair:
    """The mix without one source, and where that source sounds."""

    index: int  # k: position in scene["sources"]
    label: str  # the source's class label
    audio: np.ndarray  # [2, n] float32, 16-bit exact: the mix without source k
    support: np.ndarray  # [n] bool: where source k's contribution can be non-zero (exact)
    region: tuple[int, int]  # [start, end) samples where source k is audible (> -60 dBFS), inside support


def clip_index(clip_id: str) -> int:
    """The corpus index of a clip id `clip_0000012` (the writer's `scene.clip_id`)."""
    head, _, num = clip_id.rpartition("_")
    if head != "clip" or not num.isdigit():
        raise PrismAudioError(f"{clip_id!r} is not a procedural corpus clip id (clip_NNNNNNN)")
    return int(num)


def _box(mix: np.ndarray, length: int) -> np.ndarray:
    """Causal mean over the last `length` samples (zeros before the start), per channel, local."""
    k = np.ones(length) / length
    return np.stack([np.convolve(ch, k)[: mix.shape[1]] for ch in mix])


def _degrade(mix: np.ndarray, deg: dict | None, noise: np.ndarray | None) -> np.ndarray:
    """`sounds.degrade` with the noise drawn once (scaled by the full mix's RMS) and a local box filter."""
    if deg is None:
        return mix
    s = deg["severity"]
    if deg["kind"] == "noise":
        assert noise is not None
        return mix + noise
    if deg["kind"] == "clipping":
        return np.clip(mix * (1 + 6 * s), -0.7, 0.7)
    length = 2 + int(round(10 * s))
    return _box(_box(mix, length), length)


def _spread(deg: dict | None) -> int:
    """Samples a change can travel forward through the degradation (two causal box filters)."""
    if deg is None or deg["kind"] != "bandlimit":
        return 0
    return 2 * (2 + int(round(10 * deg["severity"])))


def render_pairs(scene: dict, seed: int, index: int, exclude: list[int] | None = None) -> tuple[np.ndarray, list[SourcePair]]:
    """(full mix [2, n] float32 16-bit exact, one `SourcePair` per source in `exclude`, default all)."""
    sr, fps = scene["sample_rate"], scene["fps"]
    sources = scene["sources"]
    n = int(round(scene["duration"] * sr))
    rng = clip_rngs(seed, index)[1]
    ir = room_ir(scene["room"]["rt60"], sr, rng)
    drys = [source_dry(s, n, sr, fps, rng) for s in sources]
    stems = [spatialize(d, s, sr, fps) for d, s in zip(drys, sources)]
    sends = [d * wet_level(s) for d, s in zip(drys, sources)]
    nfft = sfft.next_fast_len(n + ir.shape[1] - 1, real=True)
    ir_f = sfft.rfft(ir, nfft)

    def _wet(send: np.ndarray) -> np.ndarray:
        return sfft.irfft(sfft.rfft(send, nfft)[None] * ir_f, nfft)[:, :n]

    stem_sum = np.sum(stems, axis=0)
    wet = _wet(np.sum(sends, axis=0))
    mix = stem_sum + wet
    scale = 0.7 / (np.abs(mix).max() + 1e-9)
    deg = scene["degradation"]
    noise = None
    if deg is not None and deg["kind"] == "noise":
        rms = np.sqrt(np.mean((mix * scale) ** 2)) + 1e-9
        noise = rng.standard_normal(mix.shape) * rms * 10 ** (-(30 - 25 * deg["severity"]) / 20)

    def _finish(m: np.ndarray) -> np.ndarray:
        return quantize16(np.clip(_degrade(m * scale, deg, noise), -1, 1).astype(np.float32))

    full = _finish(mix)
    margin = int(np.ceil(ITD_MAX_S * sr)) + 2
    pairs = []
    for k in range(len(sources)) if exclude is None else exclude:
        if not 0 <= k < len(sources):
            raise PrismAudioError(f"the scene has {len(sources)} source(s), no source {k}")
        nz = np.flatnonzero(drys[k])
        support = np.zeros(n, bool)
        if len(nz):
            support[nz[0] : min(n, nz[-1] + ir.shape[1] + margin + _spread(deg))] = True
        contrib = stems[k] + _wet(sends[k])
        contrib[:, ~support] = 0.0  # mathematically zero there; FFT rounding is not
        rest = np.where(support, mix - contrib, mix)
        audible = np.flatnonzero(np.abs(contrib * scale).max(0) > AUDIBLE)
        region = (int(audible[0]), int(audible[-1]) + 1) if len(audible) else (0, 0)
        pairs.append(SourcePair(k, str(sources[k]["label"]), _finish(rest), support, region))
    return full, pairs
