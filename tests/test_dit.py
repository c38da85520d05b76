"""The diffusion transformer and condition MLPs: shapes, official init, RoPE, sizes, sync length, CFG."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from prismaudio.config import ConditionerConfig, preset
from prismaudio.errors import PrismAudioError
from prismaudio.model.conditioning import Conditioner, ConditionTokens, official_sync_length
from prismaudio.model.dit import DiffusionTransformer
from prismaudio.model.layers import Block, CrossAttention, RotaryEmbedding, apply_rope, interpolate_time


def _randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (official init zeros the block outputs, which hides bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1] if p.dim() > 1 else 4))
    return module


def _tiny(seed: int = 0):
    cfg = preset("tiny")
    torch.manual_seed(seed)
    return cfg, DiffusionTransformer(cfg.dit), Conditioner(cfg.conditioner)


def _features(cfg, b=2, tv=8, lt=5, ts=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = cfg.conditioner
    return (
        torch.randn(b, tv, c.video_dim, generator=g),
        torch.randn(b, lt, c.text_dim, generator=g),
        torch.randn(b, ts, c.sync_dim, generator=g),
    )


def test_shapes_and_text_list():
    cfg, dit, cond_net = _tiny()
    video, text, sync = _features(cfg)
    n = 21
    cond = cond_net(video, text, sync, latent_length=n)
    d = cfg.conditioner.output_dim
    assert cond.cross.shape == (2, 8 + 5, d) and cond.add.shape == (2, 8, d) and cond.sync.shape == (2, n, d)
    x = torch.randn(2, cfg.dit.io_channels, n)
    assert dit(x, torch.rand(2), cond).shape == x.shape
    # a list of texts of different lengths is zero padded like pad_sequence
    texts = [text[0], text[1, :3]]
    padded = text.clone()
    padded[1, 3:] = 0
    a = cond_net(video, texts, sync, n)
    b = cond_net(video, padded, sync, n)
    assert torch.equal(a.cross, b.cross)
    assert cond_net(video, text, None, n).sync is None


def test_official_init_is_projection_of_gated_conditions():
    """With the official init every block is the identity: v = project_out(project_in(x) + gated conds)."""
    cfg, dit, cond_net = _tiny()
    _randomize(cond_net)
    video, text, sync = _features(cfg)
    n = 30
    cond = cond_net(video, text, sync, n)
    x = torch.randn(2, cfg.dit.io_channels, n)
    with torch.no_grad():
        v = dit(x, torch.rand(2), cond)
        a = interpolate_time(dit.add_mlp(cond.add), n)
        s = dit.sync_mlp(cond.sync)
        z = dit.project_in(x.transpose(1, 2)) + torch.sigmoid(torch.tensor(1.0)) * a + 0.5 * s
        expected = dit.project_out(z).transpose(1, 2)
    torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-5)
    assert torch.all(dit.add_gate == 1) and torch.all(dit.sync_gate == 0)
    assert torch.all(dit.pre_conv.weight == 0) and torch.all(dit.blocks[0].ff.fc2.bias == 0)


def test_rope_positions_and_partial_rotation():
    rope = RotaryEmbedding(32)
    cos, sin = rope(10, torch.device("cpu"))
    assert cos.shape == (10, 1, 32)
    p, j = 7, 5
    angle = p * 10000 ** (-2 * j / 32)
    assert cos[p, 0, j].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert sin[p, 0, j + 16].item() == pytest.approx(math.sin(angle), abs=1e-6)
    x = torch.randn(1, 10, 2, 64)
    y = apply_rope(x, cos, sin)
    assert torch.equal(y[:, 0], x[:, 0])  # position 0 (the timestep token) is not rotated
    assert torch.equal(y[..., 32:], x[..., 32:])  # channels 32..63 pass through
    # channel j pairs with j + 16 (half split, not interleaved)
    expected = x[:, p, :, j] * math.cos(angle) - x[:, p, :, j + 16] * math.sin(angle)
    torch.testing.assert_close(y[:, p, :, j], expected, rtol=1e-5, atol=1e-5)

    # the DiT rotates N + 1 tokens: the timestep token is position 0, latent frame k is k + 1
    cfg, dit, cond_net = _tiny()
    seen = []
    dit.rope.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    video, text, sync = _features(cfg)
    dit(torch.randn(2, cfg.dit.io_channels, 17), torch.rand(2), cond_net(video, text, sync, 17))
    assert seen == [18]


def test_paper_parameter_count():
    cfg = preset("paper")
    with torch.device("meta"):
        dit, cond_net = DiffusionTransformer(cfg.dit), Conditioner(cfg.conditioner)
    assert dit.param_count() == 511_365_248
    assert cond_net.param_count() == 6_822_912
    assert dit.param_count() + cond_net.param_count() == 518_188_160
    block = sum(p.numel() for p in dit.blocks[0].parameters())
    assert block == 20_984_064


def test_mini_parameter_count():
    cfg = preset("mini")
    with torch.device("meta"):
        total = DiffusionTransformer(cfg.dit).param_count() + Conditioner(cfg.conditioner).param_count()
    print(f"mini DiT + conditioner: {total / 1e6:.2f} M parameters")
    assert 1e6 < total < 20e6


def _interp_reference(x: torch.Tensor, n: int) -> torch.Tensor:
    """official_network.md §5.3, written out element by element."""
    t_in = x.shape[1]
    rows = []
    for i in range(n):
        src = max(0.0, (i + 0.5) * (t_in / n) - 0.5)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, t_in - 1)
        lam = src - i0
        rows.append((1 - lam) * x[:, i0] + lam * x[:, i1])
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("t_in,n", [(36, 194), (216, 194), (160, 108), (5, 5), (1, 7)])
def test_interpolation_formula(t_in, n):
    x = torch.randn(2, t_in, 3, dtype=torch.float64)
    torch.testing.assert_close(interpolate_time(x, n), _interp_reference(x, n))


def test_sync_length_latent_vs_official():
    base = dict(video_dim=4, text_dim=4, sync_dim=6, output_dim=8, sync_tokens_per_segment=8)
    sync = torch.randn(1, 160, 6)  # 20 Synchformer segments (5 s); N = round(21.533 * 5) = 108
    latent = Conditioner(ConditionerConfig(**base, sync_length="latent"))
    official = Conditioner(ConditionerConfig(**base, sync_length="official"))
    official.load_state_dict(latent.state_dict())
    video, text = torch.randn(1, 20, 4), torch.randn(1, 3, 4)
    assert latent(video, text, sync, 108).sync.shape[1] == 108
    assert official(video, text, sync, 108).sync.shape[1] == official_sync_length(160) == 143
    assert official_sync_length(216) == 194
    with pytest.raises(PrismAudioError):
        Conditioner(ConditionerConfig(**base, sync_length="bogus"))
    with pytest.raises(PrismAudioError, match="multiple of 8"):
        latent(video, text, sync[:, :13], 108)


def test_sync_position_embedding_is_per_segment_token():
    c = Conditioner(ConditionerConfig(video_dim=4, text_dim=4, sync_dim=6, output_dim=8, sync_tokens_per_segment=4))
    with torch.no_grad():
        c.sync_pos_emb.copy_(torch.randn_like(c.sync_pos_emb))
    sync = torch.randn(2, 12, 6)
    out = c.embed_sync(sync, 12)
    expected = c.sync(sync + c.sync_pos_emb[0, 0].repeat(3, 1))
    torch.testing.assert_close(out, expected)


def test_dit_resamples_sync_of_other_length():
    cfg, dit, cond_net = _tiny()
    _randomize(dit)
    video, text, sync = _features(cfg)
    cond = cond_net(video, text, sync, 40)
    short = ConditionTokens(cond.cross, cond.add, interpolate_time(cond.sync, 33))
    x = torch.randn(2, cfg.dit.io_channels, 40)
    v = dit(x, torch.rand(2), short)  # the official code would fail on the length mismatch
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_zero_context_cross_attention_is_exactly_zero():
    attn = _randomize(CrossAttention(128, 2, 96))
    y = attn(torch.randn(2, 9, 128), attn.project_context(torch.zeros(2, 5, 96)))
    assert torch.count_nonzero(y) == 0


def test_uncond_items_skip_cross_attention_bit_exactly():
    block = _randomize(Block(128, 2, 128))
    x, rope = torch.randn(1, 9, 128), RotaryEmbedding(32)(9, torch.device("cpu"))
    kv = block.cross_attn.project_context(torch.zeros(1, 4, 128))
    full = block(x, kv, rope)  # computes the (zero) cross-attention
    skipped = block(x, (kv[0][:0], kv[1][:0]), rope, torch.zeros(0, dtype=torch.long))
    assert torch.equal(full, skipped)


def test_cfg_batch_matches_separate_passes():
    cfg, dit, cond_net = _tiny()
    _randomize(dit)
    video, text, sync = _features(cfg, b=1)
    cond = cond_net(video, text, sync, 25)
    x, t = torch.randn(1, cfg.dit.io_channels, 25), torch.tensor([0.3])
    both = dit(torch.cat([x, x]), torch.cat([t, t]), cond.cat(cond.zeros_like()))
    torch.testing.assert_close(both[:1], dit(x, t, cond), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both[1:], dit(x, t, cond.zeros_like()), rtol=1e-5, atol=1e-5)


def test_prepared_conditions_give_identical_velocity():
    """Preparing the time-independent work once (as samplers do) changes no bit of the output."""
    cfg, dit, cond_net = _tiny()
    _randomize(dit)
    video, text, sync = _features(cfg, b=2)
    cond = cond_net(video, text, sync, 25)
    x = torch.randn(2, cfg.dit.io_channels, 25)
    prep = dit.prepare(cond, 25)
    for t in (0.9, 0.2):
        tt = torch.full((2,), t)
        assert torch.equal(dit(x, tt, prep), dit(x, tt, cond))
    with pytest.raises(ValueError, match="prepared for 25"):
        dit(torch.randn(2, cfg.dit.io_channels, 30), torch.full((2,), 0.5), prep)


def test_official_predict_sync_quirk():
    cfg, dit, cond_net = _tiny()
    _randomize(dit)
    video, text, sync = _features(cfg)
    n = 20
    cond = cond_net(video, text, sync, n)
    cond = cond.cat(cond.zeros_like())
    x, t = torch.randn(4, cfg.dit.io_channels, n), torch.rand(4)
    dit.official_predict_sync_quirk = True
    quirk = dit(x, t, cond)
    dit.official_predict_sync_quirk = False
    empty = dit.empty_sync_feat.detach().expand(2, n, -1)
    replaced = ConditionTokens(cond.cross, cond.add, torch.cat([empty, torch.zeros_like(empty)]))
    torch.testing.assert_close(quirk, dit(x, t, replaced), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(quirk[:2], dit(x, t, cond)[:2])


def test_dtype_follows_parameters():
    cfg, dit, cond_net = _tiny()
    dit, cond_net = dit.double(), cond_net.double()
    video, text, sync = _features(cfg)
    cond = cond_net(video, text, sync, 12)
    v = dit(torch.randn(2, cfg.dit.io_channels, 12), torch.rand(2), cond)
    assert v.dtype == torch.float64 and cond.cross.dtype == torch.float64


def test_rejects_bad_head_split():
    cfg = preset("tiny")
    cfg.dit.num_heads = 3
    with pytest.raises(PrismAudioError):
        DiffusionTransformer(cfg.dit)


def test_swiglu_value_first_gate_second():
    block = _randomize(Block(128, 2, 128))
    ff = block.ff
    x = torch.randn(3, 128)
    h = ff.fc1(x)
    expected = ff.fc2(h[:, :512] * F.silu(h[:, 512:]))
    torch.testing.assert_close(ff(x), expected)


def test_backward_with_dropped_conditions():
    cfg, dit, cond_net = _tiny()
    _randomize(dit)
    video, text, sync = _features(cfg)
    cond = cond_net(video, text, sync, 16)
    cond = ConditionTokens(cond.cross * torch.tensor([1.0, 0.0])[:, None, None], cond.add, cond.sync)
    v = dit(torch.randn(2, cfg.dit.io_channels, 16), torch.rand(2), cond)
    v.square().mean().backward()
    grads = [p.grad for p in dit.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert dit.blocks[0].cross_attn.q.weight.grad.abs().sum() > 0
    assert cond_net.text.fc1.weight.grad.abs().sum() > 0
