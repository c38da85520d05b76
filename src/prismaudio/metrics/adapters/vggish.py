"""`vggish`: Google's VGGish audio embedder (AudioSet), torchvggish layout, from a LOCAL weight file.

Front end (the reference `vggish_input` / `mel_features` recipe, re-implemented in torch): mono 16 kHz,
magnitude STFT with a 400-sample (25 ms) periodic Hann window, hop 160 (10 ms), FFT 512, no centring;
64 HTK-mel bins 125..7500 Hz (triangles in mel space, DC bin zeroed, no area normalisation);
``log(mel + 0.01)``; non-overlapping patches of 96 frames (0.96 s). A clip shorter than one patch is
zero-padded to one patch (the reference would return no patch at all).

Network (torchvggish `VGG`, keys verified against its source): ``features.{0,3,6,8,11,13}`` 3x3 convs
64-128-256-256-512-512 with ReLU and 2x2 max-pools after convs 1, 2, 4 and 6; the [N, 512, 6, 4] map is
permuted to NHWC before flattening (TF ordering), then ``embeddings.{0,2,4}`` Linear 12288-4096-4096-128.

Per-clip embedding = mean over the clip's patch embeddings ([B, 128]); the FD of av-benchmark-style toolkits
is computed on such per-clip vectors (assumed: not verified offline which pooling av-benchmark uses). The
final ReLU of torchvggish is dropped by default (``final_relu=False``), as the audio-generation evaluation
wrappers do (they replace ``embeddings[5]`` with Identity); the PCA/quantisation post-processing is not applied.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import PrismAudioError
from ..backends import register_backend
from ._common import load_state_dict, load_strict, mono_at, require_path

SAMPLE_RATE = 16_000
_EXPECTED = "the torchvggish weights (vggish-10086976.pth or a .safetensors with features.* / embeddings.* keys)"


def _hz_to_mel(f: Tensor) -> Tensor:
    return 1127.0 * torch.log1p(f / 700.0)


def vggish_mel_matrix(n_fft: int = 512, n_mels: int = 64, sr: int = SAMPLE_RATE, fmin: float = 125.0,
                      fmax: float = 7500.0) -> Tensor:
    """[n_fft//2+1, n_mels] weights of the VGGish `spectrogram_to_mel_matrix` (HTK mel, DC bin zeroed)."""
    bins = n_fft // 2 + 1
    spec_mel = _hz_to_mel(torch.linspace(0.0, sr / 2, bins, dtype=torch.float64))
    edges = torch.linspace(float(_hz_to_mel(torch.tensor(fmin))), float(_hz_to_mel(torch.tensor(fmax))), n_mels + 2,
                           dtype=torch.float64)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (spec_mel[:, None] - lo) / (mid - lo)
    down = (hi - spec_mel[:, None]) / (hi - mid)
    w = torch.clamp(torch.minimum(up, down), min=0.0)
    w[0] = 0.0
    return w.float()


class VGGishNet(nn.Module):
    """The VGGish network with torchvggish parameter names."""

    def __init__(self, final_relu: bool = False, channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512),
                 hidden: int = 4096):
        super().__init__()
        c = list(channels)
        layers: list[nn.Module] = []
        cin = 1
        for i, cout in enumerate(c):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
            if i in (0, 1, 3, 5):
                layers.append(nn.MaxPool2d(2, 2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(c[-1] * 4 * 6, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                                        nn.ReLU(inplace=True), nn.Linear(hidden, 128),
                                        nn.ReLU(inplace=True) if final_relu else nn.Identity())

    def forward(self, patches: Tensor) -> Tensor:
        """[N, 1, 96, 64] log-mel patches -> [N, 128]."""
        x = self.features(patches)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # NHWC flatten, as the TF graph
        return self.embeddings(x)


def log_mel_patches(wav: Tensor, mel: Tensor) -> tuple[Tensor, int]:
    """Mono 16 kHz [B, S] -> ([B * P, 1, 96, 64] patches, P patches per clip)."""
    win, hop, n_fft = 400, 160, 512
    if wav.shape[-1] < win:
        wav = nn.functional.pad(wav, (0, win - wav.shape[-1]))
    frames = wav.unfold(-1, win, hop)  # [B, F, 400]
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * torch.arange(win, device=wav.device, dtype=wav.dtype) / win)
    spec = torch.fft.rfft(frames * window, n=n_fft).abs()
    logmel = torch.log(spec @ mel.to(spec) + 0.01)  # [B, F, 64]
    f = logmel.shape[1]
    if f < 96:
        logmel = nn.functional.pad(logmel, (0, 0, 0, 96 - f))
    p = logmel.shape[1] // 96
    patches = logmel[:, : p * 96].reshape(logmel.shape[0] * p, 1, 96, 64)
    return patches, p


@register_backend("vggish", "embedder")
class VGGish:
    """`embed(audio [B, C, S] | [C, S], sr) -> [B, 128]`: mean VGGish embedding over the clip's 0.96 s patches."""

    role = "embedder"
    dim = 128

    def __init__(self, path: str | None = None, final_relu: bool = False, device: str = "cpu",
                 channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512), hidden: int = 4096):
        """``channels`` / ``hidden`` exist only to build tiny test models; the release uses the defaults."""
        if len(channels) != 6:
            raise PrismAudioError("backend 'vggish': channels must list the 6 conv widths")
        self.channels, self.hidden = tuple(int(c) for c in channels), int(hidden)
        self.path = require_path(path, "vggish", _EXPECTED)
        self.final_relu = bool(final_relu)
        self.device = torch.device(device)
        self._net: VGGishNet | None = None
        self._mel = vggish_mel_matrix()

    def _load(self) -> VGGishNet:
        if self._net is None:
            net = VGGishNet(self.final_relu, self.channels, self.hidden)
            sd = load_state_dict(self.path, "vggish", _EXPECTED)
            sd = {k: v for k, v in sd.items() if not k.startswith("pproc.")}  # PCA params (unused)
            load_strict(net, sd, "vggish", self.path)
            self._net = net.eval().requires_grad_(False).to(self.device)
        return self._net

    @torch.no_grad()
    def embed(self, audio: Tensor, sr: int) -> Tensor:
        net = self._load()
        wav = mono_at(audio, sr, SAMPLE_RATE, "vggish").to(self.device)
        patches, p = log_mel_patches(wav, self._mel)
        emb = net(patches).view(wav.shape[0], p, -1)
        return emb.mean(1).cpu()
