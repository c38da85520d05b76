"""The MS-CLAP 2023 and LAION-CLAP (HTSAT-base, non-fusion) networks in their RELEASE key layouts.

`MSClapNet` mirrors `msclap.models.clap.CLAP` (``audio_encoder.base.htsat.*`` HTSAT,
``audio_encoder.projection.*``, ``caption_encoder.base.*`` GPT-2, ``caption_encoder.projection.*``,
``logit_scale``); `LaionClapNet` mirrors `laion_clap`'s `CLAP` after `load_state_dict` strips ``module.``
(``audio_branch.*`` HTSAT, ``text_branch.*`` RoBERTa, ``audio_projection`` / ``text_projection``, the unused
``audio_transform`` / ``text_transform`` MLPs, ``logit_scale_a`` / ``logit_scale_t``). So a release file loads
by its own key names; `msclap_from_state_dict` / `laion_from_state_dict` read every size from the tensors.

Text towers are transformers' `GPT2Model` / `RobertaModel`, the classes upstream instantiates
(``AutoModel.from_pretrained('gpt2')`` / ``RobertaModel.from_pretrained('roberta-base')``); the attention
head counts are not in any tensor shape, so they default to ``width // 64`` (true of 'gpt2' and 'roberta-base')
and can be overridden.

Release-file quirks handled here: MS-CLAP's file carries the GPT-2 ``attn.bias`` / ``attn.masked_bias``
buffers of transformers < 4.31 (dropped, as msclap's ``strict=False`` load ignores them); LAION's carries
``text_branch.embeddings.position_ids`` (dropped, as `laion_clap` deletes it). Everything else must match
exactly: a missing, unexpected or mis-shaped key is one error naming the file and the first such key (msclap
itself loads with ``strict=False`` and would silently keep random weights for a missing key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ...errors import PrismAudioError
from .htsat import HTSAT, htsat_config_from_state_dict


class MSClapProjection(nn.Module):
    """msclap `Projection`: ``e1 = linear1(x)``, ``layer_norm(e1 + linear2(gelu(e1)))`` (no biases; dropout off)."""

    def __init__(self, d_in: int, d_out: int, eps: float = 1e-5):
        super().__init__()
        self.linear1 = nn.Linear(d_in, d_out, bias=False)
        self.linear2 = nn.Linear(d_out, d_out, bias=False)
        self.layer_norm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.linear1(x)
        return self.layer_norm(e1 + self.linear2(F.gelu(e1)))


class _MSAudioBase(nn.Module):  # msclap `HTSATWrapper`: only holds `.htsat`
    def __init__(self, htsat: HTSAT):
        super().__init__()
        self.htsat = htsat


class _Tower(nn.Module):
    def __init__(self, base: nn.Module, projection: nn.Module):
        super().__init__()
        self.base = base
        self.projection = projection


class MSClapNet(nn.Module):
    """MS-CLAP 2023: HTSAT + GPT-2, msclap projections, ``logit_scale`` (similarity = exp(logit_scale) * cos)."""

    def __init__(self, htsat: HTSAT, gpt2: nn.Module, d_proj: int, proj_eps: float = 1e-5):
        super().__init__()
        self.audio_encoder = _Tower(_MSAudioBase(htsat), MSClapProjection(htsat.cfg.num_features, d_proj, proj_eps))
        self.caption_encoder = _Tower(gpt2, MSClapProjection(gpt2.config.n_embd, d_proj, proj_eps))
        self.logit_scale = nn.Parameter(torch.tensor(2.659260036932778))

    @property
    def htsat(self) -> HTSAT:
        return self.audio_encoder.base.htsat

    def audio_embed(self, wave: Tensor) -> tuple[Tensor, Any]:
        """[B, S] preprocessed waveform -> (unnormalised projection [B, d_proj], the HTSAT output)."""
        out = self.htsat(wave)
        return self.audio_encoder.projection(out.latent), out

    def text_embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """GPT-2 hidden state at ``count(ids != 0) - 1`` (msclap's rule, pad id 0), projected (unnormalised)."""
        hidden = self.caption_encoder.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        last = torch.ne(input_ids, 0).sum(-1) - 1
        return self.caption_encoder.projection(hidden[torch.arange(input_ids.shape[0], device=hidden.device), last])


class _MLP(nn.Module):  # laion_clap `MLPLayers([j, j, j])`: Linear, ReLU, Dropout, Linear (unused by embeddings)
    def __init__(self, d: int):
        super().__init__()
        self.sequential = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d, d))


