"""Oobleck audio autoencoder: the latent "pretransform" of PrismAudio (official_network.md §9).

A clean re-implementation of the stable-audio-tools Oobleck VAE the official model uses. The module
tree mirrors the official one (`encoder.layers.*`, `decoder.layers.*`, legacy weight-norm
`weight_g` / `weight_v` parameters), so an official `pretransform.model.*` state dict loads after
nothing more than stripping that prefix.

Shapes: audio [B, audio_channels, S] <-> latents [B, latent_channels, N] with S = N * downsampling_ratio
(latent_channels = latent_dim, plus `stereo_bands + 1` spatial channels with parametric stereo, `model/stereo.py`).

CPU speed (all exact rewrites, checked against a plain functional forward in tests/test_vae.py):
weight-normed kernels are cached while no gradient can reach them; dilated convs run as undilated
conv2d over a folded view; transposed convs run polyphase; 1x1 conv + residual is one GEMM; and
without autograd, activations reuse dead buffers in place.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VAEConfig
from ..errors import PrismAudioError
from .stereo import ParametricStereo

__all__ = ["OobleckVAE", "SnakeBeta", "WNConv1d", "WNConvTranspose1d", "vae_config_from_official"]


def _needs_graph(*tensors: Tensor) -> bool:
    """True when autograd records ops on these tensors (then in-place shortcuts are off)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class SnakeBeta(nn.Module):
    """Per-channel periodic activation y = x + sin²(e^α·x) / (e^β + 1e-9); α, β stored in log scale
    (init 0), as the official `SnakeBeta(alpha_logscale=True)` with the same `alpha` / `beta` keys."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """`out`: a dead buffer shaped like x to write into (inference only; saves an allocation)."""
        freq = self.alpha.exp()[:, None]
        inv_mag = 1.0 / (self.beta.exp()[:, None] + 1e-9)
        if _needs_graph(x, freq, inv_mag):
            return x + inv_mag * (x * freq).sin().square()
        # Inference: one buffer, updated in place (fewer passes and allocations than the graph form).
        s = torch.mul(x, freq, out=out) if out is not None else x * freq
        s.sin_().square_()
        return torch.addcmul(x, s, inv_mag, out=s)


class _WeightNorm(nn.Module):
    """Legacy `torch.nn.utils.weight_norm(dim=0)`: W = g · v / ‖v‖, norm over every dim but 0
    (a ConvTranspose1d weight is [in, out, k], so there it is per *input* channel, g [in, 1, 1])."""

    bias: nn.Parameter | None
    _cache_key: tuple[Any, ...] | None = None
    _cache: tuple[Tensor, Tensor | None] | None = None

    def _init_params(self, v_shape: tuple[int, ...], bias_size: int | None) -> None:
        # Same initial distribution as a freshly built nn.Conv1d / ConvTranspose1d wrapped in
        # weight_norm: kaiming-uniform v, g = ‖v‖ (so W = v at init), uniform bias.
        self.weight_v = nn.Parameter(torch.empty(v_shape))
        self.weight_g = nn.Parameter(torch.empty(v_shape[0], 1, 1))
        self.bias = nn.Parameter(torch.empty(bias_size)) if bias_size is not None else None
        if not self.weight_v.is_meta:
            nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(self.weight_v[0].numel())  # 1/sqrt(fan_in) as nn.Conv1d does
            with torch.no_grad():
                self.weight_g.copy_(self.weight_v.norm(dim=(1, 2), keepdim=True))
                if self.bias is not None:
                    self.bias.uniform_(-bound, bound)

    def weight(self) -> Tensor:
        """The effective weight W = g · v / ‖v‖ in the official layout."""
        v = self.weight_v
        return v * (self.weight_g / v.norm(dim=(1, 2), keepdim=True))

    def _kernel(self) -> tuple[Tensor, Tensor | None]:
        """(weight, bias) in the layout `forward` uses; subclasses may re-arrange them."""
        return self.weight(), self.bias

    def _cached_kernel(self) -> tuple[Tensor, Tensor | None]:
        """`_kernel()`, cached while no autograd graph through the parameters is possible; keyed on
        their version counters and storage, so optimizer steps, load_state_dict and .to() invalidate it."""
        params = [p for p in (self.weight_g, self.weight_v, self.bias) if p is not None]
        if _needs_graph(*params):
            return self._kernel()
        try:
            key = tuple((p._version, p.data_ptr(), p.dtype, p.device) for p in params)
        except RuntimeError:  # parameters created under inference_mode carry no version counter
            return self._kernel()
        if self._cache is None or self._cache_key != key:
            # Built as a normal tensor even under inference_mode, so a later grad-enabled
            # forward (backprop to the latents through a frozen decoder) can still use it.
            with torch.inference_mode(False), torch.no_grad():
                self._cache = self._kernel()
            self._cache_key = key
        return self._cache


class WNConv1d(_WeightNorm):
    """Weight-normed Conv1d (official dac `WNConv1d`): parameters weight_g [out,1,1], weight_v, bias."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self._init_params((out_ch, in_ch, kernel_size), out_ch if bias else None)
        # A 'same' dilated conv over L = M·d samples equals an undilated (k×1) conv2d over the
        # [M, d] view of the signal; oneDNN runs that 2-3x faster than its dilated conv1d on CPU.
        self._fold = dilation > 1 and stride == 1 and padding == dilation * (kernel_size - 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        w, b = self._cached_kernel()
        d = self.dilation
        if self._fold and x.shape[-1] % d == 0:
            n, c, length = x.shape
            y = F.conv2d(x.reshape(n, c, length // d, d), w.unsqueeze(-1), b, 1, (self.padding // d, 0))
            return y.reshape(n, -1, length)
        return F.conv1d(x, w, b, self.stride, self.padding, d)

    def pointwise_plus(self, x: Tensor, residual: Tensor) -> Tensor:
        """residual + conv(x) for a kernel-1 conv, as one accumulating GEMM (oneDNN's 1x1 conv
        with few channels is slower than MKL's GEMM, and this also fuses the residual add)."""
        w, b = self._cached_kernel()
        w = w[:, :, 0]
        if x.shape[0] == 1:
            y = torch.addmm(residual[0], w, x[0]).unsqueeze(0)
        else:
            y = torch.baddbmm(residual, w.expand(x.shape[0], -1, -1), x)
        if b is None:
            return y
        return y + b[:, None] if _needs_graph(y, b) else y.add_(b[:, None])


class WNConvTranspose1d(_WeightNorm):
    """Weight-normed ConvTranspose1d, k = 2·stride: weight_v [in,out,k], weight_g [in,1,1], bias [out].

    Runs polyphase: with k = 2s output sample s·q + r sees exactly inputs q-1 and q, so it equals a
    2-tap conv1d to s·out channels plus interleaving the s phases (exact; faster than oneDNN's).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        if kernel_size != 2 * stride or padding > stride:
            raise ValueError("WNConvTranspose1d supports kernel_size = 2*stride, padding <= stride only")
        self.stride, self.padding, self.out_ch = stride, padding, out_ch
        self._init_params((in_ch, out_ch, kernel_size), out_ch)

    def _kernel(self) -> tuple[Tensor, Tensor | None]:
        w, s = self.weight(), self.stride  # [in, out, 2s]
        # K[o·s + r, i, 0] = W[i, o, s + r] (multiplies x[q-1]); K[o·s + r, i, 1] = W[i, o, r] (x[q]).
        k = torch.stack([w[:, :, s:], w[:, :, :s]], dim=-1).permute(1, 2, 0, 3).reshape(-1, w.shape[0], 2)
        b = None if self.bias is None else self.bias.repeat_interleave(s)
        return k.contiguous(), b

    def forward(self, x: Tensor, extra: int = 0) -> Tensor:
        """[n, in, L] -> [n, out, (L+1)·s - 2p]; `extra` > 0 appends that many finite don't-care
        samples (room for the residual stack's padding without another copy)."""
        k, b = self._cached_kernel()
        n, _, length = x.shape
        s, p = self.stride, self.padding
        z = F.conv1d(x, k, b, padding=1)  # [n, out·s, L + 1]: channel o·s + r = phase r of frame q
        phases = z.reshape(n, self.out_ch, s, length + 1).transpose(2, 3)
        out_len = (length + 1) * s - 2 * p
        spare = max(0, p + out_len + extra - (length + 1) * s)
        buf = z.new_empty(n, self.out_ch, (length + 1) * s + spare)
        if spare:
            buf[..., (length + 1) * s :].zero_()
        buf[..., : (length + 1) * s].view(n, self.out_ch, length + 1, s).copy_(phases)
        return buf[..., p : p + out_len + extra]


def _act(channels: int, use_snake: bool) -> nn.Module:
    return SnakeBeta(channels) if use_snake else nn.ELU()


_DILATIONS = (1, 3, 9)
_FOLD = 9  # lcm of the dilations: residual stacks run on lengths padded to a multiple of this


def _zero_tail(h: Tensor, valid: int) -> Tensor:
    """Zero h[..., valid:] (the padding) so a 'same' conv sees the zeros the official one pads with."""
    if valid < h.shape[-1]:
        if _needs_graph(h):
            return F.pad(h[..., :valid], (0, h.shape[-1] - valid))
        h[..., valid:] = 0
    return h


class ResidualUnit(nn.Module):
    """x + Conv1x1(act(DilatedConv7(act(x)))); 'same' padding keeps the length."""

    def __init__(self, ch: int, dilation: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _act(ch, use_snake),
            WNConv1d(ch, ch, 7, dilation=dilation, padding=3 * dilation),
            _act(ch, use_snake),
            WNConv1d(ch, ch, 1),
        )

    def forward(self, x: Tensor, valid: int | None = None) -> Tensor:
        """`valid`: true length when x carries right padding (whose values are don't-care)."""
        act1, conv1, act2, conv2 = self.layers
        h = act1(x)
        if valid is not None:
            h = _zero_tail(h, valid)
        y = conv1(h)
        reuse = isinstance(act2, SnakeBeta) and not _needs_graph(y) and h.shape == y.shape and h.is_contiguous()
        y = act2(y, out=h) if reuse else act2(y)  # without autograd h is dead: reuse its buffer
        return conv2.pointwise_plus(y, x)


def _pad_len(length: int) -> int:
    return -(-length // _FOLD) * _FOLD


def _residual_stack(units: list[nn.Module], x: Tensor, valid: int) -> Tensor:
    """Run residual units on x (length a multiple of `_FOLD`, true length `valid`), then crop."""
    for unit in units:
        x = unit(x, valid)
    return x[..., :valid]


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at `in_ch`, then a strided conv (k = 2s) to `out_ch`."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(ResidualUnit(in_ch, d, use_snake) for d in _DILATIONS),
            _act(in_ch, use_snake),
            WNConv1d(in_ch, out_ch, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: Tensor) -> Tensor:
        layers, length = list(self.layers), x.shape[-1]
        x = _residual_stack(layers[:3], F.pad(x, (0, _pad_len(length) - length)), length)
        return layers[4](layers[3](x))


class DecoderBlock(nn.Module):
    """A transposed conv (k = 2s, upsample ×s) from `in_ch` to `out_ch`, then three residual units."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _act(in_ch, use_snake),
            WNConvTranspose1d(in_ch, out_ch, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
            *(ResidualUnit(out_ch, d, use_snake) for d in _DILATIONS),
        )

    def forward(self, x: Tensor) -> Tensor:
        layers = list(self.layers)
        up: WNConvTranspose1d = layers[1]
        length = x.shape[-1] * up.stride  # exact for even strides (enforced by OobleckVAE)
        x = up(layers[0](x), extra=_pad_len(length) - length)
        return _residual_stack(layers[2:], x, length)


class _Stack(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class OobleckEncoder(_Stack):
    """audio [B, A, S] -> [B, 2·latent_dim, S/ratio] = [mean ; scale] (pre-bottleneck)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, mults = cfg.channels, [1, *cfg.c_mults]  # block i maps mults[i]·ch -> mults[i+1]·ch
        layers: list[nn.Module] = [WNConv1d(cfg.audio_channels, mults[0] * ch, 7, padding=3)]
        for i, stride in enumerate(cfg.strides):
            layers.append(EncoderBlock(mults[i] * ch, mults[i + 1] * ch, stride, cfg.use_snake))
        layers += [_act(mults[-1] * ch, cfg.use_snake), WNConv1d(mults[-1] * ch, 2 * cfg.latent_dim, 3, padding=1)]
        self.layers = nn.Sequential(*layers)


class OobleckDecoder(_Stack):
    """latents [B, latent_dim, N] -> audio [B, A, N·ratio]; the mirror image of the encoder."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch, mults = cfg.channels, [1, *cfg.c_mults]
        layers: list[nn.Module] = [WNConv1d(cfg.latent_dim, mults[-1] * ch, 7, padding=3)]
        for i in range(len(cfg.strides), 0, -1):
            layers.append(DecoderBlock(mults[i] * ch, mults[i - 1] * ch, cfg.strides[i - 1], cfg.use_snake))
        out_ch = mults[0] * ch
        layers += [_act(out_ch, cfg.use_snake), WNConv1d(out_ch, cfg.audio_channels, 7, padding=3, bias=False),
                   nn.Tanh() if cfg.final_tanh else nn.Identity()]  # official: no bias on the final conv
        self.layers = nn.Sequential(*layers)


class OobleckVAE(nn.Module):
    """Oobleck VAE with the official "vae" bottleneck and latent scale; state-dict keys are the
    official `pretransform.model.*` keys minus that prefix. The same bottleneck wraps the `mini`
    alternatives: `codec: spectral` swaps the encoder / decoder for `model/spectral.py`, and
    `stereo_bands > 0` makes the learned part mono with parametric stereo around it (`model/stereo.py`)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        if cfg.codec == "oobleck" and any(s % 2 for s in cfg.strides):
            # k = 2s, p = ceil(s/2) only inverts lengths exactly (L/s down, L·s up) for even s.
            raise PrismAudioError(f"VAE strides must be even for exact length inversion, got {cfg.strides}")
        self.cfg = cfg
        self.stereo: ParametricStereo | None = None
        core = cfg
        if cfg.stereo_bands > 0:
            # parametric stereo: the learned codec is mono (the mid); space rides in extra latent channels
            if cfg.audio_channels != 2:
                raise PrismAudioError(f"parametric stereo needs audio_channels 2, got {cfg.audio_channels}")
            core = dataclasses.replace(cfg, audio_channels=1)
            self.stereo = ParametricStereo(cfg.stereo_bands, cfg.downsampling_ratio, cfg.stereo_n_fft,
                                           cfg.stereo_hop, cfg.stereo_max_itd, cfg.stereo_lowest_band)
        if cfg.codec == "spectral":
            from .spectral import SpectralDecoder, SpectralEncoder

            self.encoder: nn.Module = SpectralEncoder(core)
            self.decoder: nn.Module = SpectralDecoder(core)
        else:
            self.encoder = OobleckEncoder(core)
            self.decoder = OobleckDecoder(core)

    @property
    def downsampling_ratio(self) -> int:
        return self.cfg.downsampling_ratio

    def latent_length(self, num_samples: int) -> int:
        """Latent frames for `num_samples` audio samples (input is zero-padded up to a whole frame)."""
        return max(1, -(-num_samples // self.downsampling_ratio))

    def _pad(self, audio: Tensor) -> Tensor:
        if audio.dim() != 3 or audio.shape[1] != self.cfg.audio_channels:
            raise PrismAudioError(f"VAE expects audio [B, {self.cfg.audio_channels}, S], got {tuple(audio.shape)}")
        extra = self.latent_length(audio.shape[-1]) * self.downsampling_ratio - audio.shape[-1]
        return F.pad(audio, (0, extra)) if extra else audio

    def encode_moments(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, std) of q(z | audio), each [B, latent_channels, N], std = softplus(scale) + 1e-4
        (unscaled bottleneck space; `encode` divides by `latent_scale`). With parametric stereo the
        last `stereo_bands + 1` channels are the measured spatial parameters (std 1e-4: deterministic)."""
        x = self._pad(audio)
        if self.stereo is None:
            mean, scale = self.encoder(x).chunk(2, dim=1)
            return mean, F.softplus(scale) + 1e-4
        mid, params = self.stereo.analyse(x)
        mean, scale = self.encoder(mid).chunk(2, dim=1)
        params = params.to(mean)
        return torch.cat([mean, params], 1), torch.cat([F.softplus(scale) + 1e-4, torch.full_like(params, 1e-4)], 1)

    def encode(self, audio: Tensor, sample: bool = True, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
        """audio [B, A, S] -> latents [B, latent_dim, ceil(S / ratio)].

        The official pipeline samples z = mean + std·ε (also when pre-encoding training latents);
        `sample=False` returns the mean. `noise` supplies ε explicitly (reproducing a reference),
        otherwise ε is drawn from `generator`. The result is divided by `latent_scale`.
        """
        mean, std = self.encode_moments(audio)
        z = mean
        if sample:
            if noise is None:
                dev = generator.device if generator is not None else mean.device
                noise = torch.randn(mean.shape, generator=generator, device=dev, dtype=mean.dtype)
            if noise.shape != mean.shape:
                raise PrismAudioError(f"noise shape {tuple(noise.shape)} != latent shape {tuple(mean.shape)}")
            z = mean + std * noise.to(mean)
        return z / self.cfg.latent_scale if self.cfg.latent_scale != 1.0 else z

    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, latent_channels, N] -> audio [B, A, N · ratio] (latents multiplied by latent_scale first)."""
        c = self.cfg.latent_channels
        if latents.dim() != 3 or latents.shape[1] != c:
            raise PrismAudioError(f"VAE expects latents [B, {c}, N], got {tuple(latents.shape)}")
        scale = self.cfg.latent_scale
        z = latents * scale if scale != 1.0 else latents
        if self.stereo is None:
            return self.decoder(z)
        d = self.cfg.latent_dim
        return self.stereo.synthesise(self.decoder(z[:, :d].contiguous()), z[:, d:])

    def forward(self, audio: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Reconstruction: decode(encode(audio)), trimmed to the input length."""
        return self.decode(self.encode(audio, generator=generator))[..., : audio.shape[-1]]


# stable-audio-tools defaults for keys an official oobleck config may omit.
_OOBLECK_DEFAULTS: dict[str, Any] = {
    "channels": 128, "c_mults": [1, 2, 4, 8], "strides": [2, 4, 8, 8], "latent_dim": 32,
    "use_snake": False, "antialias": False, "use_nearest_upsample": False, "final_tanh": True,
    "in_channels": 2, "out_channels": 2,
}


def vae_config_from_official(pretransform_json: dict[str, Any]) -> VAEConfig:
    """`VAEConfig` from an official pretransform config (`model.pretransform` of the model JSON).

    Accepts the pretransform dict ({"type": "autoencoder", "config": {...}, "scale"?}) or its inner
    autoencoder "config"; a missing "scale" means 1. Our module is symmetric, so the encoder and
    decoder must agree (and the encoder must output 2 x latent_dim for the "vae" bottleneck).
    """
    pt = pretransform_json
    ae = pt["config"] if isinstance(pt.get("config"), dict) and "encoder" in pt["config"] else pt
    if "encoder" not in ae or "decoder" not in ae:
        raise PrismAudioError("official VAE config needs 'encoder' and 'decoder' sections")
    enc, dec = ({**_OOBLECK_DEFAULTS, **ae[p].get("config", {})} for p in ("encoder", "decoder"))
    kinds = (ae["encoder"].get("type"), ae["decoder"].get("type"), ae.get("bottleneck", {}).get("type"))
    if kinds != ("oobleck", "oobleck", "vae"):
        raise PrismAudioError(f"only oobleck encoder/decoder with a 'vae' bottleneck are supported, got {kinds}")
    bad = [k for k in ("channels", "c_mults", "strides", "use_snake") if enc[k] != dec[k]]
    bad += ["in/out_channels"] if enc["in_channels"] != dec["out_channels"] else []
    bad += ["latent_dim (encoder must be 2x decoder)"] if enc["latent_dim"] != 2 * dec["latent_dim"] else []
    bad += [k for k in ("antialias", "use_nearest_upsample") if enc[k] or dec[k]]
    if bad:
        raise PrismAudioError(f"unsupported official VAE config (mismatch or option): {', '.join(bad)}")
    return VAEConfig(
        audio_channels=int(dec["out_channels"]), channels=int(dec["channels"]),
        c_mults=[int(m) for m in dec["c_mults"]], strides=[int(v) for v in dec["strides"]],
        latent_dim=int(dec["latent_dim"]), use_snake=bool(dec["use_snake"]),
        final_tanh=bool(dec["final_tanh"]), latent_scale=float(pt.get("scale", 1.0)),
    )
