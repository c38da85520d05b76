"""`stereocrw` (role ``crw``): StereoCRW interaural time differences, the BEWO metric and the official reward.

The network (IFICL/stereocrw `WaveNet`, backbone "resnet9"; checked against the upstream fixture
`shared/reference/upstream_fixtures/stereocrw`): each patch's STFT (torchaudio `Spectrogram`: n_fft 256,
periodic Hann 256 = the checkpoint's `trans.window`, hop = patch // 128, centred, reflect padding,
power None) as a real/imag image (time x frequency) with the last frame and bin dropped -> 128 x 128;
a torchvision ResNet with one BasicBlock per stage (64/128/256/512), a 2-channel 7x7/2 stem, max-pool,
global average pool, `fc` to 128. ITDs from the left->right affinity of L2-normalised features / tau
(0.05), each row masked to lags |j - i| <= floor(16000 * 1.5 ms) = 24, soft-maxed, ITD_i =
sum_j p_ij (j - i) / 16000 s (POSITIVE WHEN THE LEFT CHANNEL LEADS), the first and last 24 rows dropped.

Two protocols share the network and weights:

| | BEWO metric (`itd_track`, `crw_mse`) | official PrismAudio ITD reward (`official_itd`, `official_itd_reward`) |
|---|---|---|
| audio | 16 kHz (project resampler), 100 windows of 4352 samples centred on t = i/10 s | ONE clip per file: the first int(1.2 * 6 s * rate) samples (a shorter file is tiled), `scipy.signal.resample` (FFT) to 16 kHz, the first 96000 + 511 samples (`official_itd_clip`) |
| patches | 513 of 3840 samples (0.24 s), hop 30 | 512 of 96000 samples (6 s), hop 750 |
| ITD | soft-weighted lag per row, mean over rows, mean over the 100 windows | the same per row (464 rows), mean in ms; plus GCC-PHAT: 512 windows of 3840 (step 181), FFT 7680, +/-24 lags, mean in ms |
| score | MSE of per-file means vs the reference folder, x1000 | -(5 (crw_gen - crw_gt)^2 / 2 + 5 (gcc_gen - gcc_gt)^2) / 2 against the ground-truth stereo |

Upstream defect, not reproduced: the official reward builds the WaveNet but never loads its checkpoint
(`args.resume` is unused), so it scores with torchvision's unseeded random init. Ours always loads the weights.

Weights: the release `FreeMusic-StereoCRW-1024.pth.tar` as downloaded (``{'epoch': int, 'state_dict':
{'module.<WaveNet key>': tensor}}``: only tensors and an int, so ``torch.load(weights_only=True)`` reads it;
a file that pickles other objects is refused in one line, never unpickled), or a `.safetensors` export of the
same keys (``net.<torchvision resnet keys>``, ``trans.window``), optionally under "state_dict"/"model" and
prefixed "module.". Strict: a missing or unexpected key is one error naming the file and the keys.

BEWO metric specifics: a window in which either channel is digitally silent is NaN (like the GCC track), skipped
by the per-file mean; the affinity is computed in float64 and the band mask applied directly (the official code
multiplies by a 0/1 mask and treats an affinity of exactly 0 as masked too, which the reward path reproduces).
`n_fft`/`win_length`/`hop_length`/`width`/`feat_dim` exist so tests can build tiny nets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


class _Spectrogram(nn.Module):
    """torchaudio `Spectrogram(power=None)`'s state: the periodic Hann window (key `trans.window`)."""

    def __init__(self, win_length: int) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(win_length))


