"""`synchformer_desync` (role ``desync``): Synchformer audio-visual offsets, av-benchmark's DeSync, and the
official PrismAudio sync reward, from the released checkpoints.

Two input protocols, one network (`PROTOCOLS`, selectable by name: ``protocol=`` of the backend):

=====================  =========================================  ==========================================
                       ``av_benchmark`` (the DeSync metric)       ``official_reward`` (PrismAudio GRPO)
=====================  =========================================  ==========================================
frames                 25 fps, FFmpeg ``fps`` filter, uint8 RGB    same
spatial                shorter side -> 224 (v2 Resize, bicubic,   shorter side -> 256, centre crop 224
                       antialias, uint8 kernel), centre crop 224  WITHOUT a further resize
normalise              x * (1/255), then (x - 0.5) / 0.5          same
audio                  mono (channel mean), 16 kHz                same
                       (torchaudio ``transforms.Resample``)
length                 ``desync_from_files``: the first           the first 9 s (225 frames, 144,000 samples)
                       ``duration`` s (``--audio_length``, 8 s)
segments               16 frames step 8 / 10240 samples step      same
                       5120 -> [S, 8, D] / [S, 6, D]
windows                first 14 and last 14 segments (4.8 s)      same (of the first 9 s)
read-out               DeSync = mean over windows (and clips) of  reward = (2 - |offset|) / 4 per clip,
                       |grid[argmax logits]|, grid -2..2 s / 0.2  |offset| = mean over the two windows
=====================  =========================================  ==========================================

The network, in the released key layout (`synchformer_state_dict.pth`; every size is read from the
tensors, only the head counts are parameters; checked number for number against the upstream
`synchformer_desync` fixture):

* ``vfeat_extractor.*``: `prismaudio.encoders.synchformer.SyncVisualBranch` (the one MotionFormer
  implementation, shared with the generation encoder); the unused 2-D ``patch_embed.proj.*`` is dropped.
* ``afeat_extractor.ast.*``: the Hugging Face AST as Synchformer patches it (Conv2d 1 -> D, 16 x 16,
  strides 10 over the (128 mel, 66 time) image -> 12 x 6 patches + CLS + distillation tokens, position table
  cut to 74 rows, pre-norm layers, LayerNorm eps 1e-12, GELU), then ``afeat_extractor.freq_attn_agg``
  (a learned CLS before the 12 frequency tokens of each time patch, one pre-norm GELU TransformerEncoderLayer,
  eps 1e-6) -> 6 tokens per segment.
* log-mel (torchaudio's ``MelSpectrogram`` defaults: hann periodic, centre reflect padding, power 2, HTK
  mel scale, no filter norm; n_fft 1024, win 400, hop 160, 128 mels): log(x + 1e-6), zero-padded AFTER the
  log to 66 frames, (x + 4.2677393) / (2 * 4.5689974).
* ``vproj`` / ``aproj`` and ``transformer.*`` (GlobalTransformer): LayerNorm of each stream, sequence
  [OFF ; 14 x 8 visual ; MOD ; 14 x 6 audio] + the learned 198-row position table (exactly 14 segments),
  pre-norm blocks with separate key / query / value Linears and a GELU MLP, ``ln_f``, ``off_head`` on the
  OFF token -> 21 logits.

Checkpoints: a plain state dict (av-benchmark's ``synchformer_state_dict.pth``) or the experiment
checkpoint ``{"model": state dict, ...}`` the official reward loads; both with ``torch.load(weights_only=True)``
(or safetensors); a DataParallel ``module.`` prefix is stripped. A wrong model, a truncated file or a
missing / unexpected / misshapen key is one `PrismAudioError` naming the file and the first such key.

Where we differ from upstream, on purpose (upstream refuses these inputs or crashes):
  * a clip with fewer than 14 segments (< 4.8 s) repeats the last segment's tokens up to 14 (both windows
    then coincide); one shorter than one segment repeats its last frame / zero-pads its audio. av-benchmark
    cannot score such clips (the position table needs exactly 14 segments).
  * ``desync_from_files`` raises on a video or audio shorter than ``duration``: av-benchmark logs and skips
    the video, and its audio loader silently substitutes the NEXT file's audio.
Assumptions (the official reward code was not available here, only its documented settings): the reward's
"short side 256" uses the same uint8 bicubic kernel as the metric's 224 resize; its 9 s of audio are cut
after resampling to 16 kHz; it reads the same two 14-segment windows as av-benchmark.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ...encoders.synchformer import preprocess_frames, to_uint8
from ...errors import PrismAudioError
from ..backends import register_backend
from ._common import mono_at, require_path
from .synchformer_av import (  # noqa: F401  (re-exported: the metric's public names)
    EXPECTED,
    FPS,
    N_MELS,
    NAME,
    OFFSET_GRID,
    SEG_FRAMES,
    SEG_FRAMES_STEP,
    SEG_SAMPLES,
    SEG_SAMPLES_STEP,
    SPEC_T,
    SR,
    LogMel,
    SyncAudioBranch,
    SynchformerConfig,
    SynchformerNet,
    class_grid,
    load_synchformer,
    mel_filterbank,
)


@dataclass(frozen=True)
class SyncProtocol:
    """How frames and audio enter Synchformer (see the table in the module docstring)."""

    name: str
    resize: int  # shorter side resized to this (torchvision v2 Resize on uint8)
    crop: int  # then a centre crop of crop x crop
    seconds: float | None  # only the first `seconds` are scored (None: the clip as given)


PROTOCOLS = {
    "av_benchmark": SyncProtocol("av_benchmark", resize=224, crop=224, seconds=None),
    "official_reward": SyncProtocol("official_reward", resize=256, crop=224, seconds=9.0),
}


def get_protocol(name: str | SyncProtocol) -> SyncProtocol:
    if isinstance(name, SyncProtocol):
        return name
    if name not in PROTOCOLS:
        raise PrismAudioError(f"{NAME}: unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


# --------------------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------------------
def _pad_to(x: Tensor, length: int, dim: int) -> Tensor:
    """Repeat the last element along `dim` up to `length` (documented deviation for short clips)."""
    n = x.shape[dim]
    if n >= length:
        return x
    idx = torch.arange(length, device=x.device).clamp(max=n - 1)
    return x.index_select(dim, idx)


def _resample_16k(wave: Tensor, sr: int) -> Tensor:
    """[B, S] mono at `sr` -> 16 kHz with torchaudio's `transforms.Resample` (as av-benchmark's loader)."""
    if sr == SR:
        return wave
    try:
        from .resample import resample_transform as resample
    except ImportError:  # the torchaudio-equal resampler lives beside this module; older trees lack it
        from ...io.audio import resample
    return resample(wave, sr, SR)


def _positive(name: str, value: Any, number: bool = False) -> Any:
    """A positive int (or number) parameter; configs come from YAML, so the type is checked."""
    ok = (int, float) if number else int
    if isinstance(value, bool) or not isinstance(value, ok) or not value > 0 or not math.isfinite(value):
        raise PrismAudioError(f"backend {NAME!r}: {name} must be a positive {'number' if number else 'integer'}, "
                              f"got {value!r}")
    return value


def _mono_16k(audio: Any, sr: int) -> Tensor:
    return _resample_16k(mono_at(audio, sr, sr, NAME), int(sr))


@register_backend(NAME, "desync")
class SynchformerDesync:
    """Synchformer offsets / DeSync from a LOCAL checkpoint, loaded on first use.

    `heads`, `ast_heads`, `sync_heads` are the attention head counts (12 / 12 / 8 released; they cannot be
    read from the tensors); `protocol` is ``av_benchmark`` (default) or ``official_reward`` (see the module
    docstring). Any size given in `declared` (e.g. ``dim=768``) is checked against the file.
    """

    def __init__(self, path: str | None = None, heads: int = 12, ast_heads: int | None = None, sync_heads: int = 8,
                 protocol: str = "av_benchmark", batch_segments: int = 16, device: str = "cpu",
                 **declared: Any) -> None:
        self.path = require_path(path, NAME, EXPECTED)
        self.heads, self.sync_heads = _positive("heads", heads), _positive("sync_heads", sync_heads)
        self.ast_heads = self.heads if ast_heads is None else _positive("ast_heads", ast_heads)
        self.protocol = get_protocol(protocol)
        known = {f.name for f in fields(SynchformerConfig)} | {"mlp_ratio"}
        unknown = sorted(set(declared) - known)
        if unknown:
            raise PrismAudioError(f"backend {NAME!r}: unknown parameter(s) {unknown}; known: {sorted(known)}")
        self.declared = {k: _positive(k, v, number=True) for k, v in declared.items()}
        self.size = self.protocol.crop  # callers that decode square frames ask for this size
        self.batch_segments = _positive("batch_segments", batch_segments)
        self.device = torch.device(device)
        self.logmel = LogMel().to(self.device)
        self._net: SynchformerNet | None = None

    @property
    def net(self) -> SynchformerNet:
        if self._net is None:
            net = load_synchformer(self.path, self.heads, self.ast_heads, self.sync_heads)
            cfg = net.cfg
            found = {f.name: getattr(cfg, f.name) for f in fields(cfg)} | {"mlp_ratio": cfg.mlp_hidden / cfg.dim}
            bad = {k: (v, found[k]) for k, v in self.declared.items() if float(v) != float(found[k])}
            if bad:
                raise PrismAudioError(f"backend {NAME!r}: {self.path} holds a different model than configured: "
                                      + ", ".join(f"{k}={v} configured, {f} in the file" for k, (v, f) in bad.items()))
            if cfg.size != self.protocol.crop:
                raise PrismAudioError(f"backend {NAME!r}: {self.path} takes {cfg.size} px frames, the "
                                      f"{self.protocol.name} protocol crops {self.protocol.crop} px")
            self._net = net.to(self.device)
        return self._net

    def frame_spec(self) -> Any:
        """What to decode: 25 fps, native uint8 frames (the resize / crop are the protocol's, on uint8)."""
        from ...io.video import FrameSpec

        return FrameSpec(FPS, None)

    @property
    def grid(self) -> Tensor:
        return class_grid(self.net.cfg.n_classes)

    # ----------------------------------------------------------------------------- inputs
    def prepare_frames(self, frames: Any, protocol: str | SyncProtocol | None = None) -> Tensor:
        """Native frames [B, T, 3, H, W] (uint8, or float in [0, 1]) or uint8 [B, T, H, W, 3], 25 fps ->
        the model input [B, T', 3, crop, crop] in [-1, 1] (T' capped by the protocol's seconds)."""
        proto = self.protocol if protocol is None else get_protocol(protocol)
        x = frames if isinstance(frames, Tensor) else torch.as_tensor(np.asarray(frames))
        if x.dim() == 4:
            x = x[None]
        if x.dim() == 5 and x.dtype == torch.uint8 and x.shape[-1] == 3 and x.shape[2] != 3:
            x = x.permute(0, 1, 4, 2, 3)
        if x.dim() != 5 or x.shape[2] != 3 or x.shape[1] == 0:
            raise PrismAudioError(f"{NAME}: frames must be [B, T>0, 3, H, W] or uint8 [B, T, H, W, 3], "
                                  f"got {tuple(x.shape)}")
        if proto.seconds is not None:
            x = x[:, : max(1, int(FPS * proto.seconds + 1e-6))]
        b, t = x.shape[:2]
        flat = to_uint8(x.reshape(b * t, *x.shape[2:]).cpu())  # the uint8 resize runs on the CPU (exact kernel)
        out = preprocess_frames(flat, proto.crop, proto.resize)
        return out.view(b, t, *out.shape[1:])

    def prepare_audio(self, audio: Any, sr: int, protocol: str | SyncProtocol | None = None) -> Tensor:
        """[B, C, S] / [C, S] at `sr` -> mono [B, S'] at 16 kHz (capped by the protocol's seconds)."""
        proto = self.protocol if protocol is None else get_protocol(protocol)
        wave = _mono_16k(audio, sr)
        return wave if proto.seconds is None else wave[:, : max(1, int(SR * proto.seconds + 1e-6))]

    # ----------------------------------------------------------------------------- features
    @torch.no_grad()
    def video_features(self, video: Tensor) -> Tensor:
        """Model-input frames [B, T, 3, H, W] -> [B, S_v, 8, D]: 16-frame segments, step 8 (encode_video_with_sync)."""
        net = self.net
        video = _pad_to(video, SEG_FRAMES, 1)
        seg = video.unfold(1, SEG_FRAMES, SEG_FRAMES_STEP).permute(0, 1, 2, 5, 3, 4)  # [B, S, 3, 16, H, W]
        out = [torch.cat([net.vfeat_extractor(c.to(self.device).contiguous()) for c in clip.split(self.batch_segments)])
               for clip in seg]
        return torch.stack(out)

    @torch.no_grad()
    def logmel_segments(self, wave: Tensor) -> Tensor:
        """Mono 16 kHz [B, N] -> [B, S_a, 128, 66]: 10240-sample segments, step 5120, normalised log-mel."""
        if wave.shape[-1] < SEG_SAMPLES:
            wave = nn.functional.pad(wave, (0, SEG_SAMPLES - wave.shape[-1]))
        seg = wave.to(self.device).unfold(-1, SEG_SAMPLES, SEG_SAMPLES_STEP)  # [B, S, 10240]
        b, s, n = seg.shape
        return self.logmel(seg.reshape(b * s, n)).view(b, s, N_MELS, SPEC_T)

    @torch.no_grad()
    def audio_features(self, wave: Tensor) -> Tensor:
        """Mono 16 kHz [B, N] -> [B, S_a, 6, D] (encode_audio_with_sync)."""
        spec = self.logmel_segments(wave)
        b, s = spec.shape[:2]
        flat = spec.flatten(0, 1)
        out = torch.cat([self.net.afeat_extractor(c) for c in flat.split(self.batch_segments)])
        return out.view(b, s, *out.shape[1:])

    @torch.no_grad()
    def window_logits(self, vfeats: Tensor, afeats: Tensor) -> Tensor:
        """[B, 2, 21]: compare_v_a on the first and on the last `window_segments` segments.

        Segment k covers the same 0.64 s in both streams, so both are first cut to the common segment
        count, i.e. to the common duration (the paper truncates the video to the generated audio;
        av-benchmark reads both for the same --audio_length, where this changes nothing)."""
        w, s = self.net.cfg.window_segments, min(vfeats.shape[1], afeats.shape[1])
        v, a = _pad_to(vfeats[:, :s], w, 1).to(self.device), _pad_to(afeats[:, :s], w, 1).to(self.device)
        first = self.net.compare_v_a(v[:, :w], a[:, :w])
        last = self.net.compare_v_a(v[:, -w:], a[:, -w:])
        return torch.stack([first, last], dim=1).cpu()

    # ----------------------------------------------------------------------------- role API
    @torch.no_grad()
    def logits(self, frames: Any, audio: Any, sr: int, protocol: str | SyncProtocol | None = None) -> Tensor:
        """[B, 2, 21] offset logits of the first and the last 14 segments of each clip."""
        video = self.prepare_frames(frames, protocol)
        wave = self.prepare_audio(audio, sr, protocol)
        if video.shape[0] != wave.shape[0]:
            raise PrismAudioError(f"{NAME}: {video.shape[0]} videos vs {wave.shape[0]} audio clips")
        return self.window_logits(self.video_features(video), self.audio_features(wave))

    def offsets(self, frames: Any, audio: Any, sr: int, protocol: str | SyncProtocol | None = None) -> Tensor:
        """[B, 2] signed offsets (s) on the grid -2..2 step 0.2: first and last 4.8 s windows."""
        return self.grid[self.logits(frames, audio, sr, protocol).argmax(-1)]

    def desync(self, frames: Any, audio: Any, sr: int, protocol: str | SyncProtocol | None = None) -> Tensor:
        """[B] mean |offset| (s) over the two windows (av-benchmark DeSync per clip)."""
        return self.offsets(frames, audio, sr, protocol).abs().mean(-1)


# --------------------------------------------------------------------------------------------------
# Files: av-benchmark end to end, and the official reward
# --------------------------------------------------------------------------------------------------
PathLike = str | os.PathLike


def _backend(backend: SynchformerDesync | PathLike) -> SynchformerDesync:
    return backend if isinstance(backend, SynchformerDesync) else SynchformerDesync(str(backend))


def read_sync_frames(path: PathLike, seconds: float | None = None) -> Tensor:
    """Native uint8 frames [T, 3, H, W] at 25 fps (FFmpeg's fps filter, as torio's decoder), the first
    `seconds` (default: the whole video)."""
    from ...io.video import FrameSpec, read_frames_multi

    return read_frames_multi(path, [FrameSpec(FPS, None)], duration=seconds)[0]


def read_sync_audio(path: PathLike) -> Tensor:
    """Mono [S] at 16 kHz as av-benchmark's SynchformerAudioDataset reads it (channel mean, then
    torchaudio's Resample)."""
    from ...io.audio import load_audio

    wave, sr = load_audio(path, channels=None)
    return _resample_16k(wave.mean(0, keepdim=True), sr)[0]


def desync_from_files(mp4_path: PathLike, wav_path: PathLike, backend: SynchformerDesync | PathLike,
                      duration: float | None = 8.0) -> float:
    """av-benchmark's DeSync of one (video, audio) pair: the mean |offset| (s) of the first and last 4.8 s.

    `duration` is av-benchmark's ``--audio_length`` (8 s): both streams are cut to it and a shorter one is an
    error (upstream skips it). ``None`` takes the audio's length (the PrismAudio paper, App. F: the video is
    truncated to the generated audio).
    """
    from ...io.video import probe_video

    b = _backend(backend)
    wave = read_sync_audio(wav_path)
    if duration is None:
        duration = wave.shape[-1] / SR
    if not (isinstance(duration, (int, float)) and duration > 0 and math.isfinite(duration)):
        raise PrismAudioError(f"{NAME}: duration must be a positive number of seconds, got {duration!r}")
    n_frames, n_samples = int(FPS * duration + 1e-6), int(SR * duration + 1e-6)
    info = probe_video(mp4_path)
    if info.duration + 0.5 / FPS < n_frames / FPS:  # half a frame of slack for container rounding
        raise PrismAudioError(f"{NAME}: video {mp4_path} lasts {info.duration:.2f} s, shorter than the {duration:g} s "
                              f"av-benchmark reads ({n_frames} frames at 25 fps)")
    if wave.shape[-1] < n_samples:
        raise PrismAudioError(f"{NAME}: audio {wav_path} lasts {wave.shape[-1] / SR:.2f} s, shorter than the "
                              f"{duration:g} s av-benchmark reads ({n_samples} samples at 16 kHz)")
    frames = read_sync_frames(mp4_path, n_frames / FPS)[:n_frames]
    video = b.prepare_frames(frames[None], "av_benchmark")
    logits = b.window_logits(b.video_features(video), b.audio_features(wave[None, :n_samples]))
    return float(b.grid[logits.argmax(-1)].abs().mean())


def official_sync_reward(backend: SynchformerDesync | PathLike, frames_or_path: Any, audio: Tensor,
                         sr: int) -> Tensor:
    """The official PrismAudio sync reward, [B] float32: (2 - |offset|) / 4 on the first 9 s.

    `frames_or_path`: NATIVE frames [B, T, 3, H, W] (or one clip [T, 3, H, W]) at 25 fps, uint8 or float
    in [0, 1]; or a video path; or one path per clip. `audio` [B, C, S] / [C, S] at `sr`. One video with B
    audio clips (a GRPO group) is decoded and encoded once and scored against each. Frames: shorter side
    256, centre crop 224 (no resize to 224); |offset| = mean over the first / last 14-segment windows.
    """
    b = _backend(backend)
    proto = PROTOCOLS["official_reward"]
    if not isinstance(audio, Tensor) or audio.dim() not in (2, 3):
        raise PrismAudioError(f"{NAME}: audio must be a torch.Tensor [B, C, S] or [C, S]")
    audio = audio[None] if audio.dim() == 2 else audio
    src = frames_or_path
    paths = [src] if isinstance(src, (str, os.PathLike)) else list(src) if isinstance(src, (list, tuple)) and all(
        isinstance(p, (str, os.PathLike)) for p in src) else None
    if paths is None:
        x = src if isinstance(src, Tensor) else torch.as_tensor(np.asarray(src))
        clips: Sequence[Any] = list(x[None] if x.dim() == 4 else x)
    n = len(clips) if paths is None else len(paths)
    if n not in (1, audio.shape[0]):
        raise PrismAudioError(f"{NAME}: {n} videos vs {audio.shape[0]} audio clips")
    if paths is not None:
        clips = [read_sync_frames(p, _video_seconds(p, proto)) for p in paths]
    vfeats = [b.video_features(b.prepare_frames(c[None], proto)) for c in clips]
    afeats = b.audio_features(b.prepare_audio(audio, sr, proto))
    logits = torch.cat([b.window_logits(vfeats[i if len(clips) > 1 else 0], afeats[i : i + 1])
                        for i in range(audio.shape[0])])
    offset = b.grid[logits.argmax(-1)].abs().mean(-1)
    return ((2.0 - offset) / 4.0).float()


def _video_seconds(path: PathLike, proto: SyncProtocol) -> float:
    from ...io.video import probe_video

    total = probe_video(path).duration
    return total if proto.seconds is None else min(total, proto.seconds)


__all__ = ["OFFSET_GRID", "PROTOCOLS", "LogMel", "SyncAudioBranch", "SyncProtocol", "SynchformerConfig",
           "SynchformerDesync", "SynchformerNet", "desync_from_files", "load_synchformer", "mel_filterbank",
           "official_sync_reward", "read_sync_audio", "read_sync_frames"]
