"""Stages 1 (foundation) and 2 (CoT fine-tune): rectified flow on frozen-VAE latents.

From a manifest, the DiT, the condition MLPs and the light video / sync encoders are trained
jointly (they see uint8 frames from memory, so the encoders learn); the VAE and the text encoder
stay frozen, their outputs precomputed once by `train/data.py`. From extracted features
(`data.features`, the official recipe: frozen encoders, features extracted once), the encoders'
outputs are fixed in the files, so the encoders are frozen and only the DiT and the condition
MLPs train. The two stages differ only in the text: the caption (foundation) or the CoT rendered
per `cot_variant` (cot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..flow import flow_matching_loss
from ..io.audio import save_wav
from ..io.spectrogram import save_spectrogram_png
from ..model.conditioning import ConditionTokens, frames_to_conditions
from ..pipeline import PrismAudioPipeline
from .config import TrainConfig
from .data import FeatureClips, FlowClips, build_feature_clips, build_flow_clips, collate_features, collate_flow, load_rows

DEMO_CLIPS = 2


class FlowModel(nn.Module):
    """The trained modules of stages 1-2; `forward` returns the loss so DDP sees one call."""

    def __init__(self, pipe: PrismAudioPipeline, latent_length: int, dropout: float) -> None:
        super().__init__()
        self.dit = pipe.dit
        self.conditioner = pipe.conditioner
        self.video_encoder = pipe.video_encoder
        self.sync_encoder = pipe.sync_encoder
        self.latent_length = latent_length
        self.dropout = dropout

    def condition(self, batch: dict[str, Tensor]) -> ConditionTokens:
        if "video_features" in batch:  # extracted features: the encoders already ran
            return self.conditioner(batch["video_features"], batch["text"], batch["sync_features"],
                                    latent_length=self.latent_length)
        return frames_to_conditions(self.video_encoder, self.sync_encoder, self.conditioner, batch["video"],
                                    batch["sync"], batch["text"], self.latent_length)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Flow-matching MSE with the official three per-path condition dropout masks (CFG)."""
        loss, aux = flow_matching_loss(self.dit, batch["latent"], self.condition(batch), generator,
                                       cond_dropout=self.dropout)
        return loss, {"t_mean": aux["t"].mean()}


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
            self.dataset = build_flow_clips(pipe, rows, cfg.data, cfg.stage, cfg.cot_variant, log)
            self.collate = collate_flow
            source = f"{len(self.dataset.text_strings)} unique texts"
        pipe.vae.requires_grad_(False).eval()
        n = pipe.config.latent_length(self.dataset.duration)
        self.module = FlowModel(pipe, n, cfg.modality_dropout)
        log(f"stage {cfg.stage}: {len(self.dataset)} clips of {self.dataset.duration:g} s, {source}, "
            f"latent [{pipe.config.dit.io_channels}, {n}]")

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
        latents = pipe.sample_latents(module.condition(batch), seed=0, steps=self.cfg.demo_steps,
                                      cfg_scale=pipe.config.sampling.cfg_scale)
        audio = pipe.decode(latents, self.dataset.duration)
        written = []
        for i in range(k):
            name = f"step{step:08d}-{self.dataset.ids[i]}"
            save_wav(out / f"{name}.wav", audio[i], pipe.config.sample_rate)
            save_spectrogram_png(out / f"{name}.png", audio[i], pipe.config.sample_rate, title=f"{name}")
            written += [out / f"{name}.wav", out / f"{name}.png"]
        return written

    def export(self, module: nn.Module, out: Path) -> None:
        """A complete model directory usable by `prismaudio generate --model`."""
        assert isinstance(module, FlowModel)
        self._pipeline(module).save_pretrained(out)
