"""Dataclass configs, the `paper` / `mini` / `tiny` presets, and strict dict/YAML loading.

Configs are plain dataclasses so a reader sees every knob in one place; `from_dict` refuses
unknown keys so a typo in a YAML file fails loudly instead of silently using a default.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import PrismAudioError

T = TypeVar("T")


@dataclass
class DiTConfig:
    """The diffusion transformer (official names: io_channels, embed_dim, depth, num_heads, ...)."""

    io_channels: int = 64  # latent channels C
    embed_dim: int = 1024  # D
    depth: int = 24
    num_heads: int = 16  # head dim = embed_dim // num_heads (64 in every preset: partial RoPE on 32)
    cond_token_dim: int = 1024  # width of the conditioner outputs (cross-attention context)
    add_token_dim: int = 1024  # width of the video add path input
    sync_token_dim: int = 1024  # width of the sync path input
    ff_mult: int = 4  # SwiGLU hidden = ff_mult * embed_dim
    num_fourier_features: int = 128  # timestep Fourier features (embedding is [cos ; sin] = 2x this)
    keep_unused_official_params: bool = True  # empty_clip_feat / empty_sync_feat, kept for checkpoint parity
    # issue 18: a zero-initialised projection of the audio context [latents*visible; visible; keep]
    # added to the input embedding (`DiffusionTransformer.enable_audio_context`); off = official
    audio_context: bool = False


@dataclass
class ConditionerConfig:
    """Condition MLPs turning encoder features into conditioner-output tokens."""

    video_dim: int = 1024  # video encoder feature width (VideoPrism: 1024)
    text_dim: int = 1024  # text encoder hidden width (T5-Gemma L: 1024)
    sync_dim: int = 768  # sync encoder feature width (Synchformer: 768)
    output_dim: int = 1024  # conditioner output width (= DiT cond/add/sync token dims)
    sync_tokens_per_segment: int = 8  # learned position embedding per token inside a sync segment
    # "latent": resample sync tokens to the latent length N for any duration (our fix).
    # "official": int(194 * L / 216) frames, which only fits integer durations of 8-15 s.
    sync_length: str = "latent"
    keep_unused_official_params: bool = True  # sync proj_out (never called officially)


@dataclass
class VAEConfig:
    """Oobleck autoencoder (stable-audio-tools style) used as the latent pretransform."""

    audio_channels: int = 2
    channels: int = 128
    c_mults: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    strides: list[int] = field(default_factory=lambda: [2, 4, 4, 8, 8])
    latent_dim: int = 64
    use_snake: bool = True
    final_tanh: bool = False
    latent_scale: float = 1.0  # encode returns z / scale, decode multiplies by scale (official: 1)
    # The learned codec: "oobleck" (the official network) or "spectral" (`model/spectral.py`: STFT frames,
    # ConvNeXt blocks of width `channels`, `spec_depth` blocks; only the product of `strides` is used).
    codec: str = "oobleck"
    spec_n_fft: int = 512
    spec_hop: int = 128
    spec_depth: int = 4
    spec_gl_iters: int = 32  # Griffin-Lim iterations of the spectral decoder
    spec_gl_momentum: float = 0.0  # fast Griffin-Lim's momentum (0 = plain)
    # Parametric stereo (`model/stereo.py`; 0 = off, the official layout): the learned codec sees only the
    # mid signal and `stereo_bands` ILDs + one ITD per latent frame ride along as extra latent channels.
    stereo_bands: int = 0
    stereo_n_fft: int = 1024
    stereo_hop: int = 256
    stereo_max_itd: float = 16.0  # samples (1 ms at 16 kHz): the ITD search range and the latent scale
    stereo_lowest_band: float = 0.025  # lowest band centre as a fraction of Nyquist (200 Hz at 16 kHz)

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the DiT sees: the codec's `latent_dim` + the spatial parameters."""
        return self.latent_dim + (self.stereo_bands + 1 if self.stereo_bands > 0 else 0)

    @property
    def downsampling_ratio(self) -> int:
        r = 1
        for s in self.strides:
            r *= s
        return r