def _mlp2(d_in: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))


class LaionClapNet(nn.Module):
    """LAION-CLAP non-fusion: HTSAT + RoBERTa (pooler_output), ``Linear -> ReLU -> Linear`` projections."""

    def __init__(self, htsat: HTSAT, roberta: nn.Module, joint: int):
        super().__init__()
        self.audio_branch = htsat
        self.text_branch = roberta
        self.audio_projection = _mlp2(htsat.cfg.num_features, joint)
        self.text_projection = _mlp2(roberta.config.hidden_size, joint)
        self.audio_transform = _MLP(joint)
        self.text_transform = _MLP(joint)
        self.logit_scale_a = nn.Parameter(torch.tensor(2.659260036932778))
        self.logit_scale_t = nn.Parameter(torch.tensor(2.659260036932778))

    def audio_embed(self, wave: Tensor) -> tuple[Tensor, Any]:
        out = self.audio_branch(wave)
        return F.normalize(self.audio_projection(out.latent), dim=-1), out

    def text_embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        pooled = self.text_branch(input_ids=input_ids, attention_mask=attention_mask)["pooler_output"]
        return F.normalize(self.text_projection(pooled), dim=-1)


# ---------------------------------------------------------------- loading


def _need(sd: dict[str, Tensor], key: str, file: Path, model: str) -> Tensor:
    if key not in sd:
        first = next(iter(sd), None)
        raise PrismAudioError(f"{file} is not {model}: missing key {key!r} (its first key is {first!r})")
    return sd[key]


def _sub(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _count_layers(sd: dict[str, Tensor], prefix: str) -> int:
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in sd):
        n += 1
    return n


