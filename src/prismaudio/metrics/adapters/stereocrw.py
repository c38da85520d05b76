"""`stereocrw` (role ``crw``): StereoCRW interaural-time-difference track, BEWO evaluation protocol.

What follows the official code (IFICL/stereocrw, read for this module; BEWO's `itdpredict` wrapper):
  * the network is `WaveNet` with the "resnet9" backbone: a torchvision-style ResNet with one
    BasicBlock per stage (widths 64/128/256/512), a 2-channel 7x7/2 stem (real and imaginary STFT
    parts), max-pool, global average pool and `fc` to `feat_dim` = 128 (`stereocrw_binaural` params);
  * each "time step" is one patch of 3840 samples (0.24 s at 16 kHz) taken with stride 1; its STFT
    uses n_fft 256, a 256-sample periodic Hann window, hop 3840 // 128 = 30, centred with reflect
    padding (torchaudio `Spectrogram` defaults), and the last time frame and last frequency bin are
    dropped -> a [2, 128, 128] image (time x frequency);
  * features are L2-normalised, the left->right affinity is L . R^T / tau (tau = 0.05), each row is
    restricted to lags |j - i| <= floor(16000 * 1.5 ms) = 24, soft-maxed, and the ITD of row i is
    sum_j w_ij (j - i) / fs ("soft_weight"; "argmax" is the official alternative); rows closer than
    24 to either end are dropped and the window's ITD is the mean of the remaining rows (mode "mean").
    With delay (j - i) the ITD is POSITIVE WHEN THE LEFT CHANNEL LEADS, as in `spatial.itd_track_bewo`.
  * BEWO protocol (reference doc): 16 kHz, 100 windows of 4352 = 3840 + 512 samples centred on
    t = i/10 s and clamped like `bewo_window_starts` -> 513 patches per channel and window; MSE as
    `gcc_mse_bewo` (per-file mean ITD, squared difference, mean over files, x1000).

Assumptions (not verified against a released checkpoint):
  * state-dict layout: the WaveNet module's own keys, i.e. ``net.<torchvision resnet keys>``
    (``net.conv1.weight``, ``net.layer2.0.downsample.1.running_var``, ``net.fc.bias`` ...), optionally
    under "state_dict"/"model" and prefixed "module." (DataParallel). ``trans.window`` (the torchaudio
    Spectrogram buffer) is accepted and ignored. Everything else must match exactly (strict).
  * the CRW patch length: 3840 samples (0.24 s, the `clip=0.24` of StereoCRW's demo/eval scripts and
    the reference doc's frame length). BEWO's reward wrapper config (`get_config`) sets clip_length=6,
    overridden by its data loader in ways not traced here.
  * a window in which either channel is digitally silent is NaN (like the GCC track), not the value
    a network would give for zeros; NaN windows are skipped by the per-file mean.
Deviations: the band mask is applied directly (the official code multiplies by a 0/1 mask and treats
an affinity of exactly 0 as masked too); affinities are computed in float64; windows repeated by the
clamping are computed once. `n_fft`/`win_length`/`hop_length`/`width`/`feat_dim` exist so tests can
build tiny nets; the defaults are the official ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...errors import PrismAudioError
from ..backends import register_backend
from ..spatial import (
    BEWO_FRAME,
    BEWO_MAXLAG,
    BEWO_N_EST,
    BEWO_SR,
    BEWO_WIN,
    _load_any,
    _stereo,
    _to_16k,
    bewo_window_starts,
)
from ._common import load_state_dict, load_strict, require_path

_EXPECTED = ("a local StereoCRW WaveNet/resnet9 checkpoint (e.g. FreeMusic-StereoCRW-1024.pth.tar, or a "
             ".safetensors export) with keys net.<torchvision resnet keys>")
_IGNORED_KEYS = ("trans.window",)  # torchaudio Spectrogram buffer of the official WaveNet: a Hann window


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------
class _BasicBlock(nn.Module):
    """torchvision BasicBlock (same attribute names, so the keys match)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet9(nn.Module):
    """torchvision ResNet with layers [1, 1, 1, 1], a 2-channel stem and `fc` to `feat_dim`."""

    def __init__(self, in_channels: int = 2, width: int = 64, feat_dim: int = 128) -> None:
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(_BasicBlock(width, w[0], 1))
        self.layer2 = nn.Sequential(_BasicBlock(w[0], w[1], 2))
        self.layer3 = nn.Sequential(_BasicBlock(w[1], w[2], 2))
        self.layer4 = nn.Sequential(_BasicBlock(w[2], w[3], 2))
        self.fc = nn.Linear(w[3], feat_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean(dim=(-2, -1)))


