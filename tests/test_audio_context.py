"""Audio-context conditioning (issue 18 item 1): the flag off changes nothing, the kept audio is
sample-exact after the crossfade, masks live at latent resolution, bad contexts fail in one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from prismaudio.config import preset
from prismaudio.context import (
    AudioContext,
    crossfade_gain,
    edit_context,
    extend_context,
    frame_masks,
    inpaint_context,
    splice,
)
from prismaudio.errors import PrismAudioError
from prismaudio.model.conditioning import ConditionTokens
from prismaudio.model.dit import DiffusionTransformer
from prismaudio.pipeline import PrismAudioPipeline
from prismaudio.sampling import replace_known, sample_ode

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "example.mp4"
SR = 16000
KW = {"cot": "a ball bounces", "duration": 0.5, "steps": 2, "seed": 4, "planner": None}
S = int(0.5 * SR)


def _redraw_zeros(module: torch.nn.Module, seed: int = 0) -> None:
    """Re-draw zero-initialised weights (out projections, ctx_proj) so every input matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() >= 2 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


@pytest.fixture(scope="module")
def pipes() -> tuple[PrismAudioPipeline, PrismAudioPipeline]:
    """(tiny without context, the same weights with the context projection added at zero)."""
    plain = PrismAudioPipeline.from_preset("tiny", seed=3)
    _redraw_zeros(plain.dit)
    cfg = preset("tiny")
    cfg.dit.audio_context = True
    ctx = PrismAudioPipeline.from_config(cfg, seed=3)
    missing, unexpected = ctx.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["dit.ctx_proj.weight"] and not unexpected
    return plain, ctx


def _cond(cfg, b: int = 1, n: int = 20, seed: int = 0) -> ConditionTokens:
    g = torch.Generator().manual_seed(seed)
    d = cfg.dit
    return ConditionTokens(torch.randn(b, 7, d.cond_token_dim, generator=g),
                           torch.randn(b, 4, d.add_token_dim, generator=g),
                           torch.randn(b, n, d.sync_token_dim, generator=g))


# ------------------------------------------------------------------------------ off == today
def test_flag_off_has_no_new_parameters_and_the_paper_preset_neither() -> None:
    for name in ("tiny", "paper"):
        cfg = preset(name)
        assert cfg.dit.audio_context is False
    tiny = DiffusionTransformer(preset("tiny").dit)
    assert not any("ctx" in k for k in tiny.state_dict())
    cfg = preset("tiny")
    cfg.dit.audio_context = True
    with_ctx = DiffusionTransformer(cfg.dit)
    extra = set(with_ctx.state_dict()) - set(tiny.state_dict())
    assert extra == {"ctx_proj.weight"}
    assert with_ctx.ctx_proj.weight.shape == (cfg.dit.embed_dim, cfg.dit.io_channels + 2)
    assert not with_ctx.ctx_proj.weight.any()  # zero-initialised


def test_context_off_is_bit_identical(pipes) -> None:
    plain, ctx = pipes
    a = plain.generate(EXAMPLE, **KW)
    b = ctx.generate(EXAMPLE, **KW)  # flag on, no context given
    assert torch.equal(a.audio, b.audio) and torch.equal(a.latents, b.latents)
    # the sampler with no constraint is the plain Euler loop
    fn = lambda x, t: x * t[:, None, None]  # noqa: E731
    noise = torch.randn(1, 3, 5, generator=torch.Generator().manual_seed(0))
    ts = torch.linspace(1, 0, 4)
    x = noise
    for i in range(3):
        x = x + (ts[i + 1] - ts[i]) * fn(x, ts[i].expand(1))
    assert torch.equal(sample_ode(fn, noise, ts), x)


def test_zero_projection_ignores_the_context_and_a_trained_one_reads_it(pipes) -> None:
    _, ctx = pipes
    dit = ctx.dit
    cond = _cond(ctx.config)
    x = torch.randn(1, ctx.config.dit.io_channels, 20, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.4])
    audio = torch.randn(1, ctx.config.dit.io_channels + 2, 20, generator=torch.Generator().manual_seed(2))
    base = dit(x, t, cond)
    assert torch.equal(dit(x, t, cond.with_audio(audio)), base)  # zero init: exactly the old model
    trained = DiffusionTransformer(ctx.config.dit)
    trained.load_state_dict(dit.state_dict())
    _redraw_zeros(trained, seed=5)
    assert not torch.allclose(trained(x, t, cond.with_audio(audio)), trained(x, t, cond))
    # the context is a condition of both CFG branches: zeros_like keeps it, dropout leaves it alone
    c = cond.with_audio(audio)
    assert c.zeros_like().audio is audio and c.dropout(0.99).audio is audio
    assert torch.equal(c.cat(c.zeros_like()).audio, torch.cat([audio, audio]))
    with pytest.raises(PrismAudioError, match="audio context must be"):
        dit(x, t, cond.with_audio(audio[:, :, :10]))
    plain = DiffusionTransformer(preset("tiny").dit)
    with pytest.raises(PrismAudioError, match="not trained with audio context"):
        plain(x, t, cond.with_audio(audio))


