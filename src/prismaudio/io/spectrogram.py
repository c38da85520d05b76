"""Spectrogram PNG of a stereo waveform (one panel per channel), for listening-free inspection."""

from __future__ import annotations

import os

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


def save_spectrogram_png(path: str | os.PathLike, audio: Tensor, sample_rate: int, title: str = "") -> None:
    """Write the PNG atomically (temp file + rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = log_spectrogram(audio, sample_rate).numpy()
    dur = audio.shape[-1] / sample_rate
    fig, axes = plt.subplots(len(spec), 1, figsize=(8, 2.2 * len(spec)), squeeze=False, sharex=True)
    names = ["left", "right"] if len(spec) == 2 else [f"ch{i}" for i in range(len(spec))]
    for ax, s, name in zip(axes[:, 0], spec, names):
        ax.imshow(s, origin="lower", aspect="auto", cmap="magma", vmin=s.max() - 80, vmax=s.max(),
                  extent=(0, dur, 0, sample_rate / 2000))
        ax.set_ylabel(f"{name}\nkHz")
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=80)
    finally:
        plt.close(fig)
