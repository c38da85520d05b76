"""Stages 1 (foundation) and 2 (CoT fine-tune): rectified flow on frozen-VAE latents.

From a manifest, the DiT, the condition MLPs and the light video / sync encoders are trained
jointly (they see uint8 frames from memory, so the encoders learn); the VAE and the text encoder
stay frozen, their outputs precomputed once by `train/data.py`. From extracted features
(`data.features`, the official recipe: frozen encoders, features extracted once), the encoders'
outputs are fixed in the files, so the encoders are frozen and only the DiT and the condition
MLPs train. The two stages differ only in the text: the caption (foundation) or the CoT rendered
per `cot_variant` (cot).

With a `context:` block (`context.enabled`, issue 18) either stage also trains the audio-context
condition: every item draws one task (`sample_context_tasks`): none (context dropped), inpaint,
extend, add or remove, the last two from the corpus re-rendered without one source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..context import ContextLatents, context_condition
from ..flow import flow_matching_loss
from ..io.audio import save_wav
from ..io.spectrogram import save_spectrogram_png
from ..model.conditioning import ConditionTokens, frames_to_conditions
from ..pipeline import PrismAudioPipeline
from .config import CONTEXT_TASKS, ContextTrainConfig, TrainConfig
from .data import FeatureClips, FlowClips, build_feature_clips, build_flow_clips, collate_features, collate_flow, load_rows

DEMO_CLIPS = 2


TASKS = ("none",) + CONTEXT_TASKS  # task ids 0..4 of `sample_context_tasks`


@dataclass
class ContextBatch:
    """One batch's audio-context tasks: what the DiT is trained to produce and what it sees."""

    target: Tensor  # [B, C, N] the latents to generate (the full mix, or the mix without a source)
    ctx: Tensor  # [B, C + 2, N] the condition [latents * visible ; visible ; keep] (all zero: none)
    text: Tensor  # [B, L, Dt] the target's text (remove: the CoT of the scene without the source)
    task: Tensor  # [B] long, index into TASKS


def sample_context_tasks(batch: dict[str, Tensor], cfg: ContextTrainConfig, duration: float,
                         generator: torch.Generator) -> ContextBatch:
    """Draw one task per item (a fixed number of draws per batch, so a resumed run replays them).

    none (prob `context_dropout`): no context (the all-zero condition, which is also what
    inference without a context gives). inpaint: a random region of `region_s` seconds hidden
    (visible = keep = outside it). extend: a prefix of `prefix` x the clip kept and visible.
    add: the context is the mix WITHOUT one source (visible everywhere), the target the full mix,
    keep outside the source's audible region. remove: the reverse, with the CoT of the mix without
    it. An item without edit pairs draws inpaint instead of add / remove.
    """
    latent = batch["latent"].float()
    b, c, n = latent.shape
    dev = generator.device
    u = torch.rand(6, b, generator=generator, device=dev, dtype=torch.float64).cpu()
    weights = torch.tensor([float(cfg.weights.get(t, 0.0)) for t in CONTEXT_TASKS], dtype=torch.float64)
    edges = (weights.cumsum(0) / weights.sum())[:-1]
    choice = torch.searchsorted(edges, u[5], right=True) + 1  # categorical over the task weights
    task = torch.where(u[0] < cfg.context_dropout, torch.zeros_like(choice), choice)
    count = batch.get("pair_count", torch.zeros(b, dtype=torch.long)).cpu()
    fps = n / duration
    target = latent.clone()
    ctx_lat = torch.zeros_like(latent)
    keep = torch.zeros(b, n, dtype=torch.bool)
    visible = torch.zeros(b, n, dtype=torch.bool)
    texts = [batch["text"][i] for i in range(b)]
    for i in range(b):
        kind = TASKS[int(task[i])]
        j = min(int(u[4, i] * int(count[i])), max(int(count[i]) - 1, 0))
        if kind in ("add", "remove"):
            a, e = (int(v) for v in batch["pair_region"][i, j]) if count[i] > 0 else (0, 0)
            if count[i] == 0 or e <= a:
                kind = "inpaint"
        if kind == "inpaint":
            length = int(round((cfg.region_s[0] + u[1, i].item() * (cfg.region_s[1] - cfg.region_s[0])) * fps))
            length = min(max(length, 1), n - 1)
            start = int(u[2, i] * (n - length + 1))
            start = min(start, n - length)
            keep[i] = True
            keep[i, start : start + length] = False
            visible[i] = keep[i]
            ctx_lat[i] = latent[i]
        elif kind == "extend":
            p = int(round((cfg.prefix[0] + u[3, i].item() * (cfg.prefix[1] - cfg.prefix[0])) * n))
            p = min(max(p, 1), n - 1)
            keep[i, :p] = True
            visible[i] = keep[i]
            ctx_lat[i] = latent[i]
        elif kind in ("add", "remove"):
            pair = batch["pair_latent"][i, j].float()
            visible[i] = True
            keep[i] = True
            keep[i, a:e] = False
            if kind == "add":
                ctx_lat[i] = pair
            else:
                ctx_lat[i], target[i] = latent[i], pair
                texts[i] = batch["pair_text"][i, j]
        task[i] = TASKS.index(kind)
    length = max(t.shape[0] for t in texts)
    text = texts[0].new_zeros(b, length, texts[0].shape[-1])
    for i, t in enumerate(texts):
        text[i, : t.shape[0]] = t
    ctx = context_condition(ctx_lat.to(latent.device), keep.to(latent.device), visible.to(latent.device))
    return ContextBatch(target, ctx, text, task.to(latent.device))