@dataclass
class EncoderSpec:
    """Which registered encoder to use and its constructor parameters."""

    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncodersConfig:
    video: EncoderSpec = field(default_factory=lambda: EncoderSpec("videoprism"))
    sync: EncoderSpec = field(default_factory=lambda: EncoderSpec("synchformer"))
    text: EncoderSpec = field(default_factory=lambda: EncoderSpec("t5gemma"))


DURATION_RULES = ("exact", "whole_seconds")
# The safety cap of windowed generation (`prismaudio.longform`, `generate --max-duration`): one
# pass is limited by `ModelConfig.max_duration`, a video in windows of the trained length by this.
MAX_LONG_DURATION = 600.0


@dataclass
class SamplingConfig:
    steps: int = 24
    cfg_scale: float = 5.0
    # How a video's length becomes the clip length when none is given: "exact" (the container's
    # duration), or "whole_seconds", the official demo.sh rule (ffprobe's duration truncated to an
    # integer), for parity with official outputs.
    duration_rule: str = "exact"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a PrismAudio pipeline from `config.json`."""

    preset: str = "paper"
    sample_rate: int = 44100
    duration: float = 9.0  # default clip length in seconds
    max_duration: float = 60.0
    dit: DiTConfig = field(default_factory=DiTConfig)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def latent_length(self, duration: float | None = None) -> int:
        """N = round(sample_rate / downsampling * duration) (official: round(21.533 * d))."""
        d = self.duration if duration is None else duration
        return max(1, round(self.sample_rate / self.vae.downsampling_ratio * d))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Presets


def _paper() -> ModelConfig:
    return ModelConfig()


def _mini() -> ModelConfig:
    return ModelConfig(
        preset="mini",
        sample_rate=16000,
        duration=4.0,
        dit=DiTConfig(
            io_channels=16, embed_dim=256, depth=4, num_heads=4,
            cond_token_dim=256, add_token_dim=256, sync_token_dim=256,
        ),
        conditioner=ConditionerConfig(
            video_dim=128, text_dim=384, sync_dim=128, output_dim=256, sync_tokens_per_segment=1
        ),
        vae=VAEConfig(channels=16, c_mults=[2, 4, 8, 16], strides=[4, 4, 4, 8], latent_dim=16),
        encoders=EncodersConfig(
            video=EncoderSpec("light_video", {"dim": 128, "fps": 8.0, "size": 64}),
            sync=EncoderSpec("light_sync", {"dim": 128, "fps": 25.0, "size": 64}),
            text=EncoderSpec("minilm", {}),
        ),
    )


def _tiny() -> ModelConfig:
    return ModelConfig(
        preset="tiny",
        sample_rate=16000,
        duration=1.0,
        dit=DiTConfig(
            io_channels=8, embed_dim=128, depth=2, num_heads=2,
            cond_token_dim=128, add_token_dim=128, sync_token_dim=128,
        ),
        conditioner=ConditionerConfig(
            video_dim=32, text_dim=384, sync_dim=32, output_dim=128, sync_tokens_per_segment=1
        ),
        vae=VAEConfig(channels=4, c_mults=[1, 2, 4], strides=[4, 4, 8], latent_dim=8),
        encoders=EncodersConfig(
            video=EncoderSpec("light_video", {"dim": 32, "fps": 8.0, "size": 32, "width": 8}),
            sync=EncoderSpec("light_sync", {"dim": 32, "fps": 25.0, "size": 32, "width": 8}),
            text=EncoderSpec("minilm", {}),
        ),
    )


PRESETS = {"paper": _paper, "mini": _mini, "tiny": _tiny}


def preset(name: str) -> ModelConfig:
    """A fresh `ModelConfig` for a named preset."""
    if name not in PRESETS:
        raise PrismAudioError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------
# Strict loading


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys raise `PrismAudioError`."""
    if not isinstance(data, dict):
        raise PrismAudioError(f"config{where or ''}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PrismAudioError(
            f"config{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(fields)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        tp = hints[name]
        if _is_dataclass_type(tp):
            kwargs[name] = from_dict(tp, value, f"{where}.{name}")
        else:
            kwargs[name] = _check_scalar(value, tp, f"{where}.{name}")
    return cls(**kwargs)


def _check_scalar(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _check_scalar(value, arg, where)
            except PrismAudioError:
                continue
        raise PrismAudioError(f"config{where}: {value!r} does not match {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise PrismAudioError(f"config{where}: expected null, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise PrismAudioError(f"config{where}: expected a number, got {value!r}")
    if tp in (int, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise PrismAudioError(f"config{where}: expected {tp.__name__}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise PrismAudioError(f"config{where}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_check_scalar(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise PrismAudioError(f"config{where}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is not Any:  # e.g. GRPO `rewards: dict[str, float]`
            return {k: _check_scalar(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return copy.deepcopy(value)
    return value


def model_config_from_dict(data: dict[str, Any]) -> ModelConfig:
    cfg = from_dict(ModelConfig, data)
    if cfg.sampling.duration_rule not in DURATION_RULES:
        raise PrismAudioError(f"config.sampling.duration_rule must be one of {', '.join(DURATION_RULES)}, "
                              f"got {cfg.sampling.duration_rule!r}")
    v = cfg.vae
    if v.codec not in ("oobleck", "spectral") or (v.codec == "spectral" and (
            v.downsampling_ratio % v.spec_hop or v.spec_n_fft < v.spec_hop or v.spec_depth < 1)):
        raise PrismAudioError("config.vae: codec must be oobleck or spectral (spectral: spec_hop divides the "
                              "downsampling ratio, spec_n_fft >= spec_hop, spec_depth >= 1)")
    if v.stereo_bands < 0 or (v.stereo_bands and (v.audio_channels != 2 or v.stereo_max_itd <= 0
                                                  or v.downsampling_ratio % v.stereo_hop)):
        raise PrismAudioError("config.vae: parametric stereo needs stereo_bands >= 1, audio_channels 2, "
                              "stereo_max_itd > 0 and a stereo_hop that divides the downsampling ratio")
    if cfg.dit.io_channels != v.latent_channels:
        raise PrismAudioError(f"config: dit.io_channels {cfg.dit.io_channels} != the VAE's latent channels "
                              f"{v.latent_channels} (latent_dim {v.latent_dim}"
                              + (f" + {v.stereo_bands + 1} spatial)" if v.stereo_bands else ")"))
    return cfg


def read_config_file(path: str | Path, what: str = "config", yaml_syntax: bool = False) -> Any:
    """The parsed content of a config file (YAML for .yaml / .yml or when `yaml_syntax`, else
    JSON), or one `PrismAudioError` naming the file (unreadable, unparsable)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PrismAudioError(f"{what} {path} is not UTF-8 text") from None
    except OSError as e:
        raise PrismAudioError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        if yaml_syntax or path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad-input error
        mark = getattr(e, "problem_mark", None)
        why = f"{getattr(e, 'problem', None) or e} at line {mark.line + 1}, column {mark.column + 1}" if mark else e
        raise PrismAudioError(f"cannot parse {what} {path}: {why}") from None


def load_model_config(path: str | Path) -> ModelConfig:
    """Read `config.json` (or YAML) into a validated `ModelConfig`."""
    return model_config_from_dict(read_config_file(path))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise PrismAudioError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node:
                raise PrismAudioError(f"override {key!r}: unknown key {p!r}")
            node = node[p]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise PrismAudioError(f"override {key!r}: unknown key {parts[-1]!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    return data
