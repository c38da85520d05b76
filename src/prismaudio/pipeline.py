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
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .context import AudioContext, ContextLatents, frame_masks, splice
from .config import DURATION_RULES, EncoderSpec, ModelConfig, load_model_config, preset
from .encoders.base import Encoder, FrozenEncoder, TextTruncation, build_encoder
from .errors import PrismAudioError
from .io.video import num_samples, probe_video, read_frames_multi
from .io.weights import contiguous_state, load_strict
from .model.conditioning import Conditioner, ConditionTokens
from .model.dit import DiffusionTransformer
from .model.vae import OobleckVAE
from .sampling import guided_velocity, inference_timesteps, replace_known, sample_ode

if TYPE_CHECKING:
    from .cot import CoT, Planner

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
    """What `generate` made: `audio` is the first sample, `samples` all of them (`num_samples`)."""

    audio: Tensor  # [2, S] float32 in [-1, 1]: samples[0]
    sample_rate: int
    latents: Tensor  # [K, C, N]
    duration: float
    cot: str  # the text the audio was conditioned on (the plan rendered in `cot_style`)
    samples: Tensor | None = None  # [K, 2, S]; sample k was drawn with seed seeds[k]
    seeds: tuple[int, ...] = ()
    plan: "CoT | None" = None  # the four-part plan (planned, or the CoT given), None for raw text
    video: Path | None = None
    truncation: TextTruncation | None = None  # what the text encoder's token limit dropped
    negative_cot: str | None = None

    def __post_init__(self) -> None:
        if self.samples is None:
            self.samples = self.audio.unsqueeze(0)

    def save_wav(self, path: str | os.PathLike, index: int = 0) -> Path:
        """Sample `index` as a WAV (the writer of `io.audio`)."""
        from .io.audio import save_wav

        save_wav(path, self._sample(index), self.sample_rate)
        return Path(path)

    def save_video(self, path: str | os.PathLike, index: int = 0, video: str | os.PathLike | None = None) -> Path:
        """The input video (or `video`) with sample `index` as its sound track (`io.video.mux_audio`)."""
        from .io.video import mux_audio

        src = video if video is not None else self.video
        if src is None:
            raise PrismAudioError("save_video needs the source video: this result was not made from a file")
        mux_audio(src, self._sample(index), self.sample_rate, path)
        return Path(path)

    def _sample(self, index: int) -> Tensor:
        assert self.samples is not None
        if not -len(self.samples) <= index < len(self.samples):
            raise PrismAudioError(f"sample {index} does not exist: this result holds {len(self.samples)}")
        return self.samples[index]


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
    def from_preset(cls, name: str, seed: int = 0, device: str | torch.device | None = None,
                    dtype: str | torch.dtype | None = None) -> "PrismAudioPipeline":
        """Randomly initialised weights of a preset (`paper`, `mini`, `tiny`), placed as `place` does."""
        return cls.from_config(preset(name), seed=seed).place(device, dtype)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        dtype: str | torch.dtype | None = None) -> "PrismAudioPipeline":
        """Load a checkpoint directory written by `save_pretrained` (or `convert-official`), then
        `place` it: `device` "cuda" / "cuda:N" / "cpu", `dtype` of the DiT ("fp32", "bf16", "fp16"
        or a torch dtype); both default to staying as loaded (CPU, float32)."""
        return cls._load_dir(path).place(device, dtype)

    @classmethod
    def _load_dir(cls, path: str | os.PathLike) -> "PrismAudioPipeline":
        root = Path(path)
        if not root.is_dir():
            raise PrismAudioError(f"model directory {root} does not exist or is not a directory")
        if not (root / CONFIG_FILE).is_file():
            raise PrismAudioError(f"cannot read config {root / CONFIG_FILE}: {root} is not a PrismAudio model "
                                  "directory (an official checkpoint is converted with `prismaudio convert-official`)")
        config = load_model_config(root / CONFIG_FILE)
        _resolve_encoder_paths(config, root)
        add_context = config.dit.audio_context and not _has_key(root / MODEL_FILE, "dit.ctx_proj.weight")
        if add_context:  # a context-free checkpoint opened for context training / use: strict-load it as it is
            config.dit.audio_context = False
        pipe = cls.from_config(config)
        parts: dict[str, nn.Module] = {MODEL_FILE: _ModelPart(pipe.dit, pipe.conditioner), VAE_FILE: pipe.vae}
        encoders = _EncodersPart(pipe.video_encoder, pipe.sync_encoder, config)
        if _state_size(encoders):
            parts[ENCODERS_FILE] = encoders
        for fname, module in parts.items():
            load_strict(module, root / fname, f"the {config.preset!r} config")
        if add_context:
            pipe.dit.enable_audio_context()
            warnings.warn(f"{root / MODEL_FILE} has no audio-context projection (dit.ctx_proj) although its config "
                          "sets dit.audio_context: added, initialised to zero (the model ignores the context "
                          "until it is trained)", stacklevel=3)
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

    def latent_frames(self, duration: float) -> int:
        """Latent length N for `duration` s: rounded *up* to whole latent hops (the `mini` hop is
        512 / 16 kHz = 32 ms), so the decoded audio is never shorter than the clip and `decode` trims
        it to the exact sample count. The official `sync_length` keeps the official round(), which
        its sync interpolation needs (official_network.md: N = round(21.533 d))."""
        if self.config.conditioner.sync_length == "official":
            return self.config.latent_length(duration)
        hop = self.config.vae.downsampling_ratio
        return max(1, math.ceil(round(duration * self.config.sample_rate, 6) / hop))

    def condition(self, feats: Features) -> ConditionTokens:
        return self.conditioner(feats.video, feats.text, feats.sync, latent_length=self.latent_frames(feats.duration))

    def negative_condition(self, cond: ConditionTokens, text: Tensor) -> tuple[ConditionTokens, ConditionTokens]:
        """(cond, uncond) for CFG with a negative CoT: the unconditional branch reads the negative
        text's tokens where plain CFG has zeros (video and sync stay zero, as in plain CFG). Both
        cross-attention contexts are zero-padded to one length, so they batch together."""
        neg = self.conditioner.text(text.to(self.device, cond.cross.dtype))
        tv = cond.add.shape[1]
        uncond_cross = torch.cat([torch.zeros_like(cond.cross[:, :tv]), neg], dim=1)
        length = max(cond.cross.shape[1], uncond_cross.shape[1])
        pad = lambda x: nn.functional.pad(x, (0, 0, 0, length - x.shape[1]))  # noqa: E731
        cond = ConditionTokens(pad(cond.cross), cond.add, cond.sync, cond.audio)
        zeros = cond.zeros_like()
        return cond, ConditionTokens(pad(uncond_cross), zeros.add, zeros.sync, cond.audio)

    # ---------------------------------------------------------------- planning
    def plan_cot(self, video: str | os.PathLike, planner: "str | Planner" = "offline", caption: str | None = None,
                 planner_options: dict[str, Any] | None = None) -> "CoT":
        """The planner's four-part CoT of `video` (`generate` calls this when no CoT is given).
        Planners built by name are kept, so a batch builds each one once."""
        return self._planner(planner, planner_options).plan(video, caption=caption)

    def _planner(self, planner: "str | Planner", options: dict[str, Any] | None) -> "Planner":
        from .cot import Planner, build_planner

        if isinstance(planner, Planner):
            return planner
        key = (str(planner), tuple(sorted((k, repr(v)) for k, v in (options or {}).items())))
        cache = self.__dict__.setdefault("_planners", {})
        if key not in cache:
            cache[key] = build_planner(str(planner), **(options or {}))
        return cache[key]

    # ---------------------------------------------------------------- generation
    def forward(self, video: str | os.PathLike, **kwargs: Any) -> GenerationResult:
        """`pipe(video, ...)` is `pipe.generate(video, ...)`."""
        return self.generate(video, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        video: str | os.PathLike,
        cot: "str | CoT | None" = None,
        duration: float | None = None,
        seed: int = 0,
        steps: int | None = None,
        cfg_scale: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        offload: bool | None = None,
        *,
        num_samples: int = 1,
        negative_cot: "str | CoT | None" = None,
        planner: "str | Planner | None" = "offline",
        planner_options: dict[str, Any] | None = None,
        caption: str | None = None,
        cot_style: str = "multi",
        status: Callable[[str], None] | None = None,
        context: AudioContext | None = None,
        context_replace: bool = True,
    ) -> GenerationResult:
        """Sound for `video`: the same behaviour as `prismaudio generate`. Same seed -> bit-identical
        audio on CPU.

        `cot`: a `CoT` (rendered in `cot_style`, default the paper's `multi`) or text used as given
        ("" = unconditioned text). Without one, `planner` plans it (default the offline planner, as
        the CLI; `planner_options` are its parameters, `caption` guides it); `planner=None` means
        no CoT. A CoT longer than the text encoder reads is cut there, and one warning says what was
        dropped (`result.truncation`). `negative_cot` (a "negative prompt") replaces the zeros of
        CFG's unconditional branch by its text tokens. `num_samples` samples come in one batch, sample k
        from seed `seed + k` (the same noise as a single call with that seed; the audio equal up to
        batched float rounding). Duration defaults to the video's (internally rounded up to whole
        latent hops, then trimmed to the exact sample count); the official peak normalisation is
        replaced by a clip guard (audio is only scaled down when it would clip). `offload` (default
        `self.offload_encoders`) frees the frozen encoders once their features exist, before the DiT
        runs. `status` receives one line per slow stage (planning, encoding).

        `context` (an `AudioContext`, issue 18): existing audio to continue / edit. It is checked
        against the clip before any work, VAE-encoded, and conditions the DiT (a model with
        `dit.audio_context`); with `context_replace` the kept latent frames also follow the context's
        own flow path at every step (`sampling.replace_known`; the only use of the context for a
        model without `audio_context`). The output equals `context.audio` exactly on `keep`
        samples farther than `context.crossfade_s` from a generated one (`context.splice`).
        """
        from .cot import CoT

        steps = self.config.sampling.steps if steps is None else int(steps)
        if steps <= 0:
            raise PrismAudioError(f"steps must be a positive integer, got {steps}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise PrismAudioError(f"num_samples must be a positive integer, got {num_samples!r}")
        cfg = self.config.sampling.cfg_scale if cfg_scale is None else float(cfg_scale)
        say = status or (lambda _m: None)
        if context is not None:  # refuse a context that does not fit before planning / encoding
            duration = self._check_duration(self.clip_duration(probe_video(video).duration) if duration is None
                                            else duration)
            context.validate(self.config.sample_rate, round(duration * self.config.sample_rate),
                             self.config.vae.audio_channels)
            if not self.config.dit.audio_context:
                if not context_replace:
                    raise PrismAudioError("this model has no audio-context conditioning (dit.audio_context is false): "
                                          "with context_replace off the context would be ignored")
                say("audio context: this model was not trained with it; the kept frames are imposed at every "
                    "step (RePaint-style) and the generated region does not hear the context")
        plan: CoT | None = cot if isinstance(cot, CoT) else None
        if cot is None and planner is not None:
            name = planner if isinstance(planner, str) else type(planner).__name__
            built = self._planner(planner, planner_options)
            guess = getattr(built, "estimate_seconds", lambda _v: None)(video)
            eta = f", about {guess:.0f} s" if guess is not None and guess >= 10 else ""
            say(f"planning the chain-of-thought ({name} planner{eta}) ...")
            t0 = time.perf_counter()
            plan = self.plan_cot(video, built, caption)
            say(f"planned in {time.perf_counter() - t0:.1f} s")
        text = plan.render(cot_style) if plan is not None else ("" if cot is None else str(cot))
        negative = negative_cot.render(cot_style) if isinstance(negative_cot, CoT) else negative_cot
        self._require_encoders()
        truncation = self.text_encoder.truncation(text) if text else None
        if truncation is not None:
            warnings.warn(truncation.message(), stacklevel=2)
        if negative:
            cut = self.text_encoder.truncation(negative)
            if cut is not None:
                warnings.warn(cut.message("negative CoT"), stacklevel=2)
        say("encoding the video and the CoT ...")
        feats = self.extract_features(video, text, duration)
        neg_text = self.text_encoder.encode_text([negative])[0] if negative is not None else None
        if self.offload_encoders if offload is None else offload:
            self.release_encoders()
        cond = self.condition(feats)
        uncond = None
        if neg_text is not None:
            cond, uncond = self.negative_condition(cond, neg_text)
        seeds = tuple(int(seed) + k for k in range(num_samples))
        latents = self.sample_latents(cond, seed=seeds, steps=steps, cfg_scale=cfg, progress=progress, uncond=uncond,
                                      context=context, context_replace=context_replace)
        audio = self.decode(latents, feats.duration)
        if context is not None:
            audio = splice(audio, context, self.config.sample_rate)
        return GenerationResult(audio[0], self.config.sample_rate, latents, feats.duration, text, samples=audio,
                                seeds=seeds, plan=plan, video=Path(video), truncation=truncation,
                                negative_cot=negative)

    def sample_latents(
        self,
        cond: ConditionTokens,
        seed: int | tuple[int, ...] = 0,
        steps: int = 24,
        cfg_scale: float = 5.0,
        progress: Callable[[int, int], None] | None = None,
        uncond: ConditionTokens | None = None,
        context: AudioContext | ContextLatents | None = None,
        context_replace: bool = True,
    ) -> Tensor:
        """Latents [K, C, N] for a condition batch of 1 (K = the number of seeds, one noise draw
        each) or of K; `uncond` replaces CFG's zero branch (`negative_condition`).

        `context` (an `AudioContext`, or one already at latent resolution, batch 1 or K) enters
        the DiT as `cond.audio` in both CFG branches when the model has `dit.audio_context`;
        `context_replace` imposes its kept frames on the state at every step (`replace_known`).
        None leaves everything as before, bit for bit."""
        n = cond.sync.shape[1] if cond.sync is not None else None
        if n is None:
            raise PrismAudioError("the sync condition is required to know the latent length")
        seeds = (seed,) if isinstance(seed, int) else tuple(seed)
        if cond.batch_size not in (1, len(seeds)) and len(seeds) != 1:
            raise PrismAudioError(f"{len(seeds)} seeds for a condition batch of {cond.batch_size}")
        shape = (cond.batch_size if len(seeds) == 1 else 1, self.config.dit.io_channels, n)
        # the noise is drawn on the CPU in float32 whatever the device / dtype (same seed, same noise),
        # and the Euler state stays float32: only the network runs in `self.dtype`
        noise = torch.cat([torch.randn(*shape, generator=torch.Generator(device="cpu").manual_seed(int(s)))
                           for s in seeds]).to(self.device)
        constraint = None
        if context is not None:
            ctx = (context if isinstance(context, ContextLatents) else self.encode_context(context, n)).to(self.device)
            if ctx.latents.shape[1:] != noise.shape[1:] or ctx.latents.shape[0] not in (1, noise.shape[0]):
                raise PrismAudioError(f"context latents {tuple(ctx.latents.shape)} do not fit the sample {tuple(noise.shape)}")
            if ctx.latents.shape[0] > cond.batch_size == 1:  # one clip's conditions, one context per seed
                cond = cond.repeat_interleave(ctx.latents.shape[0])
                uncond = None if uncond is None else uncond.repeat_interleave(ctx.latents.shape[0])
            if self.config.dit.audio_context:
                cond = cond.with_audio(ctx.condition().to(cond.cross.dtype))
                if uncond is not None:
                    uncond = uncond.with_audio(cond.audio)
            if context_replace:
                constraint = replace_known(ctx.latents, ctx.keep.unsqueeze(1), noise)
        fn = guided_velocity(_Float32Velocity(self.dit), cond, cfg_scale, uncond=uncond)
        return sample_ode(fn, noise, inference_timesteps(steps).to(self.device), progress=progress,
                          constraint=constraint)

    @torch.no_grad()
    def encode_context(self, context: AudioContext, num_frames: int) -> ContextLatents:
        """The context at latent resolution: its audio's VAE posterior mean (/ latent_scale) over
        `num_frames` frames (zero-padded to whole hops) and the frame masks (`context.frame_masks`)."""
        hop = self.config.vae.downsampling_ratio
        context.validate(self.config.sample_rate, context.audio.shape[-1], self.config.vae.audio_channels)
        audio = context.audio.float()
        total = num_frames * hop
        audio = audio[:, :total] if audio.shape[-1] >= total else nn.functional.pad(audio, (0, total - audio.shape[-1]))
        vae_dtype = next(self.vae.parameters()).dtype
        dev = next(self.vae.parameters()).device
        z = self.vae.encode(audio.unsqueeze(0).to(dev, vae_dtype), sample=False).float()[..., :num_frames]
        keep, visible = frame_masks(context.keep.cpu(), context.visible_mask.cpu(), hop, num_frames)
        return ContextLatents(z, keep.unsqueeze(0).to(z.device), visible.unsqueeze(0).to(z.device))

    def decode(self, latents: Tensor, duration: float) -> Tensor:
        """Waveforms [K, 2, S] trimmed to exactly round(duration * sample_rate) samples."""
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

    def place(self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None) -> "PrismAudioPipeline":
        """`to(device, dtype)` with what cannot run here refused in one line: a CUDA device that is
        not visible, fp16 on the CPU (emulated, slow), bf16 on a GPU without it. None keeps as is."""
        dev = None
        if device is not None:
            try:
                dev = torch.device(device)
            except (RuntimeError, TypeError):
                raise PrismAudioError(f"device {device!r} is not a device (cuda, cuda:N or cpu)") from None
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise PrismAudioError(f"device {device!r}: no CUDA GPU is visible to this PyTorch build; use 'cpu'")
            if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
                raise PrismAudioError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
            if dev.type not in ("cuda", "cpu"):
                raise PrismAudioError(f"device {device!r}: only cuda and cpu are supported")
        dt = None
        if dtype is not None:
            dt = INFERENCE_DTYPES.get(dtype, None) if isinstance(dtype, str) else dtype
            if not isinstance(dt, torch.dtype):
                raise PrismAudioError(f"dtype {dtype!r}: choose one of {', '.join(INFERENCE_DTYPES)} or a torch dtype")
            where = dev if dev is not None else self.device
            if where.type == "cpu" and dt == torch.float16:
                raise PrismAudioError("dtype fp16 is not supported on the CPU (slow, emulated half matmuls); "
                                      "use bf16 or fp32 there, or a CUDA device")
            if where.type == "cuda" and dt == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                raise PrismAudioError(f"dtype bf16: {torch.cuda.get_device_name(where)} has no bf16 support")
        if dev is None and dt is None:
            return self
        return self.to(*(a for a in (dev, dt) if a is not None))

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

    def generate_long(self, video: str | os.PathLike, **kwargs: Any) -> Any:
        """A video longer than the trained clip, in overlapping windows (`prismaudio.longform.generate_long`)."""
        from .longform import generate_long

        return generate_long(self, video, **kwargs)

    def _check_duration(self, duration: float) -> float:
        if not duration > 0:
            raise PrismAudioError(f"duration must be > 0 s, got {duration:g}")
        if duration > self.config.max_duration:
            raise PrismAudioError(f"duration {duration:g} s exceeds the maximum of {self.config.max_duration:g} s "
                                  "for one pass; pipe.generate_long generates long videos in windows")
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


def _has_key(file: Path, key: str) -> bool:
    """Whether a safetensors file holds `key` (header only; an unreadable file answers True so
    that the strict load reports it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return key in f.keys()
    except Exception:  # noqa: BLE001 - the strict load right after says what is wrong
        return True


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