class FlowModel(nn.Module):
    """The trained modules of stages 1-2; `forward` returns the loss so DDP sees one call."""

    def __init__(self, pipe: PrismAudioPipeline, latent_length: int, dropout: float,
                 context: ContextTrainConfig | None = None, duration: float = 0.0) -> None:
        super().__init__()
        self.dit = pipe.dit
        self.conditioner = pipe.conditioner
        self.video_encoder = pipe.video_encoder
        self.sync_encoder = pipe.sync_encoder
        self.latent_length = latent_length
        self.dropout = dropout
        self.context = context if context is not None and context.enabled else None
        self.duration = duration

    def condition(self, batch: dict[str, Tensor]) -> ConditionTokens:
        if "video_features" in batch:  # extracted features: the encoders already ran
            return self.conditioner(batch["video_features"], batch["text"], batch["sync_features"],
                                    latent_length=self.latent_length)
        return frames_to_conditions(self.video_encoder, self.sync_encoder, self.conditioner, batch["video"],
                                    batch["sync"], batch["text"], self.latent_length)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Flow-matching MSE with the official three per-path condition dropout masks (CFG); with
        a context block, on each item's context task (the context dropped with its own rate)."""
        if self.context is None:
            loss, aux = flow_matching_loss(self.dit, batch["latent"], self.condition(batch), generator,
                                           cond_dropout=self.dropout)
            return loss, {"t_mean": aux["t"].mean()}
        tasks = sample_context_tasks(batch, self.context, self.duration, generator)
        cond = self.condition({**batch, "text": tasks.text}).with_audio(tasks.ctx)
        loss, aux = flow_matching_loss(self.dit, tasks.target, cond, generator, cond_dropout=self.dropout)
        logs = {"t_mean": aux["t"].mean(), "ctx_generated": 1 - tasks.ctx[:, -1].mean()}
        return loss, logs


def _needs_pairs(cfg: ContextTrainConfig) -> bool:
    return any(cfg.weights.get(t, 0.0) > 0 for t in ("add", "remove"))


def enable_context(pipe: PrismAudioPipeline, cfg: TrainConfig, log: Any) -> None:
    """Give the DiT its audio-context projection when the run trains the context (zero-initialised:
    a checkpoint trained without context, e.g. the shipped mini, starts computing exactly as before)."""
    if cfg.context.enabled and pipe.dit.enable_audio_context():
        log("audio context: the model had no context projection (dit.ctx_proj); added, initialised to zero")


