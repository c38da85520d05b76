"""`PrismAudioPipeline`: video (+ CoT) -> stereo audio, and the checkpoint directory format.

A checkpoint is a directory holding `config.json` (a `ModelConfig`) and safetensors files:
`model.safetensors` (the DiT under `dit.` and the condition MLPs under `conditioner.`),
`vae.safetensors` (the Oobleck autoencoder) and `encoders.safetensors` (trainable built-in
encoders, under `video.` / `sync.`). Frozen pretrained encoders (MiniLM, T5-Gemma, ...) are loaded
from their own location and never copied into our files. No pickle anywhere.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .config import DURATION_RULES, EncoderSpec, ModelConfig, load_model_config, preset
from .encoders.base import Encoder, FrozenEncoder, build_encoder
from .errors import PrismAudioError
from .io.video import num_samples, probe_video, read_frames_multi
from .io.weights import contiguous_state, load_strict
from .model.conditioning import Conditioner, ConditionTokens
from .model.dit import DiffusionTransformer
from .model.vae import OobleckVAE
from .sampling import guided_velocity, inference_timesteps, sample_ode

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
VAE_FILE = "vae.safetensors"
ENCODERS_FILE = "encoders.safetensors"
# `--dtype` names -> the dtype the DiT and the condition MLPs compute in (the VAE stays float32)
INFERENCE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Features:
    """Raw encoder features for one clip (batch of 1), before the condition MLPs."""

    video: Tensor  # [1, Tv, Dv]
    sync: Tensor  # [1, Ts, Ds]
    text: Tensor  # [1, Lt, Dt]
    duration: float


@dataclass
class GenerationResult:
    audio: Tensor  # [2, S] float32 in [-1, 1]
    sample_rate: int
    latents: Tensor  # [1, C, N]
    duration: float
    cot: str


class PrismAudioPipeline(nn.Module):
    """Encoders -> condition MLPs -> DiT + sampler -> VAE decode."""

    def __init__(
        self,
        config: ModelConfig,
        dit: DiffusionTransformer,
        conditioner: Conditioner,
        vae: OobleckVAE,
        video_encoder: Encoder | str,
        sync_encoder: Encoder | str,
        text_encoder: Encoder | str,
    ) -> None:
        """Each encoder is a module, or a string saying why it is unavailable."""
        super().__init__()
        self.config = config
        self.dit = dit
        self.conditioner = conditioner
        self.vae = vae
        self.video_encoder = video_encoder
        self.sync_encoder = sync_encoder
        self.text_encoder = text_encoder
        self.offload_encoders = False  # `generate` releases the frozen encoders after use (`release_encoders`)

    # ---------------------------------------------------------------- construction / checkpoints
    @classmethod
    def from_config(cls, config: ModelConfig, seed: int = 0) -> "PrismAudioPipeline":
        """Freshly initialised weights (official init), drawn from a seeded generator."""
        with _seeded(seed):
            pipe = cls(
                config,
                DiffusionTransformer(config.dit),
                Conditioner(config.conditioner),
                OobleckVAE(config.vae),
                _build_if_available(config.encoders.video),
                _build_if_available(config.encoders.sync),
                _build_if_available(config.encoders.text),
            )
        return pipe.eval()

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> "PrismAudioPipeline":
        return cls.from_config(preset(name), seed=seed)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "PrismAudioPipeline":
        """Load a checkpoint directory written by `save_pretrained` (or `convert-official`)."""
        root = Path(path)
        if not root.is_dir():
            raise PrismAudioError(f"model directory {root} does not exist or is not a directory")
        if not (root / CONFIG_FILE).is_file():
            raise PrismAudioError(f"cannot read config {root / CONFIG_FILE}: {root} is not a PrismAudio model "
                                  "directory (an official checkpoint is converted with `prismaudio convert-official`)")
        config = load_model_config(root / CONFIG_FILE)
        _resolve_encoder_paths(config, root)
        pipe = cls.from_config(config)
        parts: dict[str, nn.Module] = {MODEL_FILE: _ModelPart(pipe.dit, pipe.conditioner), VAE_FILE: pipe.vae}
        encoders = _EncodersPart(pipe.video_encoder, pipe.sync_encoder, config)
        if _state_size(encoders):
            parts[ENCODERS_FILE] = encoders
        for fname, module in parts.items():
            load_strict(module, root / fname, f"the {config.preset!r} config")
        return pipe.eval()

    def save_pretrained(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        """Write config + safetensors atomically: a crash mid-save leaves the old directory intact.

        `dtype` (e.g. torch.float16) stores the floating-point weights at that precision, to ship a
        small checkpoint; `from_pretrained` casts them back to the modules' float32.
        """
        root = Path(path)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        try:
            (tmp / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=1) + "\n")
            save_file(contiguous_state(_ModelPart(self.dit, self.conditioner).state_dict(), dtype), tmp / MODEL_FILE)
            save_file(contiguous_state(self.vae.state_dict(), dtype), tmp / VAE_FILE)
            enc = _EncodersPart(self.video_encoder, self.sync_encoder, self.config).state_dict()
            if enc:
                save_file(contiguous_state(enc, dtype), tmp / ENCODERS_FILE)
            if root.exists():
                old = root.with_name(f".{root.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(root, old)
                os.replace(tmp, root)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def set_encoder(self, modality: str, spec: EncoderSpec) -> None:
        """Swap the video / sync / text encoder (e.g. a real adapter for feature extraction)."""
        if modality not in ("video", "sync", "text"):
            raise PrismAudioError(f"unknown encoder slot {modality!r} (video, sync or text)")
        setattr(self.config.encoders, modality, spec)
        setattr(self, f"{modality}_encoder", build_encoder(spec, modality=modality))

    # ---------------------------------------------------------------- conditioning
    @torch.no_grad()
    def extract_features(self, video: str | os.PathLike, cot: str = "", duration: float | None = None) -> Features:
        """Decode the video once, run the video / sync / text encoders (batch of 1)."""
        self._require_encoders()
        duration = self._check_duration(self.clip_duration(probe_video(video).duration) if duration is None else duration)
        rates = [self.video_encoder.frame_spec(), self.sync_encoder.frame_spec()]
        try:  # refuse a clip an encoder cannot take (e.g. shorter than one Synchformer segment) before decoding
            for enc, spec in zip((self.video_encoder, self.sync_encoder), rates):
                enc.output_length(num_samples(spec.fps, duration))
        except PrismAudioError as e:
            raise PrismAudioError(f"{video}: {e}") from None
        frames_v, frames_s = read_frames_multi(video, rates, duration=duration)
        dev = self.device
        v = self.video_encoder(frames_v.unsqueeze(0).to(dev))
        s = self.sync_encoder(frames_s.unsqueeze(0).to(dev))
        text, _ = self.text_encoder.encode_text([cot])
        return Features(video=v, sync=s, text=text.to(dev), duration=duration)

    def clip_duration(self, video_duration: float) -> float:
        """The clip length for a video of `video_duration` s under `config.sampling.duration_rule`."""
        rule = self.config.sampling.duration_rule
        if rule == "exact":
            return float(video_duration)
        if rule == "whole_seconds":
            whole = float(math.floor(video_duration))
            if whole <= 0:
                raise PrismAudioError(f"the whole-seconds duration rule truncates this {video_duration:.3f} s video "
                                      "to 0 s; pass --duration or use the exact rule")
            return whole
        raise PrismAudioError(f"unknown sampling.duration_rule {rule!r} (choose from {', '.join(DURATION_RULES)})")

    def condition(self, feats: Features) -> ConditionTokens:
        n = self.config.latent_length(feats.duration)
        return self.conditioner(feats.video, feats.text, feats.sync, latent_length=n)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        video: str | os.PathLike,
        cot: str | None = None,
        duration: float | None = None,
        seed: int = 0,
        steps: int | None = None,
        cfg_scale: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        offload: bool | None = None,
    ) -> GenerationResult:
        """Sound for `video`. Same seed -> bit-identical audio on CPU.

        `cot` is the chain-of-thought plan (any text; empty = unconditioned text). Duration
        defaults to the video's; the official predict path's peak normalisation is replaced by a
        clip guard (audio is only scaled down when it would clip), so loudness is preserved.
        `offload` (default: `self.offload_encoders`) frees the frozen encoders once their features
        exist, before the DiT runs (peak memory: README "Use the released weights").
        """
        steps = self.config.sampling.steps if steps is None else int(steps)
        if steps <= 0:
            raise PrismAudioError(f"steps must be a positive integer, got {steps}")
        cfg = self.config.sampling.cfg_scale if cfg_scale is None else float(cfg_scale)
        cot = "" if cot is None else cot
        feats = self.extract_features(video, cot, duration)
        if self.offload_encoders if offload is None else offload:
            self.release_encoders()
        cond = self.condition(feats)
        latents = self.sample_latents(cond, seed=seed, steps=steps, cfg_scale=cfg, progress=progress)
        audio = self.decode(latents, feats.duration)[0]
        return GenerationResult(audio, self.config.sample_rate, latents, feats.duration, cot)

    def sample_latents(
        self,
        cond: ConditionTokens,
        seed: int = 0,
        steps: int = 24,
        cfg_scale: float = 5.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        n = cond.sync.shape[1] if cond.sync is not None else None
        if n is None:
            raise PrismAudioError("the sync condition is required to know the latent length")
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(cond.batch_size, self.config.dit.io_channels, n, generator=gen).to(self.device)
        # the noise is drawn on the CPU in float32 whatever the device / dtype (same seed, same noise),
        # and the Euler state stays float32: only the network runs in `self.dtype`
        fn = guided_velocity(_Float32Velocity(self.dit), cond, cfg_scale)
        return sample_ode(fn, noise, inference_timesteps(steps).to(self.device), progress=progress)

    def decode(self, latents: Tensor, duration: float) -> Tensor:
        audio = self.vae.decode(latents.to(next(self.vae.parameters()).dtype))
        audio = audio[..., : round(duration * self.config.sample_rate)]
        peak = audio.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1.0)
        return (audio / peak).clamp(-1.0, 1.0).float().cpu()

    # ---------------------------------------------------------------- device / dtype / offload
    def to(self, *args, **kwargs) -> "PrismAudioPipeline":  # type: ignore[override]
        """`nn.Module.to` with the diffusers meaning of a dtype: `pipe.to("cuda", torch.bfloat16)`.

        The device applies to everything. A floating dtype applies to the DiT and the condition
        MLPs only (the compute-heavy part): the VAE stays float32 because its Snake activations
        (sin² of e^α·x) and 2048x upsampling were not measured safe in half precision, and frozen
        encoders keep the dtype their own spec asks for (their outputs are cast on entry).
        """
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and not dtype.is_floating_point:
            raise PrismAudioError(f"the pipeline computes in a floating dtype, not {dtype}")
        if device is not None:
            super().to(device, non_blocking=non_blocking)
        if dtype is not None:
            self.dit.to(dtype)
            self.conditioner.to(dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the DiT (and the condition MLPs) compute in."""
        return next(self.dit.parameters()).dtype

    def release_encoders(self) -> None:
        """Free the frozen pretrained encoders' weights (they reload lazily on the next clip).

        With `offload_encoders` set, `generate` calls this once the features are computed, so the
        encoders and the DiT + VAE are never resident on the accelerator at the same time for
        long; trainable built-in encoders are tiny and part of our checkpoint, so they stay.
        """
        import gc

        for enc in (self.video_encoder, self.sync_encoder, self.text_encoder):
            if isinstance(enc, FrozenEncoder) and enc.loaded:
                object.__setattr__(enc, "_loaded", None)  # FrozenEncoder keeps its model outside children
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---------------------------------------------------------------- helpers
    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    def _require_encoders(self) -> None:
        specs = self.config.encoders
        for spec, enc in ((specs.video, self.video_encoder), (specs.sync, self.sync_encoder),
                          (specs.text, self.text_encoder)):
            if isinstance(enc, str):
                from .model.official import encoder_flag_hint

                slot = next(s for s in ("video", "sync", "text") if getattr(specs, s) is spec)
                raise PrismAudioError(f"the {slot} encoder {spec.name!r} is not available: {enc}; "
                                      f"{encoder_flag_hint(slot, spec.name)}")

    def _check_duration(self, duration: float) -> float:
        if not duration > 0:
            raise PrismAudioError(f"duration must be > 0 s, got {duration:g}")
        if duration > self.config.max_duration:
            raise PrismAudioError(f"duration {duration:g} s exceeds the maximum of {self.config.max_duration:g} s")
        return float(duration)