class StereoCRWNet(nn.Module):
    """Audio patches [N, L] -> features [N, feat_dim] (STFT real/imag image -> ResNet-9)."""

    def __init__(self, feat_dim: int = 128, width: int = 64, n_fft: int = 256, win_length: int = 256,
                 hop_length: int = BEWO_FRAME // 128) -> None:
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.trans = _Spectrogram(win_length)
        self.net = ResNet9(2, width, feat_dim)

    def image(self, patches: Tensor, hop_length: int | None = None) -> Tensor:
        """[N, L] -> STFT image [N, 2 (real, imag), T - 1, F - 1] (last frame and bin dropped, as upstream)."""
        spec = torch.stft(patches, self.n_fft, hop_length or self.hop_length, self.win_length, self.trans.window,
                          center=True, pad_mode="reflect", return_complex=True)  # [N, F, T]
        return torch.view_as_real(spec).permute(0, 3, 2, 1)[..., :-1, :-1]

    def forward(self, patches: Tensor, hop_length: int | None = None) -> Tensor:
        return self.net(self.image(patches, hop_length).contiguous())


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
            sd.setdefault("trans.window", net.trans.window.clone())  # a deterministic buffer: exports may omit it
            load_strict(net, sd, "stereocrw", self.path)
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

    # ---------------------------------------------------------------------------------- official reward
    @torch.no_grad()
    def reward_features(self, clip: Tensor, cfg: ITDRewardConfig | None = None,
                        patches: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Clip(s) [2, T] | [B, 2, T] from `official_itd_clip` -> (left, right) features [B, P, D] float32
        of the reward's patches (hop = patch // 128); ``patches`` selects patch indices (tests)."""
        cfg = cfg or ITDRewardConfig()
        x = clip[None] if clip.dim() == 2 else clip
        if x.dim() != 3 or x.shape[1] != 2 or x.shape[-1] < cfg.total_samples:
            raise PrismAudioError(f"backend 'stereocrw': reward clips must be [B, 2, >= {cfg.total_samples}], "
                                  f"got {tuple(clip.shape)} (use official_itd_clip)")
        units = x[..., : cfg.total_samples].float().to(self.device).unfold(-1, cfg.patch_samples, cfg.patch_stride)
        if patches is not None:
            units = units[:, :, patches.to(units.device)]
        b, _, p, n = units.shape
        flat = units.reshape(b * 2 * p, n)
        step = max(1, self.batch_patches // 16)  # 6 s patches: bound the STFT buffers
        feats = torch.cat([self.net(c, cfg.hop_length) for c in flat.split(step)]).view(b, 2, p, -1).cpu()
        return feats[:, 0], feats[:, 1]

    def official_itd(self, audio: Any, sr: int, cfg: ITDRewardConfig | None = None) -> dict[str, Tensor]:
        """The official reward's per-file ITDs of one file ([2, S] at `sr`): ``crw_itd_ms``, ``gcc_itd_ms``
        (float64 scalars), ``crw_itd_per_patch`` (seconds) and the patch features ``feat_left`` / ``feat_right``."""
        cfg = cfg or ITDRewardConfig()
        clip = official_itd_clip(audio, sr, cfg)
        left, right = self.reward_features(clip, cfg)
        rows = crw_itd_rows(left, right, cfg)[0]
        return {"crw_itd_ms": rows.mean().double() * 1000, "gcc_itd_ms": gcc_phat_itd_ms(clip, cfg),
                "crw_itd_per_patch": rows, "feat_left": left[0], "feat_right": right[0]}


@dataclass(frozen=True)
class ITDRewardConfig:
    """The official ITD reward's settings (`stereocrw_binaural` params after the reward's `update_param`)."""

    samp_sr: int = 16_000
    clip_length: float = 6.0
    patch_num: int = 512
    patch_stride: int = 1
    max_delay: float = 0.0015
    tau: float = 0.05
    gcc_fft: int = 3840
    read_ratio: float = 1.2
    mse_weight: float = 5.0
    band_mask_fill: float = -1e20
    gcc_eps: float = 1e-20

    @property
    def patch_samples(self) -> int:
        return int(self.clip_length * self.samp_sr)

    @property
    def total_samples(self) -> int:
        return self.patch_samples + self.patch_stride * (self.patch_num - 1)

    @property
    def hop_length(self) -> int:
        return self.patch_samples // 128

    @property
    def max_delay_offset(self) -> int:
        return math.floor(self.samp_sr * self.max_delay / self.patch_stride)

    @property
    def gcc_step(self) -> int:
        return (self.total_samples - self.gcc_fft) // (self.patch_num - 1)

    @property
    def gcc_max_shift(self) -> int:
        return int(self.samp_sr * self.max_delay)

    def read_stop(self, rate: int) -> int:
        """Samples read from a file at `rate`: int(ratio * clip_length * rate), ratio 2 below 0.48 s clips."""
        return int((2 if self.clip_length < 0.48 else self.read_ratio) * self.clip_length * rate)


def official_itd_clip(audio: Any, sr: int, cfg: ITDRewardConfig | None = None) -> Tensor:
    """One file's clip exactly as the official ITD reward reads it: stereo [2, S] at `sr` -> float32
    [2, 96511] at 16 kHz (the first int(1.2 * 6 * sr) samples, a shorter file tiled whole and cut, FFT-resampled
    with `scipy.signal.resample` in float64 to int(n / sr * 16000) samples, then the first 96000 + 511)."""
    from scipy.signal import resample as fft_resample

    cfg = cfg or ITDRewardConfig()
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise PrismAudioError(f"official_itd_clip: sample rate must be a positive integer, got {sr!r}")
    x = audio.detach().cpu().double().numpy() if isinstance(audio, Tensor) else np.asarray(audio, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != 2 or x.shape[1] == 0:
        raise PrismAudioError(f"official_itd_clip: the ITD reward needs stereo audio [2, S], got shape {x.shape}")
    stop = cfg.read_stop(int(sr))
    if x.shape[1] < stop:
        x = np.tile(x, (1, math.ceil(stop / x.shape[1])))
    x = x[:, :stop]
    if int(sr) != cfg.samp_sr:
        x = fft_resample(x, int(x.shape[1] / int(sr) * cfg.samp_sr), axis=1)
    return torch.from_numpy(np.ascontiguousarray(x[:, : cfg.total_samples])).float()


def crw_itd_rows(feat_left: Tensor, feat_right: Tensor, cfg: ITDRewardConfig | None = None) -> Tensor:
    """Per-patch ITDs (s) [B, P - 2m] from reward features [B, P, D], as `inference_crw_itd_simple`: affinity
    L.R^T / tau of L2-normalised features, times the |i - j| <= m band, zeros -> -1e20, softmax, soft lag."""
    cfg = cfg or ITDRewardConfig()
    fl = nn.functional.normalize(feat_left.float(), p=2, dim=-1)
    fr = nn.functional.normalize(feat_right.float(), p=2, dim=-1)
    aff = fl @ fr.transpose(-1, -2) / cfg.tau
    p, m = aff.shape[-1], cfg.max_delay_offset
    lag = torch.arange(p)[None, :] - torch.arange(p)[:, None]  # j - i
    aff = aff * (lag.abs() <= m).to(aff.dtype)
    aff = aff.masked_fill(aff == 0, cfg.band_mask_fill)
    delay = (lag * cfg.patch_stride).to(aff.dtype) / cfg.samp_sr
    itd = (torch.softmax(aff, dim=-1) * delay).sum(-1)
    return itd[..., m: p - m]


def gcc_phat_itd_ms(clip: Tensor, cfg: ITDRewardConfig | None = None) -> Tensor:
    """The reward's GCC-PHAT baseline (ms, float64) of one clip [2, T]: `patch_num` windows of `gcc_fft` samples
    every `gcc_step`, cross-spectrum over n = 2 * gcc_fft, PHAT weighting, lags within +/- max shift,
    argmax |cc| (first on ties), itd = -shift / fs, mean over windows. The reward holds these ITDs in float32
    (its value is the float32 mean times 1000: 0.12500000593718141 ms, not 0.125), and so do we."""
    cfg = cfg or ITDRewardConfig()
    x = clip.double()
    starts = torch.arange(cfg.patch_num) * cfg.gcc_step
    idx = starts[:, None] + torch.arange(cfg.gcc_fft)[None]
    n, ms = 2 * cfg.gcc_fft, cfg.gcc_max_shift
    r = torch.fft.rfft(x[0, idx], n=n) * torch.fft.rfft(x[1, idx], n=n).conj()
    cc = torch.fft.irfft(r / (r.abs() + cfg.gcc_eps), n=n)
    cc = torch.cat([cc[:, -ms:], cc[:, : ms + 1]], dim=-1)
    shift = cc.abs().argmax(-1) - ms
    return (-shift.double() / cfg.samp_sr).float().mean().double() * 1000


def official_itd_reward(gen: dict[str, Tensor], gt: dict[str, Tensor], cfg: ITDRewardConfig | None = None) -> Tensor:
    """The official ITD reward ('mse' mode) of a generated file against its ground truth, from two
    `StereoCRW.official_itd` results: -(w (crw_gen - crw_gt)^2 / 2 + w (gcc_gen - gcc_gt)^2) / 2 on ms values."""
    w = (cfg or ITDRewardConfig()).mse_weight
    d_crw = torch.as_tensor(gen["crw_itd_ms"], dtype=torch.float64) - torch.as_tensor(gt["crw_itd_ms"], dtype=torch.float64)
    d_gcc = torch.as_tensor(gen["gcc_itd_ms"], dtype=torch.float64) - torch.as_tensor(gt["gcc_itd_ms"], dtype=torch.float64)
    return -(w * d_crw ** 2 / 2 + w * d_gcc ** 2) / 2