class FlowStage:
    """Builds the data and the trained module; renders demos and the final export."""

    def __init__(self, cfg: TrainConfig, pipe: PrismAudioPipeline, log: Any) -> None:
        self.cfg = cfg
        self.pipe = pipe
        pipe._require_encoders()
        self.dataset: FlowClips | FeatureClips
        if cfg.data.features:
            self.dataset = build_feature_clips(pipe, cfg.data, cfg.stage, cfg.cot_variant, log)
            self.collate = collate_features
            pipe.video_encoder.requires_grad_(False)
            pipe.sync_encoder.requires_grad_(False)
            source = f"extracted features in {cfg.data.features} (encoders frozen)"
        else:
            rows = load_rows(cfg.data, log)
            pairs_seed = cfg.context.corpus_seed if cfg.context.enabled and _needs_pairs(cfg.context) else None
            self.dataset = build_flow_clips(pipe, rows, cfg.data, cfg.stage, cfg.cot_variant, log, pairs_seed)
            self.collate = collate_flow
            source = f"{len(self.dataset.text_strings)} unique texts"
        pipe.vae.requires_grad_(False).eval()
        n = pipe.config.latent_length(self.dataset.duration)
        self.module = FlowModel(pipe, n, cfg.modality_dropout, cfg.context, self.dataset.duration)
        log(f"stage {cfg.stage}: {len(self.dataset)} clips of {self.dataset.duration:g} s, {source}, "
            f"latent [{pipe.config.dit.io_channels}, {n}]")
        if cfg.context.enabled:
            w = {t: cfg.context.weights.get(t, 0.0) for t in CONTEXT_TASKS}
            log(f"audio-context tasks: none {cfg.context.context_dropout:g}, then "
                + ", ".join(f"{t} {v:g}" for t, v in w.items()))

    def _pipeline(self, module: FlowModel) -> PrismAudioPipeline:
        p = self.pipe
        return PrismAudioPipeline(p.config, module.dit, module.conditioner, p.vae, module.video_encoder,
                                  module.sync_encoder, p.text_encoder)

    @torch.no_grad()
    def demo(self, module: nn.Module, out: Path, step: int) -> list[Path]:
        """Sample the first clips with the EMA weights (fixed seed): WAV + spectrogram PNG each."""
        assert isinstance(module, FlowModel)
        module.eval()
        k = min(DEMO_CLIPS, len(self.dataset))
        dev = next(module.parameters()).device
        batch = {n: v.to(dev) for n, v in self.collate([self.dataset[i] for i in range(k)]).items()}
        pipe = self._pipeline(module)
        cond = module.condition(batch)
        runs = [("", pipe.sample_latents(cond, seed=0, steps=self.cfg.demo_steps,
                                         cfg_scale=pipe.config.sampling.cfg_scale))]
        if module.context is not None:  # the context stage also shows an inpainting of the middle third
            z = batch["latent"].float()
            n = z.shape[-1]
            keep = torch.ones(k, n, dtype=torch.bool, device=z.device)
            keep[:, n // 3 : 2 * n // 3] = False
            ctx = ContextLatents(z, keep, keep.clone())
            runs.append(("-inpaint", pipe.sample_latents(cond, seed=0, steps=self.cfg.demo_steps,
                                                         cfg_scale=pipe.config.sampling.cfg_scale, context=ctx)))
        written = []
        for suffix, latents in runs:
            audio = pipe.decode(latents, self.dataset.duration)
            for i in range(k):
                name = f"step{step:08d}-{self.dataset.ids[i]}{suffix}"
                save_wav(out / f"{name}.wav", audio[i], pipe.config.sample_rate)
                save_spectrogram_png(out / f"{name}.png", audio[i], pipe.config.sample_rate, title=f"{name}")
                written += [out / f"{name}.wav", out / f"{name}.png"]
        return written

    def export(self, module: nn.Module, out: Path) -> None:
        """A complete model directory usable by `prismaudio generate --model`."""
        assert isinstance(module, FlowModel)
        self._pipeline(module).save_pretrained(out)