def test_enable_on_a_loaded_model_keeps_its_outputs() -> None:
    """A checkpoint trained without context, opened for the context stage: the projection is added
    at zero and the model computes exactly what it did."""
    cfg = preset("tiny")
    dit = DiffusionTransformer(cfg.dit)
    _redraw_zeros(dit)
    cond = _cond(cfg)
    x, t = torch.randn(1, cfg.dit.io_channels, 20), torch.tensor([0.7])
    before = dit(x, t, cond)
    assert dit.enable_audio_context() is True and dit.enable_audio_context() is False
    assert dit.cfg.audio_context is True
    audio = torch.randn(1, cfg.dit.io_channels + 2, 20)
    assert torch.equal(dit(x, t, cond.with_audio(audio)), before)


# ------------------------------------------------------------------------------ masks + splice
def test_frame_masks_keep_needs_every_sample_visible_any() -> None:
    hop = 4
    keep = torch.tensor([1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1], dtype=torch.bool)  # S = 14, N = 4
    visible = torch.zeros(14, dtype=torch.bool)
    visible[5] = True
    k, v = frame_masks(keep, visible, hop, 4)
    assert k.tolist() == [True, False, True, True]  # frame 3 holds samples 12, 13 + padding: keep
    assert v.tolist() == [False, True, False, False]
    k, _ = frame_masks(keep, visible, hop, 5)  # a frame entirely past S is not keep
    assert k.tolist() == [True, False, True, True, False]
    k, _ = frame_masks(keep, visible, hop, 3)  # fewer frames than samples: cut
    assert k.tolist() == [True, False, True]


def test_crossfade_is_equal_gain_and_only_on_the_keep_side() -> None:
    keep = torch.ones(100, dtype=torch.bool)
    keep[40:60] = False
    w = crossfade_gain(keep, 8)
    assert torch.equal(w[40:60], torch.zeros(20))
    # exact from `width` samples away from the boundary on (distance d = width gives 1)
    assert torch.equal(w[:33], torch.ones(33)) and torch.equal(w[67:], torch.ones(33))
    assert torch.all(w[33:40] < 1) and torch.all(w[60:67] < 1) and torch.all(w[33:40] > 0)
    assert torch.all(w[32:40].diff() < 0) and torch.all(w[60:68].diff() > 0)
    assert math.isclose(float(w[39]), 1 / 8, rel_tol=1e-6)
    gen = torch.randn(1, 2, 100)
    ref = torch.randn(2, 100)
    out = splice(gen, AudioContext(ref, keep, crossfade_s=8 / SR), SR)
    assert torch.equal(out[0, :, :32], ref[:, :32]) and torch.equal(out[0, :, 68:], ref[:, 68:])
    assert torch.equal(out[0, :, 40:60], gen[0, :, 40:60])
    # gains sum to one: a generation that continues the context exactly keeps its level through the fade
    assert torch.allclose(out[0, :, 32:40], gen[0, :, 32:40] * (1 - w[32:40]) + ref[:, 32:40] * w[32:40], atol=1e-6)
    same = splice(ref[None].clone(), AudioContext(ref, keep, crossfade_s=8 / SR), SR)
    assert torch.allclose(same[0], ref, atol=1e-6)


