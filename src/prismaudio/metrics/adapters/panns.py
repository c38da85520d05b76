"""`panns` (embedder) / `panns_classifier` (classifier): PANNs Cnn14 16 kHz (AudioSet), from a LOCAL file.

The release file `Cnn14_16k_mAP=0.438.pth` (qiuqiangkong/audioset_tagging_cnn) is a torch checkpoint
``{'model': state_dict}``; it carries its own front end, so the log-mel used here is the one in the file:

* ``spectrogram_extractor.stft.conv_real.weight`` / ``conv_imag.weight`` [257, 1, 512] (torchlibrosa STFT as
  a strided Conv1d: periodic Hann x DFT, n_fft 512, hop 160, centred with reflect padding); power = re^2 + im^2;
* ``logmel_extractor.melW`` [257, 64] (Slaney mel 50..8000 Hz); ``10 log10(max(mel, 1e-10))`` (ref 1, no top_db);
* ``bn0`` (BatchNorm over the 64 mel bins), six ``conv_block{i}`` (two bias-free 3x3 convs, each with
  BatchNorm and ReLU; 2x2 average pooling after blocks 1-5, none after 6) of widths 64..2048, mean over
  frequency, max + mean over time, ``fc1`` (2048 -> 2048, ReLU) and ``fc_audioset`` (2048 -> 527).

``embed`` returns the 2048-d ``fc1`` output (PANNs' ``embedding``, used for FD-PANNs); ``logits`` the 527
pre-sigmoid ``fc_audioset`` outputs, which `prismaudio evaluate` turns into softmax posteriors for KL-PANNs
(evaluation_protocols.md: av-benchmark's KL uses softmax posteriors); ``posteriors`` PANNs' own sigmoid
``clipwise_output``. Eval mode: dropout and SpecAugment are off. The whole clip is one input (global
pooling, as PANNs' inference); a clip shorter than the 32 frames five poolings need (0.31 s) is
zero-padded to that length (documented deviation; PANNs would fail).

No upstream fixture exists for PANNs: parameter names, shapes and the forward order follow the source
text (read, not copied); equality with upstream outputs is by construction, NOT measured here. The
tests use random weights in the release key layout.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import PrismAudioError
from ..backends import register_backend
from ._common import load_state_dict, load_strict, mono_at, require_path

SAMPLE_RATE = 16_000
N_FFT, HOP, N_MELS, FMIN, FMAX = 512, 160, 64, 50.0, 8000.0
WIDTHS = (64, 128, 256, 512, 1024, 2048)
_MIN_FRAMES = 32  # five 2x2 poolings
_EXPECTED = "the PANNs Cnn14 16 kHz checkpoint (Cnn14_16k_mAP=0.438.pth, {'model': state_dict}) or a .safetensors"


def _slaney_mel(hz: Tensor) -> Tensor:
    lin = hz / (200.0 / 3)
    return torch.where(hz >= 1000.0, 15.0 + torch.log(hz.clamp_min(1e-12) / 1000.0) / (math.log(6.4) / 27.0), lin)


def _slaney_hz(mel: Tensor) -> Tensor:
    return torch.where(mel >= 15.0, 1000.0 * torch.exp((math.log(6.4) / 27.0) * (mel - 15.0)), mel * (200.0 / 3))


def frontend_state(n_fft: int = N_FFT, n_mels: int = N_MELS, sr: int = SAMPLE_RATE, fmin: float = FMIN,
                   fmax: float = FMAX) -> dict[str, Tensor]:
    """The front-end tensors of a Cnn14 checkpoint, computed (torchlibrosa / librosa defaults: periodic Hann,
    DFT with e^(-2 pi i / n), Slaney mel with Slaney area normalisation). The release file carries these
    itself; this exists to build test checkpoints and to check a file's front end."""
    t = torch.arange(n_fft, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * t / n_fft)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    ang = 2 * math.pi * ((k[:, None] * t[None]) % n_fft) / n_fft
    real = (torch.cos(ang) * window).float()[:, None, :]
    imag = (-torch.sin(ang) * window).float()[:, None, :]
    freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)
    lo, hi = _slaney_mel(torch.tensor(fmin, dtype=torch.float64)), _slaney_mel(torch.tensor(fmax, dtype=torch.float64))
    edges = _slaney_hz(torch.linspace(float(lo), float(hi), n_mels + 2, dtype=torch.float64))
    fdiff = edges.diff()
    ramps = edges[:, None] - freqs[None]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return {"spectrogram_extractor.stft.conv_real.weight": real,
            "spectrogram_extractor.stft.conv_imag.weight": imag,
            "logmel_extractor.melW": weights.t().float().contiguous()}


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor, pool: bool) -> Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return nn.functional.avg_pool2d(x, 2) if pool else x


