"""Oobleck VAE: official fixture equivalence, paper-size layout, lengths, latent scale, sampling.

The fast inference paths (folded dilated convs, polyphase transposed convs, padded residual
stacks, fused GEMMs, cached weights) are also checked against a plain functional reference.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prismaudio.config import VAEConfig, preset
from prismaudio.errors import PrismAudioError
from prismaudio.model.vae import (
    OobleckVAE,
    ResidualUnit,
    SnakeBeta,
    WNConv1d,
    WNConvTranspose1d,
    vae_config_from_official,
)

PREFIX = "pretransform.model."
# Paper-style strides (ratio 2048) with a tiny width, so length tests run in milliseconds.
NARROW_PAPER = VAEConfig(channels=2, c_mults=[1, 1, 1, 1, 1], strides=[2, 4, 4, 8, 8], latent_dim=4)
SMALL = VAEConfig(channels=4, c_mults=[1, 2, 4], strides=[2, 4, 2], latent_dim=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: extra intra-op threads only add barrier waits, which on a busy
    2-core machine slowed this file from ~3 s to ~30 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tol(ref: Tensor) -> float:
    return 1e-4 * ref.abs().max().item() + 1e-5


def _max_err(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


def _naive(mod: nn.Module, x: Tensor) -> Tensor:
    """Straightforward functional forward over the same parameters (no fast paths)."""
    if isinstance(mod, SnakeBeta):
        return x + torch.sin(x * mod.alpha.exp()[:, None]) ** 2 / (mod.beta.exp()[:, None] + 1e-9)
    if isinstance(mod, WNConv1d):
        return F.conv1d(x, mod.weight(), mod.bias, mod.stride, mod.padding, mod.dilation)
    if isinstance(mod, WNConvTranspose1d):
        return F.conv_transpose1d(x, mod.weight(), mod.bias, mod.stride, mod.padding)
    if isinstance(mod, ResidualUnit):
        return x + _naive(mod.layers, x)
    if isinstance(mod, nn.Sequential):
        for layer in mod:
            x = _naive(layer, x)
        return x
    if hasattr(mod, "layers"):  # encoder / decoder / blocks
        return _naive(mod.layers, x)
    return mod(x)  # Identity, Tanh, ELU


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial snake parameters (init is all zeros) so the test exercises them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return model


# ------------------------------------------------------------------------------------------
# (1) official fixture


def test_official_tiny_fixture(shared_reference):
    from safetensors.torch import load_file

    root = shared_reference / "official_fixtures" / "tiny_vae"
    cfg = vae_config_from_official(json.loads((root / "pretransform_config.json").read_text()))
    assert (cfg.channels, cfg.c_mults, cfg.strides, cfg.latent_dim) == (4, [1, 2, 4], [2, 4, 2], 8)
    weights = load_file(root / "weights.safetensors")
    assert not any(k.startswith("pretransform.") for k in weights)  # already prefix-free
    vae = OobleckVAE(cfg).eval()
    vae.load_state_dict(weights, strict=True)
    ref = load_file(root / "reference.safetensors")
    for grad in (False, True):  # cached/in-place inference path and the autograd path
        with torch.set_grad_enabled(grad):
            pre = vae.encoder(ref["in.audio"])
            z = vae.encode(ref["in.audio"], noise=ref["aux.bottleneck_eps"])
            audio = vae.decode(ref["in.decoder_latents"])
        for got, key in ((pre, "out.encoder_pre_bottleneck"), (z, "out.latents_sampled"),
                         (audio, "out.decoded_audio")):
            assert got.shape == ref[key].shape
            assert _max_err(got, ref[key]) <= _tol(ref[key]), key


# ------------------------------------------------------------------------------------------
# (2) paper preset layout


def test_paper_param_counts_and_official_keys(shared_reference):
    with torch.device("meta"):
        vae = OobleckVAE(preset("paper").vae)
    assert sum(p.numel() for p in vae.encoder.parameters()) == 77_989_888
    assert sum(p.numel() for p in vae.decoder.parameters()) == 78_122_626
    keys = json.loads((shared_reference / "keys_prismaudio.json").read_text())
    official = {k[len(PREFIX):]: list(v[0]) for k, v in keys.items() if k.startswith(PREFIX)}
    assert len(official) == 365
    ours = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert ours == official


# ------------------------------------------------------------------------------------------
# (3) lengths and the fast paths


@torch.no_grad()
def test_lengths_paper_strides():
    vae = OobleckVAE(NARROW_PAPER).eval()
    assert vae.downsampling_ratio == 2048
    for samples, frames in ((2048 * 3, 3), (2048 * 3 - 100, 3), (2048 * 3 + 1, 4), (10, 1)):
        assert vae.latent_length(samples) == frames
        z = vae.encode(torch.randn(2, 2, samples))
        assert z.shape == (2, 4, frames)
        assert vae.decode(z).shape == (2, 2, frames * 2048)


@torch.no_grad()
def test_padding_is_zero_extension():
    vae = _randomize(OobleckVAE(SMALL)).eval()
    x = torch.randn(1, 2, 100)
    padded = torch.cat([x, torch.zeros(1, 2, 12)], -1)
    assert torch.equal(vae.encode(x, sample=False), vae.encode(padded, sample=False))


ELU_TANH = VAEConfig(**{**SMALL.__dict__, "use_snake": False, "final_tanh": True})


@pytest.mark.parametrize("frames,cfg", [(1, SMALL), (5, SMALL), (7, SMALL), (5, ELU_TANH)])
def test_fast_paths_match_naive(frames, cfg):
    vae = _randomize(OobleckVAE(cfg)).eval()
    z = torch.randn(2, 8, frames)
    x = torch.randn(2, 2, frames * 16)
    for ctx in (torch.no_grad, torch.inference_mode, torch.enable_grad):
        with ctx():
            assert _max_err(vae.decode(z), _naive(vae.decoder, z)) < 1e-4
            assert _max_err(vae.encode_moments(x)[0], _naive(vae.encoder, x)[:, :8]) < 1e-4


def test_weight_cache_follows_parameter_updates():
    vae = _randomize(OobleckVAE(SMALL)).eval()
    z = torch.randn(1, 8, 3)
    with torch.no_grad():
        before = vae.decode(z)
        vae.load_state_dict(_randomize(OobleckVAE(SMALL), seed=1).state_dict())
        after = vae.decode(z)
        assert not torch.allclose(before, after)
        assert _max_err(after, _naive(vae.decoder, z)) < 1e-4
        vae.decoder.layers[0].weight_g.mul_(2.0)  # in-place update, as an optimizer would
        assert _max_err(vae.decode(z), _naive(vae.decoder, z)) < 1e-4


def test_gradients_flow():
    vae = OobleckVAE(SMALL)
    z = torch.randn(1, 8, 4, requires_grad=True)
    vae.decode(z).square().mean().backward()
    assert z.grad is not None and vae.decoder.layers[0].weight_v.grad is not None
    vae.requires_grad_(False)  # frozen VAE: cached weights, gradient still reaches the latents
    z.grad = None
    vae.decode(z).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_rejects_bad_shapes():
    vae = OobleckVAE(SMALL)
    with pytest.raises(PrismAudioError):
        vae.encode(torch.randn(1, 1, 64))
    with pytest.raises(PrismAudioError):
        vae.decode(torch.randn(1, 3, 4))
    with pytest.raises(PrismAudioError):
        OobleckVAE(VAEConfig(channels=2, c_mults=[1], strides=[3], latent_dim=2))


# ------------------------------------------------------------------------------------------
# (4) latent scale, (5) sampling


@torch.no_grad()
def test_latent_scale_round_trip():
    base = _randomize(OobleckVAE(SMALL)).eval()
    cfg = VAEConfig(**{**SMALL.__dict__, "latent_scale": 2.5})
    scaled = OobleckVAE(cfg).eval()
    scaled.load_state_dict(base.state_dict())
    x = torch.randn(1, 2, 64)
    mean, _ = base.encode_moments(x)
    z = scaled.encode(x, sample=False)
    assert torch.allclose(z, mean / 2.5)
    assert torch.allclose(scaled.decode(z), base.decode(mean), atol=1e-5)


@torch.no_grad()
def test_sampling_is_seeded():
    vae = _randomize(OobleckVAE(SMALL)).eval()
    x = torch.randn(2, 2, 80)
    a = vae.encode(x, generator=torch.Generator().manual_seed(3))
    b = vae.encode(x, generator=torch.Generator().manual_seed(3))
    c = vae.encode(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    mean, std = vae.encode_moments(x)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, mean + std * eps)
    assert torch.equal(vae.encode(x, sample=False), mean)
    assert (std > 1e-4).all()


def test_config_from_official_scale_and_checks():
    enc = {"in_channels": 2, "channels": 8, "c_mults": [1, 2], "strides": [2, 4], "latent_dim": 6,
           "use_snake": True}
    dec = {"out_channels": 2, "channels": 8, "c_mults": [1, 2], "strides": [2, 4], "latent_dim": 3,
           "use_snake": True, "final_tanh": False}
    pt = {"type": "autoencoder", "scale": 0.5, "config": {
        "encoder": {"type": "oobleck", "config": enc}, "decoder": {"type": "oobleck", "config": dec},
        "bottleneck": {"type": "vae"}}}
    cfg = vae_config_from_official(pt)
    assert (cfg.latent_dim, cfg.latent_scale, cfg.downsampling_ratio, cfg.final_tanh) == (3, 0.5, 8, False)
    assert vae_config_from_official(pt["config"]).latent_scale == 1.0
    pt["config"]["encoder"]["config"] = {**enc, "latent_dim": 3}
    with pytest.raises(PrismAudioError):
        vae_config_from_official(pt)