def test_inpaint_keeps_the_outside_sample_exact_after_the_crossfade(pipes) -> None:
    plain, ctx = pipes
    audio = 0.3 * torch.randn(2, S, generator=torch.Generator().manual_seed(0))
    c = inpaint_context(audio, SR, 0.2, 0.3)
    width = round(c.crossfade_s * SR)
    a, b = round(0.2 * SR), round(0.3 * SR)
    for pipe in (ctx, plain):  # conditioned model, and a model without context (replacement only)
        res = pipe.generate(EXAMPLE, context=c, num_samples=2, **KW)
        for out in res.samples:
            assert torch.equal(out[:, : a - width], audio[:, : a - width])
            assert torch.equal(out[:, b + width :], audio[:, b + width :])
            assert not torch.equal(out[:, a:b], audio[:, a:b])
        # replacement: the kept latent frames ARE the context's latents
        hop = pipe.config.vae.downsampling_ratio
        lat = pipe.encode_context(c, res.latents.shape[-1])
        keep = lat.keep[0]
        assert torch.equal(res.latents[:, :, keep], lat.latents.expand_as(res.latents)[:, :, keep])
        assert keep.sum() == (res.latents.shape[-1] - math.ceil(b / hop) + a // hop)


def test_a_model_without_context_says_it_only_imposes_the_kept_frames(pipes) -> None:
    plain, _ = pipes
    c = inpaint_context(torch.zeros(2, S), SR, 0.2, 0.3)
    lines: list[str] = []
    plain.generate(EXAMPLE, context=c, status=lines.append, **KW)
    assert any("RePaint-style" in m for m in lines)
    with pytest.raises(PrismAudioError, match="would be ignored"):
        plain.generate(EXAMPLE, context=c, context_replace=False, **KW)


def test_context_enters_both_cfg_branches_and_changes_the_sound(pipes) -> None:
    _, ctx = pipes
    trained = PrismAudioPipeline(ctx.config, DiffusionTransformer(ctx.config.dit), ctx.conditioner, ctx.vae,
                                 ctx.video_encoder, ctx.sync_encoder, ctx.text_encoder)
    trained.dit.load_state_dict(ctx.dit.state_dict())
    _redraw_zeros(trained.dit, seed=9)
    audio = 0.3 * torch.randn(2, S, generator=torch.Generator().manual_seed(0))
    c1, c2 = edit_context(audio, SR, 0.1, 0.4), edit_context(-audio, SR, 0.1, 0.4)
    a = trained.generate(EXAMPLE, context=c1, context_replace=False, **KW).audio
    b = trained.generate(EXAMPLE, context=c2, context_replace=False, **KW).audio
    lo, hi = round(0.1 * SR), round(0.4 * SR)
    assert not torch.equal(a[:, lo:hi], b[:, lo:hi])  # the visible context reached the network


def test_extend_keeps_the_prefix() -> None:
    prefix = torch.randn(2, 3000)
    c = extend_context(prefix, SR, S)
    assert c.audio.shape == (2, S) and c.keep[:3000].all() and not c.keep[3000:].any()
    assert c.visible is None and torch.equal(c.visible_mask, c.keep)
    with pytest.raises(PrismAudioError, match="shorter than the clip"):
        extend_context(torch.randn(2, S), SR, S)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("make, match", [
    (lambda: AudioContext(torch.zeros(2, S + 1), torch.zeros(S + 1, dtype=torch.bool)), "resample it to 16000 Hz"),
    (lambda: AudioContext(torch.zeros(2, S * 3), torch.zeros(S * 3, dtype=torch.bool)), "samples"),
    (lambda: AudioContext(torch.zeros(1, S), torch.zeros(S, dtype=torch.bool)), "1 channel"),
    (lambda: AudioContext(torch.full((2, S), float("nan")), torch.zeros(S, dtype=torch.bool)), "NaN"),
    (lambda: AudioContext(torch.zeros(2, S), torch.zeros(S)), "bool"),
    (lambda: AudioContext(torch.zeros(2, S), torch.ones(S, dtype=torch.bool)), "nothing to generate"),
    (lambda: AudioContext(torch.zeros(2, S), torch.zeros(S, dtype=torch.bool), crossfade_s=-1), "crossfade"),
    (lambda: AudioContext(torch.zeros(2, S, dtype=torch.int16), torch.zeros(S, dtype=torch.bool)), "floating"),
])
def test_bad_context_is_one_line(pipes, make, match) -> None:
    _, ctx = pipes
    with pytest.raises(PrismAudioError, match=match) as e:
        ctx.generate(EXAMPLE, context=make(), **KW)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("a, b, match", [(0.3, 0.3, "empty"), (0.4, 0.2, "empty"), (-0.1, 0.2, "outside"),
                                         (0.2, 0.9, "outside"), (float("nan"), 0.2, "not finite")])
def test_bad_region_is_one_line(a: float, b: float, match: str) -> None:
    with pytest.raises(PrismAudioError, match=match):
        inpaint_context(torch.zeros(2, S), SR, a, b)


def test_replace_known_is_identity_at_noise_and_exact_at_data() -> None:
    known = torch.randn(1, 3, 6)
    noise = torch.randn(2, 3, 6)
    mask = torch.tensor([True, True, False, False, True, False]).view(1, 1, 6)
    f = replace_known(known, mask, noise)
    assert torch.equal(f(noise, torch.ones(2)), noise)
    x = torch.randn(2, 3, 6)
    out = f(x, torch.zeros(2))
    assert torch.equal(out[..., [0, 1, 4]], known.expand(2, -1, -1)[..., [0, 1, 4]])
    assert torch.equal(out[..., [2, 3, 5]], x[..., [2, 3, 5]])


def test_a_context_free_checkpoint_opens_with_a_zero_projection(tmp_path: Path) -> None:
    """config.json asks for audio_context but model.safetensors predates it: loaded, projection at
    zero, said in a warning; the model computes what it did."""
    import json
    import warnings

    plain = PrismAudioPipeline.from_preset("tiny", seed=1)
    _redraw_zeros(plain.dit)
    plain.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["dit"]["audio_context"] = True
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        pipe = PrismAudioPipeline.from_pretrained(tmp_path / "m")
    assert any("initialised to zero" in str(x.message) for x in w)
    assert pipe.config.dit.audio_context and not pipe.dit.ctx_proj.weight.any()
    assert torch.equal(pipe.generate(EXAMPLE, **KW).audio, plain.generate(EXAMPLE, **KW).audio)
    pipe.save_pretrained(tmp_path / "m2")  # now with the projection: a strict load, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m2 = PrismAudioPipeline.from_pretrained(tmp_path / "m2")
        assert m2.dit.ctx_proj.weight.shape[1] == m2.config.dit.io_channels + 2