def _resolve_encoder_paths(config: ModelConfig, root: Path) -> None:
    """A relative encoder `path` in config.json names a file inside the model directory
    (`convert-official` places the encoders there), so the directory can be moved as a whole;
    one that does not exist there keeps its old meaning (relative to the working directory)."""
    for slot in ("video", "sync", "text"):
        params = getattr(config.encoders, slot).params
        value = params.get("path")
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            inside = root / value
            if inside.exists():
                params["path"] = str(inside.resolve())


def _build_if_available(spec: EncoderSpec) -> Encoder | str:
    """Build an encoder, or return why it cannot be built here (an adapter that needs a local
    checkpoint the config does not name, an unknown name), so a checkpoint still loads, e.g. to
    sample from precomputed features; using the missing encoder then raises that reason."""
    try:
        return build_encoder(spec)
    except PrismAudioError as e:
        return str(e)


class _Float32Velocity(nn.Module):
    """The DiT seen by the sampler with a float32 velocity, so that CFG's v_u + s·(v_c - v_u) and the
    Euler update are float32 when the network computes in bf16 / fp16 (identity in float32)."""

    def __init__(self, dit: DiffusionTransformer) -> None:
        super().__init__()
        self.dit = dit

    def prepare(self, cond: ConditionTokens, n: int):
        return self.dit.prepare(cond, n)

    def forward(self, x: Tensor, t: Tensor, cond) -> Tensor:
        return self.dit(x, t, cond).float()


class _ModelPart(nn.Module):
    """Names the DiT + conditioner pair so one file holds both under `dit.` / `conditioner.`."""

    def __init__(self, dit: nn.Module, conditioner: nn.Module) -> None:
        super().__init__()
        self.dit = dit
        self.conditioner = conditioner


class _EncodersPart(nn.Module):
    """The built-in encoders' weights, saved under `video.` / `sync.`. Skipped: absent encoders and
    those that load their own checkpoint (a `path` in their spec: VideoPrism, Synchformer, CLIP),
    which are never copied into our files."""

    def __init__(self, video: nn.Module | str, sync: nn.Module | str, config: ModelConfig) -> None:
        super().__init__()
        if isinstance(video, nn.Module) and "path" not in config.encoders.video.params:
            self.video = video
        if isinstance(sync, nn.Module) and "path" not in config.encoders.sync.params:
            self.sync = sync


def _state_size(module: nn.Module) -> int:
    return len(module.state_dict())


class _seeded:
    """Context manager: deterministic parameter init without touching the caller's global RNG."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.random.set_rng_state(self._state)
