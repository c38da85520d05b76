"""Spectrogram PNG of a stereo waveform (one panel per channel), for listening-free inspection."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch
from torch import Tensor

from .files import atomic_path


def log_spectrogram(audio: Tensor, sample_rate: int, n_fft: int = 1024) -> Tensor:
    """[C, S] -> [C, F, T] log-magnitude (dB, floor -100) with a Hann window and 75 % overlap."""
    n_fft = min(n_fft, max(16, audio.shape[-1]))
    spec = torch.stft(
        audio.float(), n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True
    )
    return 20 * torch.log10(spec.abs().clamp_min(1e-5))


_TIME = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*(?:s|sec|secs|seconds?)\b")


def event_times(text: str, duration: float | None = None) -> list[float]:
    """The times a CoT's Temporal part names ("impacts at 0.84 s and 2.1 s"), sorted, unique,
    within [0, duration] when given: the marks drawn on the spectrogram."""
    times = sorted({round(float(m.group(1)), 3) for m in _TIME.finditer(text or "")})
    return [t for t in times if duration is None or 0 <= t <= duration]


def save_spectrogram_png(path: str | os.PathLike, audio: Tensor, sample_rate: int, title: str = "",
                         events: Sequence[float] = ()) -> None:
    """Write the PNG atomically (temp file + rename): one panel per channel, a dB colour bar (0 dB =
    the loudest bin), and a dashed line at each of `events` (the CoT's event times, so a
    reader sees whether the sound lands where the plan said)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = log_spectrogram(audio, sample_rate).numpy()
    top = float(spec.max())
    dur = audio.shape[-1] / sample_rate
    fig, axes = plt.subplots(len(spec), 1, figsize=(8.6, 2.2 * len(spec)), squeeze=False, sharex=True)
    names = ["left", "right"] if len(spec) == 2 else [f"ch{i}" for i in range(len(spec))]
    image = None
    for ax, s, name in zip(axes[:, 0], spec, names):
        image = ax.imshow(s - top, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0,
                          extent=(0, dur, 0, sample_rate / 2000))
        ax.set_ylabel(f"{name}\nkHz")
        for t in events:
            if 0 <= t <= dur:
                ax.axvline(t, color="cyan", linestyle="--", linewidth=0.9, alpha=0.8)
    axes[-1, 0].set_xlabel("time (s)" + ("; dashed: the CoT's event times" if len(events) else ""))
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=list(axes[:, 0]), label="dB (re. max)", pad=0.01, fraction=0.04)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)