class _Frontend(nn.Module):
    """Holds the checkpoint's STFT and mel tensors under their release names."""

    def __init__(self, n_fft: int, n_mels: int):
        super().__init__()
        self.stft = nn.Module()
        self.stft.conv_real = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=HOP, bias=False)
        self.stft.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=HOP, bias=False)


class Cnn14Net(nn.Module):
    """Cnn14 (16 kHz) with the release parameter names; forward(wav [B, S]) -> (logits [B, C], embedding [B, D])."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, classes: int = 527, n_mels: int = N_MELS):
        super().__init__()
        self.spectrogram_extractor = _Frontend(N_FFT, n_mels)
        self.logmel_extractor = nn.Module()
        self.logmel_extractor.melW = nn.Parameter(torch.zeros(N_FFT // 2 + 1, n_mels), requires_grad=False)
        self.bn0 = nn.BatchNorm2d(n_mels)
        cin = 1
        for i, w in enumerate(widths, 1):
            setattr(self, f"conv_block{i}", _ConvBlock(cin, w))
            cin = w
        self.n_blocks = len(widths)
        self.fc1 = nn.Linear(cin, cin)
        self.fc_audioset = nn.Linear(cin, classes)

    def logmel(self, wav: Tensor) -> Tensor:
        """[B, S] 16 kHz -> [B, 1, T, n_mels] dB log-mel (the checkpoint's own STFT and mel weights)."""
        stft = self.spectrogram_extractor.stft
        x = nn.functional.pad(wav[:, None, :], (N_FFT // 2, N_FFT // 2), mode="reflect")
        power = stft.conv_real(x) ** 2 + stft.conv_imag(x) ** 2          # [B, 257, T]
        mel = power.transpose(1, 2) @ self.logmel_extractor.melW          # [B, T, n_mels]
        return (10.0 * torch.log10(mel.clamp_min(1e-10)))[:, None]

    def forward(self, wav: Tensor) -> tuple[Tensor, Tensor]:
        x = self.logmel(wav)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(1, self.n_blocks + 1):
            x = getattr(self, f"conv_block{i}")(x, pool=i < self.n_blocks)
        x = x.mean(dim=3)
        x = x.amax(dim=2) + x.mean(dim=2)
        emb = torch.relu(self.fc1(x))
        return self.fc_audioset(emb), emb


class PANNs:
    """`embed(audio, sr) -> [B, 2048]`, `logits(audio, sr) -> [B, 527]`, `posteriors(audio, sr) -> [B, 527]`.

    ``widths`` / ``classes`` exist only to build tiny test models; the release uses the defaults.
    """

    role = "embedder"

    def __init__(self, path: str | None = None, device: str = "cpu", widths: tuple[int, ...] = WIDTHS,
                 classes: int = 527):
        if len(widths) < 1 or any(int(w) <= 0 for w in widths):
            raise PrismAudioError("backend 'panns': widths must list positive conv widths")
        self.path = require_path(path, "panns", _EXPECTED)
        self.device = torch.device(device)
        self.widths, self.classes = tuple(int(w) for w in widths), int(classes)
        self.dim = self.widths[-1]
        self._net: Cnn14Net | None = None

    def _load(self) -> Cnn14Net:
        if self._net is None:
            net = Cnn14Net(self.widths, self.classes)
            sd = load_state_dict(self.path, "panns", _EXPECTED)
            for k, v in net.state_dict().items():  # files saved before BatchNorm counted batches lack these
                if k.endswith("num_batches_tracked") and k not in sd and k.removesuffix("num_batches_tracked") + "running_mean" in sd:
                    sd[k] = v
            load_strict(net, sd, "panns", self.path)
            self._net = net.eval().requires_grad_(False).to(self.device)
        return self._net

    @torch.no_grad()
    def _run(self, audio: Tensor, sr: int) -> tuple[Tensor, Tensor]:
        net = self._load()
        wav = mono_at(audio, sr, SAMPLE_RATE, "panns").to(self.device)
        need = (_MIN_FRAMES - 1) * HOP
        if wav.shape[-1] < need:  # too short for five poolings: zero-pad (documented deviation)
            wav = nn.functional.pad(wav, (0, need - wav.shape[-1]))
        logits, emb = net(wav)
        return logits.cpu(), emb.cpu()

    def embed(self, audio: Tensor, sr: int) -> Tensor:
        return self._run(audio, sr)[1]

    def logits(self, audio: Tensor, sr: int) -> Tensor:
        return self._run(audio, sr)[0]

    def posteriors(self, audio: Tensor, sr: int) -> Tensor:
        return torch.sigmoid(self.logits(audio, sr))


register_backend("panns", "embedder")(PANNs)


@register_backend("panns_classifier", "classifier")
class PANNsClassifier(PANNs):
    """Same model, registered for the ``classifier`` role (KL-PANNs)."""

    role = "classifier"