def load_exact(net: nn.Module, sd: dict[str, Tensor], file: Path, model: str) -> nn.Module:
    """Strict load; a mismatch is one line naming the file and the first missing / unexpected / mis-shaped key."""
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
        problems.append(f"unexpected key {unexpected[0]!r}"
                        + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    if shapes:
        k = shapes[0]
        problems.append(f"key {k!r} has shape {tuple(sd[k].shape)}, the model {tuple(own[k].shape)}")
    if problems:
        raise PrismAudioError(f"{file} does not match {model}: {'; '.join(problems)}")
    net.load_state_dict(sd, strict=True)
    return net


def _quiet() -> Any:
    from ...encoders.t5 import quiet_hf

    return quiet_hf()


def gpt2_from_state_dict(sd: dict[str, Tensor], file: Path, n_head: int | None = None,
                         layer_norm_epsilon: float = 1e-5, activation: str = "gelu_new") -> nn.Module:
    """A `GPT2Model` sized from its tensors (``wte``, ``wpe``, ``h.<i>.mlp.c_fc``); heads default n_embd // 64."""
    from transformers import GPT2Config, GPT2Model

    vocab, width = _need(sd, "wte.weight", file, "a GPT-2 state dict").shape
    n_head = int(n_head) if n_head else max(1, int(width) // 64)
    if width % n_head:
        raise PrismAudioError(f"{file}: GPT-2 width {width} is not divisible by n_head={n_head}")
    eos = 50256 if vocab > 50256 else None
    cfg = GPT2Config(vocab_size=int(vocab), n_embd=int(width), n_positions=int(_need(sd, "wpe.weight", file, "a GPT-2 state dict").shape[0]),
                     n_layer=_count_layers(sd, "h."), n_head=n_head,
                     n_inner=int(_need(sd, "h.0.mlp.c_fc.weight", file, "a GPT-2 state dict").shape[1]),
                     activation_function=activation, layer_norm_epsilon=float(layer_norm_epsilon),
                     bos_token_id=eos, eos_token_id=eos)
    with _quiet():
        return GPT2Model(cfg)


def roberta_from_state_dict(sd: dict[str, Tensor], file: Path, num_heads: int | None = None,
                            layer_norm_eps: float = 1e-5, hidden_act: str = "gelu", pad_token_id: int = 1,
                            bos_token_id: int = 0, eos_token_id: int = 2) -> nn.Module:
    """A `RobertaModel` (with pooler) sized from its tensors; heads default hidden // 64 (roberta-base: 12)."""
    from transformers import RobertaConfig, RobertaModel

    vocab, width = _need(sd, "embeddings.word_embeddings.weight", file, "a RoBERTa state dict").shape
    heads = int(num_heads) if num_heads else max(1, int(width) // 64)
    if width % heads:
        raise PrismAudioError(f"{file}: RoBERTa width {width} is not divisible by num_attention_heads={heads}")
    cfg = RobertaConfig(
        vocab_size=int(vocab), hidden_size=int(width), num_hidden_layers=_count_layers(sd, "encoder.layer."),
        num_attention_heads=heads,
        intermediate_size=int(_need(sd, "encoder.layer.0.intermediate.dense.weight", file, "a RoBERTa state dict").shape[0]),
        max_position_embeddings=int(_need(sd, "embeddings.position_embeddings.weight", file, "a RoBERTa state dict").shape[0]),
        type_vocab_size=int(_need(sd, "embeddings.token_type_embeddings.weight", file, "a RoBERTa state dict").shape[0]),
        layer_norm_eps=float(layer_norm_eps), hidden_act=hidden_act, pad_token_id=int(pad_token_id),
        bos_token_id=int(bos_token_id), eos_token_id=int(eos_token_id))
    with _quiet():
        return RobertaModel(cfg, add_pooling_layer=True)


MSCLAP_MODEL = "an MS-CLAP 2023 checkpoint (CLAP_weights_2023.pth)"
LAION_MODEL = "a LAION-CLAP HTSAT non-fusion checkpoint (e.g. music_speech_audioset_epoch_15_esc_89.98.pt)"


def msclap_from_state_dict(sd: dict[str, Tensor], file: Path, htsat: dict[str, Any] | None = None,
                           text: dict[str, Any] | None = None, proj_eps: float = 1e-5) -> MSClapNet:
    """Build and strictly load `MSClapNet` from the release state dict (``{'model': sd}`` already unwrapped)."""
    _need(sd, "audio_encoder.base.htsat.patch_embed.proj.weight", file, MSCLAP_MODEL)
    _need(sd, "caption_encoder.base.wte.weight", file, MSCLAP_MODEL)
    sd = {k: v for k, v in sd.items()
          if not (k.startswith("caption_encoder.base.h.") and k.endswith((".attn.bias", ".attn.masked_bias")))}
    cfg = htsat_config_from_state_dict(_sub(sd, "audio_encoder.base.htsat."), str(file), **(htsat or {}))
    gpt2 = gpt2_from_state_dict(_sub(sd, "caption_encoder.base."), file, **(text or {}))
    d_proj = int(_need(sd, "audio_encoder.projection.linear1.weight", file, MSCLAP_MODEL).shape[0])
    net = MSClapNet(HTSAT(cfg), gpt2, d_proj, proj_eps)
    return load_exact(net, sd, file, MSCLAP_MODEL).eval().requires_grad_(False)


def laion_from_state_dict(sd: dict[str, Tensor], file: Path, htsat: dict[str, Any] | None = None,
                          text: dict[str, Any] | None = None) -> LaionClapNet:
    """Build and strictly load `LaionClapNet` from the release ``state_dict`` (``module.`` stripped here)."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    _need(sd, "audio_branch.patch_embed.proj.weight", file, LAION_MODEL)
    _need(sd, "text_branch.embeddings.word_embeddings.weight", file, LAION_MODEL)
    if any(k.startswith("audio_branch.fusion_model.") or k.startswith("audio_branch.mel_conv2d.") for k in sd):
        raise PrismAudioError(f"{file} is a fusion LAION-CLAP checkpoint; only non-fusion (e.g. "
                              "music_speech_audioset_epoch_15_esc_89.98.pt) is supported")
    sd = {k: v for k, v in sd.items() if k != "text_branch.embeddings.position_ids"}
    cfg = htsat_config_from_state_dict(_sub(sd, "audio_branch."), str(file), **{"hop_size": 480, **(htsat or {})})
    roberta = roberta_from_state_dict(_sub(sd, "text_branch."), file, **(text or {}))
    joint = int(_need(sd, "audio_projection.0.weight", file, LAION_MODEL).shape[0])
    net = LaionClapNet(HTSAT(cfg, mel_sr=48_000), roberta, joint)
    return load_exact(net, sd, file, LAION_MODEL).eval().requires_grad_(False)