class StereoCRWNet(nn.Module):
    """Audio patches [N, L] -> features [N, feat_dim] (STFT real/imag image -> ResNet-9)."""

    def __init__(self, feat_dim: int = 128, width: int = 64, n_fft: int = 256, win_length: int = 256,
                 hop_length: int = BEWO_FRAME // 128) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.net = ResNet9(2, width, feat_dim)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def forward(self, patches: Tensor) -> Tensor:
        spec = torch.stft(patches, self.n_fft, self.hop_length, self.win_length, self.window, center=True,
                          pad_mode="reflect", return_complex=True)  # [N, F, T]
        img = torch.view_as_real(spec).permute(0, 3, 2, 1)[..., :-1, :-1]  # [N, 2, T-1, F-1]
        return self.net(img.contiguous())


# --------------------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------------------
@register_backend("stereocrw", "crw")
class StereoCRW:
    """StereoCRW ITD tracks (BEWO protocol) from a LOCAL checkpoint, loaded on first use."""

    def __init__(self, path: str | None = None, feat_dim: int = 128, width: int = 64, n_fft: int = 256,
                 win_length: int = 256, hop_length: int = BEWO_FRAME // 128, tau: float = 0.05,
                 select: str = "soft_weight", batch_patches: int = 1026, device: str = "cpu") -> None:
        self.path = require_path(path, "stereocrw", _EXPECTED)
        if select not in ("soft_weight", "argmax"):
            raise PrismAudioError(f"backend 'stereocrw': select must be 'soft_weight' or 'argmax', got {select!r}")
        if not tau > 0:
            raise PrismAudioError(f"backend 'stereocrw': tau must be > 0, got {tau!r}")
        self._arch = {"feat_dim": int(feat_dim), "width": int(width), "n_fft": int(n_fft),
                      "win_length": int(win_length), "hop_length": int(hop_length)}
        self.tau, self.select = float(tau), select
        self.batch_patches = max(2, int(batch_patches))
        self.device = torch.device(device)
        self._net: StereoCRWNet | None = None

    @property
    def net(self) -> StereoCRWNet:
        if self._net is None:
            net = StereoCRWNet(**self._arch)
            sd = {k.removeprefix("module."): v for k, v in load_state_dict(self.path, "stereocrw", _EXPECTED).items()}
            load_strict(net, {k: v for k, v in sd.items() if k not in _IGNORED_KEYS}, "stereocrw", self.path)
            self._net = net.eval().requires_grad_(False).to(self.device)
        return self._net

    @torch.no_grad()
    def affinity(self, window: Tensor) -> Tensor:
        """Left->right affinity [P, P] of one 16 kHz stereo window [2, L] (P = L - 3840 + 1 patches)."""
        patches = window.float().to(self.device).unfold(-1, BEWO_FRAME, 1)  # [2, P, 3840]
        p = patches.shape[1]
        flat = patches.reshape(2 * p, BEWO_FRAME)
        feats = torch.cat([self.net(c) for c in flat.split(self.batch_patches)])
        feats = nn.functional.normalize(feats.double(), p=2, dim=-1).view(2, p, -1)
        return (feats[0] @ feats[1].T / self.tau).cpu()

    def window_itd(self, aff: Tensor) -> float:
        """Window ITD (s) from its affinity: band-masked rows, soft-weighted (or argmax) lag, mean."""
        h, w = aff.shape
        m = BEWO_MAXLAG
        lag = (torch.arange(w)[None] - torch.arange(h)[:, None]).to(aff.dtype)  # j - i
        logits = aff.masked_fill(lag.abs() > m, float("-inf"))
        if self.select == "argmax":
            rows = lag.gather(1, logits.argmax(-1, keepdim=True))[:, 0]
        else:
            rows = (torch.softmax(logits, dim=-1) * lag).sum(-1)
        rows = rows[m:h - m] if h > 2 * m else rows
        return float(rows.mean()) / BEWO_SR

    def itd_track(self, audio: Any, sr: int) -> Tensor:
        """Tensor[100] (float64, seconds, > 0: left leads) for t = 0, 0.1, ..., 9.9 s (BEWO windows)."""
        if isinstance(audio, Tensor) and audio.dim() == 3 and audio.shape[0] == 1:
            audio = audio[0]
        x, reason = _stereo(audio)
        if x is None:
            if "mono" in (reason or ""):
                return torch.zeros(BEWO_N_EST, dtype=torch.float64)
            raise PrismAudioError(f"backend 'stereocrw': {reason}")
        x = _to_16k(x, sr)
        if x.shape[-1] < BEWO_WIN:
            x = nn.functional.pad(x, (0, BEWO_WIN - x.shape[-1]))
        starts = bewo_window_starts(x.shape[-1])
        est: dict[int, float] = {}
        for s in sorted(set(starts)):
            win = x[:, s:s + BEWO_WIN]
            silent = bool((win[0] == 0).all() or (win[1] == 0).all())
            est[s] = float("nan") if silent else self.window_itd(self.affinity(win))
        return torch.tensor([est[s] for s in starts], dtype=torch.float64)

    def crw_mse(self, ref_audios: Any, gen_audios: Any, sr: int, return_details: bool = False) -> Any:
        """BEWO CRW MSE (x1000) between paired reference and generated clips ([2, S] or file paths),
        exactly like `gcc_mse_bewo`: silent pairs (NaN mean ITD) are skipped with a reason."""
        refs, gens = list(ref_audios), list(gen_audios)
        if len(refs) != len(gens):
            raise PrismAudioError(f"crw_mse: {len(refs)} reference vs {len(gens)} generated clips")
        ref_m, gen_m, skipped = [], [], []
        for i, (r, g) in enumerate(zip(refs, gens)):
            (ra, rsr), (ga, gsr) = _load_any(r, sr), _load_any(g, sr)
            mr = float(torch.nanmean(self.itd_track(ra, rsr)))
            mg = float(torch.nanmean(self.itd_track(ga, gsr)))
            ref_m.append(mr)
            gen_m.append(mg)
            if not (np.isfinite(mr) and np.isfinite(mg)):
                skipped.append((i, "silent reference" if not np.isfinite(mr) else "silent generated clip"))
        d = np.array(ref_m) - np.array(gen_m)
        ok = np.isfinite(d)
        value = float(np.mean(d[ok] ** 2) * 1000) if ok.any() else float("nan")
        if not return_details:
            return value
        return {"mode": "bewo", "crw_mse": value, "ref_mean_itd_s": ref_m, "gen_mean_itd_s": gen_m,
                "skipped": skipped, "reason": None if ok.any() else "no clip pair with a finite ITD"}
